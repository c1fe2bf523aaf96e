"""Run DAGs locally with ``dag.test()`` on a SQLite metadata database (the demo and the tests).

Airflow >= 3.1 only runs a DAG that is serialized in the metadata database, so ``run_dag`` first
syncs it through a DagBag into a local bundle.
"""

from __future__ import annotations

import os
from typing import Any

from mlchaos_steps.config import configure_airflow_home

BUNDLE = "mlchaos-local"

__all__ = ["BUNDLE", "configure_airflow_home", "load_dags", "migrate", "run_dag", "task_states"]


def load_dags(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Every DAG of a folder, loaded by one DagBag as Airflow's DAG processor would; an import error in
    any file is raised, naming the file."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(folder), safe_mode=False)
    if bag.import_errors:
        path, error = sorted(bag.import_errors.items())[0]
        raise RuntimeError(f"{path} does not import: {error}")
    return dict(bag.dags)


def migrate(reset: bool = False) -> None:
    """Create (or, with ``reset``, recreate) the metadata database."""
    from airflow.utils import db

    if reset:
        db.resetdb()
    else:
        db.initdb()


def run_dag(dag: Any, run_conf: dict[str, Any] | None = None) -> Any:
    """Serialize the DAG, then ``dag.test()`` it; returns the DagRun."""
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.dagbundle import DagBundleModel
    from airflow.utils.session import create_session

    with create_session() as session:
        if session.get(DagBundleModel, BUNDLE) is None:
            session.add(DagBundleModel(name=BUNDLE))
    bag = DagBag(dag_folder=os.devnull)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, bundle_name=BUNDLE, bundle_version=None)
    return dag.test(run_conf=run_conf)


def task_states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
