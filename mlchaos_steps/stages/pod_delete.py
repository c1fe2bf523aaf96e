"""``pod-delete``: kill some replicas of a workload, then check they came back and the service held.

Local backend: replicas are live processes (see :mod:`mlchaos_steps.targets.local`). The fault window
is observed during ``inject``, right after the kill, because that evidence exists only while the fault
is happening: the HTTP probe is sampled continuously, and each replacement is probed with requests the
kernel attributes to it until it has answered one. Recovery is the instant the last replacement
answered; the replica set must then stay whole for ``stable_s`` (a crash-looping replacement fails),
with the service available on enough samples. ``verify`` judges that record and checks the steady
state once more.

Example::

    kind: PodDelete
    spec:
      target: {local: {selector: {cmdline: "uvicorn .*serve:app", env: {MLCHAOS_APP: model-serving}}}}
      count: 1
      signal: SIGKILL
      recovery_slo_s: 30
      probe: {http: {url: "http://127.0.0.1:5001/ping", min_success_ratio: 0.95}}
"""

from __future__ import annotations

import math
import random
import signal as signals
import time
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import psutil
from pydantic import Field, model_validator

from mlchaos_steps.core.context import PhaseContext, check_kill_switch
from mlchaos_steps.core.probes import HttpSampler, sample_once, summarize
from mlchaos_steps.core.processes import same_process
from mlchaos_steps.core.records import Action
from mlchaos_steps.core.spec import StageSpec, StrictModel
from mlchaos_steps.core.verdict import Verdict
from mlchaos_steps.errors import InfrastructureError, RestoreError, SpecError
from mlchaos_steps.stages import pod_delete_k8s, pod_resume
from mlchaos_steps.stages.parts import Probe, ProcessSelector
from mlchaos_steps.targets import local

POLL_S = 0.01
ROOT_REFRESH_S = 0.25
STEADY_SAMPLES = 20
PROBE_BURST_S = 0.1  # attributed probing between two looks at the process table
MIN_STABLE_SAMPLES = 20  # probe samples needed in the stability window to judge availability after recovery


class LocalTarget(StrictModel):
    selector: ProcessSelector


class KubernetesTarget(StrictModel):
    namespace: str = Field(min_length=1, description="the namespace of the pods")
    selector: str = Field(min_length=1, description="label selector, e.g. app=model-serving")
    name_pattern: str | None = Field(default=None, description="regular expression the pod names must match")
    kubeconfig: str | None = Field(default=None, description="kubeconfig file (default: $KUBECONFIG, in-cluster, "
                                                             "~/.kube/config)")
    context: str | None = None

    @model_validator(mode="after")
    def _not_protected(self) -> KubernetesTarget:
        from mlchaos_steps.targets.kubernetes import PROTECTED_NAMESPACES

        if self.namespace in PROTECTED_NAMESPACES:
            raise ValueError(f"namespace {self.namespace!r} is protected: chaos never runs in "
                             f"{', '.join(sorted(PROTECTED_NAMESPACES))}")
        if self.name_pattern is not None:
            import re

            try:
                re.compile(self.name_pattern)
            except re.error as exc:
                raise ValueError(f"name_pattern is not a regular expression: {exc}") from exc
        return self


class PodDeleteTarget(StrictModel):
    """Where the replicas run: ``local`` (processes on this machine) or ``kubernetes`` (pods)."""

    local: LocalTarget | None = None
    kubernetes: KubernetesTarget | None = None

    @model_validator(mode="after")
    def _one(self) -> PodDeleteTarget:
        if (self.local is None) == (self.kubernetes is None):
            raise ValueError("give exactly one of target.local and target.kubernetes")
        return self


