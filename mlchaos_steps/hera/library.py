"""The templates, rendered with Hera: the ``mlchaos-steps`` WorkflowTemplate and the janitor CronWorkflow.

``chaos-stage`` is a DAG: ``snapshot -> inject -> verify``, and ``restore`` once snapshot succeeded,
whatever verify did. Its ``target`` is ``verify restore`` and ``failFast`` is off, so a failed verify
still fails the stage (with restore as its only leaf, Argo would call a failed verify Succeeded) and
restore is never cut short. Each phase is a container running ``mlchaos run --phase`` from the step
image; all four share the run key ``{{workflow.uid}}/{{node.name}}`` of the stage node, stable across
retries, and the MLflow ledger (phases run in separate pods). The tracking URI comes from the
``mlchaos-steps`` ConfigMap, credentials from the Secret of that name: never from parameters.
"""

from __future__ import annotations

from typing import Any

from hera.workflows import (
    DAG,
    ConfigMapEnvFrom,
    Container,
    CronWorkflow,
    EmptyDirVolume,
    Env,
    Parameter,
    RawArtifact,
    RetryStrategy,
    SecretEnvFrom,
    Step,
    Steps,
    Task,
    WorkflowTemplate,
)
from hera.workflows import models as m

from mlchaos_steps.argo.library import (
    CONFIG,
    DEFAULT_IMAGE,
    GATE_TEMPLATE,
    JANITOR,
    LIBRARY,
    RESTORE_ORPHANED_TEMPLATE,
    RESTORE_RUN_TEMPLATE,
    RESULT_FILE,
    RUN_KEY,
    SERVICE_ACCOUNT,
    STAGE_FILE,
    STAGE_TEMPLATE,
)

# A retry never injects twice (the ledger keys every action by run key), but only infrastructure errors
# (a pod evicted, a node lost) are worth retrying: a refused or failed phase fails the same way again.
RETRIES: dict[str, RetryStrategy | None] = {
    "snapshot": RetryStrategy(limit=2, retry_policy="OnError"),
    "inject": RetryStrategy(limit=2, retry_policy="OnError"),
    "verify": None,  # a verdict is earned once
    "restore": RetryStrategy(limit=5, retry_policy="Always", backoff=m.Backoff(duration="5s", factor=2)),
}
_STAGE_INPUTS = ("stage", "model", "version", "lock")
_RESTORE_WHEN = "snapshot.Succeeded && (verify.Succeeded || verify.Failed || verify.Errored || verify.Omitted)"


def _container(name: str, image: str, args: list[str], inputs: list[Any], outputs: list[Any] | None = None,
               retry: RetryStrategy | None = None) -> Container:
    """A step container: the ``mlchaos`` CLI, non-root, read-only root, a memory ``/tmp``, the MLflow
    ledger, its configuration from the ConfigMap and Secret ``mlchaos-steps``."""
    return Container(
        name=name, image=image, command=["mlchaos"], args=args, inputs=inputs, outputs=outputs or [],
        retry_strategy=retry, service_account_name=SERVICE_ACCOUNT,
        env=[Env(name="MLCHAOS_LEDGER", value="mlflow"), Env(name="MLCHAOS_HOME", value="/tmp/mlchaos")],
        env_from=[ConfigMapEnvFrom(name=CONFIG), SecretEnvFrom(name=CONFIG, optional=True)],
        volumes=[EmptyDirVolume(name="tmp", mount_path="/tmp", medium="Memory")],
        security_context=m.SecurityContext(run_as_non_root=True, read_only_root_filesystem=True,
                                           allow_privilege_escalation=False,
                                           capabilities=m.Capabilities(drop=["ALL"])),
    )


def _result() -> Parameter:
    return Parameter(name="result", value_from=m.ValueFrom(path=RESULT_FILE, default="{}"))


def phase_template(phase: str, image: str = DEFAULT_IMAGE) -> Container:
    """``mlchaos-<phase>``: one phase of a stage; the stage document arrives as a raw artifact."""
    return _container(
        f"mlchaos-{phase}", image,
        ["run", STAGE_FILE, "--phase", phase, "--run-key", "{{inputs.parameters.run-key}}",
         "--model", "{{inputs.parameters.model}}", "--version", "{{inputs.parameters.version}}",
         "--json", "--result-file", RESULT_FILE],
        inputs=[Parameter(name="stage"), Parameter(name="run-key"), Parameter(name="model", default=""),
                Parameter(name="version", default=""),
                RawArtifact(name="stage", path=STAGE_FILE, data="{{inputs.parameters.stage}}")],
        outputs=[_result()], retry=RETRIES[phase])


