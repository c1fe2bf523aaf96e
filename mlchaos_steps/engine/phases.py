"""The four phases: snapshot, inject, verify, restore. Each runs alone in a fresh process.

Phases share state only through the ledger, keyed by the run key. ``run_stage`` runs all four in one
process with restore in a ``finally``. The engine tells an observer about the lifecycle and knows
nothing of who listens (:mod:`mlchaos_steps.api` hands it the MLflow reporter).

Example::

    from mlchaos_steps.api import run_stage
    from mlchaos_steps.stages import load_stages

    outcome = run_stage(load_stages("dags/stages/checkpoint_wipe.yaml")[0], run_key="nightly-2026-11-27")
    print(outcome.verdict.status, outcome.verdict.reason)
"""

from __future__ import annotations

import logging
import socket
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlchaos_steps import config
from mlchaos_steps.core import tracecontext
from mlchaos_steps.core.context import PhaseContext, check_kill_switch
from mlchaos_steps.core.promql import PromQLError
from mlchaos_steps.core.records import (
    SNAPSHOT_ACTIONS,
    TRACE,
    ActionState,
    Execution,
    ExecutionStatus,
    Ledger,
    ModelRef,
    owner_alive,
)
from mlchaos_steps.core.spec import StageSpec
from mlchaos_steps.core.verdict import Verdict
from mlchaos_steps.engine import removals
from mlchaos_steps.engine.journal import write_journal
from mlchaos_steps.engine.locks import run_key_lock, target_locks
from mlchaos_steps.engine.observers import Observer, SilentObserver
from mlchaos_steps.errors import InfrastructureError, KillSwitchEngaged, MlchaosError, RestoreError, SpecError
from mlchaos_steps.ledgers import default_ledger
from mlchaos_steps.redaction import redact
from mlchaos_steps.stages import stage_class

log = logging.getLogger("mlchaos")

Phase = Literal["snapshot", "inject", "verify", "restore"]
PHASES: tuple[Phase, ...] = ("snapshot", "inject", "verify", "restore")
FINISHED = (ExecutionStatus.RESTORED, ExecutionStatus.RESTORE_FAILED)
PENDING_ACTIONS = (ActionState.PLANNED, ActionState.APPLIED, ActionState.UNDO_FAILED)
SILENT = SilentObserver()


@dataclass
class PhaseResult:
    """What one phase did. ``status`` is ``ok``, ``skipped`` (already done under this run key) or ``dry-run``."""

    phase: str
    run_key: str
    status: str
    output: dict[str, Any] = field(default_factory=dict)
    verdict: Verdict | None = None
    journal: Path | None = None
    trace_id: str | None = None  # the execution's correlation id (core.tracecontext)


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
    trace_id: str | None = None

    @property
    def exit_code(self) -> int:
        return 3 if not self.restored else self.verdict.exit_code


def new_run_key() -> str:
    return f"adhoc-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


def _journal(execution: Execution, ledger: Ledger) -> Path:
    ctx = PhaseContext(execution.run_key, ledger, execution)
    return write_journal(execution, stage_class(execution.kind).title, ctx.run_dir / "journal.json")


class _PhaseRecord:
    """What every phase does around its own work, written once: timing, the phase's span of the
    execution's trace (its ``traceparent`` current while the phase runs), the phase's entry in the ledger
    (output redacted, error described), the journal, and the observer told."""

    def __init__(self, ledger: Ledger, run_key: str, phase: str,
                 status_on_error: ExecutionStatus | None = None, observer: Observer | None = None) -> None:
        self.ledger, self.run_key, self.phase = ledger, run_key, phase
        self.started = time.time()
        self.status_on_error = status_on_error
        self.observer = observer or SILENT
        execution = ledger.get(run_key)
        self.trace = dict((execution.state.get(TRACE) if execution else None) or {})
        self.span_id = tracecontext.new_span_id()
        self._active = ExitStack()
        if self.trace:
            self._active.enter_context(tracecontext.active(self.trace["trace_id"], self.span_id))

    def write(self, phase_status: str, output: dict[str, Any] | None = None, error: str | None = None,
              **update: Any) -> tuple[Execution, Path]:
        self._active.close()
        record = {"start": self.started, "end": time.time(), "status": phase_status,
                  "output": redact(output or {}), "span_id": self.span_id}
        if error:
            record["error"] = error
        execution = self.ledger.update(self.run_key, phase=(self.phase, record), **update)
        try:  # telemetry never changes a verdict nor stops a phase
            self.observer.phase_ended(execution, self.phase, record)
        except Exception as exc:
            log.warning("could not report phase %s of %s: %s", self.phase, self.run_key, exc)
        return execution, _journal(execution, self.ledger)

    def close(self) -> None:
        self._active.close()


