"""Shared fixtures: a fresh MLCHAOS_HOME per test, real trainers, real servers, the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlchaos_steps.config import configure_airflow_home
from mlchaos_steps.examples import workloads

# Before anything imports airflow: an Airflow home of this test process's own, on SQLite. Set, not
# defaulted: pytest-xdist workers inherit the controller's environment, and one SQLite database under
# several workers' dag.test() runs loses DAG runs.
_AIRFLOW_HOME = Path(__import__("tempfile").mkdtemp(prefix="mlchaos-test-airflow-"))
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}"
configure_airflow_home(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
# MLflow's usage telemetry: nothing to send it to here, and its client sets and unsets an environment
# variable from whichever thread loads it, under other threads reading os.environ (a KeyError seen).
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def mlchaos_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "mlchaos-home"
    monkeypatch.setenv("MLCHAOS_HOME", str(home))
    monkeypatch.delenv("MLCHAOS_DISABLED", raising=False)
    monkeypatch.delenv("MLCHAOS_ALLOWED_PATHS", raising=False)
    # Every test starts on the embedded MLflow; fixtures that want a server set it (and undo it).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    return home


# The heaviest tests (marked ``heavy(seconds)``: the demo, workflows whose every step is a fresh process)
# head the workers' shares, longest first onto the least loaded share, so the run neither piles them onto
# one worker nor ends waiting for one started last. The tests that run DAGs in this process go together
# to the least loaded share: each worker that runs one pays Airflow's warm-up (its imports, metadata
# database, in-process execution API: 10 to 15 s of CPU), so ``heavy`` is not for them. pytest-xdist's
# work stealing hands worker k the next ``len(pending) // (workers - k)`` tests in collection order,
# then idle workers steal from the end of others' queues: the heads stay where they are put.
AIRFLOW_IN_PROCESS = ("test_airflow.py", "test_example_dags.py", "test_airflow_kubernetes.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Collection runs on each worker (the controller compares their lists), where xdist has cleared
    # numprocesses: the worker count comes with the worker's input.
    n = max(1, int(getattr(config, "workerinput", {}).get("workercount", 1)))

    def weight(item: pytest.Item) -> float:
        marker = item.get_closest_marker("heavy")
        return float(marker.args[0]) if marker else 0.0

    heavy = sorted((i for i in items if weight(i)), key=weight, reverse=True)
    together = [i for i in items if not weight(i) and i.path.name in AIRFLOW_IN_PROCESS]
    rest = [i for i in items if not weight(i) and i.path.name not in AIRFLOW_IN_PROCESS]
    shares: list[list[pytest.Item]] = [[] for _ in range(n)]
    loads = [0.0] * n
    for item in heavy:
        k = loads.index(min(loads))
        shares[k].append(item)
        loads[k] += weight(item)
    shares[loads.index(min(loads))] += together
    left = len(items)
    for k, share in enumerate(shares):
        size = left // (n - k)
        left -= size
        take = max(0, size - len(share))
        share += rest[:take]
        del rest[:take]
    shares[-1] += rest
    items[:] = [item for share in shares for item in share]


def tree_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under root (relative paths), to compare the world before and after."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def checkpoint_digests(store: Path) -> dict[str, str]:
    """Digests of everything in a store except mlchaos's own quarantine folder."""
    return {k: v for k, v in tree_digests(store).items() if not k.startswith(".mlchaos-quarantine")}


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example trainer's checkpoints (step-100 .. step-500), trained once per session."""
    path = tmp_path_factory.mktemp("trained") / "ckpts"
    workloads.train(path, steps=500, checkpoint_every=100)
    return path


@pytest.fixture
def store(trained_store: Path, tmp_path: Path) -> Path:
    """A fresh copy of the trained checkpoint store for one test (the stage breaks and restores it)."""
    import shutil

    return Path(shutil.copytree(trained_store, tmp_path / "ckpts", symlinks=True))


@pytest.fixture
def healthy_server(tmp_path: Path) -> Iterator[workloads.ExampleServer]:
    server = workloads.start_server(healthy=True, workers=2, log_path=tmp_path / "server.log")
    yield server
    server.stop()


@pytest.fixture
def fragile_server(tmp_path: Path) -> Iterator[workloads.ExampleServer]:
    server = workloads.start_server(healthy=False, workers=2, log_path=tmp_path / "fragile.log")
    yield server
    server.stop()


def wipe_doc(store: Path, mode: str = "delete-latest", broken: bool = False, **spec: Any) -> dict[str, Any]:
    resume = spec.pop("resume", None) or {
        "command": workloads.resume_command(store, broken=broken), "max_lost_steps": 200,
    }
    return {"kind": "CheckpointWipe", "spec": {
        "store": store.as_uri(), "pattern": r"step-(\d+)", "mode": mode, "count": 1, "resume": resume, **spec,
    }}


