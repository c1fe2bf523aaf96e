"""``pod-delete`` on Kubernetes: delete some pods a selector picks, then watch their controller replace
them.

Victims are chosen (``order: random`` with a seed, or ``oldest``), written to the ledger with their UIDs,
then deleted with a UID precondition: a pod replaced in between under the same name is never deleted by
mistake. Recovery is observed with a watch started before the first delete, not by polling: when the
first replacement appeared, when every replica was Ready again, and the Ready-replica timeline. A pod
without a controller is refused (deleting it would lose it); so are the protected namespaces.
"""

from __future__ import annotations

import json
import math
import queue
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from mlchaos_steps.core.context import PhaseContext, check_kill_switch
from mlchaos_steps.core.records import Action
from mlchaos_steps.errors import InfrastructureError, RestoreError, SpecError
from mlchaos_steps.stages import pod_resume
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
    resume: Any

FIELD = "spec.target.kubernetes"
NEEDS = [("get", "namespaces"), ("list", "pods"), ("watch", "pods"), ("delete", "pods"),  # docker/k8s/rbac.yaml
         ("get", "leases"), ("create", "leases"), ("update", "leases"), ("delete", "leases")]


DELETE_WORKERS = 64  # deletes in flight at once: 200 pods in a fraction of a second, not 200 round trips


def _core(stage: PodDelete, pool: int | None = None) -> Any:
    from kubernetes import client

    target = stage.target.kubernetes
    assert target is not None
    return client.CoreV1Api(kube.api_client(target.kubeconfig, target.context, pool=pool))


def _name(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["name"])


def _uid(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["uid"])


def _matching(stage: PodDelete, core: Any) -> list[dict[str, Any]]:
    """The pods (as plain JSON) the selector and name pattern pick, not being deleted."""
    target = stage.target.kubernetes
    assert target is not None
    listed = kube.list_pods_raw(core, target.namespace, target.selector)
    pattern = re.compile(target.name_pattern) if target.name_pattern else None
    return [p for p in listed["items"] if not p["metadata"].get("deletionTimestamp")
            and (pattern is None or pattern.fullmatch(_name(p)))]


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


def _victims(stage: PodDelete, pods: list[dict[str, Any]], n: int, run_key: str) -> list[dict[str, Any]]:
    if stage.order == "oldest":  # RFC 3339 UTC timestamps sort as text
        return sorted(pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "", _name(p)))[:n]
    ordered = sorted(pods, key=_name)
    return random.Random(stage.seed if stage.seed is not None else run_key).sample(ordered, n)


def preflight(stage: PodDelete, core: Any) -> None:
    """Before anything changes: not a protected namespace, and every permission the stage will use."""
    target = stage.target.kubernetes
    assert target is not None
    if target.namespace in kube.PROTECTED_NAMESPACES:  # before any call at all
        kube.check_namespace(core, target.namespace)
    kube.require(core.api_client, target.namespace, NEEDS + ([("get", "pods/log")] if stage.resume else []))
    kube.check_namespace(core, target.namespace)


def resolve(stage: PodDelete, core: Any) -> tuple[list[dict[str, Any]], int]:
    target = stage.target.kubernetes
    assert target is not None
    pods = _matching(stage, core)
    if not pods:
        raise InfrastructureError(f"no targets: no pod in namespace {target.namespace} matches selector "
                                  f"{target.selector!r}" + (f" and name_pattern {target.name_pattern!r}"
                                                            if target.name_pattern else ""))
    orphans = [_name(p) for p in pods if kube.owner_raw(p) is None]
    if orphans:
        raise SpecError(f"{FIELD}.selector", f"matches pod(s) {orphans[:5]} that no controller owns: deleting them "
                                             "would lose them; narrow the selector to pods of a Deployment, "
                                             "StatefulSet or Job")
    return pods, _how_many(stage, len(pods))


