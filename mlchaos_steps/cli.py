"""The ``mlchaos`` command: what pipeline steps run and what people type.

Exit codes: 0 passed, 1 verdict failed, 2 bad input (nothing was touched), 3 inconclusive or an
infrastructure error.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlchaos_steps import __version__
from mlchaos_steps.errors import MlchaosError, SpecError
from mlchaos_steps.redaction import RedactingFilter, redact, redact_text

log = logging.getLogger("mlchaos")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 already; keep our message style
        self.print_usage(sys.stderr)
        self.exit(2, f"mlchaos: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mlchaos", description="Chaos stages for ML pipelines, with verdicts you can gate on.")
    parser.add_argument("--version", action="version", version=f"mlchaos-steps {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what each phase does")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a stage file (all phases, or one)")
    run.add_argument("stage_file")
    run.add_argument("--phase", default="all", choices=["snapshot", "inject", "verify", "restore", "all"])
    run.add_argument("--run-key", help="identifies this execution; a retry with the same key never injects twice")
    run.add_argument("--dry-run", action="store_true", help="resolve targets and report; change nothing")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.add_argument("--model", help="registered MLflow model whose version gets the verdict tags (empty: none)")
    run.add_argument("--version", dest="model_version", help="that model's version number or @alias (empty: unset)")
    run.add_argument("--result-file", help="also write the JSON result here (an Argo output parameter reads it)")

    restore = sub.add_parser("restore", help="put back what a run broke, from the ledger")
    which = restore.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-key")
    which.add_argument("--orphaned", action="store_true", help="every run a crash left unrestored")
    restore.add_argument("--older-than", type=float, default=3600.0, metavar="SECONDS",
                         help="with --orphaned: also runs nobody owns that have not moved for this long")
    restore.add_argument("--json", action="store_true")
    restore.add_argument("--result-file", help="also write the JSON result here")

    gate = sub.add_parser("gate", help="move the alias only when every required stage passed on this version")
    gate.add_argument("--model", required=True)
    gate.add_argument("--version", required=True, help="a version number or @alias")
    gate.add_argument("--require", required=True, help="comma-separated stage ids, e.g. checkpoint-wipe,pod-delete")
    gate.add_argument("--alias", default="champion")
    gate.add_argument("--no-artifact-check", action="store_true",
                      help="skip checking that the version's artifacts are whole")
    gate.add_argument("--json", action="store_true")
    gate.add_argument("--result-file", help="also write the JSON result here")

    ledger = sub.add_parser("ledger", help="list executions and their actions")
    ledger.add_argument("--open", action="store_true", help="only runs not yet restored")
    ledger.add_argument("--json", action="store_true")

    sub.add_parser("schema", help="print the JSON schema of stage files")

    report = sub.add_parser("report", help="the resilience scorecard: one static HTML page (and JUnit XML)")
    report.add_argument("-o", "--output", default="mlchaos-report.html", help="the HTML file to write")
    report.add_argument("--model", help="only this registered model's versions")
    report.add_argument("--since", help="only runs newer than this: 30d, 12h, 90m, 600s")
    report.add_argument("--junit", metavar="FILE", help="also write JUnit XML (one test case per stage and version)")

    demo = sub.add_parser("demo", help="run the stages against example workloads on this machine")
    demo.add_argument("--broken", action="store_true", help="use the deliberately broken workloads")
    demo.add_argument("--workdir", help="where the demo keeps its files (default: a temporary folder)")
    demo.add_argument("--dags", help="the folder of example DAG files (default: dags/ of this clone)")
    _argo_parser(sub.add_parser("argo", help="Argo Workflows: validate offline, insert a stage, print the templates"))
    return parser


def _argo_parser(argo: argparse.ArgumentParser) -> None:
    sub = argo.add_subparsers(dest="argo_command", required=True, parser_class=_Parser)
    validate = sub.add_parser("validate", help="the offline `argo lint`: schema, names, dependencies, references")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument("--templates", nargs="+", default=[], metavar="LIB",
                          help="WorkflowTemplate files that templateRef may point at")
    validate.add_argument("--json", action="store_true")
    inject = sub.add_parser("inject", help="insert a chaos stage into a workflow YAML file")
    inject.add_argument("file", metavar="FILE")
    inject.add_argument("--after", required=True, help="the task or step the stage runs after")
    inject.add_argument("--before", help="the one task that waits for the stage (default: all that waited for --after)")
    inject.add_argument("--template", help="the template holding --after, when several have it")
    inject.add_argument("--stage", required=True, help="the stage file (YAML)")
    inject.add_argument("--name", help="the new task's name (default: chaos-<stage id>)")
    inject.add_argument("--model", default="", help="registered model whose version gets the verdict")
    inject.add_argument("--version", dest="model_version", default="", help="its version number or @alias")
    inject.add_argument("-o", "--output", help="write here (default: standard output); FILE itself is allowed")
    templates = sub.add_parser("templates", help="print the mlchaos-steps WorkflowTemplate and janitor CronWorkflow")
    templates.add_argument("--image", help="the step image (default: the release's)")


def _print(data: Any, result_file: str | None = None) -> None:
    text = json.dumps(redact(data), indent=2, default=str)
    print(text)
    _write_result(text, result_file)


def _write_result(text: str, result_file: str | None) -> None:
    if result_file:
        from pathlib import Path

        Path(result_file).parent.mkdir(parents=True, exist_ok=True)
        Path(result_file).write_text(text + "\n")


def _unset_if_empty(value: str | None) -> str | None:
    """Argo passes every parameter: an empty --model or --version means not given."""
    return value if value and value.strip() else None


def _scorecard(run_key: str) -> dict[str, str]:
    """Where the run's scorecard is attached (after restore) when it has an MLflow evidence run: an Argo
    step's ``result`` output, the CLI's JSON."""
    from mlchaos_steps.gate.reporting import scorecard_uri
    from mlchaos_steps.ledgers import default_ledger

    uri = scorecard_uri(default_ledger().get(run_key))
    return {"scorecard": uri} if uri else {}


def _cmd_run(args: argparse.Namespace) -> int:
    from mlchaos_steps.api import new_run_key, run_phase, run_stage
    from mlchaos_steps.stages import load_stages

    stages = load_stages(args.stage_file)
    args.model, args.model_version = _unset_if_empty(args.model), _unset_if_empty(args.model_version)
    if args.phase != "all" and not args.run_key:
        raise SpecError("--run-key", "is required with --phase: the phases of one run share it")
    base_key = args.run_key or new_run_key()
    keys = [base_key] if len(stages) == 1 else [f"{base_key}.{i}.{s.stage_id}" for i, s in enumerate(stages)]
    results, code = [], 0
    for stage, key in zip(stages, keys, strict=True):
        if args.phase == "all":
            outcome = run_stage(stage, key, dry_run=args.dry_run, model=args.model, version=args.model_version)
            results.append({
                "run_key": key, "stage": stage.stage_id, "trace_id": outcome.trace_id,
                "verdict": outcome.verdict.status,
                "reason": outcome.verdict.reason, "metrics": outcome.verdict.metrics,
                "restored": outcome.restored, "restore_error": outcome.restore_error,
                "journal": str(outcome.journal) if outcome.journal else None,
                **({"plan": outcome.verdict.evidence} if args.dry_run else _scorecard(key)),
            })
            code = max(code, 0 if args.dry_run else outcome.exit_code)
        else:
            result = run_phase(stage, args.phase, key, dry_run=args.dry_run, model=args.model,
                               version=args.model_version)
            entry: dict[str, Any] = {"run_key": key, "stage": stage.stage_id, "phase": args.phase,
                                     "trace_id": result.trace_id, "status": result.status, "output": result.output}
            if result.verdict:
                entry.update(verdict=result.verdict.status, reason=result.verdict.reason, **_scorecard(key))
                code = max(code, result.verdict.exit_code)
            results.append(entry)
    result = results if len(results) > 1 else results[0]
    if args.json:
        _print(result, args.result_file)
    else:
        _table(results)
        _write_result(json.dumps(redact(result), indent=2, default=str), args.result_file)
    return code


def _table(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="mlchaos")
    for column in ("stage", "run key", "result", "detail"):
        table.add_column(column, overflow="fold")
    for r in results:
        if "verdict" in r and "phase" not in r:
            result = r["verdict"] if "plan" not in r else "dry-run"
            detail = r["reason"] if "plan" not in r else json.dumps(r["plan"], default=str)
            if not r.get("restored", True):
                detail += f" | RESTORE FAILED: {r['restore_error']}"
        else:
            result = r.get("verdict") or f"{r['phase']}: {r['status']}"
            detail = r.get("reason") or json.dumps(r["output"], default=str)
        style = {"passed": "green", "failed": "red", "inconclusive": "yellow"}.get(result, "")
        table.add_row(r["stage"], r["run_key"], f"[{style}]{result}[/]" if style else result, redact_text(detail))
    Console(soft_wrap=False).print(table)


def _cmd_restore(args: argparse.Namespace) -> int:
    from mlchaos_steps.api import open_runs, restore_orphaned, restore_run, wait_for_removals

    if args.orphaned:
        results = restore_orphaned(older_than_s=args.older_than)
        wait_for_removals()
        left_open = [r for r in open_runs(older_than_s=args.older_than) if not r["orphaned"]]
        _print({"restored": results, "left_open": left_open}, args.result_file)
        if left_open and not args.json:
            print(f"mlchaos: {len(left_open)} open run(s) left alone (not orphaned): "
                  + "; ".join(f"{r['run_key']} ({r['stage']}, {r['status']}, {r['age_s']:.0f}s old): {r['why']}"
                              for r in left_open), file=sys.stderr)
        return 3 if any("error" in r for r in results) else 0
    _print(restore_run(args.run_key), args.result_file)
    wait_for_removals()  # the damaged copies restore set aside (the ledger names them until they are gone)
    return 0


def _cmd_gate(args: argparse.Namespace) -> int:
    from mlchaos_steps.gate import promote

    require = [r.strip() for r in args.require.split(",") if r.strip()]
    decision = promote(args.model, args.version, require, alias=args.alias,
                       check_artifacts=not args.no_artifact_check)
    result = {"model": decision.model, "version": decision.version, "alias": decision.alias,
              "decision": "promoted" if decision.promoted else "blocked", "reason": decision.reason,
              "verdicts": decision.verdicts, "previous_version": decision.previous_version}
    if args.json:
        _print(result, args.result_file)
    else:
        _write_result(json.dumps(redact(result), indent=2, default=str), args.result_file)
        colour = "green" if decision.promoted else "red"
        from rich.console import Console

        Console().print(f"[{colour}]{result['decision']}[/] {decision.model} v{decision.version}: "
                        f"{redact_text(decision.reason)}")
    return decision.exit_code


def _cmd_ledger(args: argparse.Namespace) -> int:
    from mlchaos_steps.ledgers import default_ledger

    ledger = default_ledger()
    executions = ledger.open_executions() if args.open else ledger.executions()
    rows = [{
        "run_key": e.run_key, "stage": e.stage_id, "status": e.status, "verdict": e.verdict,
        "actions": {a.state: sum(1 for b in ledger.actions(e.run_key) if b.state == a.state)
                    for a in ledger.actions(e.run_key)},
    } for e in executions]
    if args.json:
        _print(rows)
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ledger {ledger.location}")
    for column in ("run key", "stage", "status", "verdict", "actions"):
        table.add_column(column, overflow="fold")
    for r in rows:
        actions = ", ".join(f"{k}: {v}" for k, v in r["actions"].items()) or "-"
        table.add_row(r["run_key"], r["stage"], r["status"], r["verdict"] or "-", actions)
    Console().print(table)
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from mlchaos_steps.stages import stage_schema

    print(json.dumps(stage_schema(), indent=2))  # a schema names secret fields; it holds no secret to redact
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from mlchaos_steps.config import home
    from mlchaos_steps.ledgers import default_ledger
    from mlchaos_steps.telemetry import scorecard

    since_s = scorecard.parse_since(args.since)
    found = scorecard.write_report(default_ledger(), Path(args.output), home(), args.model, since_s)
    if args.junit:
        Path(args.junit).write_text(scorecard.junit_xml(found))
    print(f"mlchaos: {len(found)} run(s) -> {args.output}" + (f" and {args.junit}" if args.junit else ""))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from mlchaos_steps.demo import run_demo

    return run_demo(broken=args.broken, workdir=args.workdir, dags=args.dags)


def _cmd_argo(args: argparse.Namespace) -> int:
    return {"validate": _argo_validate, "inject": _argo_inject, "templates": _argo_templates}[args.argo_command](args)


def _argo_validate(args: argparse.Namespace) -> int:
    from mlchaos_steps.argo import validate_files

    for path in [*args.files, *args.templates]:
        _readable(path, "FILE" if path in args.files else "--templates")
    problems = validate_files(args.files, args.templates)
    if args.json:
        _print([p.__dict__ for p in problems])
    for problem in problems if not args.json else []:
        print(problem, file=sys.stderr)
    if not args.json and not problems:
        print(f"mlchaos: {len(args.files)} file(s) valid")
    return 2 if problems else 0


def _readable(path: str, field: str) -> None:
    from pathlib import Path

    if not Path(path).is_file():
        raise SpecError(field, f"{path} is not a file: give the path of a workflow YAML file")


def _argo_inject(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlchaos_steps.argo.insert import inject_yaml

    _readable(args.file, "FILE")
    try:
        text = inject_yaml(Path(args.file).read_text(), after=args.after, before=args.before,
                           template=args.template, stage=args.stage, name=args.name, model=args.model,
                           version=args.model_version)
    except SpecError as exc:  # say which file; nothing was written
        raise SpecError(f"{args.file}: {exc.field}", str(exc).removeprefix(f"{exc.field}: ")) from exc
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _argo_templates(args: argparse.Namespace) -> int:
    from mlchaos_steps.argo.library import library_yaml

    sys.stdout.write(library_yaml(args.image))
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM (a pipeline cancelling the task, a pod evicted), turned into the same exit as Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut restore short
    raise Terminated("SIGTERM")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:  # every log line, ours and the libraries', is redacted
        handler.addFilter(RedactingFilter())
    handler = {"run": _cmd_run, "restore": _cmd_restore, "gate": _cmd_gate, "ledger": _cmd_ledger,
               "schema": _cmd_schema, "demo": _cmd_demo, "argo": _cmd_argo, "report": _cmd_report}[args.command]
    try:
        return handler(args)
    except MlchaosError as exc:
        print(redact_text(f"mlchaos: error: {exc}"), file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # an unexpected failure is an infrastructure error, never a pass
        log.debug("unexpected error", exc_info=True)
        print(redact_text(f"mlchaos: unexpected error: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return 3
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        hint = ("restore ran" if args.command == "run" and args.phase == "all" else
                "run `mlchaos restore --orphaned` if anything was left broken")
        print(f"mlchaos: {what}: {hint}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
