"""canary-failure on Kubernetes, against the tests' control plane: an Argo Rollouts Rollout (Argo
Rollouts' own CRDs and controller, built from its Go module) and a stable/canary Deployment pair.

With the real controller: serving pods (run by the simulated kubelets) behind the Service stand-in,
a canary at 50% with a background analysis that reads the canary's error rate; the stage's fault makes
the analysis fail and the controller abort. Beside it, a stand-in (``RolloutsStandIn`` below, named as
such in the README) drives a Rollout's status the way the controller does — ``abort``, ``abortedAt``,
phase Degraded, canary weight 0 — mirroring the canary router's own analysis (the third-party router
of tests/systems.py, which aborts after a few canary errors), for the broken routers it comes with. For the Deployment
pair, the stand-in is the user's rollback automation: it scales the canary Deployment to zero, and the
real ReplicaSet controller removes the pods. Either way the verdict rests on the traffic the stage sent
through the router: a rollout whose status says aborted while the canary still gets traffic fails."""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import cli_json
from kubetools import apply_rbac, deployment, ready_replicas, wait_for

from mlchaos_steps.api import run_stage
from mlchaos_steps.errors import SpecError
from mlchaos_steps.examples.models import SAMPLE_INPUT
from mlchaos_steps.stages import parse_stage
from mlchaos_steps.targets.mlflow import client as mlflow_client

ROOT = Path(__file__).parent.parent
RBAC = ROOT / "docker" / "k8s" / "rbac.yaml"
CRD = ROOT / "build" / "crds" / "rollout-crd.yaml"  # `make test` takes it from Argo Rollouts' Go module
ROLLOUTS = ("argoproj.io", "v1alpha1")


@pytest.fixture(scope="module")
def rollouts_crd(kube_cluster: Any) -> None:
    """Argo Rollouts' Rollout CRD, installed once (the cluster is shared: already there is fine)."""
    from kubernetes import client

    extensions = client.ApiextensionsV1Api(kube_cluster.admin())
    names = []
    for path in sorted(CRD.parent.glob("*-crd.yaml")):  # Rollout, and what its controller also watches
        document = yaml.safe_load(path.read_text())
        names.append(document["metadata"]["name"])
        try:
            extensions.create_custom_resource_definition(document)
        except client.ApiException as exc:
            if exc.status != 409:
                raise

    def established() -> bool:
        return all(any(c.type == "Established" and c.status == "True"
                       for c in extensions.read_custom_resource_definition(name).status.conditions or [])
                   for name in names)

    wait_for(established, what="Argo Rollouts' CRDs established")


@pytest.fixture
def namespace(kube_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    api = kube_cluster.admin()
    name = kube_cluster.namespace("canary")
    apply_rbac(api, name, RBAC)
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.service_account_config(name, "mlchaos-chaos",
                                                                             tmp_path / "stage.kubeconfig")))
    return name, api


@pytest.fixture
def backends() -> Any:
    from systems import Backend

    stable, canary = Backend(), Backend()
    yield stable, canary
    stable.stop()
    canary.stop()


def _rollout(name: str) -> dict[str, Any]:
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": name}, "spec": {
        "replicas": 4, "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}},
                     "spec": {"containers": [{"name": "serve", "image": "registry.k8s.io/pause:3.10"}]}},
        "strategy": {"canary": {"canaryService": f"{name}-canary", "stableService": f"{name}-stable",
                                "trafficRouting": {"nginx": {"stableIngress": name}},
                                "steps": [{"setWeight": 30}, {"pause": {}}]}}}}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RolloutsStandIn:
    """What the Rollouts controller (for a Rollout) or the user's rollback automation (for a Deployment
    pair) does when the canary's analysis fails: here, when the router's own analysis aborted."""

    def __init__(self, api: Any, namespace: str, router: Any, rollout: str | None = None,
                 canary_deployment: str | None = None):
        self.api, self.namespace, self.router = api, namespace, router
        self.rollout, self.canary_deployment = rollout, canary_deployment
        self._stop = threading.Event()
        if rollout:  # the canary at its first step: 30% of the traffic, paused
            self._status({"phase": "Paused", "currentStepIndex": 1, "currentPodHash": "c7d", "stableRS": "5f9",
                          "canary": {"weights": {"canary": {"weight": 30, "podTemplateHash": "c7d"},
                                                 "stable": {"weight": 70, "podTemplateHash": "5f9"}}}})
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _status(self, status: dict[str, Any]) -> None:
        from kubernetes import client

        client.CustomObjectsApi(self.api).patch_namespaced_custom_object_status(
            *ROLLOUTS, self.namespace, "rollouts", self.rollout, {"status": status})

    def _run(self) -> None:
        from kubernetes import client

        while not self._stop.wait(0.05):
            with self.router.lock:
                aborted = self.router.state["phase"] == "Aborted"
            if not aborted:
                continue
            if self.rollout:
                self._status({"abort": True, "abortedAt": _now(), "phase": "Degraded",
                              "message": "RolloutAborted: metric error-rate assessed Failed",
                              "canary": {"weights": {"canary": {"weight": 0, "podTemplateHash": "c7d"},
                                                     "stable": {"weight": 100, "podTemplateHash": "5f9"}}}})
            else:
                client.AppsV1Api(self.api).patch_namespaced_deployment_scale(
                    self.canary_deployment, self.namespace, {"spec": {"replicas": 0}})
            return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _doc(model: str, router: Any, target: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"kind": "CanaryFailure", "spec": {
        "model": model, "candidate": "@challenger", "router": {"url": router.url},
        "rollout": {"kubernetes": target}, "fault": "errors", "rollback_within_s": 5,
        "stable": {"min_success_ratio": 0.99, "max_p99_ms": 1000},
        "traffic": {"sample": SAMPLE_INPUT, "interval_ms": 10, "timeout_s": 2}, **spec}}