@contextmanager
def _recording(ledger: Ledger, run_key: str, phase: str, *, status_on_error: ExecutionStatus | None = None,
               observer: Observer | None = None) -> Iterator[_PhaseRecord]:
    """Time a phase; when its work raises, record the failure (and ``status_on_error``) and re-raise."""
    record = _PhaseRecord(ledger, run_key, phase, status_on_error, observer)
    try:
        yield record
    except BaseException as exc:
        if ledger.get(run_key) is not None:  # bad input in snapshot leaves no trace to record onto
            record.write("failed", error=_describe(exc), status=record.status_on_error)
        raise
    finally:
        record.close()


def _phase_ok(execution: Execution, phase: str) -> bool:
    return bool(execution.phases.get(phase, {}).get("status") == "ok")


def _ledger_spec(stage: StageSpec) -> dict[str, Any]:
    """The spec as the ledger keeps it: secret-looking values redacted."""
    return redact(stage.document()["spec"])  # type: ignore[no-any-return]


def _same_spec(execution: Execution, stage: StageSpec) -> None:
    if execution.kind != stage.kind or execution.spec != _ledger_spec(stage):
        raise SpecError(
            "--run-key",
            f"run key {execution.run_key!r} was used for a different stage spec: give each stage its own run key",
        )


def _resolve(model: str | None, version: str | None) -> ModelRef | None:
    """``--model``/``--version`` as an exact version (an @alias resolved now), or None when not given."""
    if model is None and version is None:
        return None
    if not model or not version:
        raise SpecError("--model/--version", "give both the registered model name and its version (or @alias)")
    from mlchaos_steps.targets.mlflow import resolve_version

    return resolve_version(model, version, field="--version")


def _verdict_target(stage: StageSpec, ctx: PhaseContext, model: str | None, version: str | None
                    ) -> ModelRef | None:
    """The one place the version a verdict goes onto is decided: the one recorded at snapshot, else
    ``--model/--version``, else the version the stage itself works on (registry, canary)."""
    recorded = ctx.execution.verdict_target if ctx.execution else None
    return recorded or _resolve(model, version) or stage.model_ref(ctx)


def run_phase(
    stage: StageSpec, phase: Phase, run_key: str, *, dry_run: bool = False, ledger: Ledger | None = None,
    model: str | None = None, version: str | None = None, observer: Observer = SILENT,
    _hold_owner: bool = False,
) -> PhaseResult:
    """Run one phase of a stage under a run key. Safe to retry: a done phase is not done twice.

    ``model`` and ``version`` (a number or ``@alias``) name the MLflow model version the verdict is
    written onto after ``verify``; stages about a model version (registry, canary) default to theirs.
    ``observer`` is told about the lifecycle (see :mod:`mlchaos_steps.engine.observers`).
    """
    ledger = ledger or default_ledger()
    result = _run_phase(stage, phase, run_key, dry_run, ledger, model, version, observer, _hold_owner)
    if result.status != "dry-run":
        result.trace_id = trace_id_of(ledger.get(run_key))
    return result


def trace_id_of(execution: Execution | None) -> str | None:
    """The execution's correlation id: the trace id its phases' spans and commands carry."""
    return (execution.state.get(TRACE) or {}).get("trace_id") if execution else None


