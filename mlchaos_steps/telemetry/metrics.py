"""Prometheus metrics of chaos runs, pushed to a Pushgateway (``MLCHAOS_PUSHGATEWAY_URL``) after each phase.

Runs are batch jobs, so they push (the Prometheus convention for jobs that end). Every value is
derived from the ledger at push time, so a push replaces its group (the ledger and the stage) with
numbers that are whole on their own, whichever process pushes: counters count the executions the ledger holds, gauges
are the last finished execution's, per stage, model and pipeline. Gate decisions are logged in
``MLCHAOS_HOME/gate-decisions.jsonl`` and pushed by the gate.

========================================  =======  ====================================================
metric                                    type     labels
========================================  =======  ====================================================
``mlchaos_stage_runs_total``              counter  stage, verdict, model, pipeline
``mlchaos_restore_failures_total``        counter  stage, model, pipeline (restores that failed)
``mlchaos_recovery_seconds``              gauge    stage, model, pipeline (last finished execution)
``mlchaos_lost_steps``                    gauge    stage, model, pipeline
``mlchaos_availability_ratio``            gauge    stage, model, pipeline
``mlchaos_fallback_ratio``                gauge    stage, model, pipeline (dependency-latency)
``mlchaos_last_run_timestamp_seconds``    gauge    stage, model, pipeline
``mlchaos_gate_decisions_total``          counter  model, decision
========================================  =======  ====================================================

A push waits at most ``PUSH_S``; a Pushgateway that is down is said once in the log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mlchaos_steps.core.records import Execution, ExecutionStatus, Ledger

log = logging.getLogger("mlchaos")

ENV_URL = "MLCHAOS_PUSHGATEWAY_URL"
GATE_LOG = "gate-decisions.jsonl"
JOB = "mlchaos"
PUSH_S = 1.0
GAUGES = {  # metric -> (the verdict metric it reports, help)
    "mlchaos_recovery_seconds": ("recovery_seconds", "Seconds the target took to recover, last finished run."),
    "mlchaos_lost_steps": ("lost_steps", "Training steps lost to the fault, last finished run."),
    "mlchaos_availability_ratio": ("availability", "Share of probe requests answered during the fault (0-1)."),
    "mlchaos_fallback_ratio": ("fallback_share", "Share of answers served from a fallback during the fault (0-1)."),
}
FINISHED = (ExecutionStatus.RESTORED, ExecutionStatus.RESTORE_FAILED)
_warned = False


def configured() -> bool:
    return bool(os.environ.get(ENV_URL))


def _model(execution: Execution) -> str:
    target = execution.verdict_target
    return target.name if target else "none"


def stage_registry(ledger: Ledger, stage_id: str) -> Any:
    """A registry holding every metric of ``stage_id``, from the ledger."""
    from prometheus_client import CollectorRegistry

    runs: Counter[tuple[str, str, str]] = Counter()
    failures: Counter[tuple[str, str]] = Counter()
    last: dict[tuple[str, str], Execution] = {}
    for e in ledger.executions():
        if e.stage_id != stage_id or e.verdict is None or e.status not in FINISHED:
            continue
        key = (_model(e), e.state.get("pipeline") or "none")
        runs[(e.verdict, *key)] += 1
        failures[key] += int(e.state.get("restore_failures") or 0)
        if key not in last or e.updated_at >= last[key].updated_at:
            last[key] = e
    registry = CollectorRegistry()
    registry.register(_StageMetrics(stage_id, runs, failures, last))
    return registry


class _StageMetrics:
    """A prometheus_client collector over numbers already taken from the ledger."""

    LABELS = ["stage", "model", "pipeline"]

    def __init__(self, stage_id: str, runs: Counter[tuple[str, str, str]], failures: Counter[tuple[str, str]],
                 last: dict[tuple[str, str], Execution]) -> None:
        self.stage_id, self.runs, self.failures, self.last = stage_id, runs, failures, last

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        total = CounterMetricFamily("mlchaos_stage_runs", "Finished chaos stage executions, by verdict.",
                                    labels=["stage", "verdict", "model", "pipeline"])
        for (verdict, model, pipe), n in sorted(self.runs.items()):
            total.add_metric([self.stage_id, verdict, model, pipe], n)
        yield total
        failed = CounterMetricFamily("mlchaos_restore_failures", "Restores that failed (retried until whole).",
                                     labels=self.LABELS)
        for (model, pipe), n in sorted(self.failures.items()):
            failed.add_metric([self.stage_id, model, pipe], n)
        yield failed
        for name, (metric, text) in GAUGES.items():
            gauge = GaugeMetricFamily(name, text, labels=self.LABELS)
            for (model, pipe), e in sorted(self.last.items()):
                value = ((e.verdict_detail or {}).get("metrics") or {}).get(metric)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    gauge.add_metric([self.stage_id, model, pipe], float(value))
            yield gauge
        stamp = GaugeMetricFamily("mlchaos_last_run_timestamp_seconds",
                                  "When the last finished execution ended (Unix time).", labels=self.LABELS)
        for (model, pipe), e in sorted(self.last.items()):
            stamp.add_metric([self.stage_id, model, pipe], e.updated_at)
        yield stamp


def push_stage(ledger: Ledger, stage_id: str) -> bool:
    """Push the stage's metrics (replacing its group); waits at most ``PUSH_S``. True when it was taken."""
    return push_stage_started(ledger, stage_id)()


