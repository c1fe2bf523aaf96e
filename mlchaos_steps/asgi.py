"""The few ASGI pieces the example server and the canary router share (no framework needed)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any


async def lifespan(receive: Any, send: Any, on_startup: Callable[[], Awaitable[None]] | None = None) -> None:
    """Answer the lifespan protocol until shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if on_startup is not None:
                await on_startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def respond(send: Any, status: int, payload: bytes, headers: list[tuple[bytes, bytes]],
                  content_type: bytes = b"application/json") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), *headers]})
    await send({"type": "http.response.body", "body": payload})
