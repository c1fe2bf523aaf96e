"""Deployment with chaos.

    deploy (setup) >> canary-failure >> pod-delete >> gate (moves @champion) >> undeploy (teardown)

``deploy`` starts the serving workers, the stable and canary model servers and a canary router;
``canary-failure`` makes the canary fail under live traffic and checks that the router rolls back;
``pod-delete`` kills a serving worker and checks that a replacement answers in time. The gate moves
@champion only when @challenger passed both.

Params: ``workdir`` for logs, ``model`` the registered model, ``router_port`` and ``serving_port``,
``broken`` to deploy a router that never rolls back and workers that are never replaced.
"""

from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, Param, setup, task, teardown

from mlchaos_steps.airflow import ChaosStage, PromotionGateOperator
from mlchaos_steps.examples import deployment, training

STAGES = Path(__file__).parent / "stages"
CANDIDATE = "{{ ti.xcom_pull(task_ids='deploy')['candidate'] }}"

with DAG(
    "deployment_with_chaos",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["chaos", "example"],
    params={
        "workdir": Param("/tmp/mlchaos-examples", type="string", description="logs and pid files"),
        "model": Param("churn-classifier", type="string", description="the registered model"),
        "router_port": Param(5170, type="integer", description="the canary router"),
        "serving_port": Param(5173, type="integer", description="the serving workers"),
        "broken": Param(False, type="boolean", description="a router without analysis, workers never replaced"),
    },
) as dag:

    @setup
    @task
    def deploy(params: dict) -> dict:
        candidate = training.ensure_candidate(params["model"])
        return deployment.start(params["model"], candidate, params["workdir"], router_port=params["router_port"],
                                serving_port=params["serving_port"], broken=params["broken"])

    @teardown
    @task
    def undeploy(params: dict) -> None:
        deployment.stop(params["workdir"])

    canary_failure = ChaosStage(stage=STAGES / "canary_failure.yaml", model="{{ params.model }}", version=CANDIDATE)
    pod_delete = ChaosStage(stage=STAGES / "pod_delete.yaml", model="{{ params.model }}", version=CANDIDATE)
    gate = PromotionGateOperator(task_id="gate", model="{{ params.model }}", version=CANDIDATE,
                                 require=["canary-failure", "pod-delete"])

    deployed = deploy()
    deployed >> canary_failure >> pod_delete >> gate >> undeploy().as_teardown(setups=deployed)
