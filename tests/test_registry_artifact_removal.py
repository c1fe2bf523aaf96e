"""registry-artifact-removal against a real MLflow server: detected vs silent, fallback vs no fallback."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import cli, record_real_verdict
from systems import CuttingProxy

from mlchaos_steps.api import run_phase, run_stage
from mlchaos_steps.core.records import ExecutionStatus
from mlchaos_steps.examples.models import SAMPLE_INPUT, register_silent_fallback
from mlchaos_steps.ledgers import SqliteLedger
from mlchaos_steps.stages import parse_stage
from mlchaos_steps.targets.mlflow import ModelRef, client, version_artifacts
from mlchaos_steps.verification import model_loads


def _doc(model: str, version: str, **spec: object) -> dict[str, object]:
    return {"kind": "RegistryArtifactRemoval", "spec": {"model": model, "version": version, **spec}}


def _digests(model: str, version: str) -> dict[str, str]:
    return _tree(Path(version_artifacts(ModelRef(model, version)).root))


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "registered_model_meta"}


@pytest.mark.parametrize("scope", ["all", "weights"])
def test_detected_passes_for_a_real_model_and_round_trip_is_exact(two_versions: tuple[str, str, str],
                                                                   scope: str) -> None:
    name, _, v2 = two_versions
    before = _digests(name, v2)
    outcome = run_stage(parse_stage(_doc(name, "@challenger", scope=scope)), f"rar-{scope}")
    assert outcome.verdict.status == "passed", outcome.verdict
    assert outcome.restored, outcome.restore_error
    assert _digests(name, v2) == before
    assert model_loads(f"models:/{name}/{v2}").ok
    if scope == "all":  # and it serves again
        from mlchaos_steps.examples import workloads
        from mlchaos_steps.verification import serving_healthy

        server = workloads.start_model_server(f"models:/{name}/{v2}")
        try:
            assert serving_healthy(server.url, SAMPLE_INPUT).ok
        finally:
            server.stop()
    tags = client().get_model_version(name, v2).tags
    assert tags["mlchaos.registry-artifact-removal.verdict"] == "passed"
    run = client().get_run(tags["mlchaos.registry-artifact-removal.run_id"])
    assert run.data.tags["mlchaos.run_key"] == f"rar-{scope}"
    assert "journal.json" in [a.path for a in client().list_artifacts(run.info.run_id)]


def test_a_model_in_mlflows_default_skops_format_round_trips(mlflow_server: str, model_name: str) -> None:
    """The example models are cloudpickled (cheaper to load); MLflow's own default for scikit-learn is
    skops: its weights file is removed, loading notices, and everything comes back byte for byte."""
    from mlchaos_steps.examples.models import register_sklearn

    version = register_sklearn(model_name, serialization_format="skops")
    before = _digests(model_name, version)
    assert any(p.endswith("model.skops") for p in before), before
    outcome = run_stage(parse_stage(_doc(model_name, version, scope="weights")), "rar-skops")
    assert outcome.verdict.status == "passed", outcome.verdict
    load = outcome.verdict.evidence["checks"][0]
    assert not load["ok"] and "model.skops" in load["detail"], load  # the loader missed the weights file
    assert outcome.restored and _digests(model_name, version) == before
    assert model_loads(f"models:/{model_name}/{version}").ok


def test_detected_fails_when_the_model_loads_without_its_weights(mlflow_server: str, model_name: str,
                                                                 tmp_path: Path) -> None:
    version = register_silent_fallback(model_name, tmp_path)
    before = _digests(model_name, version)
    outcome = run_stage(parse_stage(_doc(model_name, version, scope="weights")), "rar-silent")
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "the loss went undetected" in outcome.verdict.reason
    assert outcome.restored
    assert _digests(model_name, version) == before


def test_fallback_passes_when_champion_is_another_version(two_versions: tuple[str, str, str]) -> None:
    name, v1, _ = two_versions
    outcome = run_stage(parse_stage(_doc(name, "@challenger", expect="fallback")), "rar-fallback")
    assert outcome.verdict.status == "passed", outcome.verdict
    assert client().get_model_version_by_alias(name, "champion").version == v1


def test_fallback_fails_when_champion_is_the_broken_version(two_versions: tuple[str, str, str]) -> None:
    name, _, v2 = two_versions
    client().set_registered_model_alias(name, "champion", v2)
    outcome = run_stage(parse_stage(_doc(name, "@challenger", expect="fallback")), "rar-no-fallback")
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "model-loads" in outcome.verdict.reason
    assert outcome.restored
    assert model_loads(f"models:/{name}@champion").ok


def test_fallback_with_serving(two_versions: tuple[str, str, str], tmp_path: Path) -> None:
    from mlchaos_steps.examples import workloads

    name, _, _ = two_versions
    server = workloads.start_model_server(f"models:/{name}@champion", log_path=tmp_path / "serve.log")
    try:
        doc = _doc(name, "@challenger", expect="fallback", serving={"url": server.url, "sample": SAMPLE_INPUT})
        outcome = run_stage(parse_stage(doc), "rar-serving")
    finally:
        server.stop()
    assert outcome.verdict.status == "passed", outcome.verdict
    checks = {c["name"].split()[0]: c["ok"] for c in outcome.verdict.evidence["checks"]}
    assert checks == {"model-loads": True, "alias-unchanged": True, "serving-healthy": True}


def test_gate_refuses_the_broken_version_during_the_fault(two_versions: tuple[str, str, str]) -> None:
    from mlchaos_steps.gate import promote

    name, _, v2 = two_versions
    stage = parse_stage(_doc(name, v2))
    run_phase(stage, "snapshot", "rar-gate")
    run_phase(stage, "inject", "rar-gate")
    record_real_verdict(name, v2, "pod-delete", "passed")
    decision = promote(name, v2, ["pod-delete"])
    assert not decision.promoted and "artifacts are not whole" in decision.reason
    run_phase(stage, "restore", "rar-gate")
    assert promote(name, v2, ["pod-delete"]).promoted


def test_store_that_cannot_delete_is_inconclusive_and_nothing_is_lost(two_versions: tuple[str, str, str]) -> None:
    import subprocess

    name, _, v2 = two_versions
    before = _digests(name, v2)
    store = version_artifacts(ModelRef(name, v2))
    stuck = sorted(store.list())[-1]  # something late in the order: earlier files get deleted first
    subprocess.run(["chattr", "+i", str(Path(store.root, stuck))], check=True)
    try:
        outcome = run_stage(parse_stage(_doc(name, v2, scope="all")), "rar-stuck")
    finally:
        subprocess.run(["chattr", "-i", str(Path(store.root, stuck))], check=True)
    assert outcome.verdict.status == "inconclusive", outcome.verdict
    assert outcome.restored, outcome.restore_error
    assert _digests(name, v2) == before


def test_unknown_model_version_or_alias_exits_2_and_touches_nothing(two_versions: tuple[str, str, str],
                                                                    tmp_path: Path) -> None:
    import yaml

    name, _, v2 = two_versions
    before = _digests(name, v2)
    for doc, field in [(_doc("no-such-model", "1"), "spec.model"), (_doc(name, "99"), "spec.version"),
                       (_doc(name, "@nope"), "spec.version"), (_doc(name, "latest"), "spec.version")]:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(doc))
        proc = cli("run", str(path))
        assert proc.returncode == 2, proc.stderr
        assert field in proc.stderr
    assert _digests(name, v2) == before


def test_tracking_server_down_during_verify(mlflow_server: str, monkeypatch: pytest.MonkeyPatch,
                                           model_name: str) -> None:
    """Verdict inconclusive, exit 3, the version still says `pending` (so the gate blocks), artifacts restored.
    The server goes down for this stage only: it is reached through a proxy that then refuses connections."""
    from mlchaos_steps.examples.models import register_sklearn
    from mlchaos_steps.gate import promote

    version = register_sklearn(model_name)
    root = Path(version_artifacts(ModelRef(model_name, version)).root)
    before = _tree(root)
    stage = parse_stage(_doc(model_name, version))
    proxy = CuttingProxy(int(mlflow_server.rsplit(":", 1)[1]), allow=10**6)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    run_phase(stage, "snapshot", "rar-down")
    run_phase(stage, "inject", "rar-down")
    proxy.close()  # the tracking server is gone: connections are refused
    result = run_phase(stage, "verify", "rar-down")
    assert result.verdict is not None and result.verdict.status == "inconclusive"
    assert result.verdict.exit_code == 3
    run_phase(stage, "restore", "rar-down")  # the artifact root is a local folder: restore needs no server
    assert _tree(root) == before
    assert SqliteLedger().get("rar-down").status == ExecutionStatus.RESTORED  # type: ignore[union-attr]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # the server is back
    tags = client().get_model_version(model_name, version).tags
    assert tags["mlchaos.registry-artifact-removal.verdict"] == "pending"  # never a verdict it did not reach
    assert not promote(model_name, version, ["registry-artifact-removal"]).promoted


def test_embedded_sqlite_registry(monkeypatch: pytest.MonkeyPatch, model_name: str, mlchaos_home: Path) -> None:
    from mlchaos_steps.examples.models import register_sklearn

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    version = register_sklearn(model_name)
    outcome = run_stage(parse_stage(_doc(model_name, version)), "rar-embedded")
    assert outcome.verdict.status == "passed", outcome.verdict
    assert outcome.restored
    assert client().get_model_version(model_name, version).tags["mlchaos.registry-artifact-removal.verdict"] == "passed"


def test_restore_refuses_a_backup_with_the_wrong_digest(two_versions: tuple[str, str, str],
                                                        mlchaos_home: Path) -> None:
    from mlchaos_steps.api import restore_run

    name, _, v2 = two_versions
    stage = parse_stage(_doc(name, v2, scope="weights"))
    run_phase(stage, "snapshot", "rar-tampered")
    run_phase(stage, "inject", "rar-tampered")
    backup = next(p for p in (mlchaos_home / "runs").rglob("*") if p.is_file() and "backup" in p.parts)
    backup.write_bytes(b"tampered")
    with pytest.raises(Exception, match="does not match its digest"):
        restore_run("rar-tampered")
    assert backup.read_bytes() == b"tampered"  # kept, never deleted or uploaded
    assert SqliteLedger().get("rar-tampered").status == "restore_failed"  # type: ignore[union-attr]


# -- 10. the default scope tests the model's own loader, not MLflow's --------------------------------
def test_default_scope_catches_a_model_that_falls_back_silently(mlflow_server: str, model_name: str,
                                                               tmp_path: Path) -> None:
    version = register_silent_fallback(model_name, tmp_path)
    outcome = run_stage(parse_stage(_doc(model_name, version)), "rar-default-scope")
    assert outcome.verdict.status == "failed", outcome.verdict
    assert "weights artifacts gone" in outcome.verdict.reason


# -- 9. a load error unrelated to the removal is not detection ---------------------------------------
def test_model_that_does_not_load_here_even_intact_is_inconclusive_and_untouched(
        mlflow_server: str, model_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its class lives in a package this runner lacks: every load fails, removal or not."""
    import sys

    import mlflow

    from mlchaos_steps.targets.mlflow import experiment_id

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "fancy_model_pkg.py").write_text(
        "import mlflow.pyfunc\n"
        "class Fancy(mlflow.pyfunc.PythonModel):\n"
        "    def predict(self, context, model_input, params=None):\n"
        "        return model_input\n")
    monkeypatch.syspath_prepend(str(package))
    import fancy_model_pkg  # noqa: I001  (only importable while the package is on the path)

    weights = tmp_path / "weights.json"
    weights.write_text("[1, 2, 3]")
    mlflow.set_tracking_uri(mlflow_server)
    with mlflow.start_run(experiment_id=experiment_id("mlchaos-examples")):
        info = mlflow.pyfunc.log_model(name="model", python_model=fancy_model_pkg.Fancy(),
                                       artifacts={"weights": str(weights)}, pip_requirements=["mlflow"],
                                       registered_model_name=model_name)
    version = str(info.registered_model_version)
    monkeypatch.delitem(sys.modules, "fancy_model_pkg")
    sys.path.remove(str(package))  # the runner lacks the package now
    before = _digests(model_name, version)
    outcome = run_stage(parse_stage(_doc(model_name, version)), "rar-unloadable")
    assert outcome.verdict.status == "inconclusive", outcome.verdict
    assert "does not load in this environment" in outcome.verdict.reason
    assert "fancy_model_pkg" in outcome.verdict.reason
    assert _digests(model_name, version) == before
    assert SqliteLedger().actions("rar-unloadable") == []


