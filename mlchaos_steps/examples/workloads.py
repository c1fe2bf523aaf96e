"""Start and stop the example workloads (servers, trainer runs) for the demo, tests and benchmarks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mlchaos_steps.core.probes import NETWORK_ERRORS, http_request
from mlchaos_steps.core.processes import stop_process_group
from mlchaos_steps.core.waiting import wait_until


def _ephemeral_low() -> int:
    """The first port the kernel hands to outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free now, chosen below the kernel's ephemeral range: a server started a while later must
    not find it taken as the source port of some outgoing connection (the demo's deploy once failed with
    "Address already in use" that way, while the tests made thousands of connections)."""
    import random

    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(10000, max(10001, low - 64))  # noqa: S311 (not for security; room for blocks)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_block(n: int = 4) -> int:
    """The first of ``n`` consecutive free ports on 127.0.0.1 (the example DAGs use fixed offsets)."""
    for _ in range(100):
        base = free_port()
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no block of free ports on 127.0.0.1")


def venv_bin() -> Path:
    return Path(sys.executable).parent


@dataclass
class LocalService:
    """A process this module started in its own session, listening on 127.0.0.1:``port``."""

    port: int
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM its whole process group; SIGKILL what is still there after 10 s."""
        if self.process.poll() is None:
            stop_process_group(self.process.pid, grace_s=10)
            self.process.wait()


@dataclass
class ExampleServer(LocalService):
    """A running example server; ``healthy`` ones run under uvicorn's respawning supervisor."""

    app_label: str = ""
    healthy: bool = True
    workers: int = 2

    @property
    def selector(self) -> dict[str, object]:
        return {"cmdline": "mlchaos_steps[.]examples[.]serving", "env": {"MLCHAOS_APP": self.app_label}}

    def replica_pids(self) -> list[int]:
        """The live worker processes, found the way the pod-delete stage finds them."""
        from mlchaos_steps.targets import local

        roots = local.find_roots("mlchaos_steps[.]examples[.]serving", {"MLCHAOS_APP": self.app_label})
        return [r.pid for r in local.replicas_of([r.pid for r in roots])]


