"""``pod-delete`` on Kubernetes: delete some pods a selector picks, then watch their controller replace
them.

Victims are chosen (``order: random`` with a seed, or ``oldest``), written to the ledger with their UIDs,
then deleted with a UID precondition: a pod replaced in between under the same name is never deleted by
mistake. Recovery is observed with a watch started before the first delete, not by polling: when the
first replacement appeared, when every replica was Ready again, and the Ready-replica timeline. A pod
without a controller is refused (deleting it would lose it); so are the protected namespaces.
"""

from __future__ import annotations

import math
import queue
import random
import re
import threading
import time
from typing import Any, Protocol

from mlchaos_steps.core.context import PhaseContext, check_kill_switch
from mlchaos_steps.core.records import Action
from mlchaos_steps.errors import InfrastructureError, RestoreError, SpecError
from mlchaos_steps.targets import kubernetes as kube


class PodDelete(Protocol):
    """What this module reads of a ``PodDelete`` spec (defined in pod_delete.py, which imports this)."""

    target: Any
    count: int | None
    percent: float | None
    max_count: int
    order: str
    seed: int | None
    grace_s: float
    recovery_slo_s: float
    stable_s: float

FIELD = "spec.target.kubernetes"
NEEDS = [("get", "namespaces"), ("list", "pods"), ("watch", "pods"), ("delete", "pods"),  # docker/k8s/rbac.yaml
         ("get", "leases"), ("create", "leases"), ("update", "leases"), ("delete", "leases")]


def _core(stage: PodDelete) -> Any:
    from kubernetes import client

    target = stage.target.kubernetes
    assert target is not None
    return client.CoreV1Api(kube.api_client(target.kubeconfig, target.context))


def _matching(stage: PodDelete, core: Any) -> tuple[list[Any], str]:
    """The pods the selector and name pattern pick (not being deleted), and the list's resourceVersion."""
    target = stage.target.kubernetes
    assert target is not None
    listed = kube.call("list", "pods", target.namespace, core.list_namespaced_pod, target.namespace,
                       label_selector=target.selector)
    pattern = re.compile(target.name_pattern) if target.name_pattern else None
    pods = [p for p in listed.items if p.metadata.deletion_timestamp is None
            and (pattern is None or pattern.fullmatch(p.metadata.name))]
    return pods, listed.metadata.resource_version


def _how_many(stage: PodDelete, replicas: int) -> int:
    if stage.count is not None:
        n = stage.count
    else:
        assert stage.percent is not None
        n = math.ceil(replicas * stage.percent / 100)
    if n > replicas:
        raise SpecError("spec.count", f"{n} is more than the {replicas} pod(s) the selector matches: lower it")
    if n > stage.max_count:
        raise SpecError("spec.percent", f"{stage.percent:g}% of {replicas} pods is {n}, above max_count "
                                        f"{stage.max_count}: lower percent or raise max_count")
    return n


def _victims(stage: PodDelete, pods: list[Any], n: int, run_key: str) -> list[Any]:
    if stage.order == "oldest":
        return sorted(pods, key=lambda p: (p.metadata.creation_timestamp, p.metadata.name))[:n]
    ordered = sorted(pods, key=lambda p: p.metadata.name)
    return random.Random(stage.seed if stage.seed is not None else run_key).sample(ordered, n)


def preflight(stage: PodDelete, core: Any) -> None:
    """Before anything changes: not a protected namespace, and every permission the stage will use."""
    target = stage.target.kubernetes
    assert target is not None
    if target.namespace in kube.PROTECTED_NAMESPACES:  # before any call at all
        kube.check_namespace(core, target.namespace)
    kube.require(core.api_client, target.namespace, NEEDS)
    kube.check_namespace(core, target.namespace)


