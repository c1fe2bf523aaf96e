"""The canary router: weighted traffic split, per-backend metrics, canary analysis, fault filter.

Run it::

    python -m mlchaos_steps.rollouts.router --port 8080 --stable http://127.0.0.1:5001 \\
        --canary http://127.0.0.1:5002 --canary-weight 20 --model churn --version 7

Admin API (JSON): ``GET /mlchaos/state``; ``POST /mlchaos/fault`` ``{"kind": "errors"|"latency",
"delay_ms": 2000}`` applies to canary traffic; ``DELETE /mlchaos/fault``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from mlchaos_steps.asgi import lifespan, read_body, respond


@dataclass
class Analysis:
    """Like an Argo Rollouts AnalysisTemplate with one metric over the canary's own traffic."""

    interval_s: float = 1.0
    count: int = 30  # measurements before the analysis is Successful
    max_error_rate: float = 0.05
    max_p99_ms: float = 1000.0
    failure_limit: int = 1  # aborts when failures exceed this
    inconclusive_limit: int = 3  # aborts (fail safe) when inconclusive measurements exceed this
    min_requests: int = 3  # fewer canary requests in an interval (but some): the measurement is inconclusive


@dataclass
class RouterState:
    stable_weight: int
    canary_weight: int
    phase: str = "Progressing"  # Progressing | Successful | Aborted
    aborted_at: float | None = None
    abort_reason: str | None = None
    measurements: list[dict[str, Any]] = field(default_factory=list)
    failures: int = 0
    inconclusive: int = 0
    fault: dict[str, Any] | None = None
    rejected_tagged: bool = False
    reject_error: str | None = None


