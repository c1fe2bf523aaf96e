"""Bad input exits 2 with a message naming the field, and nothing is touched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, pod_doc, replica_pids, tree_digests, wipe_doc, write_stage

from mlchaos_steps.errors import SpecError
from mlchaos_steps.examples.workloads import ExampleServer
from mlchaos_steps.ledgers import SqliteLedger
from mlchaos_steps.stages import parse_stage, stage_schema


def _assert_refused(stage_file: Path, field: str, *extra: str) -> str:
    proc = cli("run", str(stage_file), *extra)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert field in proc.stderr, proc.stderr
    return proc.stderr


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: s.update(store="file:///"), "spec.store"),
        (lambda s: s.update(store=s["store"] + "/../.."), "spec.store"),
        (lambda s: s["resume"].update(command="python train.py --resume"), "spec.resume.command"),
        (lambda s: s.update(count=9), "spec.count"),
        (lambda s: s.update(mode="shred"), "spec.mode"),
        (lambda s: s.update(pattern="step-\\d+"), "spec.pattern"),
        (lambda s: s.update(colour="red"), "spec.colour"),
        (lambda s: s["resume"].update(timeout_s=float("inf")), "spec.resume.timeout_s: must be a finite number"),
        (lambda s: s["resume"].update(timeout_s=float("nan")), "spec.resume.timeout_s: must be a finite number"),
    ],
    ids=["root-store", "dotdot", "shell-string", "count-too-big", "unknown-mode", "no-step-group", "unknown-field",
         "infinite-timeout", "nan-timeout"],
)
def test_bad_checkpoint_wipe_specs(store: Path, tmp_path: Path, change: Any, field: str) -> None:
    doc = wipe_doc(store)
    change(doc["spec"])
    before = tree_digests(store)
    message = _assert_refused(write_stage(tmp_path / "bad.yaml", doc), field)
    assert "mlchaos: error:" in message
    assert tree_digests(store) == before
    assert not (store / ".mlchaos-quarantine").exists()


def test_symlink_escaping_the_store_is_refused(store: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("do not touch")
    (store / "step-900").symlink_to(outside)
    before = tree_digests(store)
    message = _assert_refused(write_stage(tmp_path / "bad.yaml", wipe_doc(store)), "spec.store")
    assert "outside the store" in message
    assert (outside / "precious.txt").read_text() == "do not touch"
    assert tree_digests(store) == before


def test_symlink_inside_a_checkpoint_folder_escaping_is_refused(store: Path, tmp_path: Path) -> None:
    (store / "step-500" / "weights").symlink_to("/etc")
    _assert_refused(write_stage(tmp_path / "bad.yaml", wipe_doc(store)), "spec.store")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: s["target"]["local"].update(selector={}), "spec.target.local.selector"),
        (lambda s: s["target"]["local"].update(selector={"cmdline": "  "}), "spec.target.local.selector.cmdline"),
        (lambda s: (s.pop("count"), s.update(percent=150)), "spec.percent"),
        (lambda s: s.update(count=5), "spec.count"),
        (lambda s: s.update(count=None), "spec"),
        (lambda s: s.update(count=20), "spec"),  # above max_count
        (lambda s: s["probe"]["http"].update(url="127.0.0.1:5001/ping"), "spec.probe.http.url"),
        (lambda s: s.update(signal="SIGSTOP"), "spec.signal"),
    ],
    ids=["empty-selector", "blank-cmdline", "percent-150", "count-too-big", "no-count", "over-cap", "url", "signal"],
)
def test_bad_pod_delete_specs(healthy_server: ExampleServer, tmp_path: Path, change: Any, field: str) -> None:
    doc = pod_doc(healthy_server)
    change(doc["spec"])
    before = replica_pids(healthy_server)
    _assert_refused(write_stage(tmp_path / "bad.yaml", doc), field)
    assert replica_pids(healthy_server) == before


def test_selector_matching_nothing(tmp_path: Path) -> None:
    selector = {"env": {"MLCHAOS_APP": "nobody-runs-this"}}
    doc = {"kind": "PodDelete", "spec": {"target": {"local": {"selector": selector}}, "count": 1}}
    message = _assert_refused(write_stage(tmp_path / "bad.yaml", doc), "spec.target.local.selector")
    assert "matches no running process" in message


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("kind: Meteor\nspec: {}\n", "kind"),
        ("- just\n- a list\n", "document"),
        ("kind: CheckpointWipe\n", "spec"),
        ("kind: CheckpointWipe\nspec: [1]\n", "spec"),
        ("kind: [unclosed\n", "not valid YAML"),
        ("", "holds no stage"),
        ("1: x\nkind: CheckpointWipe\nspec: {}\n", "1: unknown top-level field (int key"),  # keys of mixed types
        ("true: x\nkind: CheckpointWipe\nspec: {}\n", "True: unknown top-level field (bool key"),
        ("kind: CheckpointWipe\nspec: {1: x, store: /data/c}\n", "spec.1: is not a field name"),
    ],
)
def test_malformed_stage_files(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    _assert_refused(path, field)


@pytest.mark.parametrize(("change", "field"), [
    (lambda r: r.update(command=["/nonexistent/python", "train.py"]), "spec.resume.command"),
    (lambda r: r.update(cwd="/nonexistent/project"), "spec.resume.cwd"),
], ids=["program", "cwd"])
def test_dry_run_refuses_a_resume_command_that_cannot_run(store: Path, tmp_path: Path, change: Any,
                                                          field: str) -> None:
    """--dry-run answers what the run would: a program or folder missing here is refused with exit 2."""
    doc = wipe_doc(store)
    change(doc["spec"]["resume"])
    _assert_refused(write_stage(tmp_path / "w.yaml", doc), field, "--dry-run")


def test_single_phase_needs_a_run_key(store: Path, tmp_path: Path) -> None:
    _assert_refused(write_stage(tmp_path / "w.yaml", wipe_doc(store)), "--run-key", "--phase", "inject")


def test_inject_without_snapshot_is_refused(store: Path, tmp_path: Path) -> None:
    before = tree_digests(store)
    _assert_refused(write_stage(tmp_path / "w.yaml", wipe_doc(store)), "--phase inject",
                    "--phase", "inject", "--run-key", "k1")
    assert tree_digests(store) == before


def test_run_key_reused_for_another_spec_is_refused(store: Path, tmp_path: Path) -> None:
    first = write_stage(tmp_path / "a.yaml", wipe_doc(store, "delete-latest"))
    other = write_stage(tmp_path / "b.yaml", wipe_doc(store, "truncate-latest"))
    assert cli("run", str(first), "--phase", "snapshot", "--run-key", "shared").returncode == 0
    _assert_refused(other, "--run-key", "--phase", "snapshot", "--run-key", "shared")
    assert cli("restore", "--run-key", "shared").returncode == 0


def test_allowlist_refuses_stores_outside_it(store: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "allowed-only-here"
    elsewhere.mkdir()
    proc = cli("run", str(write_stage(tmp_path / "w.yaml", wipe_doc(store))),
                   env={"MLCHAOS_ALLOWED_PATHS": str(elsewhere)})
    assert proc.returncode == 2 and "MLCHAOS_ALLOWED_PATHS" in proc.stderr


def test_python_api_raises_spec_error_naming_the_field(store: Path) -> None:
    doc = wipe_doc(store)
    doc["spec"]["resume"]["command"] = "python train.py"
    with pytest.raises(SpecError) as err:
        parse_stage(doc)
    assert err.value.field == "spec.resume.command"
    assert "argument list" in str(err.value)


def test_schema_command_prints_every_kind() -> None:
    proc = cli("schema")
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    assert {v["title"] for v in schema["oneOf"]} == {"CheckpointWipe", "PodDelete", "RegistryArtifactRemoval",
                                                      "CanaryFailure", "DataCorruption", "FeatureDrift",
                                                      "DependencyLatency", "StreamDelay"}
    assert schema == json.loads(json.dumps(stage_schema()))


def test_schema_validates_the_examples_and_rejects_bad_ones(store: Path) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(stage_schema())
    validator.validate(wipe_doc(store))
    bad = wipe_doc(store)
    bad["spec"]["mode"] = "shred"
    assert list(validator.iter_errors(bad))


def test_nothing_reaches_the_ledger_on_bad_input(store: Path, tmp_path: Path) -> None:
    doc = wipe_doc(store)
    doc["spec"]["count"] = 99
    _assert_refused(write_stage(tmp_path / "bad.yaml", doc), "spec.count")
    assert all(e.status == "restored" for e in SqliteLedger().executions())
    assert SqliteLedger().leases() == {}
