"""``insert_chaos``: put a chaos stage into a DAG that already exists, at parse time.

Between two tasks (``after`` >> stage >> ``before``), or after a task with its downstream re-wired
through the stage. The DAG stays valid (no cycles, unique ids, setup/teardown rules), and insertion
is deterministic, since the scheduler only sees the serialized DAG and workers re-parse the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlchaos_steps.airflow.task_group import ChaosStage, load_stage_spec
from mlchaos_steps.errors import SpecError
from mlchaos_steps.stages import StageSpec


def _endpoints(dag: Any, node_id: str, field: str, leaves: bool) -> list[Any]:
    """The tasks standing for a task id or a task group id."""
    if node_id in dag.task_dict:
        return [dag.task_dict[node_id]]
    groups = dag.task_group.get_task_group_dict()
    if node_id in groups:
        group = groups[node_id]
        return list(group.get_leaves() if leaves else group.get_roots())
    raise SpecError(f"DAG {dag.dag_id}: insert_chaos {field}",
                    f"no task or task group {node_id!r}: use one of {', '.join(sorted(dag.task_dict)[:20])}")


def _unlink(upstream: Any, downstream: Any) -> None:
    upstream.downstream_task_ids.discard(downstream.task_id)
    downstream.upstream_task_ids.discard(upstream.task_id)


def insert_chaos(dag: Any, after: str, stage: StageSpec | dict[str, Any] | str | Path, *, before: str | None = None,
                 model: str | None = None, version: str | None = None, group_id: str | None = None,
                 mlflow_conn_id: str | None = None) -> ChaosStage:
    """Insert a ChaosStage after ``after`` (and before ``before``). Errors name the DAG, task and field.

    Example::

        from dags.plain_training import dag
        insert_chaos(dag, after="train", before="evaluate", stage=STAGES / "checkpoint_wipe.yaml")
    """
    where = f"DAG {dag.dag_id}: insert_chaos"
    spec, _ = load_stage_spec(stage, where, dag)
    sources = _endpoints(dag, after, "after", leaves=True)
    if before is not None:
        targets = _endpoints(dag, before, "before", leaves=False)
        edges = [(s, t) for s in sources for t in targets if t.task_id in s.downstream_task_ids]
        if not edges:
            raise SpecError(f"{where} before", f"{before!r} is not directly downstream of {after!r}: pick two tasks "
                                               "joined by an edge, or leave before out")
    else:
        # Re-wire everything downstream through the stage, except teardowns, which stay with their setups.
        edges = [(s, dag.task_dict[d]) for s in sources for d in sorted(s.downstream_task_ids)
                 if not dag.task_dict[d].is_teardown]
    gid = group_id or spec.stage_id
    if gid in dag.task_group.get_task_group_dict() or any(t.startswith(f"{gid}.") for t in dag.task_dict):
        raise SpecError(f"{where} group_id", f"{gid!r} is already used in the DAG: pass another group_id")
    chaos = ChaosStage(stage, model=model, version=version, group_id=gid, mlflow_conn_id=mlflow_conn_id, dag=dag)
    for source in sources:
        source >> chaos
    for source, target in edges:
        _unlink(source, target)
        chaos >> target
    dag.check_cycle()
    dag.validate()
    return chaos
