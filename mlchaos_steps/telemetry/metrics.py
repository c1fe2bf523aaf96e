"""Prometheus metrics of chaos runs, pushed to a Pushgateway (``MLCHAOS_PUSHGATEWAY_URL``) after each phase.

Runs are batch jobs, so they push (the Prometheus convention for jobs that end). Every value is
derived from the ledger at push time, so a push replaces the stage's group with numbers that are
whole on their own, whichever process pushes: counters count the executions the ledger holds, gauges
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
``mlchaos_last_run_timestamp_seconds``    gauge    stage, model, pipeline
``mlchaos_gate_decisions_total``          counter  model, decision
========================================  =======  ====================================================

A push waits at most ``PUSH_S``; a Pushgateway that is down is said once in the log.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable
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
}
FINISHED = (ExecutionStatus.RESTORED, ExecutionStatus.RESTORE_FAILED)
_warned = False


def configured() -> bool:
    return bool(os.environ.get(ENV_URL))


def pipeline_of(execution: Execution | None = None) -> str:
    """The pipeline that ran this process: the Airflow DAG or the Argo workflow (template), else ``none``."""
    env = os.environ
    return (env.get("MLCHAOS_PIPELINE") or env.get("AIRFLOW_CTX_DAG_ID") or env.get("ARGO_WORKFLOW_NAME")
            or env.get("MLCHAOS_WORKFLOW_NAME") or "none")


def _model(execution: Execution) -> str:
    target = execution.verdict_target
    return target.name if target else "none"


def stage_registry(ledger: Ledger, stage_id: str) -> Any:
    """A registry holding every metric of ``stage_id``, from the ledger."""
    from prometheus_client import CollectorRegistry

    pipeline = pipeline_of()
    runs: Counter[tuple[str, str, str]] = Counter()
    failures: Counter[tuple[str, str]] = Counter()
    last: dict[tuple[str, str], Execution] = {}
    for e in ledger.executions():
        if e.stage_id != stage_id or e.verdict is None or e.status not in FINISHED:
            continue
        key = (_model(e), e.state.get("pipeline") or pipeline)
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
    return _push(lambda: stage_registry(ledger, stage_id), {"stage": stage_id})


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
    return _push(lambda: gate_registry(home), {"stage": "gate"})


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


def _push(make_registry: Any, group: dict[str, str]) -> bool:
    """Push in a thread and wait at most ``PUSH_S`` (a slow gateway never holds a phase longer)."""
    url = os.environ.get(ENV_URL, "")
    if not url:
        return False
    outcome: dict[str, Any] = {}

    def push() -> None:
        from prometheus_client import push_to_gateway

        try:
            push_to_gateway(url, job=JOB, registry=make_registry(), timeout=PUSH_S,
                            grouping_key={"instance": socket.gethostname(), **group})
            outcome["ok"] = True
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=push, name="mlchaos-metrics-push", daemon=True)
    thread.start()
    thread.join(PUSH_S)
    if not outcome.get("ok"):
        _say_once(f"metrics not pushed to {url}: {outcome.get('error') or f'no answer within {PUSH_S:g} s'}")
    return bool(outcome.get("ok"))


def _say_once(message: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("%s (said once; verdicts are unchanged)", message)
