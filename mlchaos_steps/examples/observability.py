"""The telemetry backends the tests, benchmarks and demo start on 127.0.0.1: an OpenTelemetry Collector
(OTLP over HTTP in, OTLP JSON lines to a file out), the Prometheus Pushgateway and a Prometheus server
that scrapes it (and whatever else it is told to), each a real binary built from its Go module
(``make build/bin/...``).

Example::

    collector = start_collector(Path("build/bin/otelcol-mlchaos"), tmp / "otel")
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.url
    ...                                       # run stages
    spans = collector.spans(trace_id)        # what the collector received
"""

from __future__ import annotations

import json
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlchaos_steps.core.waiting import wait_until
from mlchaos_steps.examples.workloads import LocalService, free_port

COLLECTOR_CONFIG = """\
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{port}
exporters:
  file:
    path: {out}
    format: json
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces: {{receivers: [otlp], exporters: [file]}}
    metrics: {{receivers: [otlp], exporters: [file]}}
"""


def _accepting(port: int, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"{process.args} exited with {process.returncode}")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _start(argv: list[str], root: Path, port: int, timeout_s: float = 60) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, stdout=open(root / "out.log", "ab"),  # noqa: SIM115
                               stderr=subprocess.STDOUT, start_new_session=True, cwd=root)
    if not wait_until(lambda: _accepting(port, process), timeout_s, interval_s=0.05):
        raise RuntimeError(f"{argv[0]} did not listen on 127.0.0.1:{port} within {timeout_s:.0f}s")
    return process


@dataclass
class Collector(LocalService):
    """An OpenTelemetry Collector; ``url`` is its OTLP/HTTP endpoint."""

    out: Path = field(default=Path())

    def spans(self, trace_id: str | None = None) -> list[dict[str, Any]]:
        """Every span received so far (of ``trace_id``), with its resource's attributes under ``resource``."""
        found = []
        text = self.out.read_text() if self.out.exists() else ""
        for line in text.splitlines():
            if not line.strip():
                continue
            for resource_spans in json.loads(line).get("resourceSpans", []):
                resource = _attributes(resource_spans.get("resource", {}).get("attributes", []))
                for scope in resource_spans.get("scopeSpans", []):
                    for span in scope.get("spans", []):
                        if trace_id is None or span.get("traceId") == trace_id:
                            found.append({**span, "attributes": _attributes(span.get("attributes", [])),
                                          "resource": resource})
        return found


def _attributes(items: list[dict[str, Any]]) -> dict[str, Any]:
    """OTLP JSON ``[{key, value: {stringValue|intValue|doubleValue|boolValue}}]`` as a plain dict."""
    found = {}
    for item in items:
        value = item.get("value", {})
        found[item["key"]] = next(iter(value.values()), None) if value else None
    return found


def start_collector(binary: Path, root: Path) -> Collector:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    out = root / "spans.jsonl"
    config = root / "collector.yaml"
    config.write_text(COLLECTOR_CONFIG.format(port=port, out=out))
    process = _start([str(binary), f"--config=file:{config}"], root, port)
    return Collector(port, process, out)


def start_pushgateway(binary: Path, root: Path) -> LocalService:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = _start([str(binary), f"--web.listen-address=127.0.0.1:{port}"], root, port)
    return LocalService(port, process)


PROMETHEUS_CONFIG = """\
global:
  scrape_interval: {interval}
scrape_configs:
{jobs}"""


@dataclass
class Prometheus(LocalService):
    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector ``promql`` returns now."""
        import httpx

        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5).json()
        if answer.get("status") != "success":
            raise RuntimeError(f"{promql}: {answer}")
        return list(answer["data"]["result"])


def start_prometheus(binary: Path, root: Path, targets: dict[str, str], interval: str = "1s",
                     honor_labels: tuple[str, ...] = ()) -> Prometheus:
    """Prometheus scraping ``targets`` (job name -> ``host:port``) every ``interval``; jobs named in
    ``honor_labels`` keep the labels their targets expose (a Pushgateway's ``job`` and ``instance``)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    jobs = "".join(f"  - job_name: {job}\n    honor_labels: {str(job in honor_labels).lower()}\n"
                   f"    static_configs: [{{targets: ['{target}']}}]\n" for job, target in targets.items())
    config = root / "prometheus.yml"
    config.write_text(PROMETHEUS_CONFIG.format(interval=interval, jobs=jobs))
    process = _start([str(binary), f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
                      f"--web.listen-address=127.0.0.1:{port}"], root, port)
    server = Prometheus(port, process)
    wait_until(lambda: _ready(server), 60, interval_s=0.1)
    return server


def _ready(server: Prometheus) -> bool:
    from mlchaos_steps.core.probes import NETWORK_ERRORS, http_request

    try:
        return http_request(server.url + "/-/ready", 1.0)[0] == 200
    except NETWORK_ERRORS:
        return False
