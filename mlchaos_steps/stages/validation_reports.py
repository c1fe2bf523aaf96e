"""What a data validator said about a batch, from the report it printed: pandera, Great Expectations, or
plain JSON. The data-corruption stage judges the validator by it: refusing the batch is not enough, the
report must account for the rows (or, for schema faults, the columns) that were corrupted.

Report formats (the validator prints one JSON document on standard output; the last one counts):

- plain JSON: ``{"valid": false, "failures": [{"column": "age", "check": "not_null", "rows": [3, 17]}]}``
  (``rows`` are 0-based positions in the batch, its files read in name order; ``"unreadable": true``
  when the batch could not be read at all);
- pandera: the failure cases of ``SchemaErrors`` (``err.failure_cases.to_json(orient="records")``, or
  ``{"failure_cases": [...]}``): records with ``column``, ``check``, ``failure_case`` and ``index``;
- Great Expectations: a validation result (``result.to_json_dict()``): ``success`` and ``results``, each
  with ``expectation_config`` (``type`` and ``kwargs.column``) and ``result.unexpected_index_list``.

Example::

    outcome = parse_report(stdout, exit_code=1)
    outcome.refused, sorted(outcome.rows)[:3], outcome.columns
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

ReportFormat = Literal["auto", "json", "pandera", "great_expectations"]


@dataclass
class ValidationOutcome:
    """The validator's verdict on a batch and what its report names."""

    refused: bool
    format: str = "none"
    rows: set[int] = field(default_factory=set)
    columns: set[str] = field(default_factory=set)  # columns with a failure of their own (dtype, missing...)
    checks: list[str] = field(default_factory=list)
    unreadable: bool = False

    def summary(self) -> dict[str, Any]:
        return {"refused": self.refused, "format": self.format, "rows_named": len(self.rows),
                "columns_named": sorted(self.columns), "checks": self.checks[:20], "unreadable": self.unreadable}


def last_json(stdout: str) -> Any:
    """The whole output as JSON, or else its last line that parses as a JSON object or list."""
    text = stdout.strip()
    try:
        return json.loads(text) if text else None
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith(("{", "[")):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def _rows(value: Any) -> set[int]:
    items = value if isinstance(value, list) else [value]
    out = set()
    for item in items:
        if isinstance(item, dict):
            item = item.get("index", item.get("row"))
        if isinstance(item, bool):
            continue
        if isinstance(item, int) or (isinstance(item, float) and item.is_integer()):
            out.add(int(item))
    return out


def _plain(report: dict[str, Any], outcome: ValidationOutcome) -> None:
    outcome.refused = outcome.refused or report.get("valid") is False or report.get("success") is False
    outcome.unreadable = bool(report.get("unreadable"))
    for failure in report.get("failures") or []:
        if not isinstance(failure, dict):
            continue
        rows = _rows(failure.get("rows", failure.get("row", failure.get("index", []))))
        outcome.rows |= rows
        outcome.checks.append(str(failure.get("check", "")))
        if failure.get("column") is not None and not rows:
            outcome.columns.add(str(failure["column"]))


def _pandera(cases: list[Any], outcome: ValidationOutcome) -> None:
    for case in cases:
        if not isinstance(case, dict):
            continue
        check = str(case.get("check", ""))
        outcome.checks.append(check)
        rows = _rows(case.get("index"))
        outcome.rows |= rows
        if not rows:  # a failure of the column itself: its dtype, or a column missing from the frame
            named = case.get("column") if case.get("column") is not None else case.get("failure_case")
            if named is not None:
                outcome.columns.add(str(named))
        elif check.startswith("dtype(") and case.get("column") is not None:
            outcome.columns.add(str(case["column"]))


def _great_expectations(report: dict[str, Any], outcome: ValidationOutcome) -> None:
    outcome.refused = outcome.refused or report.get("success") is False
    for result in report.get("results") or []:
        if not isinstance(result, dict) or result.get("success") is not False:
            continue
        config = result.get("expectation_config") or {}
        check = str(config.get("type") or config.get("expectation_type") or "")
        outcome.checks.append(check)
        details = result.get("result") or {}
        rows = _rows(details.get("unexpected_index_list") or [])
        outcome.rows |= rows
        column = (config.get("kwargs") or {}).get("column")
        if column is not None and (not rows or "type" in check):
            outcome.columns.add(str(column))
        if check in ("expect_table_columns_to_match_set", "expect_table_columns_to_match_ordered_list",
                     "expect_column_to_exist"):
            observed = set(map(str, details.get("observed_value") or []))
            expected = set(map(str, (config.get("kwargs") or {}).get("column_set")
                               or (config.get("kwargs") or {}).get("column_list") or []))
            outcome.columns |= expected ^ observed if observed or expected else set()


def detect(report: Any) -> str:
    if isinstance(report, list) or (isinstance(report, dict) and "failure_cases" in report):
        return "pandera"
    if isinstance(report, dict) and isinstance(report.get("results"), list) and "success" in report:
        return "great_expectations"
    return "json"


def parse_report(stdout: str, exit_code: int, report_format: ReportFormat = "auto") -> ValidationOutcome:
    """The validator's outcome: refused when it exited non-zero or its report says so in as many words
    (``"valid": false``, ``"success": false``). Failures listed by a validator that exits 0 and does not
    say the batch is invalid are warnings: the batch went on, so it was not refused."""
    outcome = ValidationOutcome(refused=exit_code != 0)
    report = last_json(stdout)
    if report is None:
        return outcome
    fmt = detect(report) if report_format == "auto" else report_format
    outcome.format = fmt
    if fmt == "pandera":
        cases = report.get("failure_cases") if isinstance(report, dict) else report
        _pandera(cases if isinstance(cases, list) else [], outcome)
    elif fmt == "great_expectations" and isinstance(report, dict):
        _great_expectations(report, outcome)
    elif isinstance(report, dict):
        _plain(report, outcome)
    return outcome
