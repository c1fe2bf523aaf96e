"""Speed and scale measurements (``make bench``). Results go to ``benchmarks/results.json``.

Each benchmark repeats its measurement and reports min / median / max; comparisons are measured side
by side in the same run. These are measurements, not tests: nothing here asserts a time.

    python benchmarks/run.py                      # all
    python benchmarks/run.py checkpoint_inject    # one
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results.json")
REPEATS = int(os.environ.get("MLCHAOS_BENCH_REPEATS", "5"))


def stats(values: list[float], digits: int = 4) -> dict[str, float]:
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "max": round(max(values), digits), "n": len(values)}


def _fresh_home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="mlchaos-bench-home-"))
    os.environ["MLCHAOS_HOME"] = str(home)
    return home


def _write_big_checkpoint(folder: Path, total_bytes: int, files: int = 4) -> None:
    folder.mkdir(parents=True)
    block = os.urandom(16 * 1024 * 1024)
    per_file = total_bytes // files
    for i in range(files):
        with open(folder / f"shard-{i}.bin", "wb") as handle:
            written = 0
            while written < per_file:
                chunk = block[: min(len(block), per_file - written)]
                handle.write(chunk)
                written += len(chunk)
            handle.flush()
            os.fsync(handle.fileno())


def checkpoint_inject() -> dict[str, Any]:
    """Inject (delete-latest) on a 2 GB checkpoint folder: quarantine by rename, against a plain copy."""
    from mlchaos_steps.api import restore_run, run_phase
    from mlchaos_steps.stages import parse_stage

    size = int(os.environ.get("MLCHAOS_BENCH_CHECKPOINT_BYTES", str(2 * 1024**3)))
    work = Path(tempfile.mkdtemp(prefix="mlchaos-bench-ckpt-", dir=os.environ.get("MLCHAOS_BENCH_DIR")))
    try:
        store = work / "store"
        (store / "step-100").mkdir(parents=True)
        (store / "step-100" / "small.bin").write_bytes(os.urandom(1024))
        _write_big_checkpoint(store / "step-200", size)
        doc = {"kind": "CheckpointWipe", "spec": {
            "store": store.as_uri(), "mode": "delete-latest",
            "resume": {"command": ["true"], "max_lost_steps": 100}}}
        stage = parse_stage(doc)
        inject_s, copy_s, snapshot_s, restore_s = [], [], [], []
        for i in range(REPEATS):
            _fresh_home()
            key = f"bench-inject-{i}"
            t0 = time.perf_counter()
            run_phase(stage, "snapshot", key)
            snapshot_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            run_phase(stage, "inject", key)
            inject_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            restore_run(key)
            restore_s.append(time.perf_counter() - t0)
            # side by side: what a copy-based backup of the same folder costs
            t0 = time.perf_counter()
            shutil.copytree(store / "step-200", work / "copy")
            copy_s.append(time.perf_counter() - t0)
            shutil.rmtree(work / "copy")
        ratios = [c / i for c, i in zip(copy_s, inject_s, strict=True)]
        return {
            "what": "inject phase (delete-latest, one rename + write-ahead ledger entries) on a checkpoint folder",
            "checkpoint_bytes": size,
            "inject_seconds": stats(inject_s),
            "snapshot_seconds_incl_digest": stats(snapshot_s, 3),
            "restore_seconds_incl_digest_check": stats(restore_s, 3),
            "plain_copy_seconds": stats(copy_s, 3),
            "copy_over_inject_ratio": stats(ratios, 1),
            "target_inject_seconds_max": 0.050,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def pod_delete_detection() -> dict[str, Any]:
    """How long after the replacement worker first answers does pod-delete declare recovery?"""
    from mlchaos_steps.api import restore_run, run_phase
    from mlchaos_steps.core.probes import http_request
    from mlchaos_steps.examples import workloads
    from mlchaos_steps.ledgers import SqliteLedger
    from mlchaos_steps.stages import parse_stage

    server = workloads.start_server(healthy=True, workers=2)
    lags, recoveries = [], []
    try:
        for i in range(REPEATS):
            _fresh_home()
            answered: list[tuple[float, int]] = []
            stop = threading.Event()

            def hammer(answered: list[tuple[float, int]] = answered, stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    try:
                        _, body, _ = http_request(server.url + "/pid", 1.0)
                        answered.append((time.time(), json.loads(body)["pid"]))
                    except OSError:
                        pass
                    time.sleep(0.002)

            stage = parse_stage({"kind": "PodDelete", "spec": {
                "target": {"local": {"selector": server.selector}}, "count": 1, "recovery_slo_s": 30,
                "stable_s": 0.5, "probe": {"http": {"url": server.url + "/ping"}}}})
            key = f"bench-pod-{i}"
            run_phase(stage, "snapshot", key)
            originals = {pid for pid, _ in SqliteLedger().get(key).state["replicas"]}  # type: ignore[union-attr]
            thread = threading.Thread(target=hammer, daemon=True)
            thread.start()
            run_phase(stage, "inject", key)
            time.sleep(0.5)  # keep hammering after detection, to see the first answer of the new worker
            stop.set()
            thread.join()
            observation = SqliteLedger().get(key).state["observation"]  # type: ignore[union-attr]
            restore_run(key)
            first_new = min((t for t, pid in answered if pid not in originals and t > observation["killed_at"]),
                            default=None)
            if first_new is None:
                continue
            lags.append((observation["recovered_at"] - first_new) * 1000)
            recoveries.append(observation["recovery_seconds"])
            time.sleep(0.3)
    finally:
        server.stop()
    return {
        "what": "recovered_at (engine: the replacement answered a request attributed to it by the kernel) minus "
                "the first answer from the replacement worker to a client hammering /pid every 2 ms",
        "detection_lag_ms": stats(lags, 1),
        "abs_detection_lag_ms_max": round(max(abs(v) for v in lags), 1) if lags else None,
        "recovery_seconds": stats(recoveries, 3),
        "target_lag_ms_max": 100,
    }


def kill_switch() -> dict[str, Any]:
    """Seconds from touching the stop file to `mlchaos run` exiting (verify stopped, restore done), for a
    resume command that stops on SIGTERM and for one that ignores it."""
    from mlchaos_steps.examples import workloads
    from mlchaos_steps.ledgers import SqliteLedger

    stubborn = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                      "time.sleep(600)"]
    latencies: dict[str, list[float]] = {"cooperative": [], "ignores_sigterm": []}
    for i in range(REPEATS):
        for case in latencies:
            home = _fresh_home()
            work = Path(tempfile.mkdtemp(prefix="mlchaos-bench-ks-"))
            store = work / "ckpts"
            workloads.train(store, steps=200)
            command = (workloads.resume_command(store, steps=200, step_seconds=1.0) if case == "cooperative"
                       else stubborn)
            stage_file = work / "wipe.json"
            stage_file.write_text(json.dumps({"kind": "CheckpointWipe", "spec": {
                "store": store.as_uri(), "resume": {"command": command, "max_lost_steps": 100}}}))
            key = f"bench-ks-{case}-{i}"
            proc = subprocess.Popen([str(Path(sys.executable).parent / "mlchaos"), "run", str(stage_file),
                                     "--run-key", key], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while True:
                execution = SqliteLedger().get(key) if (home / "ledger.db").exists() else None
                if execution and execution.state.get("resume_process"):
                    break
                time.sleep(0.01)
            time.sleep(0.5)  # the resume command is running now
            t0 = time.perf_counter()
            (home / "STOP").touch()
            proc.wait()
            latencies[case].append(time.perf_counter() - t0)
            shutil.rmtree(work, ignore_errors=True)
    snapshot_s, inject_s = _kill_switch_during("snapshot"), _kill_switch_during("inject")
    return {"what": "stop file touched -> mlchaos run exited with restore done: during verify (the resume "
                    "command's process group stopped; one that stops on SIGTERM, one that ignores it) and during "
                    "inject (writing the damaged copy of a 2 GiB checkpoint folder)",
            "seconds_cooperative": stats(latencies["cooperative"], 3),
            "seconds_ignores_sigterm": stats(latencies["ignores_sigterm"], 3),
            "seconds_during_snapshot_2gib": stats(snapshot_s, 3), "seconds_during_inject_2gib": stats(inject_s, 3),
            "target_seconds_max": 1.0}


def _kill_switch_during(phase: str) -> list[float]:
    """Stop file touched while snapshot digests, or inject damages, a 2 GiB checkpoint folder."""
    from mlchaos_steps.core.records import ActionState
    from mlchaos_steps.ledgers import SqliteLedger

    def in_progress(key: str, home: Path) -> bool:
        if not (home / "ledger.db").exists():
            return False
        if phase == "snapshot":
            execution = SqliteLedger().get(key)
            return execution is not None and "snapshot" not in execution.phases
        actions = SqliteLedger().actions(key)
        return bool(actions) and actions[0].state == ActionState.PLANNED and "damaged_digest" not in actions[0].undo

    size = int(os.environ.get("MLCHAOS_BENCH_CHECKPOINT_BYTES", str(2 * 1024**3)))
    work = Path(tempfile.mkdtemp(prefix=f"mlchaos-bench-ks-{phase}-", dir=os.environ.get("MLCHAOS_BENCH_DIR")))
    seconds = []
    try:
        store = work / "store"
        (store / "step-100").mkdir(parents=True)
        (store / "step-100" / "small.bin").write_bytes(os.urandom(1024))
        _write_big_checkpoint(store / "step-200", size)
        stage_file = work / "wipe.json"
        stage_file.write_text(json.dumps({"kind": "CheckpointWipe", "spec": {
            "store": store.as_uri(), "mode": "corrupt-latest",
            "resume": {"command": ["true"], "max_lost_steps": 100}}}))
        for i in range(REPEATS):
            home = _fresh_home()
            key = f"bench-ks-{phase}-{i}"
            proc = subprocess.Popen([str(Path(sys.executable).parent / "mlchaos"), "run", str(stage_file),
                                     "--run-key", key], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while not in_progress(key, home):
                if proc.poll() is not None:
                    raise RuntimeError(f"{phase} finished before the stop file could be touched")
                time.sleep(0.002)
            time.sleep(0.05)  # digesting, or writing the damaged copy, now
            t0 = time.perf_counter()
            (home / "STOP").touch()
            proc.wait()
            seconds.append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return seconds


def hostile_stage_files() -> dict[str, Any]:
    """How long the loader takes to refuse hostile stage files (exit 2), each in-process."""
    from mlchaos_steps.errors import SpecError
    from mlchaos_steps.stages import load_stages

    bomb = "x-a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"x-{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(9)
    ) + "kind: CheckpointWipe\nspec: {store: 'file:///d', resume: {command: *j, max_lost_steps: 1}}\n"
    files = {
        "alias_bomb.yaml": bomb.encode(),
        "deep_nesting.yaml": ("kind: " + "[" * 50_000 + "]" * 50_000).encode(),
        "deep_nesting.json": ("[" * 100_000 + "]" * 100_000).encode(),
        "invalid_utf8.yaml": b"kind: CheckpointWipe\nspec: {store: \xff\xfe}\n",
        "huge_integer.yaml": b"kind: CheckpointWipe\nspec: {count: " + b"9" * 100_000 + b"}\n",
        "huge_file.yaml": b"# " + b"x" * (64 * 1024 * 1024),
    }
    work = Path(tempfile.mkdtemp(prefix="mlchaos-bench-hostile-"))
    results = {}
    try:
        for name, content in files.items():
            path = work / name
            path.write_bytes(content)
            seconds = []
            for _ in range(max(REPEATS, 10)):
                t0 = time.perf_counter()
                try:
                    load_stages(path)
                except SpecError:
                    seconds.append(time.perf_counter() - t0)
                else:
                    raise AssertionError(f"{name} was accepted")
            results[name] = {"bytes": len(content), "refused_seconds": stats(seconds, 4)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"what": "load_stages() refusing each hostile file with a SpecError (exit 2 in the CLI)",
            "files": results, "target_seconds_max": 1.0}


def _tracking_server(root: Path) -> Any:
    from mlchaos_steps.examples import workloads

    server = workloads.start_tracking_server(root)
    os.environ["MLFLOW_TRACKING_URI"] = server.url
    return server


def _real_verdict(name: str, version: str, stage_id: str, status: str) -> None:
    """A verdict as the engine writes it: evidence run, tags (verdict last, restored), run finished."""
    from mlchaos_steps.core.verdict import Verdict
    from mlchaos_steps.gate.verdicts import finish_execution, log_execution, record_verdict
    from mlchaos_steps.targets.mlflow import ModelRef

    ref, verdict = ModelRef(name, version), Verdict(status=status, reason="benchmark")  # type: ignore[arg-type]
    run_id = log_execution(stage_id, "Bench", {}, verdict, f"bench-{stage_id}-{version}", None, ref)
    record_verdict(ref, stage_id, verdict, run_id, f"bench-{stage_id}-{version}", restored=True)
    finish_execution(run_id, verdict)


def gate_decision() -> dict[str, Any]:
    """The promotion gate against a local `mlflow server`: one read of the version, then the decision."""
    from mlchaos_steps.examples.models import register_sklearn
    from mlchaos_steps.gate import promote

    _fresh_home()
    root = Path(tempfile.mkdtemp(prefix="mlchaos-bench-gate-"))
    server = _tracking_server(root)
    try:
        name = "bench-gate"
        versions = [register_sklearn(name) for _ in range(2)]
        stages = ["checkpoint-wipe", "pod-delete", "registry-artifact-removal", "canary-failure"]
        for v in versions:
            for stage in stages:
                _real_verdict(name, v, stage, "failed" if (v, stage) == (versions[1], "pod-delete") else "passed")
        promote(name, versions[0], stages)  # warm-up: imports, connection
        decide_ms, total_ms, blocked_ms = [], [], []
        for _ in range(max(REPEATS, 10)):
            t0 = time.perf_counter()
            decision = promote(name, versions[0], stages)
            total_ms.append((time.perf_counter() - t0) * 1000)
            decide_ms.append(decision.decide_seconds * 1000)
            t0 = time.perf_counter()
            promote(name, versions[1], stages)
            blocked_ms.append((time.perf_counter() - t0) * 1000)
        return {
            "what": "promote() with 4 required stages against a local mlflow server (SQLite); 'decide' is the "
                    "get_model_version read, one read of each stage's evidence run, the decision and the artifact "
                    "check; 'total' adds the alias/tag writes",
            "decide_ms": stats(decide_ms, 1), "total_promoted_ms": stats(total_ms, 1),
            "total_blocked_ms": stats(blocked_ms, 1), "target_decide_ms_max": 100,
        }
    finally:
        server.stop()
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        shutil.rmtree(root, ignore_errors=True)


def artifact_backup_restore() -> dict[str, Any]:
    """Backup and restore of a 500 MB model artifact, against a plain file copy of the same data."""
    from mlchaos_steps.targets.mlflow import ArtifactStore

    size = int(os.environ.get("MLCHAOS_BENCH_ARTIFACT_BYTES", str(500 * 1024**2)))
    work = Path(tempfile.mkdtemp(prefix="mlchaos-bench-art-", dir=os.environ.get("MLCHAOS_BENCH_DIR")))
    try:
        artifacts = work / "artifacts"
        _write_big_checkpoint(artifacts / "data", size, files=1)
        store = ArtifactStore(artifacts.as_uri())
        rel = "data/shard-0.bin"
        backup_s, restore_s, copy_s = [], [], []
        for i in range(REPEATS):
            local = str(work / f"backup-{i}" / "shard.bin")
            t0 = time.perf_counter()
            digest, _ = store.backup(rel, local)
            backup_s.append(time.perf_counter() - t0)
            store.delete(rel)
            t0 = time.perf_counter()
            restored = store.upload(local, rel)
            restore_s.append(time.perf_counter() - t0)
            assert restored == digest
            t0 = time.perf_counter()
            shutil.copyfile(artifacts / rel, work / "plain-copy.bin")
            copy_s.append(time.perf_counter() - t0)
            os.remove(work / "plain-copy.bin")
            shutil.rmtree(work / f"backup-{i}")
        mb = size / 1024**2
        return {
            "what": "ArtifactStore.backup (copy + sha256 in one pass) and upload (restore, digest compared) of one "
                    "500 MB file on a local artifact root, against shutil.copyfile of the same file",
            "artifact_bytes": size,
            "backup_seconds": stats(backup_s, 3), "restore_seconds": stats(restore_s, 3),
            "plain_copy_seconds": stats(copy_s, 3),
            "backup_mb_per_s_median": round(mb / statistics.median(backup_s), 1),
            "restore_mb_per_s_median": round(mb / statistics.median(restore_s), 1),
            "plain_copy_mb_per_s_median": round(mb / statistics.median(copy_s), 1),
            "backup_speed_vs_copy": stats([c / b for c, b in zip(copy_s, backup_s, strict=True)], 2),
            "restore_speed_vs_copy": stats([c / r for c, r in zip(copy_s, restore_s, strict=True)], 2),
            "target_speed_vs_copy_min": 0.70,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def airflow_parse() -> dict[str, Any]:
    """Parsing a DAG file with four chaos stages against the same file without them, fresh processes."""
    script = Path(__file__).with_name("parse_dag.py")
    # As a scheduler parses: with bytecode caches (this machine's environment sets PYTHONDONTWRITEBYTECODE,
    # which made every parse compile mlchaos_steps' modules again: about 40 ms of the difference).
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    with_ms, without_ms, process_s, heavy = [], [], [], set()
    subprocess.run([sys.executable, str(script), "4"], env=env, capture_output=True, check=True)  # warm caches
    for _ in range(max(REPEATS, 10)):
        for count, bucket in ((4, with_ms), (0, without_ms)):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, str(script), str(count)], env=env, capture_output=True,
                                 text=True, check=True).stdout.split()
            if count:
                process_s.append(time.perf_counter() - t0)
            bucket.append(float(out[1]))
            heavy.update(x for x in out[2].split(",") if x and x != "-")
    deltas = [a - b for a, b in zip(with_ms, without_ms, strict=True)]
    return {
        "what": "python benchmarks/parse_dag.py 4 vs 0, interleaved fresh processes: the DAG file's own time "
                "after airflow.sdk is imported, for a 6-task DAG with and without four ChaosStages (importing "
                "mlchaos_steps.airflow included)",
        "with_stages_ms": stats(with_ms, 1), "without_ms": stats(without_ms, 1), "overhead_ms": stats(deltas, 1),
        "whole_process_seconds_with_stages": stats(process_s, 3), "heavy_modules_imported": sorted(heavy),
        "target_overhead_ms_max": 50,
    }


def insert_chaos_1000() -> dict[str, Any]:
    """insert_chaos into a 1,000-task DAG (a chain plus fan-out), validation included."""
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG

    from mlchaos_steps.airflow import insert_chaos

    doc = {"kind": "CheckpointWipe", "spec": {"store": "file:///data/ckpts", "resume": {
        "command": ["python", "train.py"], "max_lost_steps": 1}}}
    seconds = []
    for i in range(REPEATS):
        with DAG(f"big_{i}", schedule=None) as dag:
            tasks = [EmptyOperator(task_id=f"t{j}") for j in range(1000)]
            for j in range(1, 1000):
                tasks[(j - 1) // 2] >> tasks[j]  # a binary tree: 999 edges
        t0 = time.perf_counter()
        insert_chaos(dag, after="t0", stage=doc)
        seconds.append(time.perf_counter() - t0)
    return {"what": "insert_chaos(after='t0') into a 1,000-task DAG, re-wiring its downstream, with "
                    "check_cycle() and validate()", "seconds": stats(seconds, 3), "target_seconds_max": 1.0}


def _big_workflow(path: Path, tasks: int = 500) -> Path:
    """A Workflow whose DAG has ``tasks`` tasks (a binary tree), each calling a container template."""
    import yaml

    dag = [{"name": f"t{j}", "template": "echo", "arguments": {"parameters": [{"name": "message", "value": f"t{j}"}]},
            **({"depends": f"t{(j - 1) // 2}"} if j else {})} for j in range(tasks)]
    path.write_text(yaml.safe_dump({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"generateName": "big-"},
        "spec": {"entrypoint": "main", "templates": [
            {"name": "main", "dag": {"tasks": dag}},
            {"name": "echo", "inputs": {"parameters": [{"name": "message"}]},
             "container": {"image": "busybox", "command": ["echo", "{{inputs.parameters.message}}"]}}]}},
        sort_keys=False))
    return path


_TIMED_VALIDATE = """
import sys, time
t0 = time.perf_counter()
from mlchaos_steps.argo import validate_files
problems = validate_files([sys.argv[1]])
assert problems == [], problems
print(time.perf_counter() - t0)
"""


def argo_validate_500() -> dict[str, Any]:
    """Validate a 500-task workflow in a fresh process (schema compiled once, inside the time), side by
    side with Argo's own `argo lint --offline` on the same file."""
    work = Path(tempfile.mkdtemp(prefix="mlchaos-bench-argo-"))
    big = _big_workflow(work / "big.yaml")
    argo = Path(__file__).parent.parent / "build" / "bin" / "argo"
    in_process, cli, lint = [], [], []
    for _ in range(REPEATS):
        done = subprocess.run([sys.executable, "-c", _TIMED_VALIDATE, str(big)], capture_output=True, text=True,
                              check=True)
        in_process.append(float(done.stdout.strip()))
        t0 = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "mlchaos"), "argo", "validate", str(big)],
                       capture_output=True, check=True)
        cli.append(time.perf_counter() - t0)
        if argo.exists():
            t0 = time.perf_counter()
            subprocess.run([str(argo), "lint", "--offline", str(big)], capture_output=True, check=True)
            lint.append(time.perf_counter() - t0)
    shutil.rmtree(work, ignore_errors=True)
    result = {"what": "validate a 500-task workflow: import, schema compilation and every rule, in a fresh "
                      "process; the whole `mlchaos argo validate` command; Argo's `argo lint --offline`",
              "seconds_incl_schema_compilation": stats(in_process, 3), "cli_seconds": stats(cli, 3),
              "target_seconds_max": 1.0}
    if lint:
        result["argo_lint_offline_seconds"] = stats(lint, 3)
        result["cli_over_argo_lint_ratio"] = round(statistics.median(cli) / statistics.median(lint), 2)
    return result