class PodDelete(StageSpec):
    """Kill ``count`` (or ``percent``) of a workload's replicas."""

    kind: ClassVar[str] = "PodDelete"
    stage_id: ClassVar[str] = "pod-delete"
    title: ClassVar[str] = "Pod delete"

    target: PodDeleteTarget
    count: int | None = Field(default=None, ge=1, description="replicas to kill; or give percent")
    percent: float | None = Field(default=None, gt=0, le=100, description="share of replicas to kill")
    max_count: int = Field(default=10, ge=1, le=1000, description="hard cap on replicas killed in one run")
    signal: Literal["SIGKILL", "SIGTERM"] = "SIGKILL"
    grace_s: float = Field(default=10, ge=0, description="with SIGTERM: wait this long, then SIGKILL; on "
                                                         "Kubernetes, the pods' deletion grace period")
    order: Literal["random", "oldest"] = Field(default="random", description="which replicas: random (seeded) "
                                                                               "or the oldest first")
    seed: int | None = Field(default=None, description="seed of the random choice (default: the run key)")
    recovery_slo_s: float = Field(default=30, gt=0, le=3600)
    stable_s: float = Field(default=5, ge=0, le=600,
                            description="after recovery, the replica set must stay whole this long")
    probe: Probe | None = None
    resume: pod_resume.PodResume | None = Field(
        default=None, description="training pods (Kubernetes): the replacement must resume from a checkpoint")

    @model_validator(mode="after")
    def _blast_radius(self) -> PodDelete:
        if self.resume is not None and self.target.kubernetes is None:
            raise ValueError("resume applies to training pods: it needs target.kubernetes")
        if self.count is None and self.percent is None:
            raise ValueError("set count (replicas to kill) or percent")
        if self.count is not None and self.percent is not None:
            raise ValueError("set count or percent, not both")
        if self.count is not None and self.count > self.max_count:
            raise ValueError(f"count {self.count} is above max_count {self.max_count}: lower it or raise max_count")
        return self

    @property
    def selector(self) -> ProcessSelector:
        assert self.target.local is not None
        return self.target.local.selector

    def target_ids(self) -> list[str]:
        if self.target.kubernetes is not None:
            k = self.target.kubernetes
            return [f"kubernetes-pods:{k.context or ''}/{k.namespace}/{k.selector}|{k.name_pattern or ''}"]
        env = ",".join(f"{k}={v}" for k, v in sorted(self.selector.env.items()))
        return [f"local-processes:{self.selector.cmdline or ''}|{env}"]

    def describe(self) -> str:
        how_many = f"{self.count}" if self.count is not None else f"{self.percent:g}%"
        if self.target.kubernetes is not None:
            return f"delete {how_many} pod(s) {self.target.kubernetes.selector} in {self.target.kubernetes.namespace}"
        return f"{self.signal} {how_many} replica(s) of {self.selector.cmdline or self.selector.env}"

    # -- phases -----------------------------------------------------------------------------------
    def _resolve(self) -> tuple[list[psutil.Process], dict[str, Any], int]:
        roots = local.find_roots(self.selector.cmdline, self.selector.env)
        if not roots:
            raise SpecError("spec.target.local.selector", "matches no running process: start the workload, or fix "
                                                          "cmdline/env so they match it" + self._env_hint())
        local.check_one_workload(roots, "spec.target.local.selector")
        workload = self._workload([r.pid for r in roots])
        replicas = workload["replicas"]
        if self.count is not None:
            n = self.count
        else:
            assert self.percent is not None
            n = math.ceil(len(replicas) * self.percent / 100)
        if n > len(replicas):
            raise SpecError("spec.count", f"{n} is more than the {len(replicas)} replica(s) found: lower it")
        if n > self.max_count:
            raise SpecError("spec.percent", f"{self.percent:g}% of {len(replicas)} replicas is {n}, above max_count "
                                            f"{self.max_count}: lower percent or raise max_count")
        return roots, workload, n

    def _env_hint(self) -> str:
        if not self.selector.env:
            return ""
        blind = local.env_blind_processes(self.selector.cmdline)
        if not blind:
            return ""
        return (f". {len(blind)} process(es) here have an empty environment (setproctitle overwrites "
                f"/proc/PID/environ, as gunicorn, celery and uwsgi do): env selectors cannot see them; select "
                f"them by cmdline instead, e.g. cmdline: 'gunicorn: master'")

    def _port(self) -> int | None:
        if not self.probe:
            return None
        parts = urlsplit(self.probe.http.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def _workload(self, root_pids: list[int]) -> dict[str, Any]:
        """The replicas (workers holding the probe's listening socket) and the other children (sidecars)."""
        children = local.replicas_of(root_pids)
        port = self._port()
        serving = local.holders([c.pid for c in children], local.listening_inodes_for_port(port)) if port else set()
        if serving:
            return {"replicas": [c for c in children if c.pid in serving],
                    "sidecars": [c for c in children if c.pid not in serving], "port": port, "readiness": "answered"}
        # Nothing here listens on the probe's port (a remote probe, or no probe): replacements count
        # when they are alive, and the probe judges the service as a whole.
        return {"replicas": children, "sidecars": [], "port": None, "readiness": "alive"}

    def _serving_now(self, roots: list[int], port: int | None) -> list[local.Replica]:
        children = local.replicas_of(roots)
        if port is None:
            return children
        serving = local.holders([c.pid for c in children], local.listening_inodes_for_port(port))
        return [c for c in children if c.pid in serving]

    def plan(self, ctx: PhaseContext) -> dict[str, Any]:
        if self.target.kubernetes is not None:
            return pod_delete_k8s.plan(self)
        roots, workload, n = self._resolve()
        return {"roots": local.describe_processes(roots), "replicas": local.describe(workload["replicas"]),
                "sidecars": local.describe(workload["sidecars"]), "would_kill": n, "signal": self.signal,
                "readiness": workload["readiness"]}

    def _steady_state(self) -> dict[str, Any] | None:
        if not self.probe:
            return None
        samples = [sample_once(self.probe.http.url, self.probe.http.timeout_s, self.probe.http.expect_status)
                   for _ in range(STEADY_SAMPLES)]
        steady = summarize(samples)
        if steady["success_ratio"] < self.probe.http.min_success_ratio:
            raise InfrastructureError(
                f"steady state not met before the fault: {self.probe.http.url} answered "
                f"{steady['successes']}/{steady['requests']} probes; fix the service before testing it")
        return steady

    def snapshot(self, ctx: PhaseContext) -> dict[str, Any]:
        if self.target.kubernetes is not None:
            return pod_delete_k8s.snapshot(self, ctx, self._steady_state())
        roots, workload, n = self._resolve()
        replicas = workload["replicas"]
        steady = self._steady_state()
        victims = random.Random(ctx.run_key).sample(replicas, n)
        ctx.save(
            root_pids=[r.pid for r in roots],
            replicas=[[r.pid, r.create_time] for r in replicas],
            sidecars=[[r.pid, r.create_time] for r in workload["sidecars"]],
            victims=[[r.pid, r.create_time] for r in victims],
            expected_replicas=len(replicas),
            readiness=workload["readiness"],
            port=workload["port"],
            steady_before=steady,
        )
        return {"replicas": len(replicas), "sidecars": [r.pid for r in workload["sidecars"]],
                "victims": [v.pid for v in victims], "readiness": workload["readiness"], "steady_state": steady}

    def inject(self, ctx: PhaseContext) -> dict[str, Any]:
        state = ctx.state
        sampler = None
        if self.probe:
            p = self.probe.http
            sampler = HttpSampler(p.url, p.interval_ms / 1000, p.timeout_s, p.expect_status).start()
        try:
            if self.target.kubernetes is not None:
                # training pods: the store before the deletes, and once the victims are gone (a victim may
                # still write a checkpoint while it terminates)
                faults = [pod_resume.at_fault(self.resume)] if self.resume else []
                killed_at, killed, watch = pod_delete_k8s.delete(self, ctx, state)
                kill_seconds = time.time() - killed_at
                observation = pod_delete_k8s.observe(self, state, killed_at, watch, on_victims_gone=(
                    (lambda: faults.append(pod_resume.at_fault(self.resume))) if self.resume else None))
                if self.resume and observation["recovered"]:
                    observation["resume"] = pod_delete_k8s.resume_evidence(self, killed_at, watch,
                                                                           pod_resume.merge(faults))
            else:
                killed_at, killed = self._kill(ctx, state)
                kill_seconds = time.time() - killed_at
                observation = self._observe(state, killed_at)
            observation["kill_seconds"] = round(kill_seconds, 4)  # the first kill to the last
        finally:
            samples = sampler.stop() if sampler else []
        recovered_at = observation.get("recovered_at") or observation["observed_until"]
        during = [s for s in samples if killed_at - 0.001 <= s.at <= recovered_at]
        after = [s for s in samples if recovered_at < s.at <= observation["observed_until"]]
        observation["probe"] = summarize(during) if sampler else None
        observation["probe_after_recovery"] = summarize(after) if sampler else None
        observation["killed"] = killed
        ctx.save(observation=observation)
        return {"killed": killed, "recovered": observation["recovered"],
                "recovery_seconds": observation.get("recovery_seconds")}

    def _kill(self, ctx: PhaseContext, state: dict[str, Any]) -> tuple[float, list[int]]:
        sig = getattr(signals, self.signal)
        undo = {"selector": self.selector.model_dump(), "expected_replicas": state["expected_replicas"],
                "port": state.get("port"), "recovery_slo_s": self.recovery_slo_s}
        killed, procs = [], []
        killed_at = time.time()
        for pid, created in state["victims"]:
            if not same_process(pid, created):
                continue  # gone, or the pid now belongs to another process: never kill it
            try:
                proc = psutil.Process(pid)
            except psutil.NoSuchProcess:
                continue
            with ctx.destructive("kill-process", f"pid:{pid}", {**undo, "pid": pid, "killed_at": time.time()}):
                killed_at = min(killed_at, time.time())
                proc.send_signal(sig)
            killed.append(pid)
            procs.append(proc)
        if self.signal == "SIGTERM" and procs:
            _, alive = psutil.wait_procs(procs, timeout=self.grace_s)
            for proc in alive:
                proc.kill()
        if not killed:
            raise InfrastructureError("none of the chosen replicas was still running: nothing was killed")
        return killed_at, killed

    def _observe(self, state: dict[str, Any], killed_at: float) -> dict[str, Any]:
        """Watch the replica set until every replica is back and has answered, then for ``stable_s`` more."""
        watch = _RecoveryWatch(self, state, killed_at)
        deadline = killed_at + self.recovery_slo_s
        while True:
            check_kill_switch()
            now = time.time()
            whole = watch.poll(now)
            if whole and watch.recovered_at is None:
                watch.recovered_at = max(watch.ready_times(), default=now)
            elif not whole and watch.recovered_at is not None:
                watch.interrupted(now)  # a replica left after recovery: a crash loop, the window starts over
            if watch.recovered_at is not None and now - watch.recovered_at >= self.stable_s:
                return watch.record(True, now)
            if watch.recovered_at is None and now > deadline:
                return watch.record(False, now)
            if not watch.probed:
                time.sleep(POLL_S)

    def verify(self, ctx: PhaseContext) -> Verdict:
        state = ctx.state
        obs = state.get("observation")
        if not obs:
            return Verdict.inconclusive("no observation of the fault window was recorded")
        metrics: dict[str, float] = {}
        evidence: dict[str, Any] = {"observation": obs}
        if obs.get("recovery_seconds") is not None:
            metrics["recovery_seconds"] = obs["recovery_seconds"]
        probe = obs.get("probe")
        if probe and probe["success_ratio"] is not None:
            metrics["availability"] = round(probe["success_ratio"], 4)
            if probe["p99_ms"] is not None:
                metrics["p99_ms"] = probe["p99_ms"]
        problems = self._recovery_problems(obs)
        if self.probe and probe:
            if probe["requests"] == 0:
                return Verdict.inconclusive("the probe took no sample during the fault", metrics=metrics,
                                            evidence=evidence)
            problems += self._availability_problems(probe, obs.get("probe_after_recovery"), obs["recovered"])
        if self.resume and obs.get("resume"):
            problems += pod_resume.problems(self.resume, obs["resume"])
            metrics.update(pod_resume.metrics(obs["resume"]))
        problems += self._steady_after_problems(state, evidence)
        if problems:
            return Verdict.failed("; ".join(problems), metrics=metrics, evidence=evidence)
        availability = f", availability {metrics['availability']:.3f}" if "availability" in metrics else ""
        how = {"answered": "answered a request", "ready": "Ready"}.get(obs["readiness"], "alive")
        return Verdict.passed(
            f"{len(obs['killed'])} replica(s) killed, all {obs['expected_replicas']} back ({how}) in "
            f"{obs['recovery_seconds']:.3f}s and whole for {self.stable_s:g}s after{availability}",
            metrics=metrics, evidence=evidence)

    def _recovery_problems(self, obs: dict[str, Any]) -> list[str]:
        problems = []
        if not obs["recovered"]:
            how = {"answered": "answered a request", "ready": "were Ready"}.get(obs["readiness"], "were running")
            problems.append(f"only {obs['replicas_ready']} of {obs['expected_replicas']} replicas {how} within "
                            f"recovery_slo_s={self.recovery_slo_s:g}s")
            if obs.get("unanswered"):
                problems.append(f"replacement(s) {obs['unanswered']} never answered a request (hung while starting, "
                                "or answering errors)")
        if obs.get("interruptions"):
            problems.append(f"the replica set did not stay whole after recovery: {obs['interruptions']} time(s) a "
                            f"replica left within stable_s={self.stable_s:g}s (a crash loop)")
        return problems

    def _availability_problems(self, probe: dict[str, Any], after: dict[str, Any] | None, recovered: bool
                               ) -> list[str]:
        assert self.probe is not None
        p = self.probe.http
        problems = []
        if probe["success_ratio"] < p.min_success_ratio:
            problems.append(f"availability {probe['success_ratio']:.3f} during the fault is below "
                            f"min_success_ratio {p.min_success_ratio:g} ({probe['errors']})")
        if p.max_p99_ms is not None and probe["p99_ms"] is not None and probe["p99_ms"] > p.max_p99_ms:
            problems.append(f"p99 latency {probe['p99_ms']:.1f} ms during the fault is above {p.max_p99_ms:g} ms")
        if recovered and after is not None:
            if after["requests"] < MIN_STABLE_SAMPLES:
                problems.append(f"only {after['requests']} probe samples after recovery (need {MIN_STABLE_SAMPLES}): "
                                "raise stable_s or lower probe.http.interval_ms")
            elif after["success_ratio"] < p.min_success_ratio:
                problems.append(f"availability {after['success_ratio']:.3f} after recovery is below "
                                f"{p.min_success_ratio:g} ({after['errors']})")
        return problems

    def _steady_after_problems(self, state: dict[str, Any], evidence: dict[str, Any]) -> list[str]:
        problems = []
        if self.target.kubernetes is not None:
            now_replicas = pod_delete_k8s.ready_now(self)
        else:
            roots = [r.pid for r in local.find_roots(self.selector.cmdline, self.selector.env)]
            now_replicas = len(self._serving_now(roots, state.get("port")))
        evidence["replicas_now"] = now_replicas
        if now_replicas < state["expected_replicas"]:
            problems.append(f"{now_replicas} of {state['expected_replicas']} replicas are running now")
        if self.probe:
            after = summarize([sample_once(self.probe.http.url, self.probe.http.timeout_s,
                                           self.probe.http.expect_status) for _ in range(STEADY_SAMPLES)])
            evidence["steady_after"] = after
            if after["success_ratio"] < self.probe.http.min_success_ratio:
                problems.append(f"the service answers {after['successes']}/{after['requests']} probes now")
        return problems

    def hold_targets(self, ctx: PhaseContext) -> None:
        if self.target.kubernetes is not None:
            pod_delete_k8s.take_lease(self, ctx)

    @classmethod
    def release_targets(cls, ctx: PhaseContext) -> dict[str, Any]:
        return pod_delete_k8s.release(ctx)

    @classmethod
    def restore_action(cls, action: Action, ctx: PhaseContext) -> dict[str, Any]:
        """A killed process cannot be revived: wait for the workload to be whole again, up to the SLO."""
        if action.kind == "delete-pod":
            return pod_delete_k8s.restore_action(action)
        undo = action.undo
        selector = undo["selector"]
        deadline = undo["killed_at"] + undo["recovery_slo_s"]
        while True:
            roots = [r.pid for r in local.find_roots(selector.get("cmdline"), selector.get("env") or {})]
            children = local.replicas_of(roots)
            if undo.get("port"):
                serving = local.holders([c.pid for c in children], local.listening_inodes_for_port(undo["port"]))
                children = [c for c in children if c.pid in serving]
            running = len(children)
            if running >= undo["expected_replicas"]:
                return {"replicas": running}
            if time.time() > deadline:
                raise RestoreError(
                    f"{running} of {undo['expected_replicas']} replicas are running and nothing replaced the "
                    "killed one(s): the workload has no supervisor that respawns them; restart it, then run "
                    "restore again")
            time.sleep(0.1)


class _RecoveryWatch:
    """The replica set after the kill: which replacements exist, which have answered, and when."""

    def __init__(self, stage: PodDelete, state: dict[str, Any], killed_at: float):
        self.stage, self.killed_at = stage, killed_at
        self.victims = {tuple(v) for v in state["victims"]}
        self.serving_originals = {tuple(r) for r in state["replicas"]}
        self.originals = self.serving_originals | {tuple(r) for r in state.get("sidecars", [])}
        self.expected, self.readiness, self.port = state["expected_replicas"], state["readiness"], state.get("port")
        self.roots = list(state["root_pids"])
        self.last_refresh = 0.0
        self.ready: dict[tuple[int, float], float] = {}  # replacement -> when it first answered (or was seen)
        self.first_replacement_at: float | None = None
        self.recovered_at: float | None = None
        self.interruptions, self.attempts = 0, 0
        self.current: list[local.Replica] = []
        self.probed = False
        self.ready_now = 0

    def poll(self, now: float) -> bool:
        """Refresh the replica set, probe one replacement that has not answered yet; True when whole."""
        if now - self.last_refresh > ROOT_REFRESH_S and not all(psutil.pid_exists(p) for p in self.roots):
            self.roots = [r.pid for r in local.find_roots(self.stage.selector.cmdline, self.stage.selector.env)]
            self.last_refresh = now
        self.current = [r for r in local.replicas_of(self.roots) if r.key() not in self.victims]
        fresh = [r for r in self.current if r.key() not in self.originals]
        if fresh and self.first_replacement_at is None:
            self.first_replacement_at = now
        self.probed = False
        waiting = [r for r in fresh if r.key() not in self.ready]
        if waiting and self.readiness == "alive":
            for r in waiting:
                self.ready[r.key()] = now
        elif waiting and self.stage.probe is not None:
            self._probe([r.pid for r in self.current])
        live = {r.key() for r in self.current}
        ready = len(self.serving_originals & live) + sum(1 for k in self.ready if k in live)
        self.ready_now = ready
        victims_gone = not any(same_process(pid, created) for pid, created in self.victims)
        return victims_gone and ready >= self.expected

    def _probe(self, candidates: list[int]) -> None:
        assert self.stage.probe is not None
        p = self.stage.probe.http
        self.attempts += 1
        self.probed = True
        waiting = {r.pid: r.key() for r in self.current if r.key() not in self.originals and r.key() not in self.ready}
        # Which worker accepts a connection is the kernel's choice: ask again and again for a moment
        # (a few ms a round) before looking at the process table again.
        until = time.monotonic() + PROBE_BURST_S
        while waiting and time.monotonic() < until:
            answers = local.attributed_requests(p.url, candidates, p.timeout_s, p.expect_status, connections=2)
            for answer in answers:
                if answer.ok and answer.pid in waiting:
                    self.ready[waiting.pop(answer.pid)] = time.time()

    def ready_times(self) -> list[float]:
        live = {r.key() for r in self.current}
        return [t for k, t in self.ready.items() if k in live]

    def interrupted(self, now: float) -> None:
        self.interruptions += 1
        self.recovered_at = None

    def record(self, recovered: bool, now: float) -> dict[str, Any]:
        live = {r.key() for r in self.current}
        unanswered = [k[0] for k in live if k not in self.originals and k not in self.ready]
        out: dict[str, Any] = {
            "recovered": recovered, "killed_at": self.killed_at, "observed_until": now,
            "replicas_ready": self.ready_now, "expected_replicas": self.expected, "readiness": self.readiness,
            "interruptions": self.interruptions, "attributed_probes": self.attempts, "unanswered": unanswered,
            "replacement_started_seconds": round(self.first_replacement_at - self.killed_at, 4)
            if self.first_replacement_at else None,
        }
        if recovered and self.recovered_at is not None:
            out.update(recovered_at=self.recovered_at,
                       recovery_seconds=round(self.recovered_at - self.killed_at, 4))
        return out
