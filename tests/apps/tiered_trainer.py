"""A trainer written the way multi-tier checkpointing setups are, with nothing of mlchaos inside but the
one JSON line its resume contract asks for.

Checkpoints are laid out like Hugging Face's Trainer: ``checkpoint-<step>/`` holding
``model.safetensors`` and ``trainer_state.json``. Each save goes to the local tier (``--store``) and is
then replicated to a second tier (``--replica``), as multi-tier checkpointing does. The trainer keeps its
digests in an index at each tier's root (``index.json``: checkpoint name -> sha256 of its weights), not
inside the checkpoints, so mlchaos cannot see them.

Resume (healthy): the newest checkpoint, local tier first, then the replica, whose weights match the
index and load. ``--report-source`` adds where it loaded from, and its weights' sha256, to the report.
Broken variants: ``--trust-newest`` loads the newest local checkpoint without checking anything;
``--pass-over-newest`` skips the newest intact checkpoint (an off-by-one in "the last complete save").
``--check CHECKPOINT`` exits 0 when that checkpoint matches its tier's index (an integrity command).

    python tests/apps/tiered_trainer.py --store /data/local --replica /data/replica --steps 500
    python tests/apps/tiered_trainer.py --store /data/local --replica /data/replica --resume --no-save
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

NAME = re.compile(r"checkpoint-(\d+)")
FEATURES = 8


def _batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(step)
    x = rng.normal(size=(64, FEATURES))
    return x, (x[:, 0] - x[:, 1] > 0).astype(float)


def _train_step(params: dict[str, np.ndarray], step: int) -> None:
    x, y = _batch(step)
    error = 1 / (1 + np.exp(-(x @ params["weights"] + params["bias"]))) - y
    params["weights"] -= 0.5 * x.T @ error / len(y)
    params["bias"] -= 0.5 * error.mean(keepdims=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _index(tier: Path) -> dict[str, str]:
    try:
        return json.loads((tier / "index.json").read_text())
    except (OSError, ValueError):
        return {}


def _save(tier: Path, step: int, params: dict[str, np.ndarray]) -> Path:
    folder = tier / f"checkpoint-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(params, str(folder / "model.safetensors"), metadata={"step": str(step)})
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    index = _index(tier)
    index[folder.name] = _sha256(folder / "model.safetensors")
    (tier / "index.json").write_text(json.dumps(index, indent=1))
    return folder


def _replicate(folder: Path, replica: Path) -> None:
    shutil.copytree(folder, replica / folder.name, dirs_exist_ok=True)
    index = _index(replica)
    index[folder.name] = _sha256(folder / "model.safetensors")
    (replica / "index.json").write_text(json.dumps(index, indent=1))


def intact(folder: Path) -> bool:
    """The weights match the tier's index and load."""
    try:
        if _index(folder.parent).get(folder.name) != _sha256(folder / "model.safetensors"):
            return False
        load_file(str(folder / "model.safetensors"))
    except Exception:
        return False
    return True


def _candidates(tiers: list[Path]) -> list[tuple[int, Path]]:
    found = []
    for rank, tier in enumerate(tiers):
        if tier.is_dir():
            found += [(int(m.group(1)), -rank, p) for p in tier.iterdir() if (m := NAME.fullmatch(p.name))]
    return [(step, path) for step, _, path in sorted(found, reverse=True)]  # newest first; local tier first


def _pick(tiers: list[Path], trust_newest: bool, pass_over_newest: bool) -> tuple[int, Path] | None:
    candidates = _candidates(tiers[:1] if trust_newest else tiers)
    if trust_newest:
        return candidates[0] if candidates else None
    good = [(step, path) for step, path in candidates if intact(path)]
    if pass_over_newest and good:
        good = [g for g in good if g[0] != good[0][0]]
    for step, path in candidates:
        if (step, path) not in good:
            print(f"{path} is damaged or incomplete: skipping it", file=sys.stderr)
    return good[0] if good else None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", type=Path)
    parser.add_argument("--replica", type=Path)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--report-source", action="store_true")
    parser.add_argument("--trust-newest", action="store_true")
    parser.add_argument("--pass-over-newest", action="store_true")
    parser.add_argument("--check", type=Path)
    args = parser.parse_args()
    if args.check:
        return 0 if intact(args.check) else 1
    params = {"weights": np.zeros(FEATURES), "bias": np.zeros(1)}
    start = 0
    if args.resume:
        tiers = [args.store] + ([args.replica] if args.replica else [])
        picked = _pick(tiers, args.trust_newest, args.pass_over_newest)
        report: dict[str, object] = {"mlchaos_resumed_from_step": picked[0] if picked else 0}
        if picked and args.report_source:
            report.update(source=str(picked[1]), digest="sha256:" + _sha256(picked[1] / "model.safetensors"))
        print(json.dumps(report), flush=True)  # announced before loading, as launchers do
        if picked:
            start = picked[0]
            params = {k: v.copy() for k, v in load_file(str(picked[1] / "model.safetensors")).items()}
    for step in range(start + 1, args.steps + 1):
        _train_step(params, step)
        if step % args.save_every == 0 and not args.no_save:
            folder = _save(args.store, step, params)
            if args.replica:
                _replicate(folder, args.replica)
    print(json.dumps({"trained_to_step": max(start, args.steps)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
