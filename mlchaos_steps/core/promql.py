"""PromQL probes: the steady state and the hypothesis stated as a Prometheus query, for every stage.

``probe: {prometheus: {url, query, op, threshold, for_s, step_s}}`` in any stage's spec. Snapshot asks
that the query held over the last ``for_s`` (at least three steps) before anything breaks; verify asks
that it held from inject's start until now, a breach counting once it lasts ``for_s`` (0: any sample).
Prometheus's own samples are the evidence (kept in the journal). A query that returns nothing, or a
Prometheus that does not answer, proves nothing: ``inconclusive``, never a pass.

Example::

    probe = PromQLProbe(url="http://127.0.0.1:9090", op="<", threshold=0.25,
                        query='histogram_quantile(0.99, sum by (le) (rate(http_seconds_bucket[10s])))')
    result = probe.evaluate(start=t0, end=time.time())   # result.breach, result.samples
"""

from __future__ import annotations

import operator
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from mlchaos_steps.core.strict import HttpUrlText, StrictModel

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
       "!=": operator.ne}
MAX_POINTS_KEPT = 300  # per series, in the evidence


class PromQLError(Exception):
    """Prometheus did not answer, or answered with an error or nothing: nothing is proven."""


class PromQLProbe(StrictModel):
    url: HttpUrlText = Field(description="Prometheus' base URL, e.g. http://prometheus:9090")
    query: str = Field(min_length=1, description="PromQL; every series it returns is checked")
    op: Literal["<", "<=", ">", ">=", "==", "!="] = Field(description="each sample must satisfy `value op threshold`")
    threshold: float
    for_s: float = Field(default=0, ge=0, le=86_400, description="a breach counts once it lasts this long")
    step_s: float = Field(default=1, gt=0, le=3600, description="resolution of the range query")
    settle_s: float = Field(default=15, ge=0, le=600,
                            description="how long verify waits for Prometheus to have scraped up to its end")
    timeout_s: float = Field(default=5, gt=0, le=120)
    bearer_token: str | None = Field(default=None, description="sent as Authorization: Bearer (redacted)")
    ca_file: str | None = Field(default=None, description="CA bundle for https")
    insecure_skip_verify: bool = False


    def describe(self) -> str:
        return f"{self.query} {self.op} {self.threshold:g}"

    def query_range(self, start: float, end: float) -> list[dict[str, Any]]:
        """The matrix Prometheus returns for [start, end] (raises PromQLError when it cannot say)."""
        import httpx  # here: stage specs are parsed where DAG files are (no network client at parse time)

        headers = {"Authorization": f"Bearer {self.bearer_token}"} if self.bearer_token else {}
        verify: Any = False if self.insecure_skip_verify else (self.ca_file or True)
        try:
            response = httpx.get(f"{self.url.rstrip('/')}/api/v1/query_range", headers=headers, timeout=self.timeout_s,
                                 verify=verify, params={"query": self.query, "start": f"{start:.3f}",
                                                        "end": f"{end:.3f}", "step": f"{self.step_s:g}"})
            answer = response.json()
        except (httpx.HTTPError, OSError, ValueError) as exc:
            raise PromQLError(f"Prometheus at {self.url} did not answer: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200 or answer.get("status") != "success":
            raise PromQLError(f"Prometheus refused the query ({response.status_code}): "
                              f"{answer.get('error') or answer}")
        return list(answer.get("data", {}).get("result") or [])

    def evaluate(self, start: float, end: float, wait_for_end: bool = False) -> ProbeOutcome:
        """Check every sample of [start, end]. ``wait_for_end``: wait up to ``settle_s`` for a sample at
        or after ``end`` (Prometheus scrapes on its own schedule)."""
        deadline = time.monotonic() + (self.settle_s if wait_for_end else 0)
        while True:
            series = self.query_range(start, end)
            latest = max((float(v[0]) for s in series for v in s.get("values", [])), default=0.0)
            if not wait_for_end or latest >= end - self.step_s or time.monotonic() >= deadline:
                break
            time.sleep(min(self.step_s, 0.5))
        checked = [_checked(s, self) for s in series]
        if not any(s.points for s in checked):
            raise PromQLError(f"{self.query!r} returned no samples between {start:.0f} and {end:.0f}: nothing "
                              "to judge (is the target scraped, is the metric named right?)")
        return ProbeOutcome(self.describe(), start, end, [s for s in checked if s.points])


@dataclass
class SeriesOutcome:
    labels: dict[str, str]
    points: list[tuple[float, float]]
    breach: tuple[float, float] | None  # (from, to) of the first breach that lasted for_s


@dataclass
class ProbeOutcome:
    condition: str
    start: float
    end: float
    series: list[SeriesOutcome] = field(default_factory=list)

    @property
    def breach(self) -> SeriesOutcome | None:
        return next((s for s in self.series if s.breach), None)

    def evidence(self) -> dict[str, Any]:
        return {"condition": self.condition, "start": self.start, "end": self.end,
                "series": [{"labels": s.labels, "breach": s.breach,
                            "samples": s.points[-MAX_POINTS_KEPT:]} for s in self.series]}

    def describe_breach(self) -> str:
        found = self.breach
        if found is None:
            return f"{self.condition} held over {len(self.series)} series"
        worst = max((v for _, v in found.points), default=float("nan"))
        label = ",".join(f"{k}={v}" for k, v in sorted(found.labels.items())) or "{}"
        assert found.breach is not None
        return (f"{self.condition} did not hold for {label} from {found.breach[0]:.0f} to {found.breach[1]:.0f} "
                f"(worst value {worst:g})")


def _checked(series: dict[str, Any], probe: PromQLProbe) -> SeriesOutcome:
    """A series' samples (NaN ones, e.g. a quantile over no requests, say nothing and are left out) and
    its first breach that lasted ``for_s``."""
    points = [(float(t), float(v)) for t, v in series.get("values", []) if float(v) == float(v)]
    holds = OPS[probe.op]
    breach, began = None, None
    for t, v in points:
        if not holds(v, probe.threshold):
            began = t if began is None else began
            if t - began >= probe.for_s:
                breach = (began, t)
                break
        else:
            began = None
    return SeriesOutcome(dict(series.get("metric") or {}), points, breach)


class StageProbe(StrictModel):
    """``probe:`` of any stage: a PromQL condition (stages that sample HTTP themselves add ``http``)."""

    prometheus: PromQLProbe | None = None
