"""``feature-drift``: move the distribution of chosen features in a batch, then check that the pipeline's
drift monitor flags exactly those features within its SLO.

Shifts (seeded): ``mean_shift`` by ``k`` standard deviations, ``scale`` around the mean, ``swap_categories``
(the frequencies of two categories exchanged), ``new_category`` on a share of rows, and ``segment_shift``
(a mean shift only on rows where another column equals a value: covariate shift on a segment).

The stage measures the drift it injected itself, with scipy's two-sample tests between the clean and
the drifted column (Kolmogorov-Smirnov, chi-square over categories, on at most 200,000 sampled rows):
a shift too small to detect at ``alpha`` is reported and not counted. Verify runs the monitor until it
flags every detectable drifted feature, or ``detection_slo_s`` passes; it fails when the monitor misses
one, or flags a feature the stage did not touch. Steady state: the monitor flags nothing on the clean
batch (a monitor that fires on every batch shows nothing), else ``inconclusive``, nothing broken.

Monitor report (standard output, the last JSON document counts): ``{"drifted": ["income"]}``, or
``{"features": {"income": {"drift": true}}}``, or an Evidently report (``drift_by_columns`` with
``drift_detected``).

Example::

    kind: FeatureDrift
    spec:
      batch: {store: file:///data/features, pattern: "date=(\\d{8})"}
      drift:
        - {kind: mean_shift, column: income, k: 1.5}
        - {kind: swap_categories, column: plan, a: basic, b: premium}
      seed: 7
      monitor: {command: [python, -m, pipeline.drift, "{batch}"]}
      detection_slo_s: 120
"""

from __future__ import annotations

import time
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from mlchaos_steps.core.context import PhaseContext, check_kill_switch, run_dir_name
from mlchaos_steps.core.processes import CommandResult
from mlchaos_steps.core.records import Action
from mlchaos_steps.core.spec import StrictModel
from mlchaos_steps.core.verdict import Verdict
from mlchaos_steps.errors import InfrastructureError, SpecError
from mlchaos_steps.stages.batches import BatchStage, describe, resolve_batch, run_on_batch
from mlchaos_steps.stages.parts import argument_list, check_runnable, environment
from mlchaos_steps.stages.validation_reports import last_json
from mlchaos_steps.targets import drift as shifting
from mlchaos_steps.targets import quarantine, tables
from mlchaos_steps.targets.checkpoints import CheckpointStore

OUTPUT_TAIL_CHARS = 2000


class MeanShift(StrictModel):
    """Add ``k`` standard deviations of the column to every value."""

    kind: Literal["mean_shift"]
    column: str
    k: float = Field(ge=-20, le=20)


class Scale(StrictModel):
    """Stretch (``factor`` > 1) or squeeze the values around their mean."""

    kind: Literal["scale"]
    column: str
    factor: float = Field(gt=0, le=100)


class SwapCategories(StrictModel):
    """Exchange two categories: their frequencies swap."""

    kind: Literal["swap_categories"]
    column: str
    a: str
    b: str


class NewCategory(StrictModel):
    """A category never seen before, on ``fraction`` of the rows."""

    kind: Literal["new_category"]
    column: str
    value: str
    fraction: float = Field(gt=0, le=1)


class Segment(StrictModel):
    column: str
    equals: str | int | float | bool


class SegmentShift(StrictModel):
    """A mean shift of ``k`` standard deviations on the rows of one segment only."""

    kind: Literal["segment_shift"]
    column: str
    where: Segment
    k: float = Field(ge=-20, le=20)


Shift = Annotated[MeanShift | Scale | SwapCategories | NewCategory | SegmentShift, Field(discriminator="kind")]


class MonitorSpec(StrictModel):
    """The pipeline's drift monitor: run on a batch, it prints which features drifted."""

    command: list[str] = Field(min_length=1, description="argument list; {batch} is the batch's path")
    timeout_s: float = Field(default=300, gt=0, description="one run of the monitor")
    interval_s: float = Field(default=1, gt=0, le=3600, description="between runs, until it flags the drift")
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)

    _command = field_validator("command", mode="before")(argument_list)
    _env = field_validator("env", mode="before")(environment)


