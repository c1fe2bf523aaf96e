"""Small third-party systems the stages are tried against, written the way other projects write them:
a weighted canary router with its own abort logic (honest, or lying in the ways real ones do) and a
model backend that can hang. Plain ``http.server`` on 127.0.0.1, nothing of mlchaos inside."""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server:
    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, no access log: the base of the tests' own HTTP servers."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        return

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)


class Backend(_Server):
    """A model server that answers every request; with ``hang_over_rps`` N, a request arriving while
    more than N arrived in the last second hangs for ``hang_s`` (a server that falls over under load);
    with ``delay_s`` every answer takes that long (a server that answers, but slowly)."""

    def __init__(self, hang_over_rps: int | None = None, hang_s: float = 3.0, delay_s: float = 0.0):
        self.hang_over_rps, self.hang_s, self.delay_s = hang_over_rps, hang_s, delay_s
        self.arrivals: list[float] = []
        self.lock = threading.Lock()

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802
                self._body()
                owner: Backend = self.server.owner  # type: ignore[attr-defined]
                now = time.monotonic()
                with owner.lock:
                    owner.arrivals = [t for t in owner.arrivals if t > now - 1] + [now]
                    hang = owner.hang_over_rps is not None and len(owner.arrivals) > owner.hang_over_rps
                time.sleep(owner.hang_s if hang else owner.delay_s)
                self._send(200, b'{"predictions": [1]}')

            do_GET = do_POST  # noqa: N815

        super().__init__(Handler)


class Router(_Server):
    """A canary router with the admin API of the mlchaos contract and its own abort rule (abort after
    ``abort_after`` canary errors). The ways it can be wrong, each a knob:

    ``lie``: it reports the abort (Aborted, weight 0) but its data plane keeps the old split;
    ``stale_abort``: it reports an abort it recorded before the fault; ``never_abort``;
    ``all_to_canary``: it sends everything to the canary whatever its state says;
    ``no_header``: its answers do not say which backend served them.
    """

    def __init__(self, stable: str, canary: str, canary_weight: int = 30, abort_after: int = 3, *,
                 lie: bool = False, stale_abort: bool = False, never_abort: bool = False,
                 all_to_canary: bool = False, no_header: bool = False, argo_spelling: bool = False):
        self.backends = {"stable": stable, "canary": canary}
        self.state: dict[str, Any] = {"phase": "Progressing", "canary_weight": canary_weight,
                                      "stable_weight": 100 - canary_weight, "aborted_at": None}
        self.routing_weight = canary_weight
        self.fault: dict[str, Any] | None = None
        self.canary_errors, self.abort_after = 0, abort_after
        self.lie, self.stale_abort, self.never_abort = lie, stale_abort, never_abort
        self.all_to_canary, self.no_header, self.argo_spelling = all_to_canary, no_header, argo_spelling
        self.started_at, self.state_reads = time.time(), 0
        self.rng = random.Random(7)
        self.lock = threading.Lock()

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802
                owner: Router = self.server.owner  # type: ignore[attr-defined]
                if self.path == "/mlchaos/state":
                    self._send(200, json.dumps(owner.read_state()).encode())
                else:
                    self._route(b"")

            def do_POST(self) -> None:  # noqa: N802
                owner: Router = self.server.owner  # type: ignore[attr-defined]
                body = self._body()
                if self.path == "/mlchaos/fault":
                    owner.fault = json.loads(body or b"{}")
                    self._send(200, body)
                else:
                    self._route(body)

            def do_DELETE(self) -> None:  # noqa: N802
                owner: Router = self.server.owner  # type: ignore[attr-defined]
                owner.fault = None
                self._send(200, b'{"fault": null}')

            def _route(self, body: bytes) -> None:
                owner: Router = self.server.owner  # type: ignore[attr-defined]
                backend, status, payload = owner.forward(self.command, self.path, body)
                header = "X-MLChaos-Backend" if owner.argo_spelling else "x-mlchaos-backend"
                value = backend.capitalize() if owner.argo_spelling else backend
                self._send(status, payload, {} if owner.no_header else {header: value})

        super().__init__(Handler)

    def read_state(self) -> dict[str, Any]:
        with self.lock:
            self.state_reads += 1
            if self.stale_abort and self.state_reads > 1:  # the first read (the stage's snapshot) sees it live
                return {**self.state, "phase": "Aborted", "canary_weight": 0, "stable_weight": 100,
                        "aborted_at": self.started_at}
            if self.argo_spelling:  # how an Argo Rollouts bridge writes it: strings, ISO times, capitals
                from datetime import UTC, datetime

                aborted = self.state["aborted_at"]
                iso = datetime.fromtimestamp(aborted, UTC).isoformat().replace("+00:00", "Z") if aborted else None
                return {**self.state, "phase": self.state["phase"].lower(),
                        "canary_weight": str(self.state["canary_weight"]), "aborted_at": iso}
            return dict(self.state)

    def forward(self, method: str, path: str, body: bytes) -> tuple[str, int, bytes]:
        with self.lock:
            weight = 100 if self.all_to_canary else self.routing_weight
            backend = "canary" if self.rng.uniform(0, 100) < weight else "stable"
        if backend == "canary" and self.fault and self.fault.get("kind") == "errors":
            with self.lock:
                self.canary_errors += 1
                if self.canary_errors >= self.abort_after and not self.never_abort \
                        and self.state["phase"] == "Progressing":
                    self.state.update(phase="Aborted", canary_weight=0, stable_weight=100, aborted_at=time.time())
                    if not self.lie:
                        self.routing_weight = 0
            return backend, 503, b'{"error": "canary fault"}'
        host, port = self.backends[backend].removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.request(method, path, body=body or None, headers={"content-type": "application/json"})
            response = conn.getresponse()
            return backend, response.status, response.read()
        except OSError:
            return backend, 502, b'{"error": "backend unreachable"}'
        finally:
            conn.close()


