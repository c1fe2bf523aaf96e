"""Deployment with chaos: deploy the canary (setup) -> canary-failure -> pod-delete on the serving
workers -> promotion gate; undeploy (teardown). Runs locally on the embedded defaults."""

from mlchaos_steps.examples.pipeline import deployment_dag

dag = deployment_dag()
