"""The correlation id of an execution: a W3C trace context, there whether or not anything exports it.

Snapshot draws the trace id and the id of the execution's root span and keeps them in the ledger, so
the four phases of one run key join one trace even when each runs in a process of its own (Airflow
tasks, Argo pods, ``--phase``). Each phase draws its own span id; while it runs, :func:`current` is
its ``traceparent``, which the commands a stage starts get as ``TRACEPARENT`` (:func:`child_env`) and
probe requests as a header (:func:`headers`), so a traced workload links its own spans to the fault.

Example::

    trace = new_trace()                              # {"trace_id": 32 hex, "span_id": 16 hex}
    with active(trace["trace_id"], new_span_id()):
        subprocess.run(argv, env=child_env(None))   # the command sees TRACEPARENT=00-<trace>-<span>-01
"""

from __future__ import annotations

import contextvars
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

ENV_VAR = "TRACEPARENT"
HEADER = "traceparent"
_PARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("mlchaos_traceparent", default=None)
# Probe threads do not inherit the phase's context: they read the process's phase (one at a time).
_process_current: str | None = None


def new_span_id() -> str:
    return secrets.token_hex(8)


def new_trace() -> dict[str, str]:
    """A fresh trace: its id, and the id of the root span every phase span hangs under. A trace given
    from outside (``TRACEPARENT`` of a pipeline that is itself traced) is joined: its trace id is kept."""
    inherited = parse(os.environ.get(ENV_VAR, ""))
    trace = {"trace_id": inherited[0] if inherited else secrets.token_hex(16), "span_id": new_span_id()}
    if inherited:
        trace["parent_span_id"] = inherited[1]
    return trace


def traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"


def parse(value: str) -> tuple[str, str] | None:
    """(trace id, span id) of a ``traceparent``, or None when it is not one."""
    match = _PARENT.fullmatch(value.strip().lower())
    if not match or set(match.group(1)) == {"0"} or set(match.group(2)) == {"0"}:
        return None
    return match.group(1), match.group(2)


@contextmanager
def active(trace_id: str, span_id: str) -> Iterator[str]:
    """Make ``traceparent(trace_id, span_id)`` current for the phase that runs inside."""
    global _process_current
    value = traceparent(trace_id, span_id)
    token, before = _current.set(value), _process_current
    _process_current = value
    try:
        yield value
    finally:
        _current.reset(token)
        _process_current = before


def current() -> str | None:
    return _current.get() or _process_current


def child_env(env: dict[str, str] | None) -> dict[str, str] | None:
    """``env`` for a command a stage starts (None: this process's), with the phase's ``TRACEPARENT``."""
    value = current()
    if value is None:
        return env
    return {**(os.environ if env is None else env), ENV_VAR: value}


def headers() -> dict[str, str]:
    value = current()
    return {HEADER: value} if value else {}
