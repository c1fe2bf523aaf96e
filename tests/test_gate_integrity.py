"""The gate counts a verdict only when its run restored cleanly and its evidence run stands behind it:
failed restores, MLflow cut while verdicts are written, stale verdicts of earlier runs, runs in progress."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import record_real_verdict, wipe_doc
from systems import CuttingProxy

from mlchaos_steps.api import restore_run, run_phase, run_stage
from mlchaos_steps.gate import promote
from mlchaos_steps.gate.promotion import EvidenceRun, decide
from mlchaos_steps.ledgers import SqliteLedger
from mlchaos_steps.stages import parse_stage
from mlchaos_steps.targets.mlflow import client

STAGE = "checkpoint-wipe"
FINISHED = EvidenceRun("FINISHED", "passed", "k1", STAGE)
TAGS = {f"mlchaos.{STAGE}.verdict": "passed", f"mlchaos.{STAGE}.restore": "restored",
        f"mlchaos.{STAGE}.run_id": "r1", f"mlchaos.{STAGE}.run_key": "k1"}


# -- the pure decision ------------------------------------------------------------------------------
@pytest.mark.parametrize(("tags", "run", "promoted", "why"), [
    (TAGS, FINISHED, True, "every required stage passed"),
    ({**TAGS, f"mlchaos.{STAGE}.restore": "restore_failed"}, FINISHED, False, "did not restore cleanly"),
    ({**TAGS, f"mlchaos.{STAGE}.restore": "pending"}, FINISHED, False, "did not restore cleanly"),
    ({k: v for k, v in TAGS.items() if not k.endswith("restore")}, FINISHED, False, "did not restore cleanly"),
    ({**TAGS, f"mlchaos.{STAGE}.verdict": "pending"}, FINISHED, False, "in progress"),
    (TAGS, EvidenceRun("RUNNING", None, "k1", STAGE), False, "does not stand behind"),
    (TAGS, EvidenceRun("FAILED", "inconclusive", "k1", STAGE), False, "does not stand behind"),
    (TAGS, EvidenceRun("FINISHED", "passed", "other-key", STAGE), False, "another execution"),
    (TAGS, EvidenceRun("FINISHED", "passed", "k1", "pod-delete"), False, "another execution"),
    (TAGS, None, False, "cannot be found"),
], ids=["consistent", "restore-failed", "restore-pending", "restore-missing", "in-progress", "run-unfinished",
        "run-says-inconclusive", "run-of-another-key", "run-of-another-stage", "run-missing"])
def test_decide(tags: dict[str, str], run: EvidenceRun | None, promoted: bool, why: str) -> None:
    ok, reason, _ = decide(tags, [STAGE], {"r1": run})
    assert ok is promoted and why in reason


# -- 16. a verdict counts only when its run restored cleanly ----------------------------------------
def test_gate_blocks_a_version_whose_stage_run_failed_to_restore(two_versions: tuple[str, str, str],
                                                                 store: Path) -> None:
    name, _, v2 = two_versions
    stage = parse_stage(wipe_doc(store, "delete-latest"))
    for phase in ("snapshot", "inject", "verify"):
        run_phase(stage, phase, "restore-breaks", model=name, version=v2)
    assert client().get_model_version(name, v2).tags[f"mlchaos.{STAGE}.verdict"] == "passed"
    quarantined = next((store / ".mlchaos-quarantine").rglob("model.pkl"))
    quarantined.write_bytes(b"tampered")  # restore will refuse it
    with pytest.raises(Exception, match="does not match its recorded digest"):
        restore_run("restore-breaks")
    tags = client().get_model_version(name, v2).tags
    assert tags[f"mlchaos.{STAGE}.restore"] == "restore_failed"
    decision = promote(name, v2, [STAGE])
    assert not decision.promoted and "did not restore cleanly" in decision.reason


def test_gate_promotes_a_version_whose_stage_run_restored(two_versions: tuple[str, str, str], store: Path) -> None:
    name, _, v2 = two_versions
    outcome = run_stage(parse_stage(wipe_doc(store)), "restores", model=name, version=v2)
    assert outcome.verdict.status == "passed" and outcome.restored
    assert client().get_model_version(name, v2).tags[f"mlchaos.{STAGE}.restore"] == "restored"
    assert promote(name, v2, [STAGE]).promoted


# -- 8.9 / 17. a run in progress, or a stale verdict, never stands for the latest execution ----------
def test_gate_blocks_while_a_new_run_is_in_progress_on_a_passed_version(two_versions: tuple[str, str, str],
                                                                       store: Path) -> None:
    name, _, v2 = two_versions
    record_real_verdict(name, v2, STAGE, "passed")
    stage = parse_stage(wipe_doc(store))
    run_phase(stage, "snapshot", "retest", model=name, version=v2)  # a re-test starts: the old verdict is stale
    decision = promote(name, v2, [STAGE])
    assert not decision.promoted and "in progress" in decision.reason
    for phase in ("inject", "verify", "restore"):
        run_phase(stage, phase, "retest", model=name, version=v2)
    assert promote(name, v2, [STAGE]).promoted


@pytest.mark.heavy(45)
def test_mlflow_cut_while_verdicts_are_written_never_promotes_a_run_that_did_not_pass(
        two_versions: tuple[str, str, str], mlflow_server: str, store: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut the tracking server after every number of requests verify makes; the gate (on a healthy
    connection) promotes only versions whose run's own verdict is passed and restored."""
    name, _, v2 = two_versions
    direct = mlflow_server
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    stage = parse_stage(wipe_doc(store, "corrupt-latest"))
    outcomes = []
    for allow in range(0, 24, 2):
        key = f"cut-{allow}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", direct)
        run_phase(stage, "snapshot", key, model=name, version=v2)
        run_phase(stage, "inject", key, model=name, version=v2)
        proxy = CuttingProxy(int(direct.rsplit(":", 1)[1]), allow)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{proxy.port}")
        verdict = run_phase(stage, "verify", key, model=name, version=v2).verdict
        restore_run(key)  # still through the cut proxy: the restore tag may not reach MLflow either
        proxy.close()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", direct)
        decision = promote(name, v2, [STAGE])
        execution = SqliteLedger().get(key)
        assert execution is not None
        outcomes.append((allow, verdict.status if verdict else None, execution.verdict, decision.promoted))
        if decision.promoted:
            assert execution.verdict == "passed" and execution.status == "restored", outcomes
    assert any(promoted for *_, promoted in outcomes), outcomes  # an uncut run does promote
    assert any(not promoted for *_, promoted in outcomes), outcomes  # and cuts were really made
