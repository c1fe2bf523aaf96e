"""Verdicts on the model version: tags the gate reads, and one MLflow run of evidence per execution.

Tags, per stage id: ``mlchaos.<stage>.verdict`` (passed|failed|inconclusive), ``mlchaos.<stage>.run_id``
(the MLflow run with the evidence), ``mlchaos.<stage>.run_key``, ``mlchaos.<stage>.reason`` and one
tag per metric (``mlchaos.<stage>.recovery_seconds``...).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from mlchaos_steps.engine.journal import redact
from mlchaos_steps.engine.verdict import Verdict
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


def verdict_tags(stage_id: str, verdict: Verdict, run_id: str, run_key: str) -> dict[str, str]:
    tags = {
        f"mlchaos.{stage_id}.verdict": verdict.status,
        f"mlchaos.{stage_id}.run_id": run_id,
        f"mlchaos.{stage_id}.run_key": run_key,
        f"mlchaos.{stage_id}.reason": verdict.reason[:4000],
    }
    for name, value in verdict.metrics.items():
        tags[f"mlchaos.{stage_id}.{name}"] = f"{value:g}"
    return tags


def log_execution(stage_id: str, kind: str, spec: dict[str, Any], verdict: Verdict, run_key: str,
                  journal: Path | None, model: ModelRef | None) -> str:
    """Log one MLflow run of evidence in experiment ``mlchaos``; return its id."""
    from mlflow.entities import Metric, Param

    c = client()
    tags = {"mlchaos.run_key": run_key, "mlchaos.stage_id": stage_id, "mlchaos.kind": kind,
            "mlchaos.verdict": verdict.status, "mlflow.runName": f"{stage_id} {run_key}"[:250],
            **pipeline_identity()}
    if model:
        tags.update({"mlchaos.model": model.name, "mlchaos.model_version": model.version})
    run = c.create_run(experiment_id(EXPERIMENT), tags=tags)
    run_id = run.info.run_id
    params: dict[str, str] = {}
    _flatten("", redact(spec), params)
    now = int(time.time() * 1000)
    c.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in verdict.metrics.items()],
        params=[Param(k[:250], v) for k, v in sorted(params.items())][:100],
    )
    c.log_text(run_id, json.dumps(verdict.model_dump(mode="json"), indent=2, default=str), "verdict.json")
    if journal and journal.exists():
        c.log_artifact(run_id, str(journal))
    c.set_terminated(run_id, "FINISHED" if verdict.status == "passed" else "FAILED")
    return str(run_id)


def upload_journal(run_id: str, journal: Path) -> None:
    """Replace the journal artifact with its final version (after restore)."""
    if journal.exists():
        client().log_artifact(run_id, str(journal))


def record_verdict(model: ModelRef, stage_id: str, verdict: Verdict, run_id: str, run_key: str) -> dict[str, str]:
    """Write the verdict tags on the exact model version."""
    c = client()
    tags = verdict_tags(stage_id, verdict, run_id, run_key)
    for key, value in tags.items():
        c.set_model_version_tag(model.name, model.version, key, value)
    return tags
