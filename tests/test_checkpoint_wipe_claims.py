"""checkpoint-wipe on local stores, against the three classes of wrong verdict of issue 17: claims the
store never backed (false passes), resumes from a second tier after delete-latest, and checkpoints that
were damaged before the stage. Healthy members pass (or are inconclusive where the stage cannot see),
broken ones do not, and every store is back byte for byte.

The trainers: the example trainer (pickles with a manifest), small launchers, and
``tests/apps/tiered_trainer.py`` (safetensors checkpoints laid out like Hugging Face's, replicated to a
second tier, digests kept in an index mlchaos cannot see).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import checkpoint_digests, wipe_doc

from mlchaos_steps.api import run_stage
from mlchaos_steps.examples import workloads
from mlchaos_steps.examples.trainer import load_intact, save_checkpoint
from mlchaos_steps.stages import parse_stage

TIERED = Path(__file__).parent / "apps" / "tiered_trainer.py"
HF_PATTERN = r"checkpoint-(\d+)"


def _script(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _report(step: int, **extra: Any) -> str:
    return json.dumps({"mlchaos_resumed_from_step": step, **extra})


def _run(doc: dict[str, Any], key: str, *stores: Path) -> Any:
    """Run the stage and check that every store is back as it was, byte for byte."""
    before = [checkpoint_digests(s) for s in stores]
    outcome = run_stage(parse_stage(doc), key)
    assert outcome.restored, outcome.restore_error
    assert [checkpoint_digests(s) for s in stores] == before
    return outcome


def _tiered(local: Path, replica: Path | None = None, *flags: str) -> list[str]:
    argv = [sys.executable, str(TIERED), "--store", str(local), "--resume", "--no-save", *flags]
    return argv + (["--replica", str(replica)] if replica else [])


def _tiered_doc(local: Path, command: list[str], mode: str = "delete-latest", **spec: Any) -> dict[str, Any]:
    return wipe_doc(local, mode, resume={"command": command, "max_lost_steps": 200}, pattern=HF_PATTERN, **spec)


@pytest.fixture(scope="session")
def tiered_trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiered")
    subprocess.run([sys.executable, str(TIERED), "--store", str(root / "local"), "--replica", str(root / "replica"),
                    "--steps", "500"], check=True, capture_output=True)
    return root


@pytest.fixture
def tiers(tiered_trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A fresh copy of the tiered trainer's local tier (checkpoint-100..500) and its replica."""
    copy = Path(shutil.copytree(tiered_trained, tmp_path / "tiers"))
    return copy / "local", copy / "replica"


def _flip_a_byte(path: Path) -> None:
    """Corruption that keeps the size (bit rot, a bad disk): nothing in the file's structure shows it."""
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))


def _loads_and_reports(checkpoint: Path, step: int) -> list[str]:
    """A trainer that loads ``checkpoint`` (a pickle) and reports ``step``, whatever it loaded."""
    return _script(f"""
import pickle
state = pickle.load(open({str(checkpoint / 'model.pkl')!r}, 'rb'))
print({_report(step)!r})
""")


