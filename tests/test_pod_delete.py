"""pod-delete against real multi-worker servers: uvicorn respawns workers, the fragile one does not."""

from __future__ import annotations

from pathlib import Path

import psutil
from conftest import cli_json, pod_doc, replica_pids, write_stage

from mlchaos_steps.api import run_stage
from mlchaos_steps.examples.workloads import ExampleServer
from mlchaos_steps.ledgers import SqliteLedger
from mlchaos_steps.stages import parse_stage


def test_respawning_server_passes(healthy_server: ExampleServer) -> None:
    before = replica_pids(healthy_server)
    outcome = run_stage(parse_stage(pod_doc(healthy_server)), "pod-healthy")
    assert outcome.verdict.status == "passed", outcome.verdict
    observation = outcome.verdict.evidence["observation"]
    killed = observation["killed"]
    assert len(killed) == 1 and killed[0] in before
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    assert observation["readiness"] == "answered"
    assert outcome.verdict.metrics["availability"] >= 0.95
    after = replica_pids(healthy_server)
    assert len(after) == 2 and killed[0] not in after
    assert outcome.restored


def test_server_that_does_not_respawn_fails(fragile_server: ExampleServer) -> None:
    outcome = run_stage(parse_stage(pod_doc(fragile_server)), "pod-fragile")
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "only 1 of 2 replicas answered a request" in outcome.verdict.reason
    assert len(replica_pids(fragile_server)) == 1
    # Nothing respawned the worker: restore says so and keeps the run open for the operator.
    assert not outcome.restored
    assert "no supervisor that respawns them" in (outcome.restore_error or "")
    assert SqliteLedger().get("pod-fragile").status == "restore_failed"  # type: ignore[union-attr]


def test_percent_and_sigterm_through_the_cli(healthy_server: ExampleServer, tmp_path: Path) -> None:
    doc = pod_doc(healthy_server, count=None, percent=50, signal="SIGTERM", grace_s=5)
    doc["spec"].pop("count")
    # A worker shutting down on SIGTERM closes its idle keep-alive connections: a probe request racing
    # that close is lost (RemoteProtocolError). One lost of 18 (0.944) was seen on a loaded machine.
    doc["spec"]["probe"]["http"]["min_success_ratio"] = 0.9
    stage_file = write_stage(tmp_path / "pod.yaml", doc)
    code, result = cli_json("run", str(stage_file), "--run-key", "pod-cli")
    assert (code, result["verdict"]) == (0, "passed"), result
    assert result["restored"]


def test_dry_run_kills_nothing(healthy_server: ExampleServer, tmp_path: Path) -> None:
    before = replica_pids(healthy_server)
    stage_file = write_stage(tmp_path / "pod.yaml", pod_doc(healthy_server, count=2))
    code, result = cli_json("run", str(stage_file), "--dry-run")
    assert code == 0
    assert result["plan"]["would_kill"] == 2
    assert sorted(r["pid"] for r in result["plan"]["replicas"]) == sorted(before)
    assert replica_pids(healthy_server) == before


def test_unhealthy_service_before_the_fault_is_not_touched(healthy_server: ExampleServer) -> None:
    doc = pod_doc(healthy_server)
    doc["spec"]["probe"]["http"]["url"] = healthy_server.url + "/missing"  # 404: steady state not met
    before = replica_pids(healthy_server)
    outcome = run_stage(parse_stage(doc), "pod-unsteady")
    assert outcome.verdict.status == "inconclusive"
    assert "steady state not met" in outcome.verdict.reason
    assert replica_pids(healthy_server) == before
