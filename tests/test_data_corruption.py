"""data-corruption against a churn pipeline with nothing of mlchaos inside (examples/churn_pipeline.py):
real Parquet, CSV and JSON lines batches, real pyarrow, a real pandera validator and a step that builds
the training set. Healthy pipelines pass, each broken class fails (or, where the steady state does not
hold, is inconclusive with nothing broken), and every batch and training set is back byte for byte."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_refused_untouched, tree_digests

from mlchaos_steps.api import run_stage
from mlchaos_steps.examples import churn_pipeline
from mlchaos_steps.stages import parse_stage

PIPELINE = Path(churn_pipeline.__file__)
ALL_ROW_FAULTS = [
    {"kind": "nulls", "columns": ["age", "income"], "fraction": 0.02},
    {"kind": "out_of_range", "columns": ["age"], "fraction": 0.01},
    {"kind": "type_change", "columns": ["zip"]},
    {"kind": "duplicates", "fraction": 0.05},
    {"kind": "label_flip", "column": "churned", "fraction": 0.03},
]


@pytest.fixture(scope="session")
def made_batches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batches")
    for fmt in ("parquet", "csv", "jsonl"):
        subprocess.run([sys.executable, str(PIPELINE), "make-batches", str(root / fmt), "--format", fmt],
                       check=True, capture_output=True)
    return root


@pytest.fixture
def data(made_batches: Path, tmp_path: Path) -> Path:
    """A fresh copy of the feature batches (date=20261201, date=20261202) and an empty training-set store."""
    fresh = Path(shutil.copytree(made_batches, tmp_path / "data"))
    for fmt in ("parquet", "csv", "jsonl"):
        (fresh / f"train-{fmt}").mkdir()
    return fresh


def _doc(data: Path, fmt: str = "parquet", validator: str = "healthy", prepare: str | None = "healthy",
         faults: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "batch": {"store": (data / fmt).as_uri(), "pattern": r"date=(\d{8})"},
        "faults": copy.deepcopy(faults or ALL_ROW_FAULTS),
        "seed": 7,
        "validation": {"command": [sys.executable, str(PIPELINE), "validate", "{batch}", "--mode", validator]},
        **spec,
    }
    if prepare is not None:
        out = data / f"train-{fmt}"
        doc["downstream"] = {"store": out.as_uri(), "pattern": r"date=(\d{8})", "command": [
            sys.executable, str(PIPELINE), "prepare", "{batch}", "--out", str(out), "--mode", prepare]}
    return {"kind": "DataCorruption", "spec": doc}


def _run(doc: dict[str, Any], key: str, data: Path) -> Any:
    """Run the stage; every batch and training set must be as it was, and the only thing left is what
    the pipeline wrote from the corrupted batch (kept in quarantine as evidence), when it leaked."""
    before = tree_digests(data)
    outcome = run_stage(parse_stage(doc), key)
    assert outcome.restored, outcome.restore_error
    after = tree_digests(data)
    evidence = {k for k in after if ".mlchaos-quarantine/" in k}
    assert {k: v for k, v in after.items() if k not in evidence} == before
    assert bool(evidence) == (outcome.verdict.metrics.get("leaked_rows", 0) > 0), evidence
    return outcome


# -- healthy pipelines pass ------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_pandera_validator_and_a_step_that_heeds_it_pass(data: Path, fmt: str) -> None:
    outcome = _run(_doc(data, fmt), f"healthy-{fmt}", data)
    assert outcome.verdict.status == "passed", outcome.verdict
    assert outcome.verdict.metrics["leaked_rows"] == 0
    assert outcome.verdict.metrics["corrupted_rows"] > 50
    assert outcome.verdict.evidence["validator"]["format"] == "pandera"


@pytest.mark.parametrize("fault", [
    {"kind": "schema", "drop": ["tenure"]}, {"kind": "schema", "rename": {"zip": "zip5"}},
    {"kind": "schema", "reorder": True}, {"kind": "truncate"},
], ids=["drop", "rename", "reorder", "truncate"])
def test_whole_batch_faults_refused_pass(data: Path, fault: dict[str, Any]) -> None:
    outcome = _run(_doc(data, faults=[fault]), f"whole-{fault['kind']}-{len(str(fault))}", data)
    assert outcome.verdict.status == "passed", outcome.verdict


GE_FAULTS = [fault for fault in ALL_ROW_FAULTS if fault["kind"] != "label_flip"]  # the suite has no label rule


@pytest.mark.parametrize(("flags", "status"), [((), "passed"), (("--no-unique",), "failed")],
                         ids=["complete-suite", "suite-without-uniqueness"])
def test_a_great_expectations_validator(data: Path, flags: tuple[str, ...], status: str) -> None:
    """Great Expectations' own validation result, read as it prints it: a suite that expects every fault
    passes; one that forgets uniqueness leaves the duplicates unaccounted for."""
    doc = _doc(data, faults=GE_FAULTS)
    doc["spec"]["validation"] = {"command": [sys.executable, str(Path(__file__).parent / "apps" / "ge_validator.py"),
                                             "{batch}", *flags]}
    outcome = _run(doc, f"ge-{len(flags)}", data)
    assert outcome.verdict.evidence["validator"]["format"] == "great_expectations"
    assert outcome.verdict.status == status, outcome.verdict
    if status == "failed":
        assert "with duplicates" in outcome.verdict.reason and "nulls" not in outcome.verdict.reason


# -- broken validators and pipelines fail ----------------------------------------------------------
def test_a_validator_that_passes_everything_fails(data: Path) -> None:
    outcome = _run(_doc(data, validator="pass-all"), "pass-all", data)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "the validator accepted the corrupted batch" in outcome.verdict.reason


def test_a_validator_that_warns_but_lets_the_batch_through_fails(data: Path) -> None:
    """pandera's failure cases, every corrupted row among them, but exit 0: the batch went on."""
    outcome = _run(_doc(data, validator="warn-only", prepare=None), "warn-only", data)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "the validator accepted the corrupted batch" in outcome.verdict.reason


