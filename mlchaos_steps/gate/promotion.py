"""The promotion gate: move the alias only when every required stage passed on that exact version.

Fails closed: a ``failed``, ``inconclusive``, ``pending`` or missing verdict blocks, and so does a
verdict whose run did not restore cleanly or whose evidence run does not stand behind it; a blocked
gate never moves anything. Either way it writes ``mlchaos.gate`` (promoted|blocked) and
``mlchaos.gate.reason``. Gates on one model are serialised by a lock (a file lock, and a Lease in a
cluster); a version that loses the alias to a later promotion is tagged ``superseded``, so exactly
one version carries ``mlchaos.gate=promoted``: the one the alias points to.

Example::

    from mlchaos_steps.gate import promote
    decision = promote("churn-classifier", "7", require=["checkpoint-wipe", "pod-delete"])
    print(decision.promoted, decision.reason)
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from filelock import FileLock

from mlchaos_steps import config
from mlchaos_steps.errors import InfrastructureError, SpecError
from mlchaos_steps.gate.integrity import artifacts_intact
from mlchaos_steps.targets.mlflow import client, is_not_found, resolve_version, tracking_uri

PREVIOUS_ALIAS = "previous_champion"
log = logging.getLogger("mlchaos")


@dataclass
class GateDecision:
    """What the gate decided, and why."""

    model: str
    version: str
    alias: str
    promoted: bool
    reason: str
    verdicts: dict[str, str | None] = field(default_factory=dict)
    previous_version: str | None = None
    decide_seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 0 if self.promoted else 1


@dataclass(frozen=True)
class EvidenceRun:
    """What the gate needs of a verdict's evidence run: how it ended and what it says."""

    status: str
    verdict: str | None
    run_key: str | None
    stage_id: str | None


def decide(tags: dict[str, str], require: list[str], runs: dict[str, EvidenceRun | None] | None = None
           ) -> tuple[bool, str, dict[str, str | None]]:
    """Pure decision over a version's tags and the evidence runs they name.

    A stage counts only when its verdict is exactly ``passed``, its run restored cleanly (``restore``
    tag), and its evidence run finished with the same verdict, stage and run key: a verdict tag left
    behind by a run that did not finish writing (or a stale one) never counts."""
    runs = runs or {}
    verdicts = {stage: tags.get(f"mlchaos.{stage}.verdict") for stage in require}
    problems = []
    for stage, verdict in verdicts.items():
        if verdict is None:
            problems.append(f"{stage}: no verdict")
        elif verdict == "pending":
            problems.append(f"{stage}: a run is in progress (run key {tags.get(f'mlchaos.{stage}.run_key')})")
        elif verdict != "passed":
            reason = tags.get(f"mlchaos.{stage}.reason", "")
            problems.append(f"{stage}: {verdict}" + (f" ({reason[:200]})" if reason else ""))
        elif tags.get(f"mlchaos.{stage}.restore") != "restored":
            problems.append(f"{stage}: its run did not restore cleanly "
                            f"(restore: {tags.get(f'mlchaos.{stage}.restore', 'not recorded')})")
        else:
            problem = _evidence_problem(stage, tags, runs.get(tags.get(f"mlchaos.{stage}.run_id", "")))
            if problem:
                problems.append(f"{stage}: {problem}")
    if problems:
        return False, "blocked: " + "; ".join(problems), verdicts
    return True, "every required stage passed: " + ", ".join(require), verdicts


def _evidence_problem(stage: str, tags: dict[str, str], run: EvidenceRun | None) -> str | None:
    if run is None:
        return f"its evidence run {tags.get(f'mlchaos.{stage}.run_id')!r} cannot be found"
    if run.status != "FINISHED" or run.verdict != "passed":
        return (f"its evidence run does not stand behind the verdict (run {run.status.lower()}, "
                f"verdict {run.verdict})")
    if run.stage_id != stage or run.run_key != tags.get(f"mlchaos.{stage}.run_key"):
        return "its evidence run belongs to another execution"
    return None


