"""Airflow operators over the engine: one per phase, and the promotion gate.

Thin adapters: no fault logic lives here. Heavy imports (the engine's MLflow parts, chaoslib) happen
inside ``execute``; building these operators at DAG-parse time validates the stage spec and nothing else.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, BaseOperatorLink
from airflow.sdk.exceptions import AirflowFailException

from mlchaos_steps.redaction import redact_text

PHASES = ("snapshot", "inject", "verify", "restore")
ON_KILL_WAIT_S = 10.0  # on_kill must return: it waits this long for the run key, then leaves it to the janitor


class MlflowRunLink(BaseOperatorLink):
    """Opens the MLflow run that holds the stage's evidence (pushed by the verify task)."""

    name = "MLflow run"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return str(XCom.get_value(ti_key=ti_key, key=self.xcom_key) or "")


class ScorecardLink(BaseOperatorLink):
    """Opens the resilience scorecard of the verdict's model, written by the verify task
    (``MLCHAOS_REPORT_BASE_URL``/<file> when the reports folder is served, else a file:// URL)."""

    name = "Resilience scorecard"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return str(XCom.get_value(ti_key=ti_key, key=self.xcom_key) or "")


def scorecard_url(model: str | None) -> str:
    """Write the scorecard of ``model`` under ``MLCHAOS_HOME/reports`` and return where to open it."""
    from mlchaos_steps.config import home
    from mlchaos_steps.ledgers import default_ledger
    from mlchaos_steps.telemetry.scorecard import write_report

    name = f"{re.sub(r'[^A-Za-z0-9._-]', '_', model or 'all-models')}.html"
    path = home() / "reports" / name
    write_report(default_ledger(), path, home(), model)
    base = os.environ.get("MLCHAOS_REPORT_BASE_URL")
    return f"{base.rstrip('/')}/{name}" if base else path.as_uri()


def mlflow_run_url(run_id: str) -> str:
    from mlchaos_steps.targets.mlflow import client, tracking_uri

    base = os.environ.get("MLCHAOS_MLFLOW_UI_URL") or (
        tracking_uri() if tracking_uri().startswith("http") else "http://127.0.0.1:5000")
    experiment = client().get_run(run_id).info.experiment_id
    return f"{base.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"


def _use_connection(conn_id: str | None, kubernetes_conn_id: str | None = None) -> None:
    """Point MLflow at an Airflow ``mlflow`` connection, and the Kubernetes stages at a ``kubernetes``
    connection, when they are named."""
    if conn_id:
        from mlchaos_steps.airflow.hooks import MlflowHook

        MlflowHook(conn_id).configure_environment()
    if kubernetes_conn_id:
        from mlchaos_steps.airflow.hooks import KubernetesConnection

        KubernetesConnection(kubernetes_conn_id).configure_environment()