def test_a_validator_that_checks_the_schema_but_not_values_fails(data: Path) -> None:
    outcome = _run(_doc(data, validator="schema-only"), "schema-only", data)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "out_of_range in age" in outcome.verdict.reason and "label_flip in churned" in outcome.verdict.reason


def test_a_validator_that_drops_nulls_but_lets_duplicates_and_flipped_labels_through_fails(data: Path) -> None:
    outcome = _run(_doc(data, validator="nulls-only"), "nulls-only", data)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "with duplicates" in outcome.verdict.reason and "label_flip in churned" in outcome.verdict.reason
    assert "nulls" not in outcome.verdict.reason


def test_a_validator_refusing_for_another_reason_fails(data: Path) -> None:
    """Refuses the batch for a schema problem it has (a renamed column) but says nothing of the rows."""
    faults = [{"kind": "schema", "rename": {"zip": "zip5"}}, {"kind": "label_flip", "column": "churned",
                                                              "fraction": 0.03}]
    outcome = _run(_doc(data, validator="schema-only", faults=faults), "other-reason", data)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "does not account for" in outcome.verdict.reason


def test_a_validator_that_blames_every_row_fails(data: Path) -> None:
    """It refuses the corrupted batch and names all 1,000 rows: the corrupted ones are among them, but it
    has not found them."""
    outcome = _run(_doc(data, validator="blame-all"), "blame-all", data)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "names 1050 of the batch's 1050 rows" in outcome.verdict.reason


def test_a_validator_that_misses_a_dropped_column_fails(data: Path) -> None:
    """It finds the null ages, row by row, and refuses, but never notices tenure is gone."""
    nulls_only = ("import json, sys\n"
                  "from mlchaos_steps.examples.churn_pipeline import read_batch\n"
                  "frame = read_batch(__import__('pathlib').Path(sys.argv[1]))\n"
                  "rows = [int(i) for i in frame.index[frame['age'].isna()]]\n"
                  "failures = [{'column': 'age', 'rows': rows}] if rows else []\n"
                  "print(json.dumps({'valid': not rows, 'failures': failures}))\n"
                  "sys.exit(1 if rows else 0)\n")
    doc = _doc(data, prepare=None, faults=[{"kind": "schema", "drop": ["tenure"]},
                                           {"kind": "nulls", "columns": ["age"], "fraction": 0.02}])
    doc["spec"]["validation"] = {"command": [sys.executable, "-c", nulls_only, "{batch}"]}
    outcome = _run(doc, "misses-drop", data)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "column tenure (dropped)" in outcome.verdict.reason and "nulls" not in outcome.verdict.reason


def test_a_training_step_that_ignores_the_validator_fails(data: Path) -> None:
    outcome = _run(_doc(data, prepare="ignore-validation"), "ignores", data)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "reached the downstream partition" in outcome.verdict.reason
    assert outcome.verdict.metrics["leaked_rows"] == outcome.verdict.metrics["corrupted_rows"]


def test_leaks_within_the_budget_pass(data: Path) -> None:
    doc = _doc(data, prepare="ignore-validation", faults=[{"kind": "nulls", "columns": ["age"], "fraction": 0.002}])
    doc["spec"]["downstream"]["max_leaked_rows"] = 2
    outcome = _run(doc, "budget", data)
    assert outcome.verdict.status == "passed", outcome.verdict
    assert outcome.verdict.metrics["leaked_rows"] == 2


