"""checkpoint-wipe against the real example trainer: passes when it resumes well, fails when not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import checkpoint_digests, cli_json, mlchaos, mlchaos_json, tree_digests, wipe_doc, write_stage

from mlchaos_steps.api import restore_run, run_phase, run_stage
from mlchaos_steps.core.records import ExecutionStatus
from mlchaos_steps.examples import workloads
from mlchaos_steps.ledgers import SqliteLedger
from mlchaos_steps.stages import parse_stage

MODES = ["delete-latest", "truncate-latest", "corrupt-latest"]


@pytest.mark.parametrize("mode", MODES)
def test_healthy_trainer_passes_and_store_is_restored(store: Path, mode: str) -> None:
    before = tree_digests(store)
    outcome = run_stage(parse_stage(wipe_doc(store, mode)), "wipe-healthy")
    assert outcome.verdict.status == "passed", outcome.verdict
    assert outcome.verdict.evidence["resumed_from_step"] == 400
    assert outcome.verdict.metrics["lost_steps"] == 100
    assert outcome.restored
    assert tree_digests(store) == before  # quarantine folder removed too: nothing left behind


@pytest.mark.parametrize("mode", MODES)
def test_broken_trainer_fails(store: Path, mode: str) -> None:
    before = checkpoint_digests(store)
    outcome = run_stage(parse_stage(wipe_doc(store, mode, broken=True)), "wipe-broken")
    assert outcome.verdict.status == "failed", outcome.verdict
    if mode == "delete-latest":  # the pointer names a missing checkpoint: it restarts from zero
        assert outcome.verdict.evidence["resumed_from_step"] == 0
        assert "500 steps lost" in outcome.verdict.reason
    else:  # it trusts the damaged checkpoint
        assert outcome.verdict.evidence["resumed_from_step"] == 500
        assert "a checkpoint this stage wiped" in outcome.verdict.reason
    assert outcome.restored
    assert checkpoint_digests(store) == before


def test_resume_further_back_than_budget_fails(store: Path) -> None:
    doc = wipe_doc(store, "delete-latest", count=3)
    doc["spec"]["resume"]["max_lost_steps"] = 200  # newest intact is step-200: 300 steps lost
    outcome = run_stage(parse_stage(doc), "over-budget")
    assert outcome.verdict.status == "failed"
    assert "300 steps lost since the newest checkpoint (500), above max_lost_steps 200" in outcome.verdict.reason


def test_resume_command_that_reports_nothing_is_inconclusive(store: Path) -> None:
    doc = wipe_doc(store, resume={"command": ["true"], "max_lost_steps": 100})
    outcome = run_stage(parse_stage(doc), "silent")
    assert outcome.verdict.status == "inconclusive"
    assert "mlchaos_resumed_from_step" in outcome.verdict.reason


def test_crashing_resume_command_fails(store: Path) -> None:
    doc = wipe_doc(store, resume={"command": ["false"], "max_lost_steps": 100})
    assert run_stage(parse_stage(doc), "crash").verdict.status == "failed"


def test_phases_in_separate_processes_share_the_ledger(store: Path, tmp_path: Path) -> None:
    stage_file = write_stage(tmp_path / "wipe.yaml", wipe_doc(store, "corrupt-latest"))
    before = tree_digests(store)
    for phase in ("snapshot", "inject"):
        proc = mlchaos("run", str(stage_file), "--phase", phase, "--run-key", "pipeline-1")
        assert proc.returncode == 0, proc.stderr
    assert (store / "step-500").exists()
    assert checkpoint_digests(store) != before  # step-500 is corrupted on disk now
    code, result = mlchaos_json("run", str(stage_file), "--phase", "verify", "--run-key", "pipeline-1")
    assert (code, result["verdict"]) == (0, "passed")
    proc = mlchaos("run", str(stage_file), "--phase", "restore", "--run-key", "pipeline-1")
    assert proc.returncode == 0, proc.stderr
    assert tree_digests(store) == before


def test_retry_never_injects_twice_and_restore_is_idempotent(store: Path) -> None:
    stage = parse_stage(wipe_doc(store, "delete-latest"))
    before = tree_digests(store)
    run_phase(stage, "snapshot", "retry-1")
    assert run_phase(stage, "inject", "retry-1").status == "ok"
    assert (store / "step-400").exists()  # only the newest is gone
    assert not (store / "step-500").exists()
    second = run_phase(stage, "inject", "retry-1")
    assert second.status == "skipped"
    assert (store / "step-400").exists()  # a second inject would have taken step-400 as the newest
    assert len(SqliteLedger().actions("retry-1")) == 1
    first = restore_run("retry-1")
    assert first["restored"] == 1
    assert restore_run("retry-1")["restored"] == 0
    assert tree_digests(store) == before


def test_finished_run_key_returns_its_verdict_without_injecting_again(store: Path) -> None:
    stage = parse_stage(wipe_doc(store))
    first = run_stage(stage, "done-once")
    again = run_stage(stage, "done-once")
    assert again.verdict == first.verdict
    assert len(SqliteLedger().actions("done-once")) == 1


def test_dry_run_changes_nothing(store: Path, tmp_path: Path, mlchaos_home: Path) -> None:
    stage_file = write_stage(tmp_path / "wipe.yaml", wipe_doc(store, "delete-latest"))
    before = tree_digests(store)
    code, result = cli_json("run", str(stage_file), "--dry-run")
    assert code == 0
    assert result["plan"]["would_wipe"] == ["step-500"]
    assert tree_digests(store) == before
    assert SqliteLedger().executions() == []


def test_trainer_writing_the_same_name_is_kept_not_deleted(store: Path) -> None:
    """The resume run rewrites step-500; restore puts the original back and keeps the new one aside."""
    doc = wipe_doc(store, "delete-latest",
                   resume={"command": workloads.resume_command(store, save=True), "max_lost_steps": 200})
    before = checkpoint_digests(store)
    outcome = run_stage(parse_stage(doc), "rewrites")
    assert outcome.verdict.status == "passed"
    assert checkpoint_digests(store) == before
    restored = outcome.phases[-1].output["actions"][0]
    if "displaced" in restored:  # the trainer's own step-500 differs from the original: kept
        assert Path(restored["displaced"]).exists()


def test_non_local_store_copies_then_checks_digest_before_deleting() -> None:
    """memory:// has no rename: the engine copies, verifies the copy's digest, then deletes."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for step in (100, 200):
        fs.pipe(f"/mlchaos-test/ckpts/step-{step}/model.bin", os.urandom(4096))
    before = {p: fs.cat(p) for p in fs.find("/mlchaos-test/ckpts")}
    doc = {"kind": "CheckpointWipe", "spec": {
        "store": "memory:///mlchaos-test/ckpts", "mode": "corrupt-latest",
        "resume": {"command": ["python", "-c", "print('{\"mlchaos_resumed_from_step\": 100}')"],
                   "max_lost_steps": 100}}}
    stage = parse_stage(doc)
    run_phase(stage, "snapshot", "mem-1")
    run_phase(stage, "inject", "mem-1")
    assert fs.cat("/mlchaos-test/ckpts/step-200/model.bin") != before["/mlchaos-test/ckpts/step-200/model.bin"]
    assert run_phase(stage, "verify", "mem-1").verdict.status == "passed"
    restore_run("mem-1")
    assert {p: fs.cat(p) for p in fs.find("/mlchaos-test/ckpts")} == before
    fs.rm("/mlchaos-test", recursive=True)


def test_restore_refuses_a_quarantined_copy_with_the_wrong_digest(store: Path) -> None:
    stage = parse_stage(wipe_doc(store, "delete-latest"))
    run_phase(stage, "snapshot", "tampered")
    run_phase(stage, "inject", "tampered")
    quarantined = next((store / ".mlchaos-quarantine").rglob("model.pkl"))
    quarantined.write_bytes(b"tampered")
    with pytest.raises(Exception, match="does not match its recorded digest"):
        restore_run("tampered")
    assert quarantined.exists()  # kept, never deleted
    execution = SqliteLedger().get("tampered")
    assert execution is not None and execution.status != ExecutionStatus.RESTORED


def test_run_stage_records_each_phase_once(store: Path) -> None:
    outcome = run_stage(parse_stage(wipe_doc(store)), "phases-once")
    assert [p.phase for p in outcome.phases] == ["snapshot", "inject", "verify", "restore"]