def argo_inject_500() -> dict[str, Any]:
    """Insert a stage into the 500-task workflow's YAML (as text, validated), after its root task."""
    import yaml

    from mlchaos_steps.argo.insert import inject_yaml
    from mlchaos_steps.argo.validate import validate_files

    work = Path(tempfile.mkdtemp(prefix="mlchaos-bench-argo-"))
    text = _big_workflow(work / "big.yaml").read_text()
    stage = work / "stage.yaml"
    stage.write_text(yaml.safe_dump({"kind": "CheckpointWipe", "spec": {"store": "file:///data/ckpts", "resume": {
        "command": ["python", "train.py"], "max_lost_steps": 1}}}))
    validate_files([work / "big.yaml"])  # the schema compiled, as in a long-lived process (the CLI pays it once)
    seconds = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        inject_yaml(text, after="t0", stage=stage)
        seconds.append(time.perf_counter() - t0)
    shutil.rmtree(work, ignore_errors=True)
    return {"what": "inject_yaml(after='t0') into a 500-task workflow (3,500 lines): load, insert, rewire the "
                    "two tasks downstream, validate the result, edit the text, check it loads back the same",
            "seconds": stats(seconds, 3), "target_seconds_max": 0.2}


def kube_pod_delete_1000() -> dict[str, Any]:
    """pod-delete on 1,000 pods of a Deployment (20% chosen) against the real control plane of the tests,
    side by side with chaostoolkit-kubernetes' `terminate_pods` through `chaos run` on the same cluster."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from kube import ControlPlane
    from kubernetes import client
    from kubetools import deployment, ready_replicas, wait_for

    from mlchaos_steps.api import run_phase
    from mlchaos_steps.stages import parse_stage

    work = Path(tempfile.mkdtemp(prefix="mlchaos-bench-kube-"))
    plane = ControlPlane(work / "plane").start()
    api = plane.admin_client()
    ready_log = work / "ready.log"  # the agent (its own process, as in the tests) notes each Ready it reports
    plane.start_agent({"MLCHAOS_AGENT_NODES": "10", "MLCHAOS_AGENT_READY_LOG": str(ready_log)})
    os.environ["KUBECONFIG"] = str(plane.admin_config)
    reference = None
    try:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": "bench"}})
        arrivals = work / "reference.log"  # a bare watch in a process of its own: when Ready events arrive
        reference = subprocess.Popen([sys.executable, "-c", REFERENCE_WATCH, str(plane.admin_config), str(arrivals)])
        t0 = time.perf_counter()
        client.AppsV1Api(api).create_namespaced_deployment("bench", deployment("serve", 1000))
        wait_for(lambda: ready_replicas(api, "bench", "serve") == 1000, timeout_s=600, what="1,000 pods Ready")
        ready_s = time.perf_counter() - t0
        doc = {"kind": "PodDelete", "spec": {"target": {"kubernetes": {"namespace": "bench", "selector": "app=serve"}},
                                             "percent": 20, "max_count": 1000, "grace_s": 0, "seed": 1,
                                             "recovery_slo_s": 300, "stable_s": 0}}
        stage = parse_stage(doc)
        mlchaos_s, detect_lag_ms, noticed_lag_ms, reference_lag_ms, recovery_s = [], [], [], [], []
        for i in range(min(REPEATS, 5)):
            _fresh_home()
            key = f"bench-kube-{i}"
            t0 = time.time()
            run_phase(stage, "snapshot", key)
            run_phase(stage, "inject", key)
            observation = _observation(key)  # the last delete: the first one plus the time the deletes took
            mlchaos_s.append(observation["killed_at"] + observation["kill_seconds"] - t0)
            recovery_s.append(observation["recovery_seconds"])
            last_ready = max(float(line) for line in ready_log.read_text().split())
            detect_lag_ms.append((observation["recovered_at"] - last_ready) * 1000)
            noticed_lag_ms.append((observation["recovery_noticed_at"] - last_ready) * 1000)
            reference_lag_ms.append((max(float(line) for line in arrivals.read_text().split()) - last_ready) * 1000)
            run_phase(stage, "restore", key)
        chaos_s = [_chaos_run_terminate(work, 200) for _ in range(min(REPEATS, 5))]
        wait_for(lambda: ready_replicas(api, "bench", "serve") == 1000, timeout_s=600)
    finally:
        if reference is not None:
            reference.kill()
        plane.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {"what": "pod-delete of 20% of a 1,000-pod Deployment on the tests' control plane: from the start of the "
                    "snapshot phase (permissions, Lease, list, choice) through the inject phase (Lease renewed, watch "
                    "started, the 200 victims written to the ledger with their UIDs, then deleted side by side under "
                    "UID preconditions) to the last delete answered; recovery detection lag: the stage's "
                    "recovered_at (when the last Ready event's bytes arrived) minus the moment the agent's "
                    "status write for that Ready returned, and when the stage noticed; a bare watch in a process "
                    "of its own, side by side, gives the API server's own delivery lag; "
                    "chaostoolkit-kubernetes terminate_pods(qty=200) through `chaos run`, side by side",
            "pods_ready_seconds": round(ready_s, 1), "mlchaos_select_ledger_delete_seconds": stats(mlchaos_s, 3),
            "detection_lag_ms": stats(detect_lag_ms, 1), "noticed_lag_ms": stats(noticed_lag_ms, 1),
            "reference_watch_lag_ms": stats(reference_lag_ms, 1), "recovery_seconds": stats(recovery_s, 2),
            "chaos_run_terminate_seconds": stats(chaos_s, 3),
            "chaos_run_over_mlchaos_ratio": round(statistics.median(chaos_s) / statistics.median(mlchaos_s), 2),
            "target_select_ledger_delete_seconds_max": 2.0, "target_detection_lag_ms_max": 100}


# A bare watch on the benchmark's pods (argv: kubeconfig, output file): the arrival time of every Ready
# transition, stamped when its bytes arrive, as the stage does. Its lag is the API server's delivery alone.
REFERENCE_WATCH = """
import json, sys, time
from kubernetes import client, config
core = client.CoreV1Api(config.new_client_from_config(sys.argv[1]))
out, ready, version = open(sys.argv[2], "a", buffering=1), {}, None
while True:
    if version is None:
        listed = json.loads(core.list_namespaced_pod("bench", label_selector="app=serve", _preload_content=False).data)
        version = listed["metadata"]["resourceVersion"]
    response = core.list_namespaced_pod("bench", label_selector="app=serve", watch=True, resource_version=version,
                                        timeout_seconds=30, _preload_content=False)
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        at = time.time()
        *lines, pending = (pending + chunk).split(b"\\n")
        for line in lines:
            if not line.strip():
                continue
            event = json.loads(line)
            if event["type"] == "ERROR":
                version = None
                break
            pod = event["object"]
            version = pod["metadata"]["resourceVersion"]
            now = any(c.get("type") == "Ready" and c.get("status") == "True"
                      for c in (pod.get("status") or {}).get("conditions") or [])
            if now and not ready.get(pod["metadata"]["uid"]):
                out.write(f"{at}\\n")
            ready[pod["metadata"]["uid"]] = now
