"""The embedded write-ahead ledger: what every run broke, and everything needed to put it back.

One SQLite file under ``MLCHAOS_HOME``. Each destructive step is written as a ``planned`` action,
with its undo record, *before* it is applied, then marked ``applied``; restore walks the actions in
reverse and marks them ``restored``. Restore needs nothing but this file, so it works in a fresh
process after a crash of any phase.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlchaos_steps import config
from mlchaos_steps.core.records import Action, ActionState, Execution, ExecutionStatus, process_identity
from mlchaos_steps.errors import InfrastructureError, TargetBusy
from mlchaos_steps.redaction import redact

SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    run_key       TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    stage_id      TEXT NOT NULL,
    spec_json     TEXT NOT NULL,
    status        TEXT NOT NULL,
    verdict       TEXT,
    verdict_json  TEXT,
    state_json    TEXT NOT NULL DEFAULT '{}',
    phases_json   TEXT NOT NULL DEFAULT '{}',
    owner_pid     INTEGER,
    owner_started REAL,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS actions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_key    TEXT NOT NULL REFERENCES executions(run_key),
    kind       TEXT NOT NULL,
    target     TEXT NOT NULL,
    undo_json  TEXT NOT NULL,
    state      TEXT NOT NULL,
    error      TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS actions_by_run ON actions(run_key);
CREATE TABLE IF NOT EXISTS leases (
    target_id   TEXT PRIMARY KEY,
    run_key     TEXT NOT NULL,
    acquired_at REAL NOT NULL
);
"""

