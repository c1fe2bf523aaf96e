"""``ChaosStage``: the unit users hold in a DAG.

``train >> ChaosStage(stage="stages/wipe.yaml") >> evaluate`` builds, inside one task group:
``snapshot`` (a setup task) >> ``inject`` >> ``verify`` >> ``restore`` (the teardown of snapshot), so
restore always runs once snapshot succeeded. Downstream tasks hang off ``verify`` and ``restore``: a
failed or inconclusive verdict makes them ``upstream_failed`` and the DAG run fails, and they never
start before the system is put back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk import TaskGroup

from mlchaos_steps.airflow.operators import ChaosPhaseOperator, ChaosVerifyOperator
from mlchaos_steps.errors import SpecError
from mlchaos_steps.stages import StageSpec, load_stages, parse_stage


def load_stage_spec(stage: StageSpec | dict[str, Any] | str | Path, where: str) -> StageSpec:
    """A spec object, a ``{kind, spec}`` mapping, or a path to a stage file holding exactly one stage."""
    try:
        if isinstance(stage, (str, Path)):
            stages = load_stages(stage)
            if len(stages) != 1:
                raise SpecError(str(stage), f"holds {len(stages)} stages: give a ChaosStage one stage file each")
            return stages[0]
        return parse_stage(stage)
    except SpecError as exc:
        # raised while the DAG file is parsed: an import error in the Airflow UI naming DAG and field
        raise SpecError(exc.field, f"{where}: {str(exc)}") from None


class ChaosStage(TaskGroup):
    """A chaos stage as a task group of four tasks; ``model``/``version`` (templated) get the verdict.

    Example::

        with DAG("retrain", schedule=None):
            train >> ChaosStage(stage="stages/wipe.yaml", model="churn",
                                version="{{ ti.xcom_pull(task_ids='register') }}") >> evaluate
    """

    def __init__(self, stage: StageSpec | dict[str, Any] | str | Path, *, model: str | None = None,
                 version: str | None = None, group_id: str | None = None, mlflow_conn_id: str | None = None,
                 **kwargs: Any):
        dag = kwargs.get("dag")
        spec = load_stage_spec(stage, f"DAG {getattr(dag, 'dag_id', '?')}: ChaosStage {group_id or ''}".rstrip())
        super().__init__(group_id=group_id or spec.stage_id, tooltip=spec.describe(), **kwargs)
        self.spec = spec
        document = spec.document()
        common = {"stage_document": document, "stage_key": self.group_id, "model": model, "version": version,
                  "mlflow_conn_id": mlflow_conn_id, "task_group": self}
        if "dag" in kwargs:
            common["dag"] = kwargs["dag"]
        self.snapshot = ChaosPhaseOperator(task_id="snapshot", phase="snapshot", **common).as_setup()
        self.inject = ChaosPhaseOperator(task_id="inject", phase="inject", **common)
        self.verify = ChaosVerifyOperator(task_id="verify", retries=0, **common)
        self.restore = ChaosPhaseOperator(task_id="restore", phase="restore", **common)
        self.snapshot >> self.inject >> self.verify >> self.restore
        self.restore.as_teardown(setups=self.snapshot)

    def get_leaves(self) -> Any:
        """Downstream tasks wait for the verdict and for the system to be restored (a promotion must not
        see the artifacts still missing, an evaluation must not see the checkpoint still damaged)."""
        yield self.verify
        yield self.restore
