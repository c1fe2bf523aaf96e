"""``checkpoint-wipe``: destroy the newest checkpoint(s), then check that training resumes well.

Resume contract: the resume command prints, on its standard output, a JSON line
``{"mlchaos_resumed_from_step": N}`` (``0`` or ``null`` when it started from scratch), optionally with
``"source"`` (the path or URL it loaded) and ``"digest"``. The last report counts; reports naming
different steps contradict each other and fail the stage. The stage passes only when training resumed
from the newest intact checkpoint (or from an intact copy of a wiped one, checked by digest at its
``source``) and the steps lost are within ``resume.max_lost_steps``.

Example::

    kind: CheckpointWipe
    spec:
      store: file:///data/ckpts
      pattern: "step-(\\d+)"
      mode: delete-latest
      count: 1
      resume:
        command: [python, train.py, --resume]
        max_lost_steps: 200
"""

from __future__ import annotations

import os
import posixpath
import time
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from mlchaos_steps.core.context import PhaseContext, check_kill_switch, run_dir_name
from mlchaos_steps.core.processes import CommandResult, run_command, same_process, stop_process_group
from mlchaos_steps.core.records import Action
from mlchaos_steps.core.spec import StageSpec, StrictModel
from mlchaos_steps.core.verdict import Verdict, VerdictStatus
from mlchaos_steps.errors import InfrastructureError, SafetyError, SpecError
from mlchaos_steps.stages.parts import (
    RESUME_KEY,
    ResumeReport,
    argument_list,
    check_runnable,
    claim_problem,
    environment,
    lost_steps_problem,
    parse_resume_reports,
    step_pattern,
    store_url,
)
from mlchaos_steps.targets import quarantine
from mlchaos_steps.targets.checkpoint_evidence import assess, digest_names
from mlchaos_steps.targets.checkpoints import QUARANTINE_DIR, CheckpointStore, siblings

OUTPUT_TAIL_CHARS = 2000
PASSED: VerdictStatus = "passed"
FAILED: VerdictStatus = "failed"
INCONCLUSIVE: VerdictStatus = "inconclusive"
CHECKPOINT_PLACEHOLDER = "{checkpoint}"


class ResumeSpec(StrictModel):
    """How to resume training, and how much lost work is acceptable."""

    command: list[str] = Field(min_length=1, description="argument list; never a shell string")
    max_lost_steps: int = Field(ge=0, description="steps of work the wipe may cost")
    timeout_s: float = Field(default=900, gt=0, description="the resume command is stopped after this")
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for the command")

    _command = field_validator("command", mode="before")(argument_list)
    _env = field_validator("env", mode="before")(environment)

    def check_runnable(self) -> None:
        """Before anything breaks: the working folder exists and the program can be found."""
        check_runnable(self.command, self.cwd, self.env, "spec.resume")


