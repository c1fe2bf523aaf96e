"""The dependencies the streaming and serving examples lean on, started on 127.0.0.1 for the tests, the
benchmarks and the demo: toxiproxy (the fault proxy, ``make build/bin/toxiproxy-server``), Redis
(Debian's ``redis-server``, the online feature store, no persistence) and the feature-reading example
server (:mod:`mlchaos_steps.examples.feature_serving`) behind a proxy in front of Redis.

Example::

    proxy = start_toxiproxy(Path("build/bin/toxiproxy-server"), tmp / "toxiproxy")
    store = start_redis(tmp / "redis")
    listen = Toxiproxy(proxy.url).create_proxy("feature-store", f"127.0.0.1:{store.port}")["listen"]
    server = start_feature_server(f"redis://{listen}/0", mode="healthy", root=tmp / "server")
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from mlchaos_steps.examples.observability import _start
from mlchaos_steps.examples.workloads import LocalService, _wait_for, free_port, venv_bin


def start_toxiproxy(binary: Path, root: Path) -> LocalService:
    """toxiproxy's API on 127.0.0.1 (``url``); its proxies listen where they are told (always 127.0.0.1)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen([str(binary.resolve()), "-host", "127.0.0.1", "-port", str(port)],
                               env={**os.environ, "LOG_LEVEL": "warn"}, stdout=open(root / "out.log", "ab"),  # noqa: SIM115
                               stderr=subprocess.STDOUT, start_new_session=True, cwd=root)
    service = LocalService(port, process)
    _wait_for(service.url + "/version", process, 30)
    return service


def start_redis(root: Path, binary: str = "/usr/bin/redis-server") -> LocalService:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = _start([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                      "--dir", str(root), "--protected-mode", "yes"], root, port)
    return LocalService(port, process)


def start_feature_server(store_url: str, mode: str, root: Path, timeout_s: float = 0.1) -> LocalService:
    """The feature-reading example server (one uvicorn worker) in ``mode`` (see feature_serving)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "MLCHAOS_FEATURE_STORE": store_url, "MLCHAOS_STORE_MODE": mode,
           "MLCHAOS_STORE_TIMEOUT_S": str(timeout_s)}
    argv = [str(venv_bin() / "uvicorn"), "mlchaos_steps.examples.feature_serving:app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(argv, env=env, stdout=open(root / "server.log", "ab"),  # noqa: SIM115
                               stderr=subprocess.STDOUT, start_new_session=True)
    service = LocalService(port, process)
    _wait_for(service.url + "/ping", process, 30)
    return service


def redis_cli(port: int, *args: str) -> list[str]:
    """The argument list of a ``redis-cli`` command against the store on ``port`` (for stage files)."""
    return ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args]



