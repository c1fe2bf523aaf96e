"""The Argo side as data: the rendered templates and workflows (golden files), the offline validator and
its agreement with Argo's own `argo lint --offline`, inserting stages into existing YAML, and refusals."""

from __future__ import annotations

import difflib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import cli

from mlchaos_steps.argo import validate_files
from mlchaos_steps.argo.insert import inject_yaml, rewrite_depends
from mlchaos_steps.argo.library import LIBRARY, library_documents
from mlchaos_steps.argo.validate import parse_depends, validate_document
from mlchaos_steps.errors import SpecError

ROOT = Path(__file__).parent.parent
EXAMPLES = Path(__file__).parent / "argo_examples"  # upstream's examples, copied (see its README)
assert len(list(EXAMPLES.glob("*.yaml"))) == 5, f"{EXAMPLES} must hold the five Argo examples"
LIBRARY_FILE = ROOT / "mlchaos_steps" / "argo" / "mlchaos-steps.yaml"
STAGE = {"kind": "CheckpointWipe", "spec": {
    "store": "file:///data/checkpoints",
    "resume": {"command": ["python", "-m", "mlchaos_steps.examples.trainer", "--resume"], "max_lost_steps": 200}}}


@pytest.fixture
def stage_file(tmp_path: Path) -> Path:
    path = tmp_path / "stage.yaml"
    path.write_text(yaml.safe_dump(STAGE))
    return path


def _argo() -> str:
    binary = os.environ.get("ARGO_BIN") or str(ROOT / "build" / "bin" / "argo")
    assert Path(binary).is_file(), f"{binary} is missing: `make build/bin/argo` builds Argo's CLI from its module"
    return binary


def argo_lint(*paths: Path) -> subprocess.CompletedProcess[str]:
    """Argo's own offline lint, given the library too (ours always knows it)."""
    files = [str(p) for p in paths if Path(p) != LIBRARY_FILE] + [str(LIBRARY_FILE)]
    return subprocess.run([_argo(), "lint", "--offline", "--output", "simple", *files],
                          capture_output=True, text=True, timeout=120, check=False)


def accepted_by_both(document: Any, where: Path) -> None:
    """Our validator and Argo's `argo lint --offline` both accept ``document`` (data or YAML text)."""
    data = yaml.safe_load(document) if isinstance(document, str) else document
    assert validate_document(data) == []
    where.parent.mkdir(parents=True, exist_ok=True)
    if data["kind"] == "ClusterWorkflowTemplate":
        # argo v4.0.5's offline lint of a ClusterWorkflowTemplate dereferences a nil client and panics; its
        # spec is a WorkflowTemplate's, so Argo lints the same spec under that kind
        data, document = {**data, "kind": "WorkflowTemplate"}, None
    where.write_text(document if isinstance(document, str) else yaml.safe_dump(data))
    done = argo_lint(where)
    assert done.returncode == 0, done.stdout + done.stderr


# -- golden files ---------------------------------------------------------------------------------------
def test_committed_templates_and_workflows_are_what_their_hera_sources_render() -> None:
    from mlchaos_steps.hera.render import rendered

    files = rendered()
    assert {p.name for p in files} >= {"mlchaos-steps.yaml", "retraining.yaml", "deployment.yaml", "nightly.yaml"}
    for path, text in files.items():
        assert path.read_text() == text, f"{path} is stale: run `make workflows`"


