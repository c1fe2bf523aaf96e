"""Spec parts more than one stage uses: which processes make up a workload, the HTTP probe, and the
resume contract of training (checkpoint-wipe's resume command, pod-delete's training pods).

Example::

    target: {local: {selector: {cmdline: "uvicorn .*serve:app", env: {MLCHAOS_APP: model-serving}}}}
    probe: {http: {url: "http://127.0.0.1:5001/ping", min_success_ratio: 0.95}}
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator, model_validator

from mlchaos_steps.core.promql import StageProbe
from mlchaos_steps.core.spec import StrictModel
from mlchaos_steps.core.strict import HttpUrlText
from mlchaos_steps.errors import SpecError

# Variables every process on a machine has: a selector on them matches unrelated processes.
GENERIC_ENV = re.compile(r"^(PATH|HOME|USER|LOGNAME|SHELL|LANG|LANGUAGE|LC_\w+|PWD|OLDPWD|TERM|HOSTNAME|SHLVL|_|"
                         r"TMPDIR|TZ|MAIL|DISPLAY|PYTHONPATH|PYTHONHOME|VIRTUAL_ENV|LD_LIBRARY_PATH|XDG_\w+|SSH_\w+)$")
# Command lines of unrelated processes: a cmdline regex matching all of them selects everything.
UNRELATED_CMDLINES = ("x", "/sbin/init", "bash", "sshd: root@pts/0", "/usr/bin/python3 -m http.server 8000",
                      "sleep 60", "[kworker/0:1]")


class ProcessSelector(StrictModel):
    """Which processes make up the workload. At least one criterion is required, and it must single
    the workload out: a regex that matches anything, or an env variable every process has, is refused."""

    cmdline: str | None = Field(default=None, description="regex searched in the process's joined argv")
    env: dict[str, str] = Field(default_factory=dict, description="environment variables the process must have")

    @field_validator("cmdline")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.strip():
            raise ValueError("is empty: give a regex that matches only your workload's command line")
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"is not a valid regular expression: {exc}") from None
        if compiled.search("") is not None or all(compiled.search(c) for c in UNRELATED_CMDLINES):
            raise ValueError(f"{value!r} matches any command line: give a regex that matches only your workload's "
                             "(e.g. 'uvicorn .*serve:app')")
        return value

    @field_validator("env")
    @classmethod
    def _specific_env(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if GENERIC_ENV.match(name):
                raise ValueError(f"{name} is set in unrelated processes too: select on a variable that names your "
                                 "workload (e.g. MLCHAOS_APP=model-serving), or on cmdline")
        return value

    @model_validator(mode="after")
    def _explicit(self) -> ProcessSelector:
        if not self.cmdline and not self.env:
            raise ValueError("an empty selector would match every process: set cmdline and/or env")
        return self


class HttpProbe(StrictModel):
    url: HttpUrlText = Field(description="sampled continuously while the fault is in place")
    min_success_ratio: float = Field(default=0.95, ge=0, le=1)
    max_p99_ms: float | None = Field(default=None, gt=0, description="optional latency bound during the fault")
    interval_ms: float = Field(default=20, gt=0, le=10_000)
    timeout_s: float = Field(default=2.0, gt=0)
    expect_status: int | None = Field(default=None, description="default: any 2xx or 3xx")


class Probe(StageProbe):
    """pod-delete and canary stages sample HTTP themselves; a PromQL condition may go beside it."""

    http: HttpProbe


RESUME_KEY = "mlchaos_resumed_from_step"


@dataclass(frozen=True)
class ResumeReport:
    """One ``{"mlchaos_resumed_from_step": N, "source": ..., "digest": ...}`` line of the resume command."""

    step: int
    source: str | None = None
    digest: str | None = None


def parse_resume_reports(stdout: str) -> list[ResumeReport]:
    """Every resume report in the command's standard output, in order."""
    reports = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{") or RESUME_KEY not in line:
            continue
        try:
            data = json.loads(line)
            value = data.get(RESUME_KEY)
            step = int(value or 0)
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
            continue
        source, digest = data.get("source"), data.get("digest")
        reports.append(ResumeReport(step, str(source) if source else None, str(digest) if digest else None))
    return reports


def _steps_held(steps: list[int]) -> str:
    shown = ", ".join(map(str, steps[-8:]))
    return ("none" if not steps else shown if len(steps) <= 8 else f"..., {shown}")


def claim_problem(steps: list[int], steps_at_fault: list[int]) -> str | None:
    """What is wrong with a resume claim against the store, whoever checks it (checkpoint-wipe's resume
    command, pod-delete's training pods), so the two cannot drift apart. ``steps``: the steps one
    trainer reported, in order; ``steps_at_fault``: the checkpoints' steps in the store at the fault.

    - reports naming different steps contradict each other;
    - a step other than 0 (from scratch) must have been a checkpoint in the store at the fault: a step
      it never held, or one ahead of every checkpoint, was never loaded from it. A copy elsewhere (a
      mirror) counts only for a step the store held, where its digest can be checked against the store's.
    """
    distinct = sorted(set(steps))
    if len(distinct) > 1:
        return (f"reported contradictory steps {distinct}: one process claimed one checkpoint and another "
                "loaded a different one")
    step = distinct[0] if distinct else 0
    held = sorted(set(steps_at_fault))
    if step and step not in held:
        where = (f"it is ahead of every checkpoint the store held (newest: {held[-1]})" if held and step > held[-1]
                 else f"the store held steps {_steps_held(held)}")
        return (f"reported resuming from step {step}, but no checkpoint of that step was in the store at the "
                f"fault ({where}): a claim the store never backed")
    return None


def lost_steps_problem(step: int, newest_step: int, max_lost_steps: int) -> str | None:
    """The work lost, the newest checkpoint at the fault minus the step resumed from, over the budget."""
    lost = newest_step - step
    if lost > max_lost_steps:
        return (f"resumed from step {step}: {lost} steps lost since the newest checkpoint ({newest_step}), above "
                f"max_lost_steps {max_lost_steps}")
    return None


def argument_list(value: Any) -> Any:
    """Field validator: a command is an argument list, never a shell string."""
    if isinstance(value, str):
        raise ValueError(
            "must be an argument list such as [python, train.py, --resume], not a shell string: "
            "split it into its arguments"
        )
    if isinstance(value, list) and any(isinstance(a, str) and "\0" in a for a in value):
        raise ValueError("an argument holds a NUL byte, which no program can receive: remove it")
    return value


def environment(value: Any) -> Any:
    """Field validator: environment variable names and values a process can receive."""
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str) or not name or "=" in name or "\0" in name:
                raise ValueError(f"{name!r} is not an environment variable name (no '=', no NUL, not empty)")
            if isinstance(item, str) and "\0" in item:
                raise ValueError(f"the value of {name} holds a NUL byte: remove it")
    return value


