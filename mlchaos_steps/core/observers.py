"""Observers: what the engine tells the outside world about an execution, without knowing who listens.

The engine is handed an observer; :class:`~mlchaos_steps.gate.reporting.MlflowReporter` is the one the
front doors (``mlchaos_steps.api``, the CLI, the Airflow operators) hand it, and writes verdicts onto
model versions. The engine never imports it: reporting depends on the engine's vocabulary, not the
other way round. Like chaostoolkit-lib's run event handlers, an observer sees lifecycle events only.

An observer that raises in :meth:`Observer.started` or :meth:`Observer.judged` turns the verdict
``inconclusive`` (the gate would otherwise see nothing); one that raises in :meth:`Observer.restored`
is logged and ignored (the version's restore tag stays ``pending``, so the gate blocks). One that raises
in :meth:`Observer.phase_ended` (telemetry) is logged and ignored: it never changes a verdict.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from mlchaos_steps.core.context import PhaseContext
from mlchaos_steps.core.records import Execution, ModelRef
from mlchaos_steps.core.spec import StageSpec
from mlchaos_steps.core.verdict import Verdict

log = logging.getLogger("mlchaos")


class Observer(Protocol):
    def started(self, stage: StageSpec, ctx: PhaseContext, target: ModelRef) -> None:
        """Snapshot is done and nothing is broken yet; the verdict will go onto ``target``."""

    def judged(self, stage: StageSpec, ctx: PhaseContext, verdict: Verdict, target: ModelRef | None,
               journal: Path) -> None:
        """Verify reached ``verdict`` (``target``: the version it goes onto, if any)."""

    def restored(self, execution: Execution, restored: bool, journal: Path) -> None:
        """Restore finished (``restored``: everything was put back)."""

    def phase_ended(self, execution: Execution, phase: str, record: dict[str, Any]) -> None:
        """A phase wrote its ``record`` (start, end, status, output, span_id) into the ledger; every
        phase of every stage, in whichever process ran it."""


class SilentObserver:
    """Tells no one: the engine on its own (tests of the engine, dry runs)."""

    def started(self, stage: StageSpec, ctx: PhaseContext, target: ModelRef) -> None:
        return None

    def judged(self, stage: StageSpec, ctx: PhaseContext, verdict: Verdict, target: ModelRef | None,
               journal: Path) -> None:
        return None

    def restored(self, execution: Execution, restored: bool, journal: Path) -> None:
        return None

    def phase_ended(self, execution: Execution, phase: str, record: dict[str, Any]) -> None:
        return None


class Observers:
    """Several observers, told in order; in ``started``, ``judged`` and ``restored`` the first one that
    raises stops the others (as one observer would)."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = observers

    def started(self, stage: StageSpec, ctx: PhaseContext, target: ModelRef) -> None:
        for observer in self.observers:
            observer.started(stage, ctx, target)

    def judged(self, stage: StageSpec, ctx: PhaseContext, verdict: Verdict, target: ModelRef | None,
               journal: Path) -> None:
        for observer in self.observers:
            observer.judged(stage, ctx, verdict, target, journal)

    def restored(self, execution: Execution, restored: bool, journal: Path) -> None:
        for observer in self.observers:
            observer.restored(execution, restored, journal)

    def phase_ended(self, execution: Execution, phase: str, record: dict[str, Any]) -> None:
        for observer in self.observers:  # telemetry: one that fails does not keep the others from it
            try:
                observer.phase_ended(execution, phase, record)
            except Exception as exc:
                log.warning("%s could not report phase %s of %s: %s", type(observer).__name__, phase,
                            execution.run_key, exc)