"""


def _observation(run_key: str) -> dict[str, Any]:
    from mlchaos_steps.ledgers import default_ledger

    execution = default_ledger().get(run_key)
    assert execution is not None
    return dict(execution.state["observation"])


def _chaos_run_terminate(work: Path, qty: int) -> float:
    experiment = work / "experiment.json"
    experiment.write_text(json.dumps({
        "version": "1.0.0", "title": "terminate 20% of the serving pods", "description": "side by side",
        "method": [{"type": "action", "name": "terminate-pods", "provider": {
            "type": "python", "module": "chaosk8s.pod.actions", "func": "terminate_pods",
            "arguments": {"label_selector": "app=serve", "ns": "bench", "qty": qty, "mode": "fixed",
                          "rand": True, "grace_period": 0}}}]}))
    t0 = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "chaos"), "--no-log-file", "run", "--no-verify-tls",
                    "--journal-path", str(work / "journal.json"), str(experiment)],
                   capture_output=True, check=True, env={**os.environ, "KUBECONFIG": os.environ["KUBECONFIG"]},
                   cwd=work)
    return time.perf_counter() - t0


DATA_ROWS = int(os.environ.get("MLCHAOS_BENCH_DATA_ROWS", "10000000"))
DATA_GROUP_ROWS = 1_000_000


def _write_big_batch(path: Path, rows: int) -> None:
    """A churn-like Parquet file of ``rows`` rows (about 100 bytes a row: 10 million make ~1 GB), written a
    row group of a million rows at a time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    for start in range(0, rows, DATA_GROUP_ROWS):
        n = min(DATA_GROUP_ROWS, rows - start)
        rng = np.random.default_rng(start)
        columns = {"customer_id": np.arange(start, start + n), "age": rng.integers(18, 90, n),
                   "income": rng.normal(55_000, 15_000, n), "zip": rng.integers(10_000, 99_999, n),
                   "tenure": rng.integers(0, 60, n),
                   "plan": rng.choice(["basic", "plus", "premium"], n, p=[0.6, 0.3, 0.1]),
                   "churned": rng.integers(0, 2, n).astype(bool)}
        columns.update({f"f{i}": rng.normal(size=n) for i in range(7)})
        table = pa.table(columns)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=DATA_GROUP_ROWS)
    assert writer is not None
    writer.close()


