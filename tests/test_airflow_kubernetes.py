"""The Airflow front door on Kubernetes: a ChaosStage whose credentials come from an Airflow
``kubernetes`` connection (the cncf-kubernetes provider's format), run with dag.test() against the
tests' control plane. No KUBECONFIG in the environment: only the connection says where the cluster is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetools import apply_rbac, deployment, ready_replicas, wait_for

RBAC = Path(__file__).parent.parent / "docker" / "k8s" / "rbac.yaml"


@pytest.fixture
def serving(kube_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any, Path]:
    from kubernetes import client

    api = kube_cluster.admin()
    namespace = kube_cluster.namespace("airflow-k8s")
    apply_rbac(api, namespace, RBAC)
    client.AppsV1Api(api).create_namespaced_deployment(namespace, deployment("model-serving", 3))
    wait_for(lambda: ready_replicas(api, namespace, "model-serving") == 3, what="3 replicas Ready")
    config = kube_cluster.service_account_config(namespace, "mlchaos-chaos", tmp_path / "stage.kubeconfig")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return namespace, api, config


def _uids(api: Any, namespace: str) -> set[str]:
    from kubernetes import client

    return {p.metadata.uid for p in client.CoreV1Api(api).list_namespaced_pod(namespace).items}


def _run(namespace: str, conn_id: str, dag_id: str) -> tuple[Any, dict[str, str]]:
    from airflow.sdk import DAG

    from mlchaos_steps.airflow import ChaosStage
    from mlchaos_steps.airflow.local_run import run_dag, task_states

    stage = {"kind": "PodDelete", "spec": {
        "target": {"kubernetes": {"namespace": namespace, "selector": "app=model-serving"}},
        "count": 1, "grace_s": 0, "recovery_slo_s": 30, "stable_s": 0.5}}
    with DAG(dag_id, schedule=None) as dag:
        ChaosStage(stage, kubernetes_conn_id=conn_id)
    run = run_dag(dag)
    return run, task_states(run)


@pytest.mark.parametrize("form", ["path", "inline-with-context"])
def test_a_chaos_stage_takes_its_cluster_from_a_kubernetes_connection(
        airflow_db: Path, serving: tuple[str, Any, Path], monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    namespace, api, config = serving
    if form == "path":
        extra: dict[str, Any] = {"kube_config_path": str(config)}
    else:  # the kubeconfig itself in the connection, its context named, the provider's prefixed keys
        document = yaml.safe_load(config.read_text())
        document["contexts"].append({"name": "elsewhere", "context": {"cluster": "nowhere", "user": "nobody"}})
        document["current-context"] = "elsewhere"
        extra = {"extra__kubernetes__kube_config": json.dumps(document),
                 "extra__kubernetes__cluster_context": document["contexts"][0]["name"]}
    monkeypatch.setenv("AIRFLOW_CONN_CHAOS_KUBE", json.dumps({"conn_type": "kubernetes", "extra": extra}))
    before = _uids(api, namespace)
    run, states = _run(namespace, "chaos_kube", f"k8s_conn_{form.replace('-', '_')}")
    assert str(run.state) == "success", states
    assert states["pod-delete.verify"] == "success"
    assert len(before - _uids(api, namespace)) == 1  # exactly one pod was deleted (and replaced)
    wait_for(lambda: ready_replicas(api, namespace, "model-serving") == 3)


def test_without_a_usable_connection_the_stage_fails_before_touching_the_cluster(
        airflow_db: Path, serving: tuple[str, Any, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    namespace, api, _ = serving
    monkeypatch.setenv("AIRFLOW_CONN_CHAOS_KUBE", json.dumps({"conn_type": "kubernetes", "extra": {}}))
    before = _uids(api, namespace)
    run, states = _run(namespace, "chaos_kube", "k8s_conn_empty")
    assert str(run.state) == "failed" and states["pod-delete.snapshot"] == "failed", states
    assert _uids(api, namespace) == before
