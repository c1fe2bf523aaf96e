"""What the example training tasks do: prepare a checkpoint folder, train, evaluate, register.

Called by the tasks of ``dags/retraining_with_chaos.py``, ``dags/nightly_resilience.py`` and
``dags/add_chaos_to_existing.py``; every argument comes from the DAG's params, nothing from the
environment. mlflow and numpy load inside the functions.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def checkpoints(workdir: str | Path, dag_id: str) -> Path:
    """Where a DAG's trainer writes its checkpoints (the stage files point at the same folder)."""
    return Path(workdir) / dag_id / "checkpoints"


def prepare(store: Path) -> str:
    """An empty checkpoint folder."""
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    return str(store)


def train(store: Path) -> str:
    """Train the example model from scratch, checkpointing every 100 steps."""
    from mlchaos_steps.examples.workloads import train as run_trainer

    run_trainer(store)
    return str(store)


def evaluate(store: Path) -> float:
    """Accuracy of the newest intact checkpoint on a fixed held-out set."""
    import numpy as np

    from mlchaos_steps.examples.trainer import newest_intact

    state = newest_intact(store)
    if state is None:
        raise RuntimeError("no intact checkpoint to evaluate")
    rng = np.random.default_rng(123)
    x = rng.normal(size=(2000, 8))
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] > 0).astype(int)
    return float(state["model"].score(x, y))


def ensure_champion(model: str) -> str:
    """The @champion version, registered first when the model has none."""
    from mlchaos_steps.examples.models import register_sklearn
    from mlchaos_steps.targets.mlflow import alias_version, client

    champion = alias_version(model, "champion")
    if champion is None:
        champion = register_sklearn(model)
        client().set_registered_model_alias(model, "champion", champion)
    return champion


def register_candidate(model: str, workdir: str | Path, broken: bool = False) -> str:
    """Register a candidate as @challenger; ``broken``: one that loads without its weights."""
    from mlchaos_steps.examples.models import register_silent_fallback, register_sklearn
    from mlchaos_steps.targets.mlflow import client

    ensure_champion(model)
    version = register_silent_fallback(model, Path(workdir)) if broken else register_sklearn(model)
    client().set_registered_model_alias(model, "challenger", version)
    return version


def ensure_candidate(model: str) -> str:
    """@challenger, registered (with a champion) when missing."""
    from mlchaos_steps.examples.models import register_sklearn
    from mlchaos_steps.targets.mlflow import alias_version, client

    ensure_champion(model)
    candidate = alias_version(model, "challenger")
    if candidate is None:
        candidate = register_sklearn(model)
        client().set_registered_model_alias(model, "challenger", candidate)
    return candidate
