"""A file lock per target, so two runs never work on the same target at the same moment.

The lock covers each phase's critical section; the ledger's lease covers the whole run, from
snapshot to restore, across processes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from filelock import FileLock, Timeout

from mlchaos_steps import config
from mlchaos_steps.errors import TargetBusy

LOCK_WAIT_S = 30.0


@contextmanager
def target_locks(target_ids: list[str], wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the file locks of every target (sorted, so two runs cannot deadlock)."""
    folder = config.home() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        for target_id in sorted(set(target_ids)):
            name = hashlib.sha256(target_id.encode()).hexdigest()[:24]
            lock = FileLock(str(folder / f"{name}.lock"))
            try:
                stack.enter_context(lock.acquire(timeout=wait_s))
            except Timeout:
                raise TargetBusy(
                    f"target {target_id} is locked by another mlchaos process for over {wait_s:.0f}s: "
                    "let it finish, or stop it"
                ) from None
        yield