# -- 18. artifacts proxied through `mlflow server --serve-artifacts` ---------------------------------
@pytest.fixture(scope="module")
def proxied_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from mlchaos_steps.examples import workloads

    server = workloads.start_tracking_server(tmp_path_factory.mktemp("proxied"), serve_artifacts=True)
    yield server
    server.stop()


@pytest.mark.parametrize("scope", ["weights", "all"])
def test_proxied_artifact_store_round_trip(proxied_server, model_name: str,  # type: ignore[no-untyped-def]
                                           monkeypatch: pytest.MonkeyPatch, scope: str) -> None:
    from mlchaos_steps.examples.models import register_sklearn
    from mlchaos_steps.gate import promote

    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxied_server.url)
    version = register_sklearn(model_name)
    uri = client().get_model_version_download_uri(model_name, version)
    assert uri.startswith("mlflow-artifacts:")
    root = proxied_server.root / "artifacts" / uri.removeprefix("mlflow-artifacts:/")
    before = _tree(root)
    stage = parse_stage(_doc(model_name, version, scope=scope))
    run_phase(stage, "snapshot", f"proxied-{scope}")
    run_phase(stage, "inject", f"proxied-{scope}")
    assert _tree(root) != before  # really deleted, through the server
    assert not model_loads(f"models:/{model_name}/{version}").ok
    assert run_phase(stage, "verify", f"proxied-{scope}").verdict.status == "passed"  # type: ignore[union-attr]
    run_phase(stage, "restore", f"proxied-{scope}")
    assert _tree(root) == before
    assert model_loads(f"models:/{model_name}/{version}").ok
    record_real_verdict(model_name, version, "pod-delete", "passed")
    assert promote(model_name, version, ["pod-delete"]).promoted  # whole again: the gate accepts it


def test_proxied_artifact_store_silent_fallback_fails(proxied_server, model_name: str,  # type: ignore[no-untyped-def]
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxied_server.url)
    version = register_silent_fallback(model_name, tmp_path)
    uri = client().get_model_version_download_uri(model_name, version)
    root = proxied_server.root / "artifacts" / uri.removeprefix("mlflow-artifacts:/")
    before = _tree(root)
    outcome = run_stage(parse_stage(_doc(model_name, version)), "proxied-silent")
    assert outcome.verdict.status == "failed", outcome.verdict
    assert outcome.restored, outcome.restore_error
    assert _tree(root) == before