def _run_phase(stage: StageSpec, phase: Phase, run_key: str, dry_run: bool, ledger: Ledger, model: str | None,
               version: str | None, observer: Observer, _hold_owner: bool) -> PhaseResult:
    if phase not in PHASES:
        raise SpecError("--phase", f"unknown phase {phase!r}: use one of {', '.join(PHASES)} or all")
    if not run_key:
        raise SpecError("--run-key", "is required to run a single phase: phases share state through it")
    if phase == "restore":
        output = restore_run(run_key, ledger=ledger, observer=observer)
        removals.wait()  # a phase in a process of its own: done only when its damaged copies are gone
        return PhaseResult("restore", run_key, "ok", output)
    if dry_run:
        if phase != "snapshot":
            return PhaseResult(phase, run_key, "dry-run", {"note": "dry run: nothing to do after snapshot"})
        return PhaseResult("snapshot", run_key, "dry-run", redact(stage.plan(PhaseContext(run_key, ledger))))
    # "Already done?" is decided under the run key's lock, by whoever holds it: one run key, one execution.
    with run_key_lock(run_key):
        try:
            if phase == "snapshot":
                return _snapshot(stage, run_key, ledger, _resolve(model, version), observer)
            if phase == "inject":
                return _inject(stage, run_key, ledger, observer)
            return _verify(stage, run_key, ledger, model, version, observer)
        finally:
            # Between phases nobody owns the run; `restore --orphaned` tells a crash by a dead owner.
            if not _hold_owner and ledger.get(run_key):
                ledger.release_owner(run_key)


def _snapshot(stage: StageSpec, run_key: str, ledger: Ledger, target: ModelRef | None, observer: Observer
              ) -> PhaseResult:
    existing = ledger.get(run_key)
    if existing:
        _same_spec(existing, stage)
        if _phase_ok(existing, "snapshot"):
            return PhaseResult("snapshot", run_key, "skipped", {"note": "snapshot already taken under this run key"})
        if existing.status == ExecutionStatus.RESTORED:
            return PhaseResult("snapshot", run_key, "skipped", {"note": "this run key already finished"})
    check_kill_switch()
    ledger.create(run_key, stage.kind, stage.stage_id, _ledger_spec(stage))
    ledger.claim(run_key)
    if existing is None or not existing.state.get(TRACE):  # the correlation id and origin, for every phase
        ledger.update(run_key, state={TRACE: tracecontext.new_trace(), "pipeline": config.pipeline_name()})
    # A failed snapshot broke nothing: the execution is closed (restored) at once, once what it took
    # (backups of stores the system writes into) is put back.
    with _recording(ledger, run_key, "snapshot", status_on_error=ExecutionStatus.RESTORED,
                    observer=observer) as record:
        try:
            output = _take_snapshot(stage, PhaseContext(run_key, ledger, ledger.get(run_key)), target, observer)
        except BaseException as exc:
            ledger.release_leases(run_key)  # the target is free again
            _release_targets(type(stage), PhaseContext(run_key, ledger, ledger.get(run_key)))
            if isinstance(exc, SpecError) and existing is None and not ledger.actions(run_key):
                ledger.discard(run_key)  # bad input is refused without a trace in the ledger
            elif ledger.actions(run_key):
                record.status_on_error = _undo_snapshot(type(stage), run_key, ledger)
            raise
        ledger.update(run_key, state={SNAPSHOT_ACTIONS: [a.id for a in ledger.actions(run_key)]})
        _, journal = record.write("ok", output, status=ExecutionStatus.SNAPSHOTTED)
    return PhaseResult("snapshot", run_key, "ok", output, journal=journal)


def _undo_snapshot(cls: type[StageSpec], run_key: str, ledger: Ledger) -> ExecutionStatus:
    """Undo the actions a failed snapshot took; RESTORE_FAILED (restore retries them) if one fails."""
    done, errors = _undo_actions(cls, PhaseContext(run_key, ledger, ledger.get(run_key)))
    removals.remove_now(removals.collect(done))
    return ExecutionStatus.RESTORE_FAILED if errors else ExecutionStatus.RESTORED