class SqliteLedger:
    """The embedded ledger: ``$MLCHAOS_HOME/ledger.db``.

    Example::

        ledger = SqliteLedger()
        for execution in ledger.open_executions():
            print(execution.run_key, execution.status)
    """

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else config.home() / "ledger.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as db:
                db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise InfrastructureError(f"cannot open the ledger at {self.path}: {exc}") from exc

    def __repr__(self) -> str:
        return f"SqliteLedger({str(self.path)!r})"

    @property
    def location(self) -> str:
        return str(self.path)

    def store_backup(self, run_key: str, folder: Path) -> None:
        """Backups stay where they were written, under MLCHAOS_HOME."""

    def fetch_backup(self, run_key: str, folder: Path) -> None:
        """Nothing to fetch: backups never left MLCHAOS_HOME."""

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- executions -------------------------------------------------------------------------------
    def get(self, run_key: str) -> Execution | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM executions WHERE run_key = ?", (run_key,)).fetchone()
        return _execution(row) if row else None

    def create(self, run_key: str, kind: str, stage_id: str, spec: dict[str, Any]) -> Execution:
        """Create the execution, or return the existing one for this run key (retries)."""
        now = time.time()
        pid, started = process_identity()
        with self._transaction() as db:
            row = db.execute("SELECT * FROM executions WHERE run_key = ?", (run_key,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO executions (run_key, kind, stage_id, spec_json, status, owner_pid,"
                    " owner_started, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (run_key, kind, stage_id, json.dumps(redact(spec)), ExecutionStatus.CREATED, pid, started, now,
                     now),
                )
                row = db.execute("SELECT * FROM executions WHERE run_key = ?", (run_key,)).fetchone()
        return _execution(row)

    def claim(self, run_key: str) -> None:
        """Record this process as the one working on the execution (for orphan detection)."""
        pid, started = process_identity()
        with self._transaction() as db:
            db.execute(
                "UPDATE executions SET owner_pid = ?, owner_started = ?, updated_at = ? WHERE run_key = ?",
                (pid, started, time.time(), run_key),
            )

    def discard(self, run_key: str) -> None:
        """Forget an execution that never touched anything (its snapshot refused bad input)."""
        with self._transaction() as db:
            db.execute("DELETE FROM executions WHERE run_key = ? AND NOT EXISTS "
                       "(SELECT 1 FROM actions WHERE actions.run_key = executions.run_key)", (run_key,))

    def release_owner(self, run_key: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE executions SET owner_pid = NULL, owner_started = NULL WHERE run_key = ?",
                (run_key,),
            )

    def update(
        self,
        run_key: str,
        *,
        status: str | None = None,
        verdict: str | None = None,
        verdict_detail: dict[str, Any] | None = None,
        state: dict[str, Any] | None = None,
        phase: tuple[str, dict[str, Any]] | None = None,
    ) -> Execution:
        """Merge ``state`` into the execution's state and record a phase's result."""
        with self._transaction() as db:
            row = db.execute("SELECT * FROM executions WHERE run_key = ?", (run_key,)).fetchone()
            if row is None:
                raise InfrastructureError(f"run key {run_key!r} is not in the ledger {self.path}")
            current = _execution(row)
            if state:
                current.state.update(redact(state))
            if phase:
                current.phases[phase[0]] = redact(phase[1])
            verdict_detail = redact(verdict_detail)
            db.execute(
                "UPDATE executions SET status = COALESCE(?, status), verdict = COALESCE(?, verdict),"
                " verdict_json = COALESCE(?, verdict_json), state_json = ?, phases_json = ?,"
                " updated_at = ? WHERE run_key = ?",
                (
                    status, verdict, json.dumps(verdict_detail) if verdict_detail is not None else None,
                    json.dumps(current.state), json.dumps(current.phases), time.time(), run_key,
                ),
            )
            row = db.execute("SELECT * FROM executions WHERE run_key = ?", (run_key,)).fetchone()
        return _execution(row)

    def executions(self) -> list[Execution]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM executions ORDER BY created_at").fetchall()
        return [_execution(r) for r in rows]

    def open_executions(self) -> list[Execution]:
        """Executions that may still have something broken: not yet restored."""
        return [e for e in self.executions() if e.status != ExecutionStatus.RESTORED]

    # -- actions (write-ahead) --------------------------------------------------------------------
    def plan_action(self, run_key: str, kind: str, target: str, undo: dict[str, Any]) -> Action:
        """Write the action and its undo record *before* the fault is applied."""
        now = time.time()
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO actions (run_key, kind, target, undo_json, state, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (run_key, kind, target, json.dumps(undo), ActionState.PLANNED, now, now),
            )
            action_id = cur.lastrowid
        assert action_id is not None
        return Action(action_id, run_key, kind, target, undo, ActionState.PLANNED)

    def plan_actions(self, run_key: str, kind: str, items: list[tuple[str, dict[str, Any]]]) -> list[Action]:
        """``plan_action`` for many targets in one transaction (one sync to disk, not one per target)."""
        now = time.time()
        planned = []
        with self._transaction() as db:
            for target, undo in items:
                cur = db.execute(
                    "INSERT INTO actions (run_key, kind, target, undo_json, state, created_at, updated_at)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (run_key, kind, target, json.dumps(undo), ActionState.PLANNED, now, now),
                )
                assert cur.lastrowid is not None
                planned.append(Action(cur.lastrowid, run_key, kind, target, undo, ActionState.PLANNED))
        return planned

    def mark_actions(self, actions: list[Action], state: str) -> None:
        """``mark_action`` for many actions in one transaction."""
        now = time.time()
        with self._transaction() as db:
            for action in actions:
                action.state = state
                db.execute("UPDATE actions SET state = ?, undo_json = ?, updated_at = ? WHERE id = ?",
                           (state, json.dumps(action.undo), now, action.id))

    def mark_action(
        self, action: Action, state: str, *, error: str | None = None, undo: dict[str, Any] | None = None
    ) -> None:
        if undo is not None:
            action.undo = undo
        action.state, action.error = state, error
        with self._transaction() as db:
            db.execute(
                "UPDATE actions SET state = ?, error = ?, undo_json = ?, updated_at = ? WHERE id = ?",
                (state, redact(error), json.dumps(action.undo), time.time(), action.id),
            )

    def actions(self, run_key: str) -> list[Action]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM actions WHERE run_key = ? ORDER BY id", (run_key,)).fetchall()
        return [
            Action(r["id"], r["run_key"], r["kind"], r["target"], json.loads(r["undo_json"]), r["state"],
                   r["error"])
            for r in rows
        ]

    # -- leases: one run per target ---------------------------------------------------------------
    def acquire_lease(self, target_id: str, run_key: str) -> None:
        """Take the target for this run; refuse while another run holds it."""
        with self._transaction() as db:
            row = db.execute("SELECT run_key FROM leases WHERE target_id = ?", (target_id,)).fetchone()
            if row and row["run_key"] != run_key:
                raise TargetBusy(
                    f"target {target_id} is held by run {row['run_key']!r}: wait for it to finish, or run "
                    f"`mlchaos restore --run-key {row['run_key']}` if it crashed"
                )
            if not row:
                db.execute(
                    "INSERT INTO leases (target_id, run_key, acquired_at) VALUES (?,?,?)",
                    (target_id, run_key, time.time()),
                )

    def release_leases(self, run_key: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM leases WHERE run_key = ?", (run_key,))

    def leases(self) -> dict[str, str]:
        with self._connect() as db:
            return {r["target_id"]: r["run_key"] for r in db.execute("SELECT * FROM leases").fetchall()}


def _execution(row: sqlite3.Row) -> Execution:
    return Execution(
        run_key=row["run_key"],
        kind=row["kind"],
        stage_id=row["stage_id"],
        spec=json.loads(row["spec_json"]),
        status=row["status"],
        verdict=row["verdict"],
        verdict_detail=json.loads(row["verdict_json"]) if row["verdict_json"] else None,
        state=json.loads(row["state_json"]),
        phases=json.loads(row["phases_json"]),
        owner_pid=row["owner_pid"],
        owner_started=row["owner_started"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
