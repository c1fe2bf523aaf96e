"""The ledger on an MLflow tracking server, for phases that run in separate pods (Argo).

One MLflow run per stage execution in experiment ``mlchaos-ledger``; its tags hold the execution
(JSON split into 8000-character tags, written in one ``log_batch``), each action, and the leases it
holds. Backups are uploaded as the run's artifacts, so restore can run anywhere the server is
reachable. Same interface as :class:`~mlchaos_steps.ledgers.sqlite.SqliteLedger`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from mlchaos_steps.core.records import Action, ActionState, Execution, ExecutionStatus, process_identity
from mlchaos_steps.errors import InfrastructureError, TargetBusy
from mlchaos_steps.redaction import redact

EXPERIMENT = "mlchaos-ledger"
LEASE_TTL_S = 6 * 3600.0
LEASE_RUN_KEY, LEASE_TARGET, LEASE_EXPIRES = "mlchaos.lease.run_key", "mlchaos.lease.target", "mlchaos.lease.expires_at"
P = "mlchaos.ledger."
CHUNK = 7900
DOCS = ("spec", "state", "phases", "verdict_detail")


def _chunks(name: str, value: Any) -> dict[str, str]:
    text = json.dumps(redact(value), default=str)
    parts = [text[i:i + CHUNK] for i in range(0, len(text), CHUNK)] or [""]
    out = {f"{P}{name}.{i}": part for i, part in enumerate(parts)}
    out[f"{P}{name}.n"] = str(len(parts))
    return out


def _unchunk(tags: dict[str, str], name: str, default: Any) -> Any:
    n = int(tags.get(f"{P}{name}.n", "0"))
    if not n:
        return default
    return json.loads("".join(tags.get(f"{P}{name}.{i}", "") for i in range(n)))


class MlflowLedger:
    """State shared through the tracking server (``MLFLOW_TRACKING_URI``)."""

    def __init__(self) -> None:
        from mlchaos_steps.targets.mlflow import client, experiment_id, tracking_uri

        try:
            self.client = client()
            self.experiment_id = experiment_id(EXPERIMENT)
        except Exception as exc:
            raise InfrastructureError(f"cannot reach the MLflow ledger at {tracking_uri()}: {exc}") from exc
        self.location = f"{tracking_uri()} (experiment {EXPERIMENT})"

    def __repr__(self) -> str:
        return f"MlflowLedger({self.location!r})"

    # -- runs ---------------------------------------------------------------------------------------
    def _run(self, run_key: str) -> Any:
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{P}run_key` = '{_q(run_key)}'",
                                       max_results=1)
        return runs[0] if runs else None

    def _write(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def _execution(self, run: Any) -> Execution:
        tags = run.data.tags
        return Execution(
            run_key=tags[f"{P}run_key"], kind=tags[f"{P}kind"], stage_id=tags[f"{P}stage_id"],
            spec=_unchunk(tags, "spec", {}), status=tags[f"{P}status"], verdict=tags.get(f"{P}verdict") or None,
            verdict_detail=_unchunk(tags, "verdict_detail", None), state=_unchunk(tags, "state", {}),
            phases=_unchunk(tags, "phases", {}),
            owner_pid=int(tags[f"{P}owner_pid"]) if tags.get(f"{P}owner_pid") else None,
            owner_started=float(tags[f"{P}owner_started"]) if tags.get(f"{P}owner_started") else None,
            owner_host=tags.get(f"{P}owner_host") or None,
            created_at=float(tags[f"{P}created_at"]), updated_at=float(tags[f"{P}updated_at"]),
        )

    def get(self, run_key: str) -> Execution | None:
        run = self._run(run_key)
        return self._execution(run) if run else None

    def create(self, run_key: str, kind: str, stage_id: str, spec: dict[str, Any]) -> Execution:
        run = self._run(run_key)
        if run is None:
            now = str(time.time())
            created = self.client.create_run(self.experiment_id, tags={
                f"{P}run_key": run_key, "mlflow.runName": f"ledger {stage_id} {run_key}"[:250]})
            self._write(created.info.run_id, {
                f"{P}kind": kind, f"{P}stage_id": stage_id, f"{P}status": ExecutionStatus.CREATED,
                f"{P}created_at": now, f"{P}updated_at": now,
                **_chunks("spec", spec), **_chunks("state", {}), **_chunks("phases", {}),
            })
            run = self.client.get_run(created.info.run_id)
        return self._execution(run)

    def claim(self, run_key: str) -> None:
        pid, started = process_identity()
        self._write(self._required(run_key).info.run_id, {
            f"{P}owner_pid": str(pid), f"{P}owner_started": str(started), f"{P}owner_host": socket.gethostname()})

    def discard(self, run_key: str) -> None:
        """Forget an execution that never touched anything (its snapshot refused bad input)."""
        run = self._run(run_key)
        if run is not None and not self.actions(run_key):
            self.client.delete_run(run.info.run_id)

    def release_owner(self, run_key: str) -> None:
        self._write(self._required(run_key).info.run_id,
                    {f"{P}owner_pid": "", f"{P}owner_started": "", f"{P}owner_host": ""})

    def _required(self, run_key: str) -> Any:
        run = self._run(run_key)
        if run is None:
            raise InfrastructureError(f"run key {run_key!r} is not in the ledger {self.location}")
        return run

    def update(self, run_key: str, *, status: str | None = None, verdict: str | None = None,
               verdict_detail: dict[str, Any] | None = None, state: dict[str, Any] | None = None,
               phase: tuple[str, dict[str, Any]] | None = None) -> Execution:
        run = self._required(run_key)
        current = self._execution(run)
        tags: dict[str, str] = {f"{P}updated_at": str(time.time())}
        if status:
            tags[f"{P}status"] = status
            if status == ExecutionStatus.RESTORED:
                self.client.set_terminated(run.info.run_id, "FINISHED")
        if verdict:
            tags[f"{P}verdict"] = verdict
        if verdict_detail is not None:
            tags.update(_chunks("verdict_detail", verdict_detail))
        if state:
            tags.update(_chunks("state", {**current.state, **state}))
        if phase:
            tags.update(_chunks("phases", {**current.phases, phase[0]: phase[1]}))
        self._write(run.info.run_id, tags)
        return self._execution(self.client.get_run(run.info.run_id))

    def executions(self) -> list[Execution]:
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{P}run_key` != ''",
                                       max_results=10_000, order_by=["attributes.start_time ASC"])
        return [self._execution(r) for r in runs if f"{P}kind" in r.data.tags]

    def open_executions(self) -> list[Execution]:
        return [e for e in self.executions() if e.status != ExecutionStatus.RESTORED]

    # -- actions ------------------------------------------------------------------------------------
    def plan_action(self, run_key: str, kind: str, target: str, undo: dict[str, Any]) -> Action:
        run = self._required(run_key)
        action_id = len(self.actions(run_key)) + 1
        action = Action(action_id, run_key, kind, target, undo, ActionState.PLANNED)
        self._write(run.info.run_id, {f"{P}action.{action_id:05d}": self._action_json(action)})
        return action

    @staticmethod
    def _action_json(action: Action) -> str:
        text = json.dumps({"kind": action.kind, "target": action.target, "undo": action.undo, "state": action.state,
                           "error": redact(action.error)}, default=str)
        if len(text) > 8000:
            raise InfrastructureError(f"the undo record of {action.target} is too large for an MLflow tag")
        return text

    def plan_actions(self, run_key: str, kind: str, items: list[tuple[str, dict[str, Any]]]) -> list[Action]:
        """``plan_action`` for many targets, written in batches (MLflow takes 100 tags per request)."""
        run = self._required(run_key)
        first = len(self.actions(run_key)) + 1
        planned = [Action(first + i, run_key, kind, target, undo, ActionState.PLANNED)
                   for i, (target, undo) in enumerate(items)]
        self._write_many(run.info.run_id, {f"{P}action.{a.id:05d}": self._action_json(a) for a in planned})
        return planned

    def mark_actions(self, actions: list[Action], state: str) -> None:
        if not actions:
            return
        for action in actions:
            action.state = state
        run = self._required(actions[0].run_key)
        self._write_many(run.info.run_id, {f"{P}action.{a.id:05d}": self._action_json(a) for a in actions})

    def _write_many(self, run_id: str, tags: dict[str, str]) -> None:
        items = list(tags.items())
        for start in range(0, len(items), 100):
            self._write(run_id, dict(items[start:start + 100]))

    def mark_action(self, action: Action, state: str, *, error: str | None = None,
                    undo: dict[str, Any] | None = None) -> None:
        if undo is not None:
            action.undo = undo
        action.state, action.error = state, error
        run = self._required(action.run_key)
        self._write(run.info.run_id, {f"{P}action.{action.id:05d}": self._action_json(action)})

    def actions(self, run_key: str) -> list[Action]:
        run = self._run(run_key)
        if run is None:
            return []
        found = []
        for key, value in sorted(run.data.tags.items()):
            if key.startswith(f"{P}action."):
                d = json.loads(value)
                found.append(Action(int(key.rsplit(".", 1)[1]), run_key, d["kind"], d["target"], d["undo"],
                                    d["state"], d.get("error")))
        return found

    # -- leases: one registered model per held target -------------------------------------------------
    # MLflow has one create that fails when the name exists: registered models. A lease is the model
    # ``mlchaos-lease-<target hash>``, created with its holder and expiry in one call, then read back.
    def acquire_lease(self, target_id: str, run_key: str) -> None:
        """Take the target for this run, atomically across machines; refuse while another run holds it
        (until its lease expires: ``MLCHAOS_LEASE_TTL_S``, default 6 hours)."""
        name = _lease_name(target_id)
        for _ in range(3):
            if self._create_lease(name, target_id, run_key):
                break
            holder = self._lease_holder(name)
            if holder is None:
                continue  # released meanwhile: try again
            if holder[0] == run_key:
                break  # re-entrant for the same run
            if holder[1] < time.time():
                self._delete_lease(name, holder[0])  # expired: a crashed run's; take it over
                continue
            raise TargetBusy(f"target {target_id} is held by run {holder[0]!r}: wait for it to finish, or run "
                             f"`mlchaos restore --run-key {holder[0]}` if it crashed")
        holder = self._lease_holder(name)  # read back: the lease must name us now
        if holder is None or holder[0] != run_key:
            raise TargetBusy(f"target {target_id} was taken by run {holder[0] if holder else '?'!r} at the same "
                             "moment: try again later")
        self._write(self._required(run_key).info.run_id, {f"{P}lease.{name.rsplit('-', 1)[1]}": target_id})

    def _create_lease(self, name: str, target_id: str, run_key: str) -> bool:
        from mlflow.exceptions import MlflowException

        ttl = float(os.environ.get("MLCHAOS_LEASE_TTL_S", LEASE_TTL_S))
        try:
            self.client.create_registered_model(
                name, tags={LEASE_RUN_KEY: run_key, LEASE_TARGET: target_id, LEASE_EXPIRES: str(time.time() + ttl)},
                description="mlchaos lease: one chaos run at a time on this target (deleted when the run restores)")
            return True
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_ALREADY_EXISTS":
                return False
            raise

    def _lease_holder(self, name: str) -> tuple[str, float] | None:
        from mlflow.exceptions import MlflowException

        try:
            tags = self.client.get_registered_model(name).tags
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return tags.get(LEASE_RUN_KEY, ""), float(tags.get(LEASE_EXPIRES) or 0)

    def _delete_lease(self, name: str, holder: str) -> None:
        from mlflow.exceptions import MlflowException

        now = self._lease_holder(name)
        if now is None or now[0] != holder:
            return  # someone else's now
        try:
            self.client.delete_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise

    def release_leases(self, run_key: str) -> None:
        run = self._required(run_key)
        held = {k: v for k, v in run.data.tags.items() if k.startswith(f"{P}lease.") and v}
        for target_id in held.values():
            self._delete_lease(_lease_name(target_id), run_key)
        if held:
            self._write(run.info.run_id, dict.fromkeys(held, ""))

    def leases(self) -> dict[str, str]:
        found = self.client.search_registered_models(filter_string="name LIKE 'mlchaos-lease-%'", max_results=1000)
        return {m.tags.get(LEASE_TARGET, m.name): m.tags.get(LEASE_RUN_KEY, "") for m in found}

    # -- backups ------------------------------------------------------------------------------------
    def store_backup(self, run_key: str, folder: Path) -> None:
        """Upload a backup folder as the execution run's artifacts (``backup/``)."""
        self.client.log_artifacts(self._required(run_key).info.run_id, str(folder), "backup")

    def fetch_backup(self, run_key: str, folder: Path) -> None:
        """Download the backup into ``folder`` when this machine does not have it (another pod took it)."""
        if folder.exists() and any(folder.rglob("*")):
            return
        folder.mkdir(parents=True, exist_ok=True)
        self.client.download_artifacts(self._required(run_key).info.run_id, "backup", str(folder.parent))


def _lease_name(target_id: str) -> str:
    return f"mlchaos-lease-{hashlib.sha256(target_id.encode()).hexdigest()[:24]}"


def _q(value: str) -> str:
    return value.replace("'", "\\'")
