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
