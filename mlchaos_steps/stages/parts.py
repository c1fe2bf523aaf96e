"""Spec parts more than one stage uses: which processes make up a workload, and the HTTP probe.

Example::

    target: {local: {selector: {cmdline: "uvicorn .*serve:app", env: {MLCHAOS_APP: model-serving}}}}
    probe: {http: {url: "http://127.0.0.1:5001/ping", min_success_ratio: 0.95}}
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from mlchaos_steps.core.spec import StrictModel

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
    url: str = Field(description="sampled continuously while the fault is in place")
    min_success_ratio: float = Field(default=0.95, ge=0, le=1)
    max_p99_ms: float | None = Field(default=None, gt=0, description="optional latency bound during the fault")
    interval_ms: float = Field(default=20, gt=0, le=10_000)
    timeout_s: float = Field(default=2.0, gt=0)
    expect_status: int | None = Field(default=None, description="default: any 2xx or 3xx")

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value


class Probe(StrictModel):
    http: HttpProbe
