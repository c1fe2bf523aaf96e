"""``checkpoint-wipe``: destroy the newest checkpoint(s), then check that training resumes well.

Resume contract: the resume command prints, on its standard output, one JSON line
``{"mlchaos_resumed_from_step": N}`` (``0`` or ``null`` when it started from scratch). The stage passes
only when training resumed from the newest intact checkpoint and the steps lost are within
``resume.max_lost_steps``. It fails when the command crashes, loads a wiped (corrupted) checkpoint,
or falls back further than that.

Example::

    kind: CheckpointWipe
    spec:
      store: file:///data/ckpts
      pattern: "step-(\\\\d+)"
      mode: delete-latest
      count: 1
      resume:
        command: [python, train.py, --resume]
        max_lost_steps: 200
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from mlchaos_steps.engine.context import KILL_SWITCH_POLL_S, PhaseContext, check_kill_switch, run_dir_name
from mlchaos_steps.engine.ledger import Action
from mlchaos_steps.engine.verdict import Verdict
from mlchaos_steps.errors import KillSwitchEngaged, RestoreError, SpecError
from mlchaos_steps.stages.base import StageSpec, StrictModel
from mlchaos_steps.targets.checkpoints import CheckpointStore, check_store_url

RESUME_KEY = "mlchaos_resumed_from_step"
OUTPUT_TAIL_CHARS = 2000


class ResumeSpec(StrictModel):
    """How to resume training, and how much lost work is acceptable."""

    command: list[str] = Field(min_length=1, description="argument list; never a shell string")
    max_lost_steps: int = Field(ge=0, description="steps of work the wipe may cost")
    timeout_s: float = Field(default=900, gt=0, description="the resume command is stopped after this")
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for the command")

    @field_validator("command", mode="before")
    @classmethod
    def _argument_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError(
                "must be an argument list such as [python, train.py, --resume], not a shell string: "
                "split it into its arguments"
            )
        return value


class CheckpointWipe(StageSpec):
    """Destroy the newest ``count`` checkpoints of a store (delete, truncate or corrupt them)."""

    kind: ClassVar[str] = "CheckpointWipe"
    stage_id: ClassVar[str] = "checkpoint-wipe"
    title: ClassVar[str] = "Checkpoint wipe"

    store: str = Field(description="fsspec URL of the folder whose direct children are checkpoints")
    pattern: str = Field(default=r"step-(\d+)", description="regex over a child's name; group 1 is its step")
    mode: Literal["delete-latest", "truncate-latest", "corrupt-latest"] = "delete-latest"
    count: int = Field(default=1, ge=1, le=100, description="how many of the newest checkpoints to wipe")
    resume: ResumeSpec

    @field_validator("store")
    @classmethod
    def _store_is_safe(cls, value: str) -> str:
        try:
            check_store_url(value, field="store")
        except SpecError as exc:
            raise ValueError(str(exc).split(": ", 1)[1]) from None
        return value

    @field_validator("pattern")
    @classmethod
    def _pattern_has_step(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"is not a valid regular expression ({exc}): e.g. 'step-(\\d+)'") from None
        if compiled.groups < 1:
            raise ValueError("needs one group that captures the step number, e.g. 'step-(\\d+)'")
        return value

    def target_ids(self) -> list[str]:
        return [f"checkpoint-store:{self.store.rstrip('/')}"]

    def describe(self) -> str:
        return f"{self.mode} x{self.count} in {self.store}"

    # -- phases -----------------------------------------------------------------------------------
    def _resolve(self) -> tuple[CheckpointStore, list[Any], list[Any]]:
        store = CheckpointStore(self.store)
        found = store.checkpoints(self.pattern)
        if not found:
            raise SpecError("spec.pattern", f"no child of {self.store} matches {self.pattern!r}: "
                                            "check the pattern (it must match whole names)")
        if self.count > len(found):
            raise SpecError("spec.count", f"{self.count} is more than the {len(found)} checkpoint(s) in "
                                          f"{self.store}: lower it")
        return store, found, found[-self.count:]

    def plan(self, ctx: PhaseContext) -> dict[str, Any]:
        _, found, victims = self._resolve()
        return {
            "would_wipe": [v.name for v in victims], "mode": self.mode,
            "checkpoints": [c.name for c in found], "resume_command": self.resume.command,
        }

    def snapshot(self, ctx: PhaseContext) -> dict[str, Any]:
        store, found, victims = self._resolve()
        backups = []
        for victim in victims:
            backups.append({
                "name": victim.name, "step": victim.step, "path": victim.path, "is_dir": victim.is_dir,
                "digest": store.digest(victim.path), "size_bytes": store.size_bytes(victim.path),
            })
        state = {
            "checkpoints": [{"name": c.name, "step": c.step} for c in found],
            "victims": backups,
            "newest_step": found[-1].step,
            "newest_intact_step": max((c.step for c in found[: len(found) - len(victims)]), default=0),
        }
        ctx.save(**state)
        return {"victims": [b["name"] for b in backups], "newest_step": state["newest_step"],
                "newest_intact_step": state["newest_intact_step"]}

    def inject(self, ctx: PhaseContext) -> dict[str, Any]:
        store = CheckpointStore(self.store)
        damage = self.mode.removesuffix("-latest")
        wiped = []
        started = time.perf_counter()
        for victim in ctx.state["victims"]:
            quarantine = store.quarantine_path(run_dir_name(ctx.run_key), victim["name"])
            undo = {"store": self.store, "original": victim["path"], "quarantine": quarantine,
                    "digest": victim["digest"], "mode": damage}
            with ctx.destructive("quarantine-checkpoint", victim["path"], undo) as action:
                if store.exists(quarantine):
                    raise RestoreError(f"{quarantine} already exists: restore run {ctx.run_key!r} first")
                store.move(victim["path"], quarantine, expected_digest=victim["digest"])
                if damage != "delete":
                    # Damage is written beside the quarantine, its digest recorded, then put in place,
                    # so restore can always tell our damaged copy from anything else.
                    staging = quarantine + ".damaged"
                    detail = store.write_damaged(quarantine, staging, damage)
                    action.undo = {**undo, **detail, "damaged_digest": store.digest(staging)}
                    ctx.ledger.mark_action(action, action.state, undo=action.undo)
                    store.move(staging, victim["path"])
            wiped.append(victim["name"])
        return {"wiped": wiped, "mode": self.mode, "inject_seconds": round(time.perf_counter() - started, 6)}

    def verify(self, ctx: PhaseContext) -> Verdict:
        state = ctx.state
        wiped_steps = {v["step"] for v in state["victims"]}
        expected = state["newest_intact_step"]
        env = {**os.environ, **self.resume.env, "MLCHAOS_RUN_KEY": ctx.run_key, "MLCHAOS_STORE": self.store}
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                self.resume.command, cwd=self.resume.cwd, env=env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, start_new_session=True,
            )
        except OSError as exc:
            return Verdict.failed(f"the resume command could not start: {exc}",
                                  evidence={"command": self.resume.command})
        stdout, stderr, timed_out = _wait(proc, self.resume.timeout_s)
        resume_seconds = round(time.monotonic() - started, 3)
        resumed = _resumed_step(stdout)
        evidence: dict[str, Any] = {
            "command": self.resume.command, "exit_code": proc.returncode, "resumed_from_step": resumed,
            "expected_step": expected, "wiped_steps": sorted(wiped_steps), "newest_step": state["newest_step"],
            "stdout_tail": stdout[-OUTPUT_TAIL_CHARS:], "stderr_tail": stderr[-OUTPUT_TAIL_CHARS:],
        }
        metrics: dict[str, float] = {"resume_seconds": resume_seconds}
        if resumed is not None:
            metrics["lost_steps"] = state["newest_step"] - resumed
        if timed_out:
            return Verdict.failed(f"training did not finish resuming within {self.resume.timeout_s:g}s",
                                  metrics=metrics, evidence=evidence)
        if resumed is not None and resumed in wiped_steps:
            return Verdict.failed(
                f"training resumed from step {resumed}, a checkpoint this stage wiped ({self.mode}): "
                "the damage went undetected", metrics=metrics, evidence=evidence)
        if proc.returncode != 0:
            return Verdict.failed(f"the resume command exited with code {proc.returncode}",
                                  metrics=metrics, evidence=evidence)
        if resumed is None:
            return Verdict.inconclusive(
                f"the resume command did not report where it resumed: print a JSON line "
                f'{{"{RESUME_KEY}": N}} on standard output', metrics=metrics, evidence=evidence)
        lost = metrics["lost_steps"]
        if resumed != expected:
            return Verdict.failed(f"training resumed from step {resumed}, not from the newest intact checkpoint "
                                  f"(step {expected}); {lost:g} steps lost", metrics=metrics, evidence=evidence)
        if lost > self.resume.max_lost_steps:
            return Verdict.failed(f"{lost:g} steps lost, more than max_lost_steps={self.resume.max_lost_steps}",
                                  metrics=metrics, evidence=evidence)
        return Verdict.passed(f"training resumed from step {resumed}, the newest intact checkpoint; "
                              f"{lost:g} steps lost (budget {self.resume.max_lost_steps})",
                              metrics=metrics, evidence=evidence)

    @classmethod
    def restore_action(cls, action: Action, ctx: PhaseContext) -> dict[str, Any]:
        undo = action.undo
        store = CheckpointStore(undo["store"])
        original, quarantine, digest = undo["original"], undo["quarantine"], undo["digest"]
        staging = quarantine + ".damaged"
        if store.exists(staging):
            store.remove(staging)  # our damaged copy, never put in place
        result: dict[str, Any] = {"original": original}
        if store.exists(original):
            current = store.digest(original)
            if current == digest:
                if store.exists(quarantine):
                    store.remove(quarantine)  # verified duplicate of what is back in place
                return {**result, "note": "already in place, digest verified"}
            if current == undo.get("damaged_digest"):
                store.remove(original)  # the damaged copy this stage wrote
            else:
                displaced = f"{quarantine}.displaced-{int(time.time())}"
                store.move(original, displaced, expected_digest=current)
                result["displaced"] = displaced  # something else took the name: kept, not deleted
        if not store.exists(quarantine):
            raise RestoreError(f"{original} is missing and its quarantined copy {quarantine} is gone")
        if store.digest(quarantine) != digest:
            raise RestoreError(f"the quarantined copy {quarantine} does not match its recorded digest: "
                               "kept in quarantine; inspect it before restoring by hand")
        # Local: a rename, so the verified bytes are what lands. Elsewhere: move() checks the copy's digest
        # before it deletes the quarantined one.
        store.move(quarantine, original, expected_digest=digest)
        _remove_empty_quarantine(store, quarantine)
        return {**result, "digest_verified": True}


def _remove_empty_quarantine(store: CheckpointStore, quarantine: str) -> None:
    import posixpath

    run_folder = posixpath.dirname(quarantine)
    for folder in (run_folder, posixpath.dirname(run_folder)):
        try:
            if store.fs.isdir(folder) and not store.fs.ls(folder):
                store.fs.rmdir(folder)
        except OSError:
            return


def _wait(proc: subprocess.Popen[str], timeout_s: float) -> tuple[str, str, bool]:
    """Wait for the command, but stop it when the kill switch is engaged or it runs too long."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            stdout, stderr = proc.communicate(timeout=KILL_SWITCH_POLL_S)
            return stdout, stderr, False
        except subprocess.TimeoutExpired:
            pass
        try:
            check_kill_switch()
        except KillSwitchEngaged:
            _stop(proc)
            raise
        if time.monotonic() > deadline:
            _stop(proc)
            stdout, stderr = proc.communicate()
            return stdout, stderr, True


def _stop(proc: subprocess.Popen[str]) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()


def _resumed_step(stdout: str) -> int | None:
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{") or RESUME_KEY not in line:
            continue
        try:
            value = json.loads(line).get(RESUME_KEY)
        except (json.JSONDecodeError, AttributeError):
            continue
        return int(value or 0)
    return None
