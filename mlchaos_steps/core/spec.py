"""What every stage is: a validated spec that knows its four phases.

A stage module holds one ``StageSpec`` subclass. Its fields are the YAML ``spec:`` mapping; its
methods are the phases. ``restore_action`` is a classmethod because restore must work from the
ledger alone, after a crash, without the process that injected the fault.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from mlchaos_steps.core.promql import StageProbe
from mlchaos_steps.core.strict import StrictModel

__all__ = ["StageSpec", "StrictModel", "version_or_alias"]

if TYPE_CHECKING:
    from mlchaos_steps.core.context import PhaseContext
    from mlchaos_steps.core.records import Action, ModelRef
    from mlchaos_steps.core.verdict import Verdict


class StageSpec(BaseModel):
    """Base class of stage specs. Subclasses set ``kind``, ``stage_id`` and ``title``. Numbers are finite:
    ``timeout_s: .inf`` is refused like any other bad value."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: ClassVar[str]
    stage_id: ClassVar[str]
    title: ClassVar[str]

    # Every stage: a PromQL steady state and hypothesis, checked by the engine (core.promql).
    probe: StageProbe | None = None

    def document(self) -> dict[str, Any]:
        """The spec as the ``{kind, spec}`` mapping a stage file holds."""
        return {"kind": self.kind, "spec": self.model_dump(mode="json", exclude_none=True)}

    def describe(self) -> str:
        """One line for people: what this stage breaks."""
        return self.title

    # -- phases -----------------------------------------------------------------------------------
    def plan(self, ctx: PhaseContext) -> dict[str, Any]:
        """Resolve targets and check safety rules without changing anything (``--dry-run``)."""
        raise NotImplementedError

    def snapshot(self, ctx: PhaseContext) -> dict[str, Any]:
        """Resolve targets, check safety, record the steady state, back up what inject destroys."""
        raise NotImplementedError

    def inject(self, ctx: PhaseContext) -> dict[str, Any]:
        """Apply the fault; every destructive step goes through ``ctx.destructive`` first."""
        raise NotImplementedError

    def verify(self, ctx: PhaseContext) -> Verdict:
        """Observe recovery and judge it."""
        raise NotImplementedError

    @classmethod
    def restore_action(cls, action: Action, ctx: PhaseContext) -> dict[str, Any]:
        """Undo one ledger action; idempotent: a second call finds nothing to do."""
        raise NotImplementedError

    @classmethod
    def after_restore(cls, ctx: PhaseContext) -> dict[str, Any]:
        """A check once every action is undone (e.g. the model loads again); raise RestoreError if not."""
        return {}

    def hold_targets(self, ctx: PhaseContext) -> None:
        """Take what keeps other machines off the targets, beyond the ledger's lease (e.g. a Kubernetes
        Lease); save what ``release_targets`` needs with ``ctx.save``. Called at snapshot, before anything
        breaks. Default: nothing."""

    @classmethod
    def release_targets(cls, ctx: PhaseContext) -> dict[str, Any]:
        """Give back what ``hold_targets`` took; idempotent. Called when the run is restored (and when a
        snapshot fails)."""
        return {}

    def model_ref(self, ctx: PhaseContext) -> ModelRef | None:
        """The exact model version the verdict goes onto, once a phase resolved one into the state."""
        return ctx.model_version

    def target_ids(self) -> list[str]:
        """Stable names of what this stage breaks, for the per-target lease and file lock."""
        raise NotImplementedError


def version_or_alias(value: Any) -> str:
    """A model version as a stage field: a number or an ``@alias``, as text."""
    text = str(value).strip()
    if not text or not (text.isdigit() or (text.startswith("@") and len(text) > 1)):
        raise ValueError(f"{value!r} is neither a version number nor an @alias (e.g. 3 or '@challenger')")
    return text
