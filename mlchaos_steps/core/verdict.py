"""The outcome of a stage's verify phase: what the pipeline and the promotion gate act on."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

VerdictStatus = Literal["passed", "failed", "inconclusive"]
EXIT_CODES: dict[str, int] = {"passed": 0, "failed": 1, "inconclusive": 3}


class Verdict(BaseModel):
    """``passed`` only when the system recovered as claimed; ``inconclusive`` whenever we could not tell.

    ``metrics`` are numbers with units in their names (``recovery_seconds``, ``lost_steps``);
    ``evidence`` is the data the verdict was drawn from.
    """

    status: VerdictStatus
    reason: str
    metrics: dict[str, float] = Field(default_factory=dict)
    evidence: dict[str, Any] = Field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    @classmethod
    def passed(cls, reason: str, **kw: Any) -> Verdict:
        return cls(status="passed", reason=reason, **kw)

    @classmethod
    def failed(cls, reason: str, **kw: Any) -> Verdict:
        return cls(status="failed", reason=reason, **kw)

    @classmethod
    def inconclusive(cls, reason: str, **kw: Any) -> Verdict:
        return cls(status="inconclusive", reason=reason, **kw)
