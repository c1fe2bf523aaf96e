"""The example workloads' steps for the workflows in ``workflows/``: each a container running
``python -m mlchaos_steps.examples.training <step>`` from the step image, its result an output parameter."""

from __future__ import annotations

from hera.workflows import ConfigMapEnvFrom, Container, Parameter, SecretEnvFrom
from hera.workflows import models as m

from mlchaos_steps.argo.library import CONFIG, DEFAULT_IMAGE

OUTPUT = "/tmp/mlchaos-output"


def training_step(name: str, *args: str, image: str = DEFAULT_IMAGE) -> Container:
    """A template running one example training step; ``outputs.parameters.result`` is what it printed.
    The MLflow tracking URI comes from the ``mlchaos-steps`` ConfigMap, as in the chaos steps."""
    return Container(
        name=name, image=image, command=["python", "-m", "mlchaos_steps.examples.training"],
        args=[*args, "--output", OUTPUT],
        env_from=[ConfigMapEnvFrom(name=CONFIG), SecretEnvFrom(name=CONFIG, optional=True)],
        outputs=[Parameter(name="result", value_from=m.ValueFrom(path=OUTPUT))],
    )
