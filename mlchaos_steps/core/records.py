"""The shared records: executions, actions and their statuses, the ledger interface, model references.

Everything above this module (ledgers, stages, engine, gate) speaks these types; this module imports
only ``core.processes`` (the one check that a pid is still the process it was).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import psutil

from mlchaos_steps.core.processes import same_process


@dataclass(frozen=True)
class ModelRef:
    """One exact registered model version (aliases already resolved)."""

    name: str
    version: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}

    @classmethod
    def from_dict(cls, value: dict[str, Any] | None) -> ModelRef | None:
        return cls(str(value["name"]), str(value["version"])) if value else None


# Keys of an execution's state that the engine, the stages and the reporter share; read them through
# the typed properties of Execution and PhaseContext, never by spelling the key.
MODEL_VERSION = "model_version"      # the version a stage resolved and works on (registry, canary)
VERDICT_TARGET = "verdict_target"    # the version the verdict is written onto
EVIDENCE_RUN_ID = "mlflow_run_id"    # the MLflow run that holds the evidence of the verdict
# Ledger actions a snapshot took before anything broke (a backup of a store the system under test will
# write into): they are restored like the fault's, but they are not the fault.
SNAPSHOT_ACTIONS = "snapshot_actions"
# The execution's trace (core.tracecontext): {"trace_id", "span_id" of its root span}.
TRACE = "trace"


class ExecutionStatus(StrEnum):
    """Where one execution stands, in the order a healthy run moves through them."""

    CREATED = "created"
    SNAPSHOTTED = "snapshotted"
    INJECTED = "injected"
    VERIFIED = "verified"
    RESTORED = "restored"
    RESTORE_FAILED = "restore_failed"


class ActionState(StrEnum):
    """Where one destructive action stands: written ``planned`` before it is applied (write-ahead)."""

    PLANNED = "planned"
    APPLIED = "applied"
    UNDONE = "restored"
    UNDO_FAILED = "restore_failed"


@dataclass
class Action:
    """One destructive step and how to undo it."""

    id: int
    run_key: str
    kind: str
    target: str
    undo: dict[str, Any]
    state: str
    error: str | None = None


@dataclass
class Execution:
    """One stage execution, keyed by its run key."""

    run_key: str
    kind: str
    stage_id: str
    spec: dict[str, Any]
    status: str
    verdict: str | None = None
    verdict_detail: dict[str, Any] | None = None
    state: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, Any] = field(default_factory=dict)
    owner_pid: int | None = None
    owner_started: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    owner_host: str | None = None  # None: this machine

    @property
    def model_version(self) -> ModelRef | None:
        """The model version the stage resolved and worked on, if it is about one."""
        return ModelRef.from_dict(self.state.get(MODEL_VERSION))

    @property
    def verdict_target(self) -> ModelRef | None:
        """The model version this execution's verdict is written onto."""
        return ModelRef.from_dict(self.state.get(VERDICT_TARGET))

    @property
    def evidence_run_id(self) -> str | None:
        """The MLflow run of evidence behind the verdict, once logged."""
        value = self.state.get(EVIDENCE_RUN_ID)
        return str(value) if value else None


def process_identity() -> tuple[int, float]:
    me = psutil.Process()
    return me.pid, me.create_time()


def owner_alive(pid: int | None, started: float | None) -> bool:
    """Whether the process that last worked on an execution still runs (pid reuse checked)."""
    return bool(pid) and same_process(pid, started)  # type: ignore[arg-type]


class Ledger(Protocol):
    """What the engine needs from a ledger; ``SqliteLedger`` and ``MlflowLedger`` provide it."""

    location: str

    def get(self, run_key: str) -> Execution | None: ...
    def create(self, run_key: str, kind: str, stage_id: str, spec: dict[str, Any]) -> Execution: ...
    def claim(self, run_key: str) -> None: ...
    def release_owner(self, run_key: str) -> None: ...
    def discard(self, run_key: str) -> None: ...
    def update(self, run_key: str, *, status: str | None = None, verdict: str | None = None,
               verdict_detail: dict[str, Any] | None = None, state: dict[str, Any] | None = None,
               phase: tuple[str, dict[str, Any]] | None = None) -> Execution: ...
    def executions(self) -> list[Execution]: ...
    def open_executions(self) -> list[Execution]: ...
    def plan_action(self, run_key: str, kind: str, target: str, undo: dict[str, Any]) -> Action: ...
    def mark_action(self, action: Action, state: str, *, error: str | None = None,
                    undo: dict[str, Any] | None = None) -> None: ...
    def plan_actions(self, run_key: str, kind: str, items: list[tuple[str, dict[str, Any]]]) -> list[Action]: ...
    def mark_actions(self, actions: list[Action], state: str) -> None: ...
    def actions(self, run_key: str) -> list[Action]: ...
    def acquire_lease(self, target_id: str, run_key: str) -> None: ...
    def release_leases(self, run_key: str) -> None: ...
    def leases(self) -> dict[str, str]: ...
    def store_backup(self, run_key: str, folder: Path) -> None: ...
    def fetch_backup(self, run_key: str, folder: Path) -> None: ...