def plan(stage: PodDelete) -> dict[str, Any]:
    core = _core(stage)
    preflight(stage, core)
    pods, n = resolve(stage, core)
    return {"pods": [_name(p) for p in pods], "ready": sum(kube.is_ready_raw(p) for p in pods), "would_delete": n,
            "owners": sorted({kube.owner_raw(p) or "-" for p in pods}), "order": stage.order}


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
    ready = [p for p in pods if kube.is_ready_raw(p)]
    if not ready:  # nothing to recover to: "all 0 back" would be a pass earned from nothing
        raise InfrastructureError(f"steady state not met before the fault: none of the {len(pods)} pod(s) the "
                                  "selector matches is Ready; fix the workload before testing it")
    victims = _victims(stage, pods, n, ctx.run_key)
    owners = sorted({o for o in (kube.owner_raw(p) for p in pods) if o})
    ctx.save(victims=[[_name(v), _uid(v)] for v in victims], expected_replicas=len(ready), readiness="ready",
             owners=owners, steady_before=steady)
    return {"pods": len(pods), "ready": len(ready), "victims": [_name(v) for v in victims], "steady_state": steady}


def delete(stage: PodDelete, ctx: PhaseContext, state: dict[str, Any]) -> tuple[float, list[str], Any]:
    """Start watching, then delete each victim still alive under its UID. Every victim is written to the
    ledger (one write) before the first delete; the deletes then run side by side. Returns the time of the
    first delete, the pods deleted and the watch."""
    target = stage.target.kubernetes
    assert target is not None
    core = _core(stage, pool=DELETE_WORKERS)
    target_id = stage.target_ids()[0]  # renew the Lease: nobody else takes the target while we break it
    kube.acquire_lease(core.api_client, target.namespace, kube.lease_name(target_id), ctx.run_key,
                       lease_seconds(stage), target_id)
    watch = _PodWatch(stage, core).start()
    undo = {"namespace": target.namespace, "selector": target.selector, "name_pattern": target.name_pattern,
            "kubeconfig": target.kubeconfig, "context": target.context,
            "expected_replicas": state["expected_replicas"], "recovery_slo_s": stage.recovery_slo_s,
            "finished_counts": stage.resume is not None}  # a training Job that completed is whole too
    try:
        now = time.time()
        items = [(f"pod:{target.namespace}/{name}", {**undo, "pod": name, "uid": uid, "deleted_at": now})
                 for name, uid in state["victims"]]
        with ctx.destructive_batch("delete-pod", items):
            deleted_at = time.time()
            with ThreadPoolExecutor(min(DELETE_WORKERS, len(items)) or 1, "pod-delete") as pool:
                outcomes = list(pool.map(lambda victim: _delete_one(stage, core, *victim), state["victims"]))
            failed = [o for o in outcomes if isinstance(o, BaseException)]
            if failed:  # the actions stay planned: restore looks at the world
                raise failed[0]
    except BaseException:
        watch.stop()
        raise
    deleted = [name for (name, _), outcome in zip(state["victims"], outcomes, strict=True) if outcome is True]
    if not deleted:
        watch.stop()
        raise InfrastructureError("none of the chosen pods was still there under its UID: nothing was deleted")
    return deleted_at, deleted, watch


def _delete_one(stage: PodDelete, core: Any, name: str, uid: str) -> bool | BaseException:
    """Delete one pod under its UID: True if deleted, False if it was gone or replaced by then, or the
    error (raised by the caller once every delete has finished)."""
    from kubernetes import client

    target = stage.target.kubernetes
    assert target is not None
    try:
        check_kill_switch()
        body = {"gracePeriodSeconds": int(stage.grace_s), "preconditions": {"uid": uid}}
        response = kube.call("delete", "pods", target.namespace, core.delete_namespaced_pod, name, target.namespace,
                             body=body, _preload_content=False)
        response.drain_conn()  # the deleted pod's JSON is not needed: skip parsing it
        response.release_conn()
        return True
    except client.ApiException as exc:
        if exc.status in (404, 409):  # gone, or a different pod by now: never delete that one
            return False
        return exc
    except BaseException as exc:
        return exc


