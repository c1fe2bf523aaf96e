"""An opt-in Airflow cluster policy: insert the chaos stages a DAG declares, with no edit to its code.

Registered through the ``airflow.policy`` entry point, so installing mlchaos-steps is enough; it only
touches DAGs that declare stages, and ``MLCHAOS_AIRFLOW_POLICY=0`` turns it off. A DAG declares stages

- in its params: ``params={"mlchaos_stages": [{"after": "train", "before": "evaluate", "stage": "wipe.yaml"}]}``;
- or with the tag ``mlchaos`` and a file beside the DAG file, ``<dag file>.mlchaos.yaml``, mapping DAG
  ids to such lists.

Stage paths are relative to the DAG file. Insertion happens at parse time, the same way every time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow.policies import hookimpl

from mlchaos_steps.errors import SpecError

PARAM = "mlchaos_stages"
TAG = "mlchaos"


def declared_stages(dag: Any) -> list[dict[str, Any]]:
    declared: list[dict[str, Any]] = []
    if PARAM in dag.params:
        value = dag.params[PARAM]
        declared += list(value) if isinstance(value, list) else [value]
    if TAG in (dag.tags or set()) and dag.fileloc:
        sidecar = Path(dag.fileloc).with_suffix(".mlchaos.yaml")
        if sidecar.exists():
            import yaml

            content = yaml.safe_load(sidecar.read_text()) or {}
            if not isinstance(content, dict):
                raise SpecError(str(sidecar), "must map DAG ids to lists of {after, before, stage}")
            declared += list(content.get(dag.dag_id) or [])
    return declared


def apply_declared_chaos(dag: Any) -> list[str]:
    """Insert every declared stage; returns the group ids inserted."""
    from mlchaos_steps.airflow.insertion import insert_chaos
    from mlchaos_steps.airflow.task_group import load_stage_spec

    base = Path(dag.fileloc).parent if dag.fileloc else Path.cwd()
    inserted = []
    existing = dag.task_group.get_task_group_dict()
    for i, declaration in enumerate(declared_stages(dag)):
        if not isinstance(declaration, dict) or "after" not in declaration or "stage" not in declaration:
            raise SpecError(f"DAG {dag.dag_id}: {PARAM}[{i}]", "needs at least 'after' and 'stage'")
        stage = declaration["stage"]
        if isinstance(stage, str):
            stage = base / stage
        spec, _ = load_stage_spec(stage, f"DAG {dag.dag_id}: {PARAM}[{i}]", dag)
        group_id = declaration.get("group_id") or spec.stage_id
        if group_id in existing:
            continue  # already inserted: Airflow may apply the policy to the same DAG object twice
        chaos = insert_chaos(dag, after=declaration["after"], before=declaration.get("before"), stage=stage,
                             model=declaration.get("model"), version=declaration.get("version"), group_id=group_id)
        inserted.append(chaos.group_id)
    return inserted


@hookimpl
def dag_policy(dag: Any) -> None:
    if os.environ.get("MLCHAOS_AIRFLOW_POLICY", "1") == "0":
        return
    if PARAM in dag.params or TAG in (dag.tags or set()):
        apply_declared_chaos(dag)
