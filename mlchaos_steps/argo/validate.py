"""The offline ``argo lint``: Argo's JSON schema, checked per kind and strict about unknown fields, plus
the rules of Argo's own validator that a schema cannot express.

Schema: ``workflows-v4.1-schema.json`` (upstream ``api/jsonschema/schema.json`` of v4.1.2), shipped as
package data and changed in two ways when loaded: ``IntOrString`` accepts an integer as well (Argo and
Hera write ``limit: 2``), and every object definition that lists its properties refuses others
(``dependss:`` is a typo, not a field). Each document is checked against its own kind's definition, not
the root ``oneOf``, whose errors point at the wrong kind.

Rules (each problem names the one it broke): ``name`` (templates, tasks and steps: alphanumerics and
'-', unique), ``template-type`` (exactly one of container, dag, steps, ...), ``entrypoint``,
``template`` (every ``template:`` names a template of the document), ``template-ref`` (every
``templateRef`` resolves against the library files given, and the built-in ``mlchaos-steps``),
``dependency`` (every ``dependencies`` entry and ``depends`` operand is a task of the DAG),
``depends-syntax``, ``depends-mix`` (``depends`` and ``dependencies`` in one DAG), ``continue-on``
(``continueOn`` with ``depends``), ``cycle``, ``target`` and ``input`` (``{{inputs.parameters.x}}``
must be declared by its template).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

KINDS = ("Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate", "CronWorkflow")
TEMPLATE_TYPES = ("container", "containerSet", "dag", "data", "http", "plugin", "resource", "script", "steps",
                  "suspend")
NAME = re.compile(r"^[a-zA-Z0-9][-a-zA-Z0-9]*$")
RESULTS = ("Succeeded", "Failed", "Errored", "Skipped", "Omitted", "Daemoned", "AnySucceeded", "AllFailed")
_TOKEN = re.compile(r"\s*(?:(&&|\|\||!|\(|\))|([A-Za-z0-9][-A-Za-z0-9]*)(?:\.([A-Za-z]+))?)")
_INPUT_REF = re.compile(r"\{\{\s*inputs\.(parameters|artifacts)\.([-\w]+)\s*\}\}")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a document: where (a path inside it), which rule, and what to do."""

    source: str
    path: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.path or '(document)'}: {self.message} [{self.rule}]"


@dataclass
class Library:
    """Templates that ``templateRef`` may point at: ``(cluster_scope, name) -> {template name: template}``."""

    templates: dict[tuple[bool, str], dict[str, Any]] = field(default_factory=dict)

    def add(self, document: Mapping[str, Any]) -> None:
        kind = document.get("kind")
        if kind not in ("WorkflowTemplate", "ClusterWorkflowTemplate"):
            return
        name = (document.get("metadata") or {}).get("name")
        spec_templates = (document.get("spec") or {}).get("templates") or []
        self.templates[(kind == "ClusterWorkflowTemplate", str(name))] = {
            t.get("name"): t for t in spec_templates if isinstance(t, Mapping)}

    def resolve(self, ref: Mapping[str, Any]) -> str | None:
        """None when ``ref`` resolves, else what is missing."""
        key = (bool(ref.get("clusterScope")), str(ref.get("name")))
        scope = "ClusterWorkflowTemplate" if key[0] else "WorkflowTemplate"
        if key not in self.templates:
            return (f"{scope} {key[1]!r} is not among the files given: pass the file that defines it with "
                    "--templates")
        if ref.get("template") not in self.templates[key]:
            return f"{scope} {key[1]!r} has no template {ref.get('template')!r}"
        return None


