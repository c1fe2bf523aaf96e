"""Telemetry's cost (``python benchmarks/run.py telemetry_phases report_1000``): each phase of a stage with
traces and metrics exported (a real OpenTelemetry Collector and Pushgateway, built by ``make test``) against
the same phase with nothing configured, alternating in one process; the scorecard of 1,000 executions."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("snapshot", "inject", "verify", "restore")


def _stats(values: list[float], digits: int = 4) -> dict[str, float]:
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "max": round(max(values), digits), "n": len(values)}


def _backends(prefix: str) -> tuple[Path, Any, Any, Path, dict[str, str]]:
    """A work folder, a real collector and Pushgateway, the example trainer's store, the environment that
    turns telemetry on."""
    from mlchaos_steps.examples import observability, workloads

    work = Path(tempfile.mkdtemp(prefix=prefix))
    collector = observability.start_collector(ROOT / "build/bin/otelcol-mlchaos", work / "otel")
    gateway = observability.start_pushgateway(ROOT / "build/bin/pushgateway", work / "pushgateway")
    trained = work / "trained"
    workloads.train(trained, steps=500, checkpoint_every=100)
    return work, collector, gateway, trained, {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
                                               "MLCHAOS_PUSHGATEWAY_URL": gateway.url}


def telemetry_phases(repeats: int) -> dict[str, Any]:
    """Wall time of each phase of checkpoint-wipe with tracing and metrics on, and off, side by side."""
    from mlchaos_steps.api import flush_telemetry, run_phase, wait_for_removals
    from mlchaos_steps.examples import workloads
    from mlchaos_steps.stages import parse_stage

    work, collector, gateway, trained, on = _backends("mlchaos-bench-telemetry-")
    times: dict[str, dict[str, list[float]]] = {mode: {p: [] for p in PHASES} for mode in ("on", "off")}
    try:
        for i in range(repeats * 2):
            mode = ("on", "off")[(i + i // 2) % 2]  # on, off, off, on, on, off, ...: neither always goes first
            for key in on:
                os.environ.pop(key, None)
            if mode == "on":
                os.environ.update(on)
            store = work / f"store-{i}"
            shutil.copytree(trained, store)
            stage = parse_stage({"kind": "CheckpointWipe", "spec": {
                "store": store.as_uri(), "pattern": r"step-(\d+)", "mode": "delete-latest",
                "resume": {"command": workloads.resume_command(store), "max_lost_steps": 200}}})
            for phase in PHASES:
                t0 = time.perf_counter()
                run_phase(stage, phase, f"bench-telemetry-{i}")  # type: ignore[arg-type]
                wait_for_removals()
                times[mode][phase].append(time.perf_counter() - t0)
            flush_telemetry(5.0)  # what is still being sent does not spill into the next repeat
        spans = len(collector.spans())
    finally:
        for key in on:
            os.environ.pop(key, None)
        collector.stop()
        gateway.stop()
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {
        "what": "each phase of checkpoint-wipe (delete-latest on the example trainer's store, the real resume "
                "command in verify) run in this process, with OTLP export to a real collector and metrics pushed "
                "to a real Pushgateway (asynchronous: what a phase hands over is sent beside the next one; flushed "
                "between repeats, outside the timings), and with neither configured, alternating; overhead = "
                "median(on) - median(off), allowed: 2% of median(off) or 20 ms, whichever is larger",
        "spans_received": spans}
    for phase in PHASES:
        on_median, off_median = statistics.median(times["on"][phase]), statistics.median(times["off"][phase])
        result[phase] = {"on_seconds": _stats(times["on"][phase]), "off_seconds": _stats(times["off"][phase]),
                         "overhead_ms": round((on_median - off_median) * 1000, 1),
                         "allowed_ms": round(max(0.02 * off_median, 0.02) * 1000, 1)}
    return result


def telemetry_process(repeats: int) -> dict[str, Any]:
    """The whole `mlchaos run` of checkpoint-wipe in a fresh process (interpreter, imports, four phases,
    exit), exporting to a real collector and Pushgateway, against the same with nothing configured."""
    import yaml

    from mlchaos_steps.examples import workloads

    work, collector, gateway, trained, on = _backends("mlchaos-bench-telemetry-process-")
    base = {k: v for k, v in os.environ.items() if k not in on}
    times: dict[str, list[float]] = {"on": [], "off": []}
    try:
        for i in range(repeats * 2):
            mode = ("on", "off")[(i + i // 2) % 2]
            store = work / f"store-{i}"
            shutil.copytree(trained, store)
            stage_file = work / f"stage-{i}.yaml"
            stage_file.write_text(yaml.safe_dump({"kind": "CheckpointWipe", "spec": {
                "store": store.as_uri(), "pattern": r"step-(\d+)", "mode": "delete-latest",
                "resume": {"command": workloads.resume_command(store), "max_lost_steps": 200}}}))
            env = {**base, **(on if mode == "on" else {}), "MLCHAOS_HOME": str(work / f"home-{i}")}
            t0 = time.perf_counter()
            subprocess.run([str(Path(sys.executable).parent / "mlchaos"), "run", str(stage_file), "--json"],
                           check=True, capture_output=True, env=env)
            times[mode].append(time.perf_counter() - t0)
    finally:
        collector.stop()
        gateway.stop()
        shutil.rmtree(work, ignore_errors=True)
    on_median, off_median = statistics.median(times["on"]), statistics.median(times["off"])
    return {"what": "`mlchaos run` of checkpoint-wipe (all four phases) in a fresh process, telemetry on (OTLP to a "
                    "real collector, metrics to a real Pushgateway) and off, alternating",
            "on_seconds": _stats(times["on"], 3), "off_seconds": _stats(times["off"], 3),
            "overhead_ms": round((on_median - off_median) * 1000, 1),
            "allowed_ms": round(max(0.02 * off_median, 0.02) * 1000, 1)}


def report_1000(repeats: int) -> dict[str, Any]:
    """`mlchaos report` (a fresh process: interpreter, ledger read, HTML, JUnit) over 1,000 executions."""
    from mlchaos_steps.core.records import ExecutionStatus
    from mlchaos_steps.ledgers import SqliteLedger

    home = Path(tempfile.mkdtemp(prefix="mlchaos-bench-report-"))
    os.environ["MLCHAOS_HOME"] = str(home)
    ledger = SqliteLedger()
    stages = ("pod-delete", "checkpoint-wipe", "data-corruption", "feature-drift", "canary-failure")
    for i in range(1000):
        key = f"nightly-{i}"
        ledger.create(key, "PodDelete", stages[i % len(stages)], {})
        verdict = ("passed", "passed", "passed", "failed", "inconclusive")[i % 5]
        windows = [{"at": 1_800_000_000 + j, "requests": 50, "success_ratio": 1.0 if j % 9 else 0.6, "p99_ms": 4.0}
                   for j in range(60)]
        ledger.update(key, status=ExecutionStatus.RESTORED, verdict=verdict, verdict_detail={
            "status": verdict, "reason": "measured", "metrics": {"availability": 0.97, "recovery_seconds": 2.5},
            "evidence": {"observation": {"probe": {"requests": 3000, "successes": 2950, "windows": windows}}}},
            state={"verdict_target": {"name": "churn", "version": str(1 + i // 50)},
                   "trace": {"trace_id": f"{i:032x}", "span_id": f"{i:016x}"}})
    seconds = []
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([str(Path(sys.executable).parent / "mlchaos"), "report", "-o", str(home / "r.html"),
                            "--junit", str(home / "r.xml")], check=True, capture_output=True)
            seconds.append(time.perf_counter() - t0)
        size = (home / "r.html").stat().st_size
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {"what": "`mlchaos report -o r.html --junit r.xml` in a fresh process over 1,000 executions of 5 stages on "
                    "20 model versions, each with a 60-window probe timeline",
            "seconds": _stats(seconds, 3), "target_seconds_max": 2.0, "html_bytes": size}
