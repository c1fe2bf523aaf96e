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


def features(root: str | Path, days: int = 2) -> str:
    """Data preparation: the days' feature batches (``<root>/features/date=YYYYMMDD/``), made afresh, and
    an empty training-set store beside them (``<root>/training_sets``); returns the newest batch."""
    from mlchaos_steps.examples.churn_pipeline import make_batches

    root = Path(root)
    for folder in ("features", "training_sets"):
        shutil.rmtree(root / folder, ignore_errors=True)
    make_batches(root / "features", days, 1000, "parquet")
    (root / "training_sets").mkdir(parents=True)
    return str(max((root / "features").iterdir()))


def validate_batch(batch: str | Path) -> None:
    """The pipeline's validation task (pandera): raises when the validator refuses the batch."""
    from mlchaos_steps.examples.churn_pipeline import validate

    if validate(Path(batch), "healthy") != 0:
        raise RuntimeError(f"the validator refused {batch}")


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


def main(argv: list[str] | None = None) -> int:
    """The same steps as a command, for workflow containers (the Argo examples in ``workflows/``):
    ``python -m mlchaos_steps.examples.training {prepare,train,evaluate,register,candidate,champion,features,
    validate}``.
    ``--output FILE`` writes the step's result there (an Argo output parameter reads it)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mlchaos_steps.examples.training")
    parser.add_argument("step", choices=["prepare", "train", "evaluate", "register", "candidate", "champion",
                                         "features", "validate"])
    parser.add_argument("--store", help="the checkpoint folder (prepare, train, evaluate)")
    parser.add_argument("--model", help="the registered model (register, candidate, champion)")
    parser.add_argument("--workdir", help="where a broken candidate keeps its files (register)")
    parser.add_argument("--broken", default="false", help="register the deliberately broken model: true/false")
    parser.add_argument("--days", type=int, default=2, help="how many daily feature batches (features)")
    parser.add_argument("--batch", help="the feature batch to validate (validate; default: the newest)")
    parser.add_argument("--output", help="write the result to this file")
    args = parser.parse_args(argv)
    needs = {"prepare": "store", "train": "store", "evaluate": "store", "register": "model",
             "candidate": "model", "champion": "model", "features": "workdir", "validate": "workdir"}[args.step]
    if not getattr(args, needs):
        parser.error(f"{args.step} needs --{needs}")
    if args.step == "register" and not args.workdir:
        parser.error("register needs --workdir")
    steps = {
        "prepare": lambda: prepare(Path(args.store)),
        "train": lambda: train(Path(args.store)),
        "evaluate": lambda: evaluate(Path(args.store)),
        "register": lambda: register_candidate(args.model, args.workdir,
                                               broken=args.broken.strip().lower() in {"1", "true", "yes"}),
        "candidate": lambda: ensure_candidate(args.model),
        "champion": lambda: ensure_champion(args.model),
        "features": lambda: features(args.workdir, args.days),
        "validate": lambda: validate_batch(args.batch or max((Path(args.workdir) / "features").iterdir())) or "valid",
    }
    result = str(steps[args.step]())
    print(result)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
