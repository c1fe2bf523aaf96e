"""Data batches through fsspec and pyarrow: reading them, writing a corrupted copy row group by row group,
and finding rows again (fingerprints) in what a pipeline produced.

A batch is a file (Parquet, CSV, JSON lines) or a partition folder of such files. Corruption is planned
once, from the batch's row counts and a seed, so it is reproducible: restore can write it again to
recognise the stage's own damaged copy after a crash.

Example::

    plan = plan_faults(faults, describe_batch(fs, path), seed=7)
    rows = write_corrupted(fs, path, staging, plan)   # the corrupted rows, as a pyarrow Table
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl"}
ROW_COLUMN = "__mlchaos_row"  # the corrupted rows' position in the damaged batch (evidence only)
FAULT_COLUMN = "__mlchaos_faults"
NOT_A_NUMBER = "unknown"  # what type_change writes into a numeric column (no reader takes it for a null)


class NotATable(ValueError):
    """The batch cannot be read as a table (what ``spec.batch`` must say)."""


def table_format(path: str) -> str:
    suffix = posixpath.splitext(path)[1].lower()
    if suffix not in FORMATS:
        raise NotATable(f"{posixpath.basename(path)} is not Parquet, CSV or JSON lines (by its extension)")
    return FORMATS[suffix]


def batch_files(fs: Any, path: str) -> list[str]:
    """The data files of a batch: itself, or the table files of a partition folder (sorted)."""
    if not fs.isdir(path):
        table_format(path)
        return [path]
    found = sorted(f for f in fs.find(path) if posixpath.splitext(f)[1].lower() in FORMATS
                   and not posixpath.basename(f).startswith((".", "_")))
    if not found:
        raise NotATable(f"{path} holds no Parquet, CSV or JSON lines file")
    return found


def _read_whole(fs: Any, path: str, columns: list[str] | None = None) -> Any:
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    fmt = table_format(path)
    with fs.open(path, "rb") as handle:
        if fmt == "parquet":
            return pq.read_table(handle, columns=columns)
        table = pacsv.read_csv(handle) if fmt == "csv" else pajson.read_json(handle)
        return table.select(columns) if columns is not None else table


def read_table(fs: Any, path: str, columns: list[str] | None = None) -> Any:
    """A whole batch (every file of a partition, concatenated) as one pyarrow Table; only ``columns``
    when given (Parquet reads nothing else)."""
    import pyarrow as pa

    try:
        tables = [_read_whole(fs, f, columns) for f in batch_files(fs, path)]
        return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    except (OSError, ValueError, TypeError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        if isinstance(exc, NotATable):
            raise
        raise NotATable(f"cannot be read as a table: {exc}") from exc


def row_groups(fs: Any, path: str) -> Iterator[Any]:
    """One file's rows, a row group at a time (Parquet), or whole (CSV, JSON lines)."""
    import pyarrow.parquet as pq

    if table_format(path) != "parquet":
        yield _read_whole(fs, path)
        return
    # Local: Arrow's own file, memory-mapped (no Python file object, no copy of the compressed pages).
    with contextlib.nullcontext(path) if _local(fs) else fs.open(path, "rb") as source:
        parquet = pq.ParquetFile(source, memory_map=_local(fs))
        for index in range(parquet.num_row_groups):
            yield parquet.read_row_group(index)


def _local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


@dataclass
class BatchShape:
    """What planning needs: the files, their row counts, the schema, each numeric column's range."""

    files: list[str]
    rows: list[int]
    schema: Any
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    labels: dict[str, list[Any]] = field(default_factory=dict)
    moments: dict[str, list[float]] = field(default_factory=dict)  # numeric column -> [count, sum, sum of squares]

    @property
    def total_rows(self) -> int:
        return sum(self.rows)

    def as_dict(self) -> dict[str, Any]:
        """Everything but the schema, as plain data (snapshot hands it to inject through the ledger)."""
        return {"files": self.files, "rows": self.rows, "ranges": self.ranges, "labels": self.labels,
                "moments": self.moments}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchShape:
        ranges = {k: (float(v[0]), float(v[1])) for k, v in data["ranges"].items()}
        return cls(data["files"], data["rows"], None, ranges, data["labels"], data["moments"])

    def mean_std(self, column: str) -> tuple[float, float]:
        count, total, squares = self.moments.get(column, [0.0, 0.0, 0.0])
        if count < 2:
            return (total / count if count else 0.0), 0.0
        mean = total / count
        return mean, max(0.0, (squares - count * mean * mean) / (count - 1)) ** 0.5