def check_runnable(command: list[str], cwd: str | None, env: dict[str, str], field: str) -> None:
    """Refuse (exit 2) a command whose working folder or program does not exist on this machine."""
    if cwd is not None and not os.path.isdir(cwd):
        raise SpecError(f"{field}.cwd", f"{cwd!r} is not a folder on this machine: fix it or leave it out")
    program = command[0]
    found = (os.access(os.path.join(cwd or os.getcwd(), program), os.X_OK) if os.sep in program
             else shutil.which(program, path=env.get("PATH", os.environ.get("PATH", ""))) is not None)
    if not found:
        raise SpecError(f"{field}.command", f"{program!r} is not an executable program here: give its path or "
                                            "install it")


def store_url(value: str) -> str:
    """Field validator: an fsspec URL that is safe to break things under (see ``check_store_url``)."""
    from mlchaos_steps.targets.checkpoints import check_store_url

    try:
        check_store_url(value, field="store")
    except SpecError as exc:
        raise ValueError(str(exc).split(": ", 1)[1]) from None
    return value


def step_pattern(value: str) -> str:
    """Field validator: a regular expression whose first group captures a checkpoint's step."""
    try:
        compiled = re.compile(value)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression ({exc}): e.g. 'step-(\\d+)'") from None
    if compiled.groups < 1:
        raise ValueError("needs one group that captures the step number, e.g. 'step-(\\d+)'")
    return value