def test_library_holds_the_stage_dag_wired_to_restore_always_and_still_fail() -> None:
    template, janitor = library_documents()
    assert template["kind"] == "WorkflowTemplate" and template["metadata"]["name"] == LIBRARY
    assert janitor["kind"] == "CronWorkflow"
    by_name = {t["name"]: t for t in template["spec"]["templates"]}
    stage = by_name["chaos-stage"]
    tasks = {t["name"]: t for t in stage["dag"]["tasks"]}
    assert stage["dag"]["target"] == "verify restore" and stage["dag"]["failFast"] is False
    assert tasks["restore"]["depends"] == ("snapshot.Succeeded && (verify.Succeeded || verify.Failed || "
                                           "verify.Errored || verify.Omitted)")
    assert stage["synchronization"]["mutexes"] == [{"name": "{{inputs.parameters.lock}}"}]
    keys = {t["arguments"]["parameters"][-1]["value"] for t in tasks.values()}
    assert keys == {"{{workflow.uid}}/{{node.name}}"}
    retries = {p: by_name[f"mlchaos-{p}"].get("retryStrategy") for p in ("snapshot", "inject", "verify", "restore")}
    assert retries["snapshot"]["retryPolicy"] == retries["inject"]["retryPolicy"] == "OnError"
    assert retries["verify"] is None and retries["restore"]["retryPolicy"] == "Always"
    for phase in ("snapshot", "inject", "verify", "restore"):
        container = by_name[f"mlchaos-{phase}"]["container"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["MLCHAOS_LEDGER"] == "mlflow"
        assert "MLFLOW_TRACKING_URI" not in env  # from the ConfigMap, never a parameter
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert by_name[f"mlchaos-{phase}"]["inputs"]["artifacts"][0]["raw"]["data"] == "{{inputs.parameters.stage}}"


# -- validation -----------------------------------------------------------------------------------------
def test_everything_rendered_validates_here_and_with_argo_lint() -> None:
    files = [LIBRARY_FILE, *sorted((ROOT / "workflows").glob("*.yaml"))]
    assert validate_files(files) == []
    done = argo_lint(*files)
    assert done.returncode == 0, done.stdout + done.stderr


# Argo's lint does not parse `depends` (its controller does, when the workflow runs, and errors then):
# ours refuses a malformed expression before it reaches the cluster.
STRICTER_THAN_ARGO_LINT = {"depends-syntax"}
BROKEN = {  # one broken rule each; both validators refuse every one (but those above)
    "schema": ("dag.tasks[1]", lambda d: d["spec"]["templates"][0]["dag"]["tasks"][1].update(
        dependss=d["spec"]["templates"][0]["dag"]["tasks"][1].pop("depends"))),
    "dependency": ("depends", lambda d: d["spec"]["templates"][0]["dag"]["tasks"][3].update(depends="B && E")),
    "depends-syntax": ("depends", lambda d: d["spec"]["templates"][0]["dag"]["tasks"][3].update(depends="B &&")),
    "depends-mix": ("dag", lambda d: d["spec"]["templates"][0]["dag"]["tasks"][3].update(
        dependencies=["C"], depends=None) or d["spec"]["templates"][0]["dag"]["tasks"][3].pop("depends")),
    "continue-on": ("continueOn", lambda d: d["spec"]["templates"][0]["dag"]["tasks"][3].update(
        continueOn={"failed": True})),
    "cycle": ("dag", lambda d: d["spec"]["templates"][0]["dag"]["tasks"][0].update(depends="D")),
    "name": ("name", lambda d: d["spec"]["templates"][0]["dag"]["tasks"][3].update(name="train_model")),
    "template": ("template", lambda d: d["spec"]["templates"][0]["dag"]["tasks"][3].update(template="nope")),
    "template-ref": ("templateRef", lambda d: d["spec"]["templates"][0]["dag"]["tasks"][3].update(
        templateRef={"name": LIBRARY, "template": "no-such-template"}) or d["spec"]["templates"][0]["dag"][
        "tasks"][3].pop("template")),
    "entrypoint": ("entrypoint", lambda d: d["spec"].update(entrypoint="missing")),
    "input": ("", lambda d: d["spec"]["templates"][1]["inputs"]["parameters"][0].update(name="other")),
    "target": ("target", lambda d: d["spec"]["templates"][0]["dag"].update(target="D Z")),
}


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_each_broken_rule_is_refused_here_and_by_argo_lint(rule: str, tmp_path: Path) -> None:
    document = yaml.safe_load((EXAMPLES / "dag-diamond.yaml").read_text())
    BROKEN[rule][1](document)
    problems = validate_document(document, source="broken")
    assert rule in {p.rule for p in problems}, problems
    assert any(BROKEN[rule][0] in p.path for p in problems if p.rule == rule), problems
    path = tmp_path / f"{rule}.yaml"
    path.write_text(yaml.safe_dump(document))
    assert (argo_lint(path).returncode != 0) == (rule not in STRICTER_THAN_ARGO_LINT), rule


def test_int_or_string_takes_both_and_unknown_fields_name_their_path() -> None:
    document = yaml.safe_load((EXAMPLES / "retry-with-steps.yaml").read_text())
    assert validate_document(document) == []  # limit: "10"
    document["spec"]["templates"][1]["retryStrategy"]["limit"] = 10
    assert validate_document(document) == []
    document["spec"]["templates"][1]["container"]["imagePullPolicyy"] = "Always"
    (problem,) = validate_document(document, source="x.yaml")
    assert problem.path == "spec.templates[1].container" and "imagePullPolicyy" in problem.message
    assert str(problem).startswith("x.yaml: spec.templates[1].container: ")


def test_depends_grammar() -> None:
    assert parse_depends("(A.Succeeded || B.Failed) && !C") == [("A", "Succeeded"), ("B", "Failed"), ("C", None)]
    for bad in ("A &&", "A.Sucess", "(A || B", "A B"):
        with pytest.raises(ValueError):
            parse_depends(bad)
    assert rewrite_depends("(train.Succeeded || train.Failed) && other", "train", "chaos") == \
        "(chaos.Succeeded || train.Failed) && other"
    assert rewrite_depends("train-eval && train", "train", "chaos") == "train-eval && chaos"


# -- inserting into existing YAML ----------------------------------------------------------------------
def _insertion_points(document: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(allowed, refused) ``after`` names of an example: tasks, steps alone in their group, and a
    container/script entrypoint are allowed; steps in a parallel group are refused."""
    spec = document["spec"].get("workflowSpec", document["spec"])
    allowed, refused = [], []
    for template in spec["templates"]:
        for task in (template.get("dag") or {}).get("tasks", []):
            allowed.append(task["name"])
        for group in template.get("steps") or []:
            (allowed if len(group) == 1 else refused).extend(s["name"] for s in group)
        if template["name"] == spec["entrypoint"] and ("container" in template or "script" in template):
            allowed.append(template["name"])
    return allowed, refused


def _changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    diff = list(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0))
    removed = [line[1:] for line in diff if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff if line.startswith("+") and not line.startswith("+++")]
    return removed, added


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_insert_after_every_allowed_point_of_each_example(example: str, stage_file: Path, tmp_path: Path) -> None:
    text = (EXAMPLES / example).read_text()
    allowed, refused = _insertion_points(yaml.safe_load(text))
    assert allowed
    produced = []
    for after in allowed:
        out = inject_yaml(text, after=after, stage=stage_file)
        assert validate_document(yaml.safe_load(out)) == []
        removed, added = _changed_lines(text, out)
        # the diff is the inserted task and the rewired edges: every removed line comes back rewired
        assert all(line.strip().startswith(("depends:", "entrypoint:", "- ")) for line in removed), removed
        assert any("chaos-stage" in line for line in added)
        kept = [line for line in text.splitlines() if line.strip().startswith("#")]
        assert all(line in out.splitlines() for line in kept)  # comments stay
        produced.append(tmp_path / f"{after}.yaml")
        produced[-1].write_text(out)
    for after in refused:
        with pytest.raises(SpecError, match="in parallel"):
            inject_yaml(text, after=after, stage=stage_file)
    done = argo_lint(*produced)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rewiring_keeps_failure_branches_and_dependencies_style(stage_file: Path, tmp_path: Path) -> None:
    document = yaml.safe_load((EXAMPLES / "dag-diamond.yaml").read_text())
    tasks = document["spec"]["templates"][0]["dag"]["tasks"]
    tasks[2]["depends"] = "A.Succeeded"
    tasks.append({"name": "alert", "depends": "A.Failed || A.Errored", "template": "echo",
                  "arguments": {"parameters": [{"name": "message", "value": "A failed"}]}})
    out = yaml.safe_load(inject_yaml(yaml.safe_dump(document), after="A", stage=stage_file, name="wipe"))
    depends = {t["name"]: t.get("depends") for t in out["spec"]["templates"][0]["dag"]["tasks"]}
    assert depends == {"A": None, "wipe": "A", "B": "wipe", "C": "wipe.Succeeded", "D": "B && C",
                       "alert": "A.Failed || A.Errored"}
    accepted_by_both(out, tmp_path / "depends.yaml")
    tasks.pop()
    for task in tasks:  # the same DAG written with dependencies
        if task.get("depends"):
            task["dependencies"] = [name for name, _ in parse_depends(task.pop("depends"))]
    out = yaml.safe_load(inject_yaml(yaml.safe_dump(document), after="A", before="C", stage=stage_file))
    dependencies = {t["name"]: t.get("dependencies") for t in out["spec"]["templates"][0]["dag"]["tasks"]}
    assert dependencies == {"A": None, "chaos-checkpoint-wipe": ["A"], "B": ["A"], "C": ["chaos-checkpoint-wipe"],
                            "D": ["B", "C"]}
    accepted_by_both(out, tmp_path / "dependencies.yaml")


def test_wrapped_entrypoint_passes_its_inputs_through(stage_file: Path, tmp_path: Path) -> None:
    document = {"apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate", "metadata": {"name": "train"},
                "spec": {"entrypoint": "train", "arguments": {"parameters": [{"name": "epochs", "value": "3"}]},
                         "templates": [{"name": "train", "inputs": {"parameters": [
                             {"name": "epochs"}, {"name": "lr", "default": "0.1"}]},
                             "script": {"image": "python:3.11", "command": ["python"],
                                        "source": "print({{inputs.parameters.epochs}}, {{inputs.parameters.lr}})"}}]}}
    out = yaml.safe_load(inject_yaml(yaml.safe_dump(document), after="train", stage=stage_file))
    wrapper = out["spec"]["templates"][0]
    assert out["spec"]["entrypoint"] == wrapper["name"] == "train-with-chaos"
    assert wrapper["inputs"]["parameters"] == [{"name": "epochs"}, {"name": "lr", "default": "0.1"}]
    run, chaos = wrapper["dag"]["tasks"]
    assert run["arguments"]["parameters"] == [{"name": "epochs", "value": "{{inputs.parameters.epochs}}"},
                                              {"name": "lr", "value": "{{inputs.parameters.lr}}"}]
    assert chaos["depends"] == "train"
    accepted_by_both(out, tmp_path / "wrapped.yaml")


@pytest.mark.parametrize("kind", ["Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate", "CronWorkflow"])
def test_every_kind_takes_a_stage(kind: str, stage_file: Path, tmp_path: Path) -> None:
    document = yaml.safe_load((EXAMPLES / "dag-diamond.yaml").read_text())
    document["kind"], document["metadata"] = kind, {"name": "diamond"}
    if kind == "CronWorkflow":
        document["spec"] = {"schedules": ["0 * * * *"], "workflowSpec": document["spec"]}
    out = yaml.safe_load(inject_yaml(yaml.safe_dump(document), after="B", stage=stage_file))
    accepted_by_both(out, tmp_path / f"{kind}.yaml")
    spec = out["spec"].get("workflowSpec", out["spec"])
    assert "chaos-checkpoint-wipe" in [t["name"] for t in spec["templates"][0]["dag"]["tasks"]]


@pytest.mark.parametrize("name", ["data_corruption", "feature_drift"])
def test_the_data_stages_are_injected_like_the_others(name: str, tmp_path: Path) -> None:
    """`mlchaos argo inject` places the data stages' files (those of workflows/stages) like any stage."""
    diamond = yaml.safe_load((EXAMPLES / "dag-diamond.yaml").read_text())
    diamond["spec"]["arguments"] = {"parameters": [{"name": "workdir", "value": "/mnt/examples"},
                                                   {"name": "broken", "value": "false"}]}
    source = tmp_path / "diamond.yaml"
    source.write_text(yaml.safe_dump(diamond))
    out = tmp_path / "out.yaml"
    stage = ROOT / "workflows" / "stages" / f"{name}.yaml"
    done = cli("argo", "inject", str(source), "--after", "B", "--stage", str(stage), "-o", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    document = yaml.safe_load(out.read_text())
    accepted_by_both(document, tmp_path / "checked.yaml")
    tasks = [t["name"] for t in document["spec"]["templates"][0]["dag"]["tasks"]]
    assert f"chaos-{name.replace('_', '-')}" in tasks, tasks


# -- refusals: exit 2, the file and what to do, the input untouched, nothing written --------------------
def _refusal(tmp_path: Path, document: dict[str, Any], stage_file: Path, *flags: str) -> str:
    source = tmp_path / "in.yaml"
    source.write_text(yaml.safe_dump(document))
    before = source.read_bytes()
    out = tmp_path / "out.yaml"
    done = cli("argo", "inject", str(source), "--stage", str(stage_file), "-o", str(out), *flags)
    assert done.returncode == 2, done.stdout + done.stderr
    assert source.read_bytes() == before and not out.exists()
    assert str(source) in done.stderr
    return done.stderr


def test_refusals(tmp_path: Path, stage_file: Path) -> None:
    diamond = yaml.safe_load((EXAMPLES / "dag-diamond.yaml").read_text())
    steps = yaml.safe_load((EXAMPLES / "steps.yaml").read_text())
    refused = _refusal(tmp_path, steps, stage_file, "--after", "hello2a")
    assert "in parallel with ['hello2b'] at spec.templates[0].steps[1]" in refused
    ref_only = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"generateName": "x-"},
                "spec": {"workflowTemplateRef": {"name": "training"}}}
    refused = _refusal(tmp_path, ref_only, stage_file, "--after", "train")
    assert "spec.workflowTemplateRef: this workflow is only a reference" in refused
    assert "does not wait for 'B'" in _refusal(tmp_path, diamond, stage_file, "--after", "B", "--before", "C")
    assert "already exists" in _refusal(tmp_path, diamond, stage_file, "--after", "A", "--name", "B")
    twice = yaml.safe_load((EXAMPLES / "dag-diamond.yaml").read_text())
    twice["spec"]["templates"].append({**twice["spec"]["templates"][0], "name": "diamond-again"})
    assert "--template" in _refusal(tmp_path, twice, stage_file, "--after", "A")
    assert "no task or step" in _refusal(tmp_path, diamond, stage_file, "--after", "Z")
    bad_stage = tmp_path / "bad-stage.yaml"
    bad_stage.write_text(yaml.safe_dump({"kind": "CheckpointWipe", "spec": {"store": "file:///data"}}))
    assert "--stage" in _refusal(tmp_path, diamond, bad_stage, "--after", "A")
    # with --template the same insertion goes through, validated, and writes the file
    source = tmp_path / "twice.yaml"
    source.write_text(yaml.safe_dump(twice))
    done = cli("argo", "inject", str(source), "--after", "A", "--template", "diamond-again", "--stage",
               str(stage_file), "-o", str(tmp_path / "twice-out.yaml"))
    assert done.returncode == 0, done.stderr
    assert cli("argo", "validate", str(tmp_path / "twice-out.yaml")).returncode == 0
    accepted_by_both((tmp_path / "twice-out.yaml").read_text(), tmp_path / "lint" / "twice-out.yaml")


def test_validate_cli_reports_every_problem_with_its_path(tmp_path: Path) -> None:
    document = yaml.safe_load((EXAMPLES / "dag-diamond.yaml").read_text())
    document["spec"]["templates"][0]["dag"]["tasks"][3]["depends"] = "B && E"
    document["spec"]["templates"][0]["dag"]["tasks"][1]["name"] = "b_task"
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(document))
    done = cli("argo", "validate", str(path))
    assert done.returncode == 2
    assert f"{path}: spec.templates[0].dag.tasks[3].depends:" in done.stderr and "[dependency]" in done.stderr
    assert "[name]" in done.stderr
    assert cli("argo", "validate", str(tmp_path / "missing.yaml")).returncode == 2
    library = tmp_path / "lib.yaml"
    library.write_text(yaml.safe_dump({"apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate",
                                       "metadata": {"name": "shared"}, "spec": {"templates": [
                                           {"name": "echo", "container": {"image": "busybox"}}]}}))
    user = tmp_path / "user.yaml"
    user.write_text(yaml.safe_dump({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                                    "metadata": {"generateName": "u-"}, "spec": {"entrypoint": "main", "templates": [
                                        {"name": "main", "steps": [[{"name": "a", "templateRef": {
                                            "name": "shared", "template": "echo"}}]]}]}}))
    assert cli("argo", "validate", str(user)).returncode == 2
    assert cli("argo", "validate", str(user), "--templates", str(library)).returncode == 0