def describe_batch(fs: Any, path: str, label_columns: list[str] | None = None) -> BatchShape:
    """Row counts, schema and numeric ranges, read a row group at a time (Parquet statistics would be
    cheaper, but writers may omit them)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    files = batch_files(fs, path)
    rows, schema, ranges, labels = [], None, {}, {c: set() for c in label_columns or []}
    moments: dict[str, list[float]] = {}
    try:
        for file in files:
            count = 0
            for group in row_groups(fs, file):
                schema = schema or group.schema
                count += group.num_rows
                for name in group.column_names:
                    column = group.column(name)
                    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
                        low, high = pc.min_max(column).values()
                        if low.is_valid:
                            old = ranges.get(name, (low.as_py(), high.as_py()))
                            ranges[name] = (min(old[0], low.as_py()), max(old[1], high.as_py()))
                            values = pc.cast(column, pa.float64())
                            sums = moments.setdefault(name, [0.0, 0.0, 0.0])
                            sums[0] += values.length() - values.null_count
                            sums[1] += pc.sum(values).as_py() or 0.0
                            sums[2] += pc.sum(pc.multiply(values, values)).as_py() or 0.0
                    if name in labels and len(labels[name]) < 1000:
                        labels[name].update(v for v in pc.unique(column).to_pylist() if v is not None)
            rows.append(count)
    except (OSError, ValueError, TypeError) as exc:
        raise NotATable(f"cannot be read as a table: {exc}") from exc
    return BatchShape(files, rows, schema, ranges, {k: sorted(v, key=str) for k, v in labels.items()}, moments)


# -- planning ---------------------------------------------------------------------------------------
@dataclass
class Plan:
    """Which rows each fault hits, by their index in the clean batch (all files, in order)."""

    values: list[tuple[str, str, Any]] = field(default_factory=list)  # (kind, column, sorted row indices)
    duplicates: Any = None  # sorted row indices copied right after themselves
    type_changes: list[str] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)
    rename: dict[str, str] = field(default_factory=dict)
    reorder: bool = False
    truncate: bool = False
    labels: dict[str, list[Any]] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)


def _sample(total: int, fraction: float, seed: int, index: int) -> Any:
    import numpy as np

    size = min(total, max(1, round(fraction * total)))
    return np.sort(np.random.default_rng([seed, index]).choice(total, size=size, replace=False))


def plan_faults(faults: list[dict[str, Any]], shape: BatchShape, seed: int) -> Plan:
    """Turn the spec's faults (plain mappings) into row indices, seeded: the same batch and seed always
    give the same plan."""
    import numpy as np

    plan = Plan(labels=shape.labels, ranges=shape.ranges)
    total = shape.total_rows
    for index, fault in enumerate(faults):
        kind = fault["kind"]
        if kind in ("nulls", "out_of_range", "type_change"):
            for column in fault["columns"]:
                rows = _sample(total, fault.get("fraction") or 0.01, seed, index)
                plan.values.append((kind, column, rows))
                if kind == "type_change":
                    plan.type_changes.append(column)
        elif kind == "label_flip":
            plan.values.append((kind, fault["column"], _sample(total, fault["fraction"], seed, index)))
        elif kind == "duplicates":
            rows = _sample(total, fault["fraction"], seed, index)
            plan.duplicates = rows if plan.duplicates is None else np.union1d(plan.duplicates, rows)
        elif kind == "schema":
            plan.drop += fault.get("drop") or []
            plan.rename.update(fault.get("rename") or {})
            plan.reorder = plan.reorder or bool(fault.get("reorder"))
        elif kind == "truncate":
            plan.truncate = True
    return plan


# -- writing the corrupted copy ---------------------------------------------------------------------
def _out_of_range_value(column: Any, low: float, high: float) -> Any:
    import numpy as np
    import pyarrow as pa

    span = max(1.0, float(high) - float(low))
    if pa.types.is_integer(column.type):
        limits = np.iinfo(column.type.to_pandas_dtype())
        value = int(high + span) if high + span <= limits.max else int(low - span)
        return pa.scalar(max(limits.min, min(limits.max, value)), column.type)
    return pa.scalar(float(high) + 10 * span, column.type)


def _flipped(values: list[Any], labels: list[Any]) -> list[Any]:
    if not labels:
        return values
    if len(labels) == 1:
        return [labels[0] if v != labels[0] else (not v if isinstance(v, bool) else v) for v in values]
    position = {repr(label): i for i, label in enumerate(labels)}
    return [labels[(position.get(repr(v), -1) + 1) % len(labels)] for v in values]


def _apply_values(group: Any, offset: int, plan: Plan) -> tuple[Any, dict[int, list[str]]]:
    """The row group with its value faults applied, and which local rows each fault hit."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    hit: dict[int, list[str]] = {}
    for kind, name, rows in plan.values:
        local = rows[(rows >= offset) & (rows < offset + group.num_rows)] - offset
        if name not in group.column_names:
            continue
        column = group.column(name).combine_chunks()
        if kind == "type_change":
            column = pc.cast(column, pa.string())
        if len(local):
            mask = np.zeros(group.num_rows, dtype=bool)
            mask[local] = True
            if kind == "nulls":
                column = pc.if_else(pa.array(mask), pa.scalar(None, column.type), column)
            elif kind == "out_of_range":
                low, high = plan.ranges.get(name, (0, 0))
                column = pc.if_else(pa.array(mask), _out_of_range_value(column, low, high), column)
            elif kind == "type_change":
                column = pc.if_else(pa.array(mask), pa.scalar(NOT_A_NUMBER), column)
            else:  # label_flip
                flipped = _flipped(column.take(pa.array(local)).to_pylist(), plan.labels.get(name, []))
                column = pc.replace_with_mask(column, pa.array(mask), pa.array(flipped, column.type))
            for row in local.tolist():
                hit.setdefault(row, []).append(f"{kind}:{name}")
        group = group.set_column(group.column_names.index(name), name, column)
    return group, hit


