"""What a phase function gets: the run key, the ledger, and safe ways to break and wait."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlchaos_steps import config
from mlchaos_steps.core.records import (
    EVIDENCE_RUN_ID,
    MODEL_VERSION,
    VERDICT_TARGET,
    Action,
    ActionState,
    Execution,
    Ledger,
    ModelRef,
)
from mlchaos_steps.errors import KillSwitchEngaged
from mlchaos_steps.redaction import redact

KILL_SWITCH_POLL_S = 0.1


def run_dir_name(run_key: str) -> str:
    """A file-system-safe folder name for a run key (Airflow run ids hold ':' and '+')."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", run_key)[:80].strip("._") or "run"
    return f"{slug}-{hashlib.sha256(run_key.encode()).hexdigest()[:10]}"


def check_kill_switch() -> None:
    reason = config.kill_switch_reason()
    if reason:
        raise KillSwitchEngaged(f"kill switch engaged: {reason}")


@dataclass
class PhaseContext:
    """Handed to every phase: run key, ledger and the execution record (None during a dry run)."""

    run_key: str
    ledger: Ledger
    execution: Execution | None = None

    @property
    def state(self) -> dict[str, Any]:
        """What earlier phases recorded (targets, digests, timings), from the ledger."""
        return self.execution.state if self.execution else {}

    def save(self, **state: Any) -> None:
        """Merge values into the execution's state in the ledger, durably, right now."""
        self.execution = self.ledger.update(self.run_key, state=redact(state))

    @property
    def model_version(self) -> ModelRef | None:
        """The model version a phase resolved (see :meth:`set_model_version`)."""
        return self.execution.model_version if self.execution else None

    def set_model_version(self, ref: ModelRef) -> None:
        """Record the exact model version this stage works on: its verdict goes onto it by default."""
        self.save(**{MODEL_VERSION: ref.as_dict()})

    def set_verdict_target(self, ref: ModelRef) -> None:
        self.save(**{VERDICT_TARGET: ref.as_dict()})

    def set_evidence_run(self, run_id: str) -> None:
        self.save(**{EVIDENCE_RUN_ID: run_id})

    @property
    def run_dir(self) -> Path:
        path = config.home() / "runs" / run_dir_name(self.run_key)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextmanager
    def destructive(self, kind: str, target: str, undo: dict[str, Any]) -> Iterator[Action]:
        """Write-ahead: the action and its undo record reach the ledger before the body breaks anything.

        The body may refine ``action.undo`` (e.g. a digest of what it wrote); the action is marked
        ``applied`` when the body returns. If the body raises, the action stays ``planned`` and restore
        inspects the world to find out how far it got.
        """
        check_kill_switch()
        action = self.ledger.plan_action(self.run_key, kind, target, undo)
        yield action
        self.ledger.mark_action(action, ActionState.APPLIED, undo=action.undo)

    def undo_now(self, undo: Callable[[Action], Any]) -> None:
        """End a fault that lasts a set time, inside verify: every action not yet undone is undone with
        ``undo`` (the stage's ``restore_action``) and marked so, so restore finds nothing left."""
        for action in self.ledger.actions(self.run_key):
            if action.state in (ActionState.PLANNED, ActionState.APPLIED):
                undo(action)
                self.ledger.mark_action(action, ActionState.UNDONE)

    @contextmanager
    def destructive_batch(self, kind: str, items: list[tuple[str, dict[str, Any]]]) -> Iterator[list[Action]]:
        """``destructive`` for many targets at once: every action and its undo record reach the ledger (in
        one write) before the body breaks any of them; all are marked ``applied`` when the body returns.
        If the body raises, they stay ``planned`` and restore inspects the world, as for one action."""
        check_kill_switch()
        actions = self.ledger.plan_actions(self.run_key, kind, items)
        yield actions
        self.ledger.mark_actions(actions, ActionState.APPLIED)
