"""Insert a chaos stage into a workflow a user already has, editing the document as data.

``after`` names a DAG task, a step, or a container/script entrypoint:

* DAG: a task calling ``mlchaos-steps/chaos-stage`` goes in after ``after``; the tasks that waited for
  ``after`` to succeed (``before`` alone, when given) wait for the stage instead. ``depends`` expressions
  are rewritten token by token: ``after`` and ``after.Succeeded`` point at the stage, failure branches such
  as ``after.Failed`` keep pointing at ``after``. A DAG written with ``dependencies`` gets ``dependencies``.
* Steps: a new step group holding the stage, after the group holding ``after``.
* A container or script entrypoint: a new DAG entrypoint ``<after>-with-chaos`` runs it, passing its
  inputs through, then the stage.

Refused with a SpecError (exit 2), nothing changed: ``after`` in a parallel step group, a workflow that is
only a ``workflowTemplateRef``, ``before`` not directly downstream of ``after``, a name already used,
``after`` in several templates without ``template``. The result is validated before it is returned.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from mlchaos_steps.argo.library import LIBRARY, RESTORE_RUN_TEMPLATE, STAGE_TEMPLATE, stage_run_key
from mlchaos_steps.argo.stagedoc import StageDocument, read_stage, workflow_parameters
from mlchaos_steps.argo.validate import _TOKEN, KINDS, parse_depends, validate_document
from mlchaos_steps.errors import SpecError

_WRAPPABLE = ("container", "script")


def _spec(document: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if not isinstance(document, Mapping) or document.get("kind") not in KINDS:
        kind = document.get("kind") if isinstance(document, Mapping) else type(document).__name__
        raise SpecError("kind", f"{kind!r} is not an Argo workflow: give a {', '.join(KINDS)}")
    spec = document.get("spec") or {}
    if document["kind"] == "CronWorkflow":
        spec = spec.get("workflowSpec") or {}
    if spec.get("workflowTemplateRef") and not spec.get("templates"):
        raise SpecError("--after", "this workflow is only a workflowTemplateRef to "
                        f"{spec['workflowTemplateRef'].get('name')!r}: insert the stage into that WorkflowTemplate")
    return spec


def _holders(spec: Mapping[str, Any], after: str, template: str | None) -> list[tuple[Any, str]]:
    """The templates with a task or step named ``after`` (restricted to ``template`` when given)."""
    found = []
    for t in spec.get("templates") or []:
        if template is not None and t.get("name") != template:
            continue
        if t.get("dag") is not None and any(task.get("name") == after for task in t["dag"].get("tasks") or []):
            found.append((t, "dag"))
        elif t.get("steps") is not None and any(s.get("name") == after for g in t["steps"] or [] for s in g or []):
            found.append((t, "steps"))
    return found


def _call(name: str, document: StageDocument, model: str, version: str, run_key: str,
          literal: Callable[[str], Any]) -> dict[str, Any]:
    return {
        "templateRef": {"name": LIBRARY, "template": STAGE_TEMPLATE},
        "arguments": {"parameters": [{"name": "stage", "value": literal(document.text)},
                                     {"name": "model", "value": model}, {"name": "version", "value": version},
                                     {"name": "lock", "value": document.lock}]},
        "hooks": {"exit": {"templateRef": {"name": LIBRARY, "template": RESTORE_RUN_TEMPLATE},
                           "arguments": {"parameters": [{"name": "run-key", "value": run_key}]}}},
    }


def insert_stage(document: MutableMapping[str, Any], *, after: str, stage: str | Path | Mapping[str, Any],
                 before: str | None = None, template: str | None = None, name: str | None = None,
                 model: str = "", version: str = "", literal: Callable[[str], Any] = str) -> str:
    """Insert the stage into ``document`` in place and return the new task's name (see the module doc)."""
    spec = _spec(document)
    stage_doc = read_stage(stage, workflow_parameters(spec), where="--stage")
    name = name or stage_doc.default_name
    holders = _holders(spec, after, template)
    if len(holders) > 1:
        names = ", ".join(repr(t.get("name")) for t, _ in holders)
        raise SpecError("--after", f"{after!r} is in several templates ({names}): pick one with --template")
    if holders:
        holder, kind = holders[0]
        insert = _into_dag if kind == "dag" else _into_steps
        insert(holder, after, before, name, stage_doc, model, version, literal)
    else:
        _wrap_entrypoint(spec, after, before, template, name, stage_doc, model, version, literal)
    problems = validate_document(document, source="the result")
    if problems:
        raise SpecError("--after", "the workflow with the stage inserted would not be valid: "
                        + "; ".join(str(p) for p in problems[:5]))
    return name


