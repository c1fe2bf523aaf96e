"""pod-delete on a training Job's pod, then checkpoint-wipe's resume contract, against the control plane
of the tests. The simulated kubelets run the Job's container as a real local process (the example
trainer, checkpointing to a folder) and serve its log through the API server, as a kubelet does.

Healthy: the replacement resumes from the newest checkpoint and trains on (passes). Broken: a trainer
that forgets to resume (no report), one that resumes too far back (over budget), and one that claims the
newest step but starts over (its next checkpoint gives it away): each fails."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from kube_agent import RUN
from kubetools import apply_rbac, wait_for

from mlchaos_steps.api import run_stage
from mlchaos_steps.errors import SpecError
from mlchaos_steps.stages import parse_stage

RBAC = Path(__file__).parent.parent / "docker" / "k8s" / "rbac.yaml"
# the agent runs the Job's container as a local process writing to a local store
pytestmark = pytest.mark.simulated_kubelet
TRAIN = [sys.executable, "-m", "mlchaos_steps.examples.trainer", "--steps", "1000000", "--checkpoint-every", "10",
         "--step-seconds", "0.02"]


def _job(store: Path, argv: list[str]) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "train"},
            "spec": {"backoffLimit": 4, "template": {"metadata": {"labels": {"app": "train", RUN: "true"}}, "spec": {
                "restartPolicy": "Never", "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "trainer", "image": "example/trainer:1", "command": argv,
                                "env": [{"name": "MLCHAOS_TEST_STORE", "value": str(store)}]}]}}}}


@pytest.fixture
def training(kube_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Start a training Job running ``argv`` (the store is appended) and wait for five checkpoints;
    KUBECONFIG holds the stage's ServiceAccount token. The Job is deleted afterwards."""
    from kubernetes import client

    api = kube_cluster.admin()
    namespace = kube_cluster.namespace("train")
    apply_rbac(api, namespace, RBAC)
    store = tmp_path / "ckpts"
    store.mkdir()
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.service_account_config(namespace, "mlchaos-chaos",
                                                                             tmp_path / "stage.kubeconfig")))

    def start(argv: list[str]) -> tuple[str, Path]:
        client.BatchV1Api(api).create_namespaced_job(namespace, _job(store, [*argv, "--store", str(store)]))
        wait_for(lambda: len(list(store.glob("step-*"))) >= 5, timeout_s=60, what="five checkpoints")
        return namespace, store

    yield start
    client.BatchV1Api(api).delete_namespaced_job("train", namespace, propagation_policy="Background")


def _doc(namespace: str, store: Path, **resume: Any) -> dict[str, Any]:
    return {"kind": "PodDelete", "spec": {
        "target": {"kubernetes": {"namespace": namespace, "selector": "app=train"}},
        "count": 1, "grace_s": 0, "recovery_slo_s": 60, "stable_s": 0.5,
        "resume": {"store": f"file://{store}", "max_lost_steps": 20, "timeout_s": 60, **resume}}}


def test_a_training_pod_that_resumes_from_its_newest_checkpoint_passes(training: Any) -> None:
    namespace, store = training([*TRAIN, "--resume"])
    outcome = run_stage(parse_stage(_doc(namespace, store)), "train-healthy")
    verdict = outcome.verdict
    assert verdict.status == "passed", (verdict.reason, verdict.evidence)
    resume = verdict.evidence["observation"]["resume"]
    (pod, seen), = resume["pods"].items()
    assert seen["reports"][-1]["step"] == verdict.metrics["resumed_from_step"] > 0
    assert verdict.metrics["lost_steps"] <= 20
    assert resume["written_after"][0]["step"] > verdict.metrics["resumed_from_step"]  # it trained on


def test_a_trainer_that_forgets_to_resume_fails(training: Any) -> None:
    namespace, store = training(TRAIN)  # no --resume: starts over and reports nothing
    verdict = run_stage(parse_stage(_doc(namespace, store, timeout_s=5)), "train-no-resume").verdict
    assert verdict.status == "failed" and "did not report where it resumed" in verdict.reason, verdict.reason


