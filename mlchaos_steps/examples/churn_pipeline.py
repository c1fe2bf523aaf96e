"""A churn-prediction data pipeline written the way teams write them, with nothing of mlchaos inside:
daily feature batches (``date=YYYYMMDD/`` partitions of Parquet, CSV or JSON lines files), a pandera
validator, and a step that builds the training set from a batch.

    python churn_pipeline.py make-batches STORE --days 2 --rows 1000 [--format parquet]
    python churn_pipeline.py validate BATCH [--mode healthy]        # pandera failure cases on stdout
    python churn_pipeline.py prepare BATCH --out TRAINING [--mode healthy]
    python churn_pipeline.py monitor BATCH [--mode healthy]         # {"drifted": [...]} on stdout

Validator modes: ``healthy`` (types, ranges, nulls, unique ids, the label rule, the exact columns in
order), ``pass-all``, ``fail-all``, ``schema-only`` (types and columns, no values), ``nulls-only`` (no
duplicate or label checks), ``blame-all`` (refuses a bad batch naming every row), ``warn-only`` (prints
every failure case, exits 0). Prepare modes:
``healthy`` (skips a batch the validator refused, as told in ``MLCHAOS_VALIDATION_EXIT``),
``ignore-validation``, ``yesterday`` (silently reads the previous batch),
``scale`` (healthy, but rescales income in place) and ``scale-ignore-validation``.
``--broken=true`` (as a pipeline parameter renders it) is ``pass-all`` for the validator and ``never`` for
the monitor. Monitor modes: ``healthy`` (each feature against yesterday's batch: Kolmogorov-Smirnov for numbers,
chi-square for categories), ``never``, ``always``, ``wrong-feature`` (alarms on the feature next to the
drifted one), ``late`` (compares yesterday's batch with the day before's: today's drift shows a day late).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["customer_id", "age", "income", "zip", "tenure", "plan", "churned"]
FEATURES = ["age", "income", "zip", "tenure", "plan"]
PLANS = ["basic", "plus", "premium"]
DATE = re.compile(r"date=(\d{8})")


def _frame(day: int, rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(day)
    tenure = rng.integers(0, 60, rows)
    income = rng.normal(55_000, 15_000, rows).clip(5_000, None).round(2)
    return pd.DataFrame({
        "customer_id": np.arange(day * 100_000, day * 100_000 + rows),
        "age": rng.integers(18, 90, rows),
        "income": income,
        "zip": rng.integers(10_000, 99_999, rows),
        "tenure": tenure,
        "plan": rng.choice(PLANS, rows, p=[0.6, 0.3, 0.1]),
        "churned": (tenure < 12) & (income < 50_000),  # the business rule the label follows
    })


def _write(frame: pd.DataFrame, folder: Path, fmt: str, files: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(frame) // files)
    for index in range(files):
        part = frame.iloc[index * size:(index + 1) * size]
        path = folder / f"part-{index}.{fmt}"
        if fmt == "parquet":
            part.to_parquet(path, index=False, row_group_size=250)
        elif fmt == "csv":
            part.to_csv(path, index=False)
        else:
            part.to_json(path, orient="records", lines=True)
    (folder / "_SUCCESS").write_text("")


def make_batches(store: Path, days: int, rows: int, fmt: str) -> None:
    for offset in range(days):
        day = 20261201 + offset
        _write(_frame(day, rows), store / f"date={day}", fmt, files=2)


def read_batch(batch: Path) -> pd.DataFrame:
    files = sorted(p for p in (batch.iterdir() if batch.is_dir() else [batch])
                   if p.suffix in (".parquet", ".csv", ".jsonl") and not p.name.startswith(("_", ".")))
    frames = []
    for path in files:
        if path.suffix == ".parquet":
            frames.append(pd.read_parquet(path))
        elif path.suffix == ".csv":
            frames.append(pd.read_csv(path))
        else:
            frames.append(pd.read_json(path, lines=True))
    return pd.concat(frames, ignore_index=True)


def _schema(mode: str):  # noqa: ANN202
    import pandera.pandas as pa

    if mode == "schema-only":
        return pa.DataFrameSchema({c: pa.Column(t) for c, t in _TYPES.items()}, strict=True, ordered=True)
    checks = {
        "customer_id": [],
        "age": [pa.Check.in_range(18, 100)],
        "income": [pa.Check.ge(0), pa.Check.le(1_000_000)],
        "zip": [pa.Check.in_range(10_000, 99_999)],
        "tenure": [pa.Check.ge(0)],
        "plan": [pa.Check.isin(PLANS)],
        "churned": [],
    }
    columns = {c: pa.Column(t, checks[c], nullable=False, unique=(c == "customer_id" and mode == "healthy"))
               for c, t in _TYPES.items()}
    rule = [pa.Check(lambda df: df["churned"] == ((df["tenure"] < 12) & (df["income"] < 50_000)),
                     name="churned_follows_the_rule")] if mode == "healthy" else []
    return pa.DataFrameSchema(columns, checks=rule, strict=True, ordered=True)


_TYPES = {"customer_id": "int64", "age": "int64", "income": "float64", "zip": "int64", "tenure": "int64",
          "plan": "str", "churned": "bool"}


def validate(batch: Path, mode: str) -> int:
    import pandera.pandas as pa

    if mode == "pass-all":
        print("[]")
        return 0
    try:
        frame = read_batch(batch)
    except Exception as exc:  # a file cut short, a batch that is not a table
        print(json.dumps({"valid": False, "unreadable": True, "failures": [{"check": "readable", "error": str(exc)}]}))
        return 1
    if mode == "fail-all":
        print(json.dumps({"valid": False, "failures": [{"check": "always"}]}))
        return 1
    try:
        _schema("healthy" if mode in ("blame-all", "warn-only") else mode).validate(frame, lazy=True)
    except pa.errors.SchemaErrors as err:
        if mode == "blame-all":  # refuses, and names every row rather than the failing ones
            print(json.dumps({"valid": False, "failures": [{"check": "batch", "rows": list(range(len(frame)))}]}))
        else:
            print(err.failure_cases.to_json(orient="records"))
        return 0 if mode == "warn-only" else 1  # warn-only: logs every failure, lets the batch through
    print("[]")
    return 0


def prepare(batch: Path, out: Path, mode: str) -> int:
    if mode in ("healthy", "scale") and os.environ.get("MLCHAOS_VALIDATION_EXIT", "0") != "0":
        print("validation refused the batch: training set not built", file=sys.stderr)
        return 0
    source = batch
    if mode == "yesterday":
        day = int(DATE.fullmatch(batch.name).group(1))  # type: ignore[union-attr]
        source = batch.parent / f"date={day - 1}"
    frame = read_batch(source)
    frame["income_per_tenure_month"] = frame["income"] / (frame["tenure"] + 1)  # a derived feature, a new column
    if mode.startswith("scale"):  # feature scaling in place: the batch's own values are gone from the rows
        frame["income"] = frame["income"] / 1000.0
    target = out / batch.name
    target.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(target / "train.parquet", index=False)
    return 0


def _drifted(current: pd.DataFrame, reference: pd.DataFrame, features: list[str], alpha: float) -> dict[str, float]:
    """Each feature's p-value: Kolmogorov-Smirnov for numbers, chi-square over category counts."""
    from scipy import stats

    p_values = {}
    for name in features:
        if pd.api.types.is_numeric_dtype(reference[name]):
            p_values[name] = float(stats.ks_2samp(current[name].dropna(), reference[name].dropna()).pvalue)
        else:
            counts = pd.concat([current[name].value_counts(), reference[name].value_counts()], axis=1).fillna(0)
            p_values[name] = float(stats.chi2_contingency(counts.to_numpy().T)[1])
    return p_values