def _cut_in_half(path: Path) -> None:
    """What a save interrupted by a preemption leaves."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# -- 1. a claim the store never backed ---------------------------------------------------------------
def test_a_step_never_in_the_store_fails(store: Path) -> None:
    # Loads step-400 but reports the step its schedule says it should be at: 450 was never saved.
    trainer = _loads_and_reports(store / "step-400", 450)
    outcome = _run(wipe_doc(store, resume={"command": trainer, "max_lost_steps": 200}), "never-there", store)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "no checkpoint of that step was in the store at the fault" in outcome.verdict.reason
    assert "100, 200, 300, 400, 500" in outcome.verdict.reason


def test_a_step_only_in_a_mirror_the_report_does_not_name_fails(store: Path, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    save_checkpoint(mirror, 450, load_intact(store / "step-400")["model"])
    trainer = _loads_and_reports(mirror / "step-450", 450)
    outcome = _run(wipe_doc(store, resume={"command": trainer, "max_lost_steps": 200}), "mirror-only", store, mirror)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "no checkpoint of that step was in the store" in outcome.verdict.reason


def test_a_step_only_in_a_mirror_the_report_names_still_fails(store: Path, tmp_path: Path) -> None:
    """The example trainer loads the mirror's step-450 and names it: the store never held 450, so there is
    no pre-fault digest to check that copy against."""
    mirror = tmp_path / "mirror"
    save_checkpoint(mirror, 450, load_intact(store / "step-400")["model"])
    doc = wipe_doc(store, resume={"command": workloads.resume_command(store, mirror=mirror), "max_lost_steps": 200})
    outcome = _run(doc, "mirror-named", store, mirror)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert outcome.verdict.evidence["reports"][-1]["source"] == str(mirror / "step-450")
    assert "no checkpoint of that step was in the store" in outcome.verdict.reason


def test_a_claim_ahead_of_every_checkpoint_fails(store: Path) -> None:
    # Used to pass: -100 steps lost is within any budget.
    trainer = _script(f"print({_report(600)!r})")
    outcome = _run(wipe_doc(store, resume={"command": trainer, "max_lost_steps": 200}), "ahead", store)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "ahead of every checkpoint the store held (newest: 500)" in outcome.verdict.reason


def test_a_claim_contradicted_by_a_second_report_fails(store: Path) -> None:
    # A launcher announces the newest intact step; the training process then loads another one.
    trainer = f"print({_report(300)!r})"
    launcher = _script(f"""
import subprocess, sys
print({_report(400)!r}, flush=True)
subprocess.run([sys.executable, '-c', {trainer!r}])
""")
    outcome = _run(wipe_doc(store, resume={"command": launcher, "max_lost_steps": 200}), "contradicted", store)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "contradictory steps [300, 400]" in outcome.verdict.reason


def test_the_honest_claim_passes(store: Path) -> None:
    outcome = _run(wipe_doc(store), "honest", store)
    assert outcome.verdict.status == "passed", outcome.verdict
    assert outcome.verdict.evidence["resumed_from_step"] == 400


# -- 2. a second tier after delete-latest ------------------------------------------------------------
def test_resume_from_the_replica_of_the_deleted_step_without_a_source_is_inconclusive(tiers: tuple[Path, Path]) -> None:
    local, replica = tiers
    outcome = _run(_tiered_doc(local, _tiered(local, replica)), "replica-nameless", local, replica)
    assert outcome.verdict.evidence["resumed_from_step"] == 500  # it did load the replica's copy
    assert outcome.verdict.status == "inconclusive", outcome.verdict
    assert 'add "source"' in outcome.verdict.reason and '"digest"' in outcome.verdict.reason
    assert "went undetected" not in outcome.verdict.reason


def test_resume_from_the_replica_of_the_deleted_step_naming_it_passes(tiers: tuple[Path, Path]) -> None:
    local, replica = tiers
    outcome = _run(_tiered_doc(local, _tiered(local, replica, "--report-source")), "replica-named", local, replica)
    assert outcome.verdict.status == "passed", outcome.verdict
    assert "an intact copy of the wiped step" in outcome.verdict.reason
    assert "matches the pre-fault digest" in outcome.verdict.evidence["intact_copy"]
    assert outcome.verdict.metrics["lost_steps"] == 0


def test_a_reported_digest_that_is_not_the_sources_fails(tiers: tuple[Path, Path]) -> None:
    local, replica = tiers
    trainer = _script(f"print({_report(500, source=str(replica / 'checkpoint-500'), digest='sha256:' + '0' * 64)!r})")
    outcome = _run(_tiered_doc(local, trainer), "replica-wrong-digest", local, replica)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "is not the digest of" in outcome.verdict.reason


def test_a_copy_downloaded_to_a_folder_since_cleaned_up_is_inconclusive(tiers: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    """Trainers that fetch a checkpoint from a remote tier into a temporary folder, load it, and remove
    the folder: after a delete the copy came from somewhere, but nothing is left to check."""
    local, replica = tiers
    trainer = _script(f"""
