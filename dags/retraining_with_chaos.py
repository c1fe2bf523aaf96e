"""Retraining with chaos.

    prepare >> features >> data-corruption >> validate >> train >> checkpoint-wipe >> evaluate
            >> register (@challenger) >> registry-artifact-removal >> gate (moves @champion)

Each chaos stage is one YAML file in ``stages/`` and becomes a task group of four tasks: snapshot (a
setup), inject, verify, restore (its teardown, so it always runs). The gate moves @champion only when
the candidate passed the three stages and everything was restored.

Params (give them as run conf, e.g. ``{"broken": true}``): ``workdir`` for checkpoints and logs,
``model`` the registered model, ``broken`` to run the deliberately broken workloads (a validator that lets
corrupted rows through, a trainer that trusts a damaged checkpoint, a model that loads without its
weights): the first stage fails, the gate ends ``upstream_failed`` and nothing is promoted.
"""

import sys
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, Param, get_current_context, task

from mlchaos_steps.airflow import ChaosStage, PromotionGateOperator, carry_verdicts
from mlchaos_steps.examples import training

STAGES = Path(__file__).parent / "stages"
CANDIDATE = "{{ ti.xcom_pull(task_ids='register') }}"

with DAG(
    "retraining_with_chaos",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["chaos", "example"],
    params={
        "workdir": Param("/tmp/mlchaos-examples", type="string", description="checkpoints and logs"),
        "model": Param("churn-classifier", type="string", description="the registered model"),
        "broken": Param(False, type="boolean", description="the deliberately broken trainer and model"),
    },
    user_defined_macros={"python": sys.executable},  # the interpreter the stage files run the trainer with
) as dag:

    @task
    def prepare(params: dict) -> str:
        return training.prepare(training.checkpoints(params["workdir"], dag.dag_id))

    @task
    def features(params: dict) -> str:
        return training.features(Path(params["workdir"]) / dag.dag_id)

    @task
    def validate(batch: str) -> None:
        training.validate_batch(batch)

    @task
    def train(params: dict) -> str:
        return training.train(training.checkpoints(params["workdir"], dag.dag_id))

    @task
    def evaluate(params: dict) -> float:
        return training.evaluate(training.checkpoints(params["workdir"], dag.dag_id))

    @task
    def register(params: dict) -> str:
        version = training.register_candidate(params["model"], params["workdir"], broken=params["broken"])
        # data-corruption and checkpoint-wipe ran before this version existed: their verdicts are carried onto it
        carry_verdicts(get_current_context(), params["model"], version, ["data-corruption", "checkpoint-wipe"])
        return version

    data_corruption = ChaosStage(stage=STAGES / "data_corruption.yaml")
    checkpoint_wipe = ChaosStage(stage=STAGES / "checkpoint_wipe.yaml")
    registry_artifact_removal = ChaosStage(stage=STAGES / "registry_artifact_removal.yaml",
                                           model="{{ params.model }}", version=CANDIDATE)
    gate = PromotionGateOperator(task_id="gate", model="{{ params.model }}", version=CANDIDATE,
                                 require=["data-corruption", "checkpoint-wipe", "registry-artifact-removal"])

    batch = features()
    (prepare() >> batch >> data_corruption >> validate(batch) >> train() >> checkpoint_wipe >> evaluate()
     >> register() >> registry_artifact_removal >> gate)