def _plain_read_write(source: Path, dest: Path) -> float:
    """The reference: pyarrow reads the file a row group at a time and writes it again."""
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    parquet = pq.ParquetFile(source)
    writer = None
    for index in range(parquet.num_row_groups):
        group = parquet.read_row_group(index)
        writer = writer or pq.ParquetWriter(dest, group.schema)
        writer.write_table(group)
    if writer is not None:
        writer.close()
    seconds = time.perf_counter() - t0
    dest.unlink()
    return seconds


# The inject phase alone in a process of its own (phases run alone, as in an Airflow task or an Argo pod):
# Arrow's peak allocation is then inject's.
PEAK_MEMORY_SCRIPT = """
import json, sys, pyarrow as pa, resource
from mlchaos_steps.api import run_phase
from mlchaos_steps.stages import parse_stage
run_phase(parse_stage(json.loads(sys.argv[1])), "inject", sys.argv[2])
print(json.dumps({"arrow_peak_bytes": pa.default_memory_pool().max_memory(),
                  "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def data_corruption_10m() -> dict[str, Any]:
    """Inject (nulls on 1% of the rows) on a 10-million-row Parquet partition, against a plain pyarrow read
    and write of the same file, side by side; restore; peak Arrow memory against one row group."""
    import pyarrow.parquet as pq

    from mlchaos_steps.api import restore_run, run_phase, wait_for_removals
    from mlchaos_steps.stages import parse_stage

    _fresh_home()
    root = Path(tempfile.mkdtemp(prefix="mlchaos-bench-data-"))
    try:
        batch = root / "features" / "date=20261206" / "part-0.parquet"
        _write_big_batch(batch, DATA_ROWS)
        row_group_bytes = pq.ParquetFile(batch).read_row_group(0).nbytes
        doc = {"kind": "DataCorruption", "spec": {
            "batch": {"store": (root / "features").as_uri(), "pattern": r"date=(\d{8})"},
            "faults": [{"kind": "nulls", "columns": ["income"], "fraction": 0.01}], "seed": 7,
            "validation": {"command": [sys.executable, "-c", "print('[]')"]}}}
        stage = parse_stage(doc)
        plain, inject, restore, snapshot, put_back, whole, removal = [], [], [], [], [], [], []
        for i in range(REPEATS):
            plain.append(_plain_read_write(batch, root / "plain.parquet"))
            t0 = time.perf_counter()
            run_phase(stage, "snapshot", f"data-{i}")
            snapshot.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            run_phase(stage, "inject", f"data-{i}")
            inject.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            output = restore_run(f"data-{i}")
            restore.append(time.perf_counter() - t0)
            put_back.append(output["actions"][0].get("seconds", 0.0))
            whole.append(output["actions"][0].get("whole_after_s", 0.0))
            t0 = time.perf_counter()
            wait_for_removals()
            removal.append(time.perf_counter() - t0)
            assert not (root / "features" / ".mlchaos-quarantine").exists()
        ratio = [a / b for a, b in zip(inject, plain, strict=True)]
        run_phase(stage, "snapshot", "peak")
        proc = subprocess.run([sys.executable, "-c", PEAK_MEMORY_SCRIPT, json.dumps(doc), "peak"],
                              capture_output=True, text=True, check=True, env={**os.environ})
        restore_run("peak")
        wait_for_removals()
        memory = {**json.loads(proc.stdout.strip().splitlines()[-1]), "row_group_bytes": row_group_bytes}
        return {
            "what": "inject phase of data-corruption (nulls on 1% of the rows of one column: the file moved into "
                    "quarantine through the ledger, the corrupted copy written a row group at a time, the "
                    "corrupted rows written beside it) against pyarrow reading and writing the same file a row "
                    "group at a time, side by side in each repeat; restore = the whole restore phase (ledger, locks, "
                    "journal, the store whole: two renames); within it, putting the batch back (put_back) and the "
                    "time until the batch is whole again (after the renames); then, after the phase, the removal "
                    "of the corrupted copy from the quarantine (recorded in the ledger; waited for here)",
            "rows": DATA_ROWS, "file_bytes": batch.stat().st_size,
            "row_groups": pq.ParquetFile(batch).num_row_groups,
            "inject_seconds": stats(inject, 3), "plain_read_write_seconds": stats(plain, 3),
            "inject_over_plain": stats(ratio, 3), "target_ratio_max": 1.2,
            "restore_seconds": stats(restore, 4), "target_restore_seconds_max": 0.05,
            "restore_put_back_seconds": stats(put_back, 4),
            "restore_until_whole_seconds": stats(whole, 4),
            "removal_of_corrupted_copy_after_restore_seconds": stats(removal, 4),
            "snapshot_seconds_incl_digest_and_validator": stats(snapshot, 3),
            "peak_memory": {**memory, "arrow_peak_over_row_group": round(memory["arrow_peak_bytes"]
                                                                         / memory["row_group_bytes"], 2),
                            "target_over_row_group_max": 2.0},
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def drift_measure_10m() -> dict[str, Any]:
    """The stage's own measurement of the drift it injected (two-sample tests), on 10 million rows."""
    import fsspec

    from mlchaos_steps.targets import drift, tables

    root = Path(tempfile.mkdtemp(prefix="mlchaos-bench-drift-"))
    try:
        clean, drifted = root / "clean.parquet", root / "drifted.parquet"
        _write_big_batch(clean, DATA_ROWS)
        fs = fsspec.filesystem("file")
        shape = tables.describe_batch(fs, str(clean), ["plan"])
        shifts = [{"kind": "mean_shift", "column": "income", "k": 0.5},
                  {"kind": "swap_categories", "column": "plan", "a": "basic", "b": "premium"}]
        drift.write_drifted(fs, str(clean), str(drifted), shifts, shape, seed=7)
        seconds = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            measured = drift.measure(fs, str(clean), str(drifted), ["income", "plan"], seed=7)
            seconds.append(time.perf_counter() - t0)
        return {"what": "feature-drift's measurement of what it injected: the two columns read from both "
                        "files, 200,000 rows sampled, Kolmogorov-Smirnov and chi-square (scipy)",
                "rows": DATA_ROWS, "seconds": stats(seconds, 3), "target_seconds_max": 2.0,
                "p_values": {k: v["p_value"] for k, v in measured.items()}}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def telemetry_phases() -> dict[str, Any]:
    from telemetry_bench import telemetry_phases as measure

    _fresh_home()
    return measure(REPEATS)


