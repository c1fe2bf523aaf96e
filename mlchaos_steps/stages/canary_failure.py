"""``canary-failure``: make the canary fail, check the rollout aborts and stable holds.

The fault (``crash``: SIGKILL the canary's processes; ``errors`` / ``latency``: the router's fault
filter on canary traffic) is applied in ``inject``, which then sends steady traffic through the
router and watches it until the rollout aborts or ``rollback_within_s`` runs out. ``verify`` passes
when the rollout aborted in time with 100% of traffic back on stable, requests served by stable met
their SLO, and the champion alias did not move.

Example::

    kind: CanaryFailure
    spec:
      model: churn-classifier
      candidate: "@challenger"
      router: {url: "http://127.0.0.1:8080"}
      fault: errors
      rollback_within_s: 30
      stable: {min_success_ratio: 0.99, max_p99_ms: 1000}
      traffic: {sample: {"inputs": [[0.1, 0.2, 0.3, 0.4]]}}
"""

from __future__ import annotations

import json
import signal as signals
import time
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from mlchaos_steps.engine.context import PhaseContext, check_kill_switch
from mlchaos_steps.engine.ledger import Action
from mlchaos_steps.engine.probes import HttpSampler, http_request, sample_once, summarize
from mlchaos_steps.engine.verdict import Verdict
from mlchaos_steps.errors import InfrastructureError, SpecError
from mlchaos_steps.stages.base import StageSpec, StrictModel, version_or_alias
from mlchaos_steps.stages.pod_delete import ProcessSelector

POLL_S = 0.05


class RouterRef(StrictModel):
    url: str = Field(description="the canary router: /mlchaos/state, /mlchaos/fault, and the traffic it splits")


class StableSlo(StrictModel):
    min_success_ratio: float = Field(default=0.99, ge=0, le=1)
    max_p99_ms: float | None = Field(default=None, gt=0)


class Traffic(StrictModel):
    path: str = "/invocations"
    sample: dict[str, Any] = Field(description="JSON body of each request")
    interval_ms: float = Field(default=20, gt=0, description="pause between requests of each client")
    timeout_s: float = Field(default=5, gt=0)
    clients: int = Field(default=4, ge=1, le=64, description="concurrent clients sending traffic")


class CanaryTarget(StrictModel):
    selector: ProcessSelector