import json, shutil, tempfile
from safetensors.numpy import load_file
scratch = tempfile.mkdtemp(dir={str(tmp_path)!r})
shutil.copytree({str(replica / 'checkpoint-500')!r}, scratch + '/checkpoint-500')
load_file(scratch + '/checkpoint-500/model.safetensors')
shutil.rmtree(scratch)
print(json.dumps({{"mlchaos_resumed_from_step": 500, "source": scratch + '/checkpoint-500'}}))
""")
    outcome = _run(_tiered_doc(local, trainer), "downloaded", local, replica)
    assert outcome.verdict.status == "inconclusive", outcome.verdict
    assert "could not be read to check it" in outcome.verdict.reason


def test_a_replica_holding_other_bytes_for_the_deleted_step_fails(tiers: tuple[Path, Path]) -> None:
    local, replica = tiers
    shutil.rmtree(replica / "checkpoint-500")  # a stale tier: step 500 saved by an earlier run
    shutil.copytree(replica / "checkpoint-400", replica / "checkpoint-500")
    index = json.loads((replica / "index.json").read_text())
    index["checkpoint-500"] = index["checkpoint-400"]
    (replica / "index.json").write_text(json.dumps(index))
    outcome = _run(_tiered_doc(local, _tiered(local, replica, "--report-source")), "replica-stale", local, replica)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "does not hold the bytes" in outcome.verdict.reason


def test_a_copy_put_back_in_place_from_the_replica_passes(tiers: tuple[Path, Path]) -> None:
    """Multi-tier restore: the trainer copies the replica's step back into the local tier and loads it there."""
    local, replica = tiers
    trainer = _script(f"""
import json, shutil
shutil.copytree({str(replica / 'checkpoint-500')!r}, {str(local / 'checkpoint-500')!r})
print(json.dumps({{"mlchaos_resumed_from_step": 500, "source": {str(local / 'checkpoint-500')!r}}}))
""")
    outcome = _run(_tiered_doc(local, trainer), "put-back", local, replica)
    assert outcome.verdict.status == "passed", outcome.verdict
    assert outcome.phases[-1].output["actions"][0]["note"] == "already in place, digest verified"


def test_a_report_naming_the_deleted_path_that_nothing_put_back_fails(tiers: tuple[Path, Path]) -> None:
    local, replica = tiers
    trainer = _script(f"print({_report(500, source=str(local / 'checkpoint-500'))!r})")
    outcome = _run(_tiered_doc(local, trainer), "deleted-path", local, replica)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "is the wiped checkpoint itself" in outcome.verdict.reason


@pytest.mark.parametrize("mode", ["corrupt-latest", "truncate-latest"])
def test_resuming_the_damaged_step_without_a_source_stays_failed(tiers: tuple[Path, Path], mode: str) -> None:
    """The damaged local copy could have been loaded: a report without a source is the damage going
    undetected."""
    local, replica = tiers
    trainer = _tiered(local, None, "--trust-newest")
    outcome = _run(_tiered_doc(local, trainer, mode), f"damaged-{mode}", local, replica)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "went undetected" in outcome.verdict.reason


# -- 3. damage that was there before the stage -------------------------------------------------------
def test_a_trainer_passing_over_a_checkpoint_cut_short_before_the_stage_passes(store: Path) -> None:
    _cut_in_half(store / "step-400" / "model.pkl")  # an earlier preempted save
    outcome = _run(wipe_doc(store), "cut-before", store)
    assert outcome.verdict.status == "passed", outcome.verdict
    assert outcome.verdict.evidence["resumed_from_step"] == 300
    assert "damaged before the fault: step-400" in outcome.verdict.reason
    assert "does not match the sha256 in manifest.json" in outcome.verdict.reason


