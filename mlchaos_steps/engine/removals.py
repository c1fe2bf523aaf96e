"""Removing a stage's own damaged copies once restore has made the store whole.

A damaged copy of a large file (a 1 GB Parquet batch) takes the kernel 50-150 ms to free, longer than
the two renames that put the original back. Restore sets such a copy aside in the run's quarantine and
names it in its result (``quarantine.DISCARD``); the engine records the list in the execution's state in
the same ledger write that closes the restore phase, then removes the copies in a background thread and
clears the record. Nothing the system reads is touched: the copies sit in mlchaos's quarantine folder.
A process that dies first leaves the record: ``restore --orphaned`` (``finish_orphaned``) finishes it.
Each copy is removed only while it is exactly what the stage wrote (see ``quarantine.discard``).

Example::

    output = restore_run("nightly-1")   # the store is whole; the damaged copy goes in the background
    wait()                              # before the process exits (run_stage and the CLI do this)
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from mlchaos_steps.core.records import Execution, ExecutionStatus, Ledger, owner_alive, process_identity
from mlchaos_steps.targets import quarantine

log = logging.getLogger("mlchaos")

STATE_KEY = "removals"
_threads: list[threading.Thread] = []
_lock = threading.Lock()


def collect(done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Take the set-aside copies out of the restore results (they go to the ledger, not the output)."""
    return [entry for result in done if (entry := result.pop(quarantine.DISCARD, None))]


def record(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The execution state that says who removes ``entries``: this process, while it lives."""
    pid, started = process_identity()
    return {STATE_KEY: {"pid": pid, "started": started, "entries": entries}}


def start(run_key: str, ledger: Ledger, entries: list[dict[str, Any]]) -> None:
    """Remove ``entries`` in a background thread (not a daemon: the interpreter waits for it at exit)."""
    if not entries:
        return
    thread = threading.Thread(target=_finish, args=(run_key, ledger, entries), name=f"mlchaos-removal-{run_key}")
    with _lock:
        _threads.append(thread)
    thread.start()


def wait() -> None:
    """Wait for every removal this process started."""
    with _lock:
        pending = list(_threads)
        _threads.clear()
    for thread in pending:
        thread.join()


def remove_now(entries: list[dict[str, Any]]) -> None:
    """Remove ``entries`` before going on (a failed snapshot's undo, which has no restore phase to close)."""
    for entry in entries:
        quarantine.discard(entry)


def _finish(run_key: str, ledger: Ledger, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results = []
    for entry in entries:
        try:
            results.append(quarantine.discard(entry))
        except Exception as exc:  # left in the ledger: the next `restore --orphaned` tries again
            log.warning("run %s: could not remove its damaged copy %s: %s", run_key, entry.get("path"), exc)
            return results
    ledger.update(run_key, state={STATE_KEY: None})
    return results


def orphaned(execution: Execution) -> bool:
    """A restored run whose removals a dead process left unfinished."""
    held = execution.state.get(STATE_KEY)
    return (execution.status == ExecutionStatus.RESTORED and bool(held)
            and not owner_alive(held.get("pid"), held.get("started")))


def finish_orphaned(ledger: Ledger) -> list[dict[str, Any]]:
    """Finish the removals of every restored run whose process died before it finished them."""
    done = []
    for execution in ledger.executions():
        if orphaned(execution):
            entries = execution.state[STATE_KEY]["entries"]
            done.append({"run_key": execution.run_key, "removed": _finish(execution.run_key, ledger, entries)})
    return done
