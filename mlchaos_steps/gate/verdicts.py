"""Verdicts on the model version: tags the gate reads, and one MLflow run of evidence per execution.

Tags, per stage id: ``mlchaos.<stage>.verdict`` (passed|failed|inconclusive, or ``pending`` while a run
is in progress), ``mlchaos.<stage>.run_id`` (the MLflow run with the evidence), ``mlchaos.<stage>.run_key``,
``mlchaos.<stage>.reason``, ``mlchaos.<stage>.restore`` (``restored`` once the run put everything back)
and one tag per metric (``mlchaos.<stage>.recovery_seconds``...).

Order of writing, so that a reader never sees a verdict its run does not stand behind: ``pending``
when the run starts; then the evidence run (left RUNNING), the detail tags, the verdict tag; the
evidence run is finished with the same verdict last; ``restore`` after restore. The gate checks that
the evidence run finished with the version's verdict and run key, and that it restored.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from mlchaos_steps.core.context import PhaseContext
from mlchaos_steps.core.records import EVIDENCE_RUN_ID, Execution, ExecutionStatus, Ledger
from mlchaos_steps.core.verdict import Verdict
from mlchaos_steps.redaction import redact
from mlchaos_steps.targets.mlflow import ModelRef, client, experiment_id

EXPERIMENT = "mlchaos"
MAX_PARAM_CHARS = 500


def pipeline_identity() -> dict[str, str]:
    """Who ran this: the Airflow DAG run or the Argo workflow, from their environments."""
    env = os.environ
    found = {
        "mlchaos.pipeline.dag_id": env.get("AIRFLOW_CTX_DAG_ID"),
        "mlchaos.pipeline.dag_run_id": env.get("AIRFLOW_CTX_DAG_RUN_ID"),
        "mlchaos.pipeline.task_id": env.get("AIRFLOW_CTX_TASK_ID"),
        "mlchaos.pipeline.workflow_name": env.get("ARGO_WORKFLOW_NAME") or env.get("MLCHAOS_WORKFLOW_NAME"),
        "mlchaos.pipeline.workflow_uid": env.get("ARGO_WORKFLOW_UID") or env.get("MLCHAOS_WORKFLOW_UID"),
    }
    return {k: v for k, v in found.items() if v}


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        text = json.dumps(value) if not isinstance(value, str) else value
        out[prefix] = text[:MAX_PARAM_CHARS]


PENDING = "pending"
RESTORED_TAG = "restored"


def verdict_detail_tags(stage_id: str, verdict: Verdict, run_id: str, run_key: str) -> dict[str, str]:
    """Every tag of a verdict but the verdict itself (which is written last)."""
    tags = {
        f"mlchaos.{stage_id}.run_id": run_id,
        f"mlchaos.{stage_id}.run_key": run_key,
        f"mlchaos.{stage_id}.reason": redact(verdict.reason)[:4000],
    }
    for name, value in verdict.metrics.items():
        tags[f"mlchaos.{stage_id}.{name}"] = f"{value:g}"
    return tags


def mark_pending(model: ModelRef, stage_id: str, run_key: str, trace_id: str | None = None) -> None:
    """A run of this stage started on the version: the gate blocks until it finishes and restores.
    ``trace_id``: the execution's correlation id (its trace in a tracing backend)."""
    c = client()
    c.set_model_version_tag(model.name, model.version, f"mlchaos.{stage_id}.verdict", PENDING)
    c.set_model_version_tag(model.name, model.version, f"mlchaos.{stage_id}.run_key", run_key)
    if trace_id:
        c.set_model_version_tag(model.name, model.version, f"mlchaos.{stage_id}.trace_id", trace_id)
    c.set_model_version_tag(model.name, model.version, f"mlchaos.{stage_id}.restore", PENDING)


