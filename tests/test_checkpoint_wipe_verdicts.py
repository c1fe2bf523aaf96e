"""checkpoint-wipe against trainers and stores that fooled earlier versions: each class healthy and broken.

The "systems" here are small scripts written the way other projects write them (launchers, daemonised
loggers, multi-tier checkpointing, trainers that re-save in place), not the project's example trainer.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import checkpoint_digests, mlchaos, tree_digests, wipe_doc, write_stage

from mlchaos_steps.api import restore_run, run_phase, run_stage
from mlchaos_steps.core.records import ExecutionStatus
from mlchaos_steps.examples import workloads
from mlchaos_steps.ledgers import SqliteLedger
from mlchaos_steps.stages import parse_stage

REPORT = '{"mlchaos_resumed_from_step": %d}'


def _script(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _resume(command: list[str], **extra: Any) -> dict[str, Any]:
    return {"command": command, "max_lost_steps": 200, **extra}


# -- 1. no inode is shared between the quarantine and the store ------------------------------------
def test_trainer_resaving_a_folder_checkpoint_in_place_loses_nothing(store: Path) -> None:
    """The damaged copy's other files used to be hard links into the quarantined original."""
    resave = f"""
import os
print('{REPORT % 400}', flush=True)
for name in sorted(os.listdir({str(store / 'step-500')!r})):
    with open(os.path.join({str(store / 'step-500')!r}, name), 'r+b') as f:  # in place: same inode
        f.write(b'resaved by the trainer')
"""
    before = checkpoint_digests(store)
    outcome = run_stage(parse_stage(wipe_doc(store, "corrupt-latest", resume=_resume(_script(resave)))), "resave")
    assert outcome.verdict.status == "passed", outcome.verdict
    assert outcome.restored, outcome.restore_error
    assert checkpoint_digests(store) == before  # every original byte back
    restored = outcome.phases[-1].output["actions"][0]
    kept = Path(restored["kept_foreign"])  # the trainer's re-saved copy is foreign: kept, not deleted
    assert b"resaved by the trainer" in (kept / "manifest.json").read_bytes()