# -- Hera -----------------------------------------------------------------------------------------------
def test_hera_add_chaos_and_render_time_refusal(stage_file: Path, tmp_path: Path) -> None:
    from hera.workflows import DAG, Container, Workflow

    from mlchaos_steps.hera import add_chaos, chaos_stage

    with Workflow(generate_name="train-", entrypoint="main") as workflow:
        echo = Container(name="echo", image="busybox", command=["echo", "hi"])
        with DAG(name="main"):
            echo(name="train") >> echo(name="evaluate")
    add_chaos(workflow, after="train", stage=stage_file)
    document = workflow.to_dict()
    tasks = {t["name"]: t for t in document["spec"]["templates"][1]["dag"]["tasks"]}
    assert tasks["evaluate"]["depends"] == "chaos-checkpoint-wipe"
    assert tasks["chaos-checkpoint-wipe"]["depends"] == "train"
    accepted_by_both(document, tmp_path / "hera.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: CheckpointWipe\nspec: {store: 'file:///x', resume: {command: [x]}}\n")
    with pytest.raises(SpecError, match="max_lost_steps"):
        with Workflow(generate_name="bad-", entrypoint="main"):
            with DAG(name="main"):
                chaos_stage("wipe", bad)
    with pytest.raises(SpecError, match="no value"):
        with Workflow(generate_name="bad-", entrypoint="main"):
            with DAG(name="main"):
                chaos_stage("wipe", {"kind": "CheckpointWipe", "spec": {
                    **STAGE["spec"], "store": "file://{{workflow.parameters.workdir}}/ckpt"}})


