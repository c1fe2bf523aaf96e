"""``data-corruption``: corrupt rows of a data batch, then check that the pipeline refuses them before they
reach the model.

The hypothesis: corrupted data is refused (or repaired) before it reaches the model. Verify runs the
pipeline's validator on the corrupted batch: it must refuse it, and its report must account for the
corrupted rows (for schema faults, the columns); a validator that refuses the batch for another reason
has shown nothing. With ``downstream``, it then runs the step that builds the training set from the
batch (told the validator's verdict in ``MLCHAOS_VALIDATION_EXIT``) and looks for the corrupted rows in
what it wrote, by fingerprint: at most ``max_leaked_rows`` may be there.

Steady state, in snapshot: the validator accepts the clean batch, and the downstream step, run on it,
writes this batch's rows (not yesterday's, not a cached copy). Otherwise ``inconclusive``, nothing
broken. The batch is moved aside through the ledger, digest-checked, and restored byte for byte; what
the downstream step wrote from the damage is moved aside as evidence and its partition put back.

Example::

    kind: DataCorruption
    spec:
      batch: {store: file:///data/features, pattern: "date=(\\d{8})", pick: newest}
      faults:
        - {kind: nulls, columns: [age, income], fraction: 0.02}
        - {kind: label_flip, column: churned, fraction: 0.03}
      seed: 7
      validation: {command: [python, -m, pipeline.validate, "{batch}"], report: pandera}
      downstream: {store: file:///data/training_sets, pattern: "date=(\\d{8})",
                   command: [python, -m, pipeline.prepare, "{batch}"]}
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from mlchaos_steps.core.context import PhaseContext, check_kill_switch, run_dir_name
from mlchaos_steps.core.processes import CommandResult
from mlchaos_steps.core.records import Action
from mlchaos_steps.core.spec import StrictModel
from mlchaos_steps.core.verdict import Verdict
from mlchaos_steps.errors import InfrastructureError, SpecError
from mlchaos_steps.stages import data_verdict
from mlchaos_steps.stages.batches import BatchStage, describe, resolve_batch, run_on_batch
from mlchaos_steps.stages.parts import argument_list, check_runnable, environment, step_pattern, store_url
from mlchaos_steps.stages.validation_reports import ReportFormat, ValidationOutcome, parse_report
from mlchaos_steps.targets import quarantine, tables
from mlchaos_steps.targets.checkpoints import CheckpointStore

FOUND_SHARE = 0.9  # of a sample of the clean batch's rows the downstream step must hold (steady state)
SAMPLE_ROWS = 500
OUTPUT_TAIL_CHARS = 2000
Fraction = Annotated[float, Field(gt=0, le=1, description="share of the batch's rows, in (0, 1]")]


class _Fault(StrictModel):
    def rows_fraction(self) -> float:
        """The share of rows this fault may touch (0 for whole-batch faults)."""
        return float(getattr(self, "fraction", 0) or 0)

    def columns_named(self) -> list[str]:
        return list(getattr(self, "columns", None) or [])


class ValueFault(_Fault):
    """Nulls, values outside the column's observed range, or strings in a numeric column, on a seeded sample."""

    kind: Literal["nulls", "out_of_range"]
    columns: list[str] = Field(min_length=1)
    fraction: Fraction


class TypeChangeFault(_Fault):
    """The column becomes text; ``fraction`` of its rows hold a value that is not a number."""

    kind: Literal["type_change"]
    columns: list[str] = Field(min_length=1)
    fraction: Fraction = 0.01


class DuplicatesFault(_Fault):
    """Rows written twice, the copy right after the original."""

    kind: Literal["duplicates"]
    fraction: Fraction


class LabelFlipFault(_Fault):
    """A label changed to another of the labels seen in the batch (booleans and 0/1 flipped)."""

    kind: Literal["label_flip"]
    column: str
    fraction: Fraction

    def columns_named(self) -> list[str]:
        return [self.column]


