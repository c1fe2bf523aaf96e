"""A Chaos Toolkit-compatible journal for each stage execution.

The journal is built with ``chaoslib``'s own ``initialize_run_journal`` around an experiment whose
activities are Python providers in :mod:`mlchaos_steps.ctk`, so the experiment passes
``chaoslib.experiment.ensure_experiment_is_valid`` and ``chaos run`` could replay it. Values whose
names look secret are redacted before anything is written.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlchaos_steps.core.records import TRACE, Execution
from mlchaos_steps.redaction import redact

__all__ = ["build_journal", "experiment_for", "write_journal"]

# chaostoolkit's journal statuses
STATUS_BY_VERDICT = {"passed": "completed", "failed": "failed", "inconclusive": "aborted"}


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else None


def _provider(func: str, execution: Execution) -> dict[str, Any]:
    return {
        "type": "python",
        "module": "mlchaos_steps.ctk",
        "func": func,
        "arguments": {"stage": redact({"kind": execution.kind, "spec": execution.spec}),
                      "run_key": execution.run_key},
    }


def experiment_for(execution: Execution, title: str) -> dict[str, Any]:
    """The Chaos Toolkit experiment equivalent to one stage execution."""
    return {
        "version": "1.0.0",
        "title": f"{title} ({execution.stage_id})",
        "description": f"mlchaos stage {execution.stage_id}, run key {execution.run_key}",
        "tags": ["mlchaos", execution.stage_id],
        "configuration": {"mlchaos_run_key": execution.run_key},
        "steady-state-hypothesis": {
            "title": f"{execution.stage_id} recovers as its owners claim",
            "probes": [{
                "type": "probe", "name": "verdict-is-passed", "tolerance": True,
                "provider": _provider("verdict_is_passed", execution),
            }],
        },
        "method": [
            {"type": "action", "name": "snapshot", "provider": _provider("snapshot", execution)},
            {"type": "action", "name": "inject", "provider": _provider("inject", execution)},
            {"type": "probe", "name": "verify", "provider": _provider("verify", execution)},
        ],
        "rollbacks": [{"type": "action", "name": "restore", "provider": _provider("restore", execution)}],
    }


def _run_entry(activity: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    entry = {
        "activity": activity,
        "status": "succeeded" if record.get("status") in {"ok", "skipped"} else "failed",
        "start": _iso(record.get("start")),
        "end": _iso(record.get("end")),
        "duration": round((record.get("end") or 0) - (record.get("start") or 0), 6),
        "output": redact(record.get("output")),
    }
    if record.get("error"):
        entry["exception"] = [record["error"]]
    return entry


def build_journal(execution: Execution, title: str) -> dict[str, Any]:
    """Journal of the execution as the ledger knows it now."""
    from chaoslib.run import initialize_run_journal

    experiment = experiment_for(execution, title)
    journal: dict[str, Any] = initialize_run_journal(experiment)
    journal["start"] = _iso(execution.created_at)
    journal["end"] = _iso(execution.updated_at)
    journal["duration"] = round(execution.updated_at - execution.created_at, 6)
    by_name = {a["name"]: a for a in experiment["method"] + experiment["rollbacks"]}
    journal["run"] = [
        _run_entry(by_name[phase], execution.phases[phase])
        for phase in ("snapshot", "inject", "verify")
        if phase in execution.phases
    ]
    if "restore" in execution.phases:
        journal["rollbacks"] = [_run_entry(by_name["restore"], execution.phases["restore"])]
    if "snapshot" in execution.phases:
        journal["steady_states"]["before"] = {
            "steady_state_met": execution.phases["snapshot"].get("status") == "ok",
            "probes": [_run_entry(by_name["snapshot"], execution.phases["snapshot"])],
        }
    verdict = execution.verdict
    if verdict:
        probe = experiment["steady-state-hypothesis"]["probes"][0]
        journal["steady_states"]["after"] = {
            "steady_state_met": verdict == "passed",
            "probes": [{
                "activity": probe, "status": "succeeded", "output": verdict == "passed",
                "tolerance_met": verdict == "passed",
                "start": _iso(execution.phases.get("verify", {}).get("start")),
                "end": _iso(execution.phases.get("verify", {}).get("end")),
            }],
        }
    journal["status"] = STATUS_BY_VERDICT.get(verdict or "", None)
    if execution.phases.get("verify", {}).get("error", "").startswith("kill switch"):
        journal["status"] = "interrupted"
    journal["deviated"] = verdict == "failed"
    journal["mlchaos"] = redact({
        "run_key": execution.run_key,
        "stage_id": execution.stage_id,
        "trace_id": (execution.state.get(TRACE) or {}).get("trace_id"),
        "status": execution.status,
        "verdict": verdict,
        "verdict_detail": execution.verdict_detail,
    })
    return journal


def write_journal(execution: Execution, title: str, path: Path) -> Path:
    """Write the journal atomically (temp file + rename), so a reader never sees half of it."""
    journal = build_journal(execution, title)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(journal, indent=2, default=str))
    tmp.replace(path)
    return path