def _apply_schema(group: Any, plan: Plan) -> Any:
    group = group.drop_columns([c for c in plan.drop if c in group.column_names])
    if plan.rename:
        group = group.rename_columns([plan.rename.get(c, c) for c in group.column_names])
    if plan.reorder:
        group = group.select(list(reversed(group.column_names)))
    return group


def corrupt_group(group: Any, offset: int, plan: Plan, written: int) -> tuple[Any, Any]:
    """(the damaged row group, its corrupted rows with their position in the damaged batch).
    ``written``: rows of the damaged batch before this group."""
    import numpy as np
    import pyarrow as pa

    damaged, hit = _apply_values(group, offset, plan)
    order = np.arange(group.num_rows)
    copies = np.array([], dtype=np.int64)
    if plan.duplicates is not None:
        copies = plan.duplicates[(plan.duplicates >= offset) & (plan.duplicates < offset + group.num_rows)] - offset
    if len(copies):  # a take copies the whole group: only when there are rows to repeat
        order = np.sort(np.concatenate([order, copies]), kind="stable")
        damaged = damaged.take(pa.array(order))
    damaged = _apply_schema(damaged, plan)
    # Where each original row landed: the first of its copies; a duplicate is the second.
    first = np.searchsorted(order, np.arange(group.num_rows), side="left") if len(copies) else order
    marks: dict[int, list[str]] = {int(first[row]): kinds for row, kinds in hit.items()}
    for row in copies.tolist():
        marks.setdefault(int(first[row]) + 1, []).append("duplicates")
    positions = sorted(marks)
    rows = damaged.take(pa.array(positions, pa.int64()))
    rows = rows.append_column(ROW_COLUMN, pa.array([written + p for p in positions], pa.int64()))
    rows = rows.append_column(FAULT_COLUMN, pa.array([",".join(marks[p]) for p in positions], pa.string()))
    return damaged, rows


def _writer(fmt: str, handle: Any, schema: Any) -> Any:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if fmt == "parquet":
        return pq.ParquetWriter(handle, schema)
    if fmt == "csv":
        return pacsv.CSVWriter(handle, schema)
    return _JsonLinesWriter(handle)


class _JsonLinesWriter:
    def __init__(self, handle: Any):
        self.handle = handle

    def write_table(self, table: Any) -> None:
        text = table.to_pandas().to_json(orient="records", lines=True, date_format="iso")
        self.handle.write(text.encode() + (b"\n" if text and not text.endswith("\n") else b""))

    def close(self) -> None:
        return


