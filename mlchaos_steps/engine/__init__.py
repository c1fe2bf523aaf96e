"""The engine: phases over a write-ahead ledger.

Example::

    from mlchaos_steps.engine import run_stage, restore_run, restore_orphaned
"""

from mlchaos_steps.engine.phases import (
    PHASES,
    PhaseResult,
    StageOutcome,
    restore_orphaned,
    restore_run,
    run_phase,
    run_stage,
)
from mlchaos_steps.engine.verdict import Verdict

__all__ = [
    "PHASES", "PhaseResult", "StageOutcome", "Verdict", "restore_orphaned", "restore_run", "run_phase",
    "run_stage",
]