def _into_dag(holder: MutableMapping[str, Any], after: str, before: str | None, name: str, stage_doc: StageDocument,
              model: str, version: str, literal: Callable[[str], Any]) -> None:
    tasks = holder["dag"]["tasks"]
    if any(t.get("name") == name for t in tasks):
        raise SpecError("--name", f"task {name!r} already exists in template {holder.get('name')!r}: choose another "
                        "name with --name")
    with_dependencies = any(t.get("dependencies") is not None for t in tasks)
    downstream = [t for t in tasks if _waits_for_success(t, after)]
    if before is not None:
        if not any(t.get("name") == before for t in tasks):
            raise SpecError("--before", f"{before!r} is not a task of template {holder.get('name')!r}")
        downstream = [t for t in downstream if t.get("name") == before]
        if not downstream:
            raise SpecError("--before", f"{before!r} does not wait for {after!r} to succeed: give a task directly "
                            f"downstream of {after!r}, or leave --before out")
    edge: dict[str, Any] = {"dependencies": [after]} if with_dependencies else {"depends": after}
    task = {"name": name, **edge, **_call(name, stage_doc, model, version, stage_run_key(name), literal)}
    for t in downstream:
        if t.get("dependencies") is not None:
            t["dependencies"][t["dependencies"].index(after)] = name
        else:
            t["depends"] = rewrite_depends(str(t["depends"]), after, name)
    index = next(i for i, t in enumerate(tasks) if t.get("name") == after)
    tasks.insert(index + 1, task)


def _waits_for_success(task: Mapping[str, Any], after: str) -> bool:
    if task.get("dependencies") is not None:
        return after in task["dependencies"]
    if task.get("depends") is None:
        return False
    return any(n == after and r in (None, "Succeeded") for n, r in parse_depends(str(task["depends"])))


def rewrite_depends(expression: str, old: str, new: str) -> str:
    """``expression`` with its success operands on ``old`` (``old``, ``old.Succeeded``) pointing at ``new``;
    everything else, spacing included, as it was."""
    out, pos = [], 0
    while pos < len(expression):
        match = _TOKEN.match(expression, pos)
        if not match:
            out.append(expression[pos:])
            break
        _, operand, result = match.groups()
        text = match.group(0)
        if operand == old and result in (None, "Succeeded"):
            text = re.sub(rf"{re.escape(old)}(?=(\.Succeeded)?$)", new, text)
        out.append(text)
        pos = match.end()
    return "".join(out)


def _into_steps(holder: MutableMapping[str, Any], after: str, before: str | None, name: str,
                stage_doc: StageDocument, model: str, version: str, literal: Callable[[str], Any]) -> None:
    groups = holder["steps"]
    index = next(i for i, g in enumerate(groups) if any(s.get("name") == after for s in g or []))
    if len(groups[index]) > 1:
        others = [s.get("name") for s in groups[index] if s.get("name") != after]
        raise SpecError("--after", f"{after!r} runs in parallel with {others} in template {holder.get('name')!r}: "
                        "there is no single point after it; insert after a step that runs alone")
    if any(s.get("name") == name for g in groups for s in g or []):
        raise SpecError("--name", f"step {name!r} already exists in template {holder.get('name')!r}: choose another "
                        "name with --name")
    if before is not None and (index + 1 >= len(groups) or not any(s.get("name") == before
                                                                   for s in groups[index + 1] or [])):
        raise SpecError("--before", f"{before!r} is not in the step group right after {after!r}: give a step of "
                        "the next group, or leave --before out")
    step = {"name": name, **_call(name, stage_doc, model, version, stage_run_key(name, index + 1), literal)}
    groups.insert(index + 1, [step])


