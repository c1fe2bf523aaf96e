"""File locks: one per target, so two runs never work on the same target at the same moment, and one
per run key, so one run key is one execution however many processes retry it.

The target lock covers each phase's critical section; the ledger's lease covers the whole run, from
snapshot to restore, across processes. Locks are re-entrant within a process (the same lock object
per file), so a phase may call restore while it holds its run key.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from filelock import FileLock, Timeout

from mlchaos_steps import config
from mlchaos_steps.errors import TargetBusy

LOCK_WAIT_S = 30.0
RUN_KEY_WAIT_S = 1800.0  # a retry waits this long for the execution of its run key to finish


def _lock(name: str) -> FileLock:
    folder = config.home() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / f"{name}.lock"), is_singleton=True)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:24]


@contextmanager
def target_locks(target_ids: list[str], wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the file locks of every target (sorted, so two runs cannot deadlock)."""
    with ExitStack() as stack:
        for target_id in sorted(set(target_ids)):
            try:
                stack.enter_context(_lock(_digest(target_id)).acquire(timeout=wait_s))
            except Timeout:
                raise TargetBusy(
                    f"target {target_id} is locked by another mlchaos process for over {wait_s:.0f}s: "
                    "let it finish, or stop it"
                ) from None
        yield


def run_key_wait_s() -> float:
    return float(os.environ.get("MLCHAOS_RUN_KEY_WAIT_S", RUN_KEY_WAIT_S))


@contextmanager
def run_key_lock(run_key: str, wait_s: float | None = None) -> Iterator[None]:
    """Hold the run key: a retry arriving while it is in progress waits (bounded), then sees its result."""
    wait_s = run_key_wait_s() if wait_s is None else wait_s
    try:
        with _lock(f"run-{_digest(run_key)}").acquire(timeout=wait_s):
            yield
    except Timeout:
        raise TargetBusy(f"run key {run_key!r} has been in progress in another process for over {wait_s:.0f}s: "
                         "wait for it, or raise MLCHAOS_RUN_KEY_WAIT_S") from None