def observe(stage: PodDelete, state: dict[str, Any], deleted_at: float, watch: _PodWatch,
            on_victims_gone: Any = None) -> dict[str, Any]:
    """Follow the watch until every replica is Ready again and stays so for ``stable_s``, or the SLO ends.
    ``on_victims_gone`` is called once, when the last victim has left (its containers stopped)."""
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
            gone = not (victims & watch.present)
            if gone and on_victims_gone is not None:
                on_victims_gone()
                on_victims_gone = None
            whole = ready >= expected and gone
            if whole and recovered_at is None:
                recovered_at = watch.last_ready_at or now
                watch.noticed_at = time.time()  # when the stage saw it (recovered_at: when the event arrived)
            elif not whole and recovered_at is not None:
                interruptions += 1
                recovered_at = None
            if recovered_at is not None and now - recovered_at >= stage.stable_s:
                return _record(True, deleted_at, now, watch, expected, ready, interruptions, recovered_at)
            if recovered_at is None and now > deadline:
                return _record(False, deleted_at, now, watch, expected, ready, interruptions, None)
    finally:
        watch.stop()


def resume_evidence(stage: PodDelete, deleted_at: float, watch: _PodWatch, fault: dict[str, Any]) -> dict[str, Any]:
    """Training pods: what the replacements reported and wrote (see pod_resume)."""
    target = stage.target.kubernetes
    assert target is not None
    return pod_resume.gather(stage.resume, _core(stage), target.namespace, watch.replacements(), deleted_at, fault)


def _record(recovered: bool, deleted_at: float, now: float, watch: _PodWatch, expected: int, ready: int,
            interruptions: int, recovered_at: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "recovered": recovered, "killed_at": deleted_at, "observed_until": now, "replicas_ready": ready,
        "expected_replicas": expected, "readiness": "ready", "interruptions": interruptions, "unanswered": [],
        "replacement_started_seconds": round(watch.first_replacement_at - deleted_at, 4)
        if watch.first_replacement_at else None,
        "ready_timeline": [[round(t - deleted_at, 4), n] for t, n in watch.timeline],
        "recovery_noticed_at": watch.noticed_at,
        "watch_events": watch.events,
    }
    if recovered and recovered_at is not None:
        out.update(recovered_at=recovered_at, recovery_seconds=round(recovered_at - deleted_at, 4))
    return out


def _ready_count(core: Any, namespace: str, selector: str, name_pattern: str | None,
                 finished_counts: bool = False) -> int:
    """Pods Ready now (and, for training pods, those that completed)."""
    pattern = re.compile(name_pattern) if name_pattern else None
    return sum(kube.is_ready_raw(p) or (finished_counts and p.get("status", {}).get("phase") == "Succeeded")
               for p in kube.list_pods_raw(core, namespace, selector)["items"]
               if pattern is None or pattern.fullmatch(p["metadata"]["name"]))


def ready_now(stage: PodDelete) -> int:
    target = stage.target.kubernetes
    assert target is not None
    return _ready_count(_core(stage), target.namespace, target.selector, target.name_pattern, stage.resume is not None)


