"""canary-failure: real `mlflow models serve` stable and canary behind the reference router."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlchaos_steps.api import run_stage
from mlchaos_steps.examples import workloads
from mlchaos_steps.examples.models import SAMPLE_INPUT, register_sklearn
from mlchaos_steps.stages import parse_stage
from mlchaos_steps.targets.mlflow import client


@pytest.fixture(scope="module")
def deployment(tracking_server: workloads.TrackingServer, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[dict[str, Any]]:
    """A model with @champion (v1) served as stable and @challenger (v2) served as canary."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_server.url
    logs = tmp_path_factory.mktemp("canary")
    name = f"churn-canary-{uuid.uuid4().hex[:6]}"
    v1, v2 = register_sklearn(name), register_sklearn(name)
    client().set_registered_model_alias(name, "champion", v1)
    client().set_registered_model_alias(name, "challenger", v2)
    stable, canary = workloads.start_together(
        lambda: workloads.start_model_server(f"models:/{name}@champion", log_path=logs / "stable.log"),
        lambda: workloads.start_model_server(f"models:/{name}@challenger", log_path=logs / "canary.log"))
    try:
        yield {"name": name, "v1": v1, "v2": v2, "stable": stable, "canary": canary, "logs": logs}
    finally:
        stable.stop()
        canary.stop()
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture
def tracking(deployment: dict[str, Any], tracking_server: workloads.TrackingServer,
             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)


def _doc(d: dict[str, Any], router: workloads.CanaryRouter, fault: str, **spec: Any) -> dict[str, Any]:
    return {"kind": "CanaryFailure", "spec": {
        "model": d["name"], "candidate": "@challenger", "router": {"url": router.url}, "fault": fault,
        "rollback_within_s": 15, "stable": {"min_success_ratio": 0.99},
        # ~50 requests a second through the router: each costs the model server a pandas frame
        "traffic": {"sample": SAMPLE_INPUT, "interval_ms": 40, "clients": 2, "timeout_s": 2}, **spec}}


@pytest.mark.parametrize("fault", ["errors", "latency"])
def test_rollout_aborts_and_stage_passes(deployment: dict[str, Any], tracking: None, fault: str,
                                         tmp_path: Path) -> None:
    d = deployment
    router = workloads.start_router(d["stable"].url, d["canary"].url, canary_weight=30,
                                    analysis={"interval_s": 0.5, "count": 10_000, "max_p99_ms": 800},
                                    model=d["name"], version=d["v2"], log_path=tmp_path / "router.log")
    try:
        outcome = run_stage(parse_stage(_doc(d, router, fault, delay_ms=1500)), f"canary-{fault}")
    finally:
        router.stop()
    observation = outcome.verdict.evidence.get("observation", {})
    assert outcome.verdict.status == "passed", (outcome.verdict.reason,
                                                {k: v for k, v in observation.items() if k != "router"})
    assert outcome.verdict.metrics["rollback_seconds"] <= 15
    assert outcome.verdict.metrics["availability"] >= 0.99
    assert outcome.restored
    tags = client().get_model_version(d["name"], d["v2"]).tags
    assert tags.get("mlchaos.rollout") == "rejected", outcome.verdict.evidence["observation"]["router"]
    assert tags["mlchaos.canary-failure.verdict"] == "passed"
    assert client().get_model_version_by_alias(d["name"], "champion").version == d["v1"]


def test_crash_of_the_canary_process(deployment: dict[str, Any], tracking: None, tmp_path: Path) -> None:
    d = deployment
    canary = workloads.start_model_server(f"models:/{d['name']}@challenger", log_path=tmp_path / "c.log",
                                          env={"MLCHAOS_APP": "crash-canary-" + d["name"]})
    router = workloads.start_router(d["stable"].url, canary.url, canary_weight=30,
                                    analysis={"interval_s": 0.5, "count": 10_000}, log_path=tmp_path / "router.log")
    try:
        doc = _doc(d, router, "crash", canary={"selector": {"env": {"MLCHAOS_APP": "crash-canary-" + d["name"]}}})
        outcome = run_stage(parse_stage(doc), "canary-crash")
    finally:
        router.stop()
        canary.stop()
    observation = outcome.verdict.evidence.get("observation", {})
    assert outcome.verdict.status == "passed", (outcome.verdict.reason,
                                                {k: v for k, v in observation.items() if k != "router"})
    assert canary.process.poll() is not None  # the canary process really died


def test_no_rollback_mechanism_fails(deployment: dict[str, Any], tracking: None, tmp_path: Path) -> None:
    d = deployment
    router = workloads.start_router(d["stable"].url, d["canary"].url, canary_weight=30, rollback=False,
                                    log_path=tmp_path / "router.log")
    try:
        outcome = run_stage(parse_stage(_doc(d, router, "errors", rollback_within_s=3)), "canary-no-rollback")
        router_fault_cleared = workloads.http_request(router.url + "/mlchaos/state", 2)[1]
    finally:
        router.stop()
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "did not abort" in outcome.verdict.reason
    assert b'"fault": null' in router_fault_cleared  # restore cleared the injected fault
    assert client().get_model_version_by_alias(d["name"], "champion").version == d["v1"]


