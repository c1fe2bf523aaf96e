"""The engine: phases over a write-ahead ledger, telling an observer what happened.

Example (silent: nothing reported; :mod:`mlchaos_steps.api` reports verdicts to MLflow)::

    from mlchaos_steps.api import run_stage, restore_run, restore_orphaned

Attributes load on first use (PEP 562), so a stage module importing ``mlchaos_steps.core.context``
at DAG-parse time does not pull in the phase runner, the locks and the journal.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PHASES": "mlchaos_steps.engine.phases",
    "PhaseResult": "mlchaos_steps.engine.phases",
    "StageOutcome": "mlchaos_steps.engine.phases",
    "restore_orphaned": "mlchaos_steps.engine.phases",
    "restore_run": "mlchaos_steps.engine.phases",
    "run_phase": "mlchaos_steps.engine.phases",
    "run_stage": "mlchaos_steps.engine.phases",
    "Observer": "mlchaos_steps.engine.observers",
    "SilentObserver": "mlchaos_steps.engine.observers",
    "Verdict": "mlchaos_steps.core.verdict",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mlchaos_steps.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
