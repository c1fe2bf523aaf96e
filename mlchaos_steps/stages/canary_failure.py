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

from mlchaos_steps.core.context import PhaseContext, check_kill_switch
from mlchaos_steps.core.probes import NETWORK_ERRORS, HttpSampler, http_request, sample_once, summarize
from mlchaos_steps.core.processes import same_process
from mlchaos_steps.core.records import Action
from mlchaos_steps.core.spec import StageSpec, StrictModel, version_or_alias
from mlchaos_steps.core.verdict import Verdict
from mlchaos_steps.errors import InfrastructureError, SpecError
from mlchaos_steps.stages import canary_k8s
from mlchaos_steps.stages.parts import ProcessSelector

POLL_S = 0.05
BACKEND_HEADER = "x-mlchaos-backend"
CONTRACT = ("a router must meet the contract in the README (GET /mlchaos/state with phase, canary_weight and "
            "aborted_at; POST/DELETE /mlchaos/fault; an x-mlchaos-backend header of stable or canary on every "
            "answer it routes)")


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
    rollout: canary_k8s.RolloutSource | None = Field(
        default=None, description="read the rollout's state from Kubernetes (an Argo Rollouts Rollout or a "
                                  "stable/canary Deployment pair) instead of the router's /mlchaos/state")
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
        if self.fault == "crash" and self.rollout is not None:
            raise ValueError("fault: crash kills local processes; on Kubernetes use errors or latency (the router's "
                             "fault filter), or pod-delete on the canary's pods")
        return self

    def target_ids(self) -> list[str]:
        return [f"canary-router:{self.router.url.rstrip('/')}"]

    def describe(self) -> str:
        return f"{self.fault} on the canary of {self.model} {self.candidate}"

    def _state(self) -> dict[str, Any]:
        if self.rollout is not None:
            state = canary_k8s.state(self.rollout.kubernetes)
            if state.get("aborted_at") is not None:
                state["aborted_at"] = _timestamp(state["aborted_at"])
            return state
        try:
            status, body, _ = http_request(self.router.url.rstrip("/") + "/mlchaos/state", 5)
        except NETWORK_ERRORS as exc:
            raise InfrastructureError(f"the canary router at {self.router.url} is unreachable: {exc}") from exc
        if status != 200:
            raise InfrastructureError(f"the canary router answered {status} on /mlchaos/state: {CONTRACT}")
        try:
            state = json.loads(body)
        except ValueError:
            state = None
        if not isinstance(state, dict) or "phase" not in state or _number(state.get("canary_weight")) is None:
            raise InfrastructureError(f"the router at {self.router.url} answered /mlchaos/state without phase and "
                                      f"canary_weight: {CONTRACT}")
        # Routers write these their own way ("Aborted" or "aborted", "0" or 0, Unix seconds or ISO 8601).
        state["phase"] = str(state["phase"]).strip().capitalize()
        state["canary_weight"] = _number(state["canary_weight"])
        if state.get("aborted_at") is not None:
            state["aborted_at"] = _timestamp(state["aborted_at"])
        return state

    def _canary_pids(self) -> list[tuple[int, float]]:
        from mlchaos_steps.targets import local

        assert self.canary is not None
        roots = local.find_roots(self.canary.selector.cmdline, self.canary.selector.env)
        if not roots:
            raise SpecError("spec.canary.selector", "matches no running process: fix it to match the canary")
        local.check_one_workload(roots, "spec.canary.selector")
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
        if self.rollout is not None:  # before anything changes: permissions, protected namespace
            canary_k8s.preflight(self.rollout.kubernetes)
        router = self._state()
        if router.get("phase") != "Progressing" or not router.get("canary_weight"):
            raise InfrastructureError(f"no canary is in progress at {self.router.url} (phase {router.get('phase')}, "
                                      f"canary weight {router.get('canary_weight')}): start the rollout first")
        body = json.dumps(self.traffic.sample).encode()
        url = self.router.url.rstrip("/") + self.traffic.path
        samples = [sample_once(url, self.traffic.timeout_s, None, body) for _ in range(10)]
        steady = summarize(samples)
        if steady["success_ratio"] < self.stable.min_success_ratio:
            raise InfrastructureError(f"steady state not met before the fault: {steady}")
        if any(s.ok and s.backend not in ("stable", "canary") for s in samples):
            raise SpecError("spec.router.url", f"{self.router.url} answered without an {BACKEND_HEADER} header of "
                                               f"stable or canary, so its traffic cannot be judged: {CONTRACT}")
        ctx.set_model_version(ref)
        ctx.save(champion_before=alias_version(ref.name, self.champion_alias),
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
            samples = sampler.stop()  # waits for requests in flight; unanswered ones count as failures
        observation.update(self._judge_traffic([s for s in samples if s.at >= injected_at], observation))
        ctx.save(observation=observation)
        return {"rolled_back": observation["rolled_back"], "rollback_seconds": observation.get("rollback_seconds")}

    @staticmethod
    def _judge_traffic(during: list[Any], observation: dict[str, Any]) -> dict[str, Any]:
        """Split the requests sent during the fault by who served them, as each answer says.

        Requests that got no routed answer (time-outs, hangs, resets, requests still in flight) count
        against stable: they are what callers of a hanging stable see. After the abort, every request
        must be served by stable."""
        aborted_at = observation.get("aborted_at") if observation["rolled_back"] else None
        if aborted_at is not None:  # on Kubernetes, Service endpoints drop the canary's pods a moment later
            aborted_at += observation.get("route_lag_s", 0)
        after = [s for s in during if aborted_at is not None and s.at >= aborted_at]
        return {
            "traffic": summarize(during),
            "stable_traffic": summarize([s for s in during if s.backend == "stable" or (not s.backend and not s.ok)]),
            "canary_traffic": summarize([s for s in during if s.backend == "canary"]),
            "requests_after_abort": len(after),
            "canary_after_abort": sum(1 for s in after if s.backend == "canary"),
            "unlabelled_answers": sum(1 for s in during if s.ok and s.backend not in ("stable", "canary")),
        }

    def _apply(self, ctx: PhaseContext) -> None:
        if self.fault == "crash":
            import psutil

            for pid, created in ctx.state["canary_pids"]:
                with ctx.destructive("kill-canary", f"pid:{pid}", {"pid": pid}):
                    if same_process(pid, created):
                        proc = psutil.Process(pid)
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
        # After the abort the window stays open as long as the slowest request the SLO allows, so a
        # stable that hangs under the full load shows up.
        route_lag_s = self.rollout.kubernetes.route_lag_s if self.rollout is not None else 0.0
        settle_s = max(0.5, (self.stable.max_p99_ms or self.traffic.timeout_s * 1000) / 1000) + route_lag_s
        while True:
            check_kill_switch()
            state = self._state()
            if state.get("phase") == "Aborted" and state.get("canary_weight") == 0:
                aborted_at = state.get("aborted_at")
                if self.rollout is not None:
                    # the cluster keeps whole seconds (or no time at all): the abort counts from when it was
                    # seen, and only an abort recorded more than a second before the fault is stale
                    recorded, aborted_at = aborted_at, time.time()
                    if recorded is not None and recorded < injected_at - 1:
                        aborted_at = recorded
                if aborted_at is None:
                    raise InfrastructureError(f"the router says Aborted but gives no aborted_at time: {CONTRACT}")
                if aborted_at < injected_at:
                    return {"rolled_back": False, "stale_abort": True, "injected_at": injected_at,
                            "aborted_at": aborted_at, "router": state}
                time.sleep(settle_s)
                state = self._settled(state)
                return {"rolled_back": True, "injected_at": injected_at, "aborted_at": aborted_at,
                        "route_lag_s": route_lag_s,
                        "rollback_seconds": round(aborted_at - injected_at, 3),
                        "abort_reason": state.get("abort_reason"), "router": state}
            if time.time() > deadline:
                return {"rolled_back": False, "injected_at": injected_at, "router": state}
            time.sleep(POLL_S)

    def _settled(self, state: dict[str, Any]) -> dict[str, Any]:
        """The reference router tags the candidate rejected right after its abort: wait for that."""
        settle = time.time() + 10
        while (state.get("candidate") or {}).get("version") and not (
                state.get("rejected_tagged") or state.get("reject_error")) and time.time() < settle:
            time.sleep(POLL_S)
            state = self._state()
        return state

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
        if obs["traffic"]["requests"] == 0:
            return Verdict.inconclusive("no request was sent during the fault", metrics=metrics, evidence=evidence)
        if obs.get("unlabelled_answers"):
            return Verdict.inconclusive(f"{obs['unlabelled_answers']} answered request(s) carried no "
                                        f"{BACKEND_HEADER} header, so who served them is unknown: {CONTRACT}",
                                        metrics=metrics, evidence=evidence)
        problems = self._problems(obs, stable)
        if not alias.ok:
            problems.append(f"the champion alias moved: {alias.detail}")
        if problems:
            return Verdict.failed("; ".join(problems), metrics=metrics, evidence=evidence)
        return Verdict.passed(
            f"the rollout aborted {obs['rollback_seconds']:.2f}s after the {self.fault} fault, no request reached "
            f"the canary after it ({obs['requests_after_abort']} sent), stable served "
            f"{stable['success_ratio']:.3f} of {stable['requests']} requests, @{self.champion_alias} stayed put",
            metrics=metrics, evidence=evidence)

    def _problems(self, obs: dict[str, Any], stable: dict[str, Any]) -> list[str]:
        problems = []
        if obs.get("stale_abort"):
            problems.append(f"the router's abort was recorded {obs['injected_at'] - obs['aborted_at']:.2f}s before "
                            "the fault: that is not a rollback of this canary")
        elif not obs["rolled_back"]:
            problems.append(f"the rollout did not abort within rollback_within_s={self.rollback_within_s:g}s "
                            f"(router phase {obs['router'].get('phase')}, canary weight "
                            f"{obs['router'].get('canary_weight')})")
        if obs.get("canary_after_abort"):
            lag = f" (and route_lag_s={obs['route_lag_s']:g}s)" if obs.get("route_lag_s") else ""
            problems.append(f"{obs['canary_after_abort']} of {obs['requests_after_abort']} request(s) sent after the "
                            f"abort{lag} were served by the canary: traffic did not go back to stable")
        if stable["requests"] == 0:
            problems.append(f"stable served none of the {obs['traffic']['requests']} requests sent during the fault")
        elif stable["success_ratio"] < self.stable.min_success_ratio:
            problems.append(f"stable served {stable['success_ratio']:.3f} of its requests (time-outs and requests "
                            f"without an answer included: {stable['errors']}), below {self.stable.min_success_ratio:g}")
        if self.stable.max_p99_ms and stable["p99_ms"] and stable["p99_ms"] > self.stable.max_p99_ms:
            problems.append(f"stable p99 {stable['p99_ms']:.0f} ms is above {self.stable.max_p99_ms:g} ms")
        return problems

    @classmethod
    def restore_action(cls, action: Action, ctx: PhaseContext) -> dict[str, Any]:
        if action.kind == "router-fault":
            try:
                status, _, _ = http_request(action.undo["router"].rstrip("/") + "/mlchaos/fault", 5, "DELETE")
            except NETWORK_ERRORS as exc:
                raise InfrastructureError(f"cannot reach the router to clear the fault: {exc}") from exc
            if status != 200:
                raise InfrastructureError(f"the router answered {status} when clearing the fault")
            return {"fault": "cleared"}
        # kill-canary: the canary is the rollout's to replace or abandon; nothing of ours to put back
        return {"note": "canary process was killed; the rollout owns its replacement"}


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _timestamp(value: Any) -> float | None:
    """Unix seconds, or an ISO 8601 time (what Argo Rollouts and Kubernetes write)."""
    number = _number(value)
    if number is not None:
        return number
    try:
        from datetime import datetime

        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