def resolve(stage: PodDelete, core: Any) -> tuple[list[Any], int]:
    target = stage.target.kubernetes
    assert target is not None
    pods, _ = _matching(stage, core)
    if not pods:
        raise InfrastructureError(f"no targets: no pod in namespace {target.namespace} matches selector "
                                  f"{target.selector!r}" + (f" and name_pattern {target.name_pattern!r}"
                                                            if target.name_pattern else ""))
    orphans = [p.metadata.name for p in pods if kube.owner(p) is None]
    if orphans:
        raise SpecError(f"{FIELD}.selector", f"matches pod(s) {orphans[:5]} that no controller owns: deleting them "
                                             "would lose them; narrow the selector to pods of a Deployment, "
                                             "StatefulSet or Job")
    return pods, _how_many(stage, len(pods))


def plan(stage: PodDelete) -> dict[str, Any]:
    core = _core(stage)
    preflight(stage, core)
    pods, n = resolve(stage, core)
    return {"pods": [p.metadata.name for p in pods], "ready": sum(kube.is_ready(p) for p in pods), "would_delete": n,
            "owners": sorted({kube.owner(p) or "-" for p in pods}), "order": stage.order}


def lease_seconds(stage: PodDelete) -> int:
    """How long the target's Lease holds without renewal: the whole fault window, with room to spare."""
    return int(max(600, 2 * (stage.recovery_slo_s + stage.stable_s)))


def take_lease(stage: PodDelete, ctx: PhaseContext) -> None:
    """The target's Lease, for this run key (saved in the state: restore, also `restore --orphaned`,
    releases it)."""
    target = stage.target.kubernetes
    assert target is not None
    core = _core(stage)
    preflight(stage, core)  # before the Lease: refuse with nothing taken
    target_id = stage.target_ids()[0]
    lease = {"namespace": target.namespace, "lease": kube.lease_name(target_id), "holder": ctx.run_key,
             "kubeconfig": target.kubeconfig, "context": target.context}
    kube.acquire_lease(core.api_client, target.namespace, lease["lease"], ctx.run_key, lease_seconds(stage), target_id)
    ctx.save(k8s_lease=lease)


def release(ctx: PhaseContext) -> dict[str, Any]:
    lease = ctx.state.get("k8s_lease")
    if not lease:
        return {}
    api = kube.api_client(lease.get("kubeconfig"), lease.get("context"))
    return {"lease_released": kube.release_lease(api, lease["namespace"], lease["lease"], lease["holder"])}


def snapshot(stage: PodDelete, ctx: PhaseContext, steady: dict[str, Any] | None) -> dict[str, Any]:
    core = _core(stage)
    pods, n = resolve(stage, core)
    ready = [p for p in pods if kube.is_ready(p)]
    if not ready:  # nothing to recover to: "all 0 back" would be a pass earned from nothing
        raise InfrastructureError(f"steady state not met before the fault: none of the {len(pods)} pod(s) the "
                                  "selector matches is Ready; fix the workload before testing it")
    victims = _victims(stage, pods, n, ctx.run_key)
    ctx.save(victims=[[v.metadata.name, v.metadata.uid] for v in victims],
             originals=[p.metadata.uid for p in pods], expected_replicas=len(ready), readiness="ready",
             owners=sorted({kube.owner(p) for p in pods if kube.owner(p)}), steady_before=steady)
    return {"pods": len(pods), "ready": len(ready), "victims": [v.metadata.name for v in victims],
            "steady_state": steady}


