"""``pod-delete``: kill some replicas of a workload, then check they came back and the service held.

This issue ships the local backend: replicas are live processes (see :mod:`mlchaos_steps.targets.local`).
The fault window is observed during ``inject``, right after the kill, because that evidence exists
only while the fault is happening: the HTTP probe is sampled continuously and the replica set is
polled every 10 ms until every replica is back and ready, or ``recovery_slo_s`` runs out. ``verify``
judges that record and checks the steady state once more.

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

import psutil
from pydantic import Field, field_validator, model_validator

from mlchaos_steps.engine.context import PhaseContext, check_kill_switch
from mlchaos_steps.engine.ledger import Action
from mlchaos_steps.engine.probes import HttpSampler, sample_once, summarize
from mlchaos_steps.engine.verdict import Verdict
from mlchaos_steps.errors import InfrastructureError, RestoreError, SpecError
from mlchaos_steps.stages.base import StageSpec, StrictModel
from mlchaos_steps.targets import local

POLL_S = 0.01
ROOT_REFRESH_S = 0.25
STEADY_SAMPLES = 5


class ProcessSelector(StrictModel):
    """Which processes make up the workload. At least one criterion is required."""

    cmdline: str | None = Field(default=None, description="regex searched in the process's joined argv")
    env: dict[str, str] = Field(default_factory=dict, description="environment variables the process must have")

    @field_validator("cmdline")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.strip():
            raise ValueError("is empty: give a regex that matches only your workload's command line")
        import re

        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"is not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _explicit(self) -> ProcessSelector:
        if not self.cmdline and not self.env:
            raise ValueError("an empty selector would match every process: set cmdline and/or env")
        return self


class LocalTarget(StrictModel):
    selector: ProcessSelector


class PodDeleteTarget(StrictModel):
    """Where the replicas run. ``local`` (processes) for now; Kubernetes comes in a later release."""

    local: LocalTarget


class HttpProbe(StrictModel):
    url: str = Field(description="sampled continuously while the fault is in place")
    min_success_ratio: float = Field(default=0.95, ge=0, le=1)
    max_p99_ms: float | None = Field(default=None, gt=0, description="optional latency bound during the fault")
    interval_ms: float = Field(default=20, gt=0, le=10_000)
    timeout_s: float = Field(default=2.0, gt=0)
    expect_status: int | None = Field(default=None, description="default: any 2xx or 3xx")

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value


class Probe(StrictModel):
    http: HttpProbe


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
    grace_s: float = Field(default=10, ge=0, description="with SIGTERM: wait this long, then SIGKILL")
    recovery_slo_s: float = Field(default=30, gt=0, le=3600)
    probe: Probe | None = None

    @model_validator(mode="after")
    def _blast_radius(self) -> PodDelete:
        if self.count is None and self.percent is None:
            raise ValueError("set count (replicas to kill) or percent")
        if self.count is not None and self.percent is not None:
            raise ValueError("set count or percent, not both")
        if self.count is not None and self.count > self.max_count:
            raise ValueError(f"count {self.count} is above max_count {self.max_count}: lower it or raise max_count")
        return self

    @property
    def selector(self) -> ProcessSelector:
        return self.target.local.selector

    def target_ids(self) -> list[str]:
        env = ",".join(f"{k}={v}" for k, v in sorted(self.selector.env.items()))
        return [f"local-processes:{self.selector.cmdline or ''}|{env}"]

    def describe(self) -> str:
        how_many = f"{self.count}" if self.count is not None else f"{self.percent:g}%"
        return f"{self.signal} {how_many} replica(s) of {self.selector.cmdline or self.selector.env}"

    # -- phases -----------------------------------------------------------------------------------
    def _resolve(self) -> tuple[list[psutil.Process], list[local.Replica], int]:
        roots = local.find_roots(self.selector.cmdline, self.selector.env)
        if not roots:
            raise SpecError("spec.target.local.selector", "matches no running process: start the workload, or fix "
                                                          "cmdline/env so they match it")
        replicas = local.replicas_of([r.pid for r in roots])
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
        return roots, replicas, n

    def plan(self, ctx: PhaseContext) -> dict[str, Any]:
        roots, replicas, n = self._resolve()
        return {"roots": [r.pid for r in roots], "replicas": local.describe(replicas), "would_kill": n,
                "signal": self.signal}

    def snapshot(self, ctx: PhaseContext) -> dict[str, Any]:
        roots, replicas, n = self._resolve()
        listening = local.listening_inodes()
        levels = [local.readiness(r.pid, listening) for r in replicas]
        required = min(levels, key=lambda level: local.READINESS_ORDER[level])
        steady = None
        if self.probe:
            samples = [sample_once(self.probe.http.url, self.probe.http.timeout_s, self.probe.http.expect_status)
                       for _ in range(STEADY_SAMPLES)]
            steady = summarize(samples)
            if steady["success_ratio"] < self.probe.http.min_success_ratio:
                raise InfrastructureError(
                    f"steady state not met before the fault: {self.probe.http.url} answered "
                    f"{steady['successes']}/{steady['requests']} probes; fix the service before testing it")
        victims = random.Random(ctx.run_key).sample(replicas, n)
        ctx.save(
            root_pids=[r.pid for r in roots],
            replicas=[[r.pid, r.create_time] for r in replicas],
            victims=[[r.pid, r.create_time] for r in victims],
            expected_replicas=len(replicas),
            readiness=required,
            steady_before=steady,
        )
        return {"replicas": len(replicas), "victims": [v.pid for v in victims], "readiness": required,
                "steady_state": steady}

    def inject(self, ctx: PhaseContext) -> dict[str, Any]:
        state = ctx.state
        sampler = None
        if self.probe:
            p = self.probe.http
            sampler = HttpSampler(p.url, p.interval_ms / 1000, p.timeout_s, p.expect_status).start()
        try:
            killed_at, killed = self._kill(ctx, state)
            observation = self._observe(state, killed_at)
        finally:
            samples = sampler.stop() if sampler else []
        during = [s for s in samples if s.at >= killed_at - 0.001 and s.at <= observation["observed_until"]]
        observation["probe"] = summarize(during) if sampler else None
        observation["killed"] = killed
        ctx.save(observation=observation)
        return {"killed": killed, "recovered": observation["recovered"],
                "recovery_seconds": observation.get("recovery_seconds")}

    def _kill(self, ctx: PhaseContext, state: dict[str, Any]) -> tuple[float, list[int]]:
        sig = getattr(signals, self.signal)
        undo = {"selector": self.selector.model_dump(), "expected_replicas": state["expected_replicas"],
                "readiness": state["readiness"], "recovery_slo_s": self.recovery_slo_s}
        killed, procs = [], []
        killed_at = time.time()
        for pid, created in state["victims"]:
            try:
                proc = psutil.Process(pid)
                if abs(proc.create_time() - created) > 0.5:
                    continue  # the pid now belongs to another process: never kill it
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
        """Poll the replica set until every replica is back and ready, or the SLO runs out."""
        victims = {tuple(v) for v in state["victims"]}
        originals = {tuple(r) for r in state["replicas"]}
        expected, required = state["expected_replicas"], state["readiness"]
        roots = list(state["root_pids"])
        deadline = killed_at + self.recovery_slo_s
        last_refresh = 0.0
        ready_seen: set[tuple[int, float]] = set()
        first_replacement_at = None
        while True:
            check_kill_switch()
            now = time.time()
            if now - last_refresh > ROOT_REFRESH_S and not all(psutil.pid_exists(p) for p in roots):
                roots = [r.pid for r in local.find_roots(self.selector.cmdline, self.selector.env)]
                last_refresh = now
            current = [r for r in local.replicas_of(roots) if r.key() not in victims]
            fresh = [r for r in current if r.key() not in originals]
            if fresh and first_replacement_at is None:
                first_replacement_at = now
            listening = local.listening_inodes() if required != "alive" else set()
            for r in fresh:
                if r.key() not in ready_seen and local.is_ready(r.pid, required, listening):
                    ready_seen.add(r.key())
            ready = [r for r in current if r.key() in originals or r.key() in ready_seen]
            victims_gone = not any(_same(pid, created) for pid, created in victims)
            if victims_gone and len(ready) >= expected:
                return {"recovered": True, "killed_at": killed_at, "recovered_at": now,
                        "recovery_seconds": round(now - killed_at, 4), "observed_until": now,
                        "replacement_started_seconds": round(first_replacement_at - killed_at, 4)
                        if first_replacement_at else None,
                        "replicas_ready": len(ready), "expected_replicas": expected, "readiness": required}
            if now > deadline:
                return {"recovered": False, "killed_at": killed_at, "observed_until": now,
                        "replicas_ready": len(ready), "expected_replicas": expected, "readiness": required}
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
        problems = []
        if not obs["recovered"]:
            problems.append(f"only {obs['replicas_ready']} of {obs['expected_replicas']} replicas were back and "
                            f"ready within recovery_slo_s={self.recovery_slo_s:g}s")
        if self.probe and probe:
            p = self.probe.http
            if probe["requests"] == 0:
                return Verdict.inconclusive("the probe took no sample during the fault", metrics=metrics,
                                            evidence=evidence)
            if probe["success_ratio"] < p.min_success_ratio:
                problems.append(f"availability {probe['success_ratio']:.3f} during the fault is below "
                                f"min_success_ratio {p.min_success_ratio:g} ({probe['errors']})")
            if p.max_p99_ms is not None and probe["p99_ms"] is not None and probe["p99_ms"] > p.max_p99_ms:
                problems.append(f"p99 latency {probe['p99_ms']:.1f} ms during the fault is above {p.max_p99_ms:g} ms")
        # steady state after: the replica set and the service, now
        roots = [r.pid for r in local.find_roots(self.selector.cmdline, self.selector.env)]
        now_replicas = len(local.replicas_of(roots))
        evidence["replicas_now"] = now_replicas
        if now_replicas < state["expected_replicas"]:
            problems.append(f"{now_replicas} of {state['expected_replicas']} replicas are running now")
        if self.probe:
            after = summarize([sample_once(self.probe.http.url, self.probe.http.timeout_s,
                                           self.probe.http.expect_status) for _ in range(STEADY_SAMPLES)])
            evidence["steady_after"] = after
            if after["success_ratio"] < self.probe.http.min_success_ratio:
                problems.append(f"the service answers {after['successes']}/{after['requests']} probes now")
        if problems:
            return Verdict.failed("; ".join(problems), metrics=metrics, evidence=evidence)
        availability = f", availability {metrics['availability']:.3f}" if "availability" in metrics else ""
        return Verdict.passed(
            f"{len(obs['killed'])} replica(s) killed, all {obs['expected_replicas']} back and ready "
            f"({obs['readiness']}) in {obs['recovery_seconds']:.3f}s{availability}",
            metrics=metrics, evidence=evidence)

    @classmethod
    def restore_action(cls, action: Action, ctx: PhaseContext) -> dict[str, Any]:
        """A killed process cannot be revived: wait for the workload to be whole again, up to the SLO."""
        undo = action.undo
        selector = undo["selector"]
        deadline = undo["killed_at"] + undo["recovery_slo_s"]
        while True:
            roots = [r.pid for r in local.find_roots(selector.get("cmdline"), selector.get("env") or {})]
            running = len(local.replicas_of(roots))
            if running >= undo["expected_replicas"]:
                return {"replicas": running}
            if time.time() > deadline:
                raise RestoreError(
                    f"{running} of {undo['expected_replicas']} replicas are running and nothing replaced the "
                    "killed one(s): the workload has no supervisor that respawns them; restart it, then run "
                    "restore again")
            time.sleep(0.1)


def _same(pid: int, created: float) -> bool:
    """Whether ``pid`` is still that process, alive (a zombie awaiting its parent counts as gone)."""
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - created) < 0.5 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