def _wrap_entrypoint(spec: MutableMapping[str, Any], after: str, before: str | None, template: str | None, name: str,
                     stage_doc: StageDocument, model: str, version: str, literal: Callable[[str], Any]) -> None:
    templates = spec.get("templates") or []
    entry = next((t for t in templates if t.get("name") == after), None)
    if entry is None or spec.get("entrypoint") != after or not any(entry.get(k) is not None for k in _WRAPPABLE):
        where = f" of template {template!r}" if template else ""
        raise SpecError("--after", f"no task or step{where} is named {after!r}, and it is not a container or script "
                        "entrypoint: give the name of a DAG task, a step, or the entrypoint")
    if before is not None:
        raise SpecError("--before", f"the entrypoint {after!r} is a single {_kind(entry)}: nothing runs after it, "
                        "leave --before out")
    wrapper = f"{after}-with-chaos"
    if any(t.get("name") in (wrapper, name) for t in templates) or name == after:
        raise SpecError("--name", f"{wrapper!r} or {name!r} is already a template name: choose another with --name")
    inputs = entry.get("inputs") or {}
    passed = [p for p in inputs.get("parameters") or [] if p.get("value") is None]
    given_artifacts = {a.get("name") for a in (spec.get("arguments") or {}).get("artifacts") or []}
    artifacts = [a for a in inputs.get("artifacts") or [] if a.get("name") in given_artifacts]
    wrapper_inputs: dict[str, Any] = {}
    if passed:
        wrapper_inputs["parameters"] = [{k: p[k] for k in ("name", "default", "description") if k in p}
                                        for p in passed]
    if artifacts:
        wrapper_inputs["artifacts"] = [{"name": a["name"]} for a in artifacts]
    arguments: dict[str, Any] = {}
    if passed:
        arguments["parameters"] = [{"name": p["name"], "value": "{{inputs.parameters." + p["name"] + "}}"}
                                   for p in passed]
    if artifacts:
        arguments["artifacts"] = [{"name": a["name"], "from": "{{inputs.artifacts." + a["name"] + "}}"}
                                  for a in artifacts]
    run = {"name": after, "template": after, **({"arguments": arguments} if arguments else {})}
    chaos = {"name": name, "depends": after, **_call(name, stage_doc, model, version, stage_run_key(name), literal)}
    dag = {"name": wrapper, **({"inputs": wrapper_inputs} if wrapper_inputs else {}),
           "dag": {"tasks": [run, chaos]}}
    templates.insert(0, dag)
    spec["entrypoint"] = wrapper


def _kind(template: Mapping[str, Any]) -> str:
    return next(k for k in _WRAPPABLE if template.get(k) is not None)


# -- YAML, edited in place -------------------------------------------------------------------------------
def inject_yaml(text: str, **options: Any) -> str:
    """``insert_stage`` on YAML text, keeping the document as written (comments, quotes, flow style,
    indentation, blank lines): the diff is the inserted task and the rewired dependencies."""
    from io import StringIO

    from ruamel.yaml import YAML
    from ruamel.yaml.scalarstring import LiteralScalarString
    from ruamel.yaml.util import load_yaml_guess_indent

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    _, indent, block_seq_indent = load_yaml_guess_indent(text)
    yaml.indent(mapping=2, sequence=max(indent, 2), offset=block_seq_indent or 0)

    def dump(documents: list[Any]) -> str:
        out = StringIO()
        yaml.dump_all(documents, out)
        return out.getvalue()

    documents = list(yaml.load_all(text))
    argo = [d for d in documents if isinstance(d, Mapping) and d.get("kind") in KINDS]
    if len(argo) != 1:
        raise SpecError("FILE", f"holds {len(argo)} Argo workflow documents: give a file with exactly one")
    before = dump(documents)
    insert_stage(argo[0], literal=LiteralScalarString, **options)
    after = dump(documents)
    return splice(text, before, after)


def splice(original: str, dumped: str, edited: str) -> str:
    """Apply the change ``dumped -> edited`` (both written by ruamel) to ``original`` (written by a person),
    so that what ruamel would reformat on its own (a blank line, an indentation) stays as it was. Falls
    back to ``edited`` when the change cannot be placed or the result would not load as ``edited`` does."""
    from difflib import SequenceMatcher

    import yaml

    lines, ruamel, wanted = original.splitlines(True), dumped.splitlines(True), edited.splitlines(True)
    where = {}  # line of `dumped` -> the same line of `original`
    for block in SequenceMatcher(None, lines, ruamel, autojunk=False).get_matching_blocks():
        where.update({block.b + k: block.a + k for k in range(block.size)})
    edits = []
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, ruamel, wanted, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        if tag == "insert":
            start = where[i1 - 1] + 1 if i1 - 1 in where else where.get(i1)
            end = start
        elif all(i in where for i in range(i1, i2)):
            start, end = where[i1], where[i2 - 1] + 1
        else:
            start = None
        if start is None:
            return edited
        edits.append((start, end, wanted[j1:j2]))
    for start, end, replacement in sorted(edits, reverse=True):
        lines[start:end] = replacement
    result = "".join(lines)
    try:
        same = list(yaml.safe_load_all(result)) == list(yaml.safe_load_all(edited))
    except yaml.YAMLError:
        same = False
    return result if same else edited