def test_a_trainer_passing_over_an_intact_checkpoint_fails(tiers: tuple[Path, Path]) -> None:
    local, replica = tiers
    outcome = _run(_tiered_doc(local, _tiered(local, None, "--pass-over-newest")), "pass-over", local, replica)
    assert outcome.verdict.evidence["resumed_from_step"] == 300
    assert outcome.verdict.status == "inconclusive", outcome.verdict  # safetensors without digests: unprovable
    with_check = _tiered_doc(local, _tiered(local, None, "--pass-over-newest"),
                             integrity={"command": [sys.executable, str(TIERED), "--check", "{checkpoint}"]})
    outcome = _run(with_check, "pass-over-checked", local, replica)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "not from the newest intact checkpoint (step 400: integrity check passed)" in outcome.verdict.reason


def test_a_trainer_passing_over_an_intact_checkpoint_with_a_manifest_fails(store: Path) -> None:
    skip = _loads_and_reports(store / "step-300", 300)
    outcome = _run(wipe_doc(store, resume={"command": skip, "max_lost_steps": 200}), "skip-intact", store)
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "not from the newest intact checkpoint (step 400" in outcome.verdict.reason


def test_weights_cut_short_are_seen_from_the_safetensors_header(tiers: tuple[Path, Path]) -> None:
    local, replica = tiers
    _cut_in_half(local / "checkpoint-400" / "model.safetensors")
    outcome = _run(_tiered_doc(local, _tiered(local, None)), "hf-cut", local, replica)
    assert outcome.verdict.status == "passed", outcome.verdict
    assert "model.safetensors holds" in outcome.verdict.reason and "safetensors header" in outcome.verdict.reason


def test_silent_corruption_the_stage_cannot_see_is_inconclusive_not_failed(tiers: tuple[Path, Path]) -> None:
    """A flipped byte keeps the safetensors file well-formed; only the trainer's own index shows it."""
    local, replica = tiers
    _flip_a_byte(local / "checkpoint-400" / "model.safetensors")
    outcome = _run(_tiered_doc(local, _tiered(local, None)), "hf-rot", local, replica)
    assert outcome.verdict.evidence["resumed_from_step"] == 300
    assert outcome.verdict.status == "inconclusive", outcome.verdict
    assert "give spec.integrity.command" in outcome.verdict.reason


def test_silent_corruption_with_the_trainers_integrity_command(tiers: tuple[Path, Path]) -> None:
    local, replica = tiers
    _flip_a_byte(local / "checkpoint-400" / "model.safetensors")
    check = {"command": [sys.executable, str(TIERED), "--check", "{checkpoint}"]}
    healthy = _run(_tiered_doc(local, _tiered(local, None), integrity=check), "hf-rot-checked", local, replica)
    assert healthy.verdict.status == "passed", healthy.verdict
    assert "checkpoint-400 (failed its integrity check" in healthy.verdict.reason
    # A trainer that loads what was rotten before the fault, trusting the newest local checkpoint.
    broken = _run(_tiered_doc(local, _tiered(local, None, "--trust-newest"), integrity=check), "hf-rot-loaded",
                  local, replica)
    assert broken.verdict.evidence["resumed_from_step"] == 400
    assert broken.verdict.status == "failed", broken.verdict
    assert "a checkpoint that was damaged before the fault" in broken.verdict.reason


def test_a_damaged_checkpoint_the_stage_would_break_is_inconclusive_and_untouched(store: Path) -> None:
    _cut_in_half(store / "step-500" / "model.pkl")
    before = checkpoint_digests(store)
    outcome = run_stage(parse_stage(wipe_doc(store)), "victim-damaged")
    assert outcome.verdict.status == "inconclusive", outcome.verdict
    assert "steady state not met" in outcome.verdict.reason and "step-500" in outcome.verdict.reason
    assert checkpoint_digests(store) == before
