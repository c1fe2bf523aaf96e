"""One correlation id per execution, with or without exporters: a W3C trace whose id the ledger, the
journal, the CLI's JSON and every phase carry, whose ``traceparent`` reaches the commands a stage starts
and its probe requests, and whose four phases join one trace across four processes. With a real
OpenTelemetry Collector and a real Prometheus + Pushgateway (built from their Go modules), the spans
and metrics are read back from them."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from conftest import mlchaos_json, wipe_doc, write_stage

from mlchaos_steps.examples import workloads
from mlchaos_steps.ledgers import SqliteLedger

RECORDS_TRACEPARENT = ("import os, subprocess, sys; open(sys.argv[1], 'a').write(os.environ.get('TRACEPARENT', '') "
                       "+ chr(10)); sys.exit(subprocess.call(sys.argv[2:]))")


def _traced_wipe(store: Path, seen: Path) -> dict[str, Any]:
    """checkpoint-wipe whose resume command writes down the TRACEPARENT it was given, then resumes."""
    return wipe_doc(store, resume={"command": [sys.executable, "-c", RECORDS_TRACEPARENT, str(seen),
                                               *workloads.resume_command(store)], "max_lost_steps": 200})


def _phases_in_four_processes(stage_file: Path, run_key: str, env: dict[str, str] | None = None) -> list[Any]:
    outputs = []
    for phase in ("snapshot", "inject", "verify", "restore"):
        code, out = mlchaos_json("run", str(stage_file), "--phase", phase, "--run-key", run_key, env=env)
        assert code == 0, out
        outputs.append(out)
    return outputs


def test_one_trace_id_everywhere_without_any_exporter(store: Path, tmp_path: Path) -> None:
    seen = tmp_path / "traceparent.txt"
    stage_file = write_stage(tmp_path / "wipe.yaml", _traced_wipe(store, seen))
    code, out = mlchaos_json("run", str(stage_file), "--run-key", "traced-1")
    assert code == 0 and out["verdict"] == "passed", out
    trace_id = out["trace_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id) and set(trace_id) != {"0"}
    execution = SqliteLedger().get("traced-1")
    assert execution is not None and execution.state["trace"]["trace_id"] == trace_id
    assert json.loads(Path(out["journal"]).read_text())["mlchaos"]["trace_id"] == trace_id
    # The resume command ran inside a phase: it was handed that phase's span of this trace.
    given = seen.read_text().split()
    span_ids = {p["span_id"] for p in execution.phases.values()}
    assert len(span_ids) == 4
    assert given and all(re.fullmatch(rf"00-{trace_id}-([0-9a-f]{{16}})-01", g) for g in given), given
    assert {g.split("-")[2] for g in given} <= span_ids


def test_four_phases_in_four_processes_share_one_trace(store: Path, tmp_path: Path) -> None:
    stage_file = write_stage(tmp_path / "wipe.yaml", _traced_wipe(store, tmp_path / "seen.txt"))
    outputs = _phases_in_four_processes(stage_file, "traced-4")
    assert len({o["trace_id"] for o in outputs}) == 1 and outputs[0]["trace_id"]
    assert outputs[-1]["output"]["trace_id"] == outputs[0]["trace_id"]  # restore's own result says it too


def test_a_pipeline_that_is_itself_traced_is_joined(store: Path, tmp_path: Path) -> None:
    """An Airflow or Argo step that runs under a TRACEPARENT: the execution joins that trace."""
    outer = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    stage_file = write_stage(tmp_path / "wipe.yaml", _traced_wipe(store, tmp_path / "seen.txt"))
    code, out = mlchaos_json("run", str(stage_file), "--run-key", "joined", env={"TRACEPARENT": outer})
    assert code == 0, out
    assert out["trace_id"] == "ab" * 16
    assert SqliteLedger().get("joined").state["trace"]["parent_span_id"] == "cd" * 8  # type: ignore[union-attr]
