"""Both ledgers honour one contract; the MLflow one lets phases run on machines that share nothing else."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, mlchaos, mlchaos_json, tree_digests, wipe_doc, write_stage

from mlchaos_steps.core.records import ActionState, ExecutionStatus
from mlchaos_steps.errors import TargetBusy
from mlchaos_steps.ledgers import SqliteLedger


@pytest.fixture(params=["sqlite", "mlflow"])
def ledger(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    if request.param == "sqlite":
        return SqliteLedger()
    request.getfixturevalue("mlflow_server")
    from mlchaos_steps.ledgers.mlflow import MlflowLedger

    return MlflowLedger()


def test_ledger_contract(ledger: Any) -> None:
    import uuid

    key = f"contract-{uuid.uuid4().hex[:8]}"
    spec = {"store": "file:///x", "big": "y" * 20_000}  # larger than one MLflow tag
    execution = ledger.create(key, "CheckpointWipe", "checkpoint-wipe", spec)
    assert execution.spec == spec and execution.status == "created"
    assert ledger.create(key, "CheckpointWipe", "checkpoint-wipe", spec).run_key == key  # idempotent
    ledger.update(key, state={"a": 1}, phase=("snapshot", {"status": "ok"}), status="snapshotted")
    ledger.update(key, state={"b": 2})
    got = ledger.get(key)
    assert got.state == {"a": 1, "b": 2} and got.phases["snapshot"]["status"] == "ok"
    action = ledger.plan_action(key, "quarantine-checkpoint", "t1", {"digest": "d"})
    assert [a.state for a in ledger.actions(key)] == [ActionState.PLANNED]
    ledger.mark_action(action, ActionState.APPLIED, undo={"digest": "d", "extra": 1})
    assert ledger.actions(key)[0].undo == {"digest": "d", "extra": 1}
    # many at once (pod-delete's 200 victims): planned in one write, after the earlier action, in order
    batch = ledger.plan_actions(key, "delete-pod", [(f"pod:ns/p{i}", {"uid": f"u{i}"}) for i in range(150)])
    recorded = ledger.actions(key)
    assert [a.id for a in recorded] == [action.id] + [a.id for a in batch] and len(recorded) == 151
    assert [a.target for a in recorded[1:]] == [f"pod:ns/p{i}" for i in range(150)]
    assert {a.state for a in recorded[1:]} == {ActionState.PLANNED}
    ledger.mark_actions(batch, ActionState.APPLIED)
    assert {a.state for a in ledger.actions(key)} == {ActionState.APPLIED}
    assert ledger.actions(key)[150].undo == {"uid": "u149"}
    ledger.acquire_lease("target-A", key)
    ledger.acquire_lease("target-A", key)  # re-entrant for the same run
    other = f"{key}-other"
    ledger.create(other, "CheckpointWipe", "checkpoint-wipe", spec)
    with pytest.raises(TargetBusy):
        ledger.acquire_lease("target-A", other)
    ledger.release_leases(key)
    ledger.acquire_lease("target-A", other)
    ledger.release_leases(other)
    ledger.claim(key)
    assert ledger.get(key).owner_pid == os.getpid()
    ledger.release_owner(key)
    assert ledger.get(key).owner_pid is None
    ledger.update(key, status=ExecutionStatus.RESTORED, verdict="passed", verdict_detail={"status": "passed"})
    assert key not in [e.run_key for e in ledger.open_executions()]
    assert ledger.get(key).verdict_detail == {"status": "passed"}


@pytest.mark.heavy(80)
def test_phases_on_separate_machines_share_state_through_mlflow(mlflow_server: str, store: Path, tmp_path: Path
                                                                ) -> None:
    """Each phase gets its own empty MLCHAOS_HOME, as separate pods would: only the server is shared."""
    stage_file = write_stage(tmp_path / "wipe.yaml", wipe_doc(store, "corrupt-latest"))
    before = tree_digests(store)
    for phase in ("snapshot", "inject", "verify", "restore"):
        env = {"MLCHAOS_LEDGER": "mlflow", "MLCHAOS_HOME": str(tmp_path / f"pod-{phase}")}
        if phase == "verify":
            code, result = mlchaos_json("run", str(stage_file), "--phase", phase, "--run-key", "argo-1", env=env)
            assert (code, result["verdict"]) == (0, "passed")
        else:
            proc = mlchaos("run", str(stage_file), "--phase", phase, "--run-key", "argo-1", env=env)
            assert proc.returncode == 0, proc.stderr
    assert tree_digests(store) == before
    proc = cli("ledger", "--json", env={"MLCHAOS_LEDGER": "mlflow"})
    rows = [r for r in __import__("json").loads(proc.stdout) if r["run_key"] == "argo-1"]
    assert rows and rows[0]["status"] == "restored" and rows[0]["verdict"] == "passed"


def test_registry_backup_travels_with_the_mlflow_ledger(two_versions: tuple[str, str, str], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Snapshot and inject on one 'pod', restore on another that never saw the backup (its own empty
    MLCHAOS_HOME; the phases run in this process, the separate processes are tested just above)."""
    import yaml

    from mlchaos_steps.verification import model_loads

    name, _, v2 = two_versions
    stage_file = tmp_path / "rar.yaml"
    stage_file.write_text(yaml.safe_dump({"kind": "RegistryArtifactRemoval", "spec": {"model": name, "version": v2}}))
    for phase, pod in (("snapshot", "a"), ("inject", "a"), ("restore", "b")):
        proc = cli("run", str(stage_file), "--phase", phase, "--run-key", "argo-rar",
                   env={"MLCHAOS_LEDGER": "mlflow", "MLCHAOS_HOME": str(tmp_path / f"pod-{pod}")})
        assert proc.returncode == 0, proc.stderr
        if phase == "inject":
            assert not model_loads(f"models:/{name}/{v2}").ok
    assert model_loads(f"models:/{name}/{v2}").ok


