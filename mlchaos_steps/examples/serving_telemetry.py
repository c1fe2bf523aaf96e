"""What the example server tells the outside about its requests, when asked to.

- ``PROMETHEUS_MULTIPROC_DIR`` set: every request is observed in the histogram
  ``mlchaos_example_request_duration_seconds{path,status}`` (prometheus_client's multiprocess mode, so
  all workers of one server add up, also those killed and respawned) and ``/metrics`` serves it.
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` set: every request is a server span, the child of the ``traceparent``
  header it came with (mlchaos' probe requests carry the phase's), exported over OTLP.
- ``MLCHAOS_EXAMPLE_SLOW_RESPAWN_S`` set (a broken server, on purpose): a worker started more than 1.5 s
  after its supervisor (a respawned one) answers every ``/invocations`` that many seconds late (a cold
  model: ``/ping`` stays fast, so only a latency SLO on scoring can tell).
"""

from __future__ import annotations

import os
import time
from typing import Any

import psutil

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"  # the exposition format Prometheus scrapes
_histogram: Any = None
_tracer: Any = None
_delay_s: float | None = None


def delay_s() -> float:
    """How late this worker answers: 0, unless it is a respawned worker of a server told to be slow."""
    global _delay_s
    if _delay_s is None:
        slow = float(os.environ.get("MLCHAOS_EXAMPLE_SLOW_RESPAWN_S") or 0)
        me = psutil.Process()
        parent = me.parent()
        respawned = parent is not None and me.create_time() - parent.create_time() > 1.5
        _delay_s = slow if respawned else 0.0
    return _delay_s


def _metrics() -> Any:
    global _histogram
    if _histogram is None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import Histogram

        _histogram = Histogram("mlchaos_example_request_duration_seconds", "Requests the example server answered.",
                               ["path", "status"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
    return _histogram


def metrics_text() -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return bytes(generate_latest(registry))


def _tracer_or_none() -> Any:
    global _tracer
    if _tracer is None and os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": "mlchaos-example-server"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(timeout=1), schedule_delay_millis=200))
        _tracer = provider.get_tracer("mlchaos_steps.examples.serving")
    return _tracer


def start_span(scope: dict[str, Any]) -> Any:
    tracer = _tracer_or_none()
    if tracer is None:
        return None
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    parent = TraceContextTextMapPropagator().extract(carrier)
    return tracer.start_span(f"{scope.get('method', 'GET')} {scope['path']}", context=parent, kind=SpanKind.SERVER,
                             attributes={"http.route": scope["path"], "process.pid": os.getpid()})


def finish(span: Any, path: str, status: int, started: float) -> None:
    histogram = _metrics()
    if histogram is not None:
        histogram.labels(path, str(status)).observe(time.perf_counter() - started)
    if span is not None:
        span.set_attribute("http.response.status_code", status)
        span.end()