def start_server(healthy: bool = True, workers: int = 2, port: int | None = None,
                 log_path: Path | None = None, label: str | None = None,
                 env: dict[str, str] | None = None) -> ExampleServer:
    """Start the example server on 127.0.0.1 and wait until ``/ping`` answers and every worker is ready.
    ``env``: more environment (metrics, tracing, a slow respawn: see ``serving_telemetry``)."""
    port = port or free_port()
    label = label or f"mlchaos-example-{uuid.uuid4().hex[:8]}"
    if healthy:
        argv = [str(venv_bin() / "uvicorn"), "mlchaos_steps.examples.serving:app", "--host", "127.0.0.1",
                "--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    else:
        argv = [sys.executable, "-m", "mlchaos_steps.examples.serving", "--port", str(port),
                "--workers", str(workers)]
    env = {**os.environ, **(env or {}), "MLCHAOS_APP": label}
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = ExampleServer(port, process, label, healthy, workers)
    answered: set[int] = set()

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the example server exited with {process.returncode}: {argv}")
        return _every_worker_answered(server, answered)

    if not wait_until(ready, 60):
        server.stop()
        raise RuntimeError("the example server's workers did not all answer /ping within 60s")
    return server


def start_together(*starters: Callable[[], LocalService]) -> list[LocalService]:
    """Run each ``start_*`` call in a thread of its own (they mostly wait for a server to load) and return
    what they started, in order; when any fails, the others that started are stopped and the first
    error is raised."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(starters)) as pool:
        futures = [pool.submit(start) for start in starters]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        for future in futures:
            if future.exception() is None:
                future.result().stop()
        raise errors[0]
    return [f.result() for f in futures]


def _every_worker_answered(server: ExampleServer, answered: set[int]) -> bool:
    """Ready means every worker answered a request (attributed by the kernel), as pod-delete judges it."""
    from mlchaos_steps.targets import local

    pids = server.replica_pids()
    if len(pids) != server.workers:
        return False
    answered |= {a.pid for a in local.attributed_requests(server.url + "/ping", pids, 1.0, connections=2)
                 if a.ok and a.pid is not None}
    return set(pids) <= answered


def train(store: Path, steps: int = 500, checkpoint_every: int = 100) -> None:
    """Run the example trainer from scratch, writing checkpoints into ``store``."""
    subprocess.run(
        [sys.executable, "-m", "mlchaos_steps.examples.trainer", "--store", str(store), "--steps", str(steps),
         "--checkpoint-every", str(checkpoint_every)],
        check=True, stdout=subprocess.DEVNULL,
    )


def resume_command(store: Path, steps: int = 500, broken: bool = False, save: bool = False,
                   step_seconds: float = 0.0, mirror: Path | None = None) -> list[str]:
    """The argument list that resumes the example trainer (for a CheckpointWipe spec)."""
    argv = [sys.executable, "-m", "mlchaos_steps.examples.trainer", "--store", str(store), "--steps", str(steps),
            "--resume"]
    if broken:
        argv.append("--broken")
    if not save:
        argv.append("--no-save")
    if step_seconds:
        argv += ["--step-seconds", str(step_seconds)]
    if mirror is not None:
        argv += ["--mirror", str(mirror)]
    return argv


def integrity_command() -> list[str]:
    """The example trainer's own check of one checkpoint (a CheckpointWipe ``integrity.command``)."""
    return [sys.executable, "-m", "mlchaos_steps.examples.trainer", "--check", "{checkpoint}"]


@dataclass
class ModelServer(LocalService):
    """``mlflow models serve`` of one model URI on 127.0.0.1."""

    model_uri: str = ""


def start_model_server(model_uri: str, port: int | None = None, log_path: Path | None = None,
                       env: dict[str, str] | None = None) -> ModelServer:
    """``mlflow models serve --env-manager local``; waits for ``/ping`` (about 5 s)."""
    from mlchaos_steps.targets.mlflow import tracking_uri

    port = port or free_port()
    argv = [str(venv_bin() / "mlflow"), "models", "serve", "-m", model_uri, "-p", str(port), "-h", "127.0.0.1",
            "--env-manager", "local", "-w", "1"]
    full_env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(), **(env or {}),
                "PATH": f"{venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(argv, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = ModelServer(port, process, model_uri)
    _wait_for(server.url + "/ping", process, 90)
    return server


@dataclass
class CanaryRouter(LocalService):
    """The reference canary router."""


def start_router(stable: str, canary: str, canary_weight: int = 30, analysis: dict[str, object] | None = None,
                 model: str | None = None, version: str | None = None, canary_pid: int | None = None,
                 rollback: bool = True, log_path: Path | None = None, port: int | None = None) -> CanaryRouter:
    """The reference canary router (``mlchaos_steps.rollouts.router``); ``rollback=False`` runs no analysis."""
    port = port or free_port()
    argv = [sys.executable, "-m", "mlchaos_steps.rollouts.router", "--port", str(port), "--stable", stable,
            "--canary", canary, "--canary-weight", str(canary_weight),
            "--analysis", json.dumps(analysis or {"interval_s": 0.5, "count": 10_000})]
    if model and version:
        argv += ["--model", model, "--version", version]
    if canary_pid:
        argv += ["--canary-pid", str(canary_pid)]
    if not rollback:
        argv.append("--no-analysis")
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    router = CanaryRouter(port, process)
    _wait_for(router.url + "/mlchaos/state", process, 30)
    return router


def _wait_for(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    def answered() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            return http_request(url, 1.0)[0] == 200
        except NETWORK_ERRORS:
            return False

    if not wait_until(answered, timeout_s, interval_s=0.1):
        raise RuntimeError(f"{url} did not answer within {timeout_s:.0f}s")


@dataclass
class TrackingServer(LocalService):
    """``mlflow server`` on 127.0.0.1 with a SQLite backend and a local artifact root."""

    root: Path = Path()


def start_tracking_server(root: Path, port: int | None = None, serve_artifacts: bool = False) -> TrackingServer:
    """``serve_artifacts``: the default ``mlflow server`` set-up, artifacts proxied through the server
    (``mlflow-artifacts:`` URIs); otherwise clients write to the local artifact root themselves."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = [str(venv_bin() / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
    if serve_artifacts:
        argv += ["--serve-artifacts", "--artifacts-destination", (root / "artifacts").as_uri()]
    else:
        argv += ["--default-artifact-root", (root / "artifacts").as_uri(), "--no-serve-artifacts"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "PATH": f"{venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}"}
    process = subprocess.Popen(argv, env=env, stdout=open(root / "server.log", "ab"),  # noqa: SIM115
                               stderr=subprocess.STDOUT, start_new_session=True)
    server = TrackingServer(port, process, root)
    _wait_for(server.url + "/health", process, 90)
    return server
