"""The Airflow front door with real Airflow: ChaosStage, the gate operator, insert_chaos, dag.test()."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import tree_digests, wipe_doc


def _dag(dag_id: str, **kw: Any) -> Any:
    from airflow.sdk import DAG

    return DAG(dag_id, schedule=None, catchup=False, **kw)


def test_importing_the_airflow_module_pulls_in_nothing_heavy() -> None:
    code = ("import sys, mlchaos_steps.airflow; "
            "print(','.join(m for m in ('mlflow', 'kubernetes', 'chaoslib', 'hera') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_chaos_stage_healthy_run_succeeds(airflow_db: Path, store: Path) -> None:
    from airflow.sdk import task

    from mlchaos_steps.airflow import ChaosStage
    from mlchaos_steps.airflow.local_run import run_dag, task_states

    before = tree_digests(store)
    with _dag("chaos_healthy") as dag:
        @task
        def train() -> str:
            return "trained"

        @task
        def evaluate() -> str:
            return "evaluated"

        train() >> ChaosStage(wipe_doc(store, "corrupt-latest")) >> evaluate()
    run = run_dag(dag)
    states = task_states(run)
    assert str(run.state) == "success", states
    assert states["checkpoint-wipe.verify"] == "success"
    assert states["checkpoint-wipe.restore"] == "success"
    assert states["evaluate"] == "success"
    assert tree_digests(store) == before


def test_failed_verification_fails_the_run_and_blocks_downstream(airflow_db: Path, store: Path) -> None:
    from airflow.sdk import task

    from mlchaos_steps.airflow import ChaosStage
    from mlchaos_steps.airflow.local_run import run_dag, task_states

    before = tree_digests(store)
    with _dag("chaos_broken") as dag:
        @task
        def promote() -> str:
            return "promoted"

        ChaosStage(wipe_doc(store, "corrupt-latest", broken=True)) >> promote()
    run = run_dag(dag)
    states = task_states(run)
    assert str(run.state) == "failed", states
    assert states["checkpoint-wipe.verify"] == "failed"
    assert states["promote"] == "upstream_failed"
    assert states["checkpoint-wipe.restore"] == "success"  # the teardown still ran
    assert tree_digests(store) == before


def test_invalid_spec_fails_at_parse_time_naming_dag_and_field(store: Path) -> None:
    from mlchaos_steps.airflow import ChaosStage
    from mlchaos_steps.errors import SpecError

    doc = wipe_doc(store)
    doc["spec"]["resume"]["command"] = "python train.py"
    with pytest.raises(SpecError, match=r"DAG parse_err.*spec\.resume\.command"), _dag("parse_err") as dag:
        ChaosStage(doc, dag=dag)


def _plain_dag(dag_id: str) -> Any:
    from airflow.providers.standard.operators.empty import EmptyOperator

    with _dag(dag_id) as dag:
        EmptyOperator(task_id="prepare") >> EmptyOperator(task_id="train") >> EmptyOperator(task_id="evaluate")
    return dag


def test_insert_between_two_tasks(airflow_db: Path, store: Path) -> None:
    from mlchaos_steps.airflow import insert_chaos
    from mlchaos_steps.airflow.local_run import run_dag

    dag = _plain_dag("insert_between")
    insert_chaos(dag, after="train", before="evaluate", stage=wipe_doc(store))
    assert "evaluate" not in dag.task_dict["train"].downstream_task_ids
    assert dag.task_dict["checkpoint-wipe.verify"].downstream_task_ids == {"evaluate", "checkpoint-wipe.restore"}
    assert dag.task_dict["evaluate"].upstream_task_ids == {"checkpoint-wipe.verify", "checkpoint-wipe.restore"}
    assert str(run_dag(dag).state) == "success"


@pytest.mark.parametrize("name", ["data_corruption", "feature_drift"])
def test_insert_chaos_places_the_data_stages_like_the_others(name: str) -> None:
    """The data stages' files of dags/stages, inserted into a plain DAG at parse time."""
    import yaml

    from mlchaos_steps.airflow import insert_chaos

    dag = _plain_dag(f"insert_{name}")
    group = name.replace("_", "-")
    text = (Path(__file__).parent.parent / "dags" / "stages" / f"{name}.yaml").read_text()
    for template, value in {"{{ params.workdir }}": "/data", "{{ dag.dag_id }}": dag.dag_id,
                            "{{ python }}": sys.executable, "{{ params.broken }}": "false"}.items():
        text = text.replace(template, value)
    insert_chaos(dag, after="prepare", before="train", stage=yaml.safe_load(text))
    assert dag.task_dict["prepare"].downstream_task_ids == {f"{group}.snapshot"}
    assert "train" in dag.task_dict[f"{group}.verify"].downstream_task_ids


