"""Processes the stages start or break: identity, stopping a process group, commands with deadlines.

A command's output is read by threads, so nothing ever blocks on a pipe that a grandchild (a logging
helper, a daemonised worker) keeps open: the command is judged on its own exit, and the leftovers of
its process group are stopped when it ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from mlchaos_steps.core import tracecontext
from mlchaos_steps.core.waiting import wait_until

# SIGTERM first, then SIGKILL this soon: the kill switch must act within a second, whatever the
# command does with SIGTERM.
TERM_GRACE_S = 0.3
READ_GRACE_S = 0.5  # after the command exits, how long its pipes may still deliver output
POLL_S = 0.05


def same_process(pid: int, created: float | None) -> bool:
    """Whether ``pid`` is still the process that started at ``created`` (pid reuse checked), and not a zombie."""
    try:
        proc = psutil.Process(pid)
        if created is not None and abs(proc.create_time() - created) >= 0.5:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop_process_group(pgid: int, grace_s: float = TERM_GRACE_S) -> bool:
    """SIGTERM the whole group, SIGKILL what is left after ``grace_s`` (at once when 0); True when
    something was signalled."""
    try:
        os.killpg(pgid, signal.SIGKILL if grace_s <= 0 else signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    if grace_s <= 0:
        return True
    if wait_until(lambda: not _group_alive(pgid), grace_s, interval_s=0.01):
        return True
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return True


def _group_alive(pgid: int) -> bool:
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False


@dataclass
class CommandResult:
    """What a command did: its own exit code (None when it was stopped), its output, and why it stopped."""

    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    seconds: float = 0.0
    leftovers_stopped: bool = False


class _Reader(threading.Thread):
    def __init__(self, stream: object):
        super().__init__(daemon=True)
        self.stream = stream
        self.chunks: list[bytes] = []

    def run(self) -> None:
        try:
            while chunk := os.read(self.stream.fileno(), 65536):  # type: ignore[attr-defined]
                self.chunks.append(chunk)
        except (OSError, ValueError):
            return

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", errors="replace")


def run_command(argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
                timeout_s: float, on_tick: Callable[[], None] | None = None,
                on_start: Callable[[int], None] | None = None) -> CommandResult:
    """Run ``argv`` in its own session; return when *it* exits, it times out, or ``on_tick`` raises.

    ``on_tick`` runs every 50 ms (the kill switch check); if it raises, the process group is stopped
    and the exception propagates. ``on_start`` gets the pid (= process group id) as soon as it exists.
    """
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=tracecontext.child_env(env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    readers = [_Reader(proc.stdout), _Reader(proc.stderr)]
    for reader in readers:
        reader.start()
    timed_out, aborted = False, True  # aborted until the wait ends normally (kill switch, our own SIGTERM)
    try:
        if on_start is not None:
            on_start(proc.pid)
        timed_out = _wait(proc, started + timeout_s, on_tick)
        aborted = False
    finally:
        # Whatever happened (exit, time-out, kill switch, SIGTERM of our own process), nothing of the
        # command's group may keep running: it would write into what restore is about to put back.
        # When the stage is being stopped, not even a SIGTERM handler of the command gets to write.
        leftovers = _reap(proc, readers, grace_s=0 if aborted else TERM_GRACE_S)
    return CommandResult(None if timed_out else proc.returncode, readers[0].text(), readers[1].text(), timed_out,
                         round(time.monotonic() - started, 3), leftovers)


def _wait(proc: subprocess.Popen[bytes], deadline: float, on_tick: Callable[[], None] | None) -> bool:
    """Wait for the process to exit, ticking; True when the deadline passed first."""
    while proc.poll() is None:
        if on_tick is not None:
            on_tick()
        if time.monotonic() > deadline:
            return True
        try:
            proc.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            pass
    return False


def _reap(proc: subprocess.Popen[bytes], readers: list[_Reader], grace_s: float) -> bool:
    """Stop the command's process group, collect its output; True when something was left to stop."""
    leftovers = stop_process_group(proc.pid, grace_s=grace_s)
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent; the kernel reaps it
        pass
    for reader in readers:
        reader.join(timeout=READ_GRACE_S)
    for stream in (proc.stdout, proc.stderr):
        try:
            stream.close()  # type: ignore[union-attr]
        except OSError:
            pass
    return leftovers
