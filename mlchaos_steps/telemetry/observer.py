"""The engine observer that exports traces and pushes metrics; silent unless configured.

Handed to the engine by the front doors beside the MLflow reporter. It hears every phase of every stage
(``phase_ended``), in whichever process ran it, and nothing it does can change a verdict: a failure is
logged once and forgotten. Export is asynchronous: a phase hands its record to a background worker and
goes on (the SDK's imports, the span export and the metrics push happen beside the next phase's work);
:func:`flush` waits for what is queued, at most ``FLUSH_S``, and runs when the process exits (the CLI
and the Airflow operators call it before they return).

Example::

    from mlchaos_steps.core.observers import Observers
    observer = Observers(MlflowReporter(), TelemetryObserver())
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from mlchaos_steps.core.observers import SilentObserver
from mlchaos_steps.core.records import Execution, Ledger
from mlchaos_steps.telemetry import metrics, tracing

log = logging.getLogger("mlchaos")

FLUSH_S = 1.0
_work: queue.Queue[Callable[[], None]] = queue.Queue()
_pending = 0
_idle = threading.Condition()
_worker: threading.Thread | None = None


class TelemetryObserver(SilentObserver):
    """Hears only ``phase_ended``: every phase of every stage."""

    def __init__(self, ledger: Ledger | None = None) -> None:
        self._ledger = ledger
        if tracing.configured() or metrics.configured():  # the SDK's imports overlap the phase's own work
            _submit(_prewarm)

    def _ledger_for(self) -> Ledger:
        if self._ledger is None:
            from mlchaos_steps.ledgers import default_ledger

            self._ledger = default_ledger()
        return self._ledger

    def phase_ended(self, execution: Execution, phase: str, record: dict[str, Any]) -> None:
        want_traces, want_metrics = tracing.configured(), metrics.configured()
        if not (want_traces or want_metrics):
            return
        ledger = self._ledger_for()

        def export() -> None:
            pushing = metrics.push_stage_started(ledger, execution.stage_id) if want_metrics else None
            if want_traces:
                tracing.export_phase(execution, phase, record, ledger)
            if pushing is not None:  # the push ran beside the span export; each waits at most 1 s
                pushing()

        _submit(export)


def flush(timeout_s: float = FLUSH_S) -> bool:
    """Wait until every queued export is done, at most ``timeout_s``; True when nothing is left."""
    deadline = time.monotonic() + timeout_s
    with _idle:
        while _pending:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("telemetry of %d phase(s) not sent within %g s (verdicts are unchanged)", _pending,
                            timeout_s)
                return False
            _idle.wait(left)
    return True


def _submit(task: Callable[[], None]) -> None:
    global _pending, _worker
    with _idle:
        _pending += 1
        if _worker is None:
            _worker = threading.Thread(target=_run, name="mlchaos-telemetry", daemon=True)
            _worker.start()
            atexit.register(flush)
    _work.put(task)


def _run() -> None:
    global _pending
    while True:
        task = _work.get()
        try:
            task()
        except Exception as exc:  # telemetry never stops anything
            log.warning("telemetry export failed: %s", exc)
        finally:
            with _idle:
                _pending -= 1
                _idle.notify_all()


def _prewarm() -> None:
    if tracing.configured():
        tracing.prewarm()
    if metrics.configured():
        import prometheus_client  # noqa: F401