class Router:
    def __init__(self, stable: str, canary: str, canary_weight: int, analysis: Analysis | None,
                 model: str | None, version: str | None, canary_pid: int | None):
        self.backends = {"stable": stable.rstrip("/"), "canary": canary.rstrip("/")}
        self.state = RouterState(100 - canary_weight, canary_weight)
        self.analysis = analysis
        self.model, self.version, self.canary_pid = model, version, canary_pid
        self.samples: dict[str, list[tuple[float, bool, float]]] = {"stable": [], "canary": []}
        self.inflight: dict[int, tuple[str, float]] = {}  # request id -> (backend, started), for slow requests
        self.client: Any = None

    async def start(self) -> None:
        import httpx

        self.client = httpx.AsyncClient(timeout=10.0)
        if self.model and self.version:  # import mlflow now, not in the middle of an abort
            await asyncio.to_thread(_warm_registry)
        if self.analysis:
            asyncio.get_running_loop().create_task(self._analyse())

    # -- traffic ----------------------------------------------------------------------------------
    async def forward(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
        backend = "canary" if random.uniform(0, 100) < self.state.canary_weight else "stable"
        started = time.perf_counter()
        request_id = id(body) ^ int(started * 1e9)
        self.inflight[request_id] = (backend, time.time())
        try:
            status, payload = await self._call(backend, method, path, body, headers)
        finally:
            self.inflight.pop(request_id, None)
        self.samples[backend].append((time.time(), status < 500, (time.perf_counter() - started) * 1000))
        del self.samples[backend][:-5000]
        return status, payload, backend

    async def _call(self, backend: str, method: str, path: str, body: bytes, headers: dict[str, str]
                    ) -> tuple[int, bytes]:
        fault = self.state.fault if backend == "canary" else None
        if fault and fault["kind"] == "errors":
            return 503, b'{"error": "fault injected by mlchaos"}'
        if fault and fault["kind"] == "latency":
            await asyncio.sleep(fault.get("delay_ms", 2000) / 1000)
        try:
            response = await self.client.request(method, self.backends[backend] + path, content=body,
                                                 headers={"content-type": headers.get("content-type",
                                                                                      "application/json")})
            return response.status_code, response.content
        except Exception as exc:  # the backend is down: that is a 502 for the caller
            return 502, json.dumps({"error": f"{backend} unreachable: {type(exc).__name__}"}).encode()

    # -- analysis ---------------------------------------------------------------------------------
    async def _analyse(self) -> None:
        assert self.analysis is not None
        a = self.analysis
        while self.state.phase == "Progressing":
            window_start = time.time()
            await asyncio.sleep(a.interval_s)
            now = time.time()
            window = [s for s in self.samples["canary"] if s[0] >= window_start]
            # a request still waiting counts with the latency it has so far: a hung canary must fail
            window += [(now, True, (now - t) * 1000) for b, t in list(self.inflight.values()) if b == "canary"]
            measurement: dict[str, Any] = {"at": now, "requests": len(window)}
            if not window:
                continue  # no canary traffic at all: nothing to measure yet
            if len(window) < a.min_requests:
                measurement["result"] = "Inconclusive"
                self.state.inconclusive += 1
            else:
                errors = sum(1 for s in window if not s[1])
                latencies = sorted(s[2] for s in window)
                p99 = latencies[max(0, math.ceil(0.99 * len(latencies)) - 1)]
                measurement.update(error_rate=round(errors / len(window), 4), p99_ms=round(p99, 1))
                ok = errors / len(window) <= a.max_error_rate and p99 <= a.max_p99_ms
                measurement["result"] = "Successful" if ok else "Failed"
                self.state.failures += 0 if ok else 1
            self.state.measurements = (self.state.measurements + [measurement])[-50:]
            if self.state.failures > a.failure_limit:
                await self.abort(f"canary analysis failed: {self.state.failures} failed measurement(s) > "
                                 f"failureLimit {a.failure_limit} (last: {measurement})")
            elif self.state.inconclusive > a.inconclusive_limit:
                await self.abort(f"canary analysis inconclusive {self.state.inconclusive} times > "
                                 f"inconclusiveLimit {a.inconclusive_limit}")
            elif len(self.state.measurements) >= a.count:
                self.state.phase = "Successful"

    async def abort(self, reason: str) -> None:
        self.state.stable_weight, self.state.canary_weight = 100, 0
        self.state.phase, self.state.aborted_at, self.state.abort_reason = "Aborted", time.time(), reason
        if self.canary_pid:
            try:
                os.kill(self.canary_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self.model and self.version:
            try:
                await asyncio.to_thread(_tag_rejected, self.model, self.version, reason)
                self.state.rejected_tagged = True
            except Exception as exc:  # the abort itself stands; say why the tag is missing
                self.state.reject_error = f"{type(exc).__name__}: {exc}"[:1000]


def _warm_registry() -> None:
    from mlchaos_steps.targets.mlflow import client

    client()


def _tag_rejected(model: str, version: str, reason: str) -> None:
    from mlchaos_steps.targets.mlflow import client

    client().set_model_version_tag(model, version, "mlchaos.rollout", "rejected")
    client().set_model_version_tag(model, version, "mlchaos.rollout.reason", reason[:4000])


def make_app(router: Router) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, on_startup=router.start)
            return
        body = await read_body(receive)
        path, method = scope["path"], scope["method"]
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        backend = "router"
        if path == "/mlchaos/state":
            status, payload = 200, json.dumps({**asdict(router.state), "backends": router.backends,
                                               "candidate": {"model": router.model, "version": router.version}}
                                              ).encode()
        elif path == "/mlchaos/fault" and method == "POST":
            spec = json.loads(body or b"{}")
            if spec.get("kind") not in ("errors", "latency"):
                status, payload = 400, b'{"error": "kind must be errors or latency"}'
            else:
                router.state.fault = spec
                status, payload = 200, json.dumps(spec).encode()
        elif path == "/mlchaos/fault" and method == "DELETE":
            router.state.fault = None
            status, payload = 200, b'{"fault": null}'
        else:
            status, payload, backend = await router.forward(method, path, body, headers)
        await respond(send, status, payload, [(b"x-mlchaos-backend", backend.encode())])

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mlchaos canary router (reference rollback mechanism)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stable", required=True)
    parser.add_argument("--canary", required=True)
    parser.add_argument("--canary-weight", type=int, default=20)
    parser.add_argument("--canary-pid", type=int, help="stopped (SIGTERM) when the canary is aborted")
    parser.add_argument("--model")
    parser.add_argument("--version", help="the candidate version, tagged mlchaos.rollout=rejected on abort")
    parser.add_argument("--analysis", help="JSON of the analysis template (interval_s, count, ...)")
    parser.add_argument("--no-analysis", action="store_true", help="no analysis, no rollback (a broken setup)")
    args = parser.parse_args(argv)
    analysis = None if args.no_analysis else Analysis(**json.loads(args.analysis or "{}"))
    router = Router(args.stable, args.canary, args.canary_weight, analysis, args.model, args.version, args.canary_pid)
    import uvicorn

    uvicorn.run(make_app(router), host=args.host, port=args.port, log_level="warning", lifespan="on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