def test_crash_without_a_selector_is_refused_at_parse_time(deployment: dict[str, Any]) -> None:
    from mlchaos_steps.errors import SpecError

    router = workloads.CanaryRouter(1, None)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="canary.selector"):
        parse_stage(_doc(deployment, router, "crash"))


# -- third-party routers and backends: the traffic itself decides -----------------------------------
@pytest.fixture
def registered(two_versions: tuple[str, str, str]) -> str:
    return two_versions[0]


def _third_party(name: str, router: Any, **spec: Any) -> Any:
    doc = {"kind": "CanaryFailure", "spec": {
        "model": name, "candidate": "@challenger", "router": {"url": router.url}, "fault": "errors",
        "rollback_within_s": 5, "stable": {"min_success_ratio": 0.99, "max_p99_ms": 1000},
        "traffic": {"sample": SAMPLE_INPUT, "interval_ms": 10, "timeout_s": 2}, **spec}}
    return parse_stage(doc)


@pytest.fixture
def backends() -> Iterator[tuple[Any, Any]]:
    from systems import Backend

    stable, canary = Backend(), Backend()
    yield stable, canary
    stable.stop()
    canary.stop()


def _through_router(name: str, stable: str, canary: str, run_key: str, spec: dict[str, Any] | None = None,
                    **knobs: Any) -> Any:
    """Run the stage through a third-party router built with ``knobs``; always stop it."""
    from systems import Router

    router = Router(stable, canary, **knobs)
    try:
        return run_stage(_third_party(name, router, **(spec or {})), run_key)
    finally:
        router.stop()


def test_third_party_router_that_really_rolls_back_passes(registered: str, backends: tuple[Any, Any]) -> None:
    outcome = _through_router(registered, backends[0].url, backends[1].url, "tp-honest")
    assert outcome.verdict.status == "passed", outcome.verdict.reason
    assert outcome.verdict.evidence["observation"]["requests_after_abort"] > 0


def test_router_that_says_aborted_but_keeps_routing_to_the_canary_fails(registered: str,
                                                                        backends: tuple[Any, Any]) -> None:
    outcome = _through_router(registered, backends[0].url, backends[1].url, "tp-liar", lie=True)
    assert outcome.verdict.status == "failed", outcome.verdict.reason
    assert "served by the canary" in outcome.verdict.reason


def test_stable_that_hangs_under_load_fails(registered: str) -> None:
    from systems import Backend

    stable, canary = Backend(hang_over_rps=50, hang_s=3), Backend()
    try:
        outcome = _through_router(registered, stable.url, canary.url, "tp-hanging-stable")
    finally:
        stable.stop()
        canary.stop()
    assert outcome.verdict.status == "failed", outcome.verdict.reason
    assert "TimeoutError" in outcome.verdict.reason or "timeout" in outcome.verdict.reason.lower()


def test_stable_that_answers_but_slower_than_its_slo_fails(registered: str) -> None:
    from systems import Backend

    stable, canary = Backend(delay_s=0.3), Backend()
    try:
        outcome = _through_router(registered, stable.url, canary.url, "tp-slow-stable",
                                  {"stable": {"min_success_ratio": 0.99, "max_p99_ms": 100}})
    finally:
        stable.stop()
        canary.stop()
    assert outcome.verdict.status == "failed", outcome.verdict.reason
    assert "stable p99" in outcome.verdict.reason and "above 100 ms" in outcome.verdict.reason


def test_abort_recorded_before_the_fault_is_not_a_rollback(registered: str, backends: tuple[Any, Any]) -> None:
    outcome = _through_router(registered, backends[0].url, backends[1].url, "tp-stale", stale_abort=True)
    assert outcome.verdict.status == "failed", outcome.verdict.reason
    assert "before the fault" in outcome.verdict.reason
    assert "rollback_seconds" not in outcome.verdict.metrics


def test_no_abort_and_a_stable_that_served_nothing_is_failed_not_inconclusive(registered: str,
                                                                             backends: tuple[Any, Any]) -> None:
    outcome = _through_router(registered, backends[0].url, backends[1].url, "tp-nothing", {"rollback_within_s": 2},
                              never_abort=True, all_to_canary=True)
    assert outcome.verdict.status == "failed", outcome.verdict.reason
    assert "did not abort" in outcome.verdict.reason and "stable served none" in outcome.verdict.reason


def test_router_without_the_backend_header_is_refused_with_the_contract(registered: str,
                                                                        backends: tuple[Any, Any]) -> None:
    from mlchaos_steps.errors import SpecError

    with pytest.raises(SpecError, match="x-mlchaos-backend.*contract in the README"):
        _through_router(registered, backends[0].url, backends[1].url, "tp-no-header", no_header=True)


def test_router_spelling_state_and_header_its_own_way_passes(registered: str, backends: tuple[Any, Any]) -> None:
    """'aborted', weight "0", an ISO 8601 abort time, and `X-MLChaos-Backend: Stable` mean the same."""
    outcome = _through_router(registered, backends[0].url, backends[1].url, "tp-spelling", argo_spelling=True)
    assert outcome.verdict.status == "passed", outcome.verdict.reason
    assert 0 <= outcome.verdict.metrics["rollback_seconds"] <= 5