def test_mlflow_lease_lets_exactly_one_of_many_pods_in(mlflow_server: str, store: Path, tmp_path: Path) -> None:
    """Four 'pods' (own MLCHAOS_HOME each, so no shared file lock) snapshot the same store at once."""
    import subprocess

    from conftest import BIN

    stage_file = write_stage(tmp_path / "wipe.yaml", wipe_doc(store))
    procs = [subprocess.Popen([str(BIN / "mlchaos"), "run", str(stage_file), "--phase", "snapshot", "--run-key",
                               f"pod-{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "MLCHAOS_LEDGER": "mlflow", "MLCHAOS_HOME": str(tmp_path / f"h{i}")})
             for i in range(4)]
    codes = [p.wait(timeout=300) for p in procs]
    assert sorted(codes) == [0] + [3] * 3, [(c, p.stderr.read()[-300:]) for c, p in zip(codes, procs, strict=True)]  # type: ignore[union-attr]
    winner = f"pod-{codes.index(0)}"
    env = {"MLCHAOS_LEDGER": "mlflow", "MLCHAOS_HOME": str(tmp_path / "h-restore")}
    from mlchaos_steps.ledgers.mlflow import MlflowLedger

    assert winner in MlflowLedger().leases().values()
    assert cli("restore", "--run-key", winner, env=env).returncode == 0
    assert winner not in MlflowLedger().leases().values()


def test_mlflow_lease_expires(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import time
    import uuid

    from mlchaos_steps.ledgers.mlflow import MlflowLedger

    ledger = MlflowLedger()
    target, first, second = f"t-{uuid.uuid4().hex[:6]}", f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    for key in (first, second):
        ledger.create(key, "CheckpointWipe", "checkpoint-wipe", {})
    monkeypatch.setenv("MLCHAOS_LEASE_TTL_S", "3")  # time for the next call on a loaded machine
    ledger.acquire_lease(target, first)
    with pytest.raises(TargetBusy):
        ledger.acquire_lease(target, second)
    time.sleep(3.2)  # the holder crashed and never released: its lease runs out
    ledger.acquire_lease(target, second)
    assert ledger.leases()[target] == second
    ledger.release_leases(first)  # a late release of the expired holder does not free someone else's lease
    assert ledger.leases()[target] == second
    ledger.release_leases(second)
    assert target not in ledger.leases()