def delete(stage: PodDelete, ctx: PhaseContext, state: dict[str, Any]) -> tuple[float, list[str], Any]:
    """Start watching, then delete each victim still alive under its UID. Returns the time of the first
    delete, the pods deleted and the watch."""
    from kubernetes import client

    target = stage.target.kubernetes
    assert target is not None
    core = _core(stage)
    target_id = stage.target_ids()[0]  # renew the Lease: nobody else takes the target while we break it
    kube.acquire_lease(core.api_client, target.namespace, kube.lease_name(target_id), ctx.run_key,
                       lease_seconds(stage), target_id)
    watch = _PodWatch(stage, core).start()
    undo = {"namespace": target.namespace, "selector": target.selector, "name_pattern": target.name_pattern,
            "kubeconfig": target.kubeconfig, "context": target.context,
            "expected_replicas": state["expected_replicas"], "recovery_slo_s": stage.recovery_slo_s}
    deleted: list[str] = []
    deleted_at: float | None = None
    try:
        for name, uid in state["victims"]:
            with ctx.destructive("delete-pod", f"pod:{target.namespace}/{name}",
                                 {**undo, "pod": name, "uid": uid, "deleted_at": time.time()}):
                deleted_at = deleted_at or time.time()
                try:
                    kube.call("delete", "pods", target.namespace, core.delete_namespaced_pod, name, target.namespace,
                              body=client.V1DeleteOptions(grace_period_seconds=int(stage.grace_s),
                                                          preconditions=client.V1Preconditions(uid=uid)))
                except client.ApiException as exc:
                    if exc.status in (404, 409):  # gone, or a different pod by now: never delete that one
                        continue
                    raise
            deleted.append(name)
    except BaseException:
        watch.stop()
        raise
    if not deleted or deleted_at is None:
        watch.stop()
        raise InfrastructureError("none of the chosen pods was still there under its UID: nothing was deleted")
    return deleted_at, deleted, watch


def observe(stage: PodDelete, state: dict[str, Any], deleted_at: float, watch: _PodWatch) -> dict[str, Any]:
    """Follow the watch until every replica is Ready again and stays so for ``stable_s``, or the SLO ends."""
    deadline = deleted_at + stage.recovery_slo_s
    expected = state["expected_replicas"]
    victims = {uid for _, uid in state["victims"]}
    recovered_at: float | None = None
    interruptions = 0
    try:
        while True:
            check_kill_switch()
            now = time.time()
            watch.drain(0.05)
            ready = watch.ready_count(exclude=victims)
            whole = ready >= expected and not (victims & watch.present)
            if whole and recovered_at is None:
                recovered_at = watch.last_ready_at or now
            elif not whole and recovered_at is not None:
                interruptions += 1
                recovered_at = None
            if recovered_at is not None and now - recovered_at >= stage.stable_s:
                return _record(True, deleted_at, now, watch, expected, ready, interruptions, recovered_at)
            if recovered_at is None and now > deadline:
                return _record(False, deleted_at, now, watch, expected, ready, interruptions, None)
    finally:
        watch.stop()


def _record(recovered: bool, deleted_at: float, now: float, watch: _PodWatch, expected: int, ready: int,
            interruptions: int, recovered_at: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "recovered": recovered, "killed_at": deleted_at, "observed_until": now, "replicas_ready": ready,
        "expected_replicas": expected, "readiness": "ready", "interruptions": interruptions, "unanswered": [],
        "replacement_started_seconds": round(watch.first_replacement_at - deleted_at, 4)
        if watch.first_replacement_at else None,
        "ready_timeline": [[round(t - deleted_at, 4), n] for t, n in watch.timeline],
        "watch_events": watch.events,
    }
    if recovered and recovered_at is not None:
        out.update(recovered_at=recovered_at, recovery_seconds=round(recovered_at - deleted_at, 4))
    return out


def _ready_count(core: Any, namespace: str, selector: str, name_pattern: str | None) -> int:
    pattern = re.compile(name_pattern) if name_pattern else None
    return sum(kube.is_ready_raw(p) for p in kube.list_pods_raw(core, namespace, selector)["items"]
               if pattern is None or pattern.fullmatch(p["metadata"]["name"]))


def ready_now(stage: PodDelete) -> int:
    target = stage.target.kubernetes
    assert target is not None
    return _ready_count(_core(stage), target.namespace, target.selector, target.name_pattern)


