"""PromQL probes, on every stage: a real Prometheus (built from its Go module) scraping the example
server's own request histogram. A healthy server passes; a server whose respawned worker answers late
(a cold model: scoring is slow, /ping is not) breaches the scoring latency SLO under pod-delete and fails
through this probe alone (its HTTP probe on /ping passes); no samples or no Prometheus is inconclusive, never a pass."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import pod_doc, telemetry_binary, wipe_doc

from mlchaos_steps.api import run_stage
from mlchaos_steps.core.probes import NETWORK_ERRORS, http_request
from mlchaos_steps.core.waiting import wait_until
from mlchaos_steps.examples import observability, workloads
from mlchaos_steps.stages import parse_stage

P99 = ('histogram_quantile(0.99, sum by (le) (rate(mlchaos_example_request_duration_seconds_bucket'
       '{path="/invocations"}[5s])))')
ROW = b'{"inputs": [[0.5, 1.0, 0.2, 0, 0, 0, 0, 0]]}'


def _traffic(url: str, stop: threading.Event) -> None:
    """What a serving system has in production: scoring requests, before, during and after the fault."""
    while not stop.is_set():
        try:
            http_request(url + "/invocations", 2.0, "POST", ROW, {"Content-Type": "application/json"})
        except NETWORK_ERRORS:
            pass
        stop.wait(0.05)


@pytest.fixture(params=["healthy", "slow-respawn"])
def observed_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any, Any]]:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    if request.param == "slow-respawn":
        env["MLCHAOS_EXAMPLE_SLOW_RESPAWN_S"] = "0.4"
    server = workloads.start_server(healthy=True, env=env, log_path=tmp_path / "server.log")
    prometheus = observability.start_prometheus(telemetry_binary("prometheus"), tmp_path / "prometheus",
                                                {"example": f"127.0.0.1:{server.port}"})
    stop = threading.Event()
    for _ in range(3):  # clients side by side: one waiting on a slow answer does not stop the traffic
        threading.Thread(target=_traffic, args=(server.url, stop), daemon=True).start()
    try:
        assert wait_until(lambda: bool(prometheus.query(P99)), 30), "Prometheus never saw the server's traffic"
        yield request.param, server, prometheus
    finally:
        stop.set()
        prometheus.stop()
        server.stop()


@pytest.mark.heavy(40)
def test_a_latency_slo_in_promql_passes_a_healthy_server_and_fails_a_slow_one(observed_server: Any) -> None:
    kind, server, prometheus = observed_server
    doc = pod_doc(server, stable_s=4, probe={"http": {"url": server.url + "/ping", "min_success_ratio": 0.9},
                                 "prometheus": {"url": prometheus.url, "query": P99, "op": "<", "threshold": 0.25,
                                                "step_s": 1}})
    outcome = run_stage(parse_stage(doc), f"promql-{server.port}")
    assert outcome.restored
    evidence = outcome.verdict.evidence["prometheus"]
    assert evidence["series"] and evidence["series"][0]["samples"], evidence  # Prometheus' own samples
    if kind == "healthy":
        assert outcome.verdict.status == "passed", outcome.verdict
        assert all(v < 0.25 for s in evidence["series"] for _, v in s["samples"])
    else:  # the HTTP probe saw every request answered: only the latency SLO can fail it
        assert outcome.verdict.status == "failed", outcome.verdict
        assert outcome.verdict.reason.startswith("PromQL probe:"), outcome.verdict.reason
        assert outcome.verdict.metrics.get("availability", 0) >= 0.9


def test_a_query_without_samples_is_inconclusive(store: Path, telemetry_backends: Any) -> None:
    doc = wipe_doc(store, probe={"prometheus": {"url": telemetry_backends.prometheus.url, "op": "<", "threshold": 1,
                                                "query": "no_such_metric_anywhere"}})
    outcome = run_stage(parse_stage(doc), "promql-empty")
    assert outcome.verdict.status == "inconclusive" and "no samples" in outcome.verdict.reason, outcome.verdict
    assert outcome.restored


def test_an_unreachable_prometheus_is_inconclusive(store: Path) -> None:
    doc = wipe_doc(store, probe={"prometheus": {"url": f"http://127.0.0.1:{workloads.free_port()}", "op": "<",
                                                "threshold": 1, "query": "up"}})
    outcome = run_stage(parse_stage(doc), "promql-down")
    assert outcome.verdict.status == "inconclusive" and "did not answer" in outcome.verdict.reason, outcome.verdict
