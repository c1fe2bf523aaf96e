"""A stand-in for Argo's workflow controller (named as one in the README): it runs the containers of a
rendered workflow as fresh local processes, in an order Argo would, with Argo's variables substituted.

What it does as Argo does: ``depends`` expressions decide whether a task runs (else Omitted); a DAG's
phase comes from its ``target`` tasks (default: its leaves), an Omitted task taking the phase of what
omitted it; node names are ``<parent>.<task>`` and ``<parent>[<group>].<step>``; ``{{node.name}}``
inside a template is its own node; task exit hooks run after the task, with arguments substituted in
the caller; ``templateRef`` resolves against the WorkflowTemplates given; raw input artifacts are
written to their paths and output parameters read from theirs. Each pod gets a root folder of its own:
container paths (``/tmp/...``, ``/mlchaos/...``) are mapped under it.

What it does not: run tasks in parallel (a topological order is one Argo may take), pods, images. Any
``{{...}}`` it cannot substitute fails the run: a template that would not resolve in a cluster fails
here too.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlchaos_steps.argo.validate import parse_depends

_VARIABLE = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
FAILED = ("Failed", "Error")


class Unresolved(AssertionError):
    pass


@dataclass
class Node:
    name: str
    template: str
    phase: str = "Pending"
    outputs: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    exit_code: int | None = None
    log: str = ""
    attempts: int = 0


@dataclass
class LocalArgo:
    workflow: Mapping[str, Any]
    library: list[Mapping[str, Any]]
    root: Path
    env: dict[str, str]
    config: dict[str, str]  # the mlchaos-steps ConfigMap
    parameters: dict[str, str] = field(default_factory=dict)  # `argo submit -p name=value`
    error_after: set[str] = field(default_factory=set)  # templates whose first pod ends in Error after its work
    nodes: dict[str, Node] = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = self.workflow["spec"]
        self.spec = spec["workflowSpec"] if self.workflow["kind"] == "CronWorkflow" else spec
        self.uid = str(uuid.uuid4())
        meta = self.workflow.get("metadata") or {}
        self.name = meta.get("name") or f"{meta.get('generateName', 'wf-')}{self.uid[:5]}"
        given = {p["name"]: str(p.get("value", "")) for p in (self.spec.get("arguments") or {}).get("parameters", [])}
        self.globals = {"workflow.uid": self.uid, "workflow.name": self.name,
                        **{f"workflow.parameters.{k}": v for k, v in {**given, **self.parameters}.items()}}

    # -- templates ----------------------------------------------------------------------------------------
    def _template(self, caller: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[Mapping[str, Any]]]:
        """The template a task or step names, and the template list it resolves its own calls in."""
        if caller.get("templateRef"):
            ref = caller["templateRef"]
            for document in self.library:
                if document["metadata"]["name"] == ref["name"]:
                    templates = document["spec"]["templates"]
                    return next(t for t in templates if t["name"] == ref["template"]), templates
            raise AssertionError(f"templateRef {ref} does not resolve")
        templates = self.spec["templates"]
        return next(t for t in templates if t["name"] == caller["template"]), templates

    def run(self) -> Node:
        entry = next(t for t in self.spec["templates"] if t["name"] == self.spec["entrypoint"])
        given = {p["name"]: str(p.get("value", "")) for p in (self.spec.get("arguments") or {}).get("parameters", [])}
        return self.execute(self.name, entry, self.spec["templates"], {**given, **self.parameters})

    def execute(self, node_name: str, template: Mapping[str, Any], scope_templates: list[Mapping[str, Any]],
                arguments: Mapping[str, str]) -> Node:
        node = self.nodes.setdefault(node_name, Node(node_name, template["name"]))
        inputs = {}
        for parameter in (template.get("inputs") or {}).get("parameters", []):
            if parameter["name"] in arguments:
                inputs[parameter["name"]] = arguments[parameter["name"]]
            elif "default" in parameter:
                inputs[parameter["name"]] = str(parameter["default"])
            else:
                raise Unresolved(f"{node_name}: input {parameter['name']!r} of {template['name']!r} has no value")
        local = {**self.globals, "node.name": node_name, **{f"inputs.parameters.{k}": v for k, v in inputs.items()}}
        if template.get("container"):
            self._container(node, template, local)
        elif template.get("dag"):
            self._dag(node, template, scope_templates, local)
        elif template.get("steps"):
            self._steps(node, template, scope_templates, local)
        else:
            raise AssertionError(f"the stand-in does not run template {template['name']!r}")
        return node

    # -- substitution -------------------------------------------------------------------------------------
    @staticmethod
    def substitute(value: Any, scope: Mapping[str, str], where: str) -> Any:
        if isinstance(value, str):
            def one(match: re.Match[str]) -> str:
                if match.group(1) not in scope:
                    raise Unresolved(f"{where}: cannot substitute {{{{{match.group(1)}}}}}")
                return scope[match.group(1)]
            return _VARIABLE.sub(one, value)
        if isinstance(value, list):
            return [LocalArgo.substitute(v, scope, where) for v in value]
        if isinstance(value, Mapping):
            return {k: LocalArgo.substitute(v, scope, where) for k, v in value.items()}
        return value

    def _arguments(self, caller: Mapping[str, Any], scope: Mapping[str, str], where: str) -> dict[str, str]:
        return {p["name"]: self.substitute(str(p.get("value", "")), scope, where)
                for p in (caller.get("arguments") or {}).get("parameters", [])}

    # -- container ----------------------------------------------------------------------------------------
    def _container(self, node: Node, template: Mapping[str, Any], scope: Mapping[str, str]) -> None:
        pod = self.root / "pods" / re.sub(r"[^\w.-]", "_", node.name) / str(node.attempts)
        inputs = template.get("inputs") or {}
        mapped: dict[str, Path] = {}

        def local(path: str) -> Path:
            target = pod / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            mapped[path] = target
            return target

        for artifact in inputs.get("artifacts", []):
            local(artifact["path"]).write_text(self.substitute(artifact["raw"]["data"], scope, node.name))
        outputs = {p["name"]: p for p in (template.get("outputs") or {}).get("parameters", [])}
        for parameter in outputs.values():
            local(parameter["valueFrom"]["path"])
        container = self.substitute(dict(template["container"]), scope, node.name)
        argv = [str(mapped.get(a, a)) for a in [*container.get("command", []), *container.get("args", [])]]
        env = {**self.env, "HOME": str(local("/home/mlchaos")), "TMPDIR": str(local("/tmp"))}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self.config)
        env.update({e["name"]: str(e["value"]) for e in container.get("env", [])})
        env["MLCHAOS_HOME"] = str(local(env.get("MLCHAOS_HOME", "/tmp/mlchaos")))
        node.attempts += 1
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
        node.argv, node.exit_code, node.log = argv, done.returncode, node.log + done.stdout + done.stderr
        node.phase = "Succeeded" if done.returncode == 0 else "Failed"
        node.outputs = {name: mapped[p["valueFrom"]["path"]].read_text()
                        if mapped[p["valueFrom"]["path"]].is_file() else str(p["valueFrom"].get("default", ""))
                        for name, p in outputs.items()}
        if template["name"] in self.error_after:  # the pod was evicted after its work: Argo calls it Error
            self.error_after.discard(template["name"])
            node.phase = "Error"
            retry = template.get("retryStrategy") or {}
            if retry.get("retryPolicy") in ("OnError", "Always", "OnTransientError") and int(retry.get("limit", 0)):
                self._container(node, template, scope)

    # -- dag ----------------------------------------------------------------------------------------------
    def _dag(self, node: Node, template: Mapping[str, Any], templates: list[Mapping[str, Any]],
             scope: dict[str, str]) -> None:
        tasks = {t["name"]: t for t in template["dag"]["tasks"]}
        phases: dict[str, str] = {}
        omitted_by: dict[str, list[str]] = {}
        for name in _topological(tasks):
            task = tasks[name]
            operands = parse_depends(task["depends"]) if task.get("depends") else [(d, None) for d in
                                                                                  task.get("dependencies", [])]
            if not _holds(task.get("depends") or " && ".join(task.get("dependencies", [])) or "", phases):
                phases[name] = "Omitted"
                omitted_by[name] = [n for n, _ in operands]
                continue
            child_scope = {**scope, **self._task_outputs(node.name, phases)}
            child = self._call(f"{node.name}.{name}", task, templates, child_scope)
            phases[name] = "Failed" if child.phase in FAILED else child.phase
        targets = (template["dag"].get("target") or "").split() or _leaves(tasks)
        node.phase = "Failed" if any(_failed(t, phases, omitted_by) for t in targets) else "Succeeded"
        out_scope = {**scope, **self._task_outputs(node.name, phases)}
        for parameter in (template.get("outputs") or {}).get("parameters", []):
            try:
                node.outputs[parameter["name"]] = self.substitute(parameter["valueFrom"]["parameter"], out_scope,
                                                                  node.name)
            except Unresolved:
                if node.phase == "Succeeded":
                    raise

    def _task_outputs(self, dag_node: str, tasks: Mapping[str, str]) -> dict[str, str]:
        """``tasks.<name>.outputs.parameters.<p>`` of the tasks that ran (an Omitted task has no node)."""
        return {f"tasks.{t}.outputs.parameters.{k}": v for t in tasks if f"{dag_node}.{t}" in self.nodes
                for k, v in self.nodes[f"{dag_node}.{t}"].outputs.items()}

    def _call(self, child_name: str, caller: Mapping[str, Any], templates: list[Mapping[str, Any]],
              scope: Mapping[str, str]) -> Node:
        arguments = self._arguments(caller, scope, child_name)
        target, target_templates = self._template(caller) if caller.get("templateRef") else (
            next(t for t in templates if t["name"] == caller["template"]), templates)
        child = self.execute(child_name, target, target_templates, arguments)
        hook = (caller.get("hooks") or {}).get("exit")
        if hook:
            hook_template, hook_templates = self._template(hook) if hook.get("templateRef") else (
                next(t for t in templates if t["name"] == hook["template"]), templates)
            self.execute(f"{child_name}.onExit", hook_template, hook_templates,
                         self._arguments(hook, scope, f"{child_name}.onExit"))
        return child

    def _steps(self, node: Node, template: Mapping[str, Any], templates: list[Mapping[str, Any]],
               scope: dict[str, str]) -> None:
        node.phase = "Succeeded"
        for index, group in enumerate(template["steps"]):
            for step in group:
                child = self._call(f"{node.name}[{index}].{step['name']}", step, templates, scope)
                if child.phase in FAILED:
                    node.phase = "Failed"
            if node.phase == "Failed":
                return


def _topological(tasks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        task = tasks[name]
        deps = [n for n, _ in parse_depends(task["depends"])] if task.get("depends") else task.get("dependencies", [])
        for dep in deps:
            visit(dep)
        order.append(name)

    for name in tasks:
        visit(name)
    return order


def _leaves(tasks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    used = set()
    for task in tasks.values():
        used |= {n for n, _ in parse_depends(task["depends"])} if task.get("depends") else set(
            task.get("dependencies", []))
    return [n for n in tasks if n not in used]


def _holds(expression: str, phases: Mapping[str, str]) -> bool:
    """Evaluate a depends expression: ``A`` is A Succeeded, Skipped or Daemoned; ``A.Result`` as written."""
    if not expression.strip():
        return True

    def operand(match: re.Match[str]) -> str:
        name, result = match.group(1), match.group(2)
        phase = phases.get(name, "Pending")
        if result is None:
            value = phase in ("Succeeded", "Skipped", "Daemoned")
        elif result == "AnySucceeded":
            value = phase == "Succeeded"
        elif result == "AllFailed":
            value = phase == "Failed"
        else:
            value = phase == result
        return f" {value} "

    python = re.sub(r"([A-Za-z0-9][-A-Za-z0-9]*)(?:\.([A-Za-z]+))?", operand, expression)
    python = python.replace("&&", " and ").replace("||", " or ").replace("!", " not ")
    return bool(eval(python, {"__builtins__": {}}, {}))  # noqa: S307 (True/False/and/or/not only)


def _failed(name: str, phases: Mapping[str, str], omitted_by: Mapping[str, list[str]]) -> bool:
    phase = phases.get(name)
    if phase in FAILED:
        return True
    if phase == "Omitted":
        return any(_failed(n, phases, omitted_by) for n in omitted_by.get(name, []))
    return False


def local_env() -> dict[str, str]:
    """The environment a pod starts from here: this interpreter's bin first on PATH (the image's
    ``python`` and ``mlchaos``), nothing of the test process's mlchaos settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLCHAOS_", "MLFLOW_"))}
    import sys

    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env