def pod_doc(server: workloads.ExampleServer, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "target": {"local": {"selector": server.selector}}, "count": 1, "signal": "SIGKILL",
        "recovery_slo_s": 20 if server.healthy else 3, "stable_s": 1,
        "probe": {"http": {"url": server.url + "/ping", "min_success_ratio": 0.95}},
    }
    base.update(spec)
    return {"kind": "PodDelete", "spec": base}


def write_stage(path: Path, *docs: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(list(docs)))
    return path


def mlchaos(*args: str, timeout: float = 180, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a fresh process."""
    return subprocess.run(
        [str(BIN / "mlchaos"), *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def mlchaos_json(*args: str, **kw: Any) -> tuple[int, Any]:
    proc = mlchaos(*args, "--json", **kw)
    assert proc.stdout.strip(), f"no output; stderr: {proc.stderr}"
    return proc.returncode, json.loads(proc.stdout)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI's own ``main()`` in this process: the same parsing, output and exit codes as the
    ``mlchaos`` command without starting an interpreter. Tests about processes (signals, crashes,
    phases in separate processes, what reaches a log) use :func:`mlchaos`."""
    import io
    import logging
    import signal
    from contextlib import redirect_stderr, redirect_stdout

    from mlchaos_steps.cli import main

    out, err = io.StringIO(), io.StringIO()
    # Only the variables given are set and put back: libraries (MLflow's telemetry) keep what they set.
    saved_env = {key: os.environ.get(key) for key in env or {}}
    saved_sigterm = signal.getsignal(signal.SIGTERM)
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    os.environ.update(env or {})
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        signal.signal(signal.SIGTERM, saved_sigterm)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    return subprocess.CompletedProcess(["mlchaos", *args], code, out.getvalue(), err.getvalue())


def assert_refused_untouched(doc: dict[str, Any], field: str, root: Path, tmp_path: Path) -> str:
    """``mlchaos run`` refuses the stage with exit 2, naming ``field``, and nothing under ``root`` changed."""
    before = tree_digests(root)
    proc = cli("run", str(write_stage(tmp_path / "bad.yaml", doc)))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert field in proc.stderr, proc.stderr
    assert tree_digests(root) == before
    return proc.stderr


def cli_json(*args: str, **kw: Any) -> tuple[int, Any]:
    proc = cli(*args, "--json", **kw)
    assert proc.stdout.strip(), f"no output; stderr: {proc.stderr}"
    return proc.returncode, json.loads(proc.stdout)


def replica_pids(server: workloads.ExampleServer) -> list[int]:
    return server.replica_pids()


@dataclass(frozen=True)
class SharedServer:
    """A server another test process started and will stop; this one only uses it."""

    url: str


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory: pytest.TempPathFactory, worker_id: str
                    ) -> Iterator[workloads.TrackingServer | SharedServer]:
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, local artifact root) for the whole run.

    Under pytest-xdist the workers share one: the first to need it starts it (under a file lock) and
    the controller stops it when the run ends (``pytest_sessionfinish``). Tests never share a model
    name, a run key or a store, so they do not disturb each other on it."""
    if worker_id == "master":
        server = workloads.start_tracking_server(tmp_path_factory.mktemp("mlflow-server"))
        yield server
        server.stop()
        return
    def start(root: Path) -> dict[str, Any]:
        started = workloads.start_tracking_server(root)
        return {"url": started.url, "pid": started.process.pid}

    yield SharedServer(_started_once(tmp_path_factory, SHARED_SERVER_FILE, start)["url"])


SHARED_SERVER_FILE = "mlflow-server.json"
SHARED_CLUSTER_FILE = "kube-cluster.json"
SHARED_TELEMETRY_FILE = "telemetry.json"


def _started_once(factory: pytest.TempPathFactory, info_file: str, start: Any) -> dict[str, Any]:
    """For xdist workers: the first to ask starts the thing (``start(folder)`` returns what the others need,
    pids included), under a file lock; the others read it. ``pytest_sessionfinish`` stops it."""
    from filelock import FileLock

    run_root = factory.getbasetemp().parent
    info = run_root / info_file
    with FileLock(str(info.with_suffix(".lock"))):
        if not info.exists():
            info.write_text(json.dumps(start(run_root / info.stem)))
        return dict(json.loads(info.read_text()))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The xdist controller stops the tracking server and the control plane its workers shared."""
    if hasattr(session.config, "workerinput"):
        return
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    from mlchaos_steps.core.processes import stop_process_group

    info = factory.getbasetemp() / SHARED_SERVER_FILE
    if info.exists():
        # the run is over: nothing the server holds needs a clean stop (its SQLite file goes with the run)
        stop_process_group(json.loads(info.read_text())["pid"], grace_s=1)
    for name, grace_s in ((SHARED_CLUSTER_FILE, 5), (SHARED_TELEMETRY_FILE, 2)):
        shared = factory.getbasetemp() / name
        if shared.exists():
            for pid in json.loads(shared.read_text())["pids"]:
                stop_process_group(pid, grace_s=grace_s)


