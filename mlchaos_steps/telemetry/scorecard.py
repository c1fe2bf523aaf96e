"""The resilience scorecard: one static HTML page (``mlchaos report``) and JUnit XML for CI systems.

Read from the ledger (every execution: its verdict, reason, metrics, evidence, trace id) and the gate's
log (``MLCHAOS_HOME/gate-decisions.jsonl``). Per model version and stage: the verdict of the latest run
and its reason, the timelines its evidence holds (probe windows, Prometheus samples) as plots, the gate's
decisions, and the trend over all runs. Plots are inline SVG and the page's one script is inline: it
opens without a network.

**Resilience score** of a model version, 0-100: ``100 * sum(w[s] * passed[s]) / sum(w[s])`` over the
stages run on it, ``passed[s]`` = 1 when the latest run of stage ``s`` passed and restored, else 0
(failed and inconclusive count 0), with the weights in ``WEIGHTS`` (serving faults weigh most).
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from mlchaos_steps.core.records import TRACE, Execution, ExecutionStatus, Ledger
from mlchaos_steps.errors import SpecError
from mlchaos_steps.telemetry import svg
from mlchaos_steps.telemetry.metrics import GATE_LOG

WEIGHTS = {"pod-delete": 3, "canary-failure": 3, "checkpoint-wipe": 2, "registry-artifact-removal": 2,
           "data-corruption": 2, "feature-drift": 1}
KEY_METRICS = ("availability", "recovery_seconds", "lost_steps", "detection_seconds", "leaked_rows", "p99_ms")
NO_MODEL = "(no model version)"


@dataclass
class Run:
    run_key: str
    stage: str
    model: str
    version: str
    verdict: str
    reason: str
    restored: bool
    at: float
    trace_id: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.verdict == "passed" and self.restored


def parse_since(text: str | None) -> float | None:
    """``30d``, ``12h``, ``90m``, ``600s`` (or a number of seconds) as seconds; None: everything."""
    if not text:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhms]?)\s*", text)
    if not match:
        raise SpecError("--since", f"{text!r} is not a duration: use e.g. 30d, 12h, 90m or 600s")
    return float(match.group(1)) * {"d": 86400, "h": 3600, "m": 60, "s": 1, "": 1}[match.group(2)]


def runs(ledger: Ledger, model: str | None = None, since_s: float | None = None) -> list[Run]:
    """Every judged execution (oldest first), of ``model`` and newer than ``since_s`` when given."""
    cutoff = time.time() - since_s if since_s is not None else None
    found = []
    for e in ledger.executions():
        if e.verdict is None or (cutoff is not None and e.updated_at < cutoff):
            continue
        target = e.verdict_target
        if model is not None and (target is None or target.name != model):
            continue
        found.append(_run(e))
    return sorted(found, key=lambda r: r.at)


def _run(e: Execution) -> Run:
    detail = e.verdict_detail or {}
    target = e.verdict_target
    return Run(e.run_key, e.stage_id, target.name if target else NO_MODEL, target.version if target else "",
               e.verdict or "inconclusive", str(detail.get("reason", "")), e.status == ExecutionStatus.RESTORED,
               e.updated_at, (e.state.get(TRACE) or {}).get("trace_id"), dict(detail.get("metrics") or {}),
               dict(detail.get("evidence") or {}))


def latest_by_stage(found: Iterable[Run]) -> dict[str, Run]:
    latest: dict[str, Run] = {}
    for run in found:
        if run.stage not in latest or run.at >= latest[run.stage].at:
            latest[run.stage] = run
    return latest


def score(latest: dict[str, Run]) -> float | None:
    weights = {stage: WEIGHTS.get(stage, 1) for stage in latest}
    total = sum(weights.values())
    if not total:
        return None
    return round(100 * sum(w for stage, w in weights.items() if latest[stage].passed) / total, 1)


def gate_log(home: Path) -> list[dict[str, Any]]:
    path = home / GATE_LOG
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def timelines(evidence: dict[str, Any], prefix: str = "") -> list[tuple[str, list[tuple[float, float]], str]]:
    """The timelines an execution's evidence holds: probe windows (share answered, p99) and the samples
    Prometheus returned, as (title, points, y label)."""
    found: list[tuple[str, list[tuple[float, float]], str]] = []
    for key, value in evidence.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            windows = value.get("windows")
            if isinstance(windows, list) and windows:
                found.append((f"{name}: share answered", [(w["at"], w["success_ratio"]) for w in windows],
                              "availability"))
                p99 = [(w["at"], w["p99_ms"]) for w in windows if w.get("p99_ms") is not None]
                if p99:
                    found.append((f"{name}: p99 latency", p99, "ms"))
            for series in value.get("series") or [] if "condition" in value else []:
                points = [(float(t), float(v)) for t, v in series.get("samples", [])]
                if points:
                    found.append((f"{name}: {value['condition']}", points, "PromQL"))
            found.extend(timelines({k: v for k, v in value.items() if k not in ("windows", "series")}, f"{name}."))
    return found


def write_report(ledger: Ledger, path: Path, home: Path, model: str | None = None, since_s: float | None = None
                 ) -> list[Run]:
    """Write the scorecard of ``model`` (every model: None) to ``path``; returns the runs it shows."""
    found = runs(ledger, model, since_s)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(found, gate_log(home)))
    return found


def render_html(found: list[Run], decisions: list[dict[str, Any]], title: str = "mlchaos resilience scorecard"
                ) -> str:
    by_version: dict[tuple[str, str], list[Run]] = {}
    for run in found:
        by_version.setdefault((run.model, run.version), []).append(run)
    sections = [_version_section(model, version, version_runs, decisions)
                for (model, version), version_runs in sorted(by_version.items(), key=_version_order)]
    trends = _trends(found)
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    body = "".join(sections) or "<p>No judged chaos runs in the ledger for this selection.</p>"
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class=meta>{len(found)} run(s), generated {generated}. Score: 100 &times; the weighted share of "
            f"stages whose latest run passed and restored (weights: "
            f"{html.escape(', '.join(f'{k} {v}' for k, v in WEIGHTS.items()))}; others 1).</p>"
            f"<input id=filter placeholder='filter rows (stage, verdict, run key)'>"
            f"{body}<h2>Trend over runs</h2>{trends}<script>{SCRIPT}</script></body></html>")


def _version_order(item: tuple[tuple[str, str], Any]) -> tuple[str, int, str]:
    model, version = item[0]
    return model, int(version) if version.isdigit() else -1, version


def _version_section(model: str, version: str, version_runs: list[Run], decisions: list[dict[str, Any]]) -> str:
    latest = latest_by_stage(version_runs)
    value = score(latest)
    rows = "".join(_row(run) for run in sorted(latest.values(), key=lambda r: r.stage))
    plots = "".join(f"<figure>{chart}<figcaption>{html.escape(run.stage)} — {html.escape(t)}</figcaption></figure>"
                    for run in latest.values() for t, points, label in timelines(run.evidence)
                    if (chart := svg.line_chart(t, [points], label)))
    gate = [d for d in decisions if d.get("model") == model and str(d.get("version")) == version]
    gate_rows = "".join(f"<tr><td>{_when(d.get('at'))}</td><td class={html.escape(str(d.get('decision')))}>"
                        f"{html.escape(str(d.get('decision')))}</td>"
                        f"<td>{html.escape(str(d.get('reason') or ''))}</td></tr>" for d in gate[-20:])
    label = f"{model} version {version}" if version else model
    return (f"<section><h2>{html.escape(label)} — score {'n/a' if value is None else value}</h2>"
            f"<table class=runs><tr><th>stage</th><th>verdict</th><th>reason</th><th>metrics</th><th>restored</th>"
            f"<th>run key / trace id</th><th>when</th></tr>{rows}</table>"
            f"<div class=plots>{plots}</div>"
            + (f"<h3>Gate decisions</h3><table><tr><th>when</th><th>decision</th><th>reason</th></tr>{gate_rows}"
               f"</table>" if gate_rows else "") + "</section>")


def _row(run: Run) -> str:
    metrics = ", ".join(f"{k} {v}" for k, v in run.metrics.items() if k in KEY_METRICS) or "—"
    return (f"<tr><td>{html.escape(run.stage)}</td><td class={run.verdict}>{run.verdict}</td>"
            f"<td>{html.escape(run.reason[:400])}</td><td>{html.escape(metrics)}</td>"
            f"<td>{'yes' if run.restored else 'NO'}</td><td>{html.escape(run.run_key)}<br><code>"
            f"{html.escape(run.trace_id or '')}</code></td><td>{_when(run.at)}</td></tr>")


def _trends(found: list[Run]) -> str:
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in found:
        groups.setdefault((run.model, run.stage), []).append(run)
    parts = []
    for (model, stage), group in sorted(groups.items()):
        strip = svg.verdict_strip(f"{model} {stage}", [r.verdict for r in group])
        series = {m: [(r.at, float(r.metrics[m])) for r in group if isinstance(r.metrics.get(m), int | float)]
                  for m in KEY_METRICS}
        charts = "".join(svg.line_chart(f"{stage} {m}", [points], m, relative_time=False)
                         for m, points in series.items() if len(points) > 1)
        parts.append(f"<div class=trend><h3>{html.escape(model)} — {html.escape(stage)} ({len(group)} run(s))</h3>"
                     f"{strip}{charts}</div>")
    return "".join(parts)


def _when(at: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(float(at))) if isinstance(at, int | float) else ""


def junit_xml(found: list[Run]) -> str:
    """One test suite per model version, one test case per stage (its latest run): failed runs are
    failures, inconclusive ones errors, so a CI system shows the scorecard as test results."""
    suites = ElementTree.Element("testsuites", name="mlchaos")
    by_version: dict[tuple[str, str], list[Run]] = {}
    for run in found:
        by_version.setdefault((run.model, run.version), []).append(run)
    for (model, version), version_runs in sorted(by_version.items(), key=_version_order):
        latest = latest_by_stage(version_runs)
        suite = ElementTree.SubElement(suites, "testsuite", name=f"{model}/{version}" if version else model,
                                       tests=str(len(latest)))
        failures = errors = 0
        for run in sorted(latest.values(), key=lambda r: r.stage):
            case = ElementTree.SubElement(suite, "testcase", classname=f"mlchaos.{model}", name=run.stage)
            if run.verdict == "failed" or not run.restored:
                failures += 1
                ElementTree.SubElement(case, "failure", message=run.reason[:1000] or "not restored").text = run.run_key
            elif run.verdict != "passed":
                errors += 1
                ElementTree.SubElement(case, "error", message=run.reason[:1000]).text = run.run_key
        suite.set("failures", str(failures))
        suite.set("errors", str(errors))
    return ElementTree.tostring(suites, encoding="unicode", xml_declaration=True)


CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ddd;padding:3px 6px;font-size:13px;vertical-align:top}.passed,.promoted{color:#1a7f37}
.failed,.blocked{color:#c62828}.inconclusive{color:#777}.plots,.trend{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:4px}figcaption{font-size:11px;color:#555}.meta{color:#555}code{font-size:11px}
#filter{margin:.5em 0;padding:3px;width:20em}"""
SCRIPT = """(function(){var f=document.getElementById('filter');f.addEventListener('input',function(){
var q=f.value.toLowerCase();document.querySelectorAll('table.runs tr').forEach(function(r,i){
if(r.querySelector('th'))return;r.style.display=r.textContent.toLowerCase().indexOf(q)<0?'none':'';});});
document.body.setAttribute('data-plots',String(document.querySelectorAll('svg.plot').length));})();"""
