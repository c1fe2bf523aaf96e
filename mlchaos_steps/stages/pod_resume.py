"""Training pods on Kubernetes: after ``pod-delete`` took a Job's pod, its replacement must resume from a
checkpoint, by checkpoint-wipe's resume contract.

The replacement prints ``{"mlchaos_resumed_from_step": N}`` on its standard output (its container log,
read through the API server). Its claim alone earns nothing: the stage also reads the checkpoint store.
It passes only when

- every replacement reported one step (reports naming different steps contradict each other),
- that step was a checkpoint in the store when the pod was deleted (or 0 when there was none),
- the steps lost, the newest checkpoint at the fault minus the step resumed from, are within
  ``max_lost_steps``, and
- (``progress``, the default) the first checkpoint written after the fault is past the step resumed
  from: a pod that says it resumed from step 400 and then writes ``step-20`` started over.

Example::

    kind: PodDelete
    spec:
      target: {kubernetes: {namespace: ml-train, selector: "job-name=train"}}
      count: 1
      grace_s: 0
      recovery_slo_s: 120
      resume:
        store: file:///data/ckpts
        max_lost_steps: 100
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field, field_validator

from mlchaos_steps.core.context import check_kill_switch
from mlchaos_steps.core.spec import StrictModel
from mlchaos_steps.stages.parts import (
    claim_problem,
    lost_steps_problem,
    parse_resume_reports,
    step_pattern,
    store_url,
)
from mlchaos_steps.targets import kubernetes as kube
from mlchaos_steps.targets.checkpoints import CheckpointStore

POLL_S = 0.25
LOG_TAIL_LINES = 2000
RECENT_CHECKPOINTS = 50  # signatures kept of the newest checkpoints at the fault: what "written after" compares to


class PodResume(StrictModel):
    """Training pods: the replacement must resume from a checkpoint of ``store``."""

    store: str = Field(description="fsspec URL of the folder the training writes its checkpoints to")
    pattern: str = Field(default=r"step-(\d+)", description="regex over a checkpoint's name; group 1 is its step")
    max_lost_steps: int = Field(ge=0, description="the newest checkpoint at the fault minus the step resumed from")
    container: str | None = Field(default=None, description="the container whose log holds the report "
                                                            "(default: the pod's only one)")
    timeout_s: float = Field(default=300, gt=0, description="after the delete: wait this long for the report "
                                                            "and for the first checkpoint written after it")
    progress: bool = Field(default=True, description="require a checkpoint written after the fault, past the "
                                                     "step resumed from (evidence that training went on)")

    _store = field_validator("store")(store_url)
    _pattern = field_validator("pattern")(step_pattern)


def _checkpoints(resume: PodResume) -> tuple[CheckpointStore, list[Any]]:
    store = CheckpointStore(resume.store, field="spec.resume.store")
    return store, store.checkpoints(resume.pattern, field="spec.resume.pattern")


def at_fault(resume: PodResume) -> dict[str, Any]:
    """The store just before the first delete: its steps, and what its newest checkpoints were."""
    store, found = _checkpoints(resume)
    signatures = {}
    for checkpoint in found[-RECENT_CHECKPOINTS:]:
        try:
            signatures[checkpoint.name] = store.signature(checkpoint.path)
        except OSError:  # being rewritten this instant: whatever it becomes counts as written after
            continue
    return {"steps": [c.step for c in found], "newest_step": found[-1].step if found else 0, "signatures": signatures}


def merge(faults: list[dict[str, Any]]) -> dict[str, Any]:
    """The store as the fault left it: every checkpoint seen before the deletes or when the victims had gone."""
    steps = sorted({step for fault in faults for step in fault["steps"]})
    signatures: dict[str, Any] = {}
    for fault in faults:
        signatures.update(fault["signatures"])
    return {"steps": steps, "newest_step": steps[-1] if steps else 0, "signatures": signatures}


def gather(resume: PodResume, core: Any, namespace: str, replacements: dict[str, str], deleted_at: float,
           fault: dict[str, Any]) -> dict[str, Any]:
    """Read each replacement's log until it reported where it resumed (or the pod ended, or time ran out),
    then wait for the first checkpoint written after the fault. ``replacements``: uid -> pod name."""
    deadline = deleted_at + resume.timeout_s
    pods: dict[str, dict[str, Any]] = {name: {"reports": [], "log_tail": ""} for name in replacements.values()}
    while True:
        check_kill_switch()
        for name, seen in pods.items():
            if not seen["reports"]:
                seen.update(_read(resume, core, namespace, name))
        if all(p["reports"] or p.get("ended") for p in pods.values()) or time.time() > deadline:
            break
        time.sleep(POLL_S)
    written: list[dict[str, Any]] = []
    while resume.progress:
        check_kill_switch()
        written = _written_after(resume, fault)
        if written or time.time() > deadline:
            break
        time.sleep(POLL_S)
    return {"pods": pods, "newest_step_at_fault": fault["newest_step"], "steps_at_fault": fault["steps"],
            "written_after": written}


def _read(resume: PodResume, core: Any, namespace: str, name: str) -> dict[str, Any]:
    from kubernetes import client

    try:
        response = kube.call("get", "pods/log", namespace, core.read_namespaced_pod_log, name, namespace,
                             container=resume.container, tail_lines=LOG_TAIL_LINES, _preload_content=False)
        text = response.data.decode("utf-8", "replace")
    except client.ApiException as exc:
        if exc.status in (400, 404):  # not started yet (no log), or gone
            return {}
        raise
    listed = kube.list_pods_raw(core, namespace, "", field_selector=f"metadata.name={name}")["items"]
    phase = listed[0].get("status", {}).get("phase") if listed else None
    return {"reports": [r.__dict__ for r in parse_resume_reports(text)], "log_tail": text[-2000:],
            "ended": phase in ("Succeeded", "Failed") or not listed}


def _written_after(resume: PodResume, fault: dict[str, Any]) -> list[dict[str, Any]]:
    """Checkpoints that are new since the fault, or were rewritten since, lowest step first."""
    store, found = _checkpoints(resume)
    before = fault["signatures"]
    oldest_tracked = min((int(s) for s in fault["steps"][-RECENT_CHECKPOINTS:]), default=0)
    out = []
    for checkpoint in found:
        if checkpoint.name in before:
            try:
                if store.signature(checkpoint.path) == before[checkpoint.name]:
                    continue
            except OSError:  # being replaced right now: look again next time
                continue
        elif checkpoint.step in fault["steps"] and checkpoint.step < oldest_tracked:
            continue  # older than what was tracked: there before the fault
        out.append({"name": checkpoint.name, "step": checkpoint.step})
    return sorted(out, key=lambda c: c["step"])


def problems(resume: PodResume, evidence: dict[str, Any]) -> list[str]:
    """What the replacements' reports and the store say went wrong, if anything."""
    found: list[str] = []
    newest = evidence["newest_step_at_fault"]
    steps_at_fault = list(evidence.get("steps_at_fault") or [])
    resumed: list[int] = []
    for name, seen in evidence["pods"].items():
        steps = sorted({r["step"] for r in seen["reports"]})
        if not steps:
            found.append(f"replacement pod {name} did not report where it resumed: its log must hold a JSON line "
                         '{"mlchaos_resumed_from_step": N}' + (" (the pod ended without it)" if seen.get("ended")
                                                               else f" within {resume.timeout_s:g}s"))
            continue
        problem = (claim_problem([r["step"] for r in seen["reports"]], steps_at_fault)
                   or lost_steps_problem(steps[0], newest, resume.max_lost_steps))
        if len(steps) == 1:
            resumed.append(steps[0])
        if problem:
            found.append(f"replacement pod {name} {problem}")
    if resume.progress and resumed:
        written = evidence["written_after"]
        if not written:
            found.append(f"no checkpoint was written within {resume.timeout_s:g}s after the fault: no evidence that "
                         "training went on")
        elif written[0]["step"] <= max(resumed):
            found.append(f"the first checkpoint written after the fault is {written[0]['name']} (step "
                         f"{written[0]['step']}), not past the step reported as resumed from ({max(resumed)}): "
                         "training started over")
    return found


def metrics(evidence: dict[str, Any]) -> dict[str, float]:
    steps = [r["step"] for seen in evidence["pods"].values() for r in seen["reports"]]
    if not steps:
        return {}
    return {"resumed_from_step": float(min(steps)), "lost_steps": float(evidence["newest_step_at_fault"] - min(steps))}