class SchemaFault(_Fault):
    """Columns dropped, renamed or put in another order, for the whole batch."""

    kind: Literal["schema"]
    drop: list[str] = Field(default_factory=list)
    rename: dict[str, str] = Field(default_factory=dict)
    reorder: bool = False

    @model_validator(mode="after")
    def _something(self) -> SchemaFault:
        if not (self.drop or self.rename or self.reorder):
            raise ValueError("changes nothing: give drop, rename or reorder: true")
        return self

    def columns_named(self) -> list[str]:
        return [*self.drop, *self.rename]


class TruncateFault(_Fault):
    """The batch's (largest) file cut in the middle, as an interrupted copy leaves it."""

    kind: Literal["truncate"]


Fault = Annotated[ValueFault | TypeChangeFault | DuplicatesFault | LabelFlipFault | SchemaFault | TruncateFault,
                  Field(discriminator="kind")]


class ValidationSpec(StrictModel):
    """The pipeline's validator: exit 0 accepts the batch; it prints its report on standard output."""

    command: list[str] = Field(min_length=1, description="argument list; {batch} is the batch's path")
    report: ReportFormat = "auto"
    timeout_s: float = Field(default=600, gt=0)
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)

    _command = field_validator("command", mode="before")(argument_list)
    _env = field_validator("env", mode="before")(environment)


class DownstreamSpec(StrictModel):
    """The step that builds the training set (or feature table) from the batch, and where it writes it."""

    store: str = Field(description="fsspec URL of the folder the step writes its partitions to")
    pattern: str = Field(description="regex over a partition's name; group 1 is the batch's (e.g. its date)")
    command: list[str] = Field(min_length=1, description="argument list; {batch} is the batch's path; "
                                                         "MLCHAOS_VALIDATION_EXIT holds the validator's exit code")
    max_leaked_rows: int = Field(default=0, ge=0)
    timeout_s: float = Field(default=600, gt=0)

    _store = field_validator("store")(store_url)
    _pattern = field_validator("pattern")(step_pattern)
    _command = field_validator("command", mode="before")(argument_list)