def test_insert_errors_name_dag_task_and_field(store: Path) -> None:
    from mlchaos_steps.airflow import insert_chaos
    from mlchaos_steps.errors import SpecError

    dag = _plain_dag("insert_errors")
    with pytest.raises(SpecError, match=r"DAG insert_errors: insert_chaos after.*'nope'"):
        insert_chaos(dag, after="nope", stage=wipe_doc(store))
    with pytest.raises(SpecError, match=r"insert_chaos before.*not directly downstream"):
        insert_chaos(dag, after="evaluate", before="prepare", stage=wipe_doc(store))
    bad = wipe_doc(store)
    bad["spec"]["count"] = 0
    with pytest.raises(SpecError, match=r"DAG insert_errors.*spec\.count"):
        insert_chaos(dag, after="train", stage=bad)
    insert_chaos(dag, after="train", stage=wipe_doc(store))
    with pytest.raises(SpecError, match="already used"):
        insert_chaos(dag, after="prepare", stage=wipe_doc(store))


def test_insert_into_taskflow_groups_mapping_and_setup_teardown(airflow_db: Path, store: Path) -> None:
    """Every shape at once: TaskFlow with XCom, a task group, dynamic mapping, a setup/teardown pair,
    and a fail_fast DAG."""
    from airflow.sdk import TaskGroup, setup, task, teardown

    from mlchaos_steps.airflow import insert_chaos
    from mlchaos_steps.airflow.local_run import run_dag, task_states

    with _dag("insert_shapes", fail_fast=True) as dag:
        @setup
        def create_cluster() -> str:
            return "cluster"

        @teardown
        def delete_cluster(name: str) -> None:
            return None

        @task
        def shards() -> list[int]:
            return [1, 2, 3]

        @task
        def train(shard: int) -> int:
            return shard * 10

        @task
        def evaluate(scores: list[int]) -> int:
            return sum(scores)

        cluster = create_cluster()
        with TaskGroup("training") as group:
            trained = train.expand(shard=shards())
        result = evaluate(trained)
        cluster >> group
        result >> delete_cluster(cluster)
    insert_chaos(dag, after="training", before="evaluate", stage=wipe_doc(store))
    run = run_dag(dag)
    states = task_states(run)
    assert str(run.state) == "success", states
    assert states["evaluate"] == "success" and states["delete_cluster"] == "success"


def test_promotion_gate_operator(airflow_db: Path, two_versions: tuple[str, str, str], store: Path) -> None:
    from airflow.sdk import task

    from mlchaos_steps.airflow import ChaosStage, PromotionGateOperator
    from mlchaos_steps.airflow.local_run import run_dag, task_states
    from mlchaos_steps.targets.mlflow import client

    name, v1, v2 = two_versions
    for broken, dag_id in ((True, "gate_blocked"), (False, "gate_promoted")):
        with _dag(dag_id) as dag:
            @task
            def register() -> str:
                return v2

            version = "{{ ti.xcom_pull(task_ids='register') }}"
            stage = ChaosStage(wipe_doc(store, broken=broken), model=name, version=version)
            register() >> stage >> PromotionGateOperator(task_id="gate", model=name, version=version,
                                                         require=["checkpoint-wipe"])
        run = run_dag(dag)
        states = task_states(run)
        champion = client().get_model_version_by_alias(name, "champion").version
        if broken:
            assert str(run.state) == "failed" and states["gate"] == "upstream_failed", states
            assert champion == v1
            assert client().get_model_version(name, v2).tags["mlchaos.checkpoint-wipe.verdict"] == "failed"
        else:
            assert str(run.state) == "success", states
            assert champion == v2
            link = run.get_task_instance("checkpoint-wipe.verify").xcom_pull(
                task_ids="checkpoint-wipe.verify", key="_link_MlflowRunLink")
            assert "/#/experiments/" in link
            scorecard = run.get_task_instance("checkpoint-wipe.verify").xcom_pull(
                task_ids="checkpoint-wipe.verify", key="_link_ScorecardLink")
            assert scorecard.startswith("file://") and f"{name} version {v2}" in Path(
                scorecard.removeprefix("file://")).read_text()