def test_a_step_that_rescales_columns_in_place_is_followed_by_key(data: Path) -> None:
    """The training set keeps customer_id but rescales income in place: rows are not found over the
    batch's columns (inconclusive, nothing broken), but by key they are — healthy passes, leaky fails."""
    outcome = _run(_doc(data, prepare="scale"), "scaled-no-key", data)
    assert outcome.verdict.status == "inconclusive", outcome.verdict
    assert "set spec.key" in outcome.verdict.reason
    outcome = _run(_doc(data, prepare="scale", key=["customer_id"]), "scaled-key", data)
    assert outcome.verdict.status == "passed", outcome.verdict
    outcome = _run(_doc(data, prepare="scale-ignore-validation", key=["customer_id"]), "scaled-leaky", data)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert outcome.verdict.metrics["leaked_rows"] == outcome.verdict.metrics["corrupted_rows"]


# -- steady state: inconclusive, nothing broken ----------------------------------------------------
def test_a_validator_that_fails_everything_is_inconclusive_before_anything_breaks(data: Path) -> None:
    outcome = _run(_doc(data, validator="fail-all"), "fail-all", data)
    assert outcome.verdict.status == "inconclusive", outcome.verdict
    assert "refuses the clean batch" in outcome.verdict.reason


def test_a_pipeline_that_reads_yesterdays_batch_is_inconclusive_before_anything_breaks(data: Path) -> None:
    outcome = _run(_doc(data, prepare="yesterday"), "yesterday", data)
    assert outcome.verdict.status == "inconclusive", outcome.verdict
    assert "it read another batch" in outcome.verdict.reason


def test_an_existing_training_set_is_backed_up_and_put_back(data: Path) -> None:
    """The partition the step writes already exists (yesterday's run): the leaky run overwrites it; restore
    keeps what it wrote from the damage as evidence and puts the original back byte for byte."""
    out = data / "train-parquet" / "date=20261202"
    out.mkdir()
    (out / "train.parquet").write_bytes(b"an older training set")
    before = tree_digests(data)
    outcome = run_stage(parse_stage(_doc(data, prepare="ignore-validation")), "overwrite")
    assert outcome.verdict.status == "failed", outcome.verdict
    assert outcome.restored
    after = tree_digests(data)
    kept = [k for k in after if k.startswith("train-parquet/.mlchaos-quarantine")]
    assert kept, after  # the leaked training set, kept as evidence
    assert {k: v for k, v in after.items() if k not in kept} == before


# -- bad input: exit 2 naming the field, nothing touched -------------------------------------------
@pytest.mark.parametrize(("change", "field"), [
    (lambda s: s["faults"][0].update(columns=["agee"]), "spec.faults[0]"),
    (lambda s: s["faults"][0].update(fraction=0), "spec.faults.0.nulls.fraction"),
    (lambda s: s["faults"][0].update(fraction=1.5), "spec.faults.0.nulls.fraction"),
    (lambda s: s.update(max_fraction=0.05), "spec.max_fraction"),
    (lambda s: s["batch"].update(pattern=r"(\d+)\.txt"), "spec.batch.pattern"),
    (lambda s: s["batch"].update(store=s["batch"]["store"] + "-gone"), "spec.batch.store: "),
    (lambda s: s["downstream"].update(store=s["downstream"]["store"] + "-gone"), "spec.downstream.store: "),
    (lambda s: s.update(key=["customer"]), "spec.key"),
], ids=["unknown-column", "zero-fraction", "fraction-above-one", "max-fraction", "no-batch", "no-store",
        "no-downstream-store", "unknown-key"])
def test_bad_data_corruption_specs(data: Path, tmp_path: Path, change: Any, field: str) -> None:
    doc = _doc(data)
    change(doc["spec"])
    assert_refused_untouched(doc, field, data, tmp_path)


def test_a_batch_that_is_not_a_table_is_refused(data: Path, tmp_path: Path) -> None:
    (data / "parquet" / "date=20261203").mkdir()
    (data / "parquet" / "date=20261203" / "notes.txt").write_text("not a table")
    message = assert_refused_untouched(_doc(data), "spec.batch", data, tmp_path)
    assert "Parquet, CSV or JSON lines" in message