def test_hera_inline_templates_make_a_self_contained_workflow(stage_file: Path, tmp_path: Path) -> None:
    from hera.workflows import DAG, Workflow

    from mlchaos_steps.hera import chaos_stage, gate

    with Workflow(generate_name="inline-", entrypoint="main") as workflow:
        image = "registry.example/mlchaos-steps:dev"
        with DAG(name="main"):
            chaos_stage("wipe", stage_file, inline=image) >> gate(
                "gate", model="m", version="1", require=["checkpoint-wipe"], inline=image)
    document = workflow.to_dict()
    names = [t["name"] for t in document["spec"]["templates"]]
    assert {"chaos-stage", "mlchaos-verify", "gate", "restore-run"} <= set(names)
    assert len(names) == len(set(names))
    accepted_by_both(document, tmp_path / "inline.yaml")


# -- the step image and what the templates need in the cluster ----------------------------------------
def test_dockerfile_passes_hadolint_and_keeps_its_promises() -> None:
    from mlchaos_steps.examples.workloads import venv_bin

    dockerfile = ROOT / "docker" / "Dockerfile"
    done = subprocess.run([str(venv_bin() / "hadolint"), "--failure-threshold", "info", str(dockerfile)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    text = dockerfile.read_text()
    assert "ARG BASE=" in text and "USER 10001" in text and 'ENTRYPOINT ["mlchaos"]' in text
    assert "MLCHAOS_HOME=/tmp/" in text and '==${VERSION}"' in text  # pinned, writable home under /tmp
    # hadolint refuses what it should: an unpinned install as root
    bad = "FROM debian:bookworm\nRUN apt-get update && apt-get install -y python3\n"
    done = subprocess.run([str(venv_bin() / "hadolint"), "-"], input=bad, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0 and "DL3008" in done.stdout


def test_rbac_gives_the_templates_service_account_what_its_steps_do() -> None:
    documents = list(yaml.safe_load_all((ROOT / "docker" / "rbac.yaml").read_text()))
    by_kind = {d["kind"]: d for d in documents}
    assert set(by_kind) == {"ServiceAccount", "Role", "RoleBinding", "ConfigMap"}
    template = library_documents()[0]
    accounts = {t.get("serviceAccountName") for t in template["spec"]["templates"] if "container" in t}
    assert accounts == {by_kind["ServiceAccount"]["metadata"]["name"]}
    assert by_kind["RoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": "mlchaos-steps"}]
    def rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
        return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
                for v in rule["verbs"]}

    stages_role = next(d for d in yaml.safe_load_all((ROOT / "docker" / "k8s" / "rbac.yaml").read_text())
                       if d["kind"] == "Role")
    # the executor's outputs, the Kubernetes stages' own Role (tested rule by rule against the API
    # server), pods get for the executor; nothing more
    assert rules(by_kind["Role"]) == {("argoproj.io", "workflowtaskresults", "create"),
                                      ("argoproj.io", "workflowtaskresults", "patch"), ("", "pods", "get"),
                                      *rules(stages_role)}
    config = {e["configMapRef"]["name"] for t in template["spec"]["templates"] if "container" in t
              for e in t["container"]["envFrom"] if "configMapRef" in e}
    assert config == {by_kind["ConfigMap"]["metadata"]["name"]}
    assert set(by_kind["ConfigMap"]["data"]) == {"MLFLOW_TRACKING_URI"}


def test_flow_style_tasks_and_comments_between_tasks_stay_as_written(stage_file: Path, tmp_path: Path) -> None:
    text = """apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata: {generateName: flow-}
spec:
  entrypoint: main
  templates:
  - name: main
    dag:
      tasks: [{name: train, template: echo}, {name: score, template: echo, depends: 'train'}]
  - name: echo
    container: {image: busybox}   # the smallest image
"""
    out = inject_yaml(text, after="train", stage=stage_file)
    assert "# the smallest image" in out and "depends: 'chaos-checkpoint-wipe'" in out
    tasks = yaml.safe_load(out)["spec"]["templates"][0]["dag"]["tasks"]
    assert [t["name"] for t in tasks] == ["train", "chaos-checkpoint-wipe", "score"]
    accepted_by_both(out, tmp_path / "flow.yaml")
    commented = (EXAMPLES / "dag-diamond.yaml").read_text().replace(
        "      - name: B\n", "      # B and C run side by side\n      - name: B\n")
    out = inject_yaml(commented, after="A", stage=stage_file)
    lines = out.splitlines()
    assert lines[lines.index("      # B and C run side by side") + 1] == "      - name: B"  # it stays with B


def test_templates_command_prints_the_library_with_the_image_asked_for() -> None:
    done = cli("argo", "templates", "--image", "registry.example/mlchaos-steps:dev")
    assert done.returncode == 0
    documents = list(yaml.safe_load_all(done.stdout))
    assert [d["kind"] for d in documents] == ["WorkflowTemplate", "CronWorkflow"]
    images = {t["container"]["image"] for t in documents[0]["spec"]["templates"] if "container" in t}
    assert images == {"registry.example/mlchaos-steps:dev"}
    assert cli("argo", "templates").stdout == LIBRARY_FILE.read_text()
