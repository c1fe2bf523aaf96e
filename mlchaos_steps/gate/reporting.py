"""The engine's MLflow observer: verdicts and their evidence go onto model versions.

Handed to the engine by the front doors (:mod:`mlchaos_steps.api`); see
:mod:`mlchaos_steps.core.observers` for the events and :mod:`mlchaos_steps.gate.verdicts` for the
tags and the order they are written in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlchaos_steps.core.context import PhaseContext
from mlchaos_steps.core.records import TRACE, Execution, ModelRef
from mlchaos_steps.core.spec import StageSpec
from mlchaos_steps.core.verdict import Verdict
from mlchaos_steps.gate import verdicts


class MlflowReporter:
    """Marks the version ``pending`` before anything breaks, logs one evidence run per execution (whenever
    a version is targeted or ``MLFLOW_TRACKING_URI`` is set), writes the verdict tags, then the restore tag."""

    def started(self, stage: StageSpec, ctx: PhaseContext, target: ModelRef) -> None:
        verdicts.mark_pending(target, stage.stage_id, ctx.run_key, _trace_id(ctx.execution))

    def judged(self, stage: StageSpec, ctx: PhaseContext, verdict: Verdict, target: ModelRef | None,
               journal: Path) -> None:
        if target is None and not os.environ.get("MLFLOW_TRACKING_URI"):
            return  # no version and no server: the embedded store would only collect runs nobody reads
        assert ctx.execution is not None
        run_id = verdicts.log_execution(stage.stage_id, stage.kind, ctx.execution.spec, verdict, ctx.run_key,
                                        journal, target, _trace_id(ctx.execution))
        ctx.set_evidence_run(run_id)
        if target is not None:
            verdicts.record_verdict(target, stage.stage_id, verdict, run_id, ctx.run_key)
        # finished last: a gate never sees a verdict whose run does not stand behind it
        verdicts.finish_execution(run_id, verdict)

    def restored(self, execution: Execution, restored: bool, journal: Path) -> None:
        target = execution.verdict_target
        if target is not None:
            verdicts.record_restore(target, execution.stage_id, execution.run_key, restored, execution.verdict)
        if execution.evidence_run_id:
            verdicts.upload_journal(execution.evidence_run_id, journal)

    def phase_ended(self, execution: Execution, phase: str, record: dict[str, Any]) -> None:
        return None  # MLflow hears of verdicts and restores, not of every phase


def _trace_id(execution: Execution | None) -> str | None:
    return ((execution.state.get(TRACE) or {}).get("trace_id") if execution else None) or None