def start_gunicorn(tmp_path: Any, mode: str = "healthy", workers: int = 2, sidecar: bool = False,
                   env: dict[str, str] | None = None) -> Any:
    """gunicorn (sync workers, setproctitle installed) serving ``apps/wsgi_model_app.py``; see its doc."""
    import os
    import subprocess
    import sys
    import uuid
    from pathlib import Path

    from mlchaos_steps.core.probes import http_request
    from mlchaos_steps.examples.workloads import LocalService, free_port

    name = f"mlchaos-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    apps = Path(__file__).parent / "apps"
    argv = [str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
            "--name", name, "--pythonpath", str(apps), "--graceful-timeout", "1", "--log-level", "warning"]
    if sidecar:
        argv += ["--config", str(apps / "gunicorn_sidecar.conf.py")]
    full_env = {**os.environ, "APP_STARTS_FILE": str(tmp_path / f"{name}.starts"), "APP_WORKERS": str(workers),
                "APP_REPLACEMENT_MODE": mode, **(env or {})}
    process = subprocess.Popen([*argv, "wsgi_model_app:app"], env=full_env, stdout=subprocess.DEVNULL,
                               stderr=open(tmp_path / f"{name}.log", "ab"), start_new_session=True)  # noqa: SIM115
    service = LocalService(port, process)
    service.name = name  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if http_request(service.url + "/ping", 1.0)[0] == 200 and _children(process.pid) >= workers + sidecar:
                return service
        except OSError:
            pass
        time.sleep(0.1)
    service.stop()
    raise RuntimeError("gunicorn did not come up")


def _children(pid: int) -> int:
    import psutil

    try:
        return len(psutil.Process(pid).children())
    except psutil.Error:
        return 0


class CuttingProxy:
    """A TCP proxy in front of the tracking server that lets ``allow`` HTTP requests through, then cuts
    every connection and refuses new ones: MLflow dropping in the middle of a run."""

    def __init__(self, upstream_port: int, allow: int):
        self.upstream_port, self.allow, self.seen, self.cut = upstream_port, allow, 0, False
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.lock = threading.Lock()
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if self.cut:
                conn.close()
                continue
            up = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.socks += [conn, up]
            threading.Thread(target=self._pipe, args=(conn, up, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, conn, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, counting: bool) -> None:
        tail = b""
        try:
            while data := src.recv(65536):
                if counting:
                    with self.lock:
                        self.seen += (tail + data).count(b" HTTP/1.1\r\n")
                        tail = data[-16:]
                        if self.seen > self.allow:
                            self._cut()
                            return
                dst.sendall(data)
        except OSError:
            return

    def _cut(self) -> None:
        self.cut = True
        for sock in self.socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        self._cut()
        self.server.close()
