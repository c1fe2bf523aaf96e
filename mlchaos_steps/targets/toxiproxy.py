"""Toxiproxy (v2.12 HTTP API) as a fault target: the proxy in front of a dependency (a feature store, a
Kafka broker), and the toxics a stage adds to it.

A small client of our own over httpx rather than ``toxiproxy-python`` (0.1.1, 2019: Python 2 era, pulls
``requests`` and ``future``, no toxic update, a 500 surfaces as a ``KeyError``): measured side by side,
the same import cost, and this one raises on every error status and never lets a proxy bind to all
interfaces. Toxics apply to connections already open when they are added; removing a ``timeout`` toxic
closes the connections it held; a disabled proxy closes its listener and every connection.

Example::

    proxies = Toxiproxy("http://127.0.0.1:8474")
    proxies.add_toxic("feature-store", "latency", {"latency": 300, "jitter": 50}, name="mlchaos-run-1")
    proxies.remove_toxic("feature-store", "mlchaos-run-1")
"""

from __future__ import annotations

from typing import Any

import httpx

from mlchaos_steps.errors import InfrastructureError

TOXIC_TYPES = ("latency", "bandwidth", "timeout", "reset_peer", "slow_close", "limit_data", "slicer")


class ToxiproxyError(InfrastructureError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"toxiproxy answered {status}: {message}")
        self.status, self.message = status, message


class Toxiproxy:
    def __init__(self, base_url: str, timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout_s,
                                    headers={"User-Agent": "mlchaos-steps"})  # "Mozilla/..." is refused

    def close(self) -> None:
        self._client.close()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise InfrastructureError(f"toxiproxy at {self.base_url} did not answer: {exc}") from exc
        if response.status_code >= 400:  # errors are {"error", "status"}, sent as text/plain
            try:
                message = str(response.json()["error"])
            except (ValueError, KeyError, TypeError):
                message = response.text.strip()
            raise ToxiproxyError(response.status_code, message)
        return None if response.status_code == 204 else response.json()

    def version(self) -> str:
        return str(self._request("GET", "/version")["version"])

    def proxies(self) -> dict[str, Any]:
        return dict(self._request("GET", "/proxies"))

    def proxy(self, name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/proxies/{name}"))

    def create_proxy(self, name: str, upstream: str, listen: str = "127.0.0.1:0") -> dict[str, Any]:
        """``listen`` is always given: left out, the server binds every interface."""
        return dict(self._request("POST", "/proxies", {"name": name, "listen": listen, "upstream": upstream,
                                                       "enabled": True}))

    def delete_proxy(self, name: str) -> None:
        self._request("DELETE", f"/proxies/{name}")

    def set_enabled(self, name: str, enabled: bool) -> dict[str, Any]:
        return dict(self._request("PATCH", f"/proxies/{name}", {"enabled": enabled}))

    def toxics(self, proxy: str) -> list[dict[str, Any]]:
        return list(self._request("GET", f"/proxies/{proxy}/toxics"))

    def add_toxic(self, proxy: str, kind: str, attributes: dict[str, int], *, name: str,
                  stream: str = "downstream", toxicity: float = 1.0) -> dict[str, Any]:
        return dict(self._request("POST", f"/proxies/{proxy}/toxics", {
            "name": name, "type": kind, "stream": stream, "toxicity": toxicity, "attributes": attributes}))

    def remove_toxic(self, proxy: str, name: str) -> bool:
        """Remove a toxic; False when it was not there (already removed: restore is idempotent)."""
        try:
            self._request("DELETE", f"/proxies/{proxy}/toxics/{name}")
        except ToxiproxyError as exc:
            if exc.status == 404 and "toxic" in exc.message:
                return False
            raise
        return True
