"""Simulated kubelets for the test control plane, as kwok does it: a small agent of ours (kwok's module
would add a second large Go build for what fits in this file). It registers fake Nodes, binds Pending
pods to them (there is no scheduler), moves them to Running and Ready after ``ready_after_s``, and
finishes deletions the way a kubelet does once the containers stopped (delete with grace 0).

Knobs for the broken cases: the pod labels ``mlchaos.test/never-ready: "true"`` (Running, never Ready)
and ``mlchaos.test/crash: "true"`` (the container exits: phase Failed); and the namespace label
``mlchaos.test/starts-hang: "true"``: pods that start in that namespace from then on never become Ready
(replacements that hang). It runs as its own process (``python tests/kube_agent.py KUBECONFIG``), shared
by every test worker, like the control plane.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

NEVER_READY = "mlchaos.test/never-ready"
CRASH = "mlchaos.test/crash"
STARTS_HANG = "mlchaos.test/starts-hang"


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

    def start(self) -> NodeAgent:
        from kubernetes import client

        for name in self.nodes:
            node = client.V1Node(metadata=client.V1ObjectMeta(name=name, labels={"type": "simulated"}))
            try:
                self.core.create_node(node)
            except client.ApiException as exc:
                if exc.status != 409:
                    raise
            self.core.patch_node_status(name, {"status": {"conditions": [
                {"type": "Ready", "status": "True", "reason": "Simulated", "lastHeartbeatTime": _now(),
                 "lastTransitionTime": _now()}], "capacity": {"cpu": "64", "memory": "256Gi", "pods": "2000"},
                "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "2000"}}})
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

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
            if kind == "DELETED":
                return
            if meta.deletion_timestamp is not None:  # the kubelet stops the containers, then confirms
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


def main(argv: list[str] | None = None) -> int:
    import os
    import signal
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