def _injected(execution: Execution, ledger: Ledger) -> bool:
    """Did inject start: a phase record, or a ledger action beyond those snapshot took."""
    taken = set(execution.state.get(SNAPSHOT_ACTIONS) or [])
    return _phase_ok(execution, "inject") or any(a.id not in taken for a in ledger.actions(execution.run_key))


def _release_targets(cls: type[StageSpec], ctx: PhaseContext) -> None:
    """After a failed snapshot: give back what it took; a failure here is logged (the lease expires)."""
    try:
        cls.release_targets(ctx)
    except Exception as exc:
        log.warning("could not release the targets of %s: %s", ctx.run_key, exc)


def _take_snapshot(stage: StageSpec, ctx: PhaseContext, target: ModelRef | None, observer: Observer
                   ) -> dict[str, Any]:
    with target_locks(stage.target_ids()):
        for target_id in stage.target_ids():
            ctx.ledger.acquire_lease(target_id, ctx.run_key)
        stage.hold_targets(ctx)
        output = stage.snapshot(ctx)
        output.update(_promql_steady_state(stage))
        # Before anything breaks, the version the verdict goes onto learns that a run is in progress
        # (the gate blocks), so a stale verdict of an earlier run can never stand for this one.
        target = target or stage.model_ref(ctx)
        if target is not None:
            observer.started(stage, ctx, target)
            ctx.set_verdict_target(target)
    return output


def _inject(stage: StageSpec, run_key: str, ledger: Ledger, observer: Observer) -> PhaseResult:
    execution = ledger.get(run_key)
    if execution is None or not _phase_ok(execution, "snapshot"):
        raise SpecError("--phase inject", f"no snapshot for run key {run_key!r}: run `--phase snapshot` first")
    _same_spec(execution, stage)
    if execution.status in FINISHED:
        raise SpecError("--run-key", f"run key {run_key!r} was already restored: use a new run key")
    if _injected(execution, ledger):
        return PhaseResult("inject", run_key, "skipped",
                           {"note": "already injected under this run key: retries never inject twice"})
    check_kill_switch()
    ledger.claim(run_key)
    with _recording(ledger, run_key, "inject", observer=observer) as record:
        with target_locks(stage.target_ids()):
            output = stage.inject(PhaseContext(run_key, ledger, execution))
        _, journal = record.write("ok", output, status=ExecutionStatus.INJECTED)
    return PhaseResult("inject", run_key, "ok", output, journal=journal)


def _verify(stage: StageSpec, run_key: str, ledger: Ledger, model: str | None, version: str | None,
            observer: Observer) -> PhaseResult:
    execution = ledger.get(run_key)
    if execution is None:
        raise SpecError("--phase verify", f"no execution for run key {run_key!r}: run snapshot and inject first")
    _same_spec(execution, stage)
    if execution.phases.get("verify", {}).get("status") and execution.verdict_detail:
        recorded = Verdict.model_validate(execution.verdict_detail)
        return PhaseResult("verify", run_key, "skipped", recorded.model_dump(mode="json"), verdict=recorded,
                           journal=_journal(execution, ledger))
    ledger.claim(run_key)
    record = _PhaseRecord(ledger, run_key, "verify", observer=observer)
    try:
        verdict, error = _judge(stage, PhaseContext(run_key, ledger, execution))
        verdict = _promql_hypothesis(stage, execution, verdict)
    finally:
        record.close()
    # Reasons quote what the system said (exceptions, URLs, output): no secret leaves in them.
    verdict = verdict.model_copy(update={"reason": redact(verdict.reason), "evidence": redact(verdict.evidence)})
    execution, journal = record.write(
        "ok" if error is None else "failed", verdict.model_dump(mode="json"), error=error,
        status=ExecutionStatus.VERIFIED if execution.status not in FINISHED else None,
        verdict=verdict.status, verdict_detail=verdict.model_dump(mode="json"),
    )
    verdict = _tell_verdict(stage, PhaseContext(run_key, ledger, execution), verdict, journal, model, version,
                            observer)
    return PhaseResult("verify", run_key, "ok", verdict.model_dump(mode="json"), verdict=verdict,
                       journal=_journal(ledger.get(run_key) or execution, ledger))