def test_a_trainer_that_resumes_too_far_back_fails(training: Any, tmp_path: Path) -> None:
    # on a restart it finds only step-10 (the newer checkpoints are gone from where it looks): it reports
    # step 10 honestly, but more steps are lost than the budget allows
    mirror = tmp_path / "started-once"
    script = tmp_path / "train_from_mirror.py"
    script.write_text(textwrap.dedent(f"""
        import os, shutil, sys
        from pathlib import Path
        from mlchaos_steps.examples.trainer import main
        store, mirror = Path(os.environ["MLCHAOS_TEST_STORE"]), Path({str(mirror)!r})
        if mirror.exists():  # a restart: the newest checkpoints are not where this trainer looks
            for path in store.glob("step-*"):
                if int(path.name.split("-")[1]) > 10:
                    shutil.rmtree(path, ignore_errors=True)
        mirror.mkdir(exist_ok=True)
        sys.exit(main(sys.argv[1:]))
    """))
    namespace, store = training([sys.executable, str(script), *TRAIN[3:], "--resume"])
    verdict = run_stage(parse_stage(_doc(namespace, store)), "train-too-far").verdict
    assert verdict.status == "failed" and "steps lost" in verdict.reason, verdict.reason


def test_a_trainer_that_claims_its_newest_step_but_starts_over_fails(training: Any, tmp_path: Path) -> None:
    script = tmp_path / "liar.py"
    script.write_text(textwrap.dedent("""
        import json, os, re, sys
        from mlchaos_steps.examples.trainer import main
        steps = [int(m.group(1)) for name in os.listdir(os.environ["MLCHAOS_TEST_STORE"])
                 if (m := re.fullmatch(r"step-(\\d+)", name))]
        print(json.dumps({"mlchaos_resumed_from_step": max(steps, default=0)}), flush=True)
        sys.exit(main(sys.argv[1:]))  # without --resume: trains from step 0 again
    """))
    namespace, store = training([sys.executable, str(script), *TRAIN[3:]])
    verdict = run_stage(parse_stage(_doc(namespace, store)), "train-liar").verdict
    assert verdict.status == "failed" and "training started over" in verdict.reason, verdict.reason


def test_without_reading_logs_the_training_stage_stops_before_deleting(kube_cluster: Any, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import cli_json
    from kubernetes import client

    api = kube_cluster.admin()
    namespace = kube_cluster.namespace("train-rbac")
    apply_rbac(api, namespace, RBAC, drop=("pods/log", "get"))
    store = tmp_path / "ckpts"
    store.mkdir()
    client.BatchV1Api(api).create_namespaced_job(namespace, _job(store, [*TRAIN, "--resume", "--store", str(store)]))
    wait_for(lambda: len(list(store.glob("step-*"))) >= 1, timeout_s=60, what="a checkpoint")
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.service_account_config(namespace, "mlchaos-chaos",
                                                                             tmp_path / "k")))
    pods = {p.metadata.uid for p in client.CoreV1Api(api).list_namespaced_pod(namespace).items}
    stage_file = tmp_path / "stage.yaml"
    import yaml

    stage_file.write_text(yaml.safe_dump(_doc(namespace, store)))
    code, result = cli_json("run", str(stage_file))
    assert code == 3 and "may not get pods/log" in result["reason"], result
    assert {p.metadata.uid for p in client.CoreV1Api(api).list_namespaced_pod(namespace).items} == pods
    client.BatchV1Api(api).delete_namespaced_job("train", namespace, propagation_policy="Background")


def test_resume_needs_a_kubernetes_target() -> None:
    doc = {"kind": "PodDelete", "spec": {"target": {"local": {"selector": {"cmdline": "train.py"}}}, "count": 1,
                                         "resume": {"store": "file:///tmp/x", "max_lost_steps": 1}}}
    with pytest.raises(SpecError, match="resume applies to training pods"):
        parse_stage(doc)
