"""Observers: what the engine tells the outside world about an execution, without knowing who listens.

The engine is handed an observer; :class:`~mlchaos_steps.gate.reporting.MlflowReporter` is the one the
front doors (``mlchaos_steps.api``, the CLI, the Airflow operators) hand it, and writes verdicts onto
model versions. The engine never imports it: reporting depends on the engine's vocabulary, not the
other way round. Like chaostoolkit-lib's run event handlers, an observer sees lifecycle events only.

An observer that raises in :meth:`Observer.started` or :meth:`Observer.judged` turns the verdict
``inconclusive`` (the gate would otherwise see nothing); one that raises in :meth:`Observer.restored`
is logged and ignored (the version's restore tag stays ``pending``, so the gate blocks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from mlchaos_steps.core.context import PhaseContext
from mlchaos_steps.core.records import Execution, ModelRef
from mlchaos_steps.core.spec import StageSpec
from mlchaos_steps.core.verdict import Verdict


class Observer(Protocol):
    def started(self, stage: StageSpec, ctx: PhaseContext, target: ModelRef) -> None:
        """Snapshot is done and nothing is broken yet; the verdict will go onto ``target``."""

    def judged(self, stage: StageSpec, ctx: PhaseContext, verdict: Verdict, target: ModelRef | None,
               journal: Path) -> None:
        """Verify reached ``verdict`` (``target``: the version it goes onto, if any)."""

    def restored(self, execution: Execution, restored: bool, journal: Path) -> None:
        """Restore finished (``restored``: everything was put back)."""


class SilentObserver:
    """Tells no one: the engine on its own (tests of the engine, dry runs)."""

    def started(self, stage: StageSpec, ctx: PhaseContext, target: ModelRef) -> None:
        return None

    def judged(self, stage: StageSpec, ctx: PhaseContext, verdict: Verdict, target: ModelRef | None,
               journal: Path) -> None:
        return None

    def restored(self, execution: Execution, restored: bool, journal: Path) -> None:
        return None
