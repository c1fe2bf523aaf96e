"""Small helpers for tests against the control plane: manifests and waiting."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kube_agent import NEVER_READY
from systems import QuietHandler


def deployment(name: str, replicas: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A Deployment whose pods carry ``app: name`` (and ``labels``: the agent's knobs). Real kubelets
    (`make e2e-kind`) run it too: the pause image, and for never-ready pods a readiness probe nothing
    answers."""
    container: dict[str, Any] = {"name": "serve", "image": "registry.k8s.io/pause:3.10"}
    if (labels or {}).get(NEVER_READY) == "true":
        container["readinessProbe"] = {"tcpSocket": {"port": 1}, "periodSeconds": 1}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name, **(labels or {})}}, "spec": {
                         "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 0,
                         "containers": [container]}}}}


def wait_for(condition: Callable[[], Any], timeout_s: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not met within {timeout_s}s")


def ready_replicas(api: Any, namespace: str, name: str) -> int:
    from kubernetes import client

    return client.AppsV1Api(api).read_namespaced_deployment_status(name, namespace).status.ready_replicas or 0


def apply_rbac(api: Any, namespace: str, path: Path, drop: tuple[str, str] | None = None) -> None:
    """Create the ServiceAccount, Role and RoleBinding of ``path`` in ``namespace``; ``drop``
    ``(resource, verb)`` removes that one permission from the Role."""
    from kubernetes import client

    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    for document in yaml.safe_load_all(path.read_text()):
        if document["kind"] == "ServiceAccount":
            core.create_namespaced_service_account(namespace, document)
        elif document["kind"] == "Role":
            if drop:
                for rule in document["rules"]:
                    if drop[0] in rule["resources"]:
                        rule["verbs"] = [v for v in rule["verbs"] if v != drop[1]]
                document["rules"] = [r for r in document["rules"] if r["verbs"]]
            rbac.create_namespaced_role(namespace, document)
        elif document["kind"] == "RoleBinding":
            for subject in document["subjects"]:
                subject["namespace"] = namespace
            rbac.create_namespaced_role_binding(namespace, document)


class ServiceProxy:
    """A stand-in for a Service and kube-proxy (there is no kube-proxy here): an HTTP endpoint on
    127.0.0.1 that forwards each request to one Ready pod of ``selector``, at its ``status.podIP`` and
    ``port``. The endpoints are re-read every 0.1 s (the endpoints controller's lag); a request whose pod
    refuses the connection is tried once on another, as ingress proxies do; no Ready pod answers 503.

    With ``rollout`` (an Argo Rollouts Rollout's name) it is also the canary's traffic layer, the way a
    service mesh is: every answer says which side served it (``x-mlchaos-backend``: ``canary`` for a pod
    of the Rollout's ``currentPodHash`` while that is not its ``stableRS``), ``POST/DELETE
    /mlchaos/fault`` makes canary requests fail, and ``GET /mlchaos/canary-metrics`` gives the canary's
    error rate over the last 2 s (what the Rollout's AnalysisTemplate measures)."""

    def __init__(self, api: Any, namespace: str, selector: str, port: int, rollout: str | None = None):
        import threading
        from http.server import ThreadingHTTPServer

        self.api, self.namespace, self.selector, self.port, self.rollout = api, namespace, selector, port, rollout
        self.endpoints: list[str] = []
        self.canary_ips: set[str] = set()
        self.fault: dict[str, Any] | None = None
        self.canary_answers: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Forward)
        self.server.owner = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._refresh()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self._watch, daemon=True).start()

    def canary_error_rate(self) -> float:
        recent = [ok for at, ok in self.canary_answers if at > time.time() - 2]
        return round(recent.count(False) / len(recent), 3) if recent else 0.0

    def _refresh(self) -> None:
        from kubernetes import client

        pods = client.CoreV1Api(self.api).list_namespaced_pod(self.namespace, label_selector=self.selector).items
        ready = [p for p in pods if p.status.pod_ip and p.metadata.deletion_timestamp is None
                 and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
        canary: set[str] = set()
        if self.rollout:
            status = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
                "argoproj.io", "v1alpha1", self.namespace, "rollouts", self.rollout).get("status") or {}
            current, stable = status.get("currentPodHash"), status.get("stableRS")
            if current and current != stable:
                canary = {p.status.pod_ip for p in ready
                          if (p.metadata.labels or {}).get("rollouts-pod-template-hash") == current}
        self.endpoints, self.canary_ips = [p.status.pod_ip for p in ready], canary

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self._refresh()
            except Exception:  # the API server away for a moment: keep the last endpoints
                continue

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


class _Forward(QuietHandler):
    """ServiceProxy's request handler."""

    @property
    def owner(self) -> ServiceProxy:
        return self.server.owner  # type: ignore[attr-defined,no-any-return]

    def _reply(self, status: int, body: bytes, backend: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if backend and self.owner.rollout:
            self.send_header("x-mlchaos-backend", backend)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/mlchaos/canary-metrics":
            self._reply(200, json.dumps({"error_rate": self.owner.canary_error_rate()}).encode())
            return
        self._forward(b"")

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/mlchaos/fault":
            self.owner.fault = json.loads(body or b"{}")
            self._reply(200, body)
            return
        self._forward(body)

    def do_DELETE(self) -> None:  # noqa: N802
        self.owner.fault = None
        self._reply(200, b'{"fault": null}')

    def _forward(self, body: bytes) -> None:
        import http.client
        import random

        owner = self.owner
        candidates = list(owner.endpoints)
        random.shuffle(candidates)
        for ip in candidates[:2]:
            backend = "canary" if ip in owner.canary_ips else "stable"
            if backend == "canary" and owner.fault and owner.fault.get("kind") == "errors":
                owner.canary_answers.append((time.time(), False))
                self._reply(503, b'{"error": "canary fault"}', backend)
                return
            connection = http.client.HTTPConnection(ip, owner.port, timeout=2)
            try:
                connection.request(self.command, self.path, body=body or None,
                                   headers={"content-type": "application/json"})
                answer = connection.getresponse()
                payload = answer.read()
            except OSError:
                continue
            finally:
                connection.close()
            if backend == "canary":
                owner.canary_answers.append((time.time(), answer.status < 500))
            self._reply(answer.status, payload, backend)
            return
        self._reply(503, b'{"error": "no ready endpoint"}')
