"""data-corruption's verdict: did the validator refuse the corrupted batch for the corruption, and did none
of the corrupted rows reach what the downstream step wrote?

A corrupted row is accounted for when the validator's report names its position (for a duplicate, its
copy or the original); a column turned to text, dropped or renamed, when the report names the column; a
batch cut short, by the refusal itself (rows past the cut cannot be named).
"""

from __future__ import annotations

from typing import Any

from mlchaos_steps.core.context import PhaseContext, run_dir_name
from mlchaos_steps.core.verdict import Verdict
from mlchaos_steps.stages.validation_reports import ValidationOutcome
from mlchaos_steps.targets import tables
from mlchaos_steps.targets.checkpoints import CheckpointStore

OUTPUT_TAIL_CHARS = 2000
SHOWN = 8
BLANKET_SHARE = 0.5  # a report naming more of the batch than this (and 3x the corrupted rows) blames everything


def corrupted_rows(state: dict[str, Any]) -> Any:
    """The corrupted rows inject recorded beside the backup (a DataFrame), or None."""
    path = (state.get("corrupted") or {}).get("evidence")
    if not path:
        return None
    return tables.read_evidence(CheckpointStore(state["batch"]["store"]).fs, path)


def unaccounted(state: dict[str, Any], outcome: ValidationOutcome, rows: Any) -> list[str]:
    """What the validator's report leaves unexplained, one phrase per kind of fault."""
    if state.get("truncated"):
        return []
    blanket = _blanket(state, outcome, rows)
    if blanket:
        return [blanket]
    schema = state.get("schema_faults") or {}
    missing = _columns_unnamed(schema, outcome)
    column_level = {c for c in schema.get("type_changes", []) if c in outcome.columns}
    unexplained: dict[str, list[int]] = {}
    pairs = zip(rows[tables.ROW_COLUMN].tolist(), rows[tables.FAULT_COLUMN].tolist(), strict=True) \
        if rows is not None else []
    for position, faults in pairs:
        kinds = [f for f in faults.split(",") if not (f.startswith("type_change:") and f.split(":")[1] in column_level)]
        if not kinds or position in outcome.rows or ("duplicates" in kinds and position - 1 in outcome.rows):
            continue
        for kind in kinds:
            unexplained.setdefault(kind, []).append(position)
    for kind, positions in sorted(unexplained.items()):
        shown = ", ".join(map(str, positions[:SHOWN])) + (", ..." if len(positions) > SHOWN else "")
        missing.append(f"{len(positions)} row(s) with {kind.replace(':', ' in ')} ({shown})")
    return missing


def _columns_unnamed(schema: dict[str, Any], outcome: ValidationOutcome) -> list[str]:
    """Dropped or renamed columns the report does not name."""
    missing = [f"column {c} (dropped)" for c in schema.get("drop", []) if c not in outcome.columns]
    missing += [f"column {old} (renamed {new})" for old, new in (schema.get("rename") or {}).items()
                if old not in outcome.columns and new not in outcome.columns]
    return missing


def _blanket(state: dict[str, Any], outcome: ValidationOutcome, rows: Any) -> str | None:
    """A report that blames (nearly) every row names the corrupted ones without having found them."""
    corrupted = len(rows) if rows is not None else 0
    copies = int(rows[tables.FAULT_COLUMN].str.contains("duplicates").sum()) if corrupted else 0
    total = int(state.get("rows") or 0) + copies  # the corrupted batch: the clean rows and the copies
    if total and len(outcome.rows) > BLANKET_SHARE * total and len(outcome.rows) > 3 * corrupted:
        return (f"the corrupted rows in particular: it names {len(outcome.rows)} of the batch's {total} rows for "
                f"{corrupted} corrupted")
    return None


def leaked(state: dict[str, Any], written: Any, rows: Any, key: list[str] | None = None) -> tuple[int, list[int]]:
    """How many corrupted rows are in what the downstream step wrote, and which (their batch positions).
    Without ``key``: a row leaked when the training set holds it as corrupted (over the batch's columns
    it kept); with ``key``: when the row with its key carries the corrupted value in a faulted column."""
    import pandas as pd

    if written is None or rows is None or not len(rows):
        return 0, []
    if key:
        return _leaked_by_key(state, written, rows, key)
    columns = [c for c in state.get("fingerprint_columns") or [] if c in rows.columns and c in written.schema.names]
    if not columns:
        return 0, []
    values = rows[columns]
    down = pd.Series(tables.fingerprints(written, columns)).value_counts()
    clean = _clean_counts(state, columns, rows)
    found = []
    for position, faults, mark in zip(rows[tables.ROW_COLUMN].tolist(), rows[tables.FAULT_COLUMN].tolist(),
                                      tables.fingerprints(values, columns), strict=True):
        allowed = clean.get(mark, 0) if faults == "duplicates" else 0
        if int(down.get(mark, 0)) > allowed:
            found.append(position)
    return len(found), found


