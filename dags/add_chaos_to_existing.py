"""Chaos in a DAG you already have, without editing its tasks: ``insert_chaos`` puts checkpoint-wipe
between ``train`` and ``evaluate`` and rewires the edges.

The first half is the DAG as it was; the last line is all that chaos takes.
"""

import sys
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, Param, task

from mlchaos_steps.airflow import insert_chaos
from mlchaos_steps.examples import training

STAGES = Path(__file__).parent / "stages"

with DAG(
    "existing_training_with_chaos",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example"],
    params={
        "workdir": Param("/tmp/mlchaos-examples", type="string", description="checkpoints and logs"),
        "broken": Param(False, type="boolean", description="the deliberately broken trainer"),
    },
    user_defined_macros={"python": sys.executable},
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

    prepare() >> train() >> evaluate()

insert_chaos(dag, after="train", before="evaluate", stage=STAGES / "checkpoint_wipe.yaml")
