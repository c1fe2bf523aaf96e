"""``mlchaos demo``: all four stages and the promotion gate against real workloads on this machine.

Healthy (default): a trainer that resumes from its newest intact checkpoint, a uvicorn server that
respawns workers, a scikit-learn model whose loss of artifacts is detected, and a canary router whose
analysis aborts a failing canary. Every stage passes and the gate promotes the candidate to
``@champion``. ``--broken``: a trainer that trusts a damaged checkpoint, a server that never respawns,
a model that silently loads without its weights, and a router with no analysis: every stage fails
and the gate refuses. Either way everything is restored.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mlchaos_steps.engine import restore_run, run_stage
from mlchaos_steps.engine.ledger import RESTORED, default_ledger
from mlchaos_steps.engine.phases import StageOutcome, new_run_key
from mlchaos_steps.examples import workloads
from mlchaos_steps.stages import parse_stage

STAGES = ["checkpoint-wipe", "pod-delete", "registry-artifact-removal", "canary-failure"]


def run_demo(broken: bool = False, workdir: str | None = None) -> int:
    from mlchaos_steps.examples.models import SAMPLE_INPUT, register_silent_fallback, register_sklearn
    from mlchaos_steps.gate import promote
    from mlchaos_steps.targets.mlflow import client, tracking_uri

    console = Console()
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mlchaos-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    store = root / "checkpoints"
    shutil.rmtree(store, ignore_errors=True)
    label = "broken" if broken else "healthy"
    console.print(f"[bold]mlchaos demo[/] ({label} workloads) in {root}; MLflow at {tracking_uri()}")

    console.print("training the example model: 500 steps, a checkpoint every 100 ...")
    workloads.train(store)
    model = f"demo-churn-{uuid.uuid4().hex[:6]}"
    console.print(f"registering {model}: v1 as @champion, v2 as @challenger (the candidate) ...")
    champion = register_sklearn(model)
    candidate = register_silent_fallback(model, root) if broken else register_sklearn(model)
    client().set_registered_model_alias(model, "champion", champion)
    client().set_registered_model_alias(model, "challenger", candidate)

    console.print("starting a 2-worker server, the stable and canary model servers and the canary router ...")
    server = workloads.start_server(healthy=not broken, log_path=root / "server.log")
    stable = workloads.start_model_server(f"models:/{model}@champion", log_path=root / "stable.log")
    canary = workloads.start_model_server(f"models:/{model}@challenger", log_path=root / "canary.log")
    router = workloads.start_router(stable.url, canary.url, canary_weight=30, rollback=not broken,
                                    analysis={"interval_s": 0.5, "count": 10_000}, model=model, version=candidate,
                                    log_path=root / "router.log")
    outcomes: list[StageOutcome] = []
    try:
        stages = [
            parse_stage({"kind": "CheckpointWipe", "spec": {
                "store": store.as_uri(), "pattern": r"step-(\d+)", "mode": "corrupt-latest", "count": 1,
                "resume": {"command": workloads.resume_command(store, broken=broken), "max_lost_steps": 200}}}),
            parse_stage({"kind": "PodDelete", "spec": {
                "target": {"local": {"selector": server.selector}}, "count": 1, "signal": "SIGKILL",
                "recovery_slo_s": 5 if broken else 30,
                "probe": {"http": {"url": server.url + "/ping", "min_success_ratio": 0.95}}}}),
            parse_stage({"kind": "RegistryArtifactRemoval", "spec": {
                "model": model, "version": "@challenger", "scope": "weights", "expect": "detected"}}),
            parse_stage({"kind": "CanaryFailure", "spec": {
                "model": model, "candidate": "@challenger", "router": {"url": router.url}, "fault": "errors",
                "rollback_within_s": 5 if broken else 20, "stable": {"min_success_ratio": 0.99},
                "traffic": {"sample": SAMPLE_INPUT}}}),
        ]
        key = new_run_key().replace("adhoc", "demo")
        for stage in stages:
            console.print(f"running {stage.stage_id}: {stage.describe()} ...")
            outcomes.append(run_stage(stage, f"{key}.{stage.stage_id}", model=model, version=candidate))
            if not outcomes[-1].restored and stage.stage_id == "pod-delete":
                # Nobody respawned the killed worker, so restore kept the run open. Do what an operator
                # would: restart the workload, then restore again.
                console.print("[yellow]restore found a worker missing and kept the run open[/]; restarting the "
                              "server as an operator would, then restoring again ...")
                server.stop()
                server = workloads.start_server(healthy=not broken, log_path=root / "server.log",
                                                label=server.app_label, port=server.port)
                restore_run(outcomes[-1].run_key)
    finally:
        for process in (router, canary, stable, server):
            process.stop()

    console.print(f"gate: promote {model} v{candidate} to @champion if {', '.join(STAGES)} passed ...")
    decision = promote(model, candidate, STAGES)

    table = Table(title=f"verdicts on {model} v{candidate} ({label} workloads)")
    for column in ("stage", "verdict", "why", "restored"):
        table.add_column(column, overflow="fold")
    ledger = default_ledger()
    for outcome in outcomes:
        style = {"passed": "green", "failed": "red"}.get(outcome.verdict.status, "yellow")
        execution = ledger.get(outcome.run_key)
        restored = "yes" if outcome.restored else "after the operator restarted it" if (
            execution and execution.status == RESTORED) else f"NO: {outcome.restore_error}"
        table.add_row(outcome.stage_id, f"[{style}]{outcome.verdict.status}[/]", outcome.verdict.reason, restored)
    console.print(table)
    colour = "green" if decision.promoted else "red"
    console.print(f"promotion gate: [{colour}]{'promoted' if decision.promoted else 'blocked'}[/] — {decision.reason}")

    all_restored = all((e := ledger.get(o.run_key)) is not None and e.status == RESTORED for o in outcomes)
    expected = "failed" if broken else "passed"
    as_expected = all(o.verdict.status == expected for o in outcomes) and decision.promoted is not broken
    restored_text = "everything restored" if all_restored else "[red]NOT all restored[/]"
    console.print(f"ledger {ledger.location}: {restored_text}")
    uri = tracking_uri()
    ui = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else f"open {uri}"
    console.print(f"next: `{ui}` shows the tags on {model} v{candidate} and the evidence runs in experiment "
                  "'mlchaos'; `mlchaos ledger` lists every run; "
                  + ("`mlchaos demo` runs the healthy workloads." if broken else
                     "`mlchaos demo --broken` runs broken workloads, where every stage fails and the gate refuses."))
    if os.environ.get("MLCHAOS_DEMO_KEEP") != "1" and not workdir:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if all_restored and as_expected else 1