def restore_action(action: Action) -> dict[str, Any]:
    """A deleted pod is not put back by us: its controller replaces it. Wait, up to the SLO, until as many
    pods are Ready as before; otherwise say so (the quarantine of a pod is its controller)."""
    from kubernetes import client

    undo = action.undo
    core = client.CoreV1Api(kube.api_client(undo.get("kubeconfig"), undo.get("context")))
    deadline = undo["deleted_at"] + undo["recovery_slo_s"]
    while True:
        ready = _ready_count(core, undo["namespace"], undo["selector"], undo.get("name_pattern"))
        if ready >= undo["expected_replicas"]:
            return {"ready": ready}
        if time.time() > deadline:
            raise RestoreError(f"{ready} of {undo['expected_replicas']} pods matching {undo['selector']!r} in "
                               f"{undo['namespace']} are Ready and the controller has not replaced the deleted one(s): "
                               "look at the workload, then run restore again")
        time.sleep(0.2)


class _PodWatch:
    """A watch on the selector's pods from a known resourceVersion: which exist, which are Ready, when."""

    def __init__(self, stage: PodDelete, core: Any):
        target = stage.target.kubernetes
        assert target is not None
        self.core, self.namespace, self.selector = core, target.namespace, target.selector
        self.pattern = re.compile(target.name_pattern) if target.name_pattern else None
        self.version = ""
        self.events: int = 0
        self.queue: queue.Queue[tuple[float, str, Any]] = queue.Queue()
        self.ready: dict[str, bool] = {}
        self.present: set[str] = set()
        self.originals: set[str] | None = None
        self.first_replacement_at: float | None = None
        self.last_ready_at: float | None = None
        self.timeline: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-delete-watch", daemon=True)

    def start(self) -> _PodWatch:
        listed = kube.list_pods_raw(self.core, self.namespace, self.selector)
        self.version = listed["metadata"]["resourceVersion"]  # the watch starts right after this list
        for pod in listed["items"]:
            if self.pattern is None or self.pattern.fullmatch(pod["metadata"]["name"]):
                self.present.add(pod["metadata"]["uid"])
                self.ready[pod["metadata"]["uid"]] = kube.is_ready_raw(pod)
        self.originals = set(self.present)
        self._thread.start()
        return self

    def _ours(self, pod: Any) -> bool:
        return self.pattern is None or bool(self.pattern.fullmatch(pod.metadata.name))

    def _run(self) -> None:
        from kubernetes import watch

        while not self._stop.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(self.core.list_namespaced_pod, self.namespace, label_selector=self.selector,
                                           resource_version=self.version, timeout_seconds=5):
                    self.queue.put((time.time(), event["type"], event["object"]))
                    self.version = event["object"].metadata.resource_version or self.version
                    if self._stop.is_set():
                        break
            except Exception:  # the API server restarting: watch again from where we were
                time.sleep(0.2)
            finally:
                stream.stop()

    def drain(self, wait_s: float) -> None:
        try:
            item = self.queue.get(timeout=wait_s)
        except queue.Empty:
            return
        while True:
            self._apply(*item)
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return

    def _apply(self, at: float, kind: str, pod: Any) -> None:
        if not self._ours(pod):
            return
        self.events += 1
        uid = pod.metadata.uid
        before = self.ready_count()
        if kind == "DELETED":
            self.present.discard(uid)
            self.ready.pop(uid, None)
        else:
            if uid not in self.present and self.originals is not None and uid not in self.originals \
                    and self.first_replacement_at is None:
                self.first_replacement_at = at
            self.present.add(uid)
            was = self.ready.get(uid, False)
            self.ready[uid] = kube.is_ready(pod)
            if self.ready[uid] and not was:
                self.last_ready_at = at
        after = self.ready_count()
        if after != before:
            self.timeline.append((at, after))

    def ready_count(self, exclude: set[str] | None = None) -> int:
        return sum(1 for uid, ok in self.ready.items() if ok and uid not in (exclude or set()))

    def stop(self) -> None:
        self._stop.set()