def monitor(batch: Path, mode: str, alpha: float) -> int:
    """The drift monitor: today's batch against yesterday's; prints {"drifted": [...], "p_values": {...}}."""
    day = int(DATE.fullmatch(batch.name).group(1))  # type: ignore[union-attr]
    current, reference = batch, batch.parent / f"date={day - 1}"
    if mode == "late":  # looks at the batch before: today's drift shows up a day late
        current, reference = reference, batch.parent / f"date={day - 2}"
    if not reference.exists():
        print(json.dumps({"drifted": [], "note": "no reference batch"}))
        return 0
    p_values = _drifted(read_batch(current), read_batch(reference), FEATURES, alpha)
    drifted = [f for f, p in p_values.items() if p < alpha]
    if mode == "never":
        drifted = []
    elif mode == "always":
        drifted = list(FEATURES)
    elif mode == "wrong-feature" and drifted:  # raises the alarm, but on the feature next to the drifted one
        drifted = [FEATURES[(FEATURES.index(f) + 1) % len(FEATURES)] for f in drifted]
    print(json.dumps({"drifted": drifted, "p_values": p_values}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-batches")
    make.add_argument("store", type=Path)
    make.add_argument("--days", type=int, default=2)
    make.add_argument("--rows", type=int, default=1000)
    make.add_argument("--format", default="parquet", choices=["parquet", "csv", "jsonl"])
    check = sub.add_parser("validate")
    check.add_argument("batch", type=Path)
    check.add_argument("--mode", default="healthy")
    check.add_argument("--broken", default="false", help="true: the validator that passes everything")
    build = sub.add_parser("prepare")
    build.add_argument("batch", type=Path)
    build.add_argument("--out", type=Path, required=True)
    build.add_argument("--mode", default="healthy")
    watch = sub.add_parser("monitor")
    watch.add_argument("batch", type=Path)
    watch.add_argument("--mode", default="healthy")
    watch.add_argument("--alpha", type=float, default=0.001)
    watch.add_argument("--broken", default="false", help="true: the monitor that never fires")
    args = parser.parse_args()
    if args.command == "make-batches":
        make_batches(args.store, args.days, args.rows, args.format)
        return 0
    broken = str(getattr(args, "broken", "false")).strip().lower() in {"1", "true", "yes"}
    if args.command == "validate":
        return validate(args.batch, "pass-all" if broken else args.mode)
    if args.command == "monitor":
        return monitor(args.batch, "never" if broken else args.mode, args.alpha)
    return prepare(args.batch, args.out, args.mode)


if __name__ == "__main__":
    sys.exit(main())