def _leaked_by_key(state: dict[str, Any], written: Any, rows: Any, key: list[str]) -> tuple[int, list[int]]:
    import pandas as pd

    faulted = sorted({f.split(":", 1)[1] for faults in rows[tables.FAULT_COLUMN] for f in faults.split(",")
                      if ":" in f} & set(written.schema.names) & set(rows.columns))
    down = written.select([*key, *[c for c in faulted if c not in key]]).to_pandas()
    down_keys = pd.Series(tables.fingerprints(down, key))
    counts = down_keys.value_counts()
    where = down_keys.groupby(down_keys).indices  # key -> positions in the training set
    down_values = tables.canonical(down[faulted]) if faulted else None
    row_values = tables.canonical(rows[faulted]) if faulted else None
    clean = _clean_counts(state, key, rows)
    found = []
    for i, (position, faults, mark) in enumerate(zip(rows[tables.ROW_COLUMN].tolist(),
                                                     rows[tables.FAULT_COLUMN].tolist(),
                                                     tables.fingerprints(rows, key), strict=True)):
        kinds = faults.split(",")
        if "duplicates" in kinds and int(counts.get(mark, 0)) > clean.get(mark, 0):
            found.append(position)
            continue
        hits = where.get(mark)
        columns = [f.split(":", 1)[1] for f in kinds if ":" in f and f.split(":", 1)[1] in faulted]
        if hits is not None and columns and down_values is not None and row_values is not None and any(
                (down_values[c].iloc[hits] == row_values[c].iloc[i]).any() for c in columns):
            found.append(position)
    return len(found), found


def _clean_counts(state: dict[str, Any], columns: list[str], rows: Any) -> dict[str, int]:
    """How often each row is in the clean batch (now in quarantine): a duplicate leaks only past that.
    Read (those columns only) only when rows were duplicated."""
    import pandas as pd

    if not rows[tables.FAULT_COLUMN].str.contains("duplicates").any():
        return {}
    batch = state["batch"]
    store = CheckpointStore(batch["store"])
    backup = store.quarantine_path(run_dir_name(state["run_key"]), batch["name"])
    if not store.exists(backup):
        return {}
    clean = tables.read_table(store.fs, backup, columns)
    return dict(pd.Series(tables.fingerprints(clean, columns)).value_counts())


def judge(stage: Any, ctx: PhaseContext) -> Verdict:
    """Run the validator (and the downstream step) on the corrupted batch and judge what they did.
    ``stage``: the DataCorruption spec (its module imports this one, not the other way round)."""
    state = {**ctx.state, "run_key": ctx.run_key}
    path = state["batch"]["path"]
    result, outcome = stage._validate(path)
    rows = corrupted_rows(state)
    corrupted = (state.get("corrupted") or {}).get("rows", 0)
    evidence: dict[str, Any] = {"validator": outcome.summary(), "validator_exit_code": result.exit_code,
                                "validator_stdout_tail": result.stdout[-OUTPUT_TAIL_CHARS:],
                                "validator_stderr_tail": result.stderr[-OUTPUT_TAIL_CHARS:]}
    metrics: dict[str, float] = {"corrupted_rows": float(corrupted), "validation_seconds": result.seconds}
    problems: list[str] = []
    if not outcome.refused:
        problems.append(f"the validator accepted the corrupted batch (exit {result.exit_code}, {corrupted} corrupted "
                        "row(s))")
    else:
        missing = unaccounted(state, outcome, rows)
        evidence["unaccounted"] = missing
        if missing:
            problems.append("the validator refused the batch, but its report does not account for "
                            + "; ".join(missing) + ": it refused for another reason, or missed these")
    if stage.downstream is not None:
        down = stage._run(stage.downstream.command, path, stage.downstream.timeout_s,
                          {"MLCHAOS_VALIDATION_EXIT": str(result.exit_code)})
        written = stage._read_partition(state["batch"].get("value"))
        count, positions = leaked(state, written, rows, stage.key)
        metrics["leaked_rows"] = float(count)
        evidence.update(downstream_exit_code=down.exit_code, leaked_positions=positions[:100],
                        downstream_stderr_tail=down.stderr[-OUTPUT_TAIL_CHARS:])
        if count > stage.downstream.max_leaked_rows:
            problems.append(f"{count} corrupted row(s) reached the downstream partition (max_leaked_rows="
                            f"{stage.downstream.max_leaked_rows}; batch positions "
                            f"{', '.join(map(str, positions[:SHOWN]))})")
    if problems:
        return Verdict.failed("; ".join(problems), metrics=metrics, evidence=evidence)
    kinds = ", ".join(f.kind for f in stage.faults)
    what = "" if stage.downstream is None else "; none of the corrupted rows reached the downstream partition"
    return Verdict.passed(f"the validator refused the corrupted batch ({kinds}) and its report accounts for the "
                          f"corruption ({corrupted} row(s), {len(outcome.rows)} named){what}",
                          metrics=metrics, evidence=evidence)