def write_corrupted(fs: Any, source: str, dest: str, plan: Plan, check: Any = None) -> Any:
    """Write the corrupted copy of the batch at ``source`` (a file or a partition folder) to ``dest``, a
    row group at a time; return the corrupted rows (pyarrow Table with ``__mlchaos_row``)."""
    evidence = write_transformed(fs, source, dest, lambda group, offset, written: corrupt_group(
        group, offset, plan, written), check)
    if plan.truncate:
        largest = max(batch_files(fs, dest), key=lambda f: (int(fs.size(f)), f))
        with fs.open(largest, "rb") as handle:
            data = handle.read()
        with fs.open(largest, "wb") as handle:
            handle.write(data[: len(data) // 2])
    return evidence


# (row group, its first row's index in the batch, rows written before it) -> (new group, evidence rows or None)
Transform = Callable[[Any, int, int], tuple[Any, Any]]


def write_transformed(fs: Any, source: str, dest: str, transform: Transform, check: Any = None) -> Any:
    """Write a copy of the batch at ``source`` to ``dest`` with ``transform`` applied to every row group,
    in the same format and files; other files of a partition (``_SUCCESS``) are copied unchanged.
    Returns the evidence rows the transform gave, concatenated (None when it gave none)."""
    import pyarrow as pa

    files = batch_files(fs, source)
    base = source.rstrip("/")
    if fs.isdir(base):  # markers and metadata beside the data files (_SUCCESS, .crc) come along unchanged
        for other in sorted(set(fs.find(base)) - set(files)):
            fs.makedirs(posixpath.dirname(posixpath.join(dest, posixpath.relpath(other, base))), exist_ok=True)
            fs.copy(other, posixpath.join(dest, posixpath.relpath(other, base)))
    offset = written = 0
    evidence = []
    for file in files:
        out = dest if file == base else posixpath.join(dest, posixpath.relpath(file, base))
        fs.makedirs(posixpath.dirname(out), exist_ok=True)
        writer = None
        # Local Parquet: Arrow writes the file itself (no Python file object in between).
        native = _local(fs) and table_format(file) == "parquet"
        with contextlib.nullcontext(out) if native else fs.open(out, "wb") as handle:
            for group in row_groups(fs, file):
                if check is not None:
                    check()
                damaged, rows = transform(group, offset, written)
                writer = writer or _writer(table_format(file), handle, damaged.schema)
                writer.write_table(damaged)
                if rows is not None:
                    evidence.append(rows)
                offset += group.num_rows
                written += damaged.num_rows
                del group, damaged  # before the next group is read: one group in memory at a time
            if writer is not None:
                writer.close()
    return pa.concat_tables(evidence, promote_options="permissive") if evidence else None


# -- fingerprints -----------------------------------------------------------------------------------
NULL_TOKEN = "\0null"


def canonical(frame: Any) -> Any:
    """Every value as text that survives a round trip through another writer: 37, 37.0 and "37" alike
    (a pipeline may widen integers to floats), nulls as one token."""
    import numpy as np
    import pandas as pd

    out = pd.DataFrame(index=frame.index)
    for name in frame.columns:
        column = frame[name]
        numeric = pd.to_numeric(column, errors="coerce") if column.dtype != bool else None
        if numeric is not None and numeric.notna().sum() == column.notna().sum():
            values = numeric.astype(float)
            integral = np.isfinite(values) & (values == np.floor(values))
            whole = values.where(integral, 0).astype("int64").astype(str)
            text = np.where(integral, whole, values.astype(str))
            out[name] = pd.Series(text, index=frame.index).where(values.notna(), NULL_TOKEN)
        else:
            out[name] = column.astype(str).where(column.notna(), NULL_TOKEN)
    return out


def fingerprints(table: Any, columns: list[str]) -> list[str]:
    """One hex fingerprint per row over ``columns`` (in that order)."""
    import pandas as pd

    frame = table[columns] if isinstance(table, pd.DataFrame) else table.select(columns).to_pandas()
    hashed = pd.util.hash_pandas_object(canonical(frame), index=False)
    return [f"{int(h):016x}" for h in hashed]


def sample_batch(fs: Any, path: str, columns: list[str], count: int, seed: int, total_rows: int) -> Any:
    """At most ``count`` rows of the batch (seeded), ``columns`` only, read a row group at a time: the
    batch is never whole in memory."""
    import numpy as np
    import pyarrow as pa

    picks = np.sort(np.random.default_rng(seed).choice(total_rows, min(count, total_rows), replace=False))
    taken, offset = [], 0
    for file in batch_files(fs, path):
        for group in row_groups(fs, file):
            local = picks[(picks >= offset) & (picks < offset + group.num_rows)] - offset
            if len(local):
                taken.append(group.select(columns).take(pa.array(local)))
            offset += group.num_rows
            del group
    return pa.concat_tables(taken, promote_options="permissive") if taken else None


def write_evidence(fs: Any, path: str, rows: Any) -> None:
    """The corrupted rows (as written, with their positions and faults) as one Parquet file."""
    import pyarrow.parquet as pq

    with fs.open(path, "wb") as handle:
        pq.write_table(rows, handle)


def read_evidence(fs: Any, path: str) -> Any:
    """The corrupted rows :func:`write_evidence` wrote, as a pandas DataFrame."""
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as handle:
        return pq.read_table(handle).to_pandas()
