"""Crash recovery, the kill switch, per-target leases and the journal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, checkpoint_digests, cli, pod_doc, replica_pids, tree_digests, wipe_doc, write_stage

from mlchaos_steps.api import restore_orphaned, run_phase, run_stage
from mlchaos_steps.core.records import ActionState, ExecutionStatus
from mlchaos_steps.errors import KillSwitchEngaged, TargetBusy
from mlchaos_steps.examples import workloads
from mlchaos_steps.examples.workloads import ExampleServer
from mlchaos_steps.ledgers import SqliteLedger
from mlchaos_steps.stages import parse_stage


def _start_run(stage_file: Path, run_key: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(BIN / "mlchaos"), "run", str(stage_file), "--run-key", run_key],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_applied(run_key: str, proc: subprocess.Popen[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            actions = SqliteLedger().actions(run_key)
        except Exception:  # the ledger file may not exist yet
            actions = []
        if actions and all(a.state == ActionState.APPLIED for a in actions):
            return
        time.sleep(0.005)
    raise AssertionError("inject never completed")


def test_sigkill_after_inject_then_restore_orphaned_checkpoint_wipe(store: Path, tmp_path: Path) -> None:
    before = tree_digests(store)
    # A resume that takes a while, so the process is surely still running when we kill it.
    resume = {"command": workloads.resume_command(store, step_seconds=0.2), "max_lost_steps": 200}
    stage_file = write_stage(tmp_path / "wipe.yaml", wipe_doc(store, "corrupt-latest", resume=resume))
    proc = _start_run(stage_file, "crash-wipe")
    _wait_for_applied("crash-wipe", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint_digests(store) != before  # it really died with the checkpoint broken
    result = cli("restore", "--orphaned", "--json")
    assert result.returncode == 0, result.stderr
    restored = json.loads(result.stdout)["restored"]
    assert [r["run_key"] for r in restored] == ["crash-wipe"]
    assert tree_digests(store) == before
    assert SqliteLedger().get("crash-wipe").status == ExecutionStatus.RESTORED  # type: ignore[union-attr]
    # and again: nothing left to do
    assert json.loads(cli("restore", "--orphaned", "--json").stdout) == {"restored": [], "left_open": []}


def test_sigkill_after_inject_then_restore_orphaned_pod_delete(healthy_server: ExampleServer, tmp_path: Path) -> None:
    stage_file = write_stage(tmp_path / "pod.yaml", pod_doc(healthy_server))
    proc = _start_run(stage_file, "crash-pod")
    _wait_for_applied("crash-pod", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = cli("restore", "--orphaned", "--json")
    assert result.returncode == 0, result.stderr
    assert [r["run_key"] for r in json.loads(result.stdout)["restored"]] == ["crash-pod"]
    assert len(replica_pids(healthy_server)) == 2
    assert SqliteLedger().get("crash-pod").status == ExecutionStatus.RESTORED  # type: ignore[union-attr]


def test_orphaned_leaves_runs_of_live_pipelines_alone(store: Path) -> None:
    stage = parse_stage(wipe_doc(store))
    run_phase(stage, "snapshot", "between-tasks")
    run_phase(stage, "inject", "between-tasks")
    # Between two Airflow tasks nobody owns the run; it is not orphaned until it goes stale.
    assert restore_orphaned() == []
    assert [r["run_key"] for r in restore_orphaned(older_than_s=0)] == ["between-tasks"]


def test_stop_file_stops_verify_and_restores(store: Path, tmp_path: Path, mlchaos_home: Path) -> None:
    before = tree_digests(store)
    resume = {"command": workloads.resume_command(store, step_seconds=0.5), "max_lost_steps": 200}
    stage_file = write_stage(tmp_path / "wipe.yaml", wipe_doc(store, resume=resume))
    proc = _start_run(stage_file, "stopped")
    _wait_for_applied("stopped", proc)
    (mlchaos_home / "STOP").touch()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3, (stdout, stderr)
    execution = SqliteLedger().get("stopped")
    assert execution is not None and execution.verdict == "inconclusive"
    assert "kill switch" in execution.verdict_detail["reason"]  # type: ignore[index]
    assert execution.status == ExecutionStatus.RESTORED
    assert tree_digests(store) == before


def test_kill_switch_env_refuses_to_start(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = tree_digests(store)
    monkeypatch.setenv("MLCHAOS_DISABLED", "1")
    with pytest.raises(KillSwitchEngaged):
        run_phase(parse_stage(wipe_doc(store)), "snapshot", "disabled")
    outcome = run_stage(parse_stage(wipe_doc(store)), "disabled-all")
    assert outcome.verdict.status == "inconclusive"
    assert tree_digests(store) == before


def test_stop_file_between_snapshot_and_inject_blocks_inject(store: Path, mlchaos_home: Path) -> None:
    stage = parse_stage(wipe_doc(store))
    run_phase(stage, "snapshot", "late-stop")
    (mlchaos_home / "STOP").touch()
    with pytest.raises(KillSwitchEngaged):
        run_phase(stage, "inject", "late-stop")
    assert (store / "step-500").exists()


def test_two_runs_never_break_the_same_target(store: Path) -> None:
    stage = parse_stage(wipe_doc(store))
    run_phase(stage, "snapshot", "first")
    with pytest.raises(TargetBusy, match="held by run 'first'"):
        run_phase(stage, "snapshot", "second")
    run_phase(stage, "restore", "first")
    run_phase(stage, "snapshot", "second")  # free again
    run_phase(stage, "restore", "second")


def test_journal_is_a_valid_chaos_toolkit_journal(store: Path) -> None:
    from chaoslib.experiment import ensure_experiment_is_valid

    passed = run_stage(parse_stage(wipe_doc(store)), "journal-ok")
    journal = json.loads(Path(passed.journal).read_text())  # type: ignore[arg-type]
    ensure_experiment_is_valid(journal["experiment"])
    assert journal["status"] == "completed" and journal["deviated"] is False
    assert [r["activity"]["name"] for r in journal["run"]] == ["snapshot", "inject", "verify"]
    assert all(r["status"] == "succeeded" and r["duration"] >= 0 for r in journal["run"])
    assert journal["rollbacks"][0]["activity"]["name"] == "restore"
    assert journal["steady_states"]["after"]["steady_state_met"] is True
    assert journal["chaoslib-version"]

    failed = run_stage(parse_stage(wipe_doc(store, broken=True)), "journal-bad")
    journal = json.loads(Path(failed.journal).read_text())  # type: ignore[arg-type]
    assert journal["status"] == "failed" and journal["deviated"] is True


def test_secrets_never_reach_the_journal_or_ledger_output(store: Path) -> None:
    resume = {"command": [*workloads.resume_command(store), "--api-key=sk-live-123"], "max_lost_steps": 200,
              "env": {"HF_TOKEN": "hf_secret_value", "HARMLESS": "visible"}}
    outcome = run_stage(parse_stage(wipe_doc(store, resume=resume)), "secret-run")
    text = Path(outcome.journal).read_text()  # type: ignore[arg-type]
    assert "hf_secret_value" not in text and "sk-live-123" not in text
    assert "visible" in text
    ledger_bytes = b"".join(p.read_bytes() for p in Path(os.environ["MLCHAOS_HOME"]).glob("ledger.db*"))
    assert b"hf_secret_value" not in ledger_bytes and b"sk-live-123" not in ledger_bytes


def test_ledger_command_shows_everything_restored(store: Path) -> None:
    run_stage(parse_stage(wipe_doc(store)), "listed")
    proc = cli("ledger", "--json")
    rows = json.loads(proc.stdout)
    assert rows == [{"run_key": "listed", "stage": "checkpoint-wipe", "status": "restored", "verdict": "passed",
                     "actions": {"restored": 1}}]
    assert json.loads(cli("ledger", "--open", "--json").stdout) == []