class IntegrityCheck(StrictModel):
    """A command that tells whether one checkpoint is intact (exit 0) before the stage breaks anything.

    ``{checkpoint}`` in an argument is replaced by the checkpoint's path; it is also in
    ``MLCHAOS_CHECKPOINT``."""

    command: list[str] = Field(min_length=1, description="argument list; {checkpoint} is the checkpoint's path")
    timeout_s: float = Field(default=120, gt=0)

    _command = field_validator("command", mode="before")(argument_list)


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
    integrity: IntegrityCheck | None = Field(
        default=None, description="checks, before the fault, that the checkpoints in play are intact")

    _store = field_validator("store")(store_url)
    _pattern = field_validator("pattern")(step_pattern)

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

    def _check_commands(self) -> None:
        """The resume (and integrity) command can run on this machine: refused (exit 2) before anything
        breaks, and reported by ``--dry-run`` as the run would report it."""
        self.resume.check_runnable()
        if self.integrity is not None:
            check_runnable(self.integrity.command, self.resume.cwd, self.resume.env, "spec.integrity")

    def plan(self, ctx: PhaseContext) -> dict[str, Any]:
        self._check_commands()
        _, found, victims = self._resolve()
        return {
            "would_wipe": [v.name for v in victims], "mode": self.mode,
            "checkpoints": [c.name for c in found], "resume_command": self.resume.command,
        }

    def snapshot(self, ctx: PhaseContext) -> dict[str, Any]:
        self._check_commands()
        store, found, victims = self._resolve()
        survivors = found[: len(found) - len(victims)]
        # What each victim is on disk, before its digest: a change after this point is caught by inject.
        on_disk = [store.signature(v.path) for v in victims]
        # Steady state: what the stage breaks is intact now (else the experiment would prove nothing).
        steady = [self._assess(store, c, found) for c in victims]
        damaged = [s for s in steady if not s["intact"]]
        if damaged:
            raise InfrastructureError(
                "steady state not met before the fault: " + "; ".join(f"{s['name']} {s['detail']}" for s in damaged)
                + ". Nothing was broken: repair the store (or point the stage at an intact one) and run it again")
        # What training should resume from: the newest survivor not shown to be damaged already. The
        # damaged ones above it (a save cut short by an earlier preemption) are evidence for verify: a
        # trainer that skips them is right to.
        assessed: list[dict[str, Any]] = []
        for survivor in reversed(survivors):
            assessed.append(self._assess(store, survivor, found))
            if assessed[-1]["intact"]:
                break
        backups = [{"name": v.name, "step": v.step, "path": v.path, "is_dir": v.is_dir, "on_disk": signature,
                    "digest": entry.pop("digest"), "size_bytes": entry.pop("size_bytes")}
                   for v, signature, entry in zip(victims, on_disk, steady, strict=True)]
        for entry in assessed:  # read for their evidence; not backed up
            entry.pop("digest", None)
            entry.pop("size_bytes", None)
        state = {
            "checkpoints": [{"name": c.name, "step": c.step} for c in found],
            "victims": backups,
            "newest_step": found[-1].step,
            "newest_intact_step": next((a["step"] for a in assessed if a["intact"]), 0),
            "survivors_assessed": assessed,
            "steady_before": steady,
        }
        ctx.save(**state)
        return {"victims": [b["name"] for b in backups], "newest_step": state["newest_step"],
                "newest_intact_step": state["newest_intact_step"], "steady_state": steady + assessed}

    def _assess(self, store: CheckpointStore, checkpoint: Any, found: list[Any]) -> dict[str, Any]:
        """Is this checkpoint intact before the fault, and how sure is the stage? ``evidence``: ``verified``
        (its own digests, CRCs or the integrity command say so), ``unverified`` (readable and consistent,
        nothing proves its content) or ``damaged``."""
        entry: dict[str, Any] = {"name": checkpoint.name, "step": checkpoint.step}
        try:
            size = entry["size_bytes"] = store.size_bytes(checkpoint.path)
            entry["digest"] = store.digest(checkpoint.path, check_kill_switch)  # every byte readable
            evidence = assess(store.fs, checkpoint.path, siblings(found, checkpoint), check_kill_switch)
        except OSError as exc:
            return {**entry, "intact": False, "evidence": "damaged", "detail": f"cannot be read: {exc}"}
        if size == 0:
            return {**entry, "intact": False, "evidence": "damaged", "detail": "is empty"}
        if evidence.state == "damaged":
            return {**entry, "intact": False, "evidence": "damaged", "detail": evidence.detail}
        if self.integrity is None:
            return {**entry, "intact": True, "evidence": evidence.state, "detail": f"{size} bytes; {evidence.detail}"}
        ok, detail = self._integrity_check(checkpoint.path)
        return {**entry, "intact": ok, "evidence": "verified" if ok else "damaged", "detail": detail}

    def _integrity_check(self, path: str) -> tuple[bool, str]:
        assert self.integrity is not None
        argv = [a.replace(CHECKPOINT_PLACEHOLDER, path) for a in self.integrity.command]
        env = {**os.environ, **self.resume.env, "MLCHAOS_CHECKPOINT": path, "MLCHAOS_STORE": self.store}
        try:
            result = run_command(argv, env=env, cwd=self.resume.cwd, timeout_s=self.integrity.timeout_s,
                                 on_tick=check_kill_switch)
        except OSError as exc:
            raise InfrastructureError(f"the integrity command could not start: {exc}") from exc
        ok = result.exit_code == 0
        return ok, ("integrity check passed" if ok else "integrity check timed out" if result.timed_out else
                    f"failed its integrity check (exit {result.exit_code}: {result.stderr.strip()[-200:]})")

    def inject(self, ctx: PhaseContext) -> dict[str, Any]:
        store = CheckpointStore(self.store)
        damage = self.mode.removesuffix("-latest")
        run_dir = run_dir_name(ctx.run_key)
        wiped = []
        started = time.perf_counter()

        def write_damage(source: str, staging: str) -> dict[str, Any]:
            return store.write_damaged(source, staging, damage, check=check_kill_switch)

        for victim in ctx.state["victims"]:
            quarantine.replace(ctx, store, "quarantine-checkpoint", victim, run_dir, {"mode": damage},
                               write_damage if damage != "delete" else None)
            wiped.append(victim["name"])
        # The store as the fault left it: a step the trainer claims must have been here (or at snapshot).
        held = {c["step"] for c in ctx.state["checkpoints"]}
        try:
            held |= {c.step for c in store.checkpoints(self.pattern)}
        except (OSError, SafetyError, SpecError):  # the fault is in place: the snapshot's listing will do
            pass
        ctx.save(steps_at_fault=sorted(held))
        return {"wiped": wiped, "mode": self.mode, "inject_seconds": round(time.perf_counter() - started, 6)}

    def verify(self, ctx: PhaseContext) -> Verdict:
        state = ctx.state
        env = {**os.environ, **self.resume.env, "MLCHAOS_RUN_KEY": ctx.run_key, "MLCHAOS_STORE": self.store}
        try:
            result = run_command(self.resume.command, env=env, cwd=self.resume.cwd, timeout_s=self.resume.timeout_s,
                                 on_tick=check_kill_switch,
                                 on_start=lambda pid: ctx.save(resume_process=_identity(pid)))
        except OSError as exc:
            return Verdict.failed(f"the resume command could not start: {exc}",
                                  evidence={"command": self.resume.command})
        return self.judge(state, result)

    def judge(self, state: dict[str, Any], result: CommandResult) -> Verdict:
        """The verdict over what the resume command did and reported, against what snapshot recorded."""
        victims = {v["step"]: v for v in state["victims"]}
        reports = parse_resume_reports(result.stdout)
        last = reports[-1] if reports else None
        evidence: dict[str, Any] = {
            "command": self.resume.command, "exit_code": result.exit_code,
            "resumed_from_step": last.step if last else None, "reports": [r.__dict__ for r in reports],
            "expected_step": state["newest_intact_step"], "wiped_steps": sorted(victims),
            "newest_step": state["newest_step"], "leftover_processes_stopped": result.leftovers_stopped,
            "survivors_assessed": state.get("survivors_assessed", []),
            "stdout_tail": result.stdout[-OUTPUT_TAIL_CHARS:], "stderr_tail": result.stderr[-OUTPUT_TAIL_CHARS:],
        }
        metrics: dict[str, float] = {"resume_seconds": result.seconds}
        if last is not None:
            metrics["lost_steps"] = state["newest_step"] - last.step
        status, reason = self._outcome(state, result, reports, evidence)
        return Verdict(status=status, reason=reason, metrics=metrics, evidence=evidence)

    def _outcome(self, state: dict[str, Any], result: CommandResult, reports: list[ResumeReport],
                 evidence: dict[str, Any]) -> tuple[VerdictStatus, str]:
        """(status, reason), in order: deadlines, the claim against the store, wiped steps, the exit code,
        skipped checkpoints, the budget."""
        if result.timed_out:
            return FAILED, f"training did not finish resuming within {self.resume.timeout_s:g}s"
        last = reports[-1] if reports else None
        wiped = self._claim(state, reports, evidence) if reports else None
        if wiped is not None and wiped[0] == FAILED:
            return wiped
        if result.exit_code != 0:
            return FAILED, f"the resume command exited with code {result.exit_code}"
        if last is None:
            return INCONCLUSIVE, (f"the resume command did not report where it resumed: print a JSON line "
                                  f'{{"{RESUME_KEY}": N}} on standard output')
        if wiped is not None and wiped[0] == INCONCLUSIVE:
            return wiped
        skipped = self._skipped(state, last.step)
        if skipped[0] != PASSED:
            return skipped
        lost = state["newest_step"] - last.step
        if problem := lost_steps_problem(last.step, state["newest_step"], self.resume.max_lost_steps):
            return FAILED, f"training {problem}"
        what = wiped[1] if wiped else "the newest intact checkpoint"
        return PASSED, (f"training resumed from step {last.step}, {what}{skipped[1]}; "
                        f"{lost:g} steps lost (budget {self.resume.max_lost_steps})")

    def _claim(self, state: dict[str, Any], reports: list[ResumeReport],
               evidence: dict[str, Any]) -> tuple[VerdictStatus, str] | None:
        """The reports against the store at the fault (the rules training pods share), then, for a step this
        stage wiped, the copy the trainer loaded instead. None when the claim needs nothing more."""
        held = state.get("steps_at_fault") or [c["step"] for c in state["checkpoints"]]
        if problem := claim_problem([r.step for r in reports], held):
            return FAILED, f"the resume command {problem}"
        victims = {v["step"]: v for v in state["victims"]}
        return self._wiped_step(reports[-1], victims[reports[-1].step], evidence) if reports[-1].step in victims \
            else None

    def _wiped_step(self, report: ResumeReport, victim: dict[str, Any],
                    evidence: dict[str, Any]) -> tuple[VerdictStatus, str]:
        """The trainer says it resumed from a step this stage wiped: only an intact copy elsewhere, checked
        by digest at the report's ``source``, makes that right."""
        if report.source:
            status, why = self._intact_copy(report, victim)
            evidence["intact_copy"] = why
            if status == PASSED:
                return PASSED, "an intact copy of the wiped step"
            if status == INCONCLUSIVE:
                return INCONCLUSIVE, (f"training reports resuming from step {report.step}, which this stage deleted, "
                                      f"from a copy the stage could not check ({why})")
            undetected = ": the damage went undetected" if self.mode != "delete-latest" else ""
            return FAILED, (f"training resumed from step {report.step}, a checkpoint this stage wiped "
                            f"({self.mode}){undetected} ({why})")
        if self.mode == "delete-latest":
            # The deleted files cannot have been loaded: a correct resume of this step proves a second copy,
            # but without its location the stage cannot check that copy's bytes.
            evidence["intact_copy"] = "the report names no source"
            return INCONCLUSIVE, (
                f"training reports resuming from step {report.step}, which this stage deleted: it must have loaded "
                "a copy from elsewhere (a mirror, another tier), but the report names no source the stage could "
                'check: add "source" (the copy\'s path or URL) and "digest" to the report')
        evidence["intact_copy"] = "the report names no source"
        return FAILED, (f"training resumed from step {report.step}, a checkpoint this stage wiped ({self.mode}): "
                        "the damage went undetected (the report names no source: add \"source\" to it if you load "
                        "a mirror)")

    @staticmethod
    def _skipped(state: dict[str, Any], step: int) -> tuple[VerdictStatus, str]:
        """Judge the checkpoints the stage did not touch that training passed over, by the evidence
        snapshot gathered on them before the fault. (PASSED, what to add to the reason) when it was right."""
        assessed = state.get("survivors_assessed")
        if assessed is None:  # a run snapshotted before this evidence was kept
            assessed = [{"step": state["newest_intact_step"], "name": f"step {state['newest_intact_step']}",
                         "intact": True, "evidence": "unverified", "detail": "no evidence recorded"}]
        damaged = {a["step"]: a for a in assessed if not a["intact"]}
        if step in damaged:
            return FAILED, (f"training resumed from step {step}, a checkpoint that was damaged before the fault "
                            f"({damaged[step]['name']}: {damaged[step]['detail']})")
        expected = state["newest_intact_step"]
        passed_over = [a for a in assessed if step < a["step"]]
        target = next((a for a in passed_over if a["intact"]), None)
        if target is not None:
            lost = state["newest_step"] - step
            if target["evidence"] == "verified":
                return FAILED, (f"training resumed from step {step}, not from the newest intact checkpoint "
                                f"(step {expected}: {target['detail']}); {lost:g} steps lost")
            return INCONCLUSIVE, (
                f"training passed over step {expected} and resumed from step {step}; the stage cannot tell whether "
                f"step {expected} was damaged before the fault ({target['detail']}): give spec.integrity.command "
                "(exit 0 for an intact checkpoint) so it can")
        skipped = [a for a in passed_over if not a["intact"]]
        if not skipped:
            return PASSED, ""
        names = ", ".join(f"{a['name']} ({a['detail']})" for a in skipped)
        return PASSED, f", passing over what was damaged before the fault: {names}"

    def _intact_copy(self, report: ResumeReport, victim: dict[str, Any]) -> tuple[VerdictStatus, str]:
        """Did the trainer load an intact copy (a mirror, another tier) of a step this stage wiped?

        Only the bytes count: mlchaos digests ``source`` itself and compares it with the digest the
        wiped checkpoint had before the fault. A ``digest`` in the report must be that of the source:
        mlchaos's own (``blake3:...``), or ``<algorithm>:<hex>`` of the file, or of one file of the folder."""
        source = (report.source or "").rstrip("/")
        store = CheckpointStore(self.store)
        local_path = source.removeprefix("file://") if source.startswith(("/", "file://")) else None
        if local_path is not None and store.local:
            real = os.path.realpath(local_path)
            # After a delete, the path holds something again only if the trainer put a copy back there:
            # its bytes are checked like any copy's. Corrupted or truncated, it holds this stage's damage.
            if real == os.path.realpath(victim["path"]) and (self.mode != "delete-latest" or not os.path.exists(real)):
                return FAILED, f"source {source} is the wiped checkpoint itself"
            if real.startswith(os.path.realpath(posixpath.join(store.root, QUARANTINE_DIR))):
                return FAILED, f"source {source} is mlchaos's own quarantine, not a copy the trainer keeps"
        try:
            import fsspec

            fs, path = fsspec.core.url_to_fs(source)
            digest = CheckpointStore.digest_with(fs, path)
        except Exception as exc:
            # After a delete a copy was loaded from somewhere (a download since cleaned up, a tier this
            # machine cannot read): unchecked, not disproved. Otherwise the damaged copy was at hand.
            status = INCONCLUSIVE if self.mode == "delete-latest" else FAILED
            return status, f"source {source} could not be read to check it: {exc}"
        if digest != victim["digest"]:
            return FAILED, f"source {source} does not hold the bytes the checkpoint had before the fault"
        if report.digest and not digest_names(report.digest, digest, fs, path):
            return FAILED, f"the reported digest {report.digest} is not the digest of {source}"
        return PASSED, f"source {source} matches the pre-fault digest {digest}"

    @classmethod
    def restore_action(cls, action: Action, ctx: PhaseContext) -> dict[str, Any]:
        undo = action.undo
        # A resume command left running by a crash of mlchaos would keep writing into the store.
        resume = ctx.state.get("resume_process")
        if resume and same_process(resume[0], resume[1]):
            stop_process_group(resume[0])
        store = CheckpointStore(undo["store"])
        return quarantine.put_back(store, undo, lambda current: cls._is_own_damage(store, undo, current))

    @staticmethod
    def _is_own_damage(store: CheckpointStore, undo: dict[str, Any], current: str) -> bool:
        if undo.get("mode") not in ("truncate", "corrupt"):
            return False
        return quarantine.rewritten_is(store, undo, current,
                                       lambda source, dest: store.write_damaged(source, dest, undo["mode"]))


def _identity(pid: int) -> list[Any]:
    import psutil

    try:
        return [pid, psutil.Process(pid).create_time()]
    except psutil.Error:
        return [pid, None]
