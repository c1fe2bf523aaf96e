"""dependency-latency against a real toxiproxy (built from its Go module) in front of a real Redis
(Debian's), and the feature-reading example server in each of its modes: the healthy one passes every
fault; one with no time-out on the store, one whose fallback answers errors, one that falls back and
never returns, and one that answers from a stale cache forever fail. The proxy is clean after every run,
also after a crash."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, cli, write_stage
from prometheus_client import generate_latest

from mlchaos_steps.api import run_stage
from mlchaos_steps.examples import dependencies
from mlchaos_steps.ledgers import SqliteLedger
from mlchaos_steps.stages import parse_stage
from mlchaos_steps.targets.toxiproxy import Toxiproxy
from mlchaos_steps.telemetry import metrics

ENTITY = {"entity": "e1"}
# The example server's time-out on the store: above a loaded 2-core machine's Redis round trips (0.1 s fell
# back now and then before any fault), below every fault's delay (400 ms latency, held, reset, down).
STORE_TIMEOUT_S = 0.25


@pytest.fixture
def store_behind_proxy(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Redis with features, toxiproxy in front of it (proxy `feature-store`)."""
    proxy = dependencies.start_toxiproxy(ROOT / "build" / "bin" / "toxiproxy-server", tmp_path / "toxiproxy")
    redis = dependencies.start_redis(tmp_path / "redis")
    try:
        subprocess.run(dependencies.redis_cli(redis.port, "HSET", "features:e1", "tenure", "3", "monthly", "80"),
                       check=True, capture_output=True)
        listen = Toxiproxy(proxy.url).create_proxy("feature-store", f"127.0.0.1:{redis.port}")["listen"]
        yield {"api": proxy.url, "store_url": f"redis://{listen}/0", "redis_port": redis.port, "root": tmp_path}
    finally:
        redis.stop()
        proxy.stop()


def _doc(env: dict[str, Any], server_url: str, fault: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"kind": "DependencyLatency", "spec": {
        "proxy": {"api": env["api"], "name": "feature-store"}, "fault": fault, "duration_s": 2,
        "traffic": {"url": server_url + "/invocations", "body": ENTITY, "interval_ms": 40, "timeout_s": 1.5},
        "canary": {"write": dependencies.redis_cli(env["redis_port"], "HSET", "features:mlchaos-canary",
                                                   "canary", "{canary}"),
                   "request": {"entity": "mlchaos-canary"}, "timeout_s": 3},
        # an SLO with room for a loaded 2-core machine: the healthy server answers in ~0.1 s (its store time-out)
        "min_success_ratio": 0.95, "latency_slo_ms": 400, "recovery_slo_s": 3, "stable_s": 1, "steady_s": 1,
        **spec}}


def _run(env: dict[str, Any], mode: str, fault: dict[str, Any], key: str) -> Any:
    server = dependencies.start_feature_server(env["store_url"], mode, env["root"] / f"server-{key}",
                                               timeout_s=STORE_TIMEOUT_S)
    try:
        outcome = run_stage(parse_stage(_doc(env, server.url, fault)), key)
    finally:
        server.stop()
    assert outcome.restored, outcome.restore_error
    proxy = Toxiproxy(env["api"]).proxy("feature-store")
    assert proxy["enabled"] and proxy["toxics"] == []  # nothing of the stage is left on the proxy
    return outcome


@pytest.mark.heavy(12)
@pytest.mark.parametrize("fault", [{"kind": "latency", "latency_ms": 400}, {"kind": "timeout"}, {"kind": "down"},
                                   {"kind": "reset"}], ids=lambda f: f["kind"])
def test_a_service_that_falls_back_and_comes_back_passes(store_behind_proxy: dict[str, Any],
                                                        fault: dict[str, Any]) -> None:
    outcome = _run(store_behind_proxy, "healthy", fault, f"healthy-{fault['kind']}")
    assert outcome.verdict.status == "passed", outcome.verdict
    assert outcome.verdict.metrics["fallback_share"] > 0  # the fault reached the store: answers said so
    exposed = generate_latest(metrics.stage_registry(SqliteLedger(), "dependency-latency")).decode()
    shares = re.findall(r'^mlchaos_fallback_ratio\{[^}]*stage="dependency-latency"[^}]*\} (\S+)$', exposed, re.M)
    assert shares and float(shares[0]) == outcome.verdict.metrics["fallback_share"], exposed