def _judge(stage: StageSpec, ctx: PhaseContext) -> tuple[Verdict, str | None]:
    """The stage's verdict, and the error that made it inconclusive (fail closed: an error is never a pass)."""
    assert ctx.execution is not None
    if not _phase_ok(ctx.execution, "inject"):
        return Verdict.inconclusive("the fault was not injected (inject did not complete), so nothing was tested"), None
    try:
        return stage.verify(ctx), None
    except KillSwitchEngaged as exc:
        return Verdict.inconclusive(f"verification stopped: {exc}"), str(exc)
    except Exception as exc:
        return Verdict.inconclusive(f"verification could not finish: {exc}"), _describe(exc)


def _promql_steady_state(stage: StageSpec) -> dict[str, Any]:
    """Before anything breaks: the stage's PromQL condition held over its last ``for_s``, or the run stops."""
    probe = stage.probe.prometheus if stage.probe else None
    if probe is None:
        return {}
    end = time.time()
    try:
        outcome = probe.evaluate(end - max(probe.for_s, 3 * probe.step_s), end)
    except PromQLError as exc:
        raise InfrastructureError(f"steady state unknown: {exc}") from exc
    if outcome.breach is not None:
        raise InfrastructureError(f"steady state does not hold before the fault: {outcome.describe_breach()}")
    return {"prometheus_steady_state": outcome.evidence()}


def _promql_hypothesis(stage: StageSpec, execution: Execution, verdict: Verdict) -> Verdict:
    """The stage's PromQL condition from inject's start until now: a breach fails a passed verdict; no
    answer, or no samples, make it inconclusive. Prometheus' samples join the evidence either way."""
    probe = stage.probe.prometheus if stage.probe else None
    started = execution.phases.get("inject", {}).get("start")
    if probe is None or started is None or verdict.status == "inconclusive":
        return verdict
    try:
        outcome = probe.evaluate(started, time.time(), wait_for_end=True)
    except PromQLError as exc:
        if verdict.status == "failed":
            return verdict
        return Verdict.inconclusive(f"the PromQL probe could not judge: {exc}", metrics=verdict.metrics,
                                    evidence=verdict.evidence)
    evidence = {**verdict.evidence, "prometheus": outcome.evidence()}
    update: dict[str, Any] = {"evidence": evidence}
    if outcome.breach is not None and verdict.status == "passed":
        update.update(status="failed", reason=f"PromQL probe: {outcome.describe_breach()}")
    return verdict.model_copy(update=update)


def _tell_verdict(stage: StageSpec, ctx: PhaseContext, verdict: Verdict, journal: Path, model: str | None,
                  version: str | None, observer: Observer) -> Verdict:
    """Hand the verdict to the observer; if it cannot take it (MLflow down), the gate would see nothing,
    so the verdict turns inconclusive."""
    try:
        target = _verdict_target(stage, ctx, model, version)
        if target is not None:
            ctx.set_verdict_target(target)
        observer.judged(stage, ctx, verdict, target, journal)
        return verdict
    except SpecError:
        raise
    except Exception as exc:
        log.error("could not record the verdict of %s: %s", ctx.run_key, exc)
        verdict = Verdict.inconclusive(redact(f"the verdict ({verdict.status}) could not be recorded in MLflow: {exc}"),
                                       metrics=verdict.metrics, evidence=verdict.evidence)
        ctx.ledger.update(ctx.run_key, verdict=verdict.status, verdict_detail=verdict.model_dump(mode="json"))
        return verdict


