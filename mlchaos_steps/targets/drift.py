"""Shifting the distribution of columns of a data batch (seeded, a row group at a time), and measuring the
shift with two-sample tests.

Example::

    write_drifted(fs, clean, staging, [{"kind": "mean_shift", "column": "income", "k": 1.5}], shape, seed=7)
    measure(fs, clean, drifted, ["income"], seed=7)   # {"income": {"test": "ks", "p_value": 1e-90, ...}}
"""

from __future__ import annotations

from typing import Any

from mlchaos_steps.targets import tables

MEASURED_ROWS = 200_000  # rows sampled for the two-sample tests: enough for any shift worth detecting


def _typed(value: Any, column: Any) -> Any:
    import pyarrow as pa

    return pa.scalar(value).cast(column.type)


def _numeric(column: Any, values: Any) -> Any:
    """``values`` (float64) back in the column's own type: integers rounded."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_integer(column.type):
        return pc.cast(pc.round(values), column.type, safe=False)
    return pc.cast(values, column.type)


def _shift_column(group: Any, shift: dict[str, Any], shape: tables.BatchShape, rng: Any) -> Any:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    column = group.column(shift["column"]).combine_chunks()
    kind = shift["kind"]
    if kind in ("mean_shift", "scale", "segment_shift"):
        mean, std = shape.mean_std(shift["column"])
        values = pc.cast(column, pa.float64())
        if kind == "scale":
            moved = pc.add(pc.multiply(pc.subtract(values, mean), shift["factor"]), mean)
        else:
            moved = pc.add(values, shift["k"] * (std or 1.0))
        if kind == "segment_shift":
            where = shift["where"]
            segment = group.column(where["column"]).combine_chunks()
            mask = pc.fill_null(pc.equal(segment, _typed(where["equals"], segment)), False)
            moved = pc.if_else(mask, moved, values)
        return _numeric(column, moved)
    if kind == "swap_categories":
        a, b = _typed(shift["a"], column), _typed(shift["b"], column)
        return pc.if_else(pc.fill_null(pc.equal(column, a), False), b,
                          pc.if_else(pc.fill_null(pc.equal(column, b), False), a, column))
    # new_category
    mask = rng.random(len(column)) < shift["fraction"]
    return pc.if_else(pa.array(mask), _typed(shift["value"], column), column) if np.any(mask) else column


def write_drifted(fs: Any, source: str, dest: str, shifts: list[dict[str, Any]], shape: tables.BatchShape,
                  seed: int, check: Any = None) -> None:
    """Write the drifted copy of the batch at ``source`` to ``dest``, a row group at a time."""
    import numpy as np

    def transform(group: Any, offset: int, written: int) -> tuple[Any, None]:
        for index, shift in enumerate(shifts):
            rng = np.random.default_rng([seed, index, offset])
            name = shift["column"]
            group = group.set_column(group.column_names.index(name), name, _shift_column(group, shift, shape, rng))
        return group, None

    tables.write_transformed(fs, source, dest, transform, check)


def measure(fs: Any, clean: str, drifted: str, columns: list[str], seed: int) -> dict[str, dict[str, Any]]:
    """Each column's shift between the clean and the drifted batch: Kolmogorov-Smirnov for numbers,
    chi-square over category counts, on the same sampled rows of both."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    from scipy import stats

    before, after = tables.read_table(fs, clean, columns), tables.read_table(fs, drifted, columns)
    if before.num_rows > MEASURED_ROWS:
        rows = pa.array(np.sort(np.random.default_rng(seed).choice(before.num_rows, MEASURED_ROWS, replace=False)))
        before, after = before.take(rows), after.take(rows)
    out = {}
    for name in columns:
        x, y = before.column(name).to_pandas(), after.column(name).to_pandas()
        if pd.api.types.is_numeric_dtype(x) and not pd.api.types.is_bool_dtype(x):
            result = stats.ks_2samp(x.dropna().to_numpy(), y.dropna().to_numpy())
            out[name] = {"test": "ks", "statistic": float(result.statistic), "p_value": float(result.pvalue),
                         "rows": int(len(x))}
        else:
            counts = pd.concat([x.value_counts(), y.value_counts()], axis=1).fillna(0).to_numpy().T
            statistic, p_value = stats.chi2_contingency(counts)[:2] if counts.shape[1] > 1 else (0.0, 1.0)
            out[name] = {"test": "chi2", "statistic": float(statistic), "p_value": float(p_value), "rows": int(len(x))}
    return out