def _run_rollout(model: str, namespace: str, api: Any, backends: Any, run_key: str, **router_knobs: Any) -> Any:
    from kubernetes import client
    from systems import Router

    client.CustomObjectsApi(api).create_namespaced_custom_object(*ROLLOUTS, namespace, "rollouts", _rollout("churn"))
    router = Router(backends[0].url, backends[1].url, **router_knobs)
    controller = RolloutsStandIn(api, namespace, router, rollout="churn")
    try:
        return run_stage(parse_stage(_doc(model, router, {"namespace": namespace, "rollout": "churn"})), run_key)
    finally:
        controller.stop()
        router.stop()


def test_a_rollout_that_aborts_passes(two_versions: tuple[str, str, str], rollouts_crd: None,
                                      namespace: tuple[str, Any], backends: Any) -> None:
    from kubernetes import client

    (model, v1, _), (ns, api) = two_versions, namespace
    verdict = _run_rollout(model, ns, api, backends, "k8s-rollout").verdict
    assert verdict.status == "passed", (verdict.reason, verdict.evidence.get("observation"))
    observation = verdict.evidence["observation"]
    assert observation["router"]["source"] == f"Rollout {ns}/churn"
    assert 0 < verdict.metrics["rollback_seconds"] <= 5 and observation["requests_after_abort"] > 0
    rollout = client.CustomObjectsApi(api).get_namespaced_custom_object(*ROLLOUTS, ns, "rollouts", "churn")
    assert rollout["status"]["abort"] is True
    assert mlflow_client().get_model_version_by_alias(model, "champion").version == v1


def test_a_rollout_that_never_aborts_fails(two_versions: tuple[str, str, str], rollouts_crd: None,
                                           namespace: tuple[str, Any], backends: Any) -> None:
    (model, v1, _), (ns, api) = two_versions, namespace
    verdict = _run_rollout(model, ns, api, backends, "k8s-rollout-stuck", never_abort=True).verdict
    assert verdict.status == "failed" and "did not abort" in verdict.reason, verdict.reason
    assert mlflow_client().get_model_version_by_alias(model, "champion").version == v1


def test_a_rollout_aborted_on_paper_while_the_canary_keeps_its_traffic_fails(
        two_versions: tuple[str, str, str], rollouts_crd: None, namespace: tuple[str, Any], backends: Any) -> None:
    (model, _, _), (ns, api) = two_versions, namespace
    verdict = _run_rollout(model, ns, api, backends, "k8s-rollout-liar", lie=True).verdict
    assert verdict.status == "failed" and "served by the canary" in verdict.reason, verdict.reason


def _run_pair(model: str, namespace: str, api: Any, backends: Any, run_key: str, automation: bool) -> Any:
    from kubernetes import client
    from systems import Router

    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, deployment("churn-stable", 3))
    apps.create_namespaced_deployment(namespace, deployment("churn-canary", 1))
    wait_for(lambda: ready_replicas(api, namespace, "churn-canary") == 1, what="the canary Ready")
    router = Router(backends[0].url, backends[1].url)
    rollback = RolloutsStandIn(api, namespace, router, canary_deployment="churn-canary") if automation else None
    try:
        doc = _doc(model, router, {"namespace": namespace, "canary_deployment": "churn-canary"})
        return run_stage(parse_stage(doc), run_key)
    finally:
        if rollback:
            rollback.stop()
        router.stop()


