"""Local replicas: live processes found with psutil, the embedded stand-in for Kubernetes pods.

A selector matches processes by command line (a regex searched in the joined argument list) and by
environment variables. The matched processes that have no matched ancestor are the workload's roots.
A root's replicas are its worker descendants (uvicorn, gunicorn and ``mlflow models serve`` run a
supervisor that respawns killed workers); a root without children is a replica itself.

Readiness of a replica, strongest first, chosen by what the original replicas showed:
``event-loop``: its epoll set watches a listening socket, i.e. it accepts requests (asyncio servers);
``listening``: it holds a listening socket; ``alive``: it runs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import psutil

# Helper processes of a supervisor that are not replicas.
NOT_REPLICAS = re.compile(r"multiprocessing\.resource_tracker|multiprocessing\.semaphore_tracker|forkserver")


@dataclass(frozen=True)
class Replica:
    pid: int
    create_time: float
    root_pid: int
    cmdline: str

    def key(self) -> tuple[int, float]:
        return (self.pid, self.create_time)


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def matches(proc: psutil.Process, cmdline: re.Pattern[str] | None, env: dict[str, str]) -> bool:
    try:
        if cmdline is not None and not cmdline.search(_cmdline(proc)):
            return False
        if env:
            environ = proc.environ()
            if any(environ.get(k) != v for k, v in env.items()):
                return False
        return True
    except psutil.Error:
        return False


def find_roots(cmdline: str | None, env: dict[str, str]) -> list[psutil.Process]:
    """Matched processes without a matched ancestor, excluding this process and its ancestors."""
    pattern = re.compile(cmdline) if cmdline else None
    me = psutil.Process()
    mine = {me.pid, *(p.pid for p in me.parents())}
    matched = {}
    for proc in psutil.process_iter(["pid"]):
        if proc.pid in mine:
            continue
        if matches(proc, pattern, env):
            matched[proc.pid] = proc
    roots = []
    for proc in matched.values():
        try:
            if not any(parent.pid in matched for parent in proc.parents()):
                roots.append(proc)
        except psutil.Error:
            continue
    return sorted(roots, key=lambda p: p.pid)


def replicas_of(root_pids: list[int]) -> list[Replica]:
    """The live replicas under the given roots (see module doc)."""
    found = []
    for root_pid in root_pids:
        try:
            root = psutil.Process(root_pid)
            descendants = root.children(recursive=True)
        except psutil.Error:
            continue
        workers = []
        for proc in descendants:
            try:
                if proc.children() or NOT_REPLICAS.search(_cmdline(proc)):
                    continue
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                workers.append(Replica(proc.pid, proc.create_time(), root_pid, _cmdline(proc)))
            except psutil.Error:
                continue
        if not descendants:
            try:
                workers.append(Replica(root.pid, root.create_time(), root_pid, _cmdline(root)))
            except psutil.Error:
                pass
        found.extend(workers)
    return sorted(found, key=lambda r: r.pid)


def listening_inodes() -> set[int]:
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6", "/proc/net/unix"):
        try:
            with open(table) as handle:
                next(handle)
                for line in handle:
                    cols = line.split()
                    if table.endswith("unix"):
                        if len(cols) >= 7 and cols[5] == "01" and cols[3] == "00010000":  # ACC flag: listening
                            inodes.add(int(cols[6]))
                    elif len(cols) >= 10 and cols[3] == "0A":
                        inodes.add(int(cols[9]))
        except OSError:
            continue
    return inodes


def readiness(pid: int, listening: set[int] | None = None) -> str:
    """How ready a process is: ``event-loop``, ``listening``, ``alive`` or ``gone``."""
    listening = listening_inodes() if listening is None else listening
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return "gone"
    held: dict[int, int] = {}
    epolls = []
    for fd in fds:
        try:
            link = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inode = int(link[8:-1])
            if inode in listening:
                held[int(fd)] = inode
        elif link == "anon_inode:[eventpoll]":
            epolls.append(fd)
    if not held:
        return "alive"
    for fd in epolls:
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as handle:
                for line in handle:
                    # "tfd:  3 events: 19 data: 3  pos:0 ino:1262 sdev:9": fd 3, inode 0x1262
                    if not line.startswith("tfd:"):
                        continue
                    cols = line.split()
                    inode = next((int(c[4:], 16) for c in cols if c.startswith("ino:")), None)
                    if held.get(int(cols[1])) == inode:
                        return "event-loop"
        except OSError:
            continue
    return "listening"


READINESS_ORDER = {"gone": 0, "alive": 1, "listening": 2, "event-loop": 3}


def is_ready(pid: int, required: str, listening: set[int] | None = None) -> bool:
    return READINESS_ORDER[readiness(pid, listening)] >= READINESS_ORDER[required]


def describe(replicas: list[Replica]) -> list[dict[str, Any]]:
    return [{"pid": r.pid, "root_pid": r.root_pid, "cmdline": r.cmdline[:200]} for r in replicas]
