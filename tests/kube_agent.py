"""Simulated kubelets for the test control plane, as kwok does it: a small agent of ours (kwok's module
would add a second large Go build for what fits in this file). It registers fake Nodes, binds Pending
pods to them (there is no scheduler), moves them to Running and Ready after ``ready_after_s``, and
finishes deletions the way a kubelet does once the containers stopped (delete with grace 0).

Pods labelled ``mlchaos.test/run: "true"`` really run: the agent starts the first container's ``command``
and ``args`` (with its ``env`` values, ``$(VAR)`` expanded) as a local process in a session of its own,
with an address of its own (``POD_IP``, in 127.0.0.0/8, also the pod's ``status.podIP``), Running
while it lives, Ready once started (or, with an ``httpGet`` readiness probe, while
``http://<pod IP>:<port><path>`` answers 200), Succeeded or Failed with its exit code when it ends,
and stopped (SIGTERM, then SIGKILL after the grace period) when the pod is deleted. Its output is the
container's log: the agent serves ``/containerLogs/...`` over HTTPS on the port its Nodes advertise, so
``kubectl logs`` and the client's ``read_namespaced_pod_log`` go through the API server as with a real
kubelet.

Knobs for the broken cases: the pod labels ``mlchaos.test/never-ready: "true"`` (Running, never Ready)
and ``mlchaos.test/crash: "true"`` (the container exits: phase Failed); and the namespace label
``mlchaos.test/starts-hang: "true"``: pods that start in that namespace from then on never become Ready
(replacements that hang). It runs as its own process (``python tests/kube_agent.py KUBECONFIG``), shared
by every test worker, like the control plane.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

NEVER_READY = "mlchaos.test/never-ready"
CRASH = "mlchaos.test/crash"
STARTS_HANG = "mlchaos.test/starts-hang"
RUN = "mlchaos.test/run"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NodeAgent:
    def __init__(self, api_client: Any, nodes: int = 2, ready_after_s: float = 0.3):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.nodes = [f"sim-node-{i}" for i in range(nodes)]
        self.ready_after_s = ready_after_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kube-agent", daemon=True)
        self._next = 0
        self.errors: list[str] = []
        self._starting: set[str] = set()
        self.on_ready: Any = None  # called with the time a pod was marked Ready (benchmarks)
        self.workdir = Path(tempfile.mkdtemp(prefix="mlchaos-kube-agent-"))
        self.running: dict[str, subprocess.Popen[bytes]] = {}  # pod uid -> its container's process
        self.logs: dict[tuple[str, str], Path] = {}  # (namespace, pod name) -> the container's output
        self._ips = 0
        self._lock = threading.Lock()
        self.log_server = _log_server(self)

    def start(self) -> NodeAgent:
        from kubernetes import client

        for name in self.nodes:
            node = client.V1Node(metadata=client.V1ObjectMeta(name=name, labels={"type": "simulated"}))
            try:
                self.core.create_node(node)
            except client.ApiException as exc:
                if exc.status != 409:
                    raise
            self.core.patch_node_status(name, {"status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": self.log_server.server_address[1]}},
                "conditions": [
                {"type": "Ready", "status": "True", "reason": "Simulated", "lastHeartbeatTime": _now(),
                 "lastTransitionTime": _now()}], "capacity": {"cpu": "64", "memory": "256Gi", "pods": "2000"},
                "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "2000"}}})
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.log_server.shutdown()
        for uid in list(self.running):
            self._kill(uid, grace_s=2)

    def _run(self) -> None:
        from kubernetes import watch

        while not self._stop.is_set():
            try:
                stream = watch.Watch().stream(self.core.list_pod_for_all_namespaces, timeout_seconds=60,
                                              _request_timeout=70)
                for event in stream:
                    if self._stop.is_set():
                        return
                    self._handle(event["type"], event["object"])
            except Exception as exc:  # the API server restarting: watch again
                self.errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.2)

    def _handle(self, kind: str, pod: Any) -> None:
        from kubernetes import client

        meta, labels = pod.metadata, pod.metadata.labels or {}
        try:
            if kind == "DELETED":  # deleted at once (grace 0): the kubelet kills what still runs
                self._kill(meta.uid, grace_s=0)
                return
            if meta.deletion_timestamp is not None:  # the kubelet stops the containers, then confirms
                if meta.uid in self.running:  # its process gets the grace period: not on the watch's thread
                    threading.Thread(target=self._stop_then_confirm, args=(pod,), daemon=True).start()
                    return
                self.core.delete_namespaced_pod(meta.name, meta.namespace, grace_period_seconds=0,
                                                body=client.V1DeleteOptions(preconditions=client.V1Preconditions(
                                                    uid=meta.uid)))
                return
            if not pod.spec.node_name:
                node = self.nodes[self._next % len(self.nodes)]
                self._next += 1
                self.core.create_namespaced_binding(meta.namespace, client.V1Binding(
                    metadata=client.V1ObjectMeta(name=meta.name, uid=meta.uid),
                    target=client.V1ObjectReference(kind="Node", name=node)), _preload_content=False)
                return
            if (pod.status.phase or "Pending") == "Pending" and meta.uid not in self._starting:
                self._starting.add(meta.uid)  # once per pod: a re-listed Pending pod is not started twice
                if labels.get(RUN) == "true":
                    threading.Thread(target=self._run_container, args=(pod,), daemon=True).start()
                    return
                threading.Timer(self.ready_after_s, self._started, args=(meta.namespace, meta.name, meta.uid,
                                                                          labels)).start()
        except client.ApiException as exc:
            if exc.status not in (404, 409):
                self.errors.append(f"{kind} {meta.namespace}/{meta.name}: {exc.status} {exc.reason}")

    def _hangs(self, namespace: str) -> bool:
        from kubernetes import client

        try:
            labels = self.core.read_namespace(namespace).metadata.labels or {}
        except client.ApiException:
            return False
        return labels.get(STARTS_HANG) == "true"

    def _started(self, namespace: str, name: str, uid: str, labels: dict[str, str]) -> None:
        """Report the pod started, retrying while the API server is away (as a kubelet keeps trying)."""
        deadline = time.monotonic() + 120
        while not self._stop.is_set():
            try:
                self._report_started(namespace, name, uid, labels)
                return
            except Exception as exc:  # connection refused: the API server restarting
                if time.monotonic() > deadline:
                    self.errors.append(f"status {namespace}/{name}: gave up: {exc}")
                    return
                time.sleep(0.5)

    def _report_started(self, namespace: str, name: str, uid: str, labels: dict[str, str]) -> None:
        from kubernetes import client

        crash = labels.get(CRASH) == "true"
        hang = labels.get(NEVER_READY) == "true" or self._hangs(namespace)
        ready = "False" if crash or hang else "True"
        status = {"phase": "Failed" if crash else "Running", "startTime": _now(),
                  "podIP": f"10.244.0.{1 + hash(uid) % 250}",
                  "conditions": [{"type": t, "status": ready if t in ("Ready", "ContainersReady") else "True",
                                  "lastTransitionTime": _now()}
                                 for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]}
        try:
            self.core.patch_namespaced_pod_status(name, namespace, {"metadata": {"uid": uid}, "status": status})
            if ready == "True" and self.on_ready is not None:
                self.on_ready(time.time())
        except client.ApiException as exc:
            if exc.status not in (404, 409, 422):
                self.errors.append(f"status {namespace}/{name}: {exc.status} {exc.reason}")


    # -- pods that really run -------------------------------------------------------------------------
    def _status(self, namespace: str, name: str, uid: str, phase: str, ready: bool, ip: str = "127.0.0.1",
                terminated: dict[str, Any] | None = None) -> None:
        from kubernetes import client

        container = {"name": "main", "ready": ready, "restartCount": 0, "image": "local", "imageID": "",
                     "started": terminated is None,
                     "state": {"terminated": terminated} if terminated else {"running": {"startedAt": _now()}}}
        status = {"phase": phase, "startTime": _now(), "podIP": ip, "containerStatuses": [container],
                  "conditions": [{"type": t, "status": "True" if ready or t in ("PodScheduled", "Initialized")
                                  else "False", "lastTransitionTime": _now()}
                                 for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]}
        try:
            self.core.patch_namespaced_pod_status(name, namespace, {"metadata": {"uid": uid}, "status": status})
        except client.ApiException as exc:
            if exc.status not in (404, 409, 422):
                self.errors.append(f"status {namespace}/{name}: {exc.status} {exc.reason}")

    def _pod_ip(self) -> str:
        """An address of the pod's own: 127.0.0.0/8 is all loopback on Linux, so every pod listens on
        its own IP and the same port, as pods do."""
        with self._lock:
            self._ips += 1
            n = self._ips
        return f"127.{100 + n // 62500 % 100}.{n // 250 % 250}.{n % 250 + 2}"

    def _run_container(self, pod: Any) -> None:
        import re

        meta, container = pod.metadata, pod.spec.containers[0]
        ip = self._pod_ip()
        variables = {e.name: e.value for e in container.env or [] if e.value is not None}
        variables.update(POD_NAME=meta.name, POD_NAMESPACE=meta.namespace, POD_UID=meta.uid, POD_IP=ip)

        def expand(arg: str) -> str:  # $(VAR) in command and args, as the kubelet expands them
            return re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), arg)

        argv = [expand(a) for a in [*(container.command or []), *(container.args or [])]]
        env = {**os.environ, **variables}
        log = self.workdir / f"{meta.namespace}_{meta.name}_{meta.uid}.log"
        with self._lock:
            self.logs[(meta.namespace, meta.name)] = log
        try:
            with open(log, "wb") as out:
                process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                           cwd=container.working_dir or None, start_new_session=True)
        except OSError as exc:
            log.write_text(f"cannot start {argv}: {exc}\n")
            self._status(meta.namespace, meta.name, meta.uid, "Failed", False, ip,
                         {"exitCode": 128, "reason": "StartError", "finishedAt": _now()})
            return
        with self._lock:
            self.running[meta.uid] = process
        probe = container.readiness_probe.http_get if container.readiness_probe else None
        ready = probe is None
        self._status(meta.namespace, meta.name, meta.uid, "Running", ready, ip)
        while process.poll() is None:  # readiness from the probe, as a kubelet would
            if probe is not None:
                now = _answers(f"http://{ip}:{probe.port}{probe.path or '/'}")
                if now != ready:
                    ready = now
                    self._status(meta.namespace, meta.name, meta.uid, "Running", ready, ip)
            time.sleep(0.1)
        with self._lock:
            killed = self.running.pop(meta.uid, None) is None  # the pod was deleted: nobody to report to
        if not killed:
            code = process.returncode
            self._status(meta.namespace, meta.name, meta.uid, "Succeeded" if code == 0 else "Failed", False, ip,
                         {"exitCode": code if code >= 0 else 128 - code, "finishedAt": _now(),
                          "reason": "Completed" if code == 0 else "Error"})

    def _stop_then_confirm(self, pod: Any) -> None:
        from kubernetes import client

        meta = pod.metadata
        self._kill(meta.uid, grace_s=float(meta.deletion_grace_period_seconds or 0))
        try:
            self.core.delete_namespaced_pod(meta.name, meta.namespace, grace_period_seconds=0,
                                            body=client.V1DeleteOptions(preconditions=client.V1Preconditions(
                                                uid=meta.uid)))
        except client.ApiException as exc:
            if exc.status not in (404, 409):
                self.errors.append(f"delete {meta.namespace}/{meta.name}: {exc.status} {exc.reason}")

    def _kill(self, uid: str, grace_s: float) -> None:
        with self._lock:
            process = self.running.pop(uid, None)
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM if grace_s else signal.SIGKILL)
            process.wait(timeout=max(grace_s, 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 (loopback, the pod's own port)
            return bool(answer.status == 200)
    except OSError:
        return False


def _log_server(agent: NodeAgent) -> ThreadingHTTPServer:
    """The kubelet's log endpoint: ``GET /containerLogs/<namespace>/<pod>/<container>`` (``tailLines``,
    ``follow``), over HTTPS with a self-signed certificate (the API server does not check a kubelet's
    certificate unless told to)."""

    class Logs(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlparse(self.path)
            parts = url.path.strip("/").split("/")
            with agent._lock:
                log = agent.logs.get((parts[1], parts[2])) if len(parts) == 4 and parts[0] == "containerLogs" \
                    else None
            if log is None or not log.exists():
                self.send_error(404, "no such container")
                return
            query = parse_qs(url.query)
            data = log.read_bytes()
            if "tailLines" in query:
                data = b"".join(data.splitlines(keepends=True)[-int(query["tailLines"][0]):])
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Logs)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*_self_signed(agent.workdir))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="kubelet-logs", daemon=True).start()
    return server


def _self_signed(folder: Path) -> tuple[Path, Path]:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sim-kubelet")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "kubelet.crt", folder / "kubelet.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def main(argv: list[str] | None = None) -> int:
    import sys

    from kubernetes import config

    args = sys.argv[1:] if argv is None else argv
    agent = NodeAgent(config.new_client_from_config(args[0]), nodes=int(os.environ.get("MLCHAOS_AGENT_NODES", "2")))
    ready_log = os.environ.get("MLCHAOS_AGENT_READY_LOG")  # benchmarks: when each pod was marked Ready
    if ready_log:
        handle = open(ready_log, "a", buffering=1)  # noqa: SIM115 (open while the agent runs)
        agent.on_ready = lambda at: handle.write(f"{at}\n")
    agent.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(1):
        for error in agent.errors[-5:]:
            print(error, file=sys.stderr, flush=True)
        agent.errors.clear()
    agent.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
