"""Every example DAG in dags/ loads with one DagBag, as Airflow's DAG processor would, and runs with
dag.test() (real Airflow, a real MLflow server, real processes). The retraining and deployment DAGs also
run, healthy and broken, in tests/test_demo.py, through `mlchaos demo`."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

DAGS = Path(__file__).resolve().parents[1] / "dags"
EXAMPLES = {"retraining_with_chaos", "deployment_with_chaos", "nightly_resilience", "existing_training_with_chaos"}


@pytest.fixture(scope="module")
def example_dags() -> dict[str, Any]:
    from mlchaos_steps.airflow.local_run import load_dags, migrate

    migrate()
    return load_dags(DAGS)


def _run(dag: Any, **conf: Any) -> tuple[str, dict[str, str]]:
    from mlchaos_steps.airflow.local_run import run_dag, task_states

    run = run_dag(dag, run_conf=conf)
    return str(run.state), task_states(run)


def _chaos_documents(dag: Any) -> dict[str, Any]:
    return {t.task_id: t.stage_document for t in dag.tasks if hasattr(t, "stage_document")}


def test_the_folder_loads_every_example(example_dags: dict[str, Any]) -> None:
    assert set(example_dags) == EXAMPLES
    assert {p.stem for p in DAGS.glob("*.py")} == {
        "retraining_with_chaos", "deployment_with_chaos", "nightly_resilience", "add_chaos_to_existing"}


def test_each_stage_file_is_used_by_an_example(example_dags: dict[str, Any]) -> None:
    used = set()
    for path in DAGS.glob("*.py"):
        used.update(p.name for p in (DAGS / "stages").glob("*.yaml") if p.name in path.read_text())
    assert used == {p.name for p in (DAGS / "stages").glob("*.yaml")}


def test_a_dag_file_parses_the_same_way_whatever_the_environment() -> None:
    """Broken variants come from params and run conf, never from the environment at parse time."""
    code = ("import json, sys; from mlchaos_steps.airflow.local_run import load_dags; "
            "dags = load_dags(sys.argv[1]); "
            "print(json.dumps({d: sorted((t.task_id, json.dumps(getattr(t, 'stage_document', None), sort_keys=True)) "
            "for t in dag.tasks) for d, dag in dags.items()}, sort_keys=True))")
    parsers = [subprocess.Popen([sys.executable, "-c", code, str(DAGS)], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, **extra})  # side by side: each imports Airflow
               for extra in ({}, {"MLCHAOS_EXAMPLE_BROKEN": "1", "MLCHAOS_EXAMPLE_DIR": "/elsewhere",
                                  "MLCHAOS_HOME": "/x"})]
    outputs = [p.communicate(timeout=300)[0] for p in parsers]
    assert [p.returncode for p in parsers] == [0, 0]
    assert outputs[0] == outputs[1]
    assert "checkpoint-wipe.snapshot" in outputs[0]


def test_the_stage_file_reaches_the_tasks_templated(example_dags: dict[str, Any]) -> None:
    """The tasks render the stage file with the run's params: the same file serves every run conf."""
    documents = _chaos_documents(example_dags["retraining_with_chaos"])
    spec = documents["checkpoint-wipe.inject"]["spec"]
    assert spec["store"] == "file://{{ params.workdir }}/{{ dag.dag_id }}/checkpoints"
    assert "--broken={{ params.broken }}" in spec["resume"]["command"]


def test_nightly_dag(example_dags: dict[str, Any], mlflow_server: str, tmp_path: Path) -> None:
    from mlchaos_steps.targets.mlflow import client

    dag = example_dags["nightly_resilience"]
    assert dag.schedule == "@daily"
    model = f"ex-{uuid.uuid4().hex[:6]}"
    state, states = _run(dag, workdir=str(tmp_path), model=model)
    assert state == "success", states
    champion = client().get_model_version_by_alias(model, "champion")
    assert champion.tags["mlchaos.checkpoint-wipe.verdict"] == "passed"
    assert champion.tags["mlchaos.registry-artifact-removal.verdict"] == "passed"
    assert champion.tags["mlchaos.feature-drift.verdict"] == "passed"


def test_add_chaos_to_existing_dag(example_dags: dict[str, Any], tmp_path: Path) -> None:
    dag = example_dags["existing_training_with_chaos"]
    assert dag.task_dict["train"].downstream_task_ids == {"checkpoint-wipe.snapshot"}
    assert {"evaluate"} <= dag.task_dict["checkpoint-wipe.verify"].downstream_task_ids
    state, states = _run(dag, workdir=str(tmp_path))
    assert state == "success", states
    state, states = _run(dag, workdir=str(tmp_path), broken=True)  # the same file, the broken trainer
    assert state == "failed", states
    assert states["checkpoint-wipe.verify"] == "failed"
    assert states["checkpoint-wipe.restore"] == "success"
    assert states["evaluate"] == "upstream_failed"
