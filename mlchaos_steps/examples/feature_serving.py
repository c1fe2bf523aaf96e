"""An example model server that reads its features from an online store (Redis) per request, with a
fallback: the target of dependency-latency.

``POST /invocations {"entity": "e1"}`` reads hash ``features:<entity>`` from ``MLCHAOS_FEATURE_STORE``
(a ``redis://`` URL, usually a toxiproxy in front of Redis) and answers ``{"entity", "features",
"prediction", "fallback"}`` with header ``x-mlchaos-fallback: 1`` when it could not read the store and
answered from its last copy of the entity's features (or defaults). ``MLCHAOS_STORE_MODE`` picks the
behaviour; every mode but ``healthy`` is broken on purpose:

- ``healthy``: the store read times out after ``MLCHAOS_STORE_TIMEOUT_S`` (0.1 s), answers fall back
  while the store is slow or gone, and read the store again on the next request.
- ``no-timeout``: no time-out on the store: requests wait as long as the store does (or hang).
- ``fallback-errors``: when the store fails, answers 503 instead of falling back.
- ``sticky-fallback``: after the first failure it never reads the store again (fallback forever).
- ``stale-cache``: reads each entity once and answers from that copy forever (fast, never marked).

Run: ``MLCHAOS_FEATURE_STORE=redis://127.0.0.1:6380/0 uvicorn mlchaos_steps.examples.feature_serving:app``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from mlchaos_steps.asgi import lifespan, read_body, respond

DEFAULTS = {"tenure": "12", "monthly": "50.0"}
FALLBACK_HEADER = b"x-mlchaos-fallback"


class FeatureReader:
    def __init__(self) -> None:
        self.mode = os.environ.get("MLCHAOS_STORE_MODE", "healthy")
        self.cache: dict[str, dict[str, str]] = {}
        self.sticky = False
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            import redis.asyncio as aioredis

            timeout = None if self.mode == "no-timeout" else float(os.environ.get("MLCHAOS_STORE_TIMEOUT_S", "0.1"))
            self._client = aioredis.Redis.from_url(os.environ["MLCHAOS_FEATURE_STORE"], socket_timeout=timeout,
                                                   socket_connect_timeout=timeout, decode_responses=True,
                                                   retry_on_timeout=False)
        return self._client

    async def read(self, entity: str) -> tuple[dict[str, str], bool]:
        """(features, fallback?): raises when the mode answers errors instead of falling back."""
        if self.mode == "stale-cache" and entity in self.cache:
            return self.cache[entity], False
        if self.sticky:
            return self.cache.get(entity, DEFAULTS), True
        try:
            features = await self.client().hgetall(f"features:{entity}")
        except Exception:
            if self.mode == "fallback-errors":
                raise
            self.sticky = self.mode == "sticky-fallback"
            self._client = None  # a fresh connection next time: the old one may be mid-reply
            return self.cache.get(entity, DEFAULTS), True
        self.cache[entity] = features or DEFAULTS
        return self.cache[entity], False


_reader = FeatureReader()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    body = await read_body(receive)
    if scope["path"] == "/ping":
        await respond(send, 200, b'{"status": "ok"}', [])
        return
    if scope["path"] != "/invocations":
        await respond(send, 404, b'{"error": "not found"}', [])
        return
    try:
        entity = str(json.loads(body or b"{}").get("entity", "default"))
    except (ValueError, AttributeError):
        await respond(send, 400, b'{"error": "send {\\"entity\\": \\"...\\"}"}', [])
        return
    try:
        features, fallback = await _reader.read(entity)
    except Exception as exc:
        await respond(send, 503, json.dumps({"error": f"feature store: {type(exc).__name__}"}).encode(), [])
        return
    try:
        tenure = float(features.get("tenure", DEFAULTS["tenure"]))
    except ValueError:
        tenure = float(DEFAULTS["tenure"])
    payload = {"entity": entity, "features": features, "prediction": int(tenure < 6), "fallback": fallback}
    await respond(send, 200, json.dumps(payload).encode(), [(FALLBACK_HEADER, b"1" if fallback else b"0")])