def restore_run(run_key: str, *, ledger: Ledger | None = None, wait_s: float | None = None,
                observer: Observer = SILENT) -> dict[str, Any]:
    """Undo everything the run broke, from the ledger alone. Idempotent; ignores the kill switch.
    ``wait_s``: how long to wait for the run key when another process is working on it."""
    ledger = ledger or default_ledger()
    with run_key_lock(run_key, wait_s):
        return _restore(run_key, ledger, observer)


def _restore(run_key: str, ledger: Ledger, observer: Observer) -> dict[str, Any]:
    execution = ledger.get(run_key)
    if execution is None:
        return {"restored": 0, "note": f"nothing recorded under run key {run_key!r}"}
    cls = stage_class(execution.kind)
    record = _PhaseRecord(ledger, run_key, "restore", observer=observer)
    with ExitStack() as stack, target_locks(_target_ids(cls, execution)):
        stack.callback(record.close)
        # Read what is pending only now, under the locks: never undo from a stale record.
        ctx = PhaseContext(run_key, ledger, ledger.get(run_key) or execution)
        done, errors = _undo_actions(cls, ctx)
        set_aside = removals.collect(done)
        checks: dict[str, Any] = {}
        if not errors and done:
            try:
                checks = cls.after_restore(ctx)
            except Exception as exc:
                errors.append(f"after restore: {exc}")
        if not errors:
            try:
                checks.update(cls.release_targets(ctx))
            except Exception as exc:
                errors.append(f"releasing the targets: {exc}")
    output = {"restored": len(done), "actions": done, "errors": errors, **({"checks": checks} if checks else {}),
              "trace_id": trace_id_of(execution)}
    if not errors:
        ledger.release_leases(run_key)
    state = removals.record(set_aside) if set_aside else {}
    if errors:  # counted: a restore that failed before it succeeded still happened
        state["restore_failures"] = int(execution.state.get("restore_failures") or 0) + 1
    execution, journal = record.write(
        "failed" if errors else "ok", output, error="; ".join(errors) or None,
        status=ExecutionStatus.RESTORE_FAILED if errors else ExecutionStatus.RESTORED, state=state or None)
    removals.start(run_key, ledger, set_aside)
    try:  # the version's restore tag stays `pending` if this fails: the gate blocks, the safe side
        observer.restored(execution, not errors, journal)
    except Exception as exc:
        log.warning("could not report the restore of %s: %s", run_key, exc)
    if errors:
        raise RestoreError(
            f"restore of run {run_key!r} is incomplete: {'; '.join(errors)}. Nothing was deleted; "
            f"fix the cause and run `mlchaos restore --run-key {run_key}` again"
        )
    return output


def _target_ids(cls: type[StageSpec], execution: Execution) -> list[str]:
    try:
        return cls.model_validate(execution.spec).target_ids()
    except Exception:  # a spec written by an older version: lock nothing rather than fail to restore
        return []


def _undo_actions(cls: type[StageSpec], ctx: PhaseContext) -> tuple[list[dict[str, Any]], list[str]]:
    """Undo every pending action, newest first; an action that fails stays pending for the next restore."""
    done, errors = [], []
    pending = [a for a in ctx.ledger.actions(ctx.run_key) if a.state in PENDING_ACTIONS]
    for action in reversed(pending):
        try:
            result = cls.restore_action(action, ctx)
        except Exception as exc:
            ctx.ledger.mark_action(action, ActionState.UNDO_FAILED, error=str(exc))
            errors.append(f"{action.kind} {action.target}: {exc}")
            log.error("restore of %s %s failed: %s", action.kind, action.target, exc)
        else:
            ctx.ledger.mark_action(action, ActionState.UNDONE)
            done.append({"action": action.kind, "target": action.target, **result})
    return done, errors


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


