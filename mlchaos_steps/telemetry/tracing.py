"""Spans of an execution, exported over OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces one) is set.

A phase's span is written when the phase has written its record, with the record's times and the span
id the phase carried while it ran (its ``traceparent`` reached the commands and probe requests). Every
phase span hangs under the execution's root span, whose id snapshot drew; restore, the last phase,
writes the root span itself (from the execution's creation to now). So a run whose four phases ran in
four processes is one trace. Destructive actions and their undoing are span events; a probe is
summarised per window as an event, never a span per request.

Export is asynchronous and bounded: the phase waits at most ``FLUSH_S`` for its spans to leave, and an
exporter that cannot reach its collector is said once in the log.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Sequence
from typing import Any

from mlchaos_steps.core.records import TRACE, Execution, Ledger

log = logging.getLogger("mlchaos")

FLUSH_S = 1.0
MAX_WINDOW_EVENTS = 120
SERVICE = "mlchaos"
_provider: Any = None
_ids: Any = None
_lock = threading.Lock()
_setup_lock = threading.Lock()
_warned = False


def configured() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def _say_once(message: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("%s (said once; spans that could not be sent are dropped, verdicts are unchanged)", message)


def prewarm() -> None:
    """Load the SDK and exporter (about 0.1 s of imports) while the phase works, not after it."""
    try:
        _setup()
    except Exception as exc:  # said when the phase exports
        log.debug("tracing set-up failed: %s", exc)


def _setup() -> tuple[Any, Any]:
    with _setup_lock:
        return _setup_once()


def _setup_once() -> tuple[Any, Any]:
    global _provider, _ids
    if _provider is not None:
        return _provider, _ids
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    chosen_ids, tell_once = _classes()
    for noisy in ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "opentelemetry.sdk.trace.export"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)  # said once by TellOnce instead
    _ids = chosen_ids()
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", SERVICE),
                                "host.name": socket.gethostname()})
    # shutdown_on_exit=False: the observer's own exit flush sends what is queued, then flushes this provider
    _provider = TracerProvider(resource=resource, id_generator=_ids, shutdown_on_exit=False)
    _provider.add_span_processor(BatchSpanProcessor(tell_once(OTLPSpanExporter(timeout=FLUSH_S)),
                                                    schedule_delay_millis=100, export_timeout_millis=1000))
    return _provider, _ids


def _classes() -> tuple[type, type]:
    """The id generator that hands out the ids the engine chose, and an exporter that says failures once."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class ChosenIds(RandomIdGenerator):
        """The ids the engine already chose (and handed to commands as ``traceparent``)."""

        span_id: int | None = None
        trace_id: int | None = None

        def generate_span_id(self) -> int:
            return self.span_id if self.span_id is not None else super().generate_span_id()

        def generate_trace_id(self) -> int:
            return self.trace_id if self.trace_id is not None else super().generate_trace_id()

    class TellOnce(SpanExporter):
        def __init__(self, inner: SpanExporter) -> None:
            self.inner = inner

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            try:
                result = self.inner.export(spans)
            except Exception as exc:
                _say_once(f"could not export {len(spans)} span(s): {exc}")
                return SpanExportResult.FAILURE
            if result != SpanExportResult.SUCCESS:
                _say_once(f"the OTLP collector did not take {len(spans)} span(s)")
            return result

        def shutdown(self) -> None:
            self.inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return bool(self.inner.force_flush(timeout_millis))

    return ChosenIds, TellOnce


def export_phase(execution: Execution, phase: str, record: dict[str, Any], ledger: Ledger) -> None:
    """Write the span of ``phase`` (and, after restore, the execution's root span); flush, bounded."""
    trace = execution.state.get(TRACE) or {}
    if not trace or not record.get("span_id"):
        return
    from opentelemetry import trace as otel
    from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

    provider, ids = _setup()
    tracer = provider.get_tracer("mlchaos_steps")
    trace_id = int(trace["trace_id"], 16)
    root = SpanContext(trace_id, int(trace["span_id"], 16), is_remote=True, trace_flags=TraceFlags(1))
    attributes = {"mlchaos.run_key": execution.run_key, "mlchaos.stage": execution.stage_id,
                  "mlchaos.kind": execution.kind, "mlchaos.phase": phase}
    with _lock:
        ids.trace_id, ids.span_id = trace_id, int(record["span_id"], 16)
        try:
            span = tracer.start_span(f"mlchaos {phase}", context=otel.set_span_in_context(NonRecordingSpan(root)),
                                     start_time=_ns(record["start"]), attributes={**attributes, **_outcome(record)})
        finally:
            ids.trace_id = ids.span_id = None
    for name, event in _events(execution, phase, record, ledger):
        at = event.pop("at", None)
        span.add_event(name, event, timestamp=_ns(at if isinstance(at, int | float) else record["end"]))
    if record.get("status") == "failed":
        span.set_status(Status(StatusCode.ERROR, str(record.get("error", ""))[:500]))
    span.end(end_time=_ns(record["end"]))
    if phase == "restore":
        _root_span(tracer, ids, execution, trace, record, attributes)
    if not provider.force_flush(timeout_millis=int(FLUSH_S * 1000)):
        _say_once(f"spans of run {execution.run_key} were not sent within {FLUSH_S:g} s")


