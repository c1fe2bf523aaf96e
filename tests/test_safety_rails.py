"""Guard rails against mistakes and hostile input: a stage never breaks more than it was pointed at,
bad input is refused before anything is touched (and leaves no ledger row), leftovers are stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import BIN, checkpoint_digests, cli, pod_doc, tree_digests, wipe_doc, write_stage

from mlchaos_steps.api import restore_run, run_phase, run_stage
from mlchaos_steps.core.records import ExecutionStatus
from mlchaos_steps.errors import SafetyError, SpecError
from mlchaos_steps.examples import workloads
from mlchaos_steps.examples.workloads import ExampleServer
from mlchaos_steps.ledgers import SqliteLedger
from mlchaos_steps.stages import parse_stage


def _refused(stage_file: Path, field: str, *extra: str) -> str:
    proc = cli("run", str(stage_file), *extra)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert field in proc.stderr, proc.stderr
    assert SqliteLedger().executions() == []  # a refusal leaves no row in the ledger
    return proc.stderr


# -- 8.1 blast radius of process selectors ----------------------------------------------------------
@pytest.mark.parametrize("cmdline", [".", ".*", "^", "|", "(?:)", "$"])
def test_selectors_that_match_anything_are_refused(cmdline: str) -> None:
    doc = {"kind": "PodDelete", "spec": {"target": {"local": {"selector": {"cmdline": cmdline}}}, "count": 1}}
    with pytest.raises(SpecError, match="matches any command line"):
        parse_stage(doc)


def test_env_selector_on_a_variable_every_process_has_is_refused() -> None:
    doc = {"kind": "PodDelete", "spec": {"target": {"local": {"selector": {"env": {"PATH": "/usr/bin:/bin"}}}},
                                         "count": 1}}
    with pytest.raises(SpecError, match="PATH is set in unrelated processes"):
        parse_stage(doc)


def test_selector_spanning_unrelated_process_trees_is_refused_and_nothing_killed(
        healthy_server: ExampleServer, tmp_path: Path) -> None:
    import sys

    # An unrelated process tree: a daemon of someone else's (its launcher exits, init adopts it).
    marker = tmp_path / "unrelated.pid"
    subprocess.run([sys.executable, "-c", "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
                    "'import time; time.sleep(120)  # mlchaos-unrelated-uvicorn-lookalike'], start_new_session=True); "
                    f"open({str(marker)!r}, 'w').write(str(p.pid))"], check=True)
    unrelated = int(marker.read_text())
    try:
        before = healthy_server.replica_pids()
        doc = pod_doc(healthy_server)
        # this workload and the look-alike, and no other test's servers (tests run side by side)
        doc["spec"]["target"]["local"]["selector"] = {
            "cmdline": rf"uvicorn .*--port {healthy_server.port}\b|unrelated-uvicorn-lookalike"}
        message = _refused(write_stage(tmp_path / "broad.yaml", doc), "spec.target.local.selector", "--dry-run")
        assert "unrelated process trees" in message and str(unrelated) in message
        assert healthy_server.replica_pids() == before
        assert psutil.pid_exists(unrelated)
    finally:
        psutil.Process(unrelated).kill()


def test_dry_run_shows_the_matched_processes(healthy_server: ExampleServer, tmp_path: Path) -> None:
    proc = cli("run", str(write_stage(tmp_path / "pod.yaml", pod_doc(healthy_server))), "--dry-run", "--json")
    plan = json.loads(proc.stdout)["plan"]
    assert [r["pid"] for r in plan["roots"]] == [healthy_server.process.pid]
    assert "uvicorn" in plan["roots"][0]["cmdline"] and len(plan["replicas"]) == 2


# -- 8.2 / 8.3 system folders, chained URLs, allowlists ---------------------------------------------
def test_system_sub_folders_are_refused() -> None:
    doc = {"kind": "CheckpointWipe", "spec": {"store": "file:///usr/share/zoneinfo/Etc", "pattern": r"GMT\+(\d+)",
                                              "resume": {"command": ["true"], "max_lost_steps": 1}}}
    with pytest.raises(SpecError, match="system folder"):
        parse_stage(doc)


def test_a_link_into_a_system_folder_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "ckpts"
    link.symlink_to("/usr/share/zoneinfo/Etc")
    doc = {"kind": "CheckpointWipe", "spec": {"store": link.as_uri(), "pattern": r"GMT\+(\d+)",
                                              "resume": {"command": ["true"], "max_lost_steps": 1}}}
    _refused(write_stage(tmp_path / "w.yaml", doc), "spec.store", "--dry-run")


@pytest.mark.parametrize("prefix", ["simplecache::", "filecache::", "blockcache::"])
def test_chained_urls_are_refused(store: Path, prefix: str) -> None:
    doc = wipe_doc(store)
    doc["spec"]["store"] = prefix + store.as_uri()
    with pytest.raises(SpecError, match="chains file systems"):
        parse_stage(doc)


@pytest.mark.parametrize("allowlist", ["", ":", "  ", " : "])
def test_an_allowlist_that_is_set_but_empty_refuses_everything(store: Path, tmp_path: Path, allowlist: str) -> None:
    before = tree_digests(store)
    proc = cli("run", str(write_stage(tmp_path / "w.yaml", wipe_doc(store))),
                   env={"MLCHAOS_ALLOWED_PATHS": allowlist})
    assert proc.returncode == 2 and "MLCHAOS_ALLOWED_PATHS" in proc.stderr, proc.stderr
    assert tree_digests(store) == before


def test_allowlist_admits_stores_inside_it(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCHAOS_ALLOWED_PATHS", f"/nowhere:{store.parent}")
    assert run_stage(parse_stage(wipe_doc(store)), "allowed").verdict.status == "passed"


def test_allowlist_applies_to_remote_stores_by_url_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/rails/ckpts/step-1/w.bin", b"x" * 64)
    doc = {"kind": "CheckpointWipe", "spec": {"store": "memory:///rails/ckpts", "resume": {
        "command": ["true"], "max_lost_steps": 1}}}
    monkeypatch.setenv("MLCHAOS_ALLOWED_PATHS", "memory:///elsewhere")
    with pytest.raises(SafetyError, match="outside MLCHAOS_ALLOWED_PATHS"):
        run_phase(parse_stage(doc), "snapshot", "remote-refused")
    monkeypatch.setenv("MLCHAOS_ALLOWED_PATHS", "memory:///rails")
    run_phase(parse_stage(doc), "snapshot", "remote-allowed")
    restore_run("remote-allowed")
    fs.rm("/rails", recursive=True)


# -- 8.4 links in and around the store --------------------------------------------------------------
def test_a_planted_quarantine_link_is_never_followed(store: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (store / ".mlchaos-quarantine").symlink_to(outside)
    before = checkpoint_digests(store)
    stage = parse_stage(wipe_doc(store))
    run_phase(stage, "snapshot", "planted")
    with pytest.raises(SafetyError, match="link or not a folder"):
        run_phase(stage, "inject", "planted")
    assert list(outside.iterdir()) == []  # nothing moved outside the store
    assert checkpoint_digests(store) == before
    restore_run("planted")
    assert SqliteLedger().get("planted").status == ExecutionStatus.RESTORED  # type: ignore[union-attr]


def test_a_checkpoint_that_is_a_relative_symlink_is_refused_before_anything_moves(store: Path, tmp_path: Path
                                                                                    ) -> None:
    (store / "step-500").rename(store / "real-500")
    (store / "step-500").symlink_to("real-500")
    before = tree_digests(store)
    _refused(write_stage(tmp_path / "w.yaml", wipe_doc(store)), "spec.store")
    assert tree_digests(store) == before
    assert SqliteLedger().leases() == {}


# -- 8.6 invalid specs are refused before anything is touched ---------------------------------------
@pytest.mark.parametrize(("change", "field"), [
    (lambda s: s["resume"].update(cwd="/no/such/folder"), "spec.resume.cwd"),
    (lambda s: s["resume"].update(command=["no-such-program-mlchaos", "--resume"]), "spec.resume.command"),
    (lambda s: s["resume"].update(env={"BAD=NAME": "x"}), "spec.resume.env"),
    (lambda s: s["resume"].update(command=["python", "-c", "print(1)\x00"]), "spec.resume.command"),
], ids=["missing-cwd", "missing-program", "env-name-with-equals", "nul-in-argument"])
def test_invalid_resume_specs(store: Path, tmp_path: Path, change: Any, field: str) -> None:
    doc = wipe_doc(store)
    change(doc["spec"])
    before = tree_digests(store)
    _refused(write_stage(tmp_path / "bad.yaml", doc), field)
    assert tree_digests(store) == before


def test_a_pattern_whose_group_is_not_a_number_is_refused(store: Path, tmp_path: Path) -> None:
    (store / "step-best").mkdir()
    doc = wipe_doc(store, pattern=r"step-(\w+)")
    before = tree_digests(store)
    _refused(write_stage(tmp_path / "bad.yaml", doc), "spec.pattern")
    assert tree_digests(store) == before


def test_an_unknown_api_version_is_refused(store: Path, tmp_path: Path) -> None:
    doc = {"apiVersion": "mlchaos.io/v9", **wipe_doc(store)}
    _refused(write_stage(tmp_path / "bad.yaml", doc), "apiVersion")
    assert parse_stage({"apiVersion": "mlchaos.io/v1alpha1", **wipe_doc(store)}).kind == "CheckpointWipe"


# -- 8.10 a resume command outliving mlchaos is stopped by restore ----------------------------------
def test_restore_stops_a_trainer_left_running_by_a_crash(store: Path, tmp_path: Path) -> None:
    resume = {"command": workloads.resume_command(store, save=True, step_seconds=0.2), "max_lost_steps": 200}
    stage_file = write_stage(tmp_path / "w.yaml", wipe_doc(store, "corrupt-latest", resume=resume))
    before = checkpoint_digests(store)
    proc = subprocess.Popen([str(BIN / "mlchaos"), "run", str(stage_file), "--run-key", "orphan-trainer"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        execution = SqliteLedger().get("orphan-trainer") if (Path(str(tmp_path)).exists()) else None
        if execution and execution.state.get("resume_process"):
            break
        time.sleep(0.01)
    trainer = SqliteLedger().get("orphan-trainer").state["resume_process"][0]  # type: ignore[union-attr]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert psutil.pid_exists(trainer)  # the trainer outlived mlchaos, and would keep writing
    result = cli("restore", "--orphaned", "--json")
    assert result.returncode == 0, result.stderr
    assert not psutil.pid_exists(trainer) or psutil.Process(trainer).status() == psutil.STATUS_ZOMBIE
    time.sleep(0.5)
    assert checkpoint_digests(store) == before
