"""The steps of every workflow in ``workflows/`` do the real thing: each rendered container's command runs
in a fresh process (the stand-in controller of ``argo_local``), against the MLflow ledger on a real
tracking server: the healthy stage passes, a broken one fails, a retried inject is skipped, restore runs
after a failed verify, and the gate promotes or blocks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from argo_local import LocalArgo, local_env
from conftest import checkpoint_digests

from mlchaos_steps.argo.library import library_documents

WORKFLOWS = Path(__file__).parent.parent / "workflows"


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def _run(name: str, tmp_path: Path, tracking: str, **parameters: str) -> LocalArgo:
    argo = LocalArgo(_load(name), library_documents(), tmp_path / "argo", local_env(),
                     config={"MLFLOW_TRACKING_URI": tracking}, parameters=parameters)
    return argo


def _result(node: Any) -> dict[str, Any]:
    return json.loads(node.outputs["result"])


def _node(argo: LocalArgo, suffix: str) -> Any:
    matches = [n for name, n in argo.nodes.items() if name.endswith(suffix)]
    assert len(matches) == 1, (suffix, sorted(argo.nodes))
    return matches[0]


def _failures(argo: LocalArgo) -> dict[str, str]:
    """The nodes that did not succeed, with the end of their output: what a failing assertion shows."""
    return {name: f"{node.phase}: {node.log[-1500:]}" for name, node in argo.nodes.items()
            if node.phase != "Succeeded" and node.argv}


def _champion(model: str) -> str | None:
    from mlchaos_steps.targets.mlflow import alias_version

    return alias_version(model, "champion")


@pytest.mark.heavy(300)
def test_retraining_passes_promotes_and_a_retried_inject_is_skipped(mlflow_server: str, model_name: str,
                                                                   tmp_path: Path) -> None:
    argo = _run("retraining.yaml", tmp_path, mlflow_server, workdir=str(tmp_path / "work"), model=model_name)
    argo.error_after = {"mlchaos-inject"}  # the first inject pod is evicted after it injected: Argo retries it
    root = argo.run()
    assert root.phase == "Succeeded", _failures(argo)
    inject = _node(argo, ".checkpoint-wipe.inject")
    assert inject.attempts == 2 and inject.phase == "Succeeded"
    assert _result(inject)["status"] == "skipped", _result(inject)  # the retry never injects twice
    verify = _result(_node(argo, ".checkpoint-wipe.verify"))
    assert verify["verdict"] == "passed", verify
    for stage in ("checkpoint-wipe", "data-corruption", "registry-artifact-removal"):
        assert _node(argo, f".{stage}.restore").phase == "Succeeded"
        assert _node(argo, f".{stage}.onExit").phase == "Succeeded"  # the exit hook: nothing left to do
        assert json.loads(_node(argo, f".{stage}").outputs["verdict"])["verdict"] == "passed"
    gate = _result(_node(argo, ".gate"))
    registered = _node(argo, ".register").outputs["result"]
    assert gate["decision"] == "promoted" and _champion(model_name) == registered, gate
    # each phase ran with the same run key: the stage's node, as Argo names it
    keys = {_node(argo, f".checkpoint-wipe.{p}").argv[_node(argo, f".checkpoint-wipe.{p}").argv.index("--run-key") + 1]
            for p in ("snapshot", "inject", "verify", "restore")}
    assert keys == {f"{argo.uid}/{argo.name}.checkpoint-wipe"}


@pytest.mark.heavy(120)
def test_broken_retraining_fails_restores_and_the_gate_blocks(mlflow_server: str, model_name: str,
                                                              tmp_path: Path) -> None:
    from mlchaos_steps.examples.training import ensure_champion

    champion = ensure_champion(model_name)
    work = tmp_path / "work"
    argo = _run("retraining.yaml", tmp_path, mlflow_server, workdir=str(work), model=model_name, broken="true")
    root = argo.run()
    assert root.phase == "Failed"
    assert _node(argo, ".checkpoint-wipe.inject").phase == "Succeeded", _node(argo, ".checkpoint-wipe.inject").log
    verify = _node(argo, ".checkpoint-wipe.verify")
    assert verify.phase == "Failed" and _result(verify)["verdict"] == "failed", verify.log[-2000:]
    restore = _node(argo, ".checkpoint-wipe.restore")
    assert restore.phase == "Succeeded"  # restore ran after the failed verify
    assert _node(argo, ".checkpoint-wipe").phase == "Failed"  # and the stage still failed
    from mlchaos_steps.examples.trainer import load_intact

    checkpoints = sorted((work / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 5 and all(load_intact(c) is not None for c in checkpoints)  # put back whole
    assert all(f".{n}" not in " ".join(argo.nodes)
               for n in ("data-corruption.inject", "registry-artifact-removal.inject", "gate"))
    assert _champion(model_name) == champion
    # the gate step itself, run on the registered version, blocks
    registered = _node(argo, ".register").outputs["result"]
    gate_template = next(t for t in library_documents()[0]["spec"]["templates"] if t["name"] == "gate")
    gate = argo.execute(f"{argo.name}.gate-by-hand", gate_template, [],
                        {"model": model_name, "version": registered,
                         "require": "checkpoint-wipe,registry-artifact-removal"})
    assert gate.phase == "Failed" and _result(gate)["decision"] == "blocked", gate.log[-1000:]
    assert _champion(model_name) == champion


@pytest.mark.heavy(65)
def test_nightly_cron_workflow_runs_its_stages_on_the_champion(mlflow_server: str, model_name: str,
                                                               tmp_path: Path) -> None:
    argo = _run("nightly.yaml", tmp_path, mlflow_server, workdir=str(tmp_path / "work"), model=model_name)
    root = argo.run()
    assert root.phase == "Succeeded", _failures(argo)
    champion = _node(argo, ".champion").outputs["result"]
    from mlchaos_steps.targets.mlflow import client

    tags = client().get_model_version(model_name, champion).tags
    assert tags.get("mlchaos.checkpoint-wipe.verdict") == "passed", tags
    assert tags.get("mlchaos.registry-artifact-removal.verdict") == "passed", tags
    assert tags.get("mlchaos.feature-drift.verdict") == "passed", tags


@pytest.fixture
def deployment(mlflow_server: str, model_name: str, tmp_path: Path) -> Any:
    """The serving stack the deployment workflow runs against (in a cluster: the router's Service)."""
    from mlchaos_steps.examples import deployment as example
    from mlchaos_steps.examples.training import ensure_candidate
    from mlchaos_steps.examples.workloads import free_port_block

    candidate = ensure_candidate(model_name)
    router_port = free_port_block(4)
    serving_port = router_port + 3
    example.start(model_name, candidate, tmp_path / "deploy", router_port=router_port, serving_port=serving_port)
    yield f"http://127.0.0.1:{router_port}"
    example.stop(tmp_path / "deploy")


@pytest.mark.heavy(65)
def test_deployment_canary_failure_passes_and_promotes(deployment: str, mlflow_server: str, model_name: str,
                                                       tmp_path: Path) -> None:
    argo = _run("deployment.yaml", tmp_path, mlflow_server, model=model_name, **{"router-url": deployment})
    root = argo.run()
    assert root.phase == "Succeeded", _failures(argo)
    assert _result(_node(argo, ".gate"))["decision"] == "promoted"
    assert _champion(model_name) == _node(argo, ".candidate").outputs["result"]


def test_janitor_restores_what_a_terminated_workflow_left(tmp_path: Path, store: Path) -> None:
    """`argo terminate` after inject: nothing else runs; the janitor's restore-orphaned puts it back. On a
    tracking server of its own: the janitor sweeps every open run of its ledger, other tests' too."""
    from conftest import wipe_doc

    from mlchaos_steps.examples.workloads import start_tracking_server

    own = start_tracking_server(tmp_path / "own-mlflow")
    try:
        _janitor(own.url, tmp_path, store, wipe_doc)
    finally:
        own.stop()


def _janitor(mlflow_server: str, tmp_path: Path, store: Path, wipe_doc: Any) -> None:

    before = checkpoint_digests(store)
    stage = yaml.safe_dump(wipe_doc(store))
    library = library_documents()
    templates = library[0]["spec"]["templates"]
    argo = LocalArgo({"kind": "Workflow", "metadata": {"name": "terminated"}, "spec": {"templates": []}}, library,
                     tmp_path / "argo", local_env(), config={"MLFLOW_TRACKING_URI": mlflow_server})
    for phase in ("snapshot", "inject"):  # then the workflow is terminated
        template = next(t for t in templates if t["name"] == f"mlchaos-{phase}")
        node = argo.execute(f"terminated.stage.{phase}", template, templates,
                            {"stage": stage, "run-key": f"{argo.uid}/terminated.stage"})
        assert node.phase == "Succeeded", node.log[-1000:]
    assert checkpoint_digests(store) != before
    janitor = next(d for d in library if d["kind"] == "CronWorkflow")
    cron = LocalArgo(janitor, library, tmp_path / "janitor", local_env(),
                     config={"MLFLOW_TRACKING_URI": mlflow_server}, parameters={})
    step = janitor["spec"]["workflowSpec"]["templates"][0]["steps"][0][0]
    step["arguments"]["parameters"][0]["value"] = "0"  # nobody owns the run now: restore it at once
    assert cron.run().phase == "Succeeded", {n: v.log[-800:] for n, v in cron.nodes.items()}
    assert checkpoint_digests(store) == before
