"""The four phases: snapshot, inject, verify, restore. Each runs alone in a fresh process.

Phases share state only through the ledger, keyed by the run key. ``run_stage`` runs all four in one
process with restore in a ``finally``.

Example::

    from mlchaos_steps.engine import run_stage
    from mlchaos_steps.stages import load_stages

    outcome = run_stage(load_stages("stages/wipe.yaml")[0], run_key="nightly-2026-11-27")
    print(outcome.verdict.status, outcome.verdict.reason)
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlchaos_steps.engine.context import PhaseContext, check_kill_switch
from mlchaos_steps.engine.journal import redact, write_journal
from mlchaos_steps.engine.ledger import (
    APPLIED,
    INJECTED,
    PLANNED,
    RESTORE_FAILED,
    RESTORED,
    SNAPSHOTTED,
    UNDO_FAILED,
    UNDONE,
    VERIFIED,
    Execution,
    Ledger,
    default_ledger,
    owner_alive,
)
from mlchaos_steps.engine.locks import run_key_lock, target_locks
from mlchaos_steps.engine.verdict import Verdict
from mlchaos_steps.errors import KillSwitchEngaged, MlchaosError, RestoreError, SpecError
from mlchaos_steps.stages import StageSpec, stage_class

log = logging.getLogger("mlchaos")

Phase = Literal["snapshot", "inject", "verify", "restore"]
PHASES: tuple[Phase, ...] = ("snapshot", "inject", "verify", "restore")


@dataclass
class PhaseResult:
    """What one phase did. ``status`` is ``ok``, ``skipped`` (already done under this run key) or ``dry-run``."""

    phase: str
    run_key: str
    status: str
    output: dict[str, Any] = field(default_factory=dict)
    verdict: Verdict | None = None
    journal: Path | None = None


@dataclass
class StageOutcome:
    """The result of all four phases of one stage."""

    run_key: str
    stage_id: str
    verdict: Verdict
    restored: bool
    restore_error: str | None = None
    journal: Path | None = None
    phases: list[PhaseResult] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 3 if not self.restored else self.verdict.exit_code


def new_run_key() -> str:
    return f"adhoc-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


def _journal(execution: Execution, ledger: Ledger) -> Path:
    ctx = PhaseContext(execution.run_key, ledger, execution)
    return write_journal(execution, stage_class(execution.kind).title, ctx.run_dir / "journal.json")


def _record(ledger: Ledger, run_key: str, phase: str, started: float, phase_status: str,
            output: dict[str, Any] | None = None, error: str | None = None, **update: Any) -> Execution:
    record = {"start": started, "end": time.time(), "status": phase_status, "output": redact(output or {})}
    if error:
        record["error"] = error
    return ledger.update(run_key, phase=(phase, record), **update)


def _ledger_spec(stage: StageSpec) -> dict[str, Any]:
    """The spec as the ledger keeps it: secret-looking values redacted."""
    return redact(stage.document()["spec"])  # type: ignore[no-any-return]


def _same_spec(execution: Execution, stage: StageSpec) -> None:
    if execution.kind != stage.kind or execution.spec != _ledger_spec(stage):
        raise SpecError(
            "--run-key",
            f"run key {execution.run_key!r} was used for a different stage spec: give each stage its own run key",
        )


def run_phase(
    stage: StageSpec, phase: Phase, run_key: str, *, dry_run: bool = False, ledger: Ledger | None = None,
    model: str | None = None, version: str | None = None, _hold_owner: bool = False,
) -> PhaseResult:
    """Run one phase of a stage under a run key. Safe to retry: a done phase is not done twice.

    ``model`` and ``version`` (a number or ``@alias``) name the MLflow model version the verdict is
    written onto after ``verify``; stages about a model version (registry, canary) default to theirs.
    """
    if phase not in PHASES:
        raise SpecError("--phase", f"unknown phase {phase!r}: use one of {', '.join(PHASES)} or all")
    if not run_key:
        raise SpecError("--run-key", "is required to run a single phase: phases share state through it")
    if phase == "restore":
        output = restore_run(run_key, ledger=ledger)
        return PhaseResult("restore", run_key, "ok", output)
    ledger = ledger or default_ledger()
    if dry_run:
        if phase != "snapshot":
            return PhaseResult(phase, run_key, "dry-run", {"note": "dry run: nothing to do after snapshot"})
        plan = stage.plan(PhaseContext(run_key, ledger, None))
        return PhaseResult("snapshot", run_key, "dry-run", redact(plan))
    # "Already done?" is decided under the run key's lock, by whoever holds it: one run key, one execution.
    with run_key_lock(run_key):
        try:
            if phase == "verify":
                return _verify(stage, run_key, ledger, model, version)
            if phase == "snapshot":
                return _snapshot(stage, run_key, ledger, model, version)
            return _inject(stage, run_key, ledger)
        finally:
            # Between phases nobody owns the run; `restore --orphaned` tells a crash by a dead owner.
            if not _hold_owner and ledger.get(run_key):
                ledger.release_owner(run_key)


def _snapshot(stage: StageSpec, run_key: str, ledger: Ledger, model: str | None = None,
              version: str | None = None) -> PhaseResult:
    existing = ledger.get(run_key)
    if existing:
        _same_spec(existing, stage)
        if existing.phases.get("snapshot", {}).get("status") == "ok":
            return PhaseResult("snapshot", run_key, "skipped", {"note": "snapshot already taken under this run key"})
        if existing.status == RESTORED:
            return PhaseResult("snapshot", run_key, "skipped", {"note": "this run key already finished"})
    check_kill_switch()
    execution = ledger.create(run_key, stage.kind, stage.stage_id, _ledger_spec(stage))
    ledger.claim(run_key)
    ctx = PhaseContext(run_key, ledger, execution)
    started = time.time()
    try:
        with target_locks(stage.target_ids()):
            for target_id in stage.target_ids():
                ledger.acquire_lease(target_id, run_key)
            output = stage.snapshot(ctx)
            _mark_pending(stage, ctx, model, version)
    except BaseException as exc:
        # Snapshot changes nothing in the world: close the execution so the target is free again.
        ledger.release_leases(run_key)
        if isinstance(exc, SpecError) and existing is None and not ledger.actions(run_key):
            ledger.discard(run_key)  # bad input is refused without a trace in the ledger
            raise
        _record(ledger, run_key, "snapshot", started, "failed", error=_describe(exc), status=RESTORED)
        _journal(ledger.get(run_key), ledger)  # type: ignore[arg-type]
        raise
    execution = _record(ledger, run_key, "snapshot", started, "ok", output, status=SNAPSHOTTED)
    return PhaseResult("snapshot", run_key, "ok", output, journal=_journal(execution, ledger))


def _inject(stage: StageSpec, run_key: str, ledger: Ledger) -> PhaseResult:
    execution = ledger.get(run_key)
    if execution is None or execution.phases.get("snapshot", {}).get("status") != "ok":
        raise SpecError("--phase inject", f"no snapshot for run key {run_key!r}: run `--phase snapshot` first")
    _same_spec(execution, stage)
    if execution.status in (RESTORED, RESTORE_FAILED):
        raise SpecError("--run-key", f"run key {run_key!r} was already restored: use a new run key")
    if ledger.actions(run_key) or execution.phases.get("inject", {}).get("status") == "ok":
        return PhaseResult("inject", run_key, "skipped",
                           {"note": "already injected under this run key: retries never inject twice"})
    check_kill_switch()
    ledger.claim(run_key)
    ctx = PhaseContext(run_key, ledger, execution)
    started = time.time()
    try:
        with target_locks(stage.target_ids()):
            output = stage.inject(ctx)
    except BaseException as exc:
        _record(ledger, run_key, "inject", started, "failed", error=_describe(exc))
        _journal(ledger.get(run_key), ledger)  # type: ignore[arg-type]
        raise
    execution = _record(ledger, run_key, "inject", started, "ok", output, status=INJECTED)
    return PhaseResult("inject", run_key, "ok", output, journal=_journal(execution, ledger))


def _verify(stage: StageSpec, run_key: str, ledger: Ledger, model: str | None = None,
            version: str | None = None) -> PhaseResult:
    execution = ledger.get(run_key)
    if execution is None:
        raise SpecError("--phase verify", f"no execution for run key {run_key!r}: run snapshot and inject first")
    _same_spec(execution, stage)
    if execution.phases.get("verify", {}).get("status") and execution.verdict_detail:
        recorded = Verdict.model_validate(execution.verdict_detail)
        return PhaseResult("verify", run_key, "skipped", recorded.model_dump(mode="json"), verdict=recorded,
                           journal=_journal(execution, ledger))
    ledger.claim(run_key)
    started = time.time()
    error = None
    if execution.phases.get("inject", {}).get("status") != "ok":
        verdict = Verdict.inconclusive("the fault was not injected (inject did not complete), so nothing was tested")
    else:
        ctx = PhaseContext(run_key, ledger, execution)
        try:
            verdict = stage.verify(ctx)
        except KillSwitchEngaged as exc:
            error = str(exc)
            verdict = Verdict.inconclusive(f"verification stopped: {exc}")
        except Exception as exc:  # fail closed: an error while judging is never a pass
            error = _describe(exc)
            verdict = Verdict.inconclusive(f"verification could not finish: {exc}")
    # Reasons quote what the system said (exceptions, URLs, output): no secret leaves in them.
    verdict = verdict.model_copy(update={"reason": redact(verdict.reason), "evidence": redact(verdict.evidence)})
    execution = _record(
        ledger, run_key, "verify", started, "ok" if error is None else "failed",
        verdict.model_dump(mode="json"), error=error,
        status=VERIFIED if execution.status not in (RESTORED, RESTORE_FAILED) else None,
        verdict=verdict.status, verdict_detail=verdict.model_dump(mode="json"),
    )
    journal = _journal(execution, ledger)
    ctx = PhaseContext(run_key, ledger, execution)
    try:
        ref = _model_ref(stage, ctx, model, version)
        if ref is not None or model is not None or _mlflow_configured():
            execution = _report(stage, ctx, verdict, ref, journal)
            journal = _journal(execution, ledger)
    except SpecError:
        raise
    except Exception as exc:  # the verdict could not be recorded: the gate would see nothing, so fail closed
        log.error("could not record the verdict of %s in MLflow: %s", run_key, exc)
        verdict = Verdict.inconclusive(redact(f"the verdict ({verdict.status}) could not be recorded in MLflow: {exc}"),
                                       metrics=verdict.metrics, evidence=verdict.evidence)
        execution = ledger.update(run_key, verdict=verdict.status, verdict_detail=verdict.model_dump(mode="json"))
        journal = _journal(execution, ledger)
    return PhaseResult("verify", run_key, "ok", verdict.model_dump(mode="json"), verdict=verdict, journal=journal)


def _mlflow_configured() -> bool:
    """Evidence runs are logged whenever a tracking server is configured, even with no model version."""
    return bool(os.environ.get("MLFLOW_TRACKING_URI"))


def _model_ref(stage: StageSpec, ctx: PhaseContext, model: str | None, version: str | None) -> Any:
    if model is None and version is None:
        return stage.model_ref(ctx)
    if not model or not version:
        raise SpecError("--model/--version", "give both the registered model name and its version (or @alias)")
    from mlchaos_steps.targets.mlflow import resolve_version

    return resolve_version(model, version, field="--version")


def _mark_pending(stage: StageSpec, ctx: PhaseContext, model: str | None, version: str | None) -> None:
    """Before anything breaks: the version the verdict goes onto says a run is in progress (the gate
    blocks), so a stale verdict of an earlier run can never stand for this one."""
    ref = _model_ref(stage, ctx, model, version)
    if ref is None:
        return
    from mlchaos_steps.gate.verdicts import mark_pending

    mark_pending(ref, stage.stage_id, ctx.run_key)
    ctx.save(verdict_target={"name": ref.name, "version": ref.version})


def _report(stage: StageSpec, ctx: PhaseContext, verdict: Verdict, ref: Any, journal: Path) -> Execution:
    """Log the evidence run and, when a model version is known, put the verdict tags on it; the evidence
    run is finished last, so a gate never sees a verdict whose run does not stand behind it."""
    from mlchaos_steps.gate.verdicts import finish_execution, log_execution, record_verdict

    assert ctx.execution is not None
    run_id = log_execution(stage.stage_id, stage.kind, ctx.execution.spec, verdict, ctx.run_key, journal, ref)
    ctx.save(mlflow_run_id=run_id)
    state: dict[str, Any] = {}
    if ref is not None:
        state["verdict_target"] = state["model_version"] = {"name": ref.name, "version": ref.version}
        ctx.save(**state)
        record_verdict(ref, stage.stage_id, verdict, run_id, ctx.run_key)
    finish_execution(run_id, verdict)
    return ctx.ledger.update(ctx.run_key, state=state)


def restore_run(run_key: str, *, ledger: Ledger | None = None, wait_s: float | None = None) -> dict[str, Any]:
    """Undo everything the run broke, from the ledger alone. Idempotent; ignores the kill switch.
    ``wait_s``: how long to wait for the run key when another process is working on it."""
    ledger = ledger or default_ledger()
    with run_key_lock(run_key, wait_s):
        return _restore(run_key, ledger)


def _restore(run_key: str, ledger: Ledger) -> dict[str, Any]:
    execution = ledger.get(run_key)
    if execution is None:
        return {"restored": 0, "note": f"nothing recorded under run key {run_key!r}"}
    cls = stage_class(execution.kind)
    started = time.time()
    done, errors = [], []
    try:
        target_ids = cls.model_validate(execution.spec).target_ids()
    except Exception:  # a spec written by an older version: lock nothing rather than fail to restore
        target_ids = []
    with target_locks(target_ids):
        # Read what is pending only now, under the locks: never undo from a stale record.
        execution = ledger.get(run_key) or execution
        ctx = PhaseContext(run_key, ledger, execution)
        pending = [a for a in ledger.actions(run_key) if a.state in (PLANNED, APPLIED, UNDO_FAILED)]
        for action in reversed(pending):
            try:
                result = cls.restore_action(action, ctx)
            except Exception as exc:
                ledger.mark_action(action, UNDO_FAILED, error=str(exc))
                errors.append(f"{action.kind} {action.target}: {exc}")
                log.error("restore of %s %s failed: %s", action.kind, action.target, exc)
            else:
                ledger.mark_action(action, UNDONE)
                done.append({"action": action.kind, "target": action.target, **result})
        checks: dict[str, Any] = {}
        if not errors and done:
            try:
                checks = cls.after_restore(ctx)
            except Exception as exc:
                errors.append(f"after restore: {exc}")
    output = {"restored": len(done), "actions": done, "errors": errors, **({"checks": checks} if checks else {})}
    if errors:
        execution = _record(ledger, run_key, "restore", started, "failed", output, error="; ".join(errors),
                            status=RESTORE_FAILED)
        _record_restore(execution, restored=False)
        _journal(execution, ledger)
        raise RestoreError(
            f"restore of run {run_key!r} is incomplete: {'; '.join(errors)}. Nothing was deleted; "
            f"fix the cause and run `mlchaos restore --run-key {run_key}` again"
        )
    ledger.release_leases(run_key)
    execution = _record(ledger, run_key, "restore", started, "ok", output, status=RESTORED)
    _record_restore(execution, restored=True)
    journal = _journal(execution, ledger)
    if execution.state.get("mlflow_run_id"):
        try:
            from mlchaos_steps.gate.verdicts import upload_journal

            upload_journal(execution.state["mlflow_run_id"], journal)
        except Exception as exc:  # the evidence run keeps the journal as of verify
            log.warning("could not upload the final journal of %s: %s", run_key, exc)
    return output


def _record_restore(execution: Execution, restored: bool) -> None:
    """Tell the version whether this run restored cleanly: a verdict counts for the gate only then."""
    target = execution.state.get("verdict_target")
    if not target:
        return
    try:
        from mlchaos_steps.gate.verdicts import record_restore
        from mlchaos_steps.targets.mlflow import ModelRef

        record_restore(ModelRef(target["name"], str(target["version"])), execution.stage_id, execution.run_key,
                       restored, execution.verdict)
    except Exception as exc:  # the tag stays `pending`: the gate blocks, which is the safe side
        log.warning("could not record the restore of %s on %s: %s", execution.run_key, target, exc)


def open_runs(*, older_than_s: float = 3600.0, ledger: Ledger | None = None) -> list[dict[str, Any]]:
    """Every run not yet restored, with its age and whether ``restore --orphaned`` would take it.

    A run is orphaned when the process working on it died, or when no process owns it and it has not
    moved for ``older_than_s`` (a pipeline that stopped between phases).
    """
    ledger = ledger or default_ledger()
    now = time.time()
    here = socket.gethostname()
    found = []
    for execution in ledger.open_executions():
        idle_s = now - execution.updated_at
        entry: dict[str, Any] = {"run_key": execution.run_key, "stage": execution.stage_id,
                                 "status": execution.status, "age_s": round(now - execution.created_at, 1),
                                 "idle_s": round(idle_s, 1)}
        if execution.owner_pid and execution.owner_host in (None, here):
            alive = owner_alive(execution.owner_pid, execution.owner_started)
            entry["orphaned"] = not alive
            entry["why"] = (f"owned by live process {execution.owner_pid}" if alive
                            else f"its process {execution.owner_pid} died")
        else:
            entry["orphaned"] = idle_s >= older_than_s
            owner = f"owned on {execution.owner_host}" if execution.owner_pid else "between pipeline phases"
            entry["why"] = (f"{owner}, idle for {idle_s:.0f}s" if entry["orphaned"] else
                            f"{owner}, idle for {idle_s:.0f}s: restored once idle for --older-than "
                            f"{older_than_s:g}s (or `mlchaos restore --run-key {execution.run_key}`)")
        found.append(entry)
    return found


def restore_orphaned(*, older_than_s: float = 3600.0, ledger: Ledger | None = None) -> list[dict[str, Any]]:
    """Restore every run an earlier crash left unrestored (see :func:`open_runs`); returns what was done."""
    ledger = ledger or default_ledger()
    results = []
    for entry in open_runs(older_than_s=older_than_s, ledger=ledger):
        if not entry["orphaned"]:
            continue
        try:
            results.append({"run_key": entry["run_key"], **restore_run(entry["run_key"], ledger=ledger)})
        except MlchaosError as exc:
            results.append({"run_key": entry["run_key"], "error": str(exc)})
    return results


def run_stage(
    stage: StageSpec, run_key: str | None = None, *, dry_run: bool = False, ledger: Ledger | None = None,
    model: str | None = None, version: str | None = None,
) -> StageOutcome:
    """Run snapshot, inject and verify, then always restore. A finished run key returns its recorded verdict;
    a run key in progress in another process is waited for (``MLCHAOS_RUN_KEY_WAIT_S``), then the same."""
    ledger = ledger or default_ledger()
    run_key = run_key or new_run_key()
    if dry_run:
        plan = run_phase(stage, "snapshot", run_key, dry_run=True, ledger=ledger)
        verdict = Verdict.inconclusive("dry run: targets resolved, nothing was broken", evidence=plan.output)
        return StageOutcome(run_key, stage.stage_id, verdict, restored=True, phases=[plan])
    with run_key_lock(run_key):
        existing = ledger.get(run_key)
        if existing and existing.status == RESTORED and existing.verdict_detail:
            _same_spec(existing, stage)
            return StageOutcome(run_key, stage.stage_id, Verdict.model_validate(existing.verdict_detail), True,
                                journal=_journal(existing, ledger))
        return _run_all(stage, run_key, ledger, model, version)


def _run_all(stage: StageSpec, run_key: str, ledger: Ledger, model: str | None, version: str | None
             ) -> StageOutcome:
    results: list[PhaseResult] = []
    verdict: Verdict | None = None
    restore_error = None
    interrupted: BaseException | None = None
    try:
        if model or version:  # resolve an @alias once, before anything breaks
            from mlchaos_steps.targets.mlflow import resolve_version

            if not model or not version:
                raise SpecError("--model/--version", "give both the registered model name and its version")
            version = resolve_version(model, version, field="--version").version
        for phase in ("snapshot", "inject", "verify"):
            results.append(run_phase(stage, phase, run_key, ledger=ledger, model=model, version=version,
                                     _hold_owner=True))
        verdict = results[-1].verdict
    except KillSwitchEngaged as exc:
        verdict = Verdict.inconclusive(redact(f"stopped: {exc}"))
    except SpecError:
        raise
    except Exception as exc:  # fail closed: anything unexpected is an infrastructure error, never a pass
        log.error("stage %s run %s: %s", stage.stage_id, run_key, _describe(exc))
        verdict = Verdict.inconclusive(redact(f"infrastructure error: {_describe(exc)}"))
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM turned into an exit: restore still runs
        interrupted = exc
        verdict = Verdict.inconclusive(f"interrupted ({type(exc).__name__}): the stage did not finish")
    finally:
        # The final verdict reaches the ledger before restore, which tells the model version about it.
        current = ledger.get(run_key)
        if verdict is not None and current and current.verdict != verdict.status:
            ledger.update(run_key, verdict=verdict.status, verdict_detail=verdict.model_dump(mode="json"))
        try:
            results.append(PhaseResult("restore", run_key, "ok", restore_run(run_key, ledger=ledger)))
        except MlchaosError as exc:
            restore_error = str(exc)
        if ledger.get(run_key):
            ledger.release_owner(run_key)
    assert verdict is not None
    execution = ledger.get(run_key)
    journal = _journal(execution, ledger) if execution else None
    if interrupted is not None:
        raise interrupted
    return StageOutcome(run_key, stage.stage_id, verdict, restore_error is None, restore_error, journal, results)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, MlchaosError):
        return str(exc)
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()
