"""pod-delete against real gunicorn pre-fork servers: replacements must answer, sidecars are not
replicas, crash loops and replacements answering 500 fail, and env selectors meet setproctitle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from systems import start_gunicorn

from mlchaos_steps.api import run_stage
from mlchaos_steps.errors import SpecError
from mlchaos_steps.stages import parse_stage


@pytest.fixture
def gunicorn(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    mode, sidecar = request.param
    label = f"gunicorn-under-test-{tmp_path.name}"  # tests run side by side: each server its own label
    server = start_gunicorn(tmp_path, mode=mode, sidecar=sidecar, env={"MLCHAOS_APP": label})
    server.label = label
    yield server
    server.stop()


def _doc(server: Any, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "target": {"local": {"selector": {"cmdline": rf"\[{server.name}\]"}}}, "count": 1,
        "recovery_slo_s": 8, "stable_s": 2,
        # a request in flight on the killed worker is lost, and on a loaded machine the fault window may
        # hold only ten probes: 0.8 leaves room for that one; the broken servers fail on recovery
        "probe": {"http": {"url": server.url + "/ping", "min_success_ratio": 0.8, "interval_ms": 20,
                           "timeout_s": 1}},
    }
    base.update(spec)
    return {"kind": "PodDelete", "spec": base}


@pytest.mark.parametrize("gunicorn", [("healthy", False), ("healthy", True)], indirect=True,
                         ids=["plain", "with-sidecar"])
def test_gunicorn_whose_replacement_loads_and_answers_passes(gunicorn: Any) -> None:
    outcome = run_stage(parse_stage(_doc(gunicorn)), "gunicorn-healthy")
    assert outcome.verdict.status == "passed", outcome.verdict.reason
    obs = outcome.verdict.evidence["observation"]
    assert obs["readiness"] == "answered" and obs["expected_replicas"] == 2  # the sidecar is not a replica
    # the replacement loads its model (0.2 s) before it can answer: recovery measures until it did
    assert obs["recovery_seconds"] >= obs["replacement_started_seconds"]


@pytest.mark.parametrize("gunicorn", [("hang", False), ("hang", True)], indirect=True,
                         ids=["plain", "with-sidecar"])
def test_gunicorn_whose_replacement_hangs_loading_its_model_fails(gunicorn: Any) -> None:
    """The replacement inherits the listening socket at fork, so holding it proves nothing."""
    outcome = run_stage(parse_stage(_doc(gunicorn, recovery_slo_s=3)), "gunicorn-hang")
    assert outcome.verdict.status == "failed", outcome.verdict.reason
    assert "never answered a request" in outcome.verdict.reason


@pytest.mark.parametrize("gunicorn", [("healthy", True)], indirect=True)
def test_the_sidecar_is_never_chosen_as_a_victim(gunicorn: Any) -> None:
    import psutil

    sidecar = next(c.pid for c in psutil.Process(gunicorn.process.pid).children() if "log shipper" in
                   " ".join(c.cmdline()))
    for i in range(4):
        plan = run_stage(parse_stage(_doc(gunicorn, count=2)), f"sidecar-plan-{i}", dry_run=True)
        assert sidecar not in [r["pid"] for r in plan.verdict.evidence["replicas"]]
        assert [r["pid"] for r in plan.verdict.evidence["sidecars"]] == [sidecar]


@pytest.mark.parametrize("gunicorn", [("crash", False)], indirect=True)
def test_gunicorn_whose_replacement_crash_loops_fails(gunicorn: Any) -> None:
    outcome = run_stage(parse_stage(_doc(gunicorn, recovery_slo_s=4)), "gunicorn-crash-loop")
    assert outcome.verdict.status == "failed", outcome.verdict.reason
    assert "did not stay whole" in outcome.verdict.reason or "never answered" in outcome.verdict.reason


@pytest.mark.parametrize("gunicorn", [("error", False)], indirect=True)
def test_gunicorn_whose_replacement_answers_500_fails(gunicorn: Any) -> None:
    outcome = run_stage(parse_stage(_doc(gunicorn, recovery_slo_s=3)), "gunicorn-500")
    assert outcome.verdict.status == "failed", outcome.verdict.reason
    assert "never answered a request" in outcome.verdict.reason  # a 500 is not an answer that counts


@pytest.mark.parametrize("gunicorn", [("healthy", False)], indirect=True)
def test_env_selector_on_gunicorn_says_setproctitle_wiped_the_environment(gunicorn: Any) -> None:
    doc = _doc(gunicorn)
    doc["spec"]["target"]["local"]["selector"] = {"env": {"MLCHAOS_APP": gunicorn.label}}
    with pytest.raises(SpecError, match="setproctitle.*select them by cmdline"):
        run_stage(parse_stage(doc), "gunicorn-env")
