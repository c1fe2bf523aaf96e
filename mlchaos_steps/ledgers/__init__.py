"""Where runs are recorded, side by side: ``SqliteLedger`` (one file under ``MLCHAOS_HOME``) and
``MlflowLedger`` (the tracking server, so phases in separate pods share state). Both provide
:class:`~mlchaos_steps.core.records.Ledger`.
"""

from __future__ import annotations

import os

from mlchaos_steps.core.records import Ledger
from mlchaos_steps.errors import SpecError
from mlchaos_steps.ledgers.sqlite import SqliteLedger

__all__ = ["Ledger", "SqliteLedger", "default_ledger"]


def default_ledger() -> Ledger:
    """The ledger selected by ``MLCHAOS_LEDGER``: ``sqlite`` (default, under MLCHAOS_HOME) or ``mlflow``
    (the tracking server, so phases in separate pods share state)."""
    kind = os.environ.get("MLCHAOS_LEDGER", "sqlite")
    if kind == "sqlite":
        return SqliteLedger()
    if kind == "mlflow":
        from mlchaos_steps.ledgers.mlflow import MlflowLedger

        return MlflowLedger()
    raise SpecError("MLCHAOS_LEDGER", f"{kind!r} is not a ledger: use 'sqlite' or 'mlflow'")