def log_execution(stage_id: str, kind: str, spec: dict[str, Any], verdict: Verdict, run_key: str,
                  journal: Path | None, model: ModelRef | None, trace_id: str | None = None) -> str:
    """Log one MLflow run of evidence in experiment ``mlchaos``; return its id. The run stays RUNNING
    until :func:`finish_execution`: only a finished run stands behind a verdict."""
    from mlflow.entities import Metric, Param

    c = client()
    tags = {"mlchaos.run_key": run_key, "mlchaos.stage_id": stage_id, "mlchaos.kind": kind,
            "mlflow.runName": f"{stage_id} {run_key}"[:250], **pipeline_identity()}
    if model:
        tags.update({"mlchaos.model": model.name, "mlchaos.model_version": model.version})
    if trace_id:
        tags["mlchaos.trace_id"] = trace_id
    run = c.create_run(experiment_id(EXPERIMENT), tags=redact(tags))
    run_id = run.info.run_id
    params: dict[str, str] = {}
    _flatten("", redact(spec), params)
    now = int(time.time() * 1000)
    c.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in verdict.metrics.items()],
        params=[Param(k[:250], v) for k, v in sorted(params.items())][:100],
    )
    c.log_text(run_id, json.dumps(redact(verdict.model_dump(mode="json")), indent=2, default=str), "verdict.json")
    if journal and journal.exists():
        c.log_artifact(run_id, str(journal))
    return str(run_id)


def finish_execution(run_id: str, verdict: Verdict) -> None:
    """The evidence run stands behind ``verdict``: its tag, then its end (FINISHED for passed)."""
    c = client()
    c.set_tag(run_id, "mlchaos.verdict", verdict.status)
    c.set_terminated(run_id, "FINISHED" if verdict.status == "passed" else "FAILED")


def upload_journal(run_id: str, journal: Path) -> None:
    """Replace an artifact (the journal, the scorecard) with its final version (after restore)."""
    if journal.exists():
        client().log_artifact(run_id, str(journal))


def record_verdict(model: ModelRef, stage_id: str, verdict: Verdict, run_id: str, run_key: str,
                   restored: bool | None = None) -> dict[str, str]:
    """Write the verdict tags on the exact model version: details first, the verdict last.

    ``restored`` (when known: verdicts carried after the run) writes the restore tag too."""
    c = client()
    tags = verdict_detail_tags(stage_id, verdict, run_id, run_key)
    if restored is not None:
        tags[f"mlchaos.{stage_id}.restore"] = RESTORED_TAG if restored else "restore_failed"
    tags[f"mlchaos.{stage_id}.verdict"] = verdict.status
    for key, value in tags.items():
        c.set_model_version_tag(model.name, model.version, key, value)
    return tags


def record_restore(model: ModelRef, stage_id: str, run_key: str, restored: bool, verdict: str | None) -> bool:
    """After restore: say on the version whether this run put everything back. Leaves a newer run's
    tags alone; returns whether it wrote. A verdict tag that disagrees with the run's final verdict
    (the run turned inconclusive after the tag was written) is corrected."""
    c = client()
    tags = dict(c.get_model_version(model.name, model.version).tags or {})
    if tags.get(f"mlchaos.{stage_id}.run_key") != run_key:
        return False
    if verdict and verdict != "passed" and tags.get(f"mlchaos.{stage_id}.verdict") != verdict:
        c.set_model_version_tag(model.name, model.version, f"mlchaos.{stage_id}.verdict", verdict)
    c.set_model_version_tag(model.name, model.version, f"mlchaos.{stage_id}.restore",
                            RESTORED_TAG if restored else "restore_failed")
    return True


def carry_verdict(execution: Execution, model: ModelRef, ledger: Ledger) -> str:
    """Write the verdict of a finished execution onto a version registered after it ran (checkpoint-wipe
    before ``register``), with its evidence run (logged now if no tracking server was set then) and
    whether it restored. Returns the verdict."""
    verdict = Verdict.model_validate(execution.verdict_detail)
    run_id = execution.evidence_run_id
    if not run_id:
        journal = PhaseContext(execution.run_key, ledger, execution).run_dir / "journal.json"
        run_id = log_execution(execution.stage_id, execution.kind, execution.spec, verdict, execution.run_key,
                               journal, model)
        finish_execution(run_id, verdict)
        ledger.update(execution.run_key, state={EVIDENCE_RUN_ID: run_id})
    record_verdict(model, execution.stage_id, verdict, run_id, execution.run_key,
                   restored=execution.status == ExecutionStatus.RESTORED)
    return verdict.status