class DataCorruption(BatchStage):
    """Corrupt rows of a data batch (nulls, out-of-range values, type changes, duplicates, label flips,
    schema changes, truncation)."""

    kind: ClassVar[str] = "DataCorruption"
    stage_id: ClassVar[str] = "data-corruption"
    title: ClassVar[str] = "Data corruption"

    faults: list[Fault] = Field(min_length=1)
    max_fraction: Fraction = Field(default=0.2, description="the most rows the faults together may touch")
    key: list[str] = Field(default_factory=list, description="columns that identify a row in what the downstream "
                                                             "step writes (default: the batch's columns it keeps)")
    validation: ValidationSpec
    downstream: DownstreamSpec | None = None

    @field_validator("max_fraction")
    @classmethod
    def _bounded(cls, value: float, info: ValidationInfo) -> float:
        total = sum(f.rows_fraction() for f in info.data.get("faults") or [])
        if total > value:
            raise ValueError(f"the faults touch up to {total:g} of the rows, more than max_fraction={value:g}: "
                             "lower their fractions or raise max_fraction")
        return value

    @field_validator("downstream")
    @classmethod
    def _paired(cls, value: DownstreamSpec | None, info: ValidationInfo) -> DownstreamSpec | None:
        batch = info.data.get("batch")
        if value is not None and batch is not None and batch.pattern is None:
            raise ValueError("needs batch.store and batch.pattern: the downstream partition is the one whose "
                             "pattern group equals the batch's")
        return value

    def describe(self) -> str:
        return f"{', '.join(f.kind for f in self.faults)} in {self.batch.path or self.batch.store}"

    # -- resolving --------------------------------------------------------------------------------
    def _resolve(self) -> tuple[CheckpointStore, str, str, str | None]:
        return resolve_batch(self.batch)

    def _shape(self, store: CheckpointStore, path: str) -> tables.BatchShape:
        shape = describe(store, path, [f.column for f in self.faults if isinstance(f, LabelFlipFault)])
        columns = set(shape.schema.names)
        unknown = [c for c in self.key if c not in columns]
        if unknown:
            raise SpecError("spec.key", f"column(s) {', '.join(unknown)} not in the batch: fix the name")
        for index, fault in enumerate(self.faults):
            missing = [c for c in fault.columns_named() if c not in columns]
            if missing:
                raise SpecError(f"spec.faults[{index}]", f"column(s) {', '.join(missing)} not in the batch (it has "
                                                         f"{', '.join(sorted(columns))}): fix the name")
            if isinstance(fault, ValueFault) and fault.kind == "out_of_range":
                textual = [c for c in fault.columns if c not in shape.ranges]
                if textual:
                    raise SpecError(f"spec.faults[{index}].columns", f"{', '.join(textual)} is not numeric: "
                                                                     "out_of_range needs a numeric column")
        return shape

    def _fault_dicts(self) -> list[dict[str, Any]]:
        return [f.model_dump() for f in self.faults]

    def plan(self, ctx: PhaseContext) -> dict[str, Any]:
        self._check_commands()
        store, path, name, _ = self._resolve()
        shape = self._shape(store, path)
        return {"batch": path, "rows": shape.total_rows, "files": len(shape.files),
                "faults": [f.kind for f in self.faults], "seed": self.seed}

    def _check_commands(self) -> None:
        check_runnable(self.validation.command, self.validation.cwd, self.validation.env, "spec.validation")
        if self.downstream is not None:
            check_runnable(self.downstream.command, self.validation.cwd, self.validation.env, "spec.downstream")

    # -- running the pipeline's steps -------------------------------------------------------------
    def _run(self, command: list[str], batch: str, timeout_s: float, extra: dict[str, str]) -> CommandResult:
        return run_on_batch(command, batch, env={**self.validation.env, **extra}, cwd=self.validation.cwd,
                            timeout_s=timeout_s, what=command[0])

    def _validate(self, batch: str) -> tuple[CommandResult, ValidationOutcome]:
        result = self._run(self.validation.command, batch, self.validation.timeout_s, {})
        if result.timed_out:
            raise InfrastructureError(f"the validator did not finish within {self.validation.timeout_s:g}s")
        return result, parse_report(result.stdout, result.exit_code or 0, self.validation.report)

    def _partition(self, value: str | None) -> tuple[CheckpointStore, list[Any]]:
        assert self.downstream is not None
        store = CheckpointStore(self.downstream.store, field="spec.downstream.store")
        found = [c for c in store.checkpoints(self.downstream.pattern, field="spec.downstream.pattern")
                 if (m := re.fullmatch(self.downstream.pattern, c.name)) and m.group(1) == value]
        return store, found

    # -- phases -----------------------------------------------------------------------------------
    def snapshot(self, ctx: PhaseContext) -> dict[str, Any]:
        self._check_commands()
        store, path, name, value = self._resolve()
        on_disk = store.signature(path)
        shape = self._shape(store, path)
        digest = store.digest(path, check_kill_switch)
        result, outcome = self._validate(path)
        if outcome.refused:
            raise InfrastructureError(
                f"steady state not met before the fault: the validator refuses the clean batch {name} (exit "
                f"{result.exit_code}; {outcome.summary()}). Nothing was broken: a validator that refuses good data "
                "shows nothing when it refuses bad data")
        state: dict[str, Any] = {"batch": {"name": name, "path": path, "store": store.url, "on_disk": on_disk,
                                           "digest": digest, "value": value},
                                 "rows": shape.total_rows, "columns": shape.schema.names, "shape": shape.as_dict()}
        ctx.save(**state)
        steady: dict[str, Any] = {"validator": outcome.summary()}
        if self.downstream is not None:
            steady["downstream"] = self._downstream_steady(ctx, path, value)
        return {"batch": path, "rows": shape.total_rows, "steady_state": steady}

    def _downstream_steady(self, ctx: PhaseContext, batch: str, value: str | None) -> dict[str, Any]:
        """Back up the downstream partition, run the step on the clean batch, and check that what it wrote
        holds this batch's rows."""
        assert self.downstream is not None
        store, found = self._partition(value)
        action = self._back_up(ctx, store, found[-1] if found else None, value)
        result = self._run(self.downstream.command, batch, self.downstream.timeout_s, {"MLCHAOS_VALIDATION_EXIT": "0"})
        _, now = self._partition(value)
        if now:  # what the step wrote from the clean batch is the stage's own by-product, not evidence
            action.undo = {**action.undo, "written_digest": store.digest(now[-1].path, check_kill_switch)}
            ctx.ledger.mark_action(action, action.state, undo=action.undo)
        if result.exit_code != 0:
            raise InfrastructureError(f"steady state not met before the fault: the downstream step failed on the "
                                      f"clean batch (exit {result.exit_code}): {result.stderr.strip()[-300:]}")
        written = self._read_partition(value)
        columns = [c for c in (self.key or ctx.state["columns"]) if written is not None and c in written.schema.names]
        sampled = min(SAMPLE_ROWS, ctx.state["rows"])
        share = 0.0
        if columns and sampled:
            sample = tables.sample_batch(CheckpointStore(ctx.state["batch"]["store"]).fs, batch, columns, SAMPLE_ROWS,
                                         self.seed, ctx.state["rows"])
            there = set(tables.fingerprints(written, columns))
            share = sum(f in there for f in tables.fingerprints(sample, columns)) / sampled
        if share < FOUND_SHARE:
            raise InfrastructureError(
                f"steady state not met before the fault: of {sampled} rows of the clean batch, "
                f"{share:.0%} are in what the downstream step wrote (fingerprinted over "
                f"{', '.join(columns) or 'no shared column'}): it read another batch (yesterday's, a cached copy), "
                "or it rewrites the batch's columns in place (write derived values to new columns, or set spec.key to "
                "columns it keeps). Nothing was broken")
        ctx.save(fingerprint_columns=columns)
        return {"rows_found_share": round(share, 4), "columns": columns, "backup": action.undo.get("quarantine")}

    def _back_up(self, ctx: PhaseContext, store: CheckpointStore, partition: Any, value: str | None) -> Action:
        """The downstream partition as it is, copied into its store's quarantine through the ledger (or,
        when there is none yet, a record that there was none)."""
        assert self.downstream is not None
        run_dir = run_dir_name(ctx.run_key)
        undo: dict[str, Any] = {"store": store.url, "pattern": self.downstream.pattern, "value": value,
                                "original": partition.path if partition else None}
        if partition is None:
            with ctx.destructive("downstream-partition", f"{store.url}:{value}", undo) as action:
                return action
        copy = store.quarantine_path(run_dir, partition.name)
        digest = store.digest(partition.path, check_kill_switch)
        store.make_quarantine(run_dir)
        with ctx.destructive("downstream-partition", partition.path,
                             {**undo, "quarantine": copy, "digest": digest}) as action:
            store.fs.copy(partition.path, copy, recursive=store.fs.isdir(partition.path))
            if store.digest(copy) != digest:
                raise InfrastructureError(f"the backup of {partition.path} does not match its digest: nothing run")
        return action

    def _read_partition(self, value: str | None) -> Any:
        _, found = self._partition(value)
        if not found:
            return None
        store = CheckpointStore(self.downstream.store, field="spec.downstream.store")  # type: ignore[union-attr]
        return tables.read_table(store.fs, found[-1].path)

    def inject(self, ctx: PhaseContext) -> dict[str, Any]:
        batch = ctx.state["batch"]
        store = CheckpointStore(batch["store"])
        # The batch is what snapshot described: inject checks it is unchanged before it moves it.
        plan = tables.plan_faults(self._fault_dicts(), tables.BatchShape.from_dict(ctx.state["shape"]), self.seed)
        run_dir = run_dir_name(ctx.run_key)
        evidence = f"{store.quarantine_path(run_dir, batch['name'])}.corrupted-rows.parquet"
        counted: dict[str, int] = {}
        started = time.perf_counter()

        def write_damage(source: str, staging: str) -> dict[str, Any]:
            rows = tables.write_corrupted(store.fs, source, staging, plan, check_kill_switch)
            counted["rows"] = rows.num_rows if rows is not None else 0
            if counted["rows"]:  # beside the backup: every pod reaches it, restore removes it
                tables.write_evidence(store.fs, evidence, rows)
            return {"evidence": evidence}

        victim = {"name": batch["name"], "path": batch["path"], "digest": batch["digest"],
                  "on_disk": batch["on_disk"]}
        quarantine.replace(ctx, store, "quarantine-batch", victim, run_dir,
                           {"faults": self._fault_dicts(), "seed": self.seed}, write_damage)
        ctx.save(corrupted={"evidence": evidence if counted.get("rows") else None, "rows": counted.get("rows", 0)},
                 schema_faults={"drop": plan.drop, "rename": plan.rename, "type_changes": plan.type_changes},
                 truncated=plan.truncate)
        return {"corrupted_rows": counted.get("rows", 0), "inject_seconds": round(time.perf_counter() - started, 6)}

    def verify(self, ctx: PhaseContext) -> Verdict:
        return data_verdict.judge(self, ctx)

    @classmethod
    def restore_action(cls, action: Action, ctx: PhaseContext) -> dict[str, Any]:
        undo = action.undo
        if action.kind == "downstream-partition":
            return _restore_partition(undo, ctx)
        started = time.perf_counter()
        store = CheckpointStore(undo["store"])
        result = quarantine.put_back(store, undo, lambda current: _is_own_damage(store, undo, current))
        if undo.get("evidence") and store.exists(undo["evidence"]):
            store.remove(undo["evidence"])  # the corrupted rows, a by-product of this run
            quarantine.remove_empty_quarantine(store, undo["evidence"])
        return {**result, "seconds": round(time.perf_counter() - started, 6)}


