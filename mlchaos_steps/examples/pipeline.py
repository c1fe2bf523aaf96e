"""The example pipelines behind ``dags/``: retraining, deployment, nightly, and an existing DAG.

DAG factories build the DAGs; the files in ``dags/`` call them, and so does ``mlchaos demo``. Paths,
ports and the model name come from the environment so the same DAGs run on a laptop, in CI and in
the demo:

- ``MLCHAOS_EXAMPLE_DIR`` (default ``$MLCHAOS_HOME/examples``): checkpoints, logs, pid files;
- ``MLCHAOS_EXAMPLE_MODEL`` (default ``churn-classifier``);
- ``MLCHAOS_EXAMPLE_PORT_BASE`` (default 5170): router, stable, canary and worker server ports;
- ``MLCHAOS_EXAMPLE_BROKEN=1``: the deliberately broken workloads.

Nothing heavy is imported here at module level: mlflow loads inside the tasks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from mlchaos_steps import config

SERVING_LABEL = "mlchaos-example-serving"
ALL_STAGES = ["checkpoint-wipe", "registry-artifact-removal", "canary-failure", "pod-delete"]


def workdir() -> Path:
    return Path(os.environ.get("MLCHAOS_EXAMPLE_DIR") or config.home() / "examples")


def model_name() -> str:
    return os.environ.get("MLCHAOS_EXAMPLE_MODEL", "churn-classifier")


def broken() -> bool:
    return os.environ.get("MLCHAOS_EXAMPLE_BROKEN", "") == "1"


def ports() -> dict[str, int]:
    base = int(os.environ.get("MLCHAOS_EXAMPLE_PORT_BASE", "5170"))
    return {"router": base, "stable": base + 1, "canary": base + 2, "workers": base + 3}


def store(pipeline: str) -> Path:
    return workdir() / pipeline / "checkpoints"


# -- stage specs (built at parse time: plain data) ----------------------------------------------
def checkpoint_wipe_spec(pipeline: str) -> dict[str, Any]:
    from mlchaos_steps.examples.workloads import resume_command

    return {"kind": "CheckpointWipe", "spec": {
        "store": store(pipeline).as_uri(), "pattern": r"step-(\d+)", "mode": "corrupt-latest", "count": 1,
        "resume": {"command": resume_command(store(pipeline), broken=broken()), "max_lost_steps": 200}}}


def registry_spec(version: str = "@challenger") -> dict[str, Any]:
    return {"kind": "RegistryArtifactRemoval", "spec": {
        "model": model_name(), "version": version, "scope": "weights", "expect": "detected"}}


def canary_spec() -> dict[str, Any]:
    from mlchaos_steps.examples.models import SAMPLE_INPUT

    return {"kind": "CanaryFailure", "spec": {
        "model": model_name(), "candidate": "@challenger", "router": {"url": f"http://127.0.0.1:{ports()['router']}"},
        "fault": "errors", "rollback_within_s": 5 if broken() else 20, "stable": {"min_success_ratio": 0.99},
        "traffic": {"sample": SAMPLE_INPUT}}}


def pod_delete_spec() -> dict[str, Any]:
    return {"kind": "PodDelete", "spec": {
        "target": {"local": {"selector": {"cmdline": "mlchaos_steps[.]examples[.]serving",
                                          "env": {"MLCHAOS_APP": SERVING_LABEL}}}},
        "count": 1, "recovery_slo_s": 5 if broken() else 30,
        "probe": {"http": {"url": f"http://127.0.0.1:{ports()['workers']}/ping", "min_success_ratio": 0.95}}}}


# -- task callables -----------------------------------------------------------------------------
def prepare(pipeline: str) -> str:
    shutil.rmtree(store(pipeline), ignore_errors=True)
    store(pipeline).mkdir(parents=True)
    return str(store(pipeline))


def train(pipeline: str) -> str:
    from mlchaos_steps.examples.workloads import train as run_trainer

    run_trainer(store(pipeline))
    return str(store(pipeline))


def evaluate(pipeline: str) -> float:
    import numpy as np

    from mlchaos_steps.examples.trainer import newest_intact

    state = newest_intact(store(pipeline))
    if state is None:
        raise RuntimeError("no intact checkpoint to evaluate")
    rng = np.random.default_rng(123)
    x = rng.normal(size=(2000, 8))
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] > 0).astype(int)
    return float(state["model"].score(x, y))


def register(context: Any, carry: list[str]) -> str:
    """Register a candidate as @challenger (a champion first, if there is none) and carry the verdicts
    of stages that ran before it existed onto it."""
    from mlchaos_steps.airflow import carry_verdicts
    from mlchaos_steps.examples.models import register_silent_fallback, register_sklearn
    from mlchaos_steps.targets.mlflow import alias_version, client

    name = model_name()
    if alias_version(name, "champion") is None:
        client().set_registered_model_alias(name, "champion", register_sklearn(name))
    version = register_silent_fallback(name, workdir()) if broken() else register_sklearn(name)
    client().set_registered_model_alias(name, "challenger", version)
    carry_verdicts(context, name, version, carry)
    return version


def ensure_candidate() -> str:
    """The deployment pipeline's candidate: @challenger, registered (with a champion) when missing."""
    from mlchaos_steps.examples.models import register_sklearn
    from mlchaos_steps.targets.mlflow import alias_version, client

    name = model_name()
    if alias_version(name, "champion") is None:
        client().set_registered_model_alias(name, "champion", register_sklearn(name))
    candidate = alias_version(name, "challenger")
    if candidate is None:
        candidate = register_sklearn(name)
        client().set_registered_model_alias(name, "challenger", candidate)
    return candidate


