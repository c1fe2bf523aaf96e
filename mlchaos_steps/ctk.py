"""Chaos Toolkit providers: the activities of the experiment written into every journal.

They let ``chaos run`` replay a stage from its journal's experiment, and let
``chaoslib.experiment.ensure_experiment_is_valid`` check that experiment against real functions.
"""

from __future__ import annotations

from typing import Any

from mlchaos_steps.api import restore_run, run_phase
from mlchaos_steps.ledgers import default_ledger
from mlchaos_steps.stages import parse_stage


def snapshot(stage: dict[str, Any], run_key: str) -> dict[str, Any]:
    return run_phase(parse_stage(stage), "snapshot", run_key).output


def inject(stage: dict[str, Any], run_key: str) -> dict[str, Any]:
    return run_phase(parse_stage(stage), "inject", run_key).output


def verify(stage: dict[str, Any], run_key: str) -> dict[str, Any]:
    return run_phase(parse_stage(stage), "verify", run_key).output


def restore(stage: dict[str, Any], run_key: str) -> dict[str, Any]:
    return restore_run(run_key)


def verdict_is_passed(stage: dict[str, Any], run_key: str) -> bool:
    """The steady-state probe: True when the recorded verdict of this run is ``passed``."""
    execution = default_ledger().get(run_key)
    return bool(execution and execution.verdict == "passed")