@pytest.mark.heavy(12)
@pytest.mark.parametrize(("mode", "fault", "says"), [
    ("no-timeout", {"kind": "latency", "latency_ms": 900}, "p99"),
    ("no-timeout", {"kind": "timeout"}, "availability"),
    ("fallback-errors", {"kind": "down"}, "availability"),
    ("sticky-fallback", {"kind": "latency", "latency_ms": 400}, "not back to normal"),
    ("stale-cache", {"kind": "down"}, "stale cache"),
], ids=["hangs-slow", "hangs", "errors", "never-returns", "stale-cache"])
def test_broken_services_fail(store_behind_proxy: dict[str, Any], mode: str, fault: dict[str, Any],
                              says: str) -> None:
    outcome = _run(store_behind_proxy, mode, fault, f"{mode}-{fault['kind']}")
    assert outcome.verdict.status == "failed", outcome.verdict
    assert says in outcome.verdict.reason, outcome.verdict.reason


def test_a_toxic_left_by_a_dead_run_is_removed_by_restore_orphaned(store_behind_proxy: dict[str, Any],
                                                                   tmp_path: Path) -> None:
    env = store_behind_proxy
    server = dependencies.start_feature_server(env["store_url"], "healthy", tmp_path / "server",
                                               timeout_s=STORE_TIMEOUT_S)
    try:
        stage_file = write_stage(tmp_path / "dep.yaml", _doc(env, server.url, {"kind": "latency"}))
        for phase in ("snapshot", "inject"):
            assert cli("run", str(stage_file), "--phase", phase, "--run-key", "left").returncode == 0
    finally:
        server.stop()
    proxies = Toxiproxy(env["api"])
    assert [t["name"] for t in proxies.toxics("feature-store")] and proxies.toxics("feature-store")[0][
        "name"].startswith("mlchaos-")
    assert cli("restore", "--orphaned", "--older-than", "0").returncode == 0
    assert proxies.toxics("feature-store") == []


def test_bad_dependency_latency_specs_are_refused(store_behind_proxy: dict[str, Any], tmp_path: Path) -> None:
    env = store_behind_proxy
    doc = _doc(env, "http://127.0.0.1:1", {"kind": "latency"})
    doc["spec"]["canary"]["write"] = ["redis-cli", "SET", "x", "no placeholder"]
    proc = cli("run", str(write_stage(tmp_path / "bad.yaml", doc)))
    assert proc.returncode == 2 and "spec.canary.write" in proc.stderr, proc.stderr
    doc = _doc(env, "http://127.0.0.1:1", {"kind": "brownout"})
    proc = cli("run", str(write_stage(tmp_path / "bad2.yaml", doc)))
    assert proc.returncode == 2 and "spec.fault.kind" in proc.stderr, proc.stderr
    assert Toxiproxy(env["api"]).toxics("feature-store") == []


def test_the_kill_switch_stops_the_fault_and_restores(store_behind_proxy: dict[str, Any], tmp_path: Path,
                                                      mlchaos_home: Path) -> None:
    import time

    from conftest import BIN

    env = store_behind_proxy
    server = dependencies.start_feature_server(env["store_url"], "healthy", tmp_path / "server",
                                               timeout_s=STORE_TIMEOUT_S)
    try:
        stage_file = write_stage(tmp_path / "dep.yaml", _doc(env, server.url, {"kind": "latency"}, duration_s=60))
        proc = subprocess.Popen([str(BIN / "mlchaos"), "run", str(stage_file), "--run-key", "stopped"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proxies = Toxiproxy(env["api"])
        deadline = time.monotonic() + 60
        while not proxies.toxics("feature-store") and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        (mlchaos_home / "STOP").touch()
        _, stderr = proc.communicate(timeout=60)
    finally:
        server.stop()
    assert proc.returncode == 3, stderr
    assert proxies.toxics("feature-store") == []
    execution = SqliteLedger().get("stopped")
    assert execution is not None and execution.verdict == "inconclusive"
    assert "kill switch" in execution.verdict_detail["reason"]  # type: ignore[index]