def test_a_deployment_pair_whose_rollback_scales_the_canary_to_zero_passes(
        two_versions: tuple[str, str, str], namespace: tuple[str, Any], backends: Any) -> None:
    from kubernetes import client

    (model, _, _), (ns, api) = two_versions, namespace
    verdict = _run_pair(model, ns, api, backends, "k8s-pair", automation=True).verdict
    assert verdict.status == "passed", (verdict.reason, verdict.evidence.get("observation"))
    assert verdict.evidence["observation"]["router"]["source"] == f"Deployment {ns}/churn-canary"
    pods = client.CoreV1Api(api).list_namespaced_pod(ns, label_selector="app=churn-canary").items
    assert pods == [] and ready_replicas(api, ns, "churn-stable") == 3


def test_a_deployment_pair_without_a_rollback_fails(two_versions: tuple[str, str, str],
                                                    namespace: tuple[str, Any], backends: Any) -> None:
    (model, _, _), (ns, api) = two_versions, namespace
    verdict = _run_pair(model, ns, api, backends, "k8s-pair-none", automation=False).verdict
    assert verdict.status == "failed" and "did not abort" in verdict.reason, verdict.reason


@pytest.mark.parametrize(("missing", "kind"), [(("rollouts", "get"), "rollout"), (("namespaces", "get"), "rollout"),
                                               (("pods", "list"), "rollout"), (("deployments", "get"), "pair")])
def test_without_any_one_permission_nothing_is_injected(
        two_versions: tuple[str, str, str], rollouts_crd: None, kube_cluster: Any, backends: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, missing: tuple[str, str], kind: str) -> None:
    from kubernetes import client
    from systems import Router

    model = two_versions[0]
    api = kube_cluster.admin()
    ns = kube_cluster.namespace("canary-rbac")
    apply_rbac(api, ns, RBAC, drop=missing)
    if kind == "rollout":
        client.CustomObjectsApi(api).create_namespaced_custom_object(*ROLLOUTS, ns, "rollouts", _rollout("churn"))
        target = {"namespace": ns, "rollout": "churn"}
    else:
        client.AppsV1Api(api).create_namespaced_deployment(ns, deployment("churn-canary", 1))
        target = {"namespace": ns, "canary_deployment": "churn-canary"}
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.service_account_config(ns, "mlchaos-chaos", tmp_path / "k")))
    class Recording(Router):
        """Remembers every fault it was given."""

        faults: list[Any] = []

        @property
        def fault(self) -> Any:
            return self.faults[-1] if self.faults else None

        @fault.setter
        def fault(self, value: Any) -> None:
            self.faults.append(value)

    router = Recording(backends[0].url, backends[1].url)
    try:
        stage_file = tmp_path / "canary.yaml"
        stage_file.write_text(yaml.safe_dump(_doc(model, router, target)))
        code, result = cli_json("run", str(stage_file))
    finally:
        router.stop()
    assert code == 3 and f"may not {missing[1]} {missing[0]}" in result["reason"], result
    assert not any(router.faults)  # the router was never given a fault


def test_kubernetes_rollout_spec_is_checked_when_parsed() -> None:
    base = {"model": "m", "candidate": "@challenger", "router": {"url": "http://127.0.0.1:1"},
            "traffic": {"sample": {}}}
    with pytest.raises(SpecError, match="exactly one of rollout"):
        parse_stage({"kind": "CanaryFailure", "spec": {**base, "rollout": {"kubernetes": {
            "namespace": "ml", "rollout": "a", "canary_deployment": "b"}}}})
    with pytest.raises(SpecError, match="protected"):
        parse_stage({"kind": "CanaryFailure", "spec": {**base, "rollout": {"kubernetes": {
            "namespace": "kube-system", "rollout": "a"}}}})
    with pytest.raises(SpecError, match="on Kubernetes use errors or latency"):
        parse_stage({"kind": "CanaryFailure", "spec": {**base, "fault": "crash",
                                                       "canary": {"selector": {"cmdline": "serve"}},
                                                       "rollout": {"kubernetes": {"namespace": "ml", "rollout": "a"}}}})



# -- the real Argo Rollouts controller ----------------------------------------------------------------
CONTROLLER = ROOT / "build" / "bin" / "rollouts-controller"  # `make test` builds it from its Go module
SERVE = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Answer(BaseHTTPRequestHandler):
    def log_message(self, *args): pass
    def _answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"predictions": [0]}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = _answer
ThreadingHTTPServer((sys.argv[1], 8080), Answer).serve_forever()
"""


@pytest.fixture(scope="module")
def rollouts_controller(kube_cluster: Any, rollouts_crd: None, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Argo Rollouts' controller for this module's Rollouts only (its own instance id: the stand-in tests'
    Rollouts, and other workers' controllers, are left alone)."""
    import subprocess
    import uuid

    from mlchaos_steps.core.processes import stop_process_group

    instance = f"mlchaos-{uuid.uuid4().hex[:8]}"
    log = tmp_path_factory.mktemp("rollouts") / "controller.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(CONTROLLER), "--kubeconfig", str(kube_cluster.admin_config),
                                    "--leader-elect=false", "--instance-id", instance, "--healthzPort", "0",
                                    "--metricsport", "0"], stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    yield instance
    stop_process_group(process.pid, grace_s=5)