def telemetry_process() -> dict[str, Any]:
    from telemetry_bench import telemetry_process as measure

    return measure(REPEATS)


def report_1000() -> dict[str, Any]:
    from telemetry_bench import report_1000 as measure

    return measure(REPEATS)


def toxiproxy_latency() -> dict[str, Any]:
    from streams_bench import toxiproxy_latency as measure

    return measure(REPEATS)


def kafka_start() -> dict[str, Any]:
    from streams_bench import kafka_start as measure

    return measure(min(REPEATS, 3))


BENCHMARKS: dict[str, Callable[[], dict[str, Any]]] = {
    "kafka_start": kafka_start,
    "toxiproxy_latency": toxiproxy_latency,
    "telemetry_phases": telemetry_phases,
    "telemetry_process": telemetry_process,
    "report_1000": report_1000,
    "data_corruption_10m": data_corruption_10m,
    "drift_measure_10m": drift_measure_10m,
    "kube_pod_delete_1000": kube_pod_delete_1000,
    "argo_validate_500": argo_validate_500,
    "argo_inject_500": argo_inject_500,
    "airflow_parse": airflow_parse,
    "insert_chaos_1000": insert_chaos_1000,
    "gate_decision": gate_decision,
    "artifact_backup_restore": artifact_backup_restore,
    "checkpoint_inject": checkpoint_inject,
    "pod_delete_detection": pod_delete_detection,
    "kill_switch": kill_switch,
    "hostile_stage_files": hostile_stage_files,
}


def main(argv: list[str]) -> int:
    from mlchaos_steps.config import configure_airflow_home

    configure_airflow_home(Path(tempfile.mkdtemp(prefix="mlchaos-bench-airflow-")))
    chosen = argv or list(BENCHMARKS)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["machine"] = {"python": platform.python_version(), "platform": platform.platform(),
                          "cpus": os.cpu_count(), "repeats": REPEATS}
    for name in chosen:
        print(f"== {name}", flush=True)
        results[name] = {**BENCHMARKS[name](), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        print(json.dumps(results[name], indent=2), flush=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
