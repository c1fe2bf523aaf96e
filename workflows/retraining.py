"""Retraining with chaos, on Argo Workflows (the equivalent of ``dags/retraining_with_chaos.py``).

    prepare >> features >> validate >> train >> evaluate >> register (@challenger)
            >> checkpoint-wipe >> data-corruption >> registry-artifact-removal >> gate (moves @champion)

Each chaos stage is a task calling the ``mlchaos-steps`` WorkflowTemplate (install it once:
``mlchaos argo templates | kubectl apply -f -``); its stage file is checked now, when the workflow is
rendered. The stages run after ``register``, so their verdicts go onto the registered version (data-corruption
runs the pipeline's validator and training-set step itself, on the same feature batch). The gate moves
@champion only when that version passed the three stages.

Render: ``python workflows/retraining.py > workflows/retraining.yaml`` (``make workflows`` renders all).
Parameters: ``workdir`` (checkpoints: storage every step reaches), ``model``, ``broken`` (``true``
runs the deliberately broken workloads: the first stage fails, nothing is promoted).
"""

from pathlib import Path

from hera.workflows import DAG, Workflow

from mlchaos_steps.hera import chaos_stage, gate
from mlchaos_steps.hera.examples import training_step

STAGES = Path(__file__).parent / "stages"
STORE = "{{workflow.parameters.workdir}}/checkpoints"
MODEL = "{{workflow.parameters.model}}"
VERSION = "{{tasks.register.outputs.parameters.result}}"

with Workflow(
    generate_name="retraining-with-chaos-",
    entrypoint="main",
    arguments={"workdir": "/mnt/mlchaos-examples", "model": "churn-classifier", "broken": "false"},
    labels={"app.kubernetes.io/part-of": "mlchaos-steps"},
) as workflow:
    prepare = training_step("prepare", "prepare", "--store", STORE)
    features = training_step("features", "features", "--workdir", "{{workflow.parameters.workdir}}")
    validate = training_step("validate", "validate", "--workdir", "{{workflow.parameters.workdir}}")
    train = training_step("train", "train", "--store", STORE)
    evaluate = training_step("evaluate", "evaluate", "--store", STORE)
    register = training_step("register", "register", "--model", MODEL, "--workdir",
                             "{{workflow.parameters.workdir}}", "--broken", "{{workflow.parameters.broken}}")

    with DAG(name="main"):
        data_corruption = chaos_stage("data-corruption", STAGES / "data_corruption.yaml", model=MODEL, version=VERSION)
        checkpoint_wipe = chaos_stage("checkpoint-wipe", STAGES / "checkpoint_wipe.yaml", model=MODEL, version=VERSION)
        artifact_removal = chaos_stage("registry-artifact-removal", STAGES / "registry_artifact_removal.yaml",
                                       model=MODEL, version=VERSION)
        promote = gate("gate", model=MODEL, version=VERSION,
                       require=["data-corruption", "checkpoint-wipe", "registry-artifact-removal"])
        (prepare() >> features() >> validate() >> train() >> evaluate() >> register() >> checkpoint_wipe
         >> data_corruption >> artifact_removal >> promote)

if __name__ == "__main__":
    print(workflow.to_yaml(), end="")
