"""Nightly resilience, on Argo Workflows (the equivalent of ``dags/nightly_resilience.py``): a
CronWorkflow running the stages against the current @champion every night.

    champion >> prepare >> train >> checkpoint-wipe     (verdict onto @champion)
    champion >> registry-artifact-removal               (on @champion itself)
    champion >> features >> feature-drift               (the drift monitor, verdict onto @champion)

No gate: nothing is promoted; the verdicts on @champion, and the MLflow runs of every night, say
whether production still recovers.

Render: ``python workflows/nightly.py > workflows/nightly.yaml`` (``make workflows`` renders all).
"""

from pathlib import Path

from hera.workflows import DAG, CronWorkflow

from mlchaos_steps.hera import chaos_stage
from mlchaos_steps.hera.examples import training_step

STAGES = Path(__file__).parent / "stages"
STORE = "{{workflow.parameters.workdir}}/checkpoints"
MODEL = "{{workflow.parameters.model}}"
CHAMPION = "{{tasks.champion.outputs.parameters.result}}"

with CronWorkflow(
    name="nightly-resilience",
    schedules=["0 3 * * *"],
    concurrency_policy="Forbid",
    entrypoint="main",
    arguments={"workdir": "/mnt/mlchaos-examples", "model": "churn-classifier", "broken": "false"},
    labels={"app.kubernetes.io/part-of": "mlchaos-steps"},
) as workflow:
    champion = training_step("champion", "champion", "--model", MODEL)
    prepare = training_step("prepare", "prepare", "--store", STORE)
    train = training_step("train", "train", "--store", STORE)
    features = training_step("features", "features", "--workdir", "{{workflow.parameters.workdir}}", "--days", "3")

    with DAG(name="main"):
        current = champion()
        checkpoint_wipe = chaos_stage("checkpoint-wipe", STAGES / "checkpoint_wipe.yaml", model=MODEL,
                                      version=CHAMPION)
        artifact_removal = chaos_stage("registry-artifact-removal", STAGES / "registry_artifact_removal_champion.yaml",
                                       model=MODEL, version=CHAMPION)
        feature_drift = chaos_stage("feature-drift", STAGES / "feature_drift.yaml", model=MODEL, version=CHAMPION)
        current >> prepare() >> train() >> checkpoint_wipe
        current >> artifact_removal
        current >> features() >> feature_drift

if __name__ == "__main__":
    print(workflow.to_yaml(), end="")
