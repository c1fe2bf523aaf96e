"""The promotion gate: all passed -> promoted; anything else -> blocked, alias unchanged."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import BIN, cli, record_real_verdict

from mlchaos_steps.examples.models import register_sklearn
from mlchaos_steps.gate import promote
from mlchaos_steps.targets.mlflow import client

STAGES = ["checkpoint-wipe", "pod-delete", "registry-artifact-removal", "canary-failure"]


def _tag(name: str, version: str, verdicts: dict[str, str]) -> None:
    for stage, verdict in verdicts.items():
        if verdict in ("passed", "failed", "inconclusive"):
            record_real_verdict(name, version, stage, verdict)
        else:  # garbled: what no run of ours writes
            client().set_model_version_tag(name, version, f"mlchaos.{stage}.verdict", verdict)


@pytest.mark.parametrize(
    ("verdicts", "promoted"),
    [
        (dict.fromkeys(STAGES, "passed"), True),
        ({**dict.fromkeys(STAGES, "passed"), "pod-delete": "failed"}, False),
        ({**dict.fromkeys(STAGES, "passed"), "canary-failure": "inconclusive"}, False),
        ({s: "passed" for s in STAGES if s != "checkpoint-wipe"}, False),  # missing
        ({**dict.fromkeys(STAGES, "passed"), "registry-artifact-removal": "PASSED"}, False),  # not exactly passed
    ],
    ids=["all-passed", "one-failed", "one-inconclusive", "one-missing", "garbled"],
)
def test_gate_matrix(two_versions: tuple[str, str, str], verdicts: dict[str, str], promoted: bool) -> None:
    name, v1, v2 = two_versions
    _tag(name, v2, verdicts)
    proc = cli("gate", "--model", name, "--version", "@challenger", "--require", ",".join(STAGES), "--json")
    result = json.loads(proc.stdout)
    assert proc.returncode == (0 if promoted else 1), proc.stderr
    assert result["decision"] == ("promoted" if promoted else "blocked")
    tags = client().get_model_version(name, v2).tags
    assert tags["mlchaos.gate"] == result["decision"]
    assert tags["mlchaos.gate.reason"] == result["reason"]
    champion = client().get_model_version_by_alias(name, "champion").version
    if promoted:
        assert champion == v2
        assert client().get_model_version_by_alias(name, "previous_champion").version == v1
        assert client().get_model_version(name, v1).tags["mlchaos.gate"] == "superseded"
    else:
        assert champion == v1  # never moved
        bad = [s for s in STAGES if verdicts.get(s) != "passed"]
        assert all(s in result["reason"] for s in bad)


def test_gate_checks_the_exact_version(two_versions: tuple[str, str, str]) -> None:
    name, v1, v2 = two_versions
    _tag(name, v1, {"pod-delete": "passed"})  # a verdict on another version does not count
    assert not promote(name, v2, ["pod-delete"]).promoted


def test_gate_bad_input_exits_2(two_versions: tuple[str, str, str]) -> None:
    name, _, _ = two_versions
    for args in (["--model", "nope", "--version", "1"], ["--model", name, "--version", "42"],
                 ["--model", name, "--version", "@ghost"], ["--model", name, "--version", "1", "--alias",
                                                           "previous_champion"]):
        proc = cli("gate", *args, "--require", "pod-delete")
        assert proc.returncode == 2, (args, proc.stderr)
    assert cli("gate", "--model", name, "--version", "1", "--require", " ,").returncode == 2


def test_two_gates_racing_end_with_tags_that_agree_with_the_alias(two_versions: tuple[str, str, str]) -> None:
    name, v1, v2 = two_versions
    v3 = register_sklearn(name)
    for version in (v2, v3):
        _tag(name, version, {"pod-delete": "passed"})
    procs = [subprocess.Popen([str(BIN / "mlchaos"), "gate", "--model", name, "--version", v, "--require",
                               "pod-delete", "--json"], stdout=subprocess.PIPE, text=True) for v in (v2, v3)]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(r["decision"] == "promoted" for r in results)
    champion = client().get_model_version_by_alias(name, "champion").version
    assert champion in (v2, v3)
    gate_tags = {v: client().get_model_version(name, v).tags.get("mlchaos.gate") for v in (v1, v2, v3)}
    assert [v for v, t in gate_tags.items() if t == "promoted"] == [champion]
    loser = v2 if champion == v3 else v3
    assert gate_tags[loser] == "superseded"
    assert client().get_model_version_by_alias(name, "previous_champion").version == loser


def test_gate_python_api_example(two_versions: tuple[str, str, str]) -> None:
    name, _, v2 = two_versions
    _tag(name, v2, {"checkpoint-wipe": "passed"})
    decision = promote(name, "@challenger", ["checkpoint-wipe"])
    assert decision.promoted and decision.version == v2 and decision.exit_code == 0
