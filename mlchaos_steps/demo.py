"""``mlchaos demo``: the DAG files of ``dags/`` (retraining, deployment, nightly), run by Airflow's ``dag.test()``.

The files are loaded with one DagBag, as Airflow's DAG processor would, and run with their params given
as run conf (the folders, the model, free ports, and ``broken``).

Everything is local: an Airflow home under ``$MLCHAOS_HOME/airflow`` (SQLite, migrated on first use),
the embedded MLflow (unless ``MLFLOW_TRACKING_URI`` is set), real processes for serving. Healthy
(default): every stage passes and both gates promote. ``--broken``: a validator that lets corrupted rows
through, a drift monitor that never fires, a trainer that trusts a damaged checkpoint, a model that loads
without its weights, a server that never respawns and a router with no analysis: the stages fail, the
gates end ``upstream_failed`` and nothing is promoted. Either way
everything is restored.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mlchaos_steps import config
from mlchaos_steps.errors import SpecError
from mlchaos_steps.examples.workloads import free_port_block

STAGE_GROUPS = {
    "retraining_with_chaos": ["data-corruption", "checkpoint-wipe", "registry-artifact-removal"],
    "deployment_with_chaos": ["canary-failure", "pod-delete"],
    "nightly_resilience": ["feature-drift", "checkpoint-wipe", "registry-artifact-removal"],
}
GATED = ("retraining_with_chaos", "deployment_with_chaos")  # nightly_resilience promotes nothing


DAGS = Path(__file__).resolve().parents[1] / "dags"


def run_demo(broken: bool = False, workdir: str | None = None, dags: str | Path | None = None) -> int:
    console = Console()
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mlchaos-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(dags) if dags else DAGS
    if not all((folder / f"{dag_id}.py").is_file() for dag_id in STAGE_GROUPS):
        raise SpecError("--dags", f"{folder} does not hold {' and '.join(STAGE_GROUPS)}: run the demo from a "
                                  "clone of the repository, or give its dags/ folder")
    airflow_home = config.home() / "airflow"
    first_use = not (airflow_home / "airflow.db").exists()
    # Airflow's own task logs (tracebacks of the failing verify tasks included) would drown the summary.
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "CRITICAL")
    config.configure_airflow_home(airflow_home)  # before anything imports airflow
    model = f"demo-churn-{uuid.uuid4().hex[:6]}"
    port = free_port_block()
    # The DAGs' params, as run conf: the same DAG files run for anyone, on any ports and folders.
    conf = {"workdir": str(root), "model": model, "broken": broken, "router_port": port, "serving_port": port + 3}

    from mlchaos_steps.airflow.local_run import load_dags, migrate, run_dag, task_states
    from mlchaos_steps.core.records import ExecutionStatus
    from mlchaos_steps.ledgers import default_ledger
    from mlchaos_steps.targets.mlflow import alias_version, tracking_uri

    label = "broken" if broken else "healthy"
    console.print(f"[bold]mlchaos demo[/] ({label} workloads): DAGs in {folder}, Airflow home {airflow_home}, "
                  f"MLflow {tracking_uri()}, files in {root}")
    if first_use:
        console.print("migrating the Airflow metadata database (first use) ...")
    migrate()
    found = load_dags(folder)

    results: list[dict[str, Any]] = []
    gates: dict[str, str] = {}
    ledger = default_ledger()
    for dag_id, groups in STAGE_GROUPS.items():
        dag = found[dag_id]
        console.print(f"running DAG [bold]{dag_id}[/] ({folder / (dag_id + '.py')}) with dag.test() ...")
        run_conf = {k: v for k, v in conf.items() if k in dag.params}
        run = run_dag(dag, run_conf=run_conf)
        states = task_states(run)
        if dag_id in GATED:
            gates[dag_id] = states.get("gate", "?")
        for group in groups:
            execution = ledger.get(f"{dag_id}/{run.run_id}/{group}")
            detail = execution.verdict_detail if execution else None
            results.append({
                "dag": dag_id, "stage": group,
                "verdict": execution.verdict if execution and execution.verdict else "not run",
                "why": (detail or {}).get("reason") or f"{group}.snapshot: {states.get(f'{group}.snapshot')}",
                "restored": ("n/a" if execution is None else
                             "yes" if execution.status == ExecutionStatus.RESTORED else "NO"),
            })

    table = Table(title=f"mlchaos demo: verdicts on {model} ({label} workloads)")
    for column in ("DAG", "stage", "verdict", "why", "restored"):
        table.add_column(column, overflow="fold")
    for r in results:
        style = {"passed": "green", "failed": "red"}.get(r["verdict"], "yellow")
        table.add_row(r["dag"], r["stage"], f"[{style}]{r['verdict']}[/]", r["why"], r["restored"])
    console.print(table)
    champion = alias_version(model, "champion")
    from mlchaos_steps.targets.mlflow import client

    promoted_by_gate = bool(champion) and client().get_model_version(model, champion).tags.get(
        "mlchaos.gate") == "promoted"
    for dag_id, state in gates.items():
        decision = "promoted" if state == "success" else f"refused ({state})"
        colour = "green" if state == "success" else "red"
        console.print(f"promotion gate in {dag_id}: [{colour}]{decision}[/]")
    how = "promoted by the gate" if promoted_by_gate else "nothing was promoted"
    console.print(f"@champion of {model}: {'v' + champion if champion else 'none'} ({how})")

    ran = [r for r in results if r["verdict"] != "not run"]
    all_restored = all(r["restored"] == "yes" for r in ran)
    console.print("ledger: " + ("everything restored" if all_restored else "[red]NOT all restored[/]")
                  + f" ({ledger.location})")
    uri = tracking_uri()
    ui = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else f"open {uri}"
    console.print(f"next: `{ui}` shows the verdict tags on {model} and the evidence runs (experiment 'mlchaos'); "
                  "`mlchaos ledger` lists every run; the DAGs are in dags/; "
                  + ("`mlchaos demo` runs the healthy workloads." if broken else
                     "`mlchaos demo --broken` runs broken workloads, where the gates refuse."))
    if not workdir:
        shutil.rmtree(root, ignore_errors=True)
    as_expected = _as_expected(broken, results, gates, promoted_by_gate)
    return 0 if all_restored and as_expected else 1


def _as_expected(broken: bool, results: list[dict[str, Any]], gates: dict[str, str], promoted: bool) -> bool:
    """Healthy: every stage passed, every gate promoted. Broken: the first stage of each DAG failed (a
    set-up that broke instead proves nothing), nothing of a gated DAG passed, no gate promoted. (The
    nightly DAG's registry-artifact-removal runs on the healthy @champion: it may pass.)"""
    if not broken:
        return all(r["verdict"] == "passed" for r in results) and all(s == "success" for s in gates.values()) \
            and promoted
    first_failed = all(next(r for r in results if r["dag"] == dag_id)["verdict"] == "failed" for dag_id in STAGE_GROUPS)
    return (first_failed and all(r["verdict"] in ("failed", "not run") for r in results if r["dag"] in GATED)
            and all(s != "success" for s in gates.values()) and not promoted)
