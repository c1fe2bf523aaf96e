"""Local replicas: live processes found with psutil, the embedded stand-in for Kubernetes pods.

A selector matches processes by command line (a regex searched in the joined argument list) and by
environment variables. The matched processes that have no matched ancestor are the workload's roots.
A root's replicas are its worker descendants (uvicorn, gunicorn and ``mlflow models serve`` run a
supervisor that respawns killed workers); a root without children is a replica itself.

When the stage has an HTTP probe on a port the workload listens on, its replicas are the worker
descendants that hold that listening socket; other children (log shippers, metrics sidecars) are not
replicas. A replacement is ready when it has *answered* a request: the probe connects, waits until the
kernel shows which process accepted the connection (the server end of the socket appears in that
process's fd table), then sends the request. Holding the socket proves nothing: every child of a
pre-fork server inherits it at fork, also one that then hangs loading its model.

Env selectors read ``/proc/<pid>/environ``. Processes that set their title with setproctitle (gunicorn,
celery, uwsgi...) overwrite that memory: their environment reads empty, and only cmdline selectors
(matching the new title, e.g. ``gunicorn: master``) can find them.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import psutil

from mlchaos_steps.errors import SafetyError

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


def describe(replicas: list[Replica]) -> list[dict[str, Any]]:
    return [{"pid": r.pid, "root_pid": r.root_pid, "cmdline": r.cmdline[:200]} for r in replicas]


def _tcp_tables() -> list[str]:
    lines: list[str] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                lines += handle.read().splitlines()[1:]
        except OSError:
            continue
    return lines


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


def listening_inodes_for_port(port: int) -> set[int]:
    """Inodes of the sockets listening on ``port`` (several with SO_REUSEPORT)."""
    found = set()
    for line in _tcp_tables():
        cols = line.split()
        if len(cols) >= 10 and cols[3] == "0A" and _port(cols[1]) == port:
            found.add(int(cols[9]))
    return found


def socket_inodes(pid: int) -> set[int]:
    """Inodes of every socket the process holds."""
    found = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return found
    for fd in fds:
        try:
            link = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            found.add(int(link[8:-1]))
    return found


def holders(pids: list[int], inodes: set[int]) -> set[int]:
    """Which of ``pids`` hold one of ``inodes``."""
    return {pid for pid in pids if socket_inodes(pid) & inodes}


def _server_end_inode(sock: socket.socket) -> int | None:
    """Inode of the accepted (server) end of our connection, 0 while it waits in the accept queue, None
    when the kernel cannot say. One sock_diag lookup by the connection's 4-tuple (about 25 us), which
    stays exact and cheap however many sockets the machine has; ``/proc/net/tcp`` is the fallback."""
    import struct

    client_ip, client_port = sock.getsockname()[:2]
    server_ip, server_port = sock.getpeername()[:2]
    family = sock.family
    def address(ip: str) -> bytes:
        return socket.inet_pton(family, ip).ljust(16, b"\0")

    request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF)
    request += struct.pack("!HH", server_port, client_port) + address(server_ip) + address(client_ip)
    request += struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)  # any interface, no cookie
    header = struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as netlink:
            netlink.send(header + request)
            data = netlink.recv(8192)
    except OSError:
        return _server_end_from_proc(server_port, client_port)
    if len(data) < 16 + 72 or struct.unpack_from("=H", data, 4)[0] != SOCK_DIAG_BY_FAMILY:
        return 0  # NLMSG_ERROR: not in the tables (yet)
    return int(struct.unpack_from("=I", data, 16 + 68)[0])  # inet_diag_msg.idiag_inode


SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, NETLINK_SOCK_DIAG = 20, 1, 4


def _server_end_from_proc(server_port: int, client_port: int) -> int:
    for line in _tcp_tables():
        cols = line.split()
        if len(cols) >= 10 and cols[3] == "01" and _port(cols[1]) == server_port and _port(cols[2]) == client_port:
            return int(cols[9])
    return 0


@dataclass(frozen=True)
class Answer:
    """One request whose answering process is known from the kernel, not from the answer."""

    pid: int | None  # the process that accepted the connection; None when it was not seen
    ok: bool
    detail: str
    at: float


def attributed_requests(url: str, candidates: list[int], timeout_s: float, expect_status: int | None = None,
                        connections: int = 4) -> list[Answer]:
    """Open ``connections`` connections at once; as soon as the kernel shows which of ``candidates``
    accepted one (the server end appears in the acceptor's fd table at ``accept()``, before any byte of
    the request is sent), send the request on it and read the answer. Several at once, so a new replica
    gets its share of them quickly; one by one as they are accepted, so busy sync workers never stall."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    started = time.time()
    deadline = time.monotonic() + timeout_s
    answers: list[Answer] = []
    socks: dict[int, socket.socket] = {}
    for _ in range(connections):
        try:
            sock = socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=timeout_s)
        except OSError as exc:
            answers.append(Answer(None, False, type(exc).__name__, started))
            continue
        socks[sock.getsockname()[1]] = sock
    try:
        while socks and time.monotonic() < deadline:
            accepted = {client: inode for client, sock in socks.items() if (inode := _server_end_inode(sock))}
            if not accepted:
                time.sleep(0.001)
                continue
            held = {pid: socket_inodes(pid) for pid in candidates}
            for client_port, inode in accepted.items():
                pid = next((p for p, inodes in held.items() if inode in inodes), None)
                answers.append(_ask(socks.pop(client_port), parts, timeout_s, expect_status, pid, started))
        answers += [Answer(None, False, "not accepted", started) for _ in socks]
    finally:
        for sock in socks.values():
            sock.close()
    return answers