def _root_span(tracer: Any, ids: Any, execution: Execution, trace: dict[str, str], record: dict[str, Any],
               attributes: dict[str, Any]) -> None:
    from opentelemetry import trace as otel
    from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

    trace_id = int(trace["trace_id"], 16)
    parent = None
    if trace.get("parent_span_id"):  # a pipeline that is itself traced started this execution
        outer = SpanContext(trace_id, int(trace["parent_span_id"], 16), is_remote=True, trace_flags=TraceFlags(1))
        parent = otel.set_span_in_context(NonRecordingSpan(outer))
    with _lock:
        ids.trace_id, ids.span_id = trace_id, int(trace["span_id"], 16)
        try:
            span = tracer.start_span(f"mlchaos stage {execution.stage_id}", context=parent,
                                     start_time=_ns(execution.created_at or record["start"]),
                                     attributes={**attributes, "mlchaos.phase": "all",
                                                 "mlchaos.verdict": execution.verdict or "none",
                                                 "mlchaos.status": execution.status})
        finally:
            ids.trace_id = ids.span_id = None
    if execution.verdict not in (None, "passed") or record.get("status") == "failed":
        span.set_status(Status(StatusCode.ERROR, f"verdict {execution.verdict}, restore {record.get('status')}"))
    span.end(end_time=_ns(record["end"]))


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def _outcome(record: dict[str, Any]) -> dict[str, Any]:
    """The phase's status and, for verify, the verdict and its numeric metrics, as span attributes."""
    found: dict[str, Any] = {"mlchaos.phase.status": str(record.get("status"))}
    output = record.get("output") or {}
    if "status" in output and "reason" in output:  # a verdict
        found["mlchaos.verdict"] = str(output["status"])
        found["mlchaos.verdict.reason"] = str(output["reason"])[:1000]
        for key, value in (output.get("metrics") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                found[f"mlchaos.metric.{key}"] = value
    return found


def _events(execution: Execution, phase: str, record: dict[str, Any], ledger: Ledger
            ) -> list[tuple[str, dict[str, Any]]]:
    """Span events: the destructive actions (inject, snapshot), each undone action (restore), and each
    probe window a verdict summarises."""
    events: list[tuple[str, dict[str, Any]]] = []
    output = record.get("output") or {}
    if phase in ("snapshot", "inject"):
        for action in ledger.actions(execution.run_key):
            events.append(("mlchaos.action", {"kind": action.kind, "target": action.target, "state": action.state}))
    elif phase == "restore":
        for done in output.get("actions") or []:
            events.append(("mlchaos.restore", {"kind": str(done.get("action")), "target": str(done.get("target"))}))
        for error in output.get("errors") or []:
            events.append(("mlchaos.restore.failed", {"error": str(error)[:500]}))
    for name, summary in _probe_windows(output.get("evidence") or {}):
        windows = summary.pop("windows", None) or []
        events.append(("mlchaos.probe", {"probe": name, **_scalars(summary)}))
        for window in windows[:MAX_WINDOW_EVENTS]:  # one event per window of the timeline, never per request
            events.append(("mlchaos.probe.window", {"probe": name, **_scalars(window), "at": window.get("at")}))
    return events


def _scalars(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if isinstance(v, int | float | str) and not isinstance(v, bool)}


def _probe_windows(evidence: dict[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every probe summary (requests, successes, ...) in a verdict's evidence, by where it sits."""
    found = []
    for key, value in evidence.items():
        if not isinstance(value, dict):
            continue
        if "requests" in value and "successes" in value:
            found.append((prefix + key, dict(value)))
        else:
            found.extend(_probe_windows(value, f"{prefix}{key}."))
    return found
