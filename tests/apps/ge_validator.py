"""A data validator written with Great Expectations (1.x), the way teams write one for a churn batch:
an ephemeral context, a pandas data source, an expectation suite, and the validation result printed as
JSON on standard output (exit 1 when it failed).

    python ge_validator.py BATCH [--no-unique]     # --no-unique: the suite forgets uniqueness
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> int:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # nothing to send usage statistics to here
    import great_expectations as gx

    from mlchaos_steps.examples.churn_pipeline import read_batch

    batch_path = Path(sys.argv[1])
    try:
        frame = read_batch(batch_path)
    except Exception as exc:
        print(json.dumps({"success": False, "results": [], "unreadable": True, "error": str(exc)}))
        return 1
    context = gx.get_context(mode="ephemeral")
    asset = context.data_sources.add_pandas("features").add_dataframe_asset("batch")
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(batch_parameters={"dataframe": frame})
    suite = gx.ExpectationSuite(name="churn")
    for column in ("age", "income", "zip", "tenure"):
        suite.add_expectation(gx.expectations.ExpectColumnValuesToNotBeNull(column=column))
    suite.add_expectation(gx.expectations.ExpectColumnValuesToBeBetween(column="age", min_value=18, max_value=100))
    suite.add_expectation(gx.expectations.ExpectColumnValuesToBeInTypeList(column="zip", type_list=["int64"]))
    if "--no-unique" not in sys.argv:
        suite.add_expectation(gx.expectations.ExpectColumnValuesToBeUnique(column="customer_id"))
    result = batch.validate(suite, result_format="COMPLETE")
    print(json.dumps(result.to_json_dict()))
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
