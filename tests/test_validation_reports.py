"""The validators' reports data-corruption reads (pure): pandera's own failure cases, a Great Expectations
validation result, plain JSON, and what is not a report."""

from __future__ import annotations

import json

import pandas as pd
import pandera.pandas as pa

from mlchaos_steps.stages.validation_reports import parse_report


def test_pandera_failure_cases_name_rows_and_columns() -> None:
    schema = pa.DataFrameSchema({"age": pa.Column(int, pa.Check.in_range(0, 120), nullable=False),
                                 "zip": pa.Column(int)}, strict=True)
    frame = pd.DataFrame({"age": [30, 300, 40], "zip": ["a", "b", "c"], "extra": [1, 2, 3]})
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as err:
        report = err.failure_cases.to_json(orient="records")
    outcome = parse_report("some log line\n" + report, exit_code=1)
    assert outcome.refused and outcome.format == "pandera"
    assert 1 in outcome.rows  # age 300
    assert "zip" in outcome.columns  # its dtype
    assert "extra" in outcome.columns  # a column the schema does not allow


def test_great_expectations_result() -> None:
    result = {"success": False, "statistics": {"evaluated_expectations": 2}, "results": [
        {"success": False, "expectation_config": {"type": "expect_column_values_to_not_be_null",
                                                  "kwargs": {"column": "age"}},
         "result": {"element_count": 10, "unexpected_count": 2, "unexpected_index_list": [3, 7]}},
        {"success": False, "expectation_config": {"type": "expect_column_values_to_be_of_type",
                                                  "kwargs": {"column": "zip", "type_": "int64"}},
         "result": {"observed_value": "object"}},
        {"success": True, "expectation_config": {"type": "expect_column_to_exist", "kwargs": {"column": "id"}},
         "result": {}},
    ]}
    outcome = parse_report(json.dumps(result), exit_code=0)
    assert outcome.refused and outcome.format == "great_expectations"
    assert outcome.rows == {3, 7} and outcome.columns == {"zip"}


def test_plain_json_and_its_unreadable_flag() -> None:
    outcome = parse_report(json.dumps({"valid": False, "failures": [{"column": "age", "check": "not_null",
                                                                      "rows": [1, 2]}]}), exit_code=1)
    assert outcome.rows == {1, 2} and outcome.columns == set()
    cut = parse_report(json.dumps({"valid": False, "unreadable": True}), exit_code=1)
    assert cut.refused and cut.unreadable


def test_an_exit_code_alone_refuses_but_names_nothing() -> None:
    outcome = parse_report("Traceback (most recent call last): ...", exit_code=1)
    assert outcome.refused and outcome.format == "none" and not outcome.rows and not outcome.columns
    accepted = parse_report("[]", exit_code=0)
    assert not accepted.refused


def test_failures_listed_with_exit_0_and_no_word_of_invalid_are_warnings() -> None:
    warned = parse_report(json.dumps([{"column": "age", "check": "not_nullable", "index": 3}]), exit_code=0)
    assert not warned.refused and warned.rows == {3}
    plain = parse_report(json.dumps({"failures": [{"column": "age", "rows": [3]}]}), exit_code=0)
    assert not plain.refused
