"""Retraining with chaos.

    prepare >> train >> checkpoint-wipe >> evaluate >> register (@challenger)
            >> registry-artifact-removal >> gate (moves @champion)

Each chaos stage is one YAML file in ``stages/`` and becomes a task group of four tasks: snapshot (a
setup), inject, verify, restore (its teardown, so it always runs). The gate moves @champion only when
the candidate passed both stages and everything was restored.

Params (give them as run conf, e.g. ``{"broken": true}``): ``workdir`` for checkpoints and logs,
``model`` the registered model, ``broken`` to train and register the deliberately broken workloads (a
trainer that trusts a damaged checkpoint, a model that loads without its weights): both stages fail,
the gate ends ``upstream_failed`` and nothing is promoted.
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
    def train(params: dict) -> str:
        return training.train(training.checkpoints(params["workdir"], dag.dag_id))

    @task
    def evaluate(params: dict) -> float:
        return training.evaluate(training.checkpoints(params["workdir"], dag.dag_id))

    @task
    def register(params: dict) -> str:
        version = training.register_candidate(params["model"], params["workdir"], broken=params["broken"])
        # checkpoint-wipe ran before this version existed: its verdict is carried onto it
        carry_verdicts(get_current_context(), params["model"], version, ["checkpoint-wipe"])
        return version

    checkpoint_wipe = ChaosStage(stage=STAGES / "checkpoint_wipe.yaml")
    registry_artifact_removal = ChaosStage(stage=STAGES / "registry_artifact_removal.yaml",
                                           model="{{ params.model }}", version=CANDIDATE)
    gate = PromotionGateOperator(task_id="gate", model="{{ params.model }}", version=CANDIDATE,
                                 require=["checkpoint-wipe", "registry-artifact-removal"])

    (prepare() >> train() >> checkpoint_wipe >> evaluate() >> register()
     >> registry_artifact_removal >> gate)
