"""What the example deployment's setup and teardown do: start and stop the serving workers, the stable
and canary model servers and the canary router, on the ports the DAG's params give.

Called by ``dags/deployment_with_chaos.py``; ``broken`` starts a server that never respawns its workers
and a router without analysis (it never rolls back).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SERVING_LABEL = "mlchaos-example-serving"


def serving_label(serving_port: int) -> str:
    """The workers' ``MLCHAOS_APP``, which the pod-delete stage selects them by: one per deployment (two
    deployments side by side, two demos say, must not count or kill each other's workers)."""
    return f"{SERVING_LABEL}-{serving_port}"


def start(model: str, candidate: str, workdir: str | Path, *, router_port: int, serving_port: int,
          broken: bool = False) -> dict[str, Any]:
    """Start everything; the pids go to ``<workdir>/deployment/pids.json`` for :func:`stop`."""
    from mlchaos_steps.examples import workloads

    logs = Path(workdir) / "deployment"
    logs.mkdir(parents=True, exist_ok=True)
    started: list[Any] = []
    try:
        # The workers and the two model servers start side by side (each takes seconds to load), then the
        # router in front of the model servers.
        workers, stable, canary = workloads.start_together(
            lambda: workloads.start_server(healthy=not broken, port=serving_port, label=serving_label(serving_port),
                                           log_path=logs / "workers.log"),
            lambda: workloads.start_model_server(f"models:/{model}@champion", log_path=logs / "stable.log"),
            lambda: workloads.start_model_server(f"models:/{model}@challenger", log_path=logs / "canary.log"),
        )
        started += [workers, stable, canary]
        started.append(workloads.start_router(
            stable.url, canary.url, canary_weight=30, rollback=not broken,
            analysis={"interval_s": 0.5, "count": 10_000}, model=model, version=candidate,
            port=router_port, log_path=logs / "router.log"))
    finally:
        (logs / "pids.json").write_text(json.dumps([s.process.pid for s in started]))
    return {"candidate": candidate}


def stop(workdir: str | Path) -> None:
    """Stop everything :func:`start` started (each in its own process group)."""
    from mlchaos_steps.core.processes import stop_process_group

    pids = Path(workdir) / "deployment" / "pids.json"
    if not pids.exists():
        return
    for pid in json.loads(pids.read_text()):
        stop_process_group(pid, grace_s=5)
    pids.unlink()
