"""The training-pod resume rules on their own (pure: no cluster): what each replacement reported and what
the store shows, against the verdict. The cluster tests are in test_training_pods_kubernetes.py."""

from __future__ import annotations

from typing import Any

import pytest

from mlchaos_steps.stages.pod_resume import PodResume, merge, metrics, problems

RESUME = PodResume(store="file:///tmp/ckpts", max_lost_steps=20)


def _evidence(*steps: int, written: list[int] | None = None, at_fault: list[int] | None = None,
              ended: bool = False) -> dict[str, Any]:
    at_fault = [10, 20, 30, 40] if at_fault is None else at_fault
    return {"pods": {"train-x": {"reports": [{"step": s} for s in steps], "ended": ended}},
            "newest_step_at_fault": max(at_fault, default=0), "steps_at_fault": at_fault,
            "written_after": [{"name": f"step-{w}", "step": w} for w in (written or [])]}


def test_resuming_from_the_newest_checkpoint_and_training_on_is_clean() -> None:
    evidence = _evidence(40, written=[50])
    assert problems(RESUME, evidence) == []
    assert metrics(evidence) == {"resumed_from_step": 40.0, "lost_steps": 0.0}


@pytest.mark.parametrize(("evidence", "why"), [
    (_evidence(), "did not report where it resumed"),
    (_evidence(written=[50], ended=True), "the pod ended without it"),
    (_evidence(30, 40, written=[50]), "contradictory steps [30, 40]"),
    (_evidence(35, written=[50]), "no checkpoint of that step was in the store"),  # a step it never had
    (_evidence(999, written=[1000]), "no checkpoint of that step was in the store"),
    (_evidence(10, written=[20]), "30 steps lost"),
    (_evidence(0, written=[10]), "40 steps lost"),  # started from scratch, said so
    (_evidence(40), "no checkpoint was written"),  # reported, then nothing: no evidence it trained
    (_evidence(40, written=[10]), "training started over"),  # claimed 40, wrote step-10 next
    (_evidence(40, written=[40]), "training started over"),  # rewrote the one it claimed to load
])
def test_each_broken_resume_fails_with_its_reason(evidence: dict[str, Any], why: str) -> None:
    found = problems(RESUME, evidence)
    assert any(why in p for p in found), found


def test_without_progress_checking_a_report_alone_can_pass() -> None:
    lenient = PodResume(store="file:///tmp/ckpts", max_lost_steps=20, progress=False)
    assert problems(lenient, _evidence(40)) == []


def test_a_checkpoint_the_victim_wrote_while_terminating_counts_as_there_at_the_fault() -> None:
    before = {"steps": [10, 20], "newest_step": 20, "signatures": {"step-10": [1], "step-20": [2]}}
    gone = {"steps": [10, 20, 30], "newest_step": 30, "signatures": {"step-20": [2], "step-30": [3]}}
    fault = merge([before, gone])
    assert fault["steps"] == [10, 20, 30] and fault["newest_step"] == 30 and set(fault["signatures"]) == {
        "step-10", "step-20", "step-30"}
    assert problems(RESUME, _evidence(30, written=[40], at_fault=fault["steps"])) == []