def push_stage_started(ledger: Ledger, stage_id: str) -> Callable[[], bool]:
    """Start pushing the stage's metrics; the returned wait ends at most ``PUSH_S`` after the start."""
    return _start_push(lambda: stage_registry(ledger, stage_id), {"ledger": ledger_id(ledger), "stage": stage_id})


def ledger_id(ledger: Ledger) -> str:
    """The Pushgateway group of a ledger: each push replaces its group with what that ledger holds, so
    two ledgers never share one (a file on this host; a tracking server, shared by every pod using it)."""
    shared = "://" in ledger.location
    where = ledger.location if shared else f"{socket.gethostname()}:{ledger.location}"
    return hashlib.sha256(where.encode()).hexdigest()[:12]


def count_gate_decision(model: str, decision: str, home: Path, version: str | None = None,
                        reason: str | None = None) -> bool:
    """Log one gate decision in ``home/gate-decisions.jsonl`` (the scorecard reads it) and push the counts,
    when a Pushgateway is configured."""
    from filelock import FileLock

    path = home / GATE_LOG
    home.mkdir(parents=True, exist_ok=True)
    entry = {"at": time.time(), "model": model, "version": version, "decision": decision, "reason": reason}
    with FileLock(str(path) + ".lock", timeout=10), path.open("a") as log_file:
        log_file.write(json.dumps(entry) + "\n")
    if not configured():
        return False
    where = f"{socket.gethostname()}:{home}"
    return _start_push(lambda: gate_registry(home), {"ledger": hashlib.sha256(where.encode()).hexdigest()[:12],
                                                      "stage": "gate"})()


def gate_registry(home: Path) -> Any:
    """``mlchaos_gate_decisions_total{model,decision}``, counted from ``home/gate-decisions.jsonl``."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily

    path = home / GATE_LOG
    lines = path.read_text().splitlines() if path.exists() else []
    counts = Counter((d["model"], d["decision"]) for d in map(json.loads, filter(str.strip, lines)))
    family = CounterMetricFamily("mlchaos_gate_decisions", "Promotion gate decisions.", labels=["model", "decision"])
    for (model, decision), n in sorted(counts.items()):
        family.add_metric([model, decision], n)
    registry = CollectorRegistry()
    registry.register(_Fixed([family]))
    return registry


class _Fixed:
    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> Iterable[Any]:
        return iter(self.families)


def _start_push(make_registry: Any, group: dict[str, str]) -> Callable[[], bool]:
    """Push in a thread; the returned wait gives up ``PUSH_S`` after the start (a slow gateway never holds a
    phase longer) and says a failure once in the log."""
    url = os.environ.get(ENV_URL, "")
    if not url:
        return lambda: False
    outcome: dict[str, Any] = {}

    def push() -> None:
        from prometheus_client import push_to_gateway

        try:
            push_to_gateway(url, job=JOB, registry=make_registry(), timeout=PUSH_S,
                            grouping_key=group)  # the ledger's id says where (a host's file, or shared)
            outcome["ok"] = True
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=push, name="mlchaos-metrics-push", daemon=True)
    deadline = time.monotonic() + PUSH_S
    thread.start()

    def wait() -> bool:
        thread.join(max(0.0, deadline - time.monotonic()))
        if not outcome.get("ok"):
            _say_once(f"metrics not pushed to {url}: {outcome.get('error') or f'no answer within {PUSH_S:g} s'}")
        return bool(outcome.get("ok"))

    return wait


def _say_once(message: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("%s (said once; verdicts are unchanged)", message)
