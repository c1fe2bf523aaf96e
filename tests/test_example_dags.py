"""Every example DAG in dags/ runs with dag.test() (real Airflow, real MLflow server, real processes)."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path
from typing import Any

import pytest

from mlchaos_steps.examples.workloads import free_port_block

DAGS = Path(__file__).resolve().parents[1] / "dags"


@pytest.fixture
def example_env(mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"MLCHAOS_EXAMPLE_DIR": str(tmp_path / "examples"), "MLCHAOS_EXAMPLE_MODEL": f"ex-{uuid.uuid4().hex[:6]}",
           "MLCHAOS_EXAMPLE_PORT_BASE": str(free_port_block())}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLCHAOS_EXAMPLE_BROKEN", raising=False)
    return env


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"example_dag_{name}_{uuid.uuid4().hex[:6]}", DAGS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def _run(dag: Any) -> tuple[str, dict[str, str]]:
    from mlchaos_steps.airflow.local_run import migrate, run_dag, task_states

    migrate()
    run = run_dag(dag)
    return str(run.state), task_states(run)


def test_every_example_dag_is_tested() -> None:
    assert {p.stem for p in DAGS.glob("*.py")} == {
        "retraining_with_chaos", "deployment_with_chaos", "nightly_resilience", "add_chaos_to_existing"}


def test_retraining_dag_promotes_a_healthy_candidate(example_env: dict[str, str]) -> None:
    from mlchaos_steps.targets.mlflow import client

    state, states = _run(_load("retraining_with_chaos"))
    assert state == "success", states
    name = example_env["MLCHAOS_EXAMPLE_MODEL"]
    champion = client().get_model_version_by_alias(name, "champion")
    assert champion.tags["mlchaos.gate"] == "promoted"
    assert champion.tags["mlchaos.checkpoint-wipe.verdict"] == "passed"
    assert champion.tags["mlchaos.registry-artifact-removal.verdict"] == "passed"


def test_retraining_dag_refuses_a_broken_candidate(example_env: dict[str, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from mlchaos_steps.targets.mlflow import alias_version

    monkeypatch.setenv("MLCHAOS_EXAMPLE_BROKEN", "1")
    state, states = _run(_load("retraining_with_chaos"))
    assert state == "failed", states
    assert states["checkpoint-wipe.verify"] == "failed"
    assert states["gate"] == "upstream_failed"
    assert states["checkpoint-wipe.restore"] == "success"
    assert states["register"] == "upstream_failed"  # the candidate never even reached the registry
    assert alias_version(example_env["MLCHAOS_EXAMPLE_MODEL"], "champion") is None


def test_deployment_dag(example_env: dict[str, str]) -> None:
    from mlchaos_steps.targets.mlflow import client

    state, states = _run(_load("deployment_with_chaos"))
    assert state == "success", states
    assert states["undeploy"] == "success"
    name = example_env["MLCHAOS_EXAMPLE_MODEL"]
    champion = client().get_model_version_by_alias(name, "champion")
    assert champion.tags["mlchaos.canary-failure.verdict"] == "passed"
    assert champion.tags["mlchaos.pod-delete.verdict"] == "passed"


def test_nightly_dag(example_env: dict[str, str]) -> None:
    dag = _load("nightly_resilience")
    assert dag.schedule == "@daily"
    state, states = _run(dag)
    assert state == "success", states


def test_add_chaos_to_existing_dag(example_env: dict[str, str]) -> None:
    dag = _load("add_chaos_to_existing")
    assert "checkpoint-wipe.snapshot" in dag.task_dict
    assert dag.task_dict["train"].downstream_task_ids == {"checkpoint-wipe.snapshot"}
    state, states = _run(dag)
    assert state == "success", states
