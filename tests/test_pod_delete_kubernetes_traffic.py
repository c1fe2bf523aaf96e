"""pod-delete on Kubernetes judged by the traffic too: the pods really serve (the simulated kubelets run
their command, each pod on an address of its own), a Service stand-in routes to the Ready ones
(tests/kubetools.py ServiceProxy: there is no kube-proxy here), and the stage's probe samples through it
while the pods are deleted and replaced. Three replicas keep the service up: pass. One replica leaves
nobody to answer while its replacement starts: availability falls below the threshold, fail."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from kube_agent import RUN
from kubetools import ServiceProxy, apply_rbac, ready_replicas, wait_for

from mlchaos_steps.api import run_stage
from mlchaos_steps.stages import parse_stage

RBAC = Path(__file__).parent.parent / "docker" / "k8s" / "rbac.yaml"
# the simulated kubelets run the pods' command as local processes on addresses of their own
pytestmark = pytest.mark.simulated_kubelet


def _serving(name: str, replicas: int, workdir: Path) -> dict[str, Any]:
    container = {"name": "serve", "image": "python:3.11-slim", "workingDir": str(workdir),
                 "command": [sys.executable, "-m", "http.server", "--bind", "$(POD_IP)", "8080"],
                 "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name, RUN: "true"}}, "spec": {
                         "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 0,
                         "containers": [container]}}}}


@pytest.fixture
def service(kube_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Start ``replicas`` serving pods behind a ServiceProxy; KUBECONFIG holds the stage's token."""
    from kubernetes import client

    api = kube_cluster.admin()
    namespace = kube_cluster.namespace("traffic")
    apply_rbac(api, namespace, RBAC)
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.service_account_config(namespace, "mlchaos-chaos",
                                                                             tmp_path / "stage.kubeconfig")))
    proxies: list[ServiceProxy] = []

    def start(replicas: int) -> tuple[str, ServiceProxy]:
        client.AppsV1Api(api).create_namespaced_deployment(namespace, _serving("web", replicas, tmp_path))
        wait_for(lambda: ready_replicas(api, namespace, "web") == replicas, what=f"{replicas} serving pods Ready")
        proxies.append(ServiceProxy(api, namespace, "app=web", 8080))
        wait_for(lambda: len(proxies[-1].endpoints) == replicas, what="the endpoints")
        return namespace, proxies[-1]

    yield start
    for proxy in proxies:
        proxy.stop()
    client.AppsV1Api(api).delete_namespaced_deployment("web", namespace)


def _doc(namespace: str, url: str) -> dict[str, Any]:
    return {"kind": "PodDelete", "spec": {
        "target": {"kubernetes": {"namespace": namespace, "selector": "app=web"}},
        "count": 1, "grace_s": 0, "recovery_slo_s": 30, "stable_s": 1,
        "probe": {"http": {"url": url + "/", "min_success_ratio": 0.95, "interval_ms": 20, "timeout_s": 2}}}}


def test_replicas_that_keep_the_service_answering_pass(service: Any) -> None:
    namespace, proxy = service(3)
    verdict = run_stage(parse_stage(_doc(namespace, proxy.url)), "k8s-traffic").verdict
    assert verdict.status == "passed", (verdict.reason, verdict.evidence["observation"].get("probe"))
    assert verdict.metrics["availability"] >= 0.95


def test_one_replica_leaves_nobody_to_answer_and_fails_on_availability(service: Any) -> None:
    namespace, proxy = service(1)
    verdict = run_stage(parse_stage(_doc(namespace, proxy.url)), "k8s-traffic-one").verdict
    assert verdict.status == "failed" and "availability" in verdict.reason, verdict.reason
    assert verdict.evidence["observation"]["recovered"]  # the pod came back: the traffic is what failed
