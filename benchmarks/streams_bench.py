"""The fault proxy's accuracy and cost (``python benchmarks/run.py toxiproxy_latency``): round trips of a
64-byte message to a TCP echo server on 127.0.0.1, directly and through toxiproxy (built by ``make test``),
on one kept-alive connection each, interleaved; then through the proxy with a 200 ms latency toxic."""

from __future__ import annotations

import socket
import socketserver
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MESSAGE = b"x" * 64


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := self.request.recv(65536):
            self.request.sendall(data)


def _round_trips(port: int, count: int) -> list[float]:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        seconds = []
        for _ in range(count):
            t0 = time.perf_counter()
            conn.sendall(MESSAGE)
            got = b""
            while len(got) < len(MESSAGE):
                got += conn.recv(65536)
            seconds.append((time.perf_counter() - t0) * 1000)
        return seconds


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(round(q / 100 * len(ordered))) - 1)]


def toxiproxy_latency(repeats: int) -> dict[str, Any]:
    from mlchaos_steps.examples import dependencies
    from mlchaos_steps.targets.toxiproxy import Toxiproxy

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    echo_port = server.server_address[1]
    proxy = dependencies.start_toxiproxy(ROOT / "build/bin/toxiproxy-server", Path(tempfile.mkdtemp()))
    try:
        client = Toxiproxy(proxy.url)
        listen = client.create_proxy("echo", f"127.0.0.1:{echo_port}")["listen"]
        proxied_port = int(listen.rsplit(":", 1)[1])
        direct, proxied = [], []
        for _ in range(repeats * 2):
            _round_trips(echo_port, 50)  # warm both paths
            _round_trips(proxied_port, 50)
            direct += _round_trips(echo_port, 400)
            proxied += _round_trips(proxied_port, 400)
        client.add_toxic("echo", "latency", {"latency": 200, "jitter": 0}, name="bench")
        delayed = _round_trips(proxied_port, 30 * repeats)
        client.remove_toxic("echo", "bench")
    finally:
        proxy.stop()
        server.shutdown()
    p50_direct, p50_proxied, p50_delayed = (statistics.median(v) for v in (direct, proxied, delayed))
    return {
        "what": "64-byte round trips to a TCP echo server on one kept-alive connection, directly and through "
                "toxiproxy v2.12.0 (interleaved batches of 400), then through it with a 200 ms latency toxic",
        "direct_ms": {"p50": round(p50_direct, 4), "p99": round(_p(direct, 99), 4), "n": len(direct)},
        "proxied_ms": {"p50": round(p50_proxied, 4), "p99": round(_p(proxied, 99), 4), "n": len(proxied)},
        "proxy_overhead_p50_ms": round(p50_proxied - p50_direct, 4), "target_overhead_p50_ms_max": 1.0,
        "latency_toxic_200ms": {"p50": round(p50_delayed, 2), "p99": round(_p(delayed, 99), 2),
                                "min": round(min(delayed), 2), "n": len(delayed),
                                "p50_off_by_percent": round(abs(p50_delayed - 200) / 2, 2)},
        "target_off_by_percent_max": 5.0,
    }


def kafka_start(repeats: int) -> dict[str, Any]:
    """Three KRaft nodes from cold (format included) until a replication-factor-3 topic exists and one record
    has gone through a proxy and back (produced with acks=all, consumed)."""
    import logging

    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from mlchaos_steps.examples import dependencies, streaming
    from mlchaos_steps.targets.toxiproxy import Toxiproxy

    quiet = logging.getLogger("mlchaos.bench-kafka")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    up, round_trip = [], []
    for i in range(repeats):
        root = Path(tempfile.mkdtemp(prefix="mlchaos-bench-kafka-"))
        proxy = dependencies.start_toxiproxy(ROOT / "build/bin/toxiproxy-server", root / "toxiproxy")
        try:
            t0 = time.perf_counter()
            cluster = streaming.start_kafka(ROOT / "build/kafka/jars", root / "kafka", Toxiproxy(proxy.url))
            try:
                up.append(time.perf_counter() - t0)
                admin = AdminClient({"bootstrap.servers": cluster.bootstrap, "logger": quiet})
                for future in admin.create_topics([NewTopic("t", 3, 3)]).values():
                    future.result(60)
                producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "logger": quiet})
                producer.produce("t", b"hello", partition=0)
                producer.flush(60)
                consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": f"g{i}", "logger": quiet,
                                     "auto.offset.reset": "earliest"})
                consumer.subscribe(["t"])
                while (message := consumer.poll(1.0)) is None or message.error() is not None:
                    pass
                round_trip.append(time.perf_counter() - t0)
                consumer.close()
            finally:
                cluster.stop()
        finally:
            proxy.stop()
    return {"what": "examples.streaming.start_kafka (3 KRaft nodes formatted and started, every broker answering "
                    "metadata through its proxy), then until a record went round a replication-factor-3 topic",
            "brokers_up_seconds": {"median": round(statistics.median(up), 2), "min": round(min(up), 2),
                                   "max": round(max(up), 2), "n": len(up)},
            "record_round_trip_seconds": {"median": round(statistics.median(round_trip), 2),
                                          "min": round(min(round_trip), 2), "max": round(max(round_trip), 2),
                                          "n": len(round_trip)},
            "target_seconds_max": 30}
