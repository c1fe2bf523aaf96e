"""Small helpers for tests against the control plane: manifests and waiting."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kube_agent import NEVER_READY


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
    refuses the connection is tried once on another, as ingress proxies do; no Ready pod answers 503."""

    def __init__(self, api: Any, namespace: str, selector: str, port: int):
        import random
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.api, self.namespace, self.selector, self.port = api, namespace, selector, port
        self.endpoints: list[str] = []
        self._stop = threading.Event()
        owner = self

        class Forward(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                import http.client

                candidates = list(owner.endpoints)
                random.shuffle(candidates)
                for ip in candidates[:2]:
                    connection = http.client.HTTPConnection(ip, owner.port, timeout=2)
                    try:
                        connection.request("GET", self.path)
                        answer = connection.getresponse()
                        body = answer.read()
                    except OSError:
                        continue
                    finally:
                        connection.close()
                    self.send_response(answer.status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_error(503, "no ready endpoint")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._refresh()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self._watch, daemon=True).start()

    def _refresh(self) -> None:
        from kubernetes import client

        pods = client.CoreV1Api(self.api).list_namespaced_pod(self.namespace, label_selector=self.selector).items
        self.endpoints = [p.status.pod_ip for p in pods if p.status.pod_ip and p.metadata.deletion_timestamp is None
                          and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self._refresh()
            except Exception:  # the API server away for a moment: keep the last endpoints
                continue

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