# -- 2. the resume command is judged on its own exit, with deadlines ---------------------------------
def test_resume_that_leaves_a_daemon_holding_its_pipes_passes_and_the_daemon_is_stopped(store: Path,
                                                                                         tmp_path: Path) -> None:
    marker = tmp_path / "daemon.pid"
    launcher = f"""
import subprocess, sys
p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])  # inherits stdout and stderr
open({str(marker)!r}, 'w').write(str(p.pid))
print('{REPORT % 400}', flush=True)
"""
    stage_file = write_stage(tmp_path / "w.yaml",
                             wipe_doc(store, resume=_resume(_script(launcher), timeout_s=120)))
    proc = mlchaos("run", str(stage_file), "--json", timeout=100)
    result = json.loads(proc.stdout)
    assert (proc.returncode, result["verdict"]) == (0, "passed"), result
    pid = int(marker.read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_daemon_that_escapes_the_group_and_never_exits_does_not_hang_the_stage(store: Path, tmp_path: Path) -> None:
    marker = tmp_path / "escaped.pid"
    launcher = f"""
import os, subprocess, sys
p = subprocess.Popen([sys.executable, '-c', 'import os, time; os.setsid(); time.sleep(600)'])
open({str(marker)!r}, 'w').write(str(p.pid))
print('{REPORT % 400}', flush=True)
"""
    stage_file = write_stage(tmp_path / "w.yaml", wipe_doc(store, resume=_resume(_script(launcher), timeout_s=600)))
    try:
        proc = mlchaos("run", str(stage_file), "--json", timeout=100)  # hangs (TimeoutExpired) if it waits for EOF
        assert json.loads(proc.stdout)["verdict"] == "passed"
    finally:
        if marker.exists():
            with contextlib.suppress(psutil.NoSuchProcess):  # gone already: the engine may reap it too
                psutil.Process(int(marker.read_text())).kill()


def test_resume_command_that_never_exits_fails_at_its_timeout(store: Path) -> None:
    hang = _script("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; "
                   "time.sleep(600)']); time.sleep(600)")
    outcome = run_stage(parse_stage(wipe_doc(store, resume=_resume(hang, timeout_s=2))), "hangs")
    assert outcome.verdict.status == "failed"
    assert "did not finish resuming within 2s" in outcome.verdict.reason
    assert outcome.restored


# -- 3. the last report counts; reports that contradict each other fail -----------------------------
def test_launcher_and_trainer_that_agree_pass(store: Path) -> None:
    agree = _script(f"print('{REPORT % 400}'); print('training...'); print('{REPORT % 400}')")
    outcome = run_stage(parse_stage(wipe_doc(store, "corrupt-latest", resume=_resume(agree))), "agree")
    assert outcome.verdict.status == "passed", outcome.verdict


def test_launcher_that_reports_one_step_while_the_trainer_loads_the_damaged_one_fails(store: Path) -> None:
    trainer = f"print({REPORT % 500!r})"  # what the training process really loaded
    launcher = _script(f"""
import subprocess, sys
print({REPORT % 400!r}, flush=True)  # the launcher's guess
subprocess.run([sys.executable, '-c', {trainer!r}])
""")
    outcome = run_stage(parse_stage(wipe_doc(store, "corrupt-latest", resume=_resume(launcher))), "contradict")
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "contradict" in outcome.verdict.reason
    assert outcome.verdict.evidence["resumed_from_step"] == 500  # the last report is the one that counts


# -- 4. intact copies of the wiped step; a store damaged before the stage ----------------------------
def test_trainer_resuming_from_an_intact_mirror_of_the_wiped_step_passes(store: Path, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    shutil.copytree(store, mirror)
    resume = _resume(workloads.resume_command(store, mirror=mirror))
    outcome = run_stage(parse_stage(wipe_doc(store, "corrupt-latest", resume=resume)), "mirror")
    assert outcome.verdict.status == "passed", outcome.verdict
    assert outcome.verdict.evidence["resumed_from_step"] == 500
    assert outcome.verdict.metrics["lost_steps"] == 0
    assert "matches the pre-fault digest" in outcome.verdict.evidence["intact_copy"]


def test_trainer_resuming_from_a_mirror_holding_other_bytes_for_that_step_fails(store: Path, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    shutil.copytree(store, mirror)
    # The mirror's step-500 is a different (self-consistent) checkpoint: a stale tier, not the wiped bytes.
    from mlchaos_steps.examples.trainer import load_intact, save_checkpoint

    save_checkpoint(mirror, 500, load_intact(mirror / "step-400")["model"])
    resume = _resume(workloads.resume_command(store, mirror=mirror))
    outcome = run_stage(parse_stage(wipe_doc(store, "corrupt-latest", resume=resume)), "stale-mirror")
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "does not hold the bytes" in outcome.verdict.reason


def test_a_report_naming_the_damaged_checkpoint_as_source_fails(store: Path) -> None:
    liar = _script(f"import json; print(json.dumps({{'mlchaos_resumed_from_step': 500, "
                   f"'source': {str(store / 'step-500')!r}}}))")
    outcome = run_stage(parse_stage(wipe_doc(store, "corrupt-latest", resume=_resume(liar))), "liar")
    assert outcome.verdict.status == "failed"
    assert "is the wiped checkpoint itself" in outcome.verdict.reason


def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_store_damaged_before_the_stage_passes_a_trainer_that_skips_the_damage(store: Path) -> None:
    """step-400 is damaged before the fault: a trainer that passes over it is right (it used to be refused
    as a steady-state failure; see test_checkpoint_wipe_claims.py for the rest)."""
    _damage(store / "step-400" / "model.pkl")  # the checkpoint training would otherwise resume from
    before = tree_digests(store)
    doc = wipe_doc(store, "corrupt-latest", integrity={"command": workloads.integrity_command()})
    outcome = run_stage(parse_stage(doc), "pre-damaged")
    assert outcome.verdict.status == "passed", outcome.verdict
    assert outcome.verdict.evidence["resumed_from_step"] == 300
    assert "damaged before the fault: step-400 (model.pkl" in outcome.verdict.reason
    assert tree_digests(store) == before


def test_intact_store_passes_the_integrity_check(store: Path) -> None:
    doc = wipe_doc(store, "corrupt-latest", integrity={"command": workloads.integrity_command()})
    outcome = run_stage(parse_stage(doc), "checked")
    assert outcome.verdict.status == "passed", outcome.verdict
    assert [s["intact"] for s in outcome.phases[0].output["steady_state"]] == [True, True]


# -- 19. time of check to time of use ---------------------------------------------------------------
def test_checkpoint_replaced_by_a_symlink_after_snapshot_is_not_touched(store: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(store / "step-500", outside)
    outside_before = tree_digests(outside)
    stage = parse_stage(wipe_doc(store, "corrupt-latest"))
    run_phase(stage, "snapshot", "toctou")
    shutil.rmtree(store / "step-500")
    (store / "step-500").symlink_to(outside)
    with pytest.raises(Exception, match="symlink|changed since snapshot"):
        run_phase(stage, "inject", "toctou")
    assert (store / "step-500").is_symlink()
    assert tree_digests(outside) == outside_before
    restore_run("toctou")
    assert tree_digests(outside) == outside_before
    assert SqliteLedger().get("toctou").status == ExecutionStatus.RESTORED  # type: ignore[union-attr]


def test_checkpoint_resaved_between_snapshot_and_inject_is_not_moved(store: Path) -> None:
    stage = parse_stage(wipe_doc(store, "delete-latest"))
    run_phase(stage, "snapshot", "resaved-early")
    (store / "step-500" / "manifest.json").write_text('{"step": 500, "sha256": "re-saved"}')
    after_resave = checkpoint_digests(store)
    with pytest.raises(Exception, match="changed since snapshot"):
        run_phase(stage, "inject", "resaved-early")
    assert checkpoint_digests(store) == after_resave
    restore_run("resaved-early")
    assert SqliteLedger().get("resaved-early").status == ExecutionStatus.RESTORED  # type: ignore[union-attr]


# -- 20. restore removes its own debris, keeps only foreign files -----------------------------------
@pytest.mark.parametrize("mode", ["corrupt-latest", "truncate-latest"])
def test_restore_after_a_crash_removes_the_damage_it_wrote(store: Path, mlchaos_home: Path, mode: str) -> None:
    before = tree_digests(store)
    stage = parse_stage(wipe_doc(store, mode))
    run_phase(stage, "snapshot", "crashed")
    run_phase(stage, "inject", "crashed")
    # A crash between writing the damaged copy and recording it: the ledger lacks it.
    with sqlite3.connect(mlchaos_home / "ledger.db") as db:
        (undo_json,) = db.execute("SELECT undo_json FROM actions WHERE run_key = 'crashed'").fetchone()
        undo = json.loads(undo_json)
        undo.pop("damaged_on_disk")  # a local store records the copy by what it is on disk
        db.execute("UPDATE actions SET undo_json = ? WHERE run_key = 'crashed'", (json.dumps(undo),))
    output = restore_run("crashed")
    assert output["actions"][0].get("removed_own_damage") is True
    assert "kept_foreign" not in output["actions"][0]
    assert tree_digests(store) == before  # no quarantine debris left behind
    assert not (store / ".mlchaos-quarantine").exists()
    assert os.listdir(store)  # and the store is whole