def test_provider_info_entry_point() -> None:
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="apache_airflow_provider") if e.name == "provider_info"
             and e.value.startswith("mlchaos_steps")]
    info = ep.load()()
    assert info["connection-types"][0]["connection-type"] == "mlflow"


def test_cluster_policy_inserts_declared_stages_without_editing_the_dag(airflow_db: Path, store: Path,
                                                                      tmp_path: Path) -> None:
    """A DAG file that only declares stages (a sidecar YAML, and params) gets them when Airflow parses it."""
    import yaml
    from airflow.dag_processing.dagbag import DagBag

    from mlchaos_steps.airflow.local_run import run_dag, task_states

    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "wipe.yaml").write_text(yaml.safe_dump(wipe_doc(store, "delete-latest")))
    (folder / "existing.py").write_text(
        "from airflow.sdk import DAG\n"
        "from airflow.providers.standard.operators.empty import EmptyOperator\n"
        "with DAG('existing_sidecar', schedule=None, tags=['mlchaos']) as dag:\n"
        "    EmptyOperator(task_id='train') >> EmptyOperator(task_id='evaluate')\n"
        "with DAG('existing_params', schedule=None, params={'mlchaos_stages': [\n"
        "        {'after': 'train', 'stage': 'wipe.yaml', 'group_id': 'wipe'}]}) as dag2:\n"
        "    EmptyOperator(task_id='train') >> EmptyOperator(task_id='evaluate')\n"
        "with DAG('untouched', schedule=None) as dag3:\n"
        "    EmptyOperator(task_id='train') >> EmptyOperator(task_id='evaluate')\n")
    (folder / "existing.mlchaos.yaml").write_text(yaml.safe_dump(
        {"existing_sidecar": [{"after": "train", "before": "evaluate", "stage": "wipe.yaml"}]}))
    bag = DagBag(dag_folder=str(folder))
    assert not bag.import_errors, bag.import_errors
    sidecar, params, untouched = (bag.get_dag(d) for d in ("existing_sidecar", "existing_params", "untouched"))
    assert "checkpoint-wipe.verify" in sidecar.task_dict
    assert sidecar.task_dict["evaluate"].upstream_task_ids == {"checkpoint-wipe.verify", "checkpoint-wipe.restore"}
    assert "wipe.verify" in params.task_dict
    assert set(untouched.task_dict) == {"train", "evaluate"}
    state = run_dag(sidecar)
    assert str(state.state) == "success", task_states(state)


def test_cluster_policy_errors_are_import_errors(airflow_db: Path, tmp_path: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "bad.py").write_text(
        "from airflow.sdk import DAG\n"
        "from airflow.providers.standard.operators.empty import EmptyOperator\n"
        "with DAG('bad_declared', schedule=None, params={'mlchaos_stages': [\n"
        "        {'after': 'nope', 'stage': {'kind': 'CheckpointWipe', 'spec': {}}}]}) as dag:\n"
        "    EmptyOperator(task_id='train')\n")
    bag = DagBag(dag_folder=str(folder))
    (error,) = bag.import_errors.values()
    assert "bad_declared" in error


def test_on_kill_restores(airflow_db: Path, store: Path) -> None:
    """A task killed between inject and restore puts back what it broke."""
    from mlchaos_steps.airflow import ChaosStage

    before = tree_digests(store)
    with _dag("killed") as dag:
        stage = ChaosStage(wipe_doc(store, "delete-latest"))
    context = {"dag": dag, "run_id": "manual__killed", "ti": None}
    stage.snapshot.execute(context)
    stage.inject.execute(context)
    assert not (store / "step-500").exists()
    stage.inject.on_kill()
    assert tree_digests(store) == before


def test_mlflow_connection_points_the_task_at_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from mlchaos_steps.airflow.hooks import MlflowHook

    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_TEST", json.dumps(
        {"conn_type": "mlflow", "host": "http://127.0.0.1:5999", "password": "s3cret-token"}))
    # setenv first, so that whatever the hook writes into os.environ is undone after the test
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "unset")
    assert MlflowHook("mlflow_test").configure_environment() == "http://127.0.0.1:5999"
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5999"
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == "s3cret-token"
