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

``insert_stage`` edits plain data (what Hera's ``to_dict`` gives, or ``yaml.safe_load``); ``inject_yaml``
makes the same edits on YAML text, at the places PyYAML's composer reports, so that nothing else changes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlchaos_steps.argo.library import LIBRARY, RESTORE_RUN_TEMPLATE, STAGE_TEMPLATE, stage_run_key
from mlchaos_steps.argo.stagedoc import StageDocument, read_stage, workflow_parameters
from mlchaos_steps.argo.validate import _TOKEN, KINDS, parse_depends, validate_document
from mlchaos_steps.errors import InfrastructureError, SpecError

_WRAPPABLE = ("container", "script")


def _call(name: str, document: StageDocument, model: str, version: str, run_key: str) -> dict[str, Any]:
    return {
        "templateRef": {"name": LIBRARY, "template": STAGE_TEMPLATE},
        "arguments": {"parameters": [{"name": "stage", "value": Literal(document.text)},
                                     {"name": "model", "value": model}, {"name": "version", "value": version},
                                     {"name": "lock", "value": document.lock}]},
        "hooks": {"exit": {"templateRef": {"name": LIBRARY, "template": RESTORE_RUN_TEMPLATE},
                           "arguments": {"parameters": [{"name": "run-key", "value": run_key}]}}},
    }


class Literal(str):
    """A string written as a YAML block literal (``|``): the stage document stays readable."""


@dataclass(frozen=True)
class Edit:
    """One change, by its place in the document: ``item`` goes into the sequence at ``path`` after index
    ``after`` (-1: first), or the scalar at ``path`` becomes ``value``."""

    path: tuple[Any, ...]
    after: int | None = None
    item: Any = None
    value: str | None = None


def insert_stage(document: MutableMapping[str, Any], *, after: str, stage: str | Path | Mapping[str, Any],
                 before: str | None = None, template: str | None = None, name: str | None = None,
                 model: str = "", version: str = "") -> list[Edit]:
    """Insert the stage into ``document`` (plain data) in place; return the edits made, by path, so that a
    YAML text can get exactly the same ones (see the module doc)."""
    spec, base = _spec(document)
    stage_doc = read_stage(stage, workflow_parameters(spec), where="--stage")
    name = name or stage_doc.default_name
    holders = _holders(spec, after, template)
    if len(holders) > 1:
        names = ", ".join(f"{spec['templates'][i].get('name')!r} ({_where((*base, 'templates', i))})"
                          for i, _ in holders)
        raise SpecError("--after", f"{after!r} is in several templates: {names}; pick one with --template")
    if holders:
        index, kind = holders[0]
        insert = _into_dag if kind == "dag" else _into_steps
        edits = insert(spec["templates"][index], (*base, "templates", index), after, before, name, stage_doc,
                       model, version)
    else:
        edits = _wrap_entrypoint(spec, base, after, before, template, name, stage_doc, model, version)
    problems = validate_document(document, source="the result")
    if problems:
        raise SpecError("--after", "the workflow with the stage inserted would not be valid: "
                        + "; ".join(str(p) for p in problems[:5]))
    return edits


def _spec(document: MutableMapping[str, Any]) -> tuple[MutableMapping[str, Any], tuple[str, ...]]:
    if not isinstance(document, Mapping) or document.get("kind") not in KINDS:
        kind = document.get("kind") if isinstance(document, Mapping) else type(document).__name__
        raise SpecError("kind", f"{kind!r} is not an Argo workflow: give a {', '.join(KINDS)}")
    spec, base = document.get("spec") or {}, ("spec",)
    if document["kind"] == "CronWorkflow":
        spec, base = spec.get("workflowSpec") or {}, ("spec", "workflowSpec")
    if spec.get("workflowTemplateRef") and not spec.get("templates"):
        raise SpecError("--after", f"{_where((*base, 'workflowTemplateRef'))}: this workflow is only a reference to "
                        f"{spec['workflowTemplateRef'].get('name')!r}: insert the stage into that WorkflowTemplate")
    return spec, base


def _holders(spec: Mapping[str, Any], after: str, template: str | None) -> list[tuple[int, str]]:
    """The templates (by index) with a task or step named ``after``, restricted to ``template`` when given."""
    found = []
    for i, t in enumerate(spec.get("templates") or []):
        if template is not None and t.get("name") != template:
            continue
        if t.get("dag") is not None and any(task.get("name") == after for task in t["dag"].get("tasks") or []):
            found.append((i, "dag"))
        elif t.get("steps") is not None and any(s.get("name") == after for g in t["steps"] or [] for s in g or []):
            found.append((i, "steps"))
    return found


def _where(path: tuple[Any, ...]) -> str:
    """A path inside the document as the validator writes it: ``spec.templates[0].dag.tasks``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _into_dag(holder: MutableMapping[str, Any], path: tuple[Any, ...], after: str, before: str | None, name: str,
              stage_doc: StageDocument, model: str, version: str) -> list[Edit]:
    tasks = holder["dag"]["tasks"]
    if any(t.get("name") == name for t in tasks):
        raise SpecError("--name", f"task {name!r} already exists at {_where((*path, 'dag', 'tasks'))}: choose another "
                        "name with --name")
    downstream = [i for i, t in enumerate(tasks) if _waits_for_success(t, after)]
    if before is not None:
        if not any(t.get("name") == before for t in tasks):
            raise SpecError("--before", f"{before!r} is not a task at {_where((*path, 'dag', 'tasks'))}: give a task "
                            f"of the DAG that holds {after!r}")
        downstream = [i for i in downstream if tasks[i].get("name") == before]
        if not downstream:
            raise SpecError("--before", f"{before!r} (at {_where((*path, 'dag', 'tasks'))}) does not wait for "
                            f"{after!r} to succeed: give a task directly downstream of {after!r}, or leave --before "
                            "out")
    with_dependencies = any(t.get("dependencies") is not None for t in tasks)
    edge: dict[str, Any] = {"dependencies": [after]} if with_dependencies else {"depends": after}
    task = {"name": name, **edge, **_call(name, stage_doc, model, version, stage_run_key(name))}
    tasks_path = (*path, "dag", "tasks")
    edits = []
    for i in downstream:
        if tasks[i].get("dependencies") is not None:
            where = tasks[i]["dependencies"].index(after)
            tasks[i]["dependencies"][where] = name
            edits.append(Edit((*tasks_path, i, "dependencies", where), value=name))
        else:
            tasks[i]["depends"] = rewrite_depends(str(tasks[i]["depends"]), after, name)
            edits.append(Edit((*tasks_path, i, "depends"), value=tasks[i]["depends"]))
    index = next(i for i, t in enumerate(tasks) if t.get("name") == after)
    tasks.insert(index + 1, task)
    return [*edits, Edit(tasks_path, after=index, item=task)]


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


def _into_steps(holder: MutableMapping[str, Any], path: tuple[Any, ...], after: str, before: str | None, name: str,
                stage_doc: StageDocument, model: str, version: str) -> list[Edit]:
    groups = holder["steps"]
    index = next(i for i, g in enumerate(groups) if any(s.get("name") == after for s in g or []))
    if len(groups[index]) > 1:
        others = [s.get("name") for s in groups[index] if s.get("name") != after]
        raise SpecError("--after", f"{after!r} runs in parallel with {others} at {_where((*path, 'steps', index))}: "
                        "there is no single point after it; insert after a step that runs alone")
    if any(s.get("name") == name for g in groups for s in g or []):
        raise SpecError("--name", f"step {name!r} already exists in {_where((*path, 'steps'))}: choose another "
                        "name with --name")
    if before is not None and (index + 1 >= len(groups) or not any(s.get("name") == before
                                                                   for s in groups[index + 1] or [])):
        raise SpecError("--before", f"{before!r} is not in the step group right after {after!r} "
                        f"({_where((*path, 'steps', index + 1))}): give a step of that group, or leave --before out")
    group = [{"name": name, **_call(name, stage_doc, model, version, stage_run_key(name, index + 1))}]
    groups.insert(index + 1, group)
    return [Edit((*path, "steps"), after=index, item=group)]


def _wrap_entrypoint(spec: MutableMapping[str, Any], base: tuple[str, ...], after: str, before: str | None,
                     template: str | None, name: str, stage_doc: StageDocument, model: str,
                     version: str) -> list[Edit]:
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
    passed = [p for p in (entry.get("inputs") or {}).get("parameters") or [] if p.get("value") is None]
    given = {a.get("name") for a in (spec.get("arguments") or {}).get("artifacts") or []}
    artifacts = [a["name"] for a in (entry.get("inputs") or {}).get("artifacts") or [] if a.get("name") in given]
    inputs: dict[str, Any] = {}
    arguments: dict[str, Any] = {}
    if passed:
        inputs["parameters"] = [{k: p[k] for k in ("name", "default", "description") if k in p} for p in passed]
        arguments["parameters"] = [{"name": p["name"], "value": "{{inputs.parameters." + p["name"] + "}}"}
                                   for p in passed]
    if artifacts:
        inputs["artifacts"] = [{"name": a} for a in artifacts]
        arguments["artifacts"] = [{"name": a, "from": "{{inputs.artifacts." + a + "}}"} for a in artifacts]
    run = {"name": after, "template": after, **({"arguments": arguments} if arguments else {})}
    chaos = {"name": name, "depends": after, **_call(name, stage_doc, model, version, stage_run_key(name))}
    dag = {"name": wrapper, **({"inputs": inputs} if inputs else {}), "dag": {"tasks": [run, chaos]}}
    templates.insert(0, dag)
    spec["entrypoint"] = wrapper
    return [Edit((*base, "entrypoint"), value=wrapper), Edit((*base, "templates"), after=-1, item=dag)]


def _kind(template: Mapping[str, Any]) -> str:
    return next(k for k in _WRAPPABLE if template.get(k) is not None)


# -- YAML, edited as text ---------------------------------------------------------------------------------
def inject_yaml(text: str, **options: Any) -> str:
    """``insert_stage`` on YAML text. The document is changed as text, at the places PyYAML's composer
    reports, so everything else (comments, quotes, flow style, indentation, blank lines) stays as written
    and the diff is the inserted task and the rewired dependencies. The result must load as the edited
    data does, or nothing is returned."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        nodes, documents = _compose_and_construct(text, loader)
    except yaml.YAMLError as exc:
        raise SpecError("FILE", f"is not valid YAML: {exc}") from exc
    argo = [i for i, d in enumerate(documents) if isinstance(d, Mapping) and d.get("kind") in KINDS]
    if len(argo) != 1:
        raise SpecError("FILE", f"holds {len(argo)} Argo workflow documents: give a file with exactly one")
    edits = insert_stage(documents[argo[0]], **options)
    result = _apply(text, nodes[argo[0]], edits)
    if list(yaml.load_all(result, Loader=loader)) != documents:
        raise InfrastructureError("could not insert the stage while keeping the file as written: please report "
                                  "this file; `mlchaos_steps.argo.insert.insert_stage` works on the data")
    return result


def _compose_and_construct(text: str, loader_class: Any) -> tuple[list[Any], list[Any]]:
    """Each document's node tree (with the marks of where everything is) and its data, parsed once."""
    loader = loader_class(text)
    nodes, documents = [], []
    try:
        while loader.check_node():
            node = loader.get_node()
            nodes.append(node)
            documents.append(loader.construct_document(node))
    finally:
        loader.dispose()
    return nodes, documents


def _node(root: Any, path: tuple[Any, ...]) -> Any:
    node = root
    for key in path:
        if isinstance(key, int):
            node = node.value[key]
        else:
            node = next(v for k, v in node.value if k.value == key)
    return node


def _apply(text: str, root: Any, edits: list[Edit]) -> str:
    changes = []  # (start, end, replacement) on the original text
    for edit in edits:
        node = _node(root, edit.path)
        if edit.value is not None:
            changes.append((node.start_mark.index, node.end_mark.index, _scalar(edit.value, node.style)))
        else:
            changes.append(_insertion(text, node, edit))
    for start, end, replacement in sorted(changes, key=lambda c: c[0], reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def _scalar(value: str, style: str | None) -> str:
    if style == '"':
        return json.dumps(value)
    if style == "'":
        return "'" + value.replace("'", "''") + "'"
    return value


def _insertion(text: str, sequence: Any, edit: Edit) -> tuple[int, int, str]:
    """Where and what to insert for ``edit``: after item ``edit.after`` (or first) of the sequence."""
    if sequence.flow_style:
        if edit.after < 0:
            at = sequence.value[0].start_mark.index
            return at, at, json.dumps(edit.item) + ", "
        at = sequence.value[edit.after].end_mark.index
        return at, at, ", " + json.dumps(edit.item)
    first = sequence.value[0]
    dash = text.rfind("-", 0, first.start_mark.index)  # every item of a block sequence starts at this column
    column = dash - (text.rfind("\n", 0, dash) + 1)
    if edit.after < 0:  # first: above the comments that introduce the current first item
        at = text.rfind("\n", 0, dash) + 1
        while at > 0:
            previous = text.rfind("\n", 0, at - 1) + 1
            if text[previous:at].strip() and not text[previous:at].lstrip().startswith("#"):
                break
            at = previous
        return at, at, _block_item(edit.item, column)
    item = sequence.value[edit.after]
    at = _end_of_content(text, item.start_mark.index, item.end_mark.index)
    return at, at, _block_item(edit.item, column)


def _end_of_content(text: str, start: int, end: int) -> int:
    """Just after the last line of an item that is not blank or a comment (the next item's comments stay
    with it)."""
    lines = text[start:end].split("\n")
    offset = start
    last = start
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            last = offset + len(line)
        offset += len(line) + 1
    newline = text.find("\n", last)
    return len(text) if newline < 0 else newline + 1


def _block_item(item: Any, column: int) -> str:
    """``item`` as a block sequence entry whose dash is at ``column``; nested sequences of sequences (a
    step group) get one dash per level."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(Literal, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|"))
    dashes = "- "
    while isinstance(item, list) and len(item) == 1:
        item, dashes = item[0], dashes + "- "
    body = yaml.dump(item, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=4096, allow_unicode=True)
    lines = body.splitlines()
    pad = " " * (column + len(dashes))
    out = [" " * column + dashes + lines[0]] + [pad + line if line else "" for line in lines[1:]]
    return "\n".join(out) + "\n"