class CanaryFailure(StageSpec):
    """Make a model canary fail; the rollout must abort."""

    kind: ClassVar[str] = "CanaryFailure"
    stage_id: ClassVar[str] = "canary-failure"
    title: ClassVar[str] = "Canary failure"

    model: str = Field(min_length=1)
    candidate: str = Field(description="the version the canary serves: a number or an @alias")
    champion_alias: str = "champion"
    router: RouterRef
    fault: Literal["crash", "errors", "latency"] = "errors"
    delay_ms: float = Field(default=3000, gt=0, description="with fault: latency")
    canary: CanaryTarget | None = Field(default=None, description="the canary's processes (fault: crash)")
    rollback_within_s: float = Field(default=30, gt=0, le=3600)
    stable: StableSlo = Field(default_factory=StableSlo)
    traffic: Traffic

    _version = field_validator("candidate", mode="before")(version_or_alias)

    @model_validator(mode="after")
    def _crash_needs_processes(self) -> CanaryFailure:
        if self.fault == "crash" and self.canary is None:
            raise ValueError("fault: crash needs canary.selector to find the canary's processes")
        return self

    def target_ids(self) -> list[str]:
        return [f"canary-router:{self.router.url.rstrip('/')}"]

    def describe(self) -> str:
        return f"{self.fault} on the canary of {self.model} {self.candidate}"

    def _state(self) -> dict[str, Any]:
        try:
            status, body, _ = http_request(self.router.url.rstrip("/") + "/mlchaos/state", 5)
        except OSError as exc:
            raise InfrastructureError(f"the canary router at {self.router.url} is unreachable: {exc}") from exc
        if status != 200:
            raise InfrastructureError(f"the canary router answered {status} on /mlchaos/state")
        return json.loads(body)  # type: ignore[no-any-return]

    def _canary_pids(self) -> list[tuple[int, float]]:
        from mlchaos_steps.targets import local

        assert self.canary is not None
        roots = local.find_roots(self.canary.selector.cmdline, self.canary.selector.env)
        if not roots:
            raise SpecError("spec.canary.selector", "matches no running process: fix it to match the canary")
        return [(r.pid, r.create_time()) for r in roots]

    # -- phases -----------------------------------------------------------------------------------
    def plan(self, ctx: PhaseContext) -> dict[str, Any]:
        from mlchaos_steps.targets.mlflow import resolve_version

        ref = resolve_version(self.model, self.candidate, field="spec.candidate")
        state = self._state()
        return {"candidate": ref.uri, "router": state, "fault": self.fault,
                "would_kill": [p for p, _ in self._canary_pids()] if self.fault == "crash" else []}

    def snapshot(self, ctx: PhaseContext) -> dict[str, Any]:
        from mlchaos_steps.targets.mlflow import alias_version, resolve_version

        ref = resolve_version(self.model, self.candidate, field="spec.candidate")
        router = self._state()
        if router.get("phase") != "Progressing" or not router.get("canary_weight"):
            raise InfrastructureError(f"no canary is in progress at {self.router.url} (phase {router.get('phase')}, "
                                      f"canary weight {router.get('canary_weight')}): start the rollout first")
        body = json.dumps(self.traffic.sample).encode()
        url = self.router.url.rstrip("/") + self.traffic.path
        steady = summarize([sample_once(url, self.traffic.timeout_s, None, body) for _ in range(10)])
        if steady["success_ratio"] < self.stable.min_success_ratio:
            raise InfrastructureError(f"steady state not met before the fault: {steady}")
        ctx.save(model_version={"name": ref.name, "version": ref.version},
                 champion_before=alias_version(ref.name, self.champion_alias),
                 canary_pids=self._canary_pids() if self.fault == "crash" else [], steady_before=steady)
        return {"candidate": ref.uri, "canary_weight": router["canary_weight"], "steady_state": steady}

    def inject(self, ctx: PhaseContext) -> dict[str, Any]:
        p = self.traffic
        sampler = HttpSampler(self.router.url.rstrip("/") + p.path, p.interval_ms / 1000, p.timeout_s,
                              body=json.dumps(p.sample).encode(), clients=p.clients).start()
        try:
            time.sleep(0.2)  # a little traffic before the fault
            injected_at = time.time()
            self._apply(ctx)
            observation = self._watch(injected_at)
        finally:
            samples = sampler.stop()
        during = [s for s in samples if s.at >= injected_at]
        observation.update(
            traffic=summarize(during),
            stable_traffic=summarize([s for s in during if s.backend == "stable"]),
            canary_traffic=summarize([s for s in during if s.backend == "canary"]),
            unrouted_failures=sum(1 for s in during if not s.backend and not s.ok),
        )
        ctx.save(observation=observation)
        return {"rolled_back": observation["rolled_back"], "rollback_seconds": observation.get("rollback_seconds")}

    def _apply(self, ctx: PhaseContext) -> None:
        if self.fault == "crash":
            import psutil

            for pid, created in ctx.state["canary_pids"]:
                with ctx.destructive("kill-canary", f"pid:{pid}", {"pid": pid}):
                    proc = psutil.Process(pid)
                    if abs(proc.create_time() - created) < 0.5:
                        for child in proc.children(recursive=True):
                            child.send_signal(signals.SIGKILL)
                        proc.send_signal(signals.SIGKILL)
            return
        fault = {"kind": self.fault, "delay_ms": self.delay_ms}
        with ctx.destructive("router-fault", self.router.url, {"router": self.router.url, "fault": fault}):
            status, body, _ = http_request(self.router.url.rstrip("/") + "/mlchaos/fault", 5, "POST",
                                           json.dumps(fault).encode(), {"Content-Type": "application/json"})
            if status != 200:
                raise InfrastructureError(f"the router refused the fault: {status} {body[:200]!r}")

    def _watch(self, injected_at: float) -> dict[str, Any]:
        deadline = injected_at + self.rollback_within_s
        while True:
            check_kill_switch()
            state = self._state()
            if state.get("phase") == "Aborted" and state.get("canary_weight") == 0:
                time.sleep(0.5)  # traffic after the abort shows whether stable carries it all
                settle = time.time() + 10
                while (state.get("candidate") or {}).get("version") and not (
                        state.get("rejected_tagged") or state.get("reject_error")) and time.time() < settle:
                    time.sleep(POLL_S)  # the mechanism is still tagging the candidate rejected
                    state = self._state()
                return {"rolled_back": True, "injected_at": injected_at, "aborted_at": state["aborted_at"],
                        "rollback_seconds": round(state["aborted_at"] - injected_at, 3),
                        "abort_reason": state.get("abort_reason"), "router": state}
            if time.time() > deadline:
                return {"rolled_back": False, "injected_at": injected_at, "router": state}
            time.sleep(POLL_S)

    def verify(self, ctx: PhaseContext) -> Verdict:
        from mlchaos_steps.verification import alias_unchanged

        state = ctx.state
        obs = state.get("observation")
        if not obs:
            return Verdict.inconclusive("no observation of the fault window was recorded")
        metrics: dict[str, float] = {}
        if obs.get("rollback_seconds") is not None:
            metrics["rollback_seconds"] = obs["rollback_seconds"]
        stable = obs["stable_traffic"]
        if stable["success_ratio"] is not None:
            metrics["availability"] = round(stable["success_ratio"], 4)
        alias = alias_unchanged(self.model, self.champion_alias, state["champion_before"])
        evidence = {"observation": obs, "alias": alias.as_dict()}
        problems = []
        if not obs["rolled_back"]:
            problems.append(f"the rollout did not abort within rollback_within_s={self.rollback_within_s:g}s "
                            f"(router phase {obs['router'].get('phase')}, canary weight "
                            f"{obs['router'].get('canary_weight')})")
        if stable["requests"] == 0:
            return Verdict.inconclusive("no request reached stable during the fault", metrics=metrics,
                                        evidence=evidence)
        if stable["success_ratio"] < self.stable.min_success_ratio:
            problems.append(f"stable served {stable['success_ratio']:.3f} of its requests, below "
                            f"{self.stable.min_success_ratio:g}")
        if self.stable.max_p99_ms and stable["p99_ms"] and stable["p99_ms"] > self.stable.max_p99_ms:
            problems.append(f"stable p99 {stable['p99_ms']:.0f} ms is above {self.stable.max_p99_ms:g} ms")
        if not alias.ok:
            problems.append(f"the champion alias moved: {alias.detail}")
        if problems:
            return Verdict.failed("; ".join(problems), metrics=metrics, evidence=evidence)
        return Verdict.passed(
            f"the rollout aborted {obs['rollback_seconds']:.2f}s after the {self.fault} fault, stable served "
            f"{stable['success_ratio']:.3f} of {stable['requests']} requests, @{self.champion_alias} stayed put",
            metrics=metrics, evidence=evidence)

    @classmethod
    def restore_action(cls, action: Action, ctx: PhaseContext) -> dict[str, Any]:
        if action.kind == "router-fault":
            try:
                status, _, _ = http_request(action.undo["router"].rstrip("/") + "/mlchaos/fault", 5, "DELETE")
            except OSError as exc:
                raise InfrastructureError(f"cannot reach the router to clear the fault: {exc}") from exc
            if status != 200:
                raise InfrastructureError(f"the router answered {status} when clearing the fault")
            return {"fault": "cleared"}
        # kill-canary: the canary is the rollout's to replace or abandon; nothing of ours to put back
        return {"note": "canary process was killed; the rollout owns its replacement"}