@dataclass
class TelemetryBackends:
    """The collector, Pushgateway and Prometheus (scraping the Pushgateway every second) of the run."""

    collector: Any
    pushgateway_url: str
    prometheus: Any


def telemetry_binary(name: str) -> Path:
    return Path(os.environ.get(f"{name.upper().replace('-', '_')}_BIN") or ROOT / "build" / "bin" / name)


@pytest.fixture(scope="session")
def telemetry_backends(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Iterator[TelemetryBackends]:
    """Started once for the whole run (the first worker to need them), stopped by the controller; without
    workers, by this fixture."""
    from mlchaos_steps.core.processes import stop_process_group
    from mlchaos_steps.examples import observability

    def start(root: Path) -> dict[str, Any]:
        collector = observability.start_collector(telemetry_binary("otelcol-mlchaos"), root / "otel")
        gateway = observability.start_pushgateway(telemetry_binary("pushgateway"), root / "pushgateway")
        prometheus = observability.start_prometheus(
            telemetry_binary("prometheus"), root / "prometheus",
            {"pushgateway": f"127.0.0.1:{gateway.port}"}, honor_labels=("pushgateway",))
        return {"collector": [collector.port, str(collector.out)], "pushgateway": gateway.url,
                "prometheus": prometheus.port,
                "pids": [collector.process.pid, gateway.process.pid, prometheus.process.pid]}

    if worker_id == "master":
        info = start(tmp_path_factory.mktemp("telemetry"))
    else:
        info = _started_once(tmp_path_factory, SHARED_TELEMETRY_FILE, start)
    port, out = info["collector"]
    collector = observability.Collector(port, None, Path(out))  # type: ignore[arg-type]
    yield TelemetryBackends(collector, info["pushgateway"], observability.Prometheus(info["prometheus"], None))  # type: ignore[arg-type]
    if worker_id == "master":
        for pid in info["pids"]:
            stop_process_group(pid, grace_s=2)


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Iterator[Any]:
    """A real control plane (etcd, kube-apiserver with RBAC, kube-controller-manager; tests/kube.py) and
    the simulated kubelets, started once for the whole run like the tracking server, shared by the
    workers (each test works in namespaces of its own)."""
    from kube import Cluster, ControlPlane

    if os.environ.get("MLCHAOS_E2E_KUBECONFIG"):  # `make e2e-kind`: a real cluster, with real kubelets
        cluster = Cluster.from_kubeconfig(Path(os.environ["MLCHAOS_E2E_KUBECONFIG"]), tmp_path_factory.mktemp("e2e"))
        yield cluster
        cluster.delete_namespaces()
        return
    if worker_id == "master":
        plane = ControlPlane(tmp_path_factory.mktemp("kube")).start()
        plane.start_agent()
        yield Cluster(plane.server, plane.ca, plane.admin_config, plane.root)
        plane.stop()
        return
    def start(root: Path) -> dict[str, Any]:
        plane = ControlPlane(root).start()
        plane.start_agent()
        return plane.info()

    data = _started_once(tmp_path_factory, SHARED_CLUSTER_FILE, start)
    yield Cluster(data["server"], Path(data["ca"]), Path(data["admin_config"]), Path(data["root"]))


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """The session's Airflow metadata database (AIRFLOW_HOME is set above, before any airflow import)."""
    from mlchaos_steps.airflow.local_run import migrate

    migrate(reset=True)
    return Path(os.environ["AIRFLOW_HOME"])


@pytest.fixture
def mlflow_server(tracking_server: workloads.TrackingServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
    return tracking_server.url


@pytest.fixture
def model_name() -> str:
    import uuid

    return f"churn-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def two_versions(mlflow_server: str, model_name: str) -> tuple[str, str, str]:
    """Version 1 is @champion, version 2 is @challenger: both real scikit-learn models."""
    from mlchaos_steps.examples.models import register_sklearn
    from mlchaos_steps.targets.mlflow import client

    v1, v2 = register_sklearn(model_name), register_sklearn(model_name)
    client().set_registered_model_alias(model_name, "champion", v1)
    client().set_registered_model_alias(model_name, "challenger", v2)
    return model_name, v1, v2


def record_real_verdict(name: str, version: str, stage_id: str, status: str, restored: bool = True) -> str:
    """A verdict written the way the engine writes it: an evidence run, the tags, the run finished."""
    import uuid

    from mlchaos_steps.core.verdict import Verdict
    from mlchaos_steps.gate.verdicts import finish_execution, log_execution, record_verdict
    from mlchaos_steps.targets.mlflow import ModelRef

    ref, key = ModelRef(name, str(version)), f"test-{uuid.uuid4().hex[:8]}"
    verdict = Verdict(status=status, reason=f"{stage_id} {status} (test)")  # type: ignore[arg-type]
    run_id = log_execution(stage_id, "Test", {}, verdict, key, None, ref)
    record_verdict(ref, stage_id, verdict, run_id, key, restored=restored)
    finish_execution(run_id, verdict)
    return run_id
