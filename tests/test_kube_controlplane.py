"""The test control plane itself: a real API server enforcing RBAC, real ReplicaSet and Deployment
controllers, and the simulated kubelets. The Kubernetes stages are tested against it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kube_agent import NEVER_READY
from kubetools import deployment, ready_replicas, wait_for


def test_deployment_replicas_come_up_and_a_deleted_pod_is_replaced(kube_cluster: Any) -> None:
    from kubernetes import client

    api = kube_cluster.admin()
    namespace = kube_cluster.namespace("smoke")
    client.AppsV1Api(api).create_namespaced_deployment(namespace, deployment("serve", 3))
    wait_for(lambda: ready_replicas(api, namespace, "serve") == 3)
    core = client.CoreV1Api(api)
    victim = core.list_namespaced_pod(namespace, label_selector="app=serve").items[0]
    core.delete_namespaced_pod(victim.metadata.name, namespace)
    wait_for(lambda: victim.metadata.uid not in {p.metadata.uid for p in core.list_namespaced_pod(
        namespace, label_selector="app=serve").items} and ready_replicas(api, namespace, "serve") == 3)
    client.AppsV1Api(api).create_namespaced_deployment(namespace, deployment("stuck", 2, {NEVER_READY: "true"}))
    wait_for(lambda: sum(p.status.phase == "Running" for p in core.list_namespaced_pod(
        namespace, label_selector="app=stuck").items) == 2)
    assert ready_replicas(api, namespace, "stuck") == 0  # running, never Ready


def test_rbac_is_enforced_for_a_service_account_token(kube_cluster: Any, tmp_path: Path) -> None:
    from kubernetes import client, config

    api = kube_cluster.admin()
    namespace = kube_cluster.namespace("rbac")
    client.CoreV1Api(api).create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    reader = config.new_client_from_config(str(kube_cluster.service_account_config(namespace, "reader",
                                                                                     tmp_path / "reader")))
    with pytest.raises(client.ApiException) as denied:
        client.CoreV1Api(reader).list_namespaced_pod(namespace)
    assert denied.value.status == 403
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "read-pods"}, "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]})
    rbac.create_namespaced_role_binding(namespace, {"metadata": {"name": "read-pods"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-pods"}, "subjects": [
        {"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]})
    wait_for(lambda: _can_list(reader, namespace))
    with pytest.raises(client.ApiException) as denied:
        client.CoreV1Api(reader).delete_collection_namespaced_pod(namespace)
    assert denied.value.status == 403


def _can_list(api: Any, namespace: str) -> bool:
    from kubernetes import client

    try:
        client.CoreV1Api(api).list_namespaced_pod(namespace)
        return True
    except client.ApiException:
        return False
