"""What chaos did, in the systems platform teams watch: OpenTelemetry traces and Prometheus metrics.

Both are off unless configured (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``MLCHAOS_PUSHGATEWAY_URL``) and go
through the engine's observer (:class:`~mlchaos_steps.telemetry.observer.TelemetryObserver`), so every
stage is covered without code of its own. Export is bounded (1 s) and never changes a verdict; the
correlation id itself (:mod:`mlchaos_steps.core.tracecontext`) exists whether or not anything exports.
"""
