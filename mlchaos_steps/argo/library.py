"""Names the Argo side shares: the ``mlchaos-steps`` WorkflowTemplate, its templates and parameters, and
the rendered library shipped as package data (``mlchaos-steps.yaml``, rendered by
:mod:`mlchaos_steps.hera.library` and compared with it by the tests).
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

from mlchaos_steps import __version__

LIBRARY = "mlchaos-steps"  # the WorkflowTemplate a cluster installs once
JANITOR = "mlchaos-janitor"  # the CronWorkflow that restores what `argo terminate` left broken
STAGE_TEMPLATE = "chaos-stage"  # snapshot -> inject -> verify, restore always
GATE_TEMPLATE = "gate"
RESTORE_RUN_TEMPLATE = "restore-run"  # the exit hook: restore one run key, idempotent
RESTORE_ORPHANED_TEMPLATE = "restore-orphaned"  # what the janitor runs
PHASES = ("snapshot", "inject", "verify", "restore")
TEMPLATE_NAMES = (STAGE_TEMPLATE, *(f"mlchaos-{p}" for p in PHASES), GATE_TEMPLATE, RESTORE_RUN_TEMPLATE,
                  RESTORE_ORPHANED_TEMPLATE)
DEFAULT_IMAGE = f"ghcr.io/mlchaos-steps/mlchaos-steps:{__version__}"
CONFIG = "mlchaos-steps"  # ConfigMap (MLFLOW_TRACKING_URI, ...) and Secret (credentials) the steps read
SERVICE_ACCOUNT = "mlchaos-steps"
RESULT_FILE = "/tmp/mlchaos-result.json"  # what the steps write and the output parameters read
STAGE_FILE = "/mlchaos/stage.yaml"  # where the stage document lands (a raw input artifact)
RUN_KEY = "{{workflow.uid}}/{{node.name}}"  # inside chaos-stage, node.name is the stage's own node


def stage_run_key(task: str, step_group: int | None = None) -> str:
    """The stage's run key seen from the template that calls it (the exit hook needs it): the stage node is
    ``<caller>.<task>`` in a DAG and ``<caller>[<group>].<step>`` in steps."""
    child = f".{task}" if step_group is None else f"[{step_group}].{task}"
    return "{{workflow.uid}}/{{node.name}}" + child


@functools.cache
def _library_text() -> str:
    return resources.files("mlchaos_steps.argo").joinpath("mlchaos-steps.yaml").read_text()


def library_documents() -> list[dict[str, Any]]:
    """The shipped WorkflowTemplate and janitor CronWorkflow, as data (a fresh copy each call)."""
    import copy

    return copy.deepcopy(_parsed_library())


@functools.cache
def _parsed_library() -> list[dict[str, Any]]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [d for d in yaml.load_all(_library_text(), Loader=loader) if d]


def library_yaml(image: str | None = None) -> str:
    """The shipped library as YAML, with ``image`` in place of the default step image."""
    text = _library_text()
    return text.replace(DEFAULT_IMAGE, image) if image else text