def _serving_rollout(instance: str, version: str, analysis: bool) -> dict[str, Any]:
    from kube_agent import RUN

    canary: dict[str, Any] = {"steps": [{"setWeight": 50}, {"pause": {}}]}
    if analysis:
        canary["analysis"] = {"templates": [{"templateName": "canary-errors"}], "startingStep": 1}
    container = {"name": "serve", "image": "python:3.11-slim", "command": [sys.executable, "-c", SERVE, "$(POD_IP)"],
                 "env": [{"name": "MODEL_VERSION", "value": version}],
                 "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}}
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "web", "labels": {"argo-rollouts.argoproj.io/controller-instance-id": instance}},
            "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web", RUN: "true"}}, "spec": {
                         "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 0,
                         "containers": [container]}},
                     "strategy": {"canary": canary}}}


def _canary_in_progress(api: Any, namespace: str, instance: str, analysis: bool) -> Any:
    """Rollout v1 Healthy, the Service stand-in in front of it, the analysis template reading the canary's
    error rate there, then v2 at a 50% canary, paused: returns the proxy."""
    from kubernetes import client
    from kubetools import ServiceProxy

    custom = client.CustomObjectsApi(api)

    def status() -> dict[str, Any]:
        return custom.get_namespaced_custom_object(*ROLLOUTS, namespace, "rollouts", "web").get("status") or {}

    # v1 without the analysis: the controller refuses a Rollout naming a template that does not exist yet
    custom.create_namespaced_custom_object(*ROLLOUTS, namespace, "rollouts", _serving_rollout(instance, "1", False))
    wait_for(lambda: status().get("phase") == "Healthy" and status().get("readyReplicas") == 4, timeout_s=90,
             what="the Rollout Healthy")
    proxy = ServiceProxy(api, namespace, "app=web", 8080, rollout="web")
    custom.create_namespaced_custom_object(*ROLLOUTS, namespace, "analysistemplates", {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate",
        "metadata": {"name": "canary-errors", "labels": {"argo-rollouts.argoproj.io/controller-instance-id": instance}},
        "spec": {"metrics": [{"name": "canary-error-rate", "interval": "1s", "failureLimit": 0,
                              "successCondition": "result < 0.05",
                              "provider": {"web": {"url": proxy.url + "/mlchaos/canary-metrics",
                                                   "jsonPath": "{$.error_rate}"}}}]}})
    v2 = _serving_rollout(instance, "2", analysis)["spec"]
    custom.patch_namespaced_custom_object(*ROLLOUTS, namespace, "rollouts", "web", {"spec": {
        "template": {"spec": {"containers": v2["template"]["spec"]["containers"]}}, "strategy": v2["strategy"]}})
    wait_for(lambda: status().get("phase") == "Paused" and len(proxy.canary_ips) == 2, timeout_s=90,
             what="the canary at 50%, paused")
    return proxy


@pytest.mark.simulated_kubelet  # the pods really serve: the simulated kubelets run them as local processes
@pytest.mark.parametrize("analysis", [True, False], ids=["analysis-aborts", "no-analysis"])
def test_the_real_rollouts_controller_aborts_a_failing_canary(
        two_versions: tuple[str, str, str], rollouts_controller: str, namespace: tuple[str, Any],
        analysis: bool) -> None:
    from kubernetes import client

    (model, v1, _), (ns, api) = two_versions, namespace
    proxy = _canary_in_progress(api, ns, rollouts_controller, analysis)
    try:
        doc = _doc(model, proxy, {"namespace": ns, "rollout": "web"}, rollback_within_s=20)
        verdict = run_stage(parse_stage(doc), f"k8s-real-rollout-{analysis}").verdict
    finally:
        proxy.stop()
    if not analysis:  # nothing measures the canary: the controller never aborts
        assert verdict.status == "failed" and "did not abort" in verdict.reason, verdict.reason
        return
    assert verdict.status == "passed", (verdict.reason, verdict.evidence.get("observation"))
    assert verdict.evidence["observation"]["requests_after_abort"] > 0
    rollout = client.CustomObjectsApi(api).get_namespaced_custom_object(*ROLLOUTS, ns, "rollouts", "web")
    assert rollout["status"]["abort"] is True and rollout["status"]["phase"] == "Degraded"
    assert mlflow_client().get_model_version_by_alias(model, "champion").version == v1
