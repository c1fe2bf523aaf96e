"""``mlchaos demo``: the stages against real example workloads on this machine.

Trains the example model with checkpoints, starts a 2-worker server, runs checkpoint-wipe and
pod-delete, prints the verdicts and shows the ledger with everything restored. ``--broken`` runs the
same stages against the deliberately broken trainer and server, where both must fail.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mlchaos_steps.engine import restore_run, run_stage
from mlchaos_steps.engine.ledger import RESTORED, default_ledger
from mlchaos_steps.engine.phases import StageOutcome, new_run_key
from mlchaos_steps.examples import workloads
from mlchaos_steps.stages import parse_stage


def run_demo(broken: bool = False, workdir: str | None = None) -> int:
    console = Console()
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mlchaos-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    store = root / "checkpoints"
    shutil.rmtree(store, ignore_errors=True)
    label = "broken" if broken else "healthy"
    console.print(f"[bold]mlchaos demo[/] ({label} workloads) in {root}")

    console.print("training the example model: 500 steps, a checkpoint every 100 ...")
    workloads.train(store)
    console.print("starting a 2-worker model server on 127.0.0.1 ...")
    server = workloads.start_server(healthy=not broken, log_path=root / "server.log")
    outcomes: list[StageOutcome] = []
    try:
        stages = [
            parse_stage({"kind": "CheckpointWipe", "spec": {
                "store": store.as_uri(), "pattern": r"step-(\d+)", "mode": "corrupt-latest", "count": 1,
                "resume": {"command": workloads.resume_command(store, broken=broken), "max_lost_steps": 200},
            }}),
            parse_stage({"kind": "PodDelete", "spec": {
                "target": {"local": {"selector": server.selector}}, "count": 1, "signal": "SIGKILL",
                "recovery_slo_s": 5 if broken else 30,
                "probe": {"http": {"url": server.url + "/ping", "min_success_ratio": 0.95}},
            }}),
        ]
        key = new_run_key().replace("adhoc", "demo")
        for stage in stages:
            console.print(f"running {stage.stage_id}: {stage.describe()} ...")
            outcomes.append(run_stage(stage, f"{key}.{stage.stage_id}"))
        if not outcomes[-1].restored:
            # Nobody respawned the killed worker, so restore kept the run open. Do what an operator
            # would: restart the workload, then restore again.
            console.print("[yellow]restore found a worker missing and kept the run open[/]; restarting the "
                          "server as an operator would, then restoring again ...")
            server.stop()
            server = workloads.start_server(healthy=not broken, log_path=root / "server.log",
                                            label=server.app_label, port=server.port)
            restore_run(outcomes[-1].run_key)
    finally:
        server.stop()

    table = Table(title=f"verdicts ({label} workloads)")
    for column in ("stage", "verdict", "why", "restored"):
        table.add_column(column, overflow="fold")
    for outcome in outcomes:
        style = {"passed": "green", "failed": "red"}.get(outcome.verdict.status, "yellow")
        execution = default_ledger().get(outcome.run_key)
        restored = "yes" if outcome.restored else "after the operator restarted it" if (
            execution and execution.status == RESTORED) else f"NO: {outcome.restore_error}"
        table.add_row(outcome.stage_id, f"[{style}]{outcome.verdict.status}[/]", outcome.verdict.reason, restored)
    console.print(table)

    ledger = default_ledger()
    mine = [ledger.get(o.run_key) for o in outcomes]
    all_restored = all(e is not None and e.status == RESTORED for e in mine)
    expected = "failed" if broken else "passed"
    as_expected = all(o.verdict.status == expected for o in outcomes)
    console.print(f"ledger {ledger.path}: " + ("everything restored" if all_restored else "[red]NOT all restored[/]"))
    for outcome in outcomes:
        console.print(f"  journal ({outcome.stage_id}): {outcome.journal}")
    if broken:
        console.print("the broken trainer trusts a damaged checkpoint and the broken server never replaces a "
                      "dead worker: both stages must fail, and they " + ("did." if as_expected else "did NOT."))
    else:
        console.print("next: `mlchaos demo --broken` runs the same stages against broken workloads; "
                      "`mlchaos ledger` lists every run.")
    return 0 if all_restored and as_expected else 1
