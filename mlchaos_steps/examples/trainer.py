"""A small real trainer that checkpoints, and a deliberately broken variant.

A logistic regression (numpy only, so the trainer starts in a fraction of a second) learns a synthetic
task by stochastic gradient descent, one mini-batch per step.
Every ``--checkpoint-every`` steps it writes ``step-<N>/`` atomically (temporary folder, fsync, rename)
holding ``model.pkl`` and ``manifest.json`` with the pickle's sha256, then points ``latest`` at it.

``--resume`` (healthy): resume from the newest checkpoint whose digest checks out.
``--mirror DIR``: a second tier (multi-tier checkpointing): an intact copy there counts too.
``--check CHECKPOINT``: exit 0 when that checkpoint is intact (the stage's integrity command).
``--broken``: trust the ``latest`` pointer without checking digests, and start from zero when the
checkpoint it names is missing: the bug the checkpoint-wipe stage exists to catch.

Both print ``{"mlchaos_resumed_from_step": N}`` when resuming, the contract of the checkpoint-wipe stage.

Example::

    python -m mlchaos_steps.examples.trainer --store /tmp/ckpts --steps 500 --checkpoint-every 100
    python -m mlchaos_steps.examples.trainer --store /tmp/ckpts --steps 500 --resume
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import shutil
import sys
import time
from pathlib import Path

STEP_NAME = re.compile(r"step-(\d+)")


def _data(step: int, batch: int = 64):
    import numpy as np

    rng = np.random.default_rng(step)
    x = rng.normal(size=(batch, 8))
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] > 0).astype(int)
    return x, y


class LogisticModel:
    """Logistic regression learned one mini-batch at a time."""

    def __init__(self, features: int = 8, learning_rate: float = 0.5) -> None:
        import numpy as np

        self.weights, self.bias, self.learning_rate = np.zeros(features), 0.0, learning_rate

    def partial_fit(self, x, y) -> None:
        import numpy as np

        error = 1.0 / (1.0 + np.exp(-(x @ self.weights + self.bias))) - y
        self.weights = self.weights - self.learning_rate * (x.T @ error) / len(y)
        self.bias -= self.learning_rate * float(error.mean())

    def score(self, x, y) -> float:
        """Accuracy on (x, y)."""
        return float((((x @ self.weights + self.bias) > 0).astype(int) == y).mean())


def _new_model() -> LogisticModel:
    # By its importable name, not ``__main__``'s: a checkpoint must load in any process.
    from mlchaos_steps.examples.trainer import LogisticModel as Model

    return Model()


def save_checkpoint(store: Path, step: int, model) -> Path:
    """Write ``step-<N>/`` atomically and point ``latest`` at it."""
    payload = pickle.dumps({"step": step, "model": model})
    final = store / f"step-{step}"
    tmp = store / f".tmp-step-{step}-{os.getpid()}"
    tmp.mkdir(parents=True)
    (tmp / "model.pkl").write_bytes(payload)
    (tmp / "manifest.json").write_text(json.dumps({"step": step, "sha256": hashlib.sha256(payload).hexdigest()}))
    for file in tmp.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    latest_tmp = store / ".latest.tmp"
    latest_tmp.write_text(final.name)
    os.replace(latest_tmp, store / "latest")
    return final


def load_intact(path: Path):
    """Load a checkpoint after checking its digest; None when it is damaged or incomplete."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        payload = (path / "model.pkl").read_bytes()
    except (OSError, ValueError):
        return None
    if hashlib.sha256(payload).hexdigest() != manifest.get("sha256"):
        return None
    return pickle.loads(payload)


def newest_intact(store: Path, mirror: Path | None = None):
    """The newest checkpoint whose digest checks out, from the store or its mirror (a second tier)."""
    state, _ = newest_intact_with_source(store, mirror)
    return state


def newest_intact_with_source(store: Path, mirror: Path | None = None):
    candidates = []
    for tier in (store, mirror):
        if tier is not None and tier.is_dir():
            candidates += [(int(m.group(1)), tier == store, p) for p in tier.iterdir()
                           if (m := STEP_NAME.fullmatch(p.name)) and p.is_dir()]
    # newest step first; for one step, the local tier before the mirror
    for _step, _local, path in sorted(candidates, reverse=True):
        state = load_intact(path)
        if state is not None:
            return state, path
        print(f"checkpoint {path} is damaged: skipping it", file=sys.stderr)
    return None, None


def _flag(value: str) -> bool:
    """``--broken``, ``--broken=True`` or ``--broken=false`` (as a DAG param renders into a command)."""
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is neither true nor false")


def broken_resume(store: Path):
    """The bug: trust ``latest`` blindly; start from zero when it names a missing checkpoint."""
    pointer = store / "latest"
    if not pointer.exists():
        return None
    path = store / pointer.read_text().strip()
    if not path.exists():
        return None
    match = STEP_NAME.fullmatch(path.name)
    # It announces the step before loading, as trainers that trust a pointer do; a damaged pickle
    # then crashes it, or worse, loads.
    print(json.dumps({"mlchaos_resumed_from_step": int(match.group(1)) if match else 0}), flush=True)
    return pickle.loads((path / "model.pkl").read_bytes())


def _resume(store: Path, mirror: Path | None, broken: bool) -> dict | None:
    """Load the state to resume from, and report the step on standard output (the resume contract)."""
    if broken:
        state = broken_resume(store)
        if state is None:
            print(json.dumps({"mlchaos_resumed_from_step": 0}), flush=True)
        return state
    state, source = newest_intact_with_source(store, mirror)
    report = {"mlchaos_resumed_from_step": int(state["step"]) if state else 0}
    if source is not None:
        report["source"] = str(source)
    print(json.dumps(report), flush=True)
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, help="the checkpoint folder (required unless --check)")
    parser.add_argument("--steps", type=int, default=500, help="train until this step")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--broken", nargs="?", const="true", default="false", type=_flag,
                        help="resume the wrong way (see module doc); --broken=False is the healthy resume")
    parser.add_argument("--no-save", action="store_true", help="train without writing checkpoints")
    parser.add_argument("--step-seconds", type=float, default=0.0, help="pretend each step takes this long")
    parser.add_argument("--mirror", type=Path, help="a second tier holding copies of the checkpoints")
    parser.add_argument("--check", type=Path, metavar="CHECKPOINT",
                        help="only check that one checkpoint is intact: exit 0 if so, 1 if not")
    args = parser.parse_args(argv)
    if args.check:
        return 0 if load_intact(args.check) is not None else 1
    if args.store is None:
        parser.error("--store is required")
    args.store.mkdir(parents=True, exist_ok=True)

    model, start = _new_model(), 0
    if args.resume:
        state = _resume(args.store, args.mirror, broken=args.broken)
        if state is not None:
            model, start = state["model"], int(state["step"])

    for step in range(start + 1, args.steps + 1):
        x, y = _data(step)
        model.partial_fit(x, y)
        if args.step_seconds:
            time.sleep(args.step_seconds)
        if step % args.checkpoint_every == 0 and not args.no_save:
            save_checkpoint(args.store, step, model)
    x, y = _data(10**6, batch=2000)
    accuracy = model.score(x, y)
    print(json.dumps({"trained_to_step": max(args.steps, start), "accuracy": round(accuracy, 4)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
