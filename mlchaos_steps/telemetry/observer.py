"""The engine observer that exports traces and pushes metrics; silent unless configured.

Handed to the engine by the front doors beside the MLflow reporter. It hears every phase of every stage
(``phase_ended``), in whichever process ran it, and nothing it does can change a verdict: a failure is
logged once and forgotten.

Example::

    from mlchaos_steps.engine.observers import Observers
    observer = Observers(MlflowReporter(), TelemetryObserver())
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlchaos_steps.core.context import PhaseContext
from mlchaos_steps.core.records import Execution, Ledger, ModelRef
from mlchaos_steps.core.spec import StageSpec
from mlchaos_steps.core.verdict import Verdict
from mlchaos_steps.telemetry import metrics, tracing


class TelemetryObserver:
    def __init__(self, ledger: Ledger | None = None) -> None:
        self._ledger = ledger

    def _ledger_for(self) -> Ledger:
        if self._ledger is None:
            from mlchaos_steps.ledgers import default_ledger

            self._ledger = default_ledger()
        return self._ledger

    def started(self, stage: StageSpec, ctx: PhaseContext, target: ModelRef) -> None:
        return None

    def judged(self, stage: StageSpec, ctx: PhaseContext, verdict: Verdict, target: ModelRef | None,
               journal: Path) -> None:
        return None

    def restored(self, execution: Execution, restored: bool, journal: Path) -> None:
        return None

    def phase_ended(self, execution: Execution, phase: str, record: dict[str, Any]) -> None:
        want_traces, want_metrics = tracing.configured(), metrics.configured()
        if not (want_traces or want_metrics):
            return
        ledger = self._ledger_for()
        if phase == "snapshot" and want_metrics and not execution.state.get("pipeline"):
            execution = ledger.update(execution.run_key, state={"pipeline": metrics.pipeline_of()})
        if want_traces:
            tracing.export_phase(execution, phase, record, ledger)
        if want_metrics:
            metrics.push_stage(ledger, execution.stage_id)
