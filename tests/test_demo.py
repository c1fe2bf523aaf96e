"""`mlchaos demo` is the first thing a newcomer runs: it must work and leave nothing broken.

It runs the example DAGs through Airflow on the embedded MLflow (SQLite under MLCHAOS_HOME), as on a
fresh laptop."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import cli, mlchaos


@pytest.fixture(autouse=True)
def laptop(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """As on a fresh laptop: no Airflow settings inherited from the test session, whose Airflow database
    belongs to this test process (the demo keeps its own under MLCHAOS_HOME). Whatever happens, the
    example deployment the demo started is stopped."""
    for name in list(os.environ):
        if name.startswith("AIRFLOW"):
            monkeypatch.delenv(name)
    yield
    from mlchaos_steps.examples import deployment

    deployment.stop(tmp_path / "demo")

STAGES = ["data-corruption", "checkpoint-wipe", "pod-delete", "registry-artifact-removal", "canary-failure",
          "feature-drift"]


@pytest.mark.heavy(200)
def test_demo_passes_on_healthy_workloads_and_restores_everything(tmp_path: Path) -> None:
    proc = mlchaos("demo", "--workdir", str(tmp_path / "demo"), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "everything restored" in proc.stdout
    assert "promotion gate in retraining_with_chaos: promoted" in proc.stdout
    assert "promotion gate in deployment_with_chaos: promoted" in proc.stdout
    assert "(promoted by the gate)" in proc.stdout
    assert str(Path(__file__).resolve().parents[1] / "dags") in proc.stdout  # the files of dags/ themselves
    rows = json.loads(cli("ledger", "--json").stdout)
    assert {r["stage"]: r["verdict"] for r in rows} == dict.fromkeys(STAGES, "passed")
    assert {r["status"] for r in rows} == {"restored"}


@pytest.mark.heavy(200)
def test_demo_broken_shows_the_stages_failing(tmp_path: Path) -> None:
    proc = mlchaos("demo", "--broken", "--workdir", str(tmp_path / "demo"), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "promotion gate in retraining_with_chaos: refused (upstream_failed)" in proc.stdout
    assert "promotion gate in deployment_with_chaos: refused (upstream_failed)" in proc.stdout
    assert "nothing was promoted" in proc.stdout
    rows = json.loads(cli("ledger", "--json").stdout)
    # the first stage of each DAG fails; in the gated DAGs the stages after it never start; the nightly
    # DAG's branches run side by side (its registry-artifact-removal, on the healthy @champion, passes)
    assert {(r["run_key"].split("/")[0], r["stage"]): r["verdict"] for r in rows} == {
        ("retraining_with_chaos", "data-corruption"): "failed",
        ("deployment_with_chaos", "canary-failure"): "failed",
        ("nightly_resilience", "feature-drift"): "failed",
        ("nightly_resilience", "checkpoint-wipe"): "failed",
        ("nightly_resilience", "registry-artifact-removal"): "passed",
    }, proc.stdout
    assert {r["status"] for r in rows} == {"restored"}