def _is_own_damage(store: CheckpointStore, undo: dict[str, Any], current: str) -> bool:
    """The corruption is seeded: written again from the backup, it must give the same copy."""
    def corrupt(source: str, dest: str) -> None:
        labels = [f["column"] for f in undo["faults"] if f["kind"] == "label_flip"]
        plan = tables.plan_faults(undo["faults"], tables.describe_batch(store.fs, source, labels), undo["seed"])
        tables.write_corrupted(store.fs, source, dest, plan)

    return quarantine.rewritten_is(store, undo, current, corrupt)


def _restore_partition(undo: dict[str, Any], ctx: PhaseContext) -> dict[str, Any]:
    """The downstream partition back as it was at snapshot; what the step wrote since is evidence."""
    store = CheckpointStore(undo["store"])
    own = undo.get("written_digest")
    if undo.get("original") is not None:
        return quarantine.put_back(store, undo, lambda current: current == own)
    removed, moved = [], []
    run_dir = run_dir_name(ctx.run_key)
    for child in store.checkpoints(undo["pattern"]):
        match = re.fullmatch(undo["pattern"], child.name)
        if not match or match.group(1) != undo["value"]:
            continue
        if own is not None and store.digest(child.path) == own:
            store.remove(child.path)  # written from the clean batch by the steady-state run, unchanged since
            removed.append(child.path)
            continue
        store.make_quarantine(run_dir)
        evidence = f"{store.quarantine_path(run_dir, child.name)}.written-{int(time.time())}"
        store.move(child.path, evidence)  # written from the damage: kept as evidence
        moved.append(evidence)
    quarantine.remove_empty_quarantine(store, store.quarantine_path(run_dir, "x"))
    return {"original": None, "removed_own": removed, **({"kept_foreign": moved} if moved else {})}
