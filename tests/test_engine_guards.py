"""Nothing lost, whatever fails: concurrent retries, SIGTERM, a resume command that ignores SIGTERM,
hostile stage files, and open runs that `restore --orphaned` leaves alone."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import BIN, cli, mlchaos, tree_digests, wipe_doc, write_stage

from mlchaos_steps.api import run_phase
from mlchaos_steps.core.records import ActionState, ExecutionStatus
from mlchaos_steps.errors import SpecError
from mlchaos_steps.examples import workloads
from mlchaos_steps.ledgers import SqliteLedger
from mlchaos_steps.stages import load_stages, parse_stage


def _wait_until(condition, proc: subprocess.Popen[str], what: str, timeout_s: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if condition():
                return
        except Exception:  # the ledger may not exist yet
            pass
        time.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def _resume_started(run_key: str) -> bool:
    execution = SqliteLedger().get(run_key)
    return bool(execution and execution.state.get("resume_process"))


# -- 21. one run key is one execution, whatever the number of processes -----------------------------
def test_concurrent_retries_of_one_run_key_inject_once_verify_once_and_agree(store: Path, tmp_path: Path) -> None:
    counter = tmp_path / "verify-runs"
    resume = {"command": [sys.executable, "-c", f"open({str(counter)!r}, 'a').write('x'); "
                                                  "import time; time.sleep(1); "
                                                  "print('{\"mlchaos_resumed_from_step\": 400}')"],
              "max_lost_steps": 200}
    stage_file = write_stage(tmp_path / "w.yaml", wipe_doc(store, "corrupt-latest", resume=resume))
    before = tree_digests(store)
    procs = [subprocess.Popen([str(BIN / "mlchaos"), "run", str(stage_file), "--run-key", "retried", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(12)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    verdicts = [json.loads(out)["verdict"] for code, out, err in results]
    assert verdicts == ["passed"] * 12, results
    assert counter.read_text() == "x"  # verify ran once
    assert len(SqliteLedger().actions("retried")) == 1  # injected once
    assert tree_digests(store) == before


# -- 22. the kill switch stops a resume command that ignores SIGTERM -------------------------------
def test_kill_switch_stops_a_resume_command_that_ignores_sigterm(store: Path, tmp_path: Path,
                                                                 mlchaos_home: Path) -> None:
    stubborn = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                      "time.sleep(600)"]
    stage_file = write_stage(tmp_path / "w.yaml", wipe_doc(store, resume={"command": stubborn, "max_lost_steps": 9}))
    before = tree_digests(store)
    proc = subprocess.Popen([str(BIN / "mlchaos"), "run", str(stage_file), "--run-key", "stubborn"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_until(lambda: _resume_started("stubborn"), proc, "the resume command started")
    resume_pid = SqliteLedger().get("stubborn").state["resume_process"][0]  # type: ignore[union-attr]
    (mlchaos_home / "STOP").touch()
    proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert not psutil.pid_exists(resume_pid) or psutil.Process(resume_pid).status() == psutil.STATUS_ZOMBIE
    assert tree_digests(store) == before
    assert SqliteLedger().get("stubborn").verdict == "inconclusive"  # type: ignore[union-attr]


# -- 23. SIGTERM takes the same path as Ctrl-C: restore runs ---------------------------------------
def test_sigterm_during_verify_restores_before_exiting(store: Path, tmp_path: Path) -> None:
    resume = {"command": workloads.resume_command(store, step_seconds=0.5), "max_lost_steps": 200}
    stage_file = write_stage(tmp_path / "w.yaml", wipe_doc(store, "corrupt-latest", resume=resume))
    before = tree_digests(store)
    proc = subprocess.Popen([str(BIN / "mlchaos"), "run", str(stage_file), "--run-key", "evicted"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_until(lambda: _resume_started("evicted"), proc, "verify started")
    assert tree_digests(store) != before  # the fault is in place
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3, stderr
    assert "SIGTERM" in stderr
    execution = SqliteLedger().get("evicted")
    assert execution is not None and execution.status == ExecutionStatus.RESTORED
    assert execution.verdict == "inconclusive"
    assert tree_digests(store) == before


# -- 24. hostile stage files are refused with exit 2 ------------------------------------------------
# A billion laughs: nine levels of nine aliases each, a few hundred bytes that expand to 9**10 values.
BOMB = "x-a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"x-{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(9)
) + "kind: CheckpointWipe\nspec: {store: 'file:///data/ckpts', resume: {command: *j, max_lost_steps: 1}}\n"


@pytest.mark.parametrize(("content", "message"), [
    (BOMB.encode(), "aliases"),
    (("kind: " + "[" * 5000 + "]" * 5000).encode(), "nested deeper"),
    (b"kind: CheckpointWipe\nspec: {store: \xff\xfe}\n", "not valid UTF-8"),
    (b"kind: CheckpointWipe\nspec: {count: " + b"9" * 5000 + b"}\n", "digits"),
    (b"# " + b"x" * (2 * 1024 * 1024), "larger than"),
], ids=["alias-bomb", "deep-nesting", "invalid-utf8", "huge-integer", "huge-file"])
def test_hostile_stage_files_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "hostile.yaml"
    path.write_bytes(content)
    with pytest.raises(SpecError, match=message):
        load_stages(path)


def test_hostile_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hostile.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SpecError, match="nested too deeply"):
        load_stages(path)


def test_cli_refuses_an_alias_bomb_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    proc = mlchaos("run", str(path), timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "aliases" in proc.stderr


def test_a_few_aliases_still_work(store: Path, tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text(f"kind: CheckpointWipe\nspec:\n  store: &s {store.as_uri()}\n"
                    "  resume: {command: [echo, *s], max_lost_steps: 1}\n")
    stage = load_stages(path)[0]
    assert stage.resume.command == ["echo", store.as_uri()]  # type: ignore[attr-defined]


# -- 25. restore --orphaned says which open runs it left alone --------------------------------------
def test_restore_orphaned_lists_the_runs_it_leaves_alone(store: Path) -> None:
    stage = parse_stage(wipe_doc(store))
    run_phase(stage, "snapshot", "between-phases")
    run_phase(stage, "inject", "between-phases")
    assert [a.state for a in SqliteLedger().actions("between-phases")] == [ActionState.APPLIED]
    proc = cli("restore", "--orphaned")
    assert proc.returncode == 0
    assert "between-phases" in proc.stderr and "--older-than" in proc.stderr
    result = json.loads(cli("restore", "--orphaned", "--json").stdout)
    assert result["restored"] == []
    (left,) = result["left_open"]
    assert left["run_key"] == "between-phases" and left["age_s"] >= 0 and "--older-than 3600" in left["why"]
    assert not (store / "step-500").exists()  # left alone, as it said
    result = json.loads(cli("restore", "--orphaned", "--older-than", "0", "--json").stdout)
    assert [r["run_key"] for r in result["restored"]] == ["between-phases"] and result["left_open"] == []


# -- 8.11 the kill switch stops inject while it writes a large damaged copy -------------------------
def test_kill_switch_during_inject_stops_the_damage_writer_and_restores(tmp_path: Path, mlchaos_home: Path) -> None:
    import os
    import threading

    from mlchaos_steps.api import restore_run
    from mlchaos_steps.errors import KillSwitchEngaged

    store = tmp_path / "big"
    (store / "step-1").mkdir(parents=True)
    (store / "step-1" / "w.bin").write_bytes(os.urandom(1024))
    (store / "step-2").mkdir()
    with open(store / "step-2" / "w.bin", "wb") as handle:
        for _ in range(32):
            handle.write(os.urandom(8 * 1024 * 1024))  # 256 MiB: the damaged copy takes a while to write
    before = tree_digests(store)
    stage = parse_stage({"kind": "CheckpointWipe", "spec": {"store": store.as_uri(), "mode": "corrupt-latest",
                                                            "resume": {"command": ["true"], "max_lost_steps": 1}}})
    run_phase(stage, "snapshot", "stop-inject")

    def stop_when_the_damage_is_being_written() -> None:
        while not any(p.name.endswith(".damaged") for p in (store / ".mlchaos-quarantine").rglob("*")
                      if (store / ".mlchaos-quarantine").exists()):
            time.sleep(0.001)
        (mlchaos_home / "STOP").touch()

    watcher = threading.Thread(target=stop_when_the_damage_is_being_written, daemon=True)
    watcher.start()
    with pytest.raises(KillSwitchEngaged):
        run_phase(stage, "inject", "stop-inject")
    restore_run("stop-inject")
    assert tree_digests(store) == before
    assert not (store / ".mlchaos-quarantine").exists()


def test_servers_get_ports_below_the_range_outgoing_connections_use() -> None:
    import socket

    from mlchaos_steps.examples.workloads import _ephemeral_low, free_port, free_port_block

    low = _ephemeral_low()
    for port in [free_port() for _ in range(50)] + [free_port_block(4) + 3]:
        assert 10000 <= port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free when handed out
