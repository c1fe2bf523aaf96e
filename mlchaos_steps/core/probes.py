"""Probes sampled while a fault is in place: HTTP availability and latency.

Each HTTP sample opens a fresh connection, so that requests spread over every replica behind a
shared socket rather than sticking to one through keep-alive.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from mlchaos_steps.core import tracecontext

# What a request can raise when the other side is not there or misbehaves.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (OSError, httpx.HTTPError)


@dataclass(frozen=True)
class Sample:
    at: float  # wall-clock time the request started
    ok: bool
    latency_ms: float
    detail: str  # status code or error class
    backend: str = ""  # which backend a router sent it to (x-mlchaos-backend), when it says
    fallback: bool = False  # the answer said it came from a fallback (a header the stage names)


_client: httpx.Client | None = None
_client_lock = threading.Lock()


def _shared_client() -> httpx.Client:
    """One client for the process (its TLS context is built once), pooling nothing: every request opens
    a fresh connection."""
    global _client
    with _client_lock:
        if _client is None:
            _client = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), follow_redirects=False)
        return _client


def http_request(url: str, timeout_s: float, method: str = "GET", body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    """One request on a fresh connection: (status, body, lower-case headers). No answer at all raises
    OSError (``TimeoutError`` when it timed out, ``ConnectionError`` otherwise), as a socket would."""
    try:
        response = _shared_client().request(method, url, content=body, timeout=timeout_s,
                                            headers={"Connection": "close", **tracecontext.headers(),
                                                     **(headers or {})})
    except httpx.TimeoutException as exc:
        raise TimeoutError(f"{type(exc).__name__}: {exc}") from exc
    except httpx.TransportError as exc:
        raise ConnectionError(f"{type(exc).__name__}: {exc}") from exc
    return response.status_code, response.content, {k.lower(): v for k, v in response.headers.items()}


def sample_once(url: str, timeout_s: float, expect_status: int | None = None, body: bytes | None = None,
                fallback_header: str | None = None) -> Sample:
    """One request (POST with JSON when ``body`` is given) on a fresh connection. ``fallback_header``: the
    header whose value 1/true/yes marks an answer served from a fallback."""
    started, t0 = time.time(), time.perf_counter()
    backend, fallback = "", False
    try:
        if body is None:
            status, _, headers = http_request(url, timeout_s)
        else:
            status, _, headers = http_request(url, timeout_s, "POST", body, {"Content-Type": "application/json"})
        ok = status == expect_status if expect_status else 200 <= status < 400
        detail, backend = str(status), headers.get("x-mlchaos-backend", "").strip().lower()
        if fallback_header:
            fallback = headers.get(fallback_header.lower(), "").strip().lower() in ("1", "true", "yes")
    except NETWORK_ERRORS as exc:
        ok, detail = False, type(exc.__cause__ or exc).__name__
    return Sample(started, ok, (time.perf_counter() - t0) * 1000, detail, backend, fallback)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


MAX_WINDOWS = 600


def windows(samples: list[Sample], width_s: float | None = None) -> list[dict[str, Any]]:
    """The samples per ``width_s`` window (default: a 60th of their span, 0.1 s to 10 s), from the first:
    start time, requests, share answered, p99 of those answered (a timeline small enough to keep,
    whatever the request rate)."""
    if not samples:
        return []
    first = min(s.at for s in samples)
    if width_s is None:
        width_s = min(10.0, max(0.1, round((max(s.at for s in samples) - first) / 60, 1)))
    buckets: dict[int, list[Sample]] = {}
    for s in samples:
        buckets.setdefault(int((s.at - first) // width_s), []).append(s)
    found = []
    for index in sorted(buckets)[:MAX_WINDOWS]:
        group = buckets[index]
        answered = [s.latency_ms for s in group if s.ok]
        found.append({"at": round(first + index * width_s, 3), "requests": len(group),
                      "success_ratio": round(len(answered) / len(group), 4),
                      "p99_ms": round(percentile(answered, 99), 3) if answered else None})
    return found


def summarize(samples: list[Sample]) -> dict[str, Any]:
    latencies = [s.latency_ms for s in samples if s.ok]
    errors: dict[str, int] = {}
    for s in samples:
        if not s.ok:
            errors[s.detail] = errors.get(s.detail, 0) + 1
    return {
        "requests": len(samples),
        "successes": sum(s.ok for s in samples),
        "success_ratio": (sum(s.ok for s in samples) / len(samples)) if samples else None,
        "p50_ms": round(percentile(latencies, 50), 3) if latencies else None,
        "p99_ms": round(percentile(latencies, 99), 3) if latencies else None,
        "errors": errors,
        "windows": windows(samples),
    }


class HttpSampler:
    """Samples a URL in a background thread until stopped.

    Example::

        with HttpSampler("http://127.0.0.1:5001/ping", interval_s=0.05) as sampler:
            ...  # break something
        print(summarize(sampler.samples))
    """

    def __init__(self, url: str, interval_s: float = 0.05, timeout_s: float = 2.0, expect_status: int | None = None,
                 body: bytes | None = None, clients: int = 1, fallback_header: str | None = None):
        self.url, self.interval_s, self.timeout_s, self.expect_status = url, interval_s, timeout_s, expect_status
        self.body, self.fallback_header = body, fallback_header
        self.samples: list[Sample] = []
        self._inflight: dict[str, float] = {}  # thread name -> wall-clock start of its unanswered request
        self._stop = threading.Event()
        # Several clients, so one slow request (a hanging backend) does not stop the others sampling.
        self._threads = [threading.Thread(target=self._run, name=f"mlchaos-http-probe-{i}", daemon=True)
                         for i in range(clients)]

    def _run(self) -> None:
        name = threading.current_thread().name
        while not self._stop.is_set():
            started = time.perf_counter()
            self._inflight[name] = time.time()
            sample = sample_once(self.url, self.timeout_s, self.expect_status, self.body, self.fallback_header)
            self.samples.append(sample)
            self._inflight.pop(name, None)
            self._stop.wait(max(0.0, self.interval_s - (time.perf_counter() - started)))

    def start(self) -> HttpSampler:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Sample]:
        """Stop sampling and wait for requests in flight; one still unanswered counts as a failure."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 1)
        now = time.time()
        for thread in self._threads:
            started = self._inflight.get(thread.name)
            if thread.is_alive() and started is not None:
                self.samples.append(Sample(started, False, (now - started) * 1000, "in-flight"))
        return sorted(self.samples, key=lambda s: s.at)

    def __enter__(self) -> HttpSampler:
        return self.start()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:  # stopping (the kill switch, an error): never wait for requests in flight
            self._stop.set()
            return
        self.stop()
