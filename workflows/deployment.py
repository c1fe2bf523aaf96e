"""Deployment with chaos, on Argo Workflows (the equivalent of ``dags/deployment_with_chaos.py``).

    candidate (@challenger) >> canary-failure >> gate (moves @champion)

``canary-failure`` makes the canary fail under live traffic through the router at ``router-url`` (the
router's Service as the step pods reach it) and passes only when the traffic itself shows the rollback.
The pod-delete stage of the Airflow example waits for the Kubernetes backend; here the gate requires
canary-failure alone.

Render: ``python workflows/deployment.py > workflows/deployment.yaml`` (``make workflows`` renders all).
"""

from pathlib import Path

from hera.workflows import DAG, Workflow

from mlchaos_steps.hera import chaos_stage, gate
from mlchaos_steps.hera.examples import training_step

STAGES = Path(__file__).parent / "stages"
MODEL = "{{workflow.parameters.model}}"
VERSION = "{{tasks.candidate.outputs.parameters.result}}"

with Workflow(
    generate_name="deployment-with-chaos-",
    entrypoint="main",
    arguments={"model": "churn-classifier", "router-url": "http://canary-router.ml-serving:5170"},
    labels={"app.kubernetes.io/part-of": "mlchaos-steps"},
) as workflow:
    candidate = training_step("candidate", "candidate", "--model", MODEL)

    with DAG(name="main"):
        canary_failure = chaos_stage("canary-failure", STAGES / "canary_failure.yaml", model=MODEL, version=VERSION)
        promote = gate("gate", model=MODEL, version=VERSION, require=["canary-failure"])
        candidate() >> canary_failure >> promote

if __name__ == "__main__":
    print(workflow.to_yaml(), end="")