class FeatureDrift(BatchStage):
    """Shift the distribution of chosen features of a data batch."""

    kind: ClassVar[str] = "FeatureDrift"
    stage_id: ClassVar[str] = "feature-drift"
    title: ClassVar[str] = "Feature drift"

    drift: list[Shift] = Field(min_length=1)
    alpha: float = Field(default=0.01, gt=0, lt=0.5, description="significance of the stage's own drift test")
    monitor: MonitorSpec
    detection_slo_s: float = Field(default=300, gt=0, description="the monitor must flag the drift within this")

    @field_validator("drift")
    @classmethod
    def _one_shift_per_column(cls, value: list[Any]) -> list[Any]:
        columns = [s.column for s in value]
        twice = sorted({c for c in columns if columns.count(c) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} shifted more than once: one shift per column")
        return value

    def describe(self) -> str:
        return f"drift on {', '.join(s.column for s in self.drift)} in {self.batch.path or self.batch.store}"

    def _shape(self, store: CheckpointStore, path: str) -> tables.BatchShape:
        shape = describe(store, path, [s.column for s in self.drift if isinstance(s, SwapCategories | NewCategory)])
        columns = set(shape.schema.names)
        for index, shift in enumerate(self.drift):
            needed = [shift.column] + ([shift.where.column] if isinstance(shift, SegmentShift) else [])
            missing = [c for c in needed if c not in columns]
            if missing:
                raise SpecError(f"spec.drift[{index}]", f"column(s) {', '.join(missing)} not in the batch (it has "
                                                        f"{', '.join(sorted(columns))}): fix the name")
            if isinstance(shift, MeanShift | Scale | SegmentShift) and shift.column not in shape.moments:
                raise SpecError(f"spec.drift[{index}].column", f"{shift.column} is not numeric: {shift.kind} needs "
                                                               "numbers (use swap_categories or new_category)")
            if isinstance(shift, NewCategory) and shift.column in shape.moments:
                raise SpecError(f"spec.drift[{index}].column", f"{shift.column} is numeric: new_category needs a "
                                                               "column of categories (use mean_shift or scale)")
            if isinstance(shift, SwapCategories):
                seen = [str(v) for v in shape.labels.get(shift.column, [])]
                absent = [c for c in (shift.a, shift.b) if c not in seen]
                if absent:
                    raise SpecError(f"spec.drift[{index}]", f"category {', '.join(absent)} not in {shift.column} "
                                                            f"(it holds {', '.join(seen[:10])}): fix a and b")
        return shape

    def _check_commands(self) -> None:
        check_runnable(self.monitor.command, self.monitor.cwd, self.monitor.env, "spec.monitor")

    def plan(self, ctx: PhaseContext) -> dict[str, Any]:
        self._check_commands()
        store, path, _, _ = resolve_batch(self.batch)
        shape = self._shape(store, path)
        return {"batch": path, "rows": shape.total_rows, "drift": [s.model_dump() for s in self.drift]}

    def _watch(self, batch: str) -> tuple[CommandResult, set[str]]:
        result = run_on_batch(self.monitor.command, batch, env=self.monitor.env, cwd=self.monitor.cwd,
                              timeout_s=self.monitor.timeout_s, what="the drift monitor")
        return result, flagged_features(last_json(result.stdout))

    # -- phases -----------------------------------------------------------------------------------
    def snapshot(self, ctx: PhaseContext) -> dict[str, Any]:
        self._check_commands()
        store, path, name, _ = resolve_batch(self.batch)
        on_disk = store.signature(path)
        shape = self._shape(store, path)
        digest = store.digest(path, check_kill_switch)
        result, flagged = self._watch(path)
        if result.exit_code != 0 or result.timed_out:
            raise InfrastructureError(f"steady state not met before the fault: the drift monitor failed on the clean "
                                      f"batch (exit {result.exit_code}): {result.stderr.strip()[-300:]}")
        if flagged:
            raise InfrastructureError(
                f"steady state not met before the fault: the drift monitor flags {', '.join(sorted(flagged))} on the "
                "clean batch. Nothing was broken: a monitor that fires on every batch shows nothing when it fires")
        ctx.save(batch={"name": name, "path": path, "store": store.url, "on_disk": on_disk, "digest": digest},
                 columns=shape.schema.names, shape=shape.as_dict())
        return {"batch": path, "rows": shape.total_rows, "steady_state": {"monitor_flags": []}}

    def inject(self, ctx: PhaseContext) -> dict[str, Any]:
        batch = ctx.state["batch"]
        store = CheckpointStore(batch["store"])
        shape = tables.BatchShape.from_dict(ctx.state["shape"])  # what snapshot read; inject checks it is unchanged
        shifts = [s.model_dump() for s in self.drift]

        def write_damage(source: str, staging: str) -> dict[str, Any]:
            shifting.write_drifted(store.fs, source, staging, shifts, shape, self.seed, check_kill_switch)
            return {}

        started = time.perf_counter()
        victim = {k: batch[k] for k in ("name", "path", "digest", "on_disk")}
        quarantine.replace(ctx, store, "quarantine-batch", victim, run_dir_name(ctx.run_key),
                           {"shifts": shifts, "seed": self.seed}, write_damage)
        injected_at = time.time()
        backup = store.quarantine_path(run_dir_name(ctx.run_key), batch["name"])
        measured = shifting.measure(store.fs, backup, batch["path"], [s.column for s in self.drift], self.seed)
        ctx.save(injected_at=injected_at, measured=measured)
        return {"measured": measured, "inject_seconds": round(time.perf_counter() - started, 6)}

    def verify(self, ctx: PhaseContext) -> Verdict:
        state = ctx.state
        measured = state["measured"]
        detectable = {c for c, m in measured.items() if m["p_value"] < self.alpha}
        too_small = sorted(set(measured) - detectable)
        evidence: dict[str, Any] = {"measured": measured, "too_small_to_detect": too_small, "runs": []}
        if not detectable:
            return Verdict.inconclusive(
                f"the drift injected on {', '.join(too_small)} is too small for a two-sample test to detect at "
                f"alpha={self.alpha:g}: make the shift larger", evidence=evidence)
        untouched = set(state["columns"]) - set(measured)
        deadline = state["injected_at"] + self.detection_slo_s
        while True:
            check_kill_switch()
            result, flagged = self._watch(state["batch"]["path"])
            now = time.time()
            evidence["runs"].append({"at_s": round(now - state["injected_at"], 3), "exit_code": result.exit_code,
                                     "flagged": sorted(flagged)})
            evidence["monitor_stdout_tail"] = result.stdout[-OUTPUT_TAIL_CHARS:]
            wrong = sorted(flagged & untouched)
            if wrong:
                return Verdict.failed(f"the drift monitor flagged {', '.join(wrong)}, which the stage did not touch "
                                      f"(drifted: {', '.join(sorted(detectable))})", evidence=evidence)
            if detectable <= flagged:
                seconds = now - state["injected_at"]
                note = f"; too small to detect, not counted: {', '.join(too_small)}" if too_small else ""
                return Verdict.passed(f"the drift monitor flagged {', '.join(sorted(detectable))} {seconds:.1f}s after "
                                      f"the drift (SLO {self.detection_slo_s:g}s), and nothing else{note}",
                                      metrics={"detection_seconds": round(seconds, 3)}, evidence=evidence)
            if now + self.monitor.interval_s > deadline:
                missed = sorted(detectable - flagged)
                return Verdict.failed(f"the drift monitor did not flag {', '.join(missed)} within "
                                      f"detection_slo_s={self.detection_slo_s:g}s ({len(evidence['runs'])} run(s))",
                                      evidence=evidence)
            time.sleep(self.monitor.interval_s)

    @classmethod
    def restore_action(cls, action: Action, ctx: PhaseContext) -> dict[str, Any]:
        undo = action.undo
        store = CheckpointStore(undo["store"])
        return quarantine.put_back(store, undo, lambda current: _is_own_damage(store, undo, current))


def flagged_features(report: Any) -> set[str]:
    """The features a monitor's report flags: ``{"drifted": [...]}``, ``{"features": {name: {"drift": true}}}``,
    or an Evidently report's ``drift_by_columns``."""
    if not isinstance(report, dict):
        return set()
    if isinstance(report.get("drifted"), list):
        return {str(f) for f in report["drifted"]}
    if isinstance(report.get("features"), dict):
        return {str(name) for name, f in report["features"].items()
                if isinstance(f, dict) and (f.get("drift") is True or f.get("drift_detected") is True)}
    flagged: set[str] = set()
    for metric in report.get("metrics") or []:
        result = (metric.get("result") or metric.get("value") or {}) if isinstance(metric, dict) else {}
        by_column = result.get("drift_by_columns") if isinstance(result, dict) else None
        if isinstance(by_column, dict):
            flagged |= {str(n) for n, c in by_column.items() if isinstance(c, dict) and c.get("drift_detected")}
    return flagged


def _is_own_damage(store: CheckpointStore, undo: dict[str, Any], current: str) -> bool:
    """The drift is seeded: written again from the backup, it must give the same copy."""
    def drift(source: str, dest: str) -> None:
        categorical = [s["column"] for s in undo["shifts"] if s["kind"] in ("swap_categories", "new_category")]
        shape = tables.describe_batch(store.fs, source, categorical)
        shifting.write_drifted(store.fs, source, dest, undo["shifts"], shape, undo["seed"])

    return quarantine.rewritten_is(store, undo, current, drift)
