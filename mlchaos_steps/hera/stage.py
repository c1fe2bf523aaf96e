"""Stage and gate tasks for workflows written in Hera, and ``add_chaos`` for workflows already built."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hera.workflows import Task, Workflow
from hera.workflows import models as m
from hera.workflows._context import _context

from mlchaos_steps.argo.insert import insert_stage
from mlchaos_steps.argo.library import (
    GATE_TEMPLATE,
    LIBRARY,
    RESTORE_RUN_TEMPLATE,
    STAGE_TEMPLATE,
    TEMPLATE_NAMES,
    stage_run_key,
)
from mlchaos_steps.argo.stagedoc import read_stage
from mlchaos_steps.errors import SpecError


def _workflow_in_context() -> Workflow | None:
    pieces = _context.pieces or []
    return pieces[0] if pieces and isinstance(pieces[0], Workflow) else None


def _params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The values ``{{workflow.parameters.x}}`` takes when the stage is checked: the workflow's arguments
    (when called inside ``with Workflow(...)``) overridden by ``params``."""
    values: dict[str, Any] = {}
    workflow = _workflow_in_context()
    arguments = getattr(workflow, "arguments", None) or []
    if isinstance(arguments, Mapping):  # Hera keeps the {name: value} form a user wrote
        values.update({str(k): getattr(v, "value", v) for k, v in arguments.items()})
    else:
        for parameter in arguments if isinstance(arguments, list) else [arguments]:
            if getattr(parameter, "value", None) is not None:
                values[parameter.name] = parameter.value
    return {**values, **(params or {})}


def _call(template: str, inline: str | None) -> dict[str, Any]:
    """How a task names a library template: by templateRef (the WorkflowTemplate installed once), or, given
    the step ``inline`` image, by name, with the library's templates added to the workflow."""
    if inline:
        _add_library_templates(inline)
        return {"template": template}
    return {"template_ref": m.TemplateRef(name=LIBRARY, template=template)}


def _add_library_templates(image: str) -> None:
    from mlchaos_steps.hera.library import templates

    workflow = _workflow_in_context()
    if workflow is None:
        raise SpecError("inline", "inline templates need a workflow: call inside `with Workflow(...)`")
    present = {getattr(t, "name", None) for t in workflow.templates}
    if present >= set(TEMPLATE_NAMES):
        return
    saved, _context.pieces = _context.pieces, None  # built outside the user's `with` blocks
    try:
        built = templates(image)
    finally:
        _context.pieces = saved
    workflow.templates.extend(t for t in built if t.name not in present)


def chaos_stage(name: str | None, stage: str | Path | Mapping[str, Any], *, model: str = "", version: str = "",
                params: Mapping[str, Any] | None = None, inline: str | None = None) -> Task:
    """A task running one chaos stage (call inside ``with DAG(...)``); its exit hook restores the run
    even on ``argo stop``. The stage file is checked now: a bad one raises SpecError when the workflow is
    built, not in the cluster. ``model``/``version`` (e.g. ``{{workflow.parameters.model}}``, ``@challenger``)
    name the model version that gets the verdict. ``inline="<step image>"`` puts the library's templates
    into this workflow instead of calling the installed ``mlchaos-steps`` WorkflowTemplate."""
    document = read_stage(stage, _params(params), where=str(stage) if not isinstance(stage, Mapping) else "stage")
    name = name or document.default_name
    hook = _call(RESTORE_RUN_TEMPLATE, inline)
    return Task(
        name=name, **_call(STAGE_TEMPLATE, inline),
        arguments={"stage": document.text, "model": model, "version": version, "lock": document.lock},
        hooks={"exit": m.LifecycleHook(
            arguments=m.Arguments(parameters=[m.Parameter(name="run-key", value=stage_run_key(name))]),
            **hook)},
    )


def gate(name: str, *, model: str, version: str, require: list[str] | str, alias: str = "champion",
         inline: str | None = None) -> Task:
    """A task running the promotion gate: the alias moves only when every stage in ``require`` passed."""
    required = require if isinstance(require, str) else ",".join(require)
    return Task(name=name, **_call(GATE_TEMPLATE, inline),
                arguments={"model": model, "version": version, "require": required, "alias": alias})


def add_chaos(workflow: Workflow, *, after: str, stage: str | Path | Mapping[str, Any], before: str | None = None,
              template: str | None = None, name: str | None = None, model: str = "", version: str = "") -> Workflow:
    """Insert a stage into a workflow built with Hera, after task or step ``after`` (and before ``before``):
    the same insertion as ``mlchaos argo inject``, on this workflow's templates. Returns the workflow."""
    built = workflow.to_dict()
    insert_stage(built, after=after, before=before, template=template, stage=stage, name=name,
                 model=model, version=version)
    rebuilt = type(workflow).from_dict(built)
    workflow.templates = rebuilt.templates
    workflow.entrypoint = rebuilt.entrypoint
    return workflow