def evidence_runs(tags: dict[str, str], require: list[str]) -> dict[str, EvidenceRun | None]:
    """The evidence runs the version's passed verdicts name (one read each)."""
    from mlflow.exceptions import MlflowException

    c = client()
    found: dict[str, EvidenceRun | None] = {}
    for stage in require:
        run_id = tags.get(f"mlchaos.{stage}.run_id")
        if tags.get(f"mlchaos.{stage}.verdict") != "passed" or not run_id or run_id in found:
            continue
        try:
            run = c.get_run(run_id)
        except MlflowException as exc:
            if not is_not_found(exc):
                raise
            found[run_id] = None
            continue
        found[run_id] = EvidenceRun(run.info.status, run.data.tags.get("mlchaos.verdict"),
                                    run.data.tags.get("mlchaos.run_key"), run.data.tags.get("mlchaos.stage_id"))
    return found


@contextmanager
def _lock(model: str) -> Iterator[None]:
    """Gates on one model run one at a time: a file lock on this machine and, in a cluster (or with
    ``MLCHAOS_LEASE_NAMESPACE``), a Lease, so gates in different pods wait for each other too."""
    key = hashlib.sha256(f"{tracking_uri()}|{model}".encode()).hexdigest()[:24]
    folder = config.home() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f"gate-{key}.lock")):
        from mlchaos_steps.targets import kubernetes

        namespace = kubernetes.lease_namespace()
        if namespace is None:
            yield
            return
        wait_s = float(os.environ.get("MLCHAOS_GATE_WAIT_S", "120"))
        with kubernetes.held_lease(namespace, f"gate:{tracking_uri()}|{model}", wait_s=wait_s):
            yield


def promote(model: str, version: str, require: list[str], alias: str = "champion",
            check_artifacts: bool = True) -> GateDecision:
    """Decide and, when every required verdict passed, move ``alias`` (keeping ``previous_champion``)."""
    from mlflow.exceptions import MlflowException

    if not require:
        raise SpecError("--require", "name at least one stage id the version must have passed")
    if alias == PREVIOUS_ALIAS:
        raise SpecError("--alias", f"{PREVIOUS_ALIAS!r} is kept by the gate itself: choose another alias")
    ref = resolve_version(model, version, field="--version")
    c = client()
    try:
        with _lock(model):
            started = time.perf_counter()
            mv = c.get_model_version(ref.name, ref.version)  # one call: every verdict tag at once
            tags = dict(mv.tags or {})
            ok, reason, verdicts = decide(tags, require, evidence_runs(tags, require))
            if ok and check_artifacts:
                intact, why = artifacts_intact(ref, tags)
                if not intact:
                    ok, reason = False, f"blocked: the version's artifacts are not whole ({why})"
            decide_seconds = time.perf_counter() - started
            previous = None
            if ok:
                previous = _alias(ref.name, alias)
                if previous != ref.version:
                    if previous is not None:
                        c.set_registered_model_alias(ref.name, PREVIOUS_ALIAS, previous)
                        c.set_model_version_tag(ref.name, previous, "mlchaos.gate", "superseded")
                        c.set_model_version_tag(ref.name, previous, "mlchaos.gate.reason",
                                                f"@{alias} moved to version {ref.version}")
                    c.set_registered_model_alias(ref.name, alias, ref.version)
                    reason += f"; @{alias} -> {ref.version}" + (f" (was {previous})" if previous else "")
                else:
                    reason += f"; @{alias} already points to {ref.version}"
            c.set_model_version_tag(ref.name, ref.version, "mlchaos.gate", "promoted" if ok else "blocked")
            c.set_model_version_tag(ref.name, ref.version, "mlchaos.gate.reason", reason[:4000])
            c.set_model_version_tag(ref.name, ref.version, "mlchaos.gate.alias", alias)
    except MlflowException as exc:  # the gate never decides on a partial answer: nothing is promoted
        raise InfrastructureError(f"the gate could not complete against MLflow at {tracking_uri()}: nothing was "
                                  f"promoted ({exc})") from exc
    _count_decision(ref.name, ref.version, "promoted" if ok else "blocked", reason)
    return GateDecision(ref.name, ref.version, alias, ok, reason, verdicts, previous, round(decide_seconds, 4))


def _count_decision(model: str, version: str, decision: str, reason: str) -> None:
    """``mlchaos_gate_decisions_total`` (pushed when a Pushgateway is configured); never changes the decision."""
    from mlchaos_steps.telemetry.metrics import count_gate_decision

    try:
        count_gate_decision(model, decision, config.home(), version, reason)
    except Exception as exc:
        log.warning("could not count the gate decision on %s: %s", model, exc)


def _alias(model: str, alias: str) -> str | None:
    from mlchaos_steps.targets.mlflow import alias_version

    return alias_version(model, alias)
