"""What a checkpoint's own bytes say (targets/checkpoint_evidence.py), kind by kind: each with an intact
member and a damaged one, written by the real libraries (numpy, safetensors, pickle, hashlib)."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import fsspec
import numpy as np
import pytest
from safetensors.numpy import save_file

from mlchaos_steps.targets.checkpoint_evidence import assess

FS = fsspec.filesystem("file")


def _state(path: Path, siblings: list[Path] | None = None) -> tuple[str, str]:
    evidence = assess(FS, str(path), [str(s) for s in siblings or []])
    return evidence.state, evidence.detail


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path: Path, at: int = -3) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    return {"w": np.random.default_rng(seed).normal(size=(32, 32)), "b": np.zeros(32)}


def test_a_manifest_beside_one_file_verifies_it_and_catches_a_flipped_byte(tmp_path: Path) -> None:
    ckpt = tmp_path / "step-1"
    ckpt.mkdir()
    payload = pickle.dumps(_weights())
    (ckpt / "model.pkl").write_bytes(payload)
    (ckpt / "manifest.json").write_text(json.dumps({"step": 1, "sha256": hashlib.sha256(payload).hexdigest()}))
    assert _state(ckpt)[0] == "verified"
    _flip(ckpt / "model.pkl", at=len(payload) // 2)  # still a whole pickle: only the digest shows it
    assert _state(ckpt) == ("damaged", "model.pkl does not match the sha256 in manifest.json")


def test_a_manifest_listing_files_and_a_missing_one(tmp_path: Path) -> None:
    ckpt = tmp_path / "step-1"
    ckpt.mkdir()
    files = {"a.bin": b"a" * 100, "b.bin": b"b" * 100}
    for name, data in files.items():
        (ckpt / name).write_bytes(data)
    listing = [{"path": n, "sha256": "sha256:" + hashlib.sha256(d).hexdigest()} for n, d in files.items()]
    (ckpt / "checksums.json").write_text(json.dumps({"run_id": "0123456789abcdef0123456789abcdef",
                                                     "files": listing}))
    assert _state(ckpt)[0] == "verified"  # the run id that looks like an md5 is not a file's digest
    (ckpt / "b.bin").unlink()
    assert _state(ckpt) == ("damaged", "lacks b.bin, which checksums.json lists")


def test_a_sum_file_inside_and_a_sidecar_beside_a_file_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "step-1"
    ckpt.mkdir()
    (ckpt / "weights.bin").write_bytes(b"\x01" * 4096)
    (ckpt / "SHA256SUMS").write_text(f"{hashlib.sha256(b'x' * 4096).hexdigest()}  weights.bin\n")
    assert _state(ckpt) == ("damaged", "weights.bin does not match the sha256 in SHA256SUMS")
    single = tmp_path / "step-2.bin"
    single.write_bytes(b"\x02" * 4096)
    Path(f"{single}.md5").write_text(hashlib.md5(b"\x02" * 4096).hexdigest() + " *step-2.bin\n")
    assert _state(single)[0] == "verified"
    _flip(single)
    assert _state(single) == ("damaged", "step-2.bin does not match the md5 in step-2.bin.md5")


def test_zip_archives_are_checked_member_by_member(tmp_path: Path) -> None:
    ckpt = tmp_path / "step-1"
    ckpt.mkdir()
    np.savez(ckpt / "optimizer.npz", **_weights())
    assert _state(ckpt)[0] == "verified"  # every member's CRC-32 matched
    _flip(ckpt / "optimizer.npz", at=200)
    state, detail = _state(ckpt)
    assert state == "damaged" and "optimizer.npz" in detail
    np.savez(ckpt / "optimizer.npz", **_weights())
    _cut(ckpt / "optimizer.npz")
    assert _state(ckpt)[1].startswith("optimizer.npz is not a whole zip archive")


def test_safetensors_header_against_size(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint-1"
    ckpt.mkdir()
    save_file(_weights(), str(ckpt / "model.safetensors"))
    state, detail = _state(ckpt)
    assert state == "unverified" and "safetensors header and size agree" in detail
    _flip(ckpt / "model.safetensors")  # a flipped weight: well-formed, nothing proves or disproves it
    assert _state(ckpt)[0] == "unverified"
    _cut(ckpt / "model.safetensors")
    state, detail = _state(ckpt)
    assert state == "damaged" and "where its safetensors header says" in detail


def test_npy_shape_against_size(tmp_path: Path) -> None:
    ckpt = tmp_path / "step-1"
    ckpt.mkdir()
    np.save(ckpt / "w.npy", np.ones((64, 64)))
    assert _state(ckpt)[0] == "unverified"
    _cut(ckpt / "w.npy")
    state, detail = _state(ckpt)
    assert state == "damaged" and "where its .npy header says" in detail


def test_a_pickle_is_walked_to_its_stop_and_never_loaded(tmp_path: Path) -> None:
    ckpt = tmp_path / "step-1"
    ckpt.mkdir()
    marker = tmp_path / "ran"
    # Loading this pickle would run code: walking its opcodes must not.
    (ckpt / "state.pkl").write_bytes(pickle.dumps(_Boom(str(marker))))
    assert _state(ckpt)[0] == "unverified"
    assert not marker.exists()
    _cut(ckpt / "state.pkl")
    state, detail = _state(ckpt)
    assert state == "damaged" and "is not a whole pickle stream" in detail
    assert not marker.exists()


class _Boom:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def test_half_written_json_is_damage(tmp_path: Path) -> None:
    ckpt = tmp_path / "step-1"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 1, "log_history": [{"loss": 1.0}] * 50}))
    (ckpt / "weights.bin").write_bytes(b"\x00" * 1024)
    assert _state(ckpt)[0] == "unverified"
    _cut(ckpt / "trainer_state.json")
    assert _state(ckpt) == ("damaged", "trainer_state.json is not valid JSON (cut short?)")


@pytest.fixture
def three(tmp_path: Path) -> list[Path]:
    """Three checkpoints of a trainer whose files have no format the stage can open."""
    out = []
    for step in (1, 2, 3):
        ckpt = tmp_path / f"step-{step}"
        ckpt.mkdir()
        (ckpt / "weights.bin").write_bytes(bytes([step]) * 10_000)
        (ckpt / "optim.bin").write_bytes(bytes([step]) * 20_000)
        (ckpt / "log.txt").write_text("loss\n" * step)
        out.append(ckpt)
    return out


def test_siblings_show_a_file_cut_short(three: list[Path]) -> None:
    middle = three[1]
    assert _state(middle, [three[0], three[2]])[0] == "unverified"
    (middle / "weights.bin").write_bytes(b"\x02" * 9_000)
    assert _state(middle, [three[0], three[2]]) == (
        "damaged", "weights.bin holds 9000 bytes where the checkpoints beside it hold 10000")


def test_siblings_show_a_missing_file_but_not_text_that_grows(three: list[Path]) -> None:
    middle = three[1]
    (middle / "log.txt").write_text("")  # text varies from step to step: never judged by size
    assert _state(middle, [three[0], three[2]])[0] == "unverified"
    (middle / "optim.bin").unlink()
    assert _state(middle, [three[0], three[2]]) == ("damaged", "lacks optim.bin, which the 2 checkpoints beside "
                                                               "it hold")
    assert _state(middle, [three[0]])[0] == "unverified"  # one sibling is not enough to call a file missing


def test_siblings_that_disagree_prove_nothing(three: list[Path]) -> None:
    (three[2] / "weights.bin").write_bytes(b"\x03" * 20_000)  # the model grew at step 3
    (three[1] / "weights.bin").write_bytes(b"\x02" * 5_000)
    assert _state(three[1], [three[0], three[2]])[0] == "unverified"