class ChaosPhaseOperator(BaseOperator):
    """Runs one phase of a chaos stage. The run key is ``<dag_id>/<run_id>/<stage group>``, so retries
    of any task reuse it and never inject twice.

    ``verify`` fails the task (no retry) when the verdict is ``failed`` or ``inconclusive``.
    """

    template_fields: Sequence[str] = ("stage_document", "model", "version")
    ui_color = "#fbe3e4"

    def __init__(self, *, stage_document: dict[str, Any], phase: str, stage_key: str, model: str | None = None,
                 version: str | None = None, mlflow_conn_id: str | None = None,
                 kubernetes_conn_id: str | None = None, **kwargs: Any):
        if phase not in PHASES:
            raise ValueError(f"phase {phase!r}: use one of {', '.join(PHASES)}")
        super().__init__(**kwargs)
        self.stage_document, self.phase, self.stage_key = stage_document, phase, stage_key
        self.model, self.version, self.mlflow_conn_id = model, version, mlflow_conn_id
        self.kubernetes_conn_id = kubernetes_conn_id
        self._run_key: str | None = None

    def run_key(self, context: Any) -> str:
        return f"{context['dag'].dag_id}/{context['run_id']}/{self.stage_key}"

    def execute(self, context: Any) -> Any:
        try:
            return self._execute(context)
        finally:  # the task ends only once its spans and metrics are sent (at most 1 s)
            if "mlchaos_steps.telemetry.observer" in sys.modules:
                sys.modules["mlchaos_steps.telemetry.observer"].flush()

    def _execute(self, context: Any) -> Any:
        from mlchaos_steps.api import restore_run, run_phase, wait_for_removals
        from mlchaos_steps.errors import MlchaosError
        from mlchaos_steps.stages import parse_stage

        _use_connection(self.mlflow_conn_id, self.kubernetes_conn_id)
        self._run_key = key = self.run_key(context)
        if self.phase == "restore":
            try:
                return restore_run(key)
            except MlchaosError as exc:
                raise AirflowFailException(redact_text(str(exc))) from exc
            finally:
                wait_for_removals()  # the damaged copies restore set aside, before the task ends
        stage = parse_stage(self.stage_document)
        try:
            result = run_phase(stage, self.phase, key, model=self.model or None, version=self.version or None)  # type: ignore[arg-type]
        except MlchaosError as exc:
            raise AirflowFailException(redact_text(f"{self.phase} of {stage.stage_id}: {exc}")) from exc
        self.log.info("%s of run %s: trace id %s", self.phase, key, result.trace_id)
        if self.phase != "verify":
            return {"status": result.status, "run_key": key, "trace_id": result.trace_id}
        verdict = result.verdict
        assert verdict is not None
        from mlchaos_steps.ledgers import default_ledger

        execution = default_ledger().get(key)
        run_id = execution.evidence_run_id if execution else None
        if run_id:
            try:
                context["ti"].xcom_push(key=MlflowRunLink().xcom_key, value=mlflow_run_url(run_id))
            except Exception as exc:  # a missing link never changes the verdict
                self.log.warning("no MLflow link: %s", exc)
        target = execution.verdict_target if execution else None
        try:
            report = scorecard_url(target.name if target else None)
            context["ti"].xcom_push(key=ScorecardLink().xcom_key, value=report)
        except Exception as exc:  # a missing report never changes the verdict
            report = None
            self.log.warning("no scorecard: %s", exc)
        summary = {"verdict": verdict.status, "reason": verdict.reason, "metrics": verdict.metrics, "run_key": key,
                   "mlflow_run_id": run_id, "trace_id": result.trace_id, "scorecard": report}
        if verdict.status != "passed":
            raise AirflowFailException(f"{stage.stage_id} verdict {verdict.status}: {verdict.reason}")
        return summary

    def on_kill(self) -> None:
        """Restore what the run broke; never raises: a restore that cannot happen now (the run key is
        busy, a target is down) is logged and left to ``mlchaos restore --orphaned``."""
        if not self._run_key:
            return
        from mlchaos_steps.api import restore_run

        try:
            restore_run(self._run_key, wait_s=ON_KILL_WAIT_S)
        except Exception as exc:
            self.log.error("on_kill could not restore run %s: %s; run `mlchaos restore --orphaned`",
                           self._run_key, redact_text(str(exc)))


class ChaosVerifyOperator(ChaosPhaseOperator):
    """The verify phase, with a link to the MLflow run holding its evidence."""

    operator_extra_links = (MlflowRunLink(), ScorecardLink())
    ui_color = "#f6c1c4"

    def __init__(self, **kwargs: Any):
        super().__init__(phase="verify", **kwargs)


class PromotionGateOperator(BaseOperator):
    """Moves the alias only when every required stage passed on that exact version; fails the task otherwise.

    Example::

        PromotionGateOperator(task_id="gate", model="churn", version="{{ ti.xcom_pull('register') }}",
                              require=["checkpoint-wipe", "registry-artifact-removal"])
    """

    template_fields: Sequence[str] = ("model", "version")
    ui_color = "#e4f0e8"

    def __init__(self, *, model: str, version: str, require: Sequence[str], alias: str = "champion",
                 mlflow_conn_id: str | None = None, **kwargs: Any):
        if not require:
            raise ValueError("require: name at least one stage id the version must have passed")
        super().__init__(**kwargs)
        self.model, self.version, self.require, self.alias = model, version, list(require), alias
        self.mlflow_conn_id = mlflow_conn_id

    def execute(self, context: Any) -> Any:
        from mlchaos_steps.gate import promote

        _use_connection(self.mlflow_conn_id)
        decision = promote(self.model, str(self.version), self.require, alias=self.alias)
        if not decision.promoted:
            raise AirflowFailException(f"promotion blocked: {decision.reason}")
        return {"promoted": True, "version": decision.version, "reason": decision.reason}


def carry_verdicts(context: Any, model: str, version: str, stage_groups: Sequence[str]) -> dict[str, str]:
    """Write the verdicts of ChaosStages that ran earlier in this DAG run onto a model version.

    For stages that run before the version exists (checkpoint-wipe before ``register``): call it from
    the task that registers the model. Returns ``{stage id: verdict}``; a stage without a verdict is
    left out, so the gate sees it missing and blocks.
    """
    from mlchaos_steps.gate.verdicts import carry_verdict
    from mlchaos_steps.ledgers import default_ledger
    from mlchaos_steps.targets.mlflow import ModelRef

    carried = {}
    ledger = default_ledger()
    for group in stage_groups:
        key = f"{context['dag'].dag_id}/{context['run_id']}/{group}"
        execution = ledger.get(key)
        if execution is None or not execution.verdict_detail:
            continue
        carried[execution.stage_id] = carry_verdict(execution, ModelRef(model, str(version)), ledger)
    return carried
