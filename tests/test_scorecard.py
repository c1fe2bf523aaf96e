"""The resilience scorecard from real runs: a passing and a failing stage on one model version, a
gate decision, `mlchaos report` writing one static HTML page and JUnit XML; the page rendered by a
real headless Chromium (Debian's), its inline script run, no console error, the screenshot kept in
build/test-artifacts/."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import pytest
from conftest import ROOT, cli, pod_doc, wipe_doc

from mlchaos_steps.api import run_stage
from mlchaos_steps.config import home
from mlchaos_steps.stages import parse_stage
from mlchaos_steps.telemetry import metrics


@pytest.mark.heavy(30)
def test_the_scorecard_renders_in_chromium(store: Path, healthy_server: object, tmp_path: Path,
                                           two_versions: tuple[str, str, str]) -> None:
    name, version, _ = two_versions
    assert run_stage(parse_stage(wipe_doc(store)), "card-wipe", model=name, version=version).verdict.status == "passed"
    broken = run_stage(parse_stage(wipe_doc(store, broken=True)), "card-wipe-broken", model=name, version=version)
    assert broken.verdict.status == "failed"
    pod = run_stage(parse_stage(pod_doc(healthy_server)), "card-pod", model=name, version=version)  # type: ignore[arg-type]
    assert pod.verdict.status == "passed", pod.verdict
    metrics.count_gate_decision(name, "blocked", home(), version, "blocked: checkpoint-wipe failed")

    html_path, junit_path = tmp_path / "report.html", tmp_path / "report.xml"
    proc = cli("report", "-o", str(html_path), "--model", name, "--since", "1d", "--junit", str(junit_path))
    assert proc.returncode == 0, proc.stderr
    page = html_path.read_text()
    assert f"{name} version {version}" in page and "blocked: checkpoint-wipe failed" in page
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)  # nothing fetched: it opens offline
    # checkpoint-wipe's latest run failed, pod-delete passed: weights 2 and 3 -> 60.0
    assert f"{name} version {version} — score 60.0" in page
    suite = ElementTree.parse(junit_path).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "1"

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is installed by `make test` (apt-get install chromium)"
    common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
              f"--user-data-dir={tmp_path / 'chromium'}"]
    dom = subprocess.run([*common, "--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=120)
    plots = re.search(r'data-plots="(\d+)"', dom.stdout)
    assert plots and int(plots.group(1)) >= 2, dom.stdout[-2000:]  # the inline script ran and found the plots
    artifacts = ROOT / "build" / "test-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "scorecard.png"
    taken = subprocess.run([*common, f"--screenshot={shot}", "--window-size=1280,1600", html_path.as_uri()],
                           capture_output=True, text=True, timeout=120)
    assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() + taken.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console


def test_bad_since_is_refused_with_exit_2(tmp_path: Path) -> None:
    proc = cli("report", "-o", str(tmp_path / "r.html"), "--since", "a fortnight")
    assert proc.returncode == 2 and "--since" in proc.stderr, proc.stderr
    assert not (tmp_path / "r.html").exists()


def test_the_scorecard_is_attached_to_the_evidence_run(store: Path, tmp_path: Path,
                                                        two_versions: tuple[str, str, str]) -> None:
    """Every front door finds it beside the journal: the CLI's JSON (an Argo step's `result`) says where."""
    import mlflow
    from conftest import mlchaos_json, write_stage

    name, version, _ = two_versions
    stage_file = write_stage(tmp_path / "wipe.yaml", wipe_doc(store))
    code, out = mlchaos_json("run", str(stage_file), "--run-key", "attached", "--model", name, "--version", version)
    assert code == 0, out
    uri = out["scorecard"]
    assert re.fullmatch(r"runs:/[0-9a-f]+/scorecard\.html", uri), uri
    local = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "dl"))
    page = Path(local).read_text()
    assert f"{name} version {version} — score 100.0" in page and "attached" in page
