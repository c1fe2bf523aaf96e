"""Example model servers: real replicas for the pod-delete stage.

``app`` is a small ASGI app: ``/ping`` answers 200, ``/pid`` names the worker that answered,
``/invocations`` scores a JSON row with a fixed linear model; with ``PROMETHEUS_MULTIPROC_DIR`` set,
``/metrics`` serves its request histogram, and requests are traced when an OTLP endpoint is set (see
:mod:`mlchaos_steps.examples.serving_telemetry`).

Healthy: run it under uvicorn's own supervisor, which respawns killed workers::

    uvicorn mlchaos_steps.examples.serving:app --workers 2 --port 5001

Broken: ``python -m mlchaos_steps.examples.serving --workers 2 --port 5001`` starts the same workers
under a supervisor that never replaces a dead one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import sys
import time
from typing import Any

from mlchaos_steps.asgi import lifespan, read_body, respond
from mlchaos_steps.examples import serving_telemetry

WEIGHTS = [1.0, 0.5, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI entry point."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    if scope["path"] == "/metrics" and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        await read_body(receive)
        await respond(send, 200, serving_telemetry.metrics_text(), [], serving_telemetry.CONTENT_TYPE)
        return
    started, span = time.perf_counter(), serving_telemetry.start_span(scope)
    body = await read_body(receive)
    if scope["path"] == "/invocations" and serving_telemetry.delay_s():
        await asyncio.sleep(serving_telemetry.delay_s())
    status, payload = 200, {"status": "ok"}
    if scope["path"] == "/pid":
        payload = {"pid": os.getpid()}
    elif scope["path"] == "/invocations":
        try:
            rows = json.loads(body or b"{}").get("inputs", [])
            payload = {"predictions": [int(sum(w * x for w, x in zip(WEIGHTS, row, strict=False)) > 0)
                                       for row in rows]}
        except (ValueError, TypeError, AttributeError):
            status, payload = 400, {"error": "send {\"inputs\": [[...8 numbers...]]}"}
    elif scope["path"] != "/ping":
        status, payload = 404, {"error": "not found"}
    await respond(send, status, json.dumps(payload).encode(), [(b"x-worker-pid", str(os.getpid()).encode())])
    serving_telemetry.finish(span, scope["path"], status, started)


def _worker(sock: socket.socket) -> None:
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


def fragile_supervisor(host: str, port: int, workers: int) -> int:
    """Start ``workers`` uvicorn workers on one socket and never replace one that dies."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_worker, args=(sock,), daemon=True) for _ in range(workers)]
    for child in children:
        child.start()
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop and any(c.is_alive() for c in children):
        time.sleep(0.2)  # the bug on purpose: a dead worker is noticed by nobody
    for child in children:
        if child.is_alive():
            child.terminate()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the fragile example server (no respawn)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    return fragile_supervisor(args.host, args.port, args.workers)


if __name__ == "__main__":
    sys.exit(main())