def restore_action(action: Action) -> dict[str, Any]:
    """A deleted pod is not put back by us: its controller replaces it. Wait, up to the SLO, until as many
    pods are Ready as before; otherwise say so (the quarantine of a pod is its controller)."""
    from kubernetes import client

    undo = action.undo
    core = client.CoreV1Api(kube.api_client(undo.get("kubeconfig"), undo.get("context")))
    deadline = undo["deleted_at"] + undo["recovery_slo_s"]
    while True:
        ready = _ready_count(core, undo["namespace"], undo["selector"], undo.get("name_pattern"),
                             bool(undo.get("finished_counts")))
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
        self.queue: queue.Queue[tuple[float, str, dict[str, Any]]] = queue.Queue()
        self.ready_uids: set[str] = set()
        self.present: set[str] = set()
        self.names: dict[str, str] = {}
        self.originals: set[str] | None = None
        self.first_replacement_at: float | None = None
        self.last_ready_at: float | None = None
        self.noticed_at: float | None = None
        self.timeline: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-delete-watch", daemon=True)

    def start(self) -> _PodWatch:
        listed = kube.list_pods_raw(self.core, self.namespace, self.selector)
        self.version = listed["metadata"]["resourceVersion"]  # the watch starts right after this list
        for pod in listed["items"]:
            if self._ours(pod):
                self.present.add(_uid(pod))
                if kube.is_ready_raw(pod):
                    self.ready_uids.add(_uid(pod))
        self.originals = set(self.present)
        self._thread.start()
        return self

    def _ours(self, pod: dict[str, Any]) -> bool:
        return self.pattern is None or bool(self.pattern.fullmatch(_name(pod)))

    def _run(self) -> None:
        while not self._stop.is_set():
            response = None
            try:  # plain JSON events: a thousand pods' events parse in a fraction of the client's model time
                response = self.core.list_namespaced_pod(
                    self.namespace, label_selector=self.selector, watch=True, resource_version=self.version,
                    allow_watch_bookmarks=True, timeout_seconds=5, _preload_content=False)
                if self._read(response):
                    self._relist()
            except Exception:  # the API server restarting: watch again from where we were
                time.sleep(0.2)
            finally:
                if response is not None:
                    response.close()
                    response.release_conn()

    def _read(self, response: Any) -> bool:
        """Queue each event with the time its bytes arrived; True when the watch expired (410 Gone)."""
        pending = b""
        for chunk in response.stream(amt=None, decode_content=False):
            at = time.time()
            *lines, pending = (pending + chunk).split(b"\n")  # a burst of events splits in one pass
            for line in lines:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event["type"] == "ERROR":  # too far behind: list again from now
                    return True
                self.version = event["object"]["metadata"].get("resourceVersion") or self.version
                if event["type"] != "BOOKMARK":
                    self.queue.put((at, event["type"], event["object"]))
            if self._stop.is_set():
                break
        return False

    def _relist(self) -> None:
        listed = kube.list_pods_raw(self.core, self.namespace, self.selector)
        self.version = listed["metadata"]["resourceVersion"]
        now = time.time()
        for pod in listed["items"]:
            self.queue.put((now, "MODIFIED", pod))
        for uid in set(self.present) - {_uid(p) for p in listed["items"]}:
            self.queue.put((now, "DELETED", {"metadata": {"uid": uid, "name": ""}}))

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

    def _apply(self, at: float, kind: str, pod: dict[str, Any]) -> None:
        uid = _uid(pod)
        if kind == "DELETED" and not _name(pod):
            pass  # from a relist: ours if we knew it
        elif not self._ours(pod):
            return
        self.events += 1
        before = self.ready_count()
        if kind == "DELETED":
            self.present.discard(uid)
            self.ready_uids.discard(uid)
        else:
            if uid not in self.present and self.originals is not None and uid not in self.originals \
                    and self.first_replacement_at is None:
                self.first_replacement_at = at
            self.present.add(uid)
            self.names[uid] = _name(pod)
            if not kube.is_ready_raw(pod):
                self.ready_uids.discard(uid)
            elif uid not in self.ready_uids:
                self.ready_uids.add(uid)
                self.last_ready_at = at
        after = self.ready_count()
        if after != before:
            self.timeline.append((at, after))

    def replacements(self) -> dict[str, str]:
        """The pods that appeared since the watch started and are still there: uid -> name."""
        return {uid: self.names[uid] for uid in self.present - (self.originals or set()) if uid in self.names}

    def ready_count(self, exclude: set[str] | None = None) -> int:
        return len(self.ready_uids) - (len(self.ready_uids & exclude) if exclude else 0)

    def stop(self) -> None:
        self._stop.set()
