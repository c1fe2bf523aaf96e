"""The Python front door: the engine's phases with verdicts reported to MLflow.

Same functions as :mod:`mlchaos_steps.engine`, handed the
:class:`~mlchaos_steps.gate.reporting.MlflowReporter` unless another observer is given: the verdict
goes onto the model version (``--model/--version``, or the one the stage works on) and, whenever
``MLFLOW_TRACKING_URI`` is set, into an evidence run in experiment ``mlchaos``; beside it the
:class:`~mlchaos_steps.telemetry.observer.TelemetryObserver` exports traces and pushes metrics when
they are configured.

Example::

    from pathlib import Path
    from mlchaos_steps.api import run_stage
    from mlchaos_steps.stages import load_stages

    stage = load_stages(Path("dags/stages/checkpoint_wipe.yaml"))[0]
    outcome = run_stage(stage, run_key="nightly-2026-11-29", model="churn", version="@challenger")
    print(outcome.verdict.status, outcome.verdict.reason)
"""

from __future__ import annotations

from typing import Any

from mlchaos_steps.engine import phases, removals
from mlchaos_steps.engine.observers import Observer, Observers
from mlchaos_steps.engine.phases import PHASES, Phase, PhaseResult, StageOutcome, new_run_key, open_runs
from mlchaos_steps.gate.reporting import MlflowReporter
from mlchaos_steps.telemetry.observer import TelemetryObserver

__all__ = ["PHASES", "Phase", "PhaseResult", "StageOutcome", "new_run_key", "open_runs", "restore_orphaned",
           "flush_telemetry", "restore_run", "run_phase", "run_stage", "wait_for_removals"]


def _observer(kw: dict[str, Any]) -> dict[str, Any]:
    observer: Observer | None = kw.pop("observer", None)
    return {**kw, "observer": observer if observer is not None
            else Observers(MlflowReporter(), TelemetryObserver(kw.get("ledger")))}


def run_stage(stage: Any, run_key: str | None = None, **kw: Any) -> StageOutcome:
    """:func:`mlchaos_steps.engine.phases.run_stage`, reporting to MLflow."""
    return phases.run_stage(stage, run_key, **_observer(kw))


def run_phase(stage: Any, phase: Phase, run_key: str, **kw: Any) -> PhaseResult:
    """:func:`mlchaos_steps.engine.phases.run_phase`, reporting to MLflow."""
    return phases.run_phase(stage, phase, run_key, **_observer(kw))


def restore_run(run_key: str, **kw: Any) -> dict[str, Any]:
    """:func:`mlchaos_steps.engine.phases.restore_run`, telling the version whether it restored."""
    return phases.restore_run(run_key, **_observer(kw))


def restore_orphaned(**kw: Any) -> list[dict[str, Any]]:
    """:func:`mlchaos_steps.engine.phases.restore_orphaned`, telling each version whether it restored."""
    return phases.restore_orphaned(**_observer(kw))


def flush_telemetry(timeout_s: float = 1.0) -> bool:
    """Wait (at most ``timeout_s``) until the spans and metrics of this process's phases are sent."""
    from mlchaos_steps.telemetry.observer import flush

    return flush(timeout_s)


def wait_for_removals() -> None:
    """Wait until the damaged copies the restores of this process set aside are removed
    (:mod:`mlchaos_steps.engine.removals`)."""
    removals.wait()
