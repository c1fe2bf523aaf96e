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

from conftest import mlchaos, mlchaos_json, wipe_doc, write_stage

from mlchaos_steps.core.waiting import wait_until
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


def _exporting(backends: Any) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": backends.collector.url, "MLCHAOS_PUSHGATEWAY_URL": backends.pushgateway_url,
            "MLCHAOS_PIPELINE": "telemetry-test"}


def test_the_collector_receives_one_trace_with_four_phase_spans_from_four_processes(
        store: Path, tmp_path: Path, telemetry_backends: Any) -> None:
    stage_file = write_stage(tmp_path / "wipe.yaml", _traced_wipe(store, tmp_path / "seen.txt"))
    outputs = _phases_in_four_processes(stage_file, "exported-4", env=_exporting(telemetry_backends))
    trace_id = outputs[0]["trace_id"]
    execution = SqliteLedger().get("exported-4")
    assert execution is not None
    root_id = execution.state["trace"]["span_id"]

    def spans() -> list[dict[str, Any]]:
        return telemetry_backends.collector.spans(trace_id)

    assert wait_until(lambda: len(spans()) >= 5, 10), spans()
    by_name = {s["name"]: s for s in spans()}
    assert set(by_name) == {"mlchaos snapshot", "mlchaos inject", "mlchaos verify", "mlchaos restore",
                            "mlchaos stage checkpoint-wipe"}
    root = by_name["mlchaos stage checkpoint-wipe"]
    assert root["spanId"] == root_id and not root.get("parentSpanId")
    for phase in ("snapshot", "inject", "verify", "restore"):
        span = by_name[f"mlchaos {phase}"]
        assert span["parentSpanId"] == root_id
        assert span["spanId"] == execution.phases[phase]["span_id"]  # the id the phase's commands were handed
        assert span["attributes"]["mlchaos.run_key"] == "exported-4"
        assert span["resource"]["service.name"] == "mlchaos"
    assert by_name["mlchaos verify"]["attributes"]["mlchaos.verdict"] == "passed"
    inject_events = [e["name"] for e in by_name["mlchaos inject"].get("events", [])]
    restore_events = [e["name"] for e in by_name["mlchaos restore"].get("events", [])]
    assert "mlchaos.action" in inject_events and "mlchaos.restore" in restore_events


def test_prometheus_scrapes_the_metrics_of_a_run(store: Path, tmp_path: Path, telemetry_backends: Any) -> None:
    stage_file = write_stage(tmp_path / "wipe.yaml", wipe_doc(store))
    env = {**_exporting(telemetry_backends), "MLCHAOS_PIPELINE": f"metrics-{tmp_path.name}"}
    for key in ("m-1", "m-2"):
        code, out = mlchaos_json("run", str(stage_file), "--run-key", key, env=env)
        assert code == 0, out
    selector = f'stage="checkpoint-wipe",pipeline="{env["MLCHAOS_PIPELINE"]}",job="mlchaos"'

    def runs() -> list[dict[str, Any]]:
        return telemetry_backends.prometheus.query(f"mlchaos_stage_runs_total{{{selector}}}")

    assert wait_until(lambda: runs() and runs()[0]["value"][1] == "2", 20), runs()
    assert runs()[0]["metric"]["verdict"] == "passed"
    lost = telemetry_backends.prometheus.query(f"mlchaos_lost_steps{{{selector}}}")
    assert lost and float(lost[0]["value"][1]) >= 0, lost


def test_exporters_that_are_down_change_nothing(store: Path, tmp_path: Path) -> None:
    """Nothing listens at either address: the verdict is the same, and the log says so once each."""
    from mlchaos_steps.examples.workloads import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    stage_file = write_stage(tmp_path / "wipe.yaml", wipe_doc(store))
    proc = mlchaos("run", str(stage_file), "--run-key", "down", "--json",
                   env={"OTEL_EXPORTER_OTLP_ENDPOINT": dead, "MLCHAOS_PUSHGATEWAY_URL": dead})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["verdict"] == "passed"
    assert proc.stderr.count("metrics not pushed") == 1, proc.stderr
    assert proc.stderr.count("said once; spans") == 1, proc.stderr


