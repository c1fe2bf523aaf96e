"""feature-drift against the churn pipeline's drift monitor (examples/churn_pipeline.py: each feature
against yesterday's batch with scipy's two-sample tests), healthy and broken: a monitor that never
fires, fires every time, fires on the wrong feature, or fires a day late. Every batch back byte for byte."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_refused_untouched, tree_digests

from mlchaos_steps.api import run_stage
from mlchaos_steps.examples import churn_pipeline
from mlchaos_steps.stages import parse_stage

PIPELINE = Path(churn_pipeline.__file__)
SHIFTS = [{"kind": "mean_shift", "column": "income", "k": 1.0},
          {"kind": "swap_categories", "column": "plan", "a": "basic", "b": "premium"}]


@pytest.fixture(scope="session")
def made_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("features")
    subprocess.run([sys.executable, str(PIPELINE), "make-batches", str(root / "features"), "--days", "3"],
                   check=True, capture_output=True)
    return root / "features"


@pytest.fixture
def features(made_features: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(made_features, tmp_path / "features"))


def _doc(features: Path, monitor: str = "healthy", drift: list[dict[str, Any]] | None = None,
         slo_s: float = 60) -> dict[str, Any]:
    return {"kind": "FeatureDrift", "spec": {
        "batch": {"store": features.as_uri(), "pattern": r"date=(\d{8})"},
        "drift": copy.deepcopy(drift or SHIFTS), "seed": 7, "detection_slo_s": slo_s,
        "monitor": {"command": [sys.executable, str(PIPELINE), "monitor", "{batch}", "--mode", monitor],
                    "interval_s": 0.2},
    }}


def _run(doc: dict[str, Any], key: str, features: Path) -> Any:
    before = tree_digests(features)
    outcome = run_stage(parse_stage(doc), key)
    assert outcome.restored, outcome.restore_error
    assert tree_digests(features) == before
    return outcome


def test_a_monitor_that_flags_the_drifted_features_passes(features: Path) -> None:
    outcome = _run(_doc(features), "healthy", features)
    assert outcome.verdict.status == "passed", outcome.verdict
    assert outcome.verdict.metrics["detection_seconds"] > 0
    measured = outcome.verdict.evidence["measured"]
    assert measured["income"]["test"] == "ks" and measured["plan"]["test"] == "chi2"
    assert all(m["p_value"] < 0.01 for m in measured.values())


@pytest.mark.parametrize("drift", [
    [{"kind": "scale", "column": "age", "factor": 2.0}],
    [{"kind": "new_category", "column": "plan", "value": "enterprise", "fraction": 0.2}],
    [{"kind": "segment_shift", "column": "income", "where": {"column": "plan", "equals": "basic"}, "k": 2}],
], ids=["scale", "new-category", "segment"])
def test_each_shift_is_detected_by_a_healthy_monitor(features: Path, drift: list[dict[str, Any]]) -> None:
    outcome = _run(_doc(features, drift=drift), f"shift-{drift[0]['kind']}", features)
    assert outcome.verdict.status == "passed", outcome.verdict


def test_a_monitor_that_never_fires_fails(features: Path) -> None:
    outcome = _run(_doc(features, "never", slo_s=3), "never", features)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "did not flag income, plan within detection_slo_s=3s" in outcome.verdict.reason


def test_a_monitor_that_fires_a_day_late_fails(features: Path) -> None:
    outcome = _run(_doc(features, "late", slo_s=3), "late", features)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "did not flag" in outcome.verdict.reason


def test_a_monitor_that_fires_on_the_wrong_feature_fails(features: Path) -> None:
    outcome = _run(_doc(features, "wrong-feature"), "wrong", features)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "which the stage did not touch" in outcome.verdict.reason


def test_a_monitor_that_fires_every_time_is_inconclusive_before_anything_breaks(features: Path) -> None:
    outcome = _run(_doc(features, "always"), "always", features)
    assert outcome.verdict.status == "inconclusive", outcome.verdict
    assert "flags age, income, plan, tenure, zip on the clean batch" in outcome.verdict.reason


def test_a_shift_too_small_to_detect_is_reported_not_counted(features: Path) -> None:
    tiny = [{"kind": "mean_shift", "column": "income", "k": 0.01}]
    outcome = _run(_doc(features, "never", drift=tiny, slo_s=3), "tiny", features)
    assert outcome.verdict.status == "inconclusive", outcome.verdict
    assert "too small for a two-sample test to detect" in outcome.verdict.reason
    both = [*tiny, {"kind": "swap_categories", "column": "plan", "a": "basic", "b": "premium"}]
    outcome = _run(_doc(features, drift=both), "tiny-and-swap", features)
    assert outcome.verdict.status == "passed", outcome.verdict
    assert "too small to detect, not counted: income" in outcome.verdict.reason


def test_restore_after_a_crash_recognises_its_own_drifted_copy(features: Path, mlchaos_home: Path) -> None:
    import json
    import sqlite3

    from mlchaos_steps.api import restore_run, run_phase

    before = tree_digests(features)
    stage = parse_stage(_doc(features))
    run_phase(stage, "snapshot", "crashed")
    run_phase(stage, "inject", "crashed")
    with sqlite3.connect(mlchaos_home / "ledger.db") as db:
        row_id, undo_json = db.execute("SELECT id, undo_json FROM actions WHERE run_key = 'crashed'").fetchone()
        undo = json.loads(undo_json)
        undo.pop("damaged_on_disk")  # a local store records the copy by what it is on disk
        db.execute("UPDATE actions SET undo_json = ? WHERE id = ?", (json.dumps(undo), row_id))
    output = restore_run("crashed")
    assert output["actions"][0].get("removed_own_damage") is True, output
    assert tree_digests(features) == before


@pytest.mark.parametrize(("change", "field"), [
    (lambda s: s["drift"][0].update(column="incom"), "spec.drift[0]"),
    (lambda s: s["drift"][1].update(a="gold"), "spec.drift[1]"),
    (lambda s: s.update(drift=[{"kind": "mean_shift", "column": "plan", "k": 1}]), "spec.drift[0].column"),
    (lambda s: s.update(drift=[{"kind": "new_category", "column": "age", "value": "x", "fraction": 0.1}]),
     "spec.drift[0].column"),
    (lambda s: s["drift"][0].update(k=float("inf")), "spec.drift.0.mean_shift.k"),
    (lambda s: s.update(drift=[SHIFTS[0], SHIFTS[0]]), "spec.drift"),
    (lambda s: s.update(detection_slo_s=0), "spec.detection_slo_s"),
], ids=["unknown-column", "unknown-category", "shift-on-text", "category-on-number", "infinite-k", "twice",
        "zero-slo"])
def test_bad_feature_drift_specs(features: Path, tmp_path: Path, change: Any, field: str) -> None:
    doc = _doc(features)
    change(doc["spec"])
    assert_refused_untouched(doc, field, features, tmp_path)
