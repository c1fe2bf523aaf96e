"""Nightly resilience: every day, the stages against the current @champion.

    champion >> train >> checkpoint-wipe        (verdict onto @champion)
    champion >> registry-artifact-removal       (on @champion itself)
    champion >> features >> feature-drift       (the drift monitor, verdict onto @champion)

Each execution is an MLflow run in experiment ``mlchaos`` with its metrics (``lost_steps``,
``detect_seconds``...), so the runs of every night are the trend. No gate: nothing is promoted, the
verdicts on @champion say whether production still recovers.
"""

import sys
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, Param, task

from mlchaos_steps.airflow import ChaosStage
from mlchaos_steps.examples import training

STAGES = Path(__file__).parent / "stages"
CHAMPION = "{{ ti.xcom_pull(task_ids='champion') }}"

with DAG(
    "nightly_resilience",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["chaos", "example"],
    params={
        "workdir": Param("/tmp/mlchaos-examples", type="string", description="checkpoints and logs"),
        "model": Param("churn-classifier", type="string", description="the registered model"),
        "broken": Param(False, type="boolean", description="the deliberately broken trainer and drift monitor"),
    },
    user_defined_macros={"python": sys.executable},
) as dag:

    @task
    def champion(params: dict) -> str:
        return training.ensure_champion(params["model"])

    @task
    def train(params: dict) -> str:
        store = training.checkpoints(params["workdir"], dag.dag_id)
        training.prepare(store)
        return training.train(store)

    checkpoint_wipe = ChaosStage(stage=STAGES / "checkpoint_wipe.yaml", model="{{ params.model }}",
                                 version=CHAMPION)
    registry_artifact_removal = ChaosStage(stage=STAGES / "registry_artifact_removal_champion.yaml",
                                           model="{{ params.model }}", version=CHAMPION)

    @task
    def features(params: dict) -> str:
        return training.features(Path(params["workdir"]) / dag.dag_id, days=3)

    feature_drift = ChaosStage(stage=STAGES / "feature_drift.yaml", model="{{ params.model }}", version=CHAMPION)

    current = champion()
    current >> train() >> checkpoint_wipe
    current >> registry_artifact_removal
    current >> features() >> feature_drift
