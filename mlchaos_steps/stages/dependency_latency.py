"""dependency-latency: slow down, choke or take away a dependency (a feature store) through toxiproxy, and
judge the service that depends on it from the traffic the stage itself sends.

Hypothesis: "while the dependency is slow or gone, the service answers within its SLO (falling back where
it must), and once the dependency is back it stops falling back and serves what the dependency holds".
Evidence: every answer to the stage's own requests (status, latency, the fallback mark), and a canary
value the stage writes into the dependency after the fault, which answers must carry.

Example::

    kind: DependencyLatency
    spec:
      proxy: {api: "http://127.0.0.1:8474", name: feature-store}
      fault: {kind: latency, latency_ms: 300, jitter_ms: 50}    # latency | timeout | reset | down | bandwidth
      duration_s: 10
      traffic: {url: "http://127.0.0.1:5001/invocations", body: {entity: e1}}
      fallback_header: x-mlchaos-fallback
      canary:
        write: [redis-cli, -p, "6379", HSET, "features:mlchaos-canary", tenure, "{canary}"]
        request: {entity: mlchaos-canary}
      min_success_ratio: 0.99
      latency_slo_ms: 250
      recovery_slo_s: 10
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from mlchaos_steps.core.context import PhaseContext, check_kill_switch
from mlchaos_steps.core.probes import HttpSampler, Sample, http_request, summarize
from mlchaos_steps.core.processes import run_command
from mlchaos_steps.core.records import Action
from mlchaos_steps.core.spec import StageSpec, StrictModel
from mlchaos_steps.core.strict import HttpUrlText
from mlchaos_steps.core.verdict import Verdict
from mlchaos_steps.errors import InfrastructureError
from mlchaos_steps.stages.parts import argument_list
from mlchaos_steps.targets.toxiproxy import Toxiproxy

CANARY = "{canary}"
POLL_S = 0.05


class ProxyRef(StrictModel):
    api: HttpUrlText = Field(description="toxiproxy's HTTP API, e.g. http://127.0.0.1:8474")
    name: str = Field(min_length=1, description="the proxy in front of the dependency (it must exist)")


class Fault(StrictModel):
    kind: Literal["latency", "timeout", "reset", "down", "bandwidth"]
    latency_ms: int = Field(default=300, ge=1, le=60_000)
    jitter_ms: int = Field(default=0, ge=0, le=60_000)
    rate_kbps: int = Field(default=1, ge=1, description="bandwidth: KB/s")
    stream: Literal["downstream", "upstream"] = "downstream"

    def toxic(self) -> tuple[str, dict[str, int]] | None:
        """(toxiproxy type, attributes); None for ``down`` (the proxy is disabled instead)."""
        return {"latency": ("latency", {"latency": self.latency_ms, "jitter": self.jitter_ms}),
                "timeout": ("timeout", {"timeout": 0}),  # holds every byte until removed
                "reset": ("reset_peer", {"timeout": 0}),
                "bandwidth": ("bandwidth", {"rate": self.rate_kbps}),
                "down": None}[self.kind]


class Traffic(StrictModel):
    url: HttpUrlText = Field(description="the service endpoint the stage sends requests to")
    body: dict[str, Any] | None = Field(default=None, description="POSTed as JSON; none: GET")
    interval_ms: float = Field(default=50, gt=0, le=10_000)
    clients: int = Field(default=2, ge=1, le=32)
    timeout_s: float = Field(default=2.0, gt=0, le=60)


class Canary(StrictModel):
    write: list[str] = Field(description="argument list that writes {canary} into the dependency")
    request: dict[str, Any] = Field(description="the JSON body whose answer must carry the canary")
    timeout_s: float = Field(default=10, gt=0, le=300)

    @field_validator("write", mode="before")
    @classmethod
    def _argv(cls, value: Any) -> list[str]:
        argv = argument_list(value)
        if not isinstance(argv, list) or not any(isinstance(a, str) and CANARY in a for a in argv):
            raise ValueError(f"must contain {CANARY} where the canary value goes")
        return argv


class DependencyLatency(StageSpec):
    kind: ClassVar[str] = "DependencyLatency"
    stage_id: ClassVar[str] = "dependency-latency"
    title: ClassVar[str] = "Slow or take away a dependency through toxiproxy, judge the service that uses it"

    proxy: ProxyRef
    fault: Fault
    duration_s: float = Field(default=10, gt=0, le=600)
    traffic: Traffic
    fallback_header: str = Field(default="x-mlchaos-fallback", min_length=1)
    canary: Canary | None = None
    min_success_ratio: float = Field(default=0.99, ge=0, le=1)
    latency_slo_ms: float = Field(default=500, gt=0)
    recovery_slo_s: float = Field(default=10, gt=0, le=600)
    stable_s: float = Field(default=2, gt=0, le=60)
    steady_s: float = Field(default=2, gt=0, le=60)

    def target_ids(self) -> list[str]:
        return [f"toxiproxy:{self.proxy.api}/{self.proxy.name}"]

    def describe(self) -> str:
        return f"{self.fault.kind} on {self.proxy.name} for {self.duration_s:g}s"

    def _proxies(self) -> Toxiproxy:
        return Toxiproxy(self.proxy.api.rstrip('/'))

    def _sampler(self, body: dict[str, Any] | None = None) -> HttpSampler:
        payload = json.dumps(body if body is not None else self.traffic.body).encode() \
            if (body is not None or self.traffic.body is not None) else None
        return HttpSampler(self.traffic.url, self.traffic.interval_ms / 1000, self.traffic.timeout_s,
                           body=payload, clients=self.traffic.clients, fallback_header=self.fallback_header)

    # -- phases -----------------------------------------------------------------------------------
    def plan(self, ctx: PhaseContext) -> dict[str, Any]:
        proxy = self._proxies().proxy(self.proxy.name)
        return {"proxy": proxy.get("name"), "listen": proxy.get("listen"), "upstream": proxy.get("upstream"),
                "fault": self.fault.model_dump(), "toxics_now": [t["name"] for t in proxy.get("toxics", [])]}

    def snapshot(self, ctx: PhaseContext) -> dict[str, Any]:
        proxy = self._proxies().proxy(self.proxy.name)
        if not proxy.get("enabled", True) or proxy.get("toxics"):
            raise InfrastructureError(f"proxy {self.proxy.name} is not clean before the fault (enabled: "
                                      f"{proxy.get('enabled')}, toxics: {[t['name'] for t in proxy['toxics']]})")
        with self._sampler() as sampler:
            _sleep_checking(self.steady_s)
        steady = sampler.stop()
        summary = _window(steady)
        if summary["success_ratio"] is None or summary["success_ratio"] < self.min_success_ratio:
            raise InfrastructureError(f"steady state does not hold before the fault: {summary}")
        if summary["fallback_share"]:
            raise InfrastructureError(f"the service already answers from its fallback before the fault "
                                      f"({summary['fallback_share']:.0%} of {summary['requests']} answers)")
        found = {"proxy": {k: proxy.get(k) for k in ("name", "listen", "upstream")}, "steady": summary}
        if self.canary is not None:
            seen = self._canary_seen(time.time() + self.canary.timeout_s)
            if seen is None:
                raise InfrastructureError("the canary written into the dependency never showed in an answer "
                                          "before the fault: check canary.write and canary.request")
            found["canary_seconds_before_fault"] = seen
        ctx.save(steady=summary)
        return found

    def inject(self, ctx: PhaseContext) -> dict[str, Any]:
        proxies = self._proxies()
        name = _toxic_name(ctx.run_key)
        toxic = self.fault.toxic()
        if toxic is None:
            with ctx.destructive("proxy-disabled", self.proxy.name,
                                 {"api": self.proxy.api, "proxy": self.proxy.name}):
                proxies.set_enabled(self.proxy.name, False)
        else:
            with ctx.destructive("toxic", self.proxy.name,
                                 {"api": self.proxy.api, "proxy": self.proxy.name, "toxic": name}):
                proxies.add_toxic(self.proxy.name, toxic[0], toxic[1], name=name, stream=self.fault.stream)
        ctx.save(injected_at=time.time())
        return {"toxic": name if toxic else None, "disabled": toxic is None}

    def verify(self, ctx: PhaseContext) -> Verdict:
        injected_at = float(ctx.state["injected_at"])
        fault_ends = injected_at + self.duration_s
        with self._sampler() as sampler:
            _sleep_checking(max(0.0, fault_ends - time.time()))
            ended_at = time.time()
            ctx.undo_now(lambda action: self.restore_action(action, ctx))  # the fault lasts duration_s
            deadline = ended_at + self.recovery_slo_s + self.stable_s
            recovered_at = _wait_recovered(sampler, ended_at, self.stable_s, deadline)
        samples = sampler.stop()
        canary_s = None
        if self.canary is not None and recovered_at is not None:
            canary_s = self._canary_seen(time.time() + self.canary.timeout_s)
        return self._judge(samples, injected_at, ended_at, recovered_at, canary_s)

    @classmethod
    def restore_action(cls, action: Action, ctx: PhaseContext) -> dict[str, Any]:
        undo = action.undo
        proxies = Toxiproxy(undo["api"])
        if action.kind == "proxy-disabled":
            proxies.set_enabled(undo["proxy"], True)
            return {"proxy": undo["proxy"], "enabled": True}
        removed = proxies.remove_toxic(undo["proxy"], undo["toxic"])
        return {"proxy": undo["proxy"], "toxic": undo["toxic"], "removed": removed}

    # -- helpers ----------------------------------------------------------------------------------
    def _canary_seen(self, deadline: float) -> float | None:
        """Write a fresh canary value into the dependency; seconds until an answer carries it (None: never)."""
        assert self.canary is not None
        token = f"mlchaos-{secrets.token_hex(6)}"
        argv = [a.replace(CANARY, token) for a in self.canary.write]
        written = run_command(argv, timeout_s=30)
        if written.exit_code != 0:
            raise InfrastructureError(f"canary.write exited {written.exit_code}: {written.stderr[-300:]}")
        started = time.time()
        body = json.dumps(self.canary.request).encode()
        while time.time() < deadline:
            check_kill_switch()
            try:
                status, answer, _ = http_request(self.traffic.url, self.traffic.timeout_s, "POST", body,
                                                 {"Content-Type": "application/json"})
                if status == 200 and token.encode() in answer:
                    return round(time.time() - started, 3)
            except OSError:
                pass
            time.sleep(POLL_S)
        return None

    def _judge(self, samples: list[Sample], injected_at: float, ended_at: float, recovered_at: float | None,
               canary_s: float | None) -> Verdict:
        during = _window([s for s in samples if injected_at <= s.at < ended_at])
        after = _window([s for s in samples if s.at >= ended_at])
        metrics: dict[str, float] = {"fallback_share": during["fallback_share"] or 0.0}
        if during["success_ratio"] is not None:
            metrics["availability"] = round(during["success_ratio"], 4)
        if during["p99_ms"] is not None:
            metrics["p99_ms"] = during["p99_ms"]
        if recovered_at is not None:
            metrics["recovery_seconds"] = round(recovered_at - ended_at, 3)
        evidence = {"during": during, "after": after, "canary_seconds": canary_s}
        if not during["requests"]:
            return Verdict.inconclusive("no request was answered or failed during the fault", metrics=metrics,
                                        evidence=evidence)
        problems = []
        if (during["success_ratio"] or 0) < self.min_success_ratio:
            problems.append(f"availability {during['success_ratio']:.3f} < {self.min_success_ratio:g} during the "
                            f"fault ({during['errors']})")
        if during["p99_ms"] is not None and during["p99_ms"] > self.latency_slo_ms:
            problems.append(f"p99 {during['p99_ms']:.0f} ms > {self.latency_slo_ms:g} ms during the fault")
        if recovered_at is None:
            problems.append(f"not back to normal within {self.recovery_slo_s:g}s after the fault ended (fallback "
                            f"share after it {after['fallback_share']:.0%}, availability {after['success_ratio']})")
        elif self.canary is not None and canary_s is None:
            problems.append("answers never carried the canary written into the dependency after the fault: "
                            "the service is not reading it (a stale cache)")
        if problems:
            return Verdict.failed("; ".join(problems), metrics=metrics, evidence=evidence)
        return Verdict.passed(f"{self.describe()}: availability {during['success_ratio']:.3f}, p99 "
                              f"{during['p99_ms']} ms, {metrics['fallback_share']:.0%} fallback, normal again "
                              f"{metrics['recovery_seconds']:.2f}s after", metrics=metrics, evidence=evidence)


def _toxic_name(run_key: str) -> str:
    """Named after the run, so a toxic left behind is found (and recognised) by name."""
    return f"mlchaos-{hashlib.sha256(run_key.encode()).hexdigest()[:16]}"


def _window(samples: list[Sample]) -> dict[str, Any]:
    summary = summarize(samples)
    answered = [s for s in samples if s.ok]
    summary["fallback_share"] = round(sum(s.fallback for s in answered) / len(answered), 4) if answered else None
    return summary


def _sleep_checking(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check_kill_switch()
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


def _wait_recovered(sampler: HttpSampler, ended_at: float, stable_s: float, deadline: float) -> float | None:
    """When the answers after the fault became normal (ok, not fallback) and stayed so for ``stable_s``."""
    while time.time() < deadline:
        check_kill_switch()
        since = _normal_since([s for s in list(sampler.samples) if s.at >= ended_at])
        if since is not None and time.time() - since >= stable_s:
            return since
        time.sleep(POLL_S)
    return None


def _normal_since(samples: list[Sample]) -> float | None:
    """The start of the last run of normal answers, if the newest answer is normal."""
    ordered = sorted(samples, key=lambda s: s.at)
    if not ordered or not ordered[-1].ok or ordered[-1].fallback:
        return None
    start = ordered[-1].at
    for sample in reversed(ordered):
        if not sample.ok or sample.fallback:
            break
        start = sample.at
    return start