def stage_template() -> DAG:
    """``chaos-stage``: the four phases wired so that restore always runs and a failed verify fails."""
    passed = {name: f"{{{{inputs.parameters.{name}}}}}" for name in ("stage", "model", "version")}
    args = {**passed, "run-key": RUN_KEY}
    with DAG(name=STAGE_TEMPLATE, target="verify restore", fail_fast=False,
             inputs=[Parameter(name="stage", description="the stage document (YAML)"),
                     Parameter(name="model", default="", description="registered model that gets the verdict"),
                     Parameter(name="version", default="", description="its version number or @alias"),
                     Parameter(name="lock", default="mlchaos-stage",
                               description="mutex name: two workflows never break the same target at once")],
             outputs=[Parameter(name="verdict", value_from=m.ValueFrom(
                 parameter="{{tasks.verify.outputs.parameters.result}}"))],
             synchronization=m.Synchronization(mutexes=[m.Mutex(name="{{inputs.parameters.lock}}")])) as dag:
        snapshot = Task(name="snapshot", template="mlchaos-snapshot", arguments=args)
        inject = Task(name="inject", template="mlchaos-inject", arguments=args)
        verify = Task(name="verify", template="mlchaos-verify", arguments=args)
        Task(name="restore", template="mlchaos-restore", arguments=args, depends=_RESTORE_WHEN)
        snapshot >> inject >> verify
    return dag


def gate_template(image: str = DEFAULT_IMAGE) -> Container:
    """``gate``: move the alias only when every required stage passed on this version."""
    return _container(
        GATE_TEMPLATE, image,
        ["gate", "--model", "{{inputs.parameters.model}}", "--version", "{{inputs.parameters.version}}",
         "--require", "{{inputs.parameters.require}}", "--alias", "{{inputs.parameters.alias}}", "--json",
         "--result-file", RESULT_FILE],
        inputs=[Parameter(name="model"), Parameter(name="version"), Parameter(name="require"),
                Parameter(name="alias", default="champion")],
        outputs=[_result()])


def restore_run_template(image: str = DEFAULT_IMAGE) -> Container:
    """``restore-run``: the exit hook of a stage task (runs on ``argo stop`` too); idempotent."""
    return _container(RESTORE_RUN_TEMPLATE, image,
                      ["restore", "--run-key", "{{inputs.parameters.run-key}}", "--json",
                       "--result-file", RESULT_FILE],
                      inputs=[Parameter(name="run-key")], outputs=[_result()], retry=RETRIES["restore"])


def restore_orphaned_template(image: str = DEFAULT_IMAGE) -> Container:
    """``restore-orphaned``: every run a crash or ``argo terminate`` left unrestored."""
    return _container(RESTORE_ORPHANED_TEMPLATE, image,
                      ["restore", "--orphaned", "--older-than", "{{inputs.parameters.older-than}}", "--json",
                       "--result-file", RESULT_FILE],
                      inputs=[Parameter(name="older-than", default="3600")], outputs=[_result()])


def templates(image: str = DEFAULT_IMAGE) -> list[Any]:
    """Every template of the library, for a WorkflowTemplate or inline in one workflow."""
    return [stage_template(), *(phase_template(p, image) for p in ("snapshot", "inject", "verify", "restore")),
            gate_template(image), restore_run_template(image), restore_orphaned_template(image)]


def library(image: str = DEFAULT_IMAGE, namespace: str | None = None) -> WorkflowTemplate:
    """The ``mlchaos-steps`` WorkflowTemplate a cluster installs once; workflows call it by templateRef."""
    workflow = WorkflowTemplate(name=LIBRARY, namespace=namespace,
                                labels={"app.kubernetes.io/part-of": "mlchaos-steps"})
    workflow.templates.extend(templates(image))
    return workflow


def janitor(schedule: str = "*/15 * * * *", older_than_s: int = 3600, namespace: str | None = None) -> CronWorkflow:
    """The CronWorkflow that runs ``mlchaos restore --orphaned``: nothing else runs on ``argo terminate``."""
    with CronWorkflow(name=JANITOR, namespace=namespace, schedules=[schedule], concurrency_policy="Forbid",
                      starting_deadline_seconds=300, entrypoint="janitor",
                      labels={"app.kubernetes.io/part-of": "mlchaos-steps"}) as cron:
        with Steps(name="janitor"):
            Step(name="restore-orphaned", template_ref=m.TemplateRef(name=LIBRARY, template=RESTORE_ORPHANED_TEMPLATE),
                 arguments={"older-than": str(older_than_s)})
    return cron


def render_library(image: str = DEFAULT_IMAGE) -> str:
    """The library and the janitor as one YAML file (what ``mlchaos-steps.yaml`` holds)."""
    return library(image).to_yaml() + "---\n" + janitor().to_yaml()