def restore_orphaned(*, older_than_s: float = 3600.0, ledger: Ledger | None = None,
                     observer: Observer = SILENT) -> list[dict[str, Any]]:
    """Restore every run an earlier crash left unrestored (see :func:`open_runs`), and finish the removals
    of damaged copies a dead process left (see :mod:`.removals`); returns what was done."""
    ledger = ledger or default_ledger()
    results: list[dict[str, Any]] = removals.finish_orphaned(ledger)
    for entry in open_runs(older_than_s=older_than_s, ledger=ledger):
        if not entry["orphaned"]:
            continue
        try:
            results.append({"run_key": entry["run_key"],
                            **restore_run(entry["run_key"], ledger=ledger, observer=observer)})
        except MlchaosError as exc:
            results.append({"run_key": entry["run_key"], "error": str(exc)})
    return results


def run_stage(
    stage: StageSpec, run_key: str | None = None, *, dry_run: bool = False, ledger: Ledger | None = None,
    model: str | None = None, version: str | None = None, observer: Observer = SILENT,
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
        if existing and existing.status == ExecutionStatus.RESTORED and existing.verdict_detail:
            _same_spec(existing, stage)
            return StageOutcome(run_key, stage.stage_id, Verdict.model_validate(existing.verdict_detail), True,
                                journal=_journal(existing, ledger), trace_id=trace_id_of(existing))
        return _run_all(stage, run_key, ledger, model, version, observer)


def _run_all(stage: StageSpec, run_key: str, ledger: Ledger, model: str | None, version: str | None,
             observer: Observer) -> StageOutcome:
    results: list[PhaseResult] = []
    verdict: Verdict | None = None
    interrupted: BaseException | None = None
    try:
        verdict = _first_three(stage, run_key, ledger, _resolve(model, version), observer, results)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM turned into an exit: restore still runs
        interrupted = exc
        verdict = Verdict.inconclusive(f"interrupted ({type(exc).__name__}): the stage did not finish")
    finally:  # bad input (SpecError) propagates, after restore
        restore_error = _final_restore(run_key, ledger, verdict, observer, results)
        removals.wait()
    execution = ledger.get(run_key)
    journal = _journal(execution, ledger) if execution else None
    if interrupted is not None:
        raise interrupted
    assert verdict is not None
    return StageOutcome(run_key, stage.stage_id, verdict, restore_error is None, restore_error, journal, results,
                        trace_id_of(execution))


def _first_three(stage: StageSpec, run_key: str, ledger: Ledger, target: ModelRef | None, observer: Observer,
                 results: list[PhaseResult]) -> Verdict:
    """Snapshot, inject, verify. Anything unexpected is an infrastructure error, never a pass (fail closed);
    bad input is raised. ``target`` was resolved once, before anything breaks."""
    model, version = (target.name, target.version) if target else (None, None)
    try:
        for phase in ("snapshot", "inject", "verify"):
            results.append(run_phase(stage, phase, run_key, ledger=ledger, model=model, version=version,
                                     observer=observer, _hold_owner=True))
    except KillSwitchEngaged as exc:
        return Verdict.inconclusive(redact(f"stopped: {exc}"))
    except SpecError:
        raise
    except Exception as exc:
        log.error("stage %s run %s: %s", stage.stage_id, run_key, _describe(exc))
        return Verdict.inconclusive(redact(f"infrastructure error: {_describe(exc)}"))
    assert results[-1].verdict is not None
    return results[-1].verdict


def _final_restore(run_key: str, ledger: Ledger, verdict: Verdict | None, observer: Observer,
                   results: list[PhaseResult]) -> str | None:
    """Restore, always; returns the restore error, if any. The final verdict reaches the ledger first, so
    restore tells the model version the verdict that stands."""
    current = ledger.get(run_key)
    if verdict is not None and current and current.verdict != verdict.status:
        ledger.update(run_key, verdict=verdict.status, verdict_detail=verdict.model_dump(mode="json"))
    try:
        results.append(PhaseResult("restore", run_key, "ok", restore_run(run_key, ledger=ledger, observer=observer)))
        return None
    except MlchaosError as exc:
        return str(exc)
    finally:
        if ledger.get(run_key):
            ledger.release_owner(run_key)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, MlchaosError):
        return str(exc)
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()
