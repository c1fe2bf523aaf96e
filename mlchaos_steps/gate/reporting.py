"""The engine's MLflow observer: verdicts and their evidence go onto model versions.

Handed to the engine by the front doors (:mod:`mlchaos_steps.api`); see
:mod:`mlchaos_steps.core.observers` for the events and :mod:`mlchaos_steps.gate.verdicts` for the
tags and the order they are written in.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from mlchaos_steps.core.context import PhaseContext
from mlchaos_steps.core.records import TRACE, Execution, ModelRef
from mlchaos_steps.core.spec import StageSpec
from mlchaos_steps.core.verdict import Verdict
from mlchaos_steps.gate import verdicts

log = logging.getLogger("mlchaos")


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
            _upload_scorecard(execution, journal.parent / SCORECARD)

    def phase_ended(self, execution: Execution, phase: str, record: dict[str, Any]) -> None:
        return None  # MLflow hears of verdicts and restores, not of every phase


SCORECARD = "scorecard.html"


def scorecard_uri(execution: Execution | None) -> str | None:
    """Where the scorecard of the execution's model is, once it restored: an artifact of its evidence run."""
    run_id = execution.evidence_run_id if execution else None
    return f"runs:/{run_id}/{SCORECARD}" if run_id else None


def _upload_scorecard(execution: Execution, path: Path) -> None:
    """The scorecard of the execution's model (its last 30 days), beside the journal in the evidence run:
    every front door (CLI, Airflow, Argo) finds it there. Never fails the restore: logged and left."""
    from mlchaos_steps.config import home
    from mlchaos_steps.ledgers import default_ledger
    from mlchaos_steps.telemetry.scorecard import write_report

    target = execution.verdict_target
    try:
        write_report(default_ledger(), path, home(), target.name if target else None, since_s=30 * 86400)
        verdicts.upload_journal(str(execution.evidence_run_id), path)
    except Exception as exc:
        log.warning("could not attach the scorecard to run %s: %s", execution.run_key, exc)


def _trace_id(execution: Execution | None) -> str | None:
    return ((execution.state.get(TRACE) or {}).get("trace_id") if execution else None) or None
