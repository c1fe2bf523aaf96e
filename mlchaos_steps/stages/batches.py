"""Which data batch a data stage works on: spec part, resolution, and the base of the stages that break
a batch (data-corruption, feature-drift).

Example::

    batch: {store: file:///data/features, pattern: "date=(\\d{8})", pick: newest}
    batch: {path: file:///data/features/date=20261206}
"""

from __future__ import annotations

import os
import posixpath
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mlchaos_steps.core.context import check_kill_switch
from mlchaos_steps.core.processes import CommandResult, run_command
from mlchaos_steps.core.spec import StageSpec, StrictModel
from mlchaos_steps.errors import InfrastructureError, SpecError
from mlchaos_steps.stages.parts import step_pattern, store_url
from mlchaos_steps.targets import tables
from mlchaos_steps.targets.checkpoints import CheckpointStore

BATCH_PLACEHOLDER = "{batch}"


class BatchSelector(StrictModel):
    """The batch: the newest child of ``store`` matching ``pattern`` (a file or a partition folder), or ``path``."""

    store: str | None = Field(default=None, description="fsspec URL of the folder holding the batches")
    pattern: str | None = Field(default=None, description="regex over a child's name; group 1 orders them")
    pick: Literal["newest", "oldest"] = "newest"
    path: str | None = Field(default=None, description="one batch (file or folder), instead of store + pattern")

    _pattern = field_validator("pattern")(lambda v: v if v is None else step_pattern(v))

    @field_validator("store", "path")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return value if value is None else store_url(value)

    @model_validator(mode="after")
    def _one_way(self) -> BatchSelector:
        if (self.path is None) == (self.store is None or self.pattern is None):
            raise ValueError("give either store and pattern (the newest matching child), or path (one batch)")
        return self


def resolve_batch(batch: BatchSelector) -> tuple[CheckpointStore, str, str, str | None]:
    """(the store holding the batch, the batch's path, its name, its pattern group). Bad input names
    ``spec.batch``."""
    if batch.path is not None:
        parent, name = posixpath.split(batch.path.rstrip("/"))
        store = CheckpointStore(parent, field="spec.batch.path")
        path = store.join(name)
        if not store.exists(path):
            raise SpecError("spec.batch.path", f"{batch.path} does not exist: point it at a batch")
        return store, path, name, None
    store = CheckpointStore(batch.store or "", field="spec.batch.store")
    found = store.checkpoints(batch.pattern or "", field="spec.batch.pattern")
    if not found:
        raise SpecError("spec.batch.pattern", f"no child of {batch.store} matches {batch.pattern!r}: "
                                              "check the pattern (it must match whole names)")
    chosen = found[-1] if batch.pick == "newest" else found[0]
    match = re.fullmatch(batch.pattern or "", chosen.name)
    return store, chosen.path, chosen.name, match.group(1) if match else None


class BatchStage(StageSpec):
    """A stage that breaks one data batch: which batch, the seed of what it does to it, and the target it
    serialises on (the folder of batches, or the batch)."""

    batch: BatchSelector
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="the same seed and batch break the same rows")

    def target_ids(self) -> list[str]:
        return [f"data-batch:{(self.batch.path or self.batch.store or '').rstrip('/')}"]


def describe(store: CheckpointStore, path: str, categorical: list[str]) -> tables.BatchShape:
    """The batch's shape (rows, schema, ranges, the categories of ``categorical``); a batch that is not a
    table is bad input naming ``spec.batch``."""
    try:
        return tables.describe_batch(store.fs, path, categorical)
    except tables.NotATable as exc:
        raise SpecError("spec.batch", f"{path}: {exc}: point it at a Parquet, CSV or JSON lines batch") from None


def run_on_batch(command: list[str], batch: str, *, env: dict[str, str], cwd: str | None, timeout_s: float,
                 what: str) -> CommandResult:
    """Run one of the pipeline's commands (validator, training-set step, drift monitor) on the batch:
    ``{batch}`` in its arguments and ``MLCHAOS_BATCH`` in its environment name it."""
    argv = [a.replace(BATCH_PLACEHOLDER, batch) for a in command]
    try:
        return run_command(argv, env={**os.environ, **env, "MLCHAOS_BATCH": batch}, cwd=cwd, timeout_s=timeout_s,
                           on_tick=check_kill_switch)
    except OSError as exc:
        raise InfrastructureError(f"{what} could not start: {exc}") from exc
