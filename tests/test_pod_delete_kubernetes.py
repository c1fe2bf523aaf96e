"""pod-delete on Kubernetes, against the real control plane (tests/kube.py), run with the token of the
ServiceAccount that docker/k8s/rbac.yaml defines: healthy replacements pass; replacements that never
become Ready fail; protected namespaces, no targets, a missing permission and a pod replaced under
its name are each handled before anything wrong is deleted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import cli, cli_json
from kube_agent import STARTS_HANG
from kubetools import apply_rbac, deployment, ready_replicas, wait_for

from mlchaos_steps.api import run_phase, run_stage
from mlchaos_steps.errors import InfrastructureError, SpecError
from mlchaos_steps.stages import parse_stage

RBAC = Path(__file__).parent.parent / "docker" / "k8s" / "rbac.yaml"


@pytest.fixture
def serving(kube_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    """A namespace with a 4-replica Deployment, all Ready, and KUBECONFIG holding the stage's
    ServiceAccount token (only what docker/k8s/rbac.yaml grants)."""
    from kubernetes import client

    api = kube_cluster.admin()
    namespace = kube_cluster.namespace("serving")
    apply_rbac(api, namespace, RBAC)
    client.AppsV1Api(api).create_namespaced_deployment(namespace, deployment("model-serving", 4))
    wait_for(lambda: ready_replicas(api, namespace, "model-serving") == 4, what="4 replicas Ready")
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.service_account_config(namespace, "mlchaos-chaos",
                                                                             tmp_path / "stage.kubeconfig")))
    return namespace, api


def _doc(namespace: str, **spec: Any) -> dict[str, Any]:
    return {"kind": "PodDelete", "spec": {
        "target": {"kubernetes": {"namespace": namespace, "selector": "app=model-serving"}},
        "percent": 50, "grace_s": 0, "seed": 7, "recovery_slo_s": 30, "stable_s": 1, **spec}}


def _uids(api: Any, namespace: str) -> set[str]:
    from kubernetes import client

    return {p.metadata.uid for p in client.CoreV1Api(api).list_namespaced_pod(
        namespace, label_selector="app=model-serving").items}


def test_replacements_that_become_ready_pass(serving: tuple[str, Any]) -> None:
    namespace, api = serving
    before = _uids(api, namespace)
    outcome = run_stage(parse_stage(_doc(namespace)), "k8s-healthy")
    assert outcome.verdict.status == "passed", (outcome.verdict.reason, outcome.journal.read_text()[-3000:])
    observation = outcome.verdict.evidence["observation"]
    assert len(observation["killed"]) == 2 and observation["expected_replicas"] == 4
    assert observation["replacement_started_seconds"] is not None and observation["ready_timeline"]
    assert observation["ready_timeline"][-1][1] >= 4 and min(n for _, n in observation["ready_timeline"]) <= 3
    assert outcome.verdict.metrics["recovery_seconds"] > 0
    after = _uids(api, namespace)
    assert len(before - after) == 2 and len(after - before) == 2  # exactly the two victims were replaced
    assert outcome.restored


def test_the_same_seed_picks_the_same_victims_and_oldest_picks_the_oldest(serving: tuple[str, Any]) -> None:
    from kubernetes import client

    namespace, api = serving
    stage = parse_stage(_doc(namespace, percent=None, count=1, order="oldest"))
    snapshot = run_phase(stage, "snapshot", "k8s-oldest")
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector="app=model-serving").items
    oldest = min(pods, key=lambda p: (p.metadata.creation_timestamp, p.metadata.name)).metadata.name
    assert snapshot.output["victims"] == [oldest]
    run_phase(stage, "restore", "k8s-oldest")
    seeded = []
    for i in range(2):  # one after the other: a run holds the target's lease until restored
        seeded.append(run_phase(parse_stage(_doc(namespace, seed=11)), "snapshot", f"k8s-seed-{i}").output["victims"])
        run_phase(parse_stage(_doc(namespace, seed=11)), "restore", f"k8s-seed-{i}")
    assert seeded[0] == seeded[1] and len(seeded[0]) == 2


@pytest.mark.simulated_kubelet  # a namespace label makes the agent's replacements hang
def test_replacements_that_never_become_ready_fail(serving: tuple[str, Any]) -> None:
    from kubernetes import client

    namespace, api = serving
    client.CoreV1Api(api).patch_namespace(namespace, {"metadata": {"labels": {STARTS_HANG: "true"}}})
    outcome = run_stage(parse_stage(_doc(namespace, recovery_slo_s=3)), "k8s-hang")
    assert outcome.verdict.status == "failed", outcome.verdict.reason
    assert "were Ready within recovery_slo_s=3s" in outcome.verdict.reason
    assert outcome.verdict.evidence["observation"]["replacement_started_seconds"] is not None


def test_protected_namespaces_are_refused_before_anything_changes(serving: tuple[str, Any]) -> None:
    from kubernetes import client

    namespace, api = serving
    with pytest.raises(SpecError, match="protected"):
        parse_stage(_doc("kube-system"))
    client.CoreV1Api(api).patch_namespace(namespace, {"metadata": {"labels": {"mlchaos.io/protected": "true"}}})
    before = _uids(api, namespace)
    done = cli("run", str(_write(namespace, "protected")))
    assert done.returncode == 2 and "mlchaos.io/protected=true" in done.stderr, done.stderr
    assert _uids(api, namespace) == before


def _write(namespace: str, name: str, **spec: Any) -> Path:
    import os

    import yaml

    path = Path(os.environ["MLCHAOS_HOME"]).parent / f"{name}.yaml"  # the test's own tmp_path
    path.write_text(yaml.safe_dump(_doc(namespace, **spec)))
    return path


def test_pods_that_were_never_ready_are_inconclusive_not_recovered(kube_cluster: Any, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from kube_agent import NEVER_READY
    from kubernetes import client

    api = kube_cluster.admin()
    namespace = kube_cluster.namespace("unready")
    apply_rbac(api, namespace, RBAC)
    client.AppsV1Api(api).create_namespaced_deployment(namespace, deployment("model-serving", 2, {NEVER_READY: "true"}))
    wait_for(lambda: len(client.CoreV1Api(api).list_namespaced_pod(namespace).items) == 2)
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.service_account_config(namespace, "mlchaos-chaos",
                                                                             tmp_path / "k")))
    before = _uids(api, namespace)
    outcome = run_stage(parse_stage(_doc(namespace)), "k8s-unready")
    assert outcome.verdict.status == "inconclusive" and "none of the 2 pod(s)" in outcome.verdict.reason
    assert _uids(api, namespace) == before


def test_a_selector_matching_nothing_is_inconclusive_never_a_pass(serving: tuple[str, Any]) -> None:
    namespace, _ = serving
    doc = _doc(namespace)
    doc["spec"]["target"]["kubernetes"]["selector"] = "app=nothing-here"
    outcome = run_stage(parse_stage(doc), "k8s-nothing")
    assert outcome.verdict.status == "inconclusive" and "no targets" in outcome.verdict.reason


@pytest.mark.parametrize("missing", [("pods", "delete"), ("pods", "list"), ("pods", "watch"), ("namespaces", "get"),
                                     ("leases", "get"), ("leases", "create"), ("leases", "update"),
                                     ("leases", "delete")])
def test_without_any_one_permission_the_stage_stops_before_breaking_anything(
        kube_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: tuple[str, str]) -> None:
    from kubernetes import client

    api = kube_cluster.admin()
    namespace = kube_cluster.namespace("rbac-" + missing[1])
    apply_rbac(api, namespace, RBAC, drop=missing)
    client.AppsV1Api(api).create_namespaced_deployment(namespace, deployment("model-serving", 2))
    wait_for(lambda: ready_replicas(api, namespace, "model-serving") == 2)
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.service_account_config(namespace, "mlchaos-chaos",
                                                                             tmp_path / "k")))
    before = _uids(api, namespace)
    code, result = cli_json("run", str(_write(namespace, "rbac")))
    assert code == 3, result
    assert f"may not {missing[1]} {missing[0]}" in result["reason"], result
    assert _uids(api, namespace) == before  # nothing was deleted


def test_a_pod_replaced_under_its_name_is_never_deleted(serving: tuple[str, Any]) -> None:
    from kubernetes import client

    namespace, api = serving
    core = client.CoreV1Api(api)
    stage = parse_stage(_doc(namespace, percent=None, count=1))
    victim = run_phase(stage, "snapshot", "k8s-uid").output["victims"][0]
    old = core.read_namespaced_pod(victim, namespace)
    core.delete_namespaced_pod(victim, namespace, grace_period_seconds=0)
    wait_for(lambda: victim not in {p.metadata.name for p in core.list_namespaced_pod(namespace).items})
    # the same name and the stage's label, but not the ReplicaSet's pod-template-hash (it would adopt the
    # twin and scale one pod away)
    twin = client.V1Pod(metadata=client.V1ObjectMeta(name=victim, labels={"app": old.metadata.labels["app"]}),
                        spec=client.V1PodSpec(containers=[client.V1Container(name="serve",
                                                                             image="registry.k8s.io/pause:3.10")],
                                              automount_service_account_token=False))
    created = client.CoreV1Api(api).create_namespaced_pod(namespace, twin)  # same name, new UID
    with pytest.raises(InfrastructureError, match="nothing was deleted"):
        run_phase(stage, "inject", "k8s-uid")
    assert core.read_namespaced_pod(victim, namespace).metadata.uid == created.metadata.uid
    run_phase(stage, "restore", "k8s-uid")


def test_spec_is_checked_when_parsed() -> None:
    doc = _doc("ml")
    doc["spec"]["target"]["local"] = {"selector": {"cmdline": "uvicorn"}}
    with pytest.raises(SpecError, match="exactly one of target.local and target.kubernetes"):
        parse_stage(doc)
    doc = _doc("ml")
    doc["spec"]["target"]["kubernetes"]["name_pattern"] = "serve-(["
    with pytest.raises(SpecError, match="name_pattern"):
        parse_stage(doc)
    for namespace in ("kube-system", "kube-public", "kube-node-lease"):
        with pytest.raises(SpecError, match="protected"):
            parse_stage(_doc(namespace))
    stage = parse_stage(_doc("ml"))
    assert stage.target_ids() == ["kubernetes-pods:/ml/app=model-serving|"]


def _leases(api: Any, namespace: str) -> dict[str, str]:
    from kubernetes import client

    return {lease.metadata.name: lease.spec.holder_identity
            for lease in client.CoordinationV1Api(api).list_namespaced_lease(namespace).items}


def test_a_lease_keeps_a_second_machine_off_the_target_until_restore(serving: tuple[str, Any], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from mlchaos_steps.errors import TargetBusy

    namespace, api = serving
    stage = parse_stage(_doc(namespace))
    run_phase(stage, "snapshot", "k8s-first")
    assert list(_leases(api, namespace).values()) == ["k8s-first"]
    this_machine = os.environ["MLCHAOS_HOME"]
    monkeypatch.setenv("MLCHAOS_HOME", str(tmp_path / "other-machine"))  # its own ledger: only the Lease is shared
    with pytest.raises(TargetBusy, match="held by run 'k8s-first'"):
        run_phase(stage, "snapshot", "k8s-second")
    monkeypatch.setenv("MLCHAOS_HOME", this_machine)
    run_phase(stage, "restore", "k8s-first")
    assert _leases(api, namespace) == {}  # restore released it
    monkeypatch.setenv("MLCHAOS_HOME", str(tmp_path / "other-machine"))  # a new run there (k8s-second is closed)
    assert run_phase(stage, "snapshot", "k8s-third").status == "ok"
    assert list(_leases(api, namespace).values()) == ["k8s-third"]
    run_phase(stage, "restore", "k8s-third")


def test_an_expired_lease_is_taken_over_and_orphaned_restore_releases(serving: tuple[str, Any]) -> None:
    from datetime import UTC, datetime, timedelta

    from kubernetes import client

    from mlchaos_steps.api import restore_orphaned
    from mlchaos_steps.targets.kubernetes import lease_name

    namespace, api = serving
    stage = parse_stage(_doc(namespace))
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    client.CoordinationV1Api(api).create_namespaced_lease(namespace, client.V1Lease(
        metadata=client.V1ObjectMeta(name=lease_name(stage.target_ids()[0])),
        spec=client.V1LeaseSpec(holder_identity="crashed-run", lease_duration_seconds=600, acquire_time=long_ago,
                                renew_time=long_ago)))
    run_phase(stage, "snapshot", "k8s-takeover")
    assert list(_leases(api, namespace).values()) == ["k8s-takeover"]
    restore_orphaned(older_than_s=0)  # nobody owns the run between phases: the janitor closes it
    assert _leases(api, namespace) == {}
