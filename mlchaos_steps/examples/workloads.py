"""Start and stop the example workloads (servers, trainer runs) for the demo, tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mlchaos_steps.engine.probes import http_request


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def venv_bin() -> Path:
    return Path(sys.executable).parent


@dataclass
class ExampleServer:
    """A running example server; ``healthy`` ones run under uvicorn's respawning supervisor."""

    port: int
    app_label: str
    healthy: bool
    workers: int
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def selector(self) -> dict[str, object]:
        return {"cmdline": "mlchaos_steps[.]examples[.]serving", "env": {"MLCHAOS_APP": self.app_label}}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_server(healthy: bool = True, workers: int = 2, port: int | None = None,
                 log_path: Path | None = None, label: str | None = None) -> ExampleServer:
    """Start the example server on 127.0.0.1 and wait until ``/ping`` answers and every worker is ready."""
    port = port or free_port()
    label = label or f"mlchaos-example-{uuid.uuid4().hex[:8]}"
    if healthy:
        argv = [str(venv_bin() / "uvicorn"), "mlchaos_steps.examples.serving:app", "--host", "127.0.0.1",
                "--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    else:
        argv = [sys.executable, "-m", "mlchaos_steps.examples.serving", "--port", str(port),
                "--workers", str(workers)]
    env = {**os.environ, "MLCHAOS_APP": label}
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = ExampleServer(port, label, healthy, workers, process)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the example server exited with {process.returncode}: {argv}")
        try:
            if http_request(server.url + "/ping", 1.0)[0] == 200 and _workers_up(server):
                return server
        except OSError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError("the example server did not answer /ping within 60s")


def _workers_up(server: ExampleServer) -> bool:
    from mlchaos_steps.targets import local

    roots = local.find_roots(str(server.selector["cmdline"]), dict(server.selector["env"]))  # type: ignore[arg-type]
    replicas = local.replicas_of([r.pid for r in roots])
    return len(replicas) == server.workers and all(local.is_ready(r.pid, "event-loop") for r in replicas)


def train(store: Path, steps: int = 500, checkpoint_every: int = 100) -> None:
    """Run the example trainer from scratch, writing checkpoints into ``store``."""
    subprocess.run(
        [sys.executable, "-m", "mlchaos_steps.examples.trainer", "--store", str(store), "--steps", str(steps),
         "--checkpoint-every", str(checkpoint_every)],
        check=True, stdout=subprocess.DEVNULL,
    )


def resume_command(store: Path, steps: int = 500, broken: bool = False, save: bool = False,
                   step_seconds: float = 0.0) -> list[str]:
    """The argument list that resumes the example trainer (for a CheckpointWipe spec)."""
    argv = [sys.executable, "-m", "mlchaos_steps.examples.trainer", "--store", str(store), "--steps", str(steps),
            "--resume"]
    if broken:
        argv.append("--broken")
    if not save:
        argv.append("--no-save")
    if step_seconds:
        argv += ["--step-seconds", str(step_seconds)]
    return argv
