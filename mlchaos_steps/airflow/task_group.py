"""``ChaosStage``: the unit users hold in a DAG.

``train >> ChaosStage(stage=STAGES / "checkpoint_wipe.yaml") >> evaluate`` builds, inside one task group:
``snapshot`` (a setup task) >> ``inject`` >> ``verify`` >> ``restore`` (the teardown of snapshot), so
restore always runs once snapshot succeeded. Downstream tasks hang off ``verify`` and ``restore``: a
failed or inconclusive verdict makes them ``upstream_failed`` and the DAG run fails, and they never
start before the system is put back.

A stage file may use Jinja, as any Airflow template does (``"file://{{ params.workdir }}/ckpts"``): it is
rendered in each task with the task's context, so DAG params and run conf reach it. While the DAG is
built, it is rendered with the DAG's param defaults and user macros and validated, so a wrong field
still fails the DAG import, not the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk import TaskGroup

from mlchaos_steps.airflow.operators import ChaosPhaseOperator, ChaosVerifyOperator
from mlchaos_steps.errors import SpecError
from mlchaos_steps.stages import StageSpec, parse_stage
from mlchaos_steps.stages.documents import read_documents


def load_stage_spec(stage: StageSpec | dict[str, Any] | str | Path, where: str, dag: Any = None
                    ) -> tuple[StageSpec, dict[str, Any]]:
    """A spec object, a ``{kind, spec}`` mapping, or a path to a stage file holding exactly one stage:
    the spec validated (templates rendered with ``dag``'s defaults) and the document the tasks render."""
    try:
        if isinstance(stage, StageSpec):
            return stage, stage.document()
        source = ""
        if isinstance(stage, (str, Path)):
            documents = read_documents(Path(stage))
            if len(documents) != 1:
                raise SpecError(str(stage), f"holds {len(documents)} stages: give a ChaosStage one stage file each")
            stage, source = documents[0], str(stage)
        if not templated(stage):
            spec = parse_stage(stage, source)
            return spec, spec.document()
        return parse_stage(render_defaults(stage, dag, source), source), stage
    except SpecError as exc:
        # raised while the DAG file is parsed: an import error in the Airflow UI naming DAG and field
        raise SpecError(exc.field, f"{where}: {str(exc)}") from None


def templated(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, dict):
        return any(templated(v) for v in value.values())
    if isinstance(value, list):
        return any(templated(v) for v in value)
    return False


def render_defaults(document: Any, dag: Any, source: str) -> Any:
    """Render a templated stage document the way its tasks will, with the DAG's param defaults."""
    import jinja2

    params = {key: dag.params[key] for key in dag.params} if dag is not None else {}
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701 (YAML, not HTML)
    values = {"params": params, "dag": dag, **(getattr(dag, "user_defined_macros", None) or {})}

    def render(value: Any) -> Any:
        if isinstance(value, str) and templated(value):
            try:
                return env.from_string(value).render(values)
            except jinja2.TemplateError as exc:
                raise SpecError(source or "stage", f"template {value!r}: {exc} (while the DAG is built, templates "
                                                   "see `params` with their defaults, `dag` and the DAG's user macros)"
                                ) from None
        if isinstance(value, dict):
            return {k: render(v) for k, v in value.items()}
        if isinstance(value, list):
            return [render(v) for v in value]
        return value

    return render(document)


class ChaosStage(TaskGroup):
    """A chaos stage as a task group of four tasks; ``model``/``version`` (templated) get the verdict.

    Example::

        with DAG("retrain", schedule=None):
            train >> ChaosStage(stage="stages/wipe.yaml", model="churn",
                                version="{{ ti.xcom_pull(task_ids='register') }}") >> evaluate
    """

    def __init__(self, stage: StageSpec | dict[str, Any] | str | Path, *, model: str | None = None,
                 version: str | None = None, group_id: str | None = None, mlflow_conn_id: str | None = None,
                 kubernetes_conn_id: str | None = None, **kwargs: Any):
        # imported here: the provider entry point loads this module while Airflow's configuration loads
        from airflow.sdk.definitions._internal.contextmanager import DagContext

        dag = kwargs.get("dag") or DagContext.get_current()
        spec, document = load_stage_spec(
            stage, f"DAG {getattr(dag, 'dag_id', '?')}: ChaosStage {group_id or ''}".rstrip(), dag)
        super().__init__(group_id=group_id or spec.stage_id, tooltip=spec.describe(), **kwargs)
        self.spec = spec
        common = {"stage_document": document, "stage_key": self.group_id, "model": model, "version": version,
                  "mlflow_conn_id": mlflow_conn_id, "kubernetes_conn_id": kubernetes_conn_id, "task_group": self}
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