# -- schema --------------------------------------------------------------------------------------------
@functools.cache
def _schema() -> dict[str, Any]:
    raw = json.loads(resources.files("mlchaos_steps.argo").joinpath("workflows-v4.1-schema.json").read_text())
    definitions = raw["definitions"]
    definitions["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] = {"type": ["string", "integer"]}
    for definition in definitions.values():
        if definition.get("type") == "object" and "properties" in definition:
            definition.setdefault("additionalProperties", False)
    return raw


@functools.cache
def _validator(kind: str) -> Any:
    import jsonschema_rs  # compiled to native code: ~20 ms to build, well under 1 ms for a 500-task workflow

    schema = _schema()
    return jsonschema_rs.validator_for({"$schema": schema["$schema"], "definitions": schema["definitions"],
                                        "$ref": f"#/definitions/io.argoproj.workflow.v1alpha1.{kind}"})


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _plain(value: Any) -> Any:
    """Plain dicts, lists and scalars (what the native validator takes), whatever mapping types came in."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


def _schema_problems(document: Mapping[str, Any], source: str) -> list[Problem]:
    problems = []
    for error in _validator(document["kind"]).iter_errors(_plain(document)):
        message = error.message
        if message.startswith("Additional properties are not allowed"):
            message = f"{message}: unknown field; check its spelling against Argo's field reference"
        problems.append(Problem(source, _path(error.instance_path), "schema", message))
    return sorted(problems, key=lambda p: p.path)


# -- Argo's rules ---------------------------------------------------------------------------------------
def _spec_of(document: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    spec = document.get("spec") or {}
    if document.get("kind") == "CronWorkflow":
        return spec.get("workflowSpec") or {}, "spec.workflowSpec"
    return spec, "spec"


class _Checker:
    def __init__(self, document: Mapping[str, Any], source: str, library: Library):
        self.document, self.source, self.library = document, source, library
        self.spec, self.spec_path = _spec_of(document)
        self.templates = [t for t in self.spec.get("templates") or [] if isinstance(t, Mapping)]
        self.names = {t.get("name") for t in self.templates}
        self.problems: list[Problem] = []

    def problem(self, path: str, rule: str, message: str) -> None:
        self.problems.append(Problem(self.source, path, rule, message))

    def run(self) -> list[Problem]:
        self._entrypoint()
        seen: set[Any] = set()
        for i, template in enumerate(self.templates):
            path = f"{self.spec_path}.templates[{i}]"
            self._name(path, template.get("name"), "template", seen)
            self._template(path, template)
        self._hooks(self.spec.get("hooks"), f"{self.spec_path}.hooks")
        if self.spec.get("onExit"):
            self._target_template(f"{self.spec_path}.onExit", {"template": self.spec["onExit"]})
        return self.problems

    def _entrypoint(self) -> None:
        entry = self.spec.get("entrypoint")
        if self.spec.get("workflowTemplateRef"):
            self._workflow_template_ref(self.spec["workflowTemplateRef"])
            return
        if entry is None:
            if self.document.get("kind") in ("Workflow", "CronWorkflow"):
                self.problem(f"{self.spec_path}.entrypoint", "entrypoint",
                             "is required: name the template the workflow starts with")
            return
        if entry not in self.names and "{{" not in str(entry):
            self.problem(f"{self.spec_path}.entrypoint", "entrypoint",
                         f"template {entry!r} is not defined: name one of {sorted(map(str, self.names))}")

    def _workflow_template_ref(self, ref: Mapping[str, Any]) -> None:
        key = (bool(ref.get("clusterScope")), str(ref.get("name")))
        if key not in self.library.templates:
            self.problem(f"{self.spec_path}.workflowTemplateRef", "template-ref",
                         f"{ref.get('name')!r} is not among the files given: pass it with --templates")

    def _name(self, path: str, name: Any, what: str, seen: set[Any]) -> None:
        if not isinstance(name, str) or not name:
            self.problem(f"{path}.name", "name", f"every {what} needs a name")
            return
        if len(name) > 128 or not NAME.match(name):
            self.problem(f"{path}.name", "name", f"{what} name {name!r} is invalid: use letters, digits and '-', "
                                                 "starting with a letter or digit (e.g. train-model)")
        if name in seen:
            self.problem(f"{path}.name", "name", f"{what} name {name!r} is not unique")
        seen.add(name)

    def _template(self, path: str, template: Mapping[str, Any]) -> None:
        kinds = [k for k in TEMPLATE_TYPES if template.get(k) is not None]
        if len(kinds) != 1 and not template.get("templateRef"):
            self.problem(path, "template-type", f"template {template.get('name')!r} has "
                         + (f"several types ({', '.join(kinds)})" if kinds else "no type")
                         + f": give it exactly one of {', '.join(TEMPLATE_TYPES)}")
        if template.get("dag") is not None:
            _DagChecker(self, f"{path}.dag", template["dag"]).run()
        if template.get("steps") is not None:
            self._steps(f"{path}.steps", template["steps"])
        self._inputs(path, template)

    def _steps(self, path: str, groups: Any) -> None:
        seen: set[Any] = set()
        for g, group in enumerate(groups or []):
            for s, step in enumerate(group or [] if isinstance(group, list) else []):
                where = f"{path}[{g}][{s}]"
                self._name(where, step.get("name"), "step", seen)
                self._target_template(where, step)
                self._hooks(step.get("hooks"), f"{where}.hooks")

    def _target_template(self, path: str, caller: Mapping[str, Any]) -> None:
        if caller.get("template") is not None:
            if caller["template"] not in self.names and not self.spec.get("workflowTemplateRef"):
                self.problem(f"{path}.template", "template", f"template {caller['template']!r} is not defined "
                             "in this document: define it under templates or use templateRef")
        elif caller.get("templateRef") is not None:
            missing = self.library.resolve(caller["templateRef"])
            if missing:
                self.problem(f"{path}.templateRef", "template-ref", missing)
        elif caller.get("inline") is None:
            self.problem(path, "template", "names no template: add template, templateRef or inline")

    def _hooks(self, hooks: Any, path: str) -> None:
        for name, hook in (hooks or {}).items():
            self._target_template(f"{path}.{name}", hook)

    def _inputs(self, path: str, template: Mapping[str, Any]) -> None:
        inputs = template.get("inputs") or {}
        declared = {kind: {p.get("name") for p in inputs.get(kind) or []} for kind in ("parameters", "artifacts")}
        body = {k: v for k, v in template.items() if k not in ("inputs", "name")}
        for kind, name in _input_refs(body):
            if name not in declared[kind]:
                self.problem(path, "input", f"template {template.get('name')!r} uses {{{{inputs.{kind}.{name}}}}} "
                             f"but does not declare it: add it under inputs.{kind}")


def _input_refs(value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        for match in _INPUT_REF.finditer(value):
            yield match.group(1), match.group(2)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _input_refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _input_refs(item)


class _DagChecker:
    def __init__(self, owner: _Checker, path: str, dag: Mapping[str, Any]):
        self.owner, self.path, self.dag = owner, path, dag
        self.tasks = [t for t in dag.get("tasks") or [] if isinstance(t, Mapping)]
        self.names = {t.get("name") for t in self.tasks}

    def run(self) -> None:
        seen: set[Any] = set()
        edges: dict[str, set[str]] = {}
        styles = set()
        for i, task in enumerate(self.tasks):
            where = f"{self.path}.tasks[{i}]"
            self.owner._name(where, task.get("name"), "task", seen)
            self.owner._target_template(where, task)
            self.owner._hooks(task.get("hooks"), f"{where}.hooks")
            edges[str(task.get("name"))] = self._edges(where, task, styles)
        if len(styles) > 1:
            self.owner.problem(self.path, "depends-mix", "uses both depends and dependencies: write every task "
                               "with depends (dependencies [A, B] is depends \"A && B\")")
        self._targets()
        self._cycles(edges)

    def _edges(self, where: str, task: Mapping[str, Any], styles: set[str]) -> set[str]:
        operands: set[str] = set()
        field_name = "depends"
        if task.get("dependencies") is not None:
            styles.add("dependencies")
            operands |= set(task["dependencies"] or [])
            field_name = "dependencies"
        if task.get("depends") is not None:
            styles.add("depends")
            field_name = "depends"
            try:
                operands |= {name for name, _ in parse_depends(str(task["depends"]))}
            except ValueError as exc:
                self.owner.problem(f"{where}.depends", "depends-syntax", str(exc))
            if task.get("continueOn") is not None:
                self.owner.problem(f"{where}.continueOn", "continue-on", "continueOn cannot be used with depends: "
                                   "write the branch in depends instead (e.g. \"A.Succeeded || A.Failed\")")
        for name in sorted(operands - self.names):
            self.owner.problem(f"{where}.{field_name}", "dependency", f"task {task.get('name')!r} depends on "
                               f"{name!r}, which is not a task of this DAG")
        return operands & self.names

    def _targets(self) -> None:
        for name in str(self.dag.get("target") or "").split():
            if name not in self.names:
                self.owner.problem(f"{self.path}.target", "target", f"target {name!r} is not a task of this DAG")

    def _cycles(self, edges: dict[str, set[str]]) -> None:
        state: dict[str, int] = {}

        def visit(node: str, trail: list[str]) -> list[str] | None:
            state[node] = 1
            for dep in sorted(edges.get(node, ())):
                if state.get(dep) == 1:
                    return [*trail, node, dep]
                if dep not in state and (cycle := visit(dep, [*trail, node])):
                    return cycle
            state[node] = 2
            return None

        for node in edges:
            if node not in state and (cycle := visit(node, [])):
                self.owner.problem(self.path, "cycle", "dependency cycle " + " -> ".join(cycle))
                return


def parse_depends(expression: str) -> list[tuple[str, str | None]]:
    """The ``(task, result)`` operands of a ``depends`` expression, checking its grammar:
    operands ``task`` or ``task.Result``, ``&&``, ``||``, ``!`` and parentheses."""
    operands: list[tuple[str, str | None]] = []
    tokens = list(_tokens(expression))
    pos = 0

    def expect_operand() -> None:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError(f"depends {expression!r} ends where a task was expected")
        kind, value = tokens[pos]
        pos += 1
        if kind == "op" and value == "!":
            expect_operand()
        elif kind == "op" and value == "(":
            expect_expression()
            if pos >= len(tokens) or tokens[pos] != ("op", ")"):
                raise ValueError(f"depends {expression!r} has an unclosed '('")
            pos += 1
        elif kind == "name":
            operands.append(value)  # type: ignore[arg-type]
        else:
            raise ValueError(f"depends {expression!r}: expected a task before {value!r}")

    def expect_expression() -> None:
        nonlocal pos
        expect_operand()
        while pos < len(tokens) and tokens[pos] in (("op", "&&"), ("op", "||")):
            pos += 1
            expect_operand()

    expect_expression()
    if pos != len(tokens):
        raise ValueError(f"depends {expression!r}: unexpected {tokens[pos][1]!r}")
    return operands


def _tokens(expression: str) -> Iterator[tuple[str, Any]]:
    pos = 0
    while pos < len(expression):
        if not expression[pos:].strip():
            return
        match = _TOKEN.match(expression, pos)
        if not match:
            raise ValueError(f"depends {expression!r}: cannot read {expression[pos:].strip()!r}")
        op, name, result = match.groups()
        if op:
            yield "op", op
        else:
            if result is not None and result not in RESULTS:
                raise ValueError(f"depends {expression!r}: {name}.{result} is not a result: use one of "
                                 + ", ".join(RESULTS))
            yield "name", (name, result)
        pos = match.end()


# -- entry points ---------------------------------------------------------------------------------------
def builtin_library() -> Library:
    """The ``mlchaos-steps`` WorkflowTemplate this package ships, always resolvable."""
    from mlchaos_steps.argo.library import _parsed_library

    library = Library()
    for document in _parsed_library():  # read only: Library keeps references to its templates
        library.add(document)
    return library


def validate_document(document: Any, *, source: str = "<document>", library: Library | None = None) -> list[Problem]:
    """Every problem of one document (an empty list: Argo would accept it)."""
    if not isinstance(document, Mapping):
        return [Problem(source, "", "kind", "expected a mapping with apiVersion, kind, metadata and spec")]
    if document.get("kind") not in KINDS:
        return [Problem(source, "kind", "kind", f"{document.get('kind')!r} is not an Argo workflow kind: "
                        f"use one of {', '.join(KINDS)}")]
    problems = _schema_problems(document, source)
    problems += _Checker(document, source, library or builtin_library()).run()
    return problems


def load_documents(path: Path) -> list[Any]:
    """The YAML documents of one file (the fast C loader when PyYAML has it)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [d for d in yaml.load_all(path.read_text(), Loader=loader) if d is not None]


def validate_files(paths: Iterable[str | Path], templates: Iterable[str | Path] = ()) -> list[Problem]:
    """Validate every Argo document of ``paths``; ``templateRef`` resolves against the WorkflowTemplates and
    ClusterWorkflowTemplates of ``templates``, of ``paths`` themselves, and the built-in library."""
    paths, templates = [str(p) for p in paths], [str(t) for t in templates]
    library = builtin_library()
    loaded: list[tuple[str, Any]] = []
    for path in dict.fromkeys([*templates, *paths]):  # a file given twice is read once
        for i, document in enumerate(load_documents(Path(path))):
            if isinstance(document, Mapping):
                library.add(document)
            loaded.append((f"{path}" + (f"#{i}" if i else ""), document))
    wanted = set(paths)
    return [problem for source, document in loaded if source.split("#")[0] in wanted
            for problem in validate_document(document, source=source, library=library)]