def test_a_store_outside_the_allowlist_is_refused(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCHAOS_ALLOWED_PATHS", str(tmp_path / "elsewhere"))
    message = assert_refused_untouched(_doc(data), "spec.batch", data, tmp_path)
    assert "MLCHAOS_ALLOWED_PATHS" in message


def test_restore_after_a_crash_recognises_its_own_corrupted_copy(data: Path, mlchaos_home: Path) -> None:
    """A crash between writing the corrupted copy and recording its digest: the corruption is seeded, so
    restore writes it again aside, recognises the copy in place as its own, and removes it."""
    import json
    import sqlite3

    from mlchaos_steps.api import restore_run, run_phase

    before = tree_digests(data)
    stage = parse_stage(_doc(data, prepare=None))
    run_phase(stage, "snapshot", "crashed")
    run_phase(stage, "inject", "crashed")
    with sqlite3.connect(mlchaos_home / "ledger.db") as db:
        row_id, undo_json = db.execute("SELECT id, undo_json FROM actions WHERE run_key = 'crashed' "
                                       "AND kind = 'quarantine-batch'").fetchone()
        undo = json.loads(undo_json)
        undo.pop("damaged_on_disk")  # a local store records the copy by what it is on disk
        db.execute("UPDATE actions SET undo_json = ? WHERE id = ?", (json.dumps(undo), row_id))
    output = restore_run("crashed")
    assert output["actions"][0].get("removed_own_damage") is True, output
    assert "kept_foreign" not in output["actions"][0]
    assert tree_digests(data) == before


def test_a_snapshot_that_fails_after_its_backup_puts_the_training_set_back_itself(data: Path) -> None:
    """Snapshot alone (an Airflow or Argo task): it ran the downstream step on the clean batch, then found
    the steady state broken; what it changed is undone before it exits, without a restore task."""
    from mlchaos_steps.api import run_phase
    from mlchaos_steps.core.records import ExecutionStatus
    from mlchaos_steps.errors import InfrastructureError
    from mlchaos_steps.ledgers import SqliteLedger

    out = data / "train-parquet" / "date=20261202"
    out.mkdir()
    (out / "train.parquet").write_bytes(b"an older training set")
    before = tree_digests(data)
    with pytest.raises(InfrastructureError, match="it read another batch"):
        run_phase(parse_stage(_doc(data, prepare="yesterday")), "snapshot", "snap-only")
    assert tree_digests(data) == before
    assert SqliteLedger().get("snap-only").status == ExecutionStatus.RESTORED  # type: ignore[union-attr]


def test_inject_is_not_skipped_because_snapshot_took_a_backup(data: Path) -> None:
    from mlchaos_steps.api import restore_run, run_phase

    stage = parse_stage(_doc(data))
    run_phase(stage, "snapshot", "phases")
    assert run_phase(stage, "inject", "phases").status == "ok"
    assert run_phase(stage, "inject", "phases").status == "skipped"  # retries never inject twice
    restore_run("phases")


DIES_AFTER_RESTORE = """
import os, signal, sys
from mlchaos_steps.engine import phases, removals
removals.start = lambda *args: None  # the process is killed before its removal thread runs
phases.restore_run(sys.argv[1])
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("touched", [False, True])
def test_a_removal_a_dead_process_left_is_finished_by_restore_orphaned(data: Path, touched: bool) -> None:
    """Restore puts the batch back with two renames and removes the corrupted copy after the phase; killed
    in between, the copy waits in quarantine, named in the ledger, until `restore --orphaned` removes it
    (only while it is exactly the copy the stage wrote: one written to since is kept as evidence)."""
    from mlchaos_steps.api import restore_orphaned, run_phase
    from mlchaos_steps.ledgers import SqliteLedger

    before = tree_digests(data)
    stage = parse_stage(_doc(data, prepare=None))
    run_phase(stage, "snapshot", "killed")
    run_phase(stage, "inject", "killed")
    died = subprocess.run([sys.executable, "-c", DIES_AFTER_RESTORE, "killed"], capture_output=True, text=True)
    assert died.returncode == -9, died.stderr
    left = [k for k in tree_digests(data) if ".mlchaos-quarantine/" in k]
    assert left and all(".removing" in k for k in left), left
    assert {k: v for k, v in tree_digests(data).items() if k not in left} == before  # the batch is whole
    assert SqliteLedger().get("killed").state["removals"]["entries"]  # type: ignore[union-attr]
    if touched:
        with open(data / left[0], "ab") as f:
            f.write(b"written after restore set it aside")
    done = restore_orphaned(older_than_s=0)
    assert [d["run_key"] for d in done] == ["killed"], done
    after = tree_digests(data)
    assert [k for k in after if ".mlchaos-quarantine/" in k] == (left if touched else [])
    assert {k: v for k, v in after.items() if k not in left} == before
    assert ("kept" in done[0]["removed"][0]) == touched, done
    assert not SqliteLedger().get("killed").state.get("removals")  # type: ignore[union-attr]