def _ask(sock: socket.socket, parts: Any, timeout_s: float, expect_status: int | None, pid: int | None,
         started: float) -> Answer:
    try:
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout_s)
        if parts.scheme == "https":  # the handshake comes after accept(): attribution is already done
            import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
        conn.sock = sock
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        response.read()
        ok = response.status == expect_status if expect_status else 200 <= response.status < 400
        return Answer(pid, ok, str(response.status), started)
    except (OSError, http.client.HTTPException) as exc:
        return Answer(pid, False, type(exc).__name__, started)
    finally:
        sock.close()


def env_blind_processes(cmdline: str | None) -> list[int]:
    """Processes (matching ``cmdline`` when given) whose environment reads empty: setproctitle wiped it."""
    pattern = re.compile(cmdline) if cmdline else None
    blind = []
    for proc in psutil.process_iter(["pid"]):
        try:
            argv = _cmdline(proc)
            if not argv or (pattern is not None and not pattern.search(argv)):
                continue
            if not proc.environ():
                blind.append(proc.pid)
        except psutil.Error:
            continue
    return blind


def describe_processes(procs: list[psutil.Process]) -> list[dict[str, Any]]:
    out = []
    for proc in procs:
        try:
            out.append({"pid": proc.pid, "ppid": proc.ppid(), "cmdline": _cmdline(proc)[:200]})
        except psutil.Error:
            continue
    return out


def check_one_workload(roots: list[psutil.Process], field: str) -> None:
    """Refuse a selector whose matches span unrelated process trees: the roots of one workload share
    their parent (one supervisor, one launcher) and their executable."""
    if len(roots) < 2:
        return
    identities = set()
    for root in roots:
        try:
            identities.add((root.ppid(), root.exe()))
        except psutil.Error:
            identities.add((root.pid, ""))
    if len(identities) > 1:
        shown = "; ".join(f"{p['pid']} (parent {p['ppid']}): {p['cmdline'][:80]}"
                          for p in describe_processes(roots)[:5])
        more = "; ..." if len(roots) > 5 else ""
        raise SafetyError(field, f"matches {len(roots)} unrelated process trees ({shown}{more}): a stage breaks one "
                                 "workload; narrow cmdline/env until only yours matches")
