"""The promotion gate in a cluster: gates on one model in different pods (different machines, so the file
lock does not see them) take turns through a Lease. Against the tests' control plane, with the
ServiceAccount token of docker/rbac.yaml (the workflow steps' Role)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, cli_json, record_real_verdict
from kubetools import apply_rbac

from mlchaos_steps.targets.kubernetes import lease_name
from mlchaos_steps.targets.mlflow import client, tracking_uri

RBAC = Path(__file__).parent.parent / "docker" / "rbac.yaml"


@pytest.fixture
def gate_namespace(kube_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    api = kube_cluster.admin()
    namespace = kube_cluster.namespace("gate")
    apply_rbac(api, namespace, RBAC)
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.service_account_config(namespace, "mlchaos-steps",
                                                                             tmp_path / "gate.kubeconfig")))
    monkeypatch.setenv("MLCHAOS_LEASE_NAMESPACE", namespace)
    return namespace, api


def _hold(api: Any, namespace: str, model: str, holder: str) -> str:
    """A gate on another machine holds the model's Lease (renewed just now, for a minute)."""
    from kubernetes import client as k8s

    name = lease_name(f"gate:{tracking_uri()}|{model}")
    now = datetime.now(UTC)
    k8s.CoordinationV1Api(api).create_namespaced_lease(namespace, {
        "metadata": {"name": name}, "spec": {"holderIdentity": holder, "leaseDurationSeconds": 60,
                                             "acquireTime": now, "renewTime": now}})
    return name


def _leases(api: Any, namespace: str) -> list[str]:
    from kubernetes import client as k8s

    return [lease.metadata.name for lease in k8s.CoordinationV1Api(api).list_namespaced_lease(namespace).items]


def test_a_gate_waits_for_the_gate_holding_the_models_lease(two_versions: tuple[str, str, str],
                                                            gate_namespace: tuple[str, Any],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes import client as k8s

    namespace, api = gate_namespace
    name, v1, v2 = two_versions
    record_real_verdict(name, v2, "pod-delete", "passed")
    lease = _hold(api, namespace, name, "gate-on-another-node/42")
    monkeypatch.setenv("MLCHAOS_GATE_WAIT_S", "1")
    proc = cli("gate", "--model", name, "--version", v2, "--require", "pod-delete")
    assert proc.returncode == 3 and "held by run 'gate-on-another-node/42'" in proc.stderr, proc.stderr
    assert "expires 60s after its last renewal" in proc.stderr
    assert client().get_model_version_by_alias(name, "champion").version == v1  # nothing moved
    assert "mlchaos.gate" not in client().get_model_version(name, v2).tags
    k8s.CoordinationV1Api(api).delete_namespaced_lease(lease, namespace)  # the other gate finished
    code, result = cli_json("gate", "--model", name, "--version", v2, "--require", "pod-delete")
    assert code == 0 and result["decision"] == "promoted", result
    assert client().get_model_version_by_alias(name, "champion").version == v2
    assert _leases(api, namespace) == []  # released when the gate finished


def test_a_gate_whose_pod_cannot_take_leases_stops_before_deciding(two_versions: tuple[str, str, str],
                                                                  kube_cluster: Any, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    api = kube_cluster.admin()
    namespace = kube_cluster.namespace("gate-rbac")
    apply_rbac(api, namespace, RBAC, drop=("leases", "create"))
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.service_account_config(namespace, "mlchaos-steps",
                                                                             tmp_path / "k")))
    monkeypatch.setenv("MLCHAOS_LEASE_NAMESPACE", namespace)
    name, v1, v2 = two_versions
    record_real_verdict(name, v2, "pod-delete", "passed")
    proc = cli("gate", "--model", name, "--version", v2, "--require", "pod-delete")
    assert proc.returncode == 3 and "may not create leases" in proc.stderr, proc.stderr
    assert client().get_model_version_by_alias(name, "champion").version == v1
    assert "mlchaos.gate" not in client().get_model_version(name, v2).tags
