"""Errors with a meaning for the caller, each mapped to one CLI exit code.

Exit codes, as the README states them: 0 passed, 1 verdict failed or gate blocked,
2 bad input, 3 inconclusive or infrastructure error.
"""

from __future__ import annotations


class MlchaosError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 3


class SpecError(MlchaosError, ValueError):
    """Bad input: a spec, a flag or a target that cannot be used. Nothing was touched.

    The message names the field and says what to do, e.g.
    ``spec.store: 'file:///' is not allowed: point it at the folder that holds your checkpoints``.
    """

    exit_code = 2

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class SafetyError(SpecError):
    """A safety rule refused the run before anything was touched (exit 2)."""


class KillSwitchEngaged(MlchaosError):
    """MLCHAOS_DISABLED=1 or the stop file is present: no new fault may be injected."""

    exit_code = 3


class TargetBusy(MlchaosError):
    """Another run holds the lease on this target; serialising chaos per target."""

    exit_code = 3


class InfrastructureError(MlchaosError):
    """Something outside the stage failed (ledger, store, server): the verdict is inconclusive."""

    exit_code = 3


class RestoreError(MlchaosError):
    """Restore could not put something back. The quarantined copy is kept, never deleted."""

    exit_code = 3