def test_the_metrics_pass_promtool_check_metrics(store: Path, tmp_path: Path) -> None:
    """Names, units and help text per Prometheus' conventions, as its own linter reads them."""
    import subprocess

    from conftest import telemetry_binary
    from prometheus_client import generate_latest

    from mlchaos_steps.api import run_stage
    from mlchaos_steps.stages import parse_stage
    from mlchaos_steps.telemetry import metrics

    outcome = run_stage(parse_stage(wipe_doc(store)), "linted")
    assert outcome.verdict.status == "passed"
    metrics.count_gate_decision("churn", "blocked", tmp_path)
    text = generate_latest(metrics.stage_registry(SqliteLedger(), "checkpoint-wipe"))
    assert b"mlchaos_stage_runs_total{" in text and b"mlchaos_lost_steps{" in text
    text += generate_latest(metrics.gate_registry(tmp_path))
    assert b'mlchaos_gate_decisions_total{decision="blocked",model="churn"} 1.0' in text, text
    lint = subprocess.run([str(telemetry_binary("promtool")), "check", "metrics"], input=text, capture_output=True)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), (lint.stdout, lint.stderr)


def test_the_grafana_dashboard_uses_only_metrics_the_library_emits(store: Path, tmp_path: Path) -> None:
    """docker/grafana/mlchaos-dashboard.json, checked against what a real run exposes (not a list of names)."""
    from prometheus_client import generate_latest

    from mlchaos_steps.api import run_stage
    from mlchaos_steps.stages import parse_stage
    from mlchaos_steps.telemetry import metrics

    assert run_stage(parse_stage(wipe_doc(store)), "dashboard").verdict.status == "passed"
    metrics.count_gate_decision("churn", "promoted", tmp_path)
    exposed = (generate_latest(metrics.stage_registry(SqliteLedger(), "checkpoint-wipe"))
               + generate_latest(metrics.gate_registry(tmp_path))).decode()
    # every family the library declares, with or without a sample in this run
    emitted = set(re.findall(r"^# TYPE (mlchaos_[a-z_]+) \w+$", exposed, flags=re.M))
    dashboard = json.loads((Path(__file__).parents[1] / "docker" / "grafana" / "mlchaos-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = {name for e in exprs for name in re.findall(r"\b(mlchaos_[a-z_]+)", e)}
    assert used and used <= emitted, sorted(used - emitted)
    assert {"mlchaos_stage_runs_total", "mlchaos_gate_decisions_total"} <= used


def test_the_example_servers_own_spans_join_the_faults_trace(tmp_path: Path, telemetry_backends: Any) -> None:
    """pod-delete's probe requests carry the phase's traceparent; the traced example server makes its
    request spans children of it, so what the fault did to requests shows in the same trace."""
    from conftest import pod_doc

    collector = telemetry_backends.collector
    server = workloads.start_server(env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url},
                                    log_path=tmp_path / "server.log")
    try:
        stage_file = write_stage(tmp_path / "pod.yaml", pod_doc(server))
        code, out = mlchaos_json("run", str(stage_file), "--run-key", "traced-pod", env=_exporting(telemetry_backends))
        assert code == 0 and out["verdict"] == "passed", out
    finally:
        server.stop()
    execution = SqliteLedger().get("traced-pod")
    assert execution is not None
    phase_spans = {p["span_id"] for p in execution.phases.values()}

    def served() -> list[dict[str, Any]]:
        spans = collector.spans(out["trace_id"])
        return [s for s in spans if s["resource"]["service.name"] == "mlchaos-example-server"]

    assert wait_until(lambda: len(served()) > 0, 10), collector.spans(out["trace_id"])
    assert all(s["parentSpanId"] in phase_spans for s in served())
    assert {s["name"] for s in served()} == {"GET /ping"}