def start_deployment() -> dict[str, Any]:
    """Start the serving workers, stable and canary model servers and the canary router (a setup)."""
    from mlchaos_steps.examples import workloads

    candidate = ensure_candidate()
    logs = workdir() / "deployment"
    logs.mkdir(parents=True, exist_ok=True)
    p = ports()
    started = []
    try:
        started.append(workloads.start_server(healthy=not broken(), port=p["workers"], label=SERVING_LABEL,
                                              log_path=logs / "workers.log"))
        started.append(workloads.start_model_server(f"models:/{model_name()}@champion", port=p["stable"],
                                                    log_path=logs / "stable.log"))
        started.append(workloads.start_model_server(f"models:/{model_name()}@challenger", port=p["canary"],
                                                     log_path=logs / "canary.log"))
        started.append(workloads.start_router(
            started[1].url, started[2].url, canary_weight=30, rollback=not broken(),
            analysis={"interval_s": 0.5, "count": 10_000}, model=model_name(), version=candidate,
            port=p["router"], log_path=logs / "router.log"))
    finally:
        (logs / "pids.json").write_text(json.dumps([s.process.pid for s in started]))
    return {"candidate": candidate}


def stop_deployment() -> None:
    """Stop everything ``start_deployment`` started (a teardown)."""
    pids = workdir() / "deployment" / "pids.json"
    if not pids.exists():
        return
    for pid in json.loads(pids.read_text()):
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    pids.unlink()


# -- DAG factories ------------------------------------------------------------------------------
def _dag(dag_id: str, schedule: str | None = None, **kw: Any) -> Any:
    from datetime import datetime

    from airflow.sdk import DAG

    return DAG(dag_id, schedule=schedule, start_date=datetime(2026, 1, 1), catchup=False, tags=["chaos", "example"],
               **kw)


def retraining_dag(dag_id: str = "retraining_with_chaos") -> Any:
    """prepare -> train -> checkpoint-wipe -> evaluate -> register (@challenger) -> registry-artifact-removal
    -> gate (@champion)."""
    from airflow.sdk import get_current_context, task

    from mlchaos_steps.airflow import ChaosStage, PromotionGateOperator

    version = "{{ ti.xcom_pull(task_ids='register') }}"
    with _dag(dag_id) as dag:
        prepared, trained, evaluated = _training_tasks(dag_id)

        @task(task_id="register")
        def register_task() -> str:
            return register(get_current_context(), carry=["checkpoint-wipe"])

        gate = PromotionGateOperator(task_id="gate", model=model_name(), version=version,
                                     require=["checkpoint-wipe", "registry-artifact-removal"])
        (prepared >> trained >> ChaosStage(checkpoint_wipe_spec(dag_id)) >> evaluated
         >> register_task() >> ChaosStage(registry_spec(), model=model_name(), version=version) >> gate)
    return dag


def _training_tasks(pipeline: str) -> tuple[Any, Any, Any]:
    """prepare, train and evaluate as TaskFlow tasks of the DAG being built (not yet chained)."""
    from airflow.sdk import task

    @task(task_id="prepare")
    def prepare_task() -> str:
        return prepare(pipeline)

    @task(task_id="train")
    def train_task() -> str:
        return train(pipeline)

    @task(task_id="evaluate")
    def evaluate_task() -> float:
        return evaluate(pipeline)

    return prepare_task(), train_task(), evaluate_task()


def deployment_dag(dag_id: str = "deployment_with_chaos") -> Any:
    """deploy canary (setup) -> canary-failure -> pod-delete on the serving workers -> gate; undeploy (teardown)."""
    from airflow.sdk import setup, teardown

    from mlchaos_steps.airflow import ChaosStage, PromotionGateOperator

    version = "{{ ti.xcom_pull(task_ids='deploy')['candidate'] }}"
    with _dag(dag_id) as dag:
        @setup
        def deploy() -> dict[str, Any]:
            return start_deployment()

        @teardown
        def undeploy() -> None:
            stop_deployment()

        deployed = deploy()
        gate = PromotionGateOperator(task_id="gate", model=model_name(), version=version,
                                     require=["canary-failure", "pod-delete"])
        (deployed >> ChaosStage(canary_spec(), model=model_name(), version=version)
         >> ChaosStage(pod_delete_spec(), model=model_name(), version=version) >> gate)
        gate >> undeploy().as_teardown(setups=deployed)
    return dag


def nightly_dag(dag_id: str = "nightly_resilience") -> Any:
    """Every day, against the current champion: checkpoint-wipe on a fresh training run and
    registry-artifact-removal on @champion. Each execution logs an MLflow run in experiment ``mlchaos``
    (metrics ``lost_steps``, ``detect_seconds``...), which is the trend."""
    from airflow.sdk import task

    from mlchaos_steps.airflow import ChaosStage

    version = "{{ ti.xcom_pull(task_ids='champion') }}"
    with _dag(dag_id, schedule="@daily") as dag:
        @task(task_id="champion")
        def champion_task() -> str:
            from mlchaos_steps.targets.mlflow import alias_version

            ensure_candidate()
            return str(alias_version(model_name(), "champion"))

        @task(task_id="train")
        def train_task() -> str:
            prepare(dag_id)
            return train(dag_id)

        champion = champion_task()
        champion >> train_task() >> ChaosStage(checkpoint_wipe_spec(dag_id), model=model_name(), version=version)
        champion >> ChaosStage(registry_spec("@champion"), model=model_name(), version=version)
    return dag


def plain_training_dag(dag_id: str = "plain_training") -> Any:
    """A DAG as users already have it: no chaos in it."""
    with _dag(dag_id) as dag:
        prepared, trained, evaluated = _training_tasks(dag_id)
        prepared >> trained >> evaluated
    return dag
