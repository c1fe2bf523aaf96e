"""The API server goes away in the middle of a stage, on a control plane of this module's own (the
shared one must stay up for the other tests): restarting during the fault window, the stage rides it
out (its calls retry with backoff, its watch resumes from the last resourceVersion) and the verdict is
earned as usual; staying away, the stage is inconclusive after its bounded retries, never passed, and
once the API server is back `mlchaos restore --orphaned` releases the target's Lease."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import cli_json
from kubetools import apply_rbac, deployment, ready_replicas, wait_for

from mlchaos_steps.api import run_phase, run_stage
from mlchaos_steps.errors import InfrastructureError
from mlchaos_steps.stages import parse_stage

RBAC = Path(__file__).parent.parent / "docker" / "k8s" / "rbac.yaml"
pytestmark = pytest.mark.simulated_kubelet  # it stops and restarts an API server of its own


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from kube import Cluster, ControlPlane

    own = ControlPlane(tmp_path_factory.mktemp("kube-faults")).start()
    own.start_agent()
    yield own, Cluster(own.server, own.ca, own.admin_config, own.root)
    own.stop()


@pytest.fixture
def serving(plane: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str, Any]:
    control, cluster = plane
    api = cluster.admin()
    namespace = cluster.namespace("faults")
    apply_rbac(api, namespace, RBAC)
    from kubernetes import client

    client.AppsV1Api(api).create_namespaced_deployment(namespace, deployment("model-serving", 4))
    wait_for(lambda: ready_replicas(api, namespace, "model-serving") == 4, what="4 replicas Ready")
    monkeypatch.setenv("KUBECONFIG", str(cluster.service_account_config(namespace, "mlchaos-chaos",
                                                                        tmp_path / "stage.kubeconfig")))
    return control, namespace, api


def _doc(namespace: str) -> dict[str, Any]:
    return {"kind": "PodDelete", "spec": {
        "target": {"kubernetes": {"namespace": namespace, "selector": "app=model-serving"}},
        "count": 2, "grace_s": 0, "seed": 3, "recovery_slo_s": 90, "stable_s": 1}}


def _names(api: Any, namespace: str) -> set[str]:
    from kubernetes import client

    return {p.metadata.name for p in client.CoreV1Api(api).list_namespaced_pod(
        namespace, label_selector="app=model-serving").items}


def _leases(api: Any, namespace: str) -> list[str]:
    from kubernetes import client

    return [lease.metadata.name for lease in client.CoordinationV1Api(api).list_namespaced_lease(namespace).items]


def test_an_api_server_restart_during_the_fault_window_is_ridden_out(serving: tuple[Any, str, Any]) -> None:
    control, namespace, api = serving
    before = _names(api, namespace)
    outcome: dict[str, Any] = {}
    stage = threading.Thread(target=lambda: outcome.update(run=run_stage(parse_stage(_doc(namespace)), "restart")))
    stage.start()
    wait_for(lambda: len(before - _names(api, namespace)) == 2, what="the two victims deleted")
    control.stop_apiserver()  # the watch breaks, the replacements' Ready status cannot be written
    control.start_apiserver()
    stage.join(timeout=180)
    verdict = outcome["run"].verdict
    assert verdict.status == "passed", (verdict.reason, verdict.evidence)
    assert verdict.evidence["observation"]["killed"] and len(verdict.evidence["observation"]["killed"]) == 2
    assert _leases(api, namespace) == []  # restore released the Lease


def test_an_api_server_that_stays_away_is_inconclusive_and_restore_orphaned_cleans_up(
        serving: tuple[Any, str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    control, namespace, api = serving
    stage = parse_stage(_doc(namespace))
    run_phase(stage, "snapshot", "away")
    assert len(_leases(api, namespace)) == 1
    before = _names(api, namespace)
    monkeypatch.setenv("MLCHAOS_KUBE_RETRY_S", "3")
    control.stop_apiserver()
    try:
        with pytest.raises(InfrastructureError, match="unreachable"):
            run_phase(stage, "inject", "away")
        verdict = run_phase(stage, "verify", "away").verdict
        assert verdict is not None and verdict.status == "inconclusive", verdict
    finally:
        control.start_apiserver()
    assert _names(api, namespace) == before  # nothing was deleted while it could not watch
    code, result = cli_json("restore", "--orphaned", "--older-than", "0")
    assert code == 0 and [r["run_key"] for r in result["restored"]] == ["away"], result
    assert "error" not in result["restored"][0], result
    assert _leases(api, namespace) == []
