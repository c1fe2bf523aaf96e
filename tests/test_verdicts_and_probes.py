"""Verdicts land on the model version from any stage; the reusable probes tell healthy from broken."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import cli, cli_json, wipe_doc, write_stage

from mlchaos_steps.examples.models import SAMPLE_INPUT
from mlchaos_steps.examples.workloads import ExampleServer
from mlchaos_steps.targets.mlflow import client
from mlchaos_steps.verification import alias_unchanged, metric_threshold, model_loads, serving_healthy


def test_checkpoint_wipe_verdict_goes_onto_the_model_version(two_versions: tuple[str, str, str], store: Path,
                                                             tmp_path: Path) -> None:
    name, _, v2 = two_versions
    stage_file = write_stage(tmp_path / "wipe.yaml", wipe_doc(store, "truncate-latest"))
    code, result = cli_json("run", str(stage_file), "--run-key", "tagged-1", "--model", name,
                                "--version", "@challenger", env={"AIRFLOW_CTX_DAG_ID": "retrain",
                                                                 "AIRFLOW_CTX_DAG_RUN_ID": "manual__1"})
    assert (code, result["verdict"]) == (0, "passed")
    tags = client().get_model_version(name, v2).tags
    assert tags["mlchaos.checkpoint-wipe.verdict"] == "passed"
    assert tags["mlchaos.checkpoint-wipe.lost_steps"] == "100"
    run = client().get_run(tags["mlchaos.checkpoint-wipe.run_id"])
    assert run.data.metrics["lost_steps"] == 100
    assert run.data.params["mode"] == "truncate-latest"
    assert run.data.tags["mlchaos.pipeline.dag_id"] == "retrain"
    assert run.data.tags["mlchaos.pipeline.dag_run_id"] == "manual__1"
    journal_path = client().download_artifacts(run.info.run_id, "journal.json", str(tmp_path))
    journal = json.loads(Path(journal_path).read_text())
    assert journal["status"] == "completed" and journal["rollbacks"], "the final journal includes restore"


def test_failed_verdict_is_recorded_too(two_versions: tuple[str, str, str], store: Path, tmp_path: Path) -> None:
    name, _, v2 = two_versions
    stage_file = write_stage(tmp_path / "wipe.yaml", wipe_doc(store, broken=True))
    proc = cli("run", str(stage_file), "--model", name, "--version", v2)
    assert proc.returncode == 1
    assert client().get_model_version(name, v2).tags["mlchaos.checkpoint-wipe.verdict"] == "failed"


def test_unknown_model_for_verdicts_exits_2_before_anything_breaks(mlflow_server: str, store: Path,
                                                                  tmp_path: Path) -> None:
    from conftest import tree_digests

    before = tree_digests(store)
    proc = cli("run", str(write_stage(tmp_path / "w.yaml", wipe_doc(store))), "--model", "ghost",
                   "--version", "1")
    assert proc.returncode == 2 and "spec.model" in proc.stderr
    assert tree_digests(store) == before


def test_probes_on_healthy_and_broken_targets(two_versions: tuple[str, str, str], healthy_server: ExampleServer
                                              ) -> None:
    name, v1, v2 = two_versions
    assert model_loads(f"models:/{name}@champion").ok
    assert not model_loads(f"models:/{name}/99").ok
    assert serving_healthy(healthy_server.url, SAMPLE_INPUT).ok
    assert not serving_healthy(healthy_server.url, {"inputs": "not rows"}).ok
    assert not serving_healthy("http://127.0.0.1:9/").ok
    assert metric_threshold(name, v1, "accuracy", 0.8).ok
    failing = metric_threshold(name, v1, "accuracy", 1.01)
    assert not failing.ok and "accuracy" in failing.detail
    assert not metric_threshold(name, v1, "no_such_metric", 0.5).ok
    assert alias_unchanged(name, "champion", v1).ok
    assert not alias_unchanged(name, "champion", v2).ok
