"""What a checkpoint's own bytes say about whether it is whole, without running the trainer.

When a trainer skips a checkpoint, the stage must know whether that checkpoint was really damaged
before the fault. Without an integrity command, it gathers the evidence a checkpoint carries:

- digests it declares: a manifest (``manifest.json``, ``checksums.json``...) or sum file
  (``SHA256SUMS``, ``*.sha256``, ``*.md5``) inside it, or a ``<checkpoint>.sha256`` beside a file one;
- formats it can open cheaply and without running code: zip archives (``torch.save``, ``.keras``,
  ``.npz``: every member's CRC), safetensors (header against size), ``.npy`` (shape against size),
  pickles (walked opcode by opcode, never loaded), JSON;
- the checkpoints beside it: a binary file much shorter than the same file in every sibling, or a file
  every sibling holds and it lacks, is what a save cut short leaves.

The outcome is one of ``damaged`` (proof: a digest that does not match, a cut-short archive, a file
shorter than its header says), ``verified`` (every content file matched a declared digest or its own
CRCs) or ``unverified`` (readable, consistent as far as it goes, but nothing proves its content).

Example::

    evidence = assess(store.fs, store.join("step-400"), [store.join("step-300"), store.join("step-500")])
    evidence.state, evidence.detail   # ('damaged', 'model.pkl does not match the sha256 in manifest.json')
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

State = Literal["damaged", "verified", "unverified"]

# Hex digest length -> algorithm, for sum files and manifests that do not name theirs.
BY_LENGTH = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}
ALGORITHMS = ("sha256", "sha512", "sha1", "md5", "blake2b")
MANIFEST_NAME = re.compile(r"(manifest|checksum|digest|hashes|sums)[^/]*\.json$", re.I)
SUM_FILE = re.compile(r"(^|/)([A-Z0-9]*SUMS|checksums?\.txt|[^/]*\.(sha256|sha512|sha1|md5))$", re.I)
SIDECAR_SUFFIXES = (".sha256", ".sha512", ".sha1", ".md5")
# Files whose size varies from step to step (logs, states, configs): never judged by their siblings' size.
TEXT_SUFFIXES = (".json", ".jsonl", ".txt", ".yaml", ".yml", ".log", ".csv", ".md", ".toml", ".cfg", ".ini")
SHORT_FRACTION = 0.95  # shorter than this share of the size every sibling agrees on: cut short
MAX_WALKED_PICKLE = 256 * 1024 * 1024  # pickletools holds each argument in memory: larger pickles are not walked
MAX_PARSED_JSON = 16 * 1024 * 1024
ZIP_MAGIC = b"PK\x03\x04"
NPY_MAGIC = b"\x93NUMPY"


@dataclass
class Evidence:
    """What the bytes of one checkpoint show."""

    state: State
    findings: list[str] = field(default_factory=list)
    verified_files: list[str] = field(default_factory=list)

    @property
    def detail(self) -> str:
        return "; ".join(self.findings) or "readable; nothing in it proves or disproves its content"

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "detail": self.detail, "verified_files": self.verified_files}


@dataclass
class _Probe:
    damage: list[str] = field(default_factory=list)
    verified: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def _listing(fs: Any, path: str) -> dict[str, int]:
    """Relative name -> size of every file of a checkpoint ('.' for a file checkpoint)."""
    base = path.rstrip("/")
    if not fs.isdir(base):
        return {".": int(fs.size(base))}
    return {posixpath.relpath(f, base): int(fs.size(f)) for f in sorted(fs.find(base))}


def _full(path: str, rel: str) -> str:
    return path.rstrip("/") if rel == "." else posixpath.join(path.rstrip("/"), rel)


def _name(path: str, rel: str) -> str:
    return posixpath.basename(path.rstrip("/")) if rel == "." else rel


def assess(fs: Any, path: str, siblings: list[str], check: Any = None) -> Evidence:
    """The evidence the checkpoint at ``path`` carries about itself and against ``siblings`` (other
    checkpoints of the same store). ``check`` is called between chunks (the kill switch)."""
    files = _listing(fs, path)
    if not files:
        return Evidence("damaged", ["holds no files"])
    probe = _Probe()
    declared = _declared_digests(fs, path, files)
    manifests = {m for _, _, m in declared.values()}
    for rel, (algorithm, want, manifest) in declared.items():
        if rel not in files:
            probe.damage.append(f"lacks {rel}, which {manifest} lists")
        elif _hash(fs, _full(path, rel), algorithm, check) != want:
            probe.damage.append(f"{_name(path, rel)} does not match the {algorithm} in {manifest}")
        else:
            probe.verified.add(rel)
    for rel, size in files.items():
        if rel not in manifests:
            _check_format(fs, _full(path, rel), _name(path, rel), rel, size, probe, check)
    probe.damage += _against_siblings(fs, path, files, siblings)
    if probe.damage:
        return Evidence("damaged", probe.damage)
    content = [rel for rel in files if rel not in manifests and not SUM_FILE.search(rel)
               and not _name(path, rel).lower().endswith(TEXT_SUFFIXES)]
    verified = sorted(probe.verified)
    if content and all(rel in probe.verified for rel in content):
        return Evidence("verified", [f"every content file matches its own digest or CRCs ({', '.join(verified)})"],
                        verified)
    unproven = [_name(path, rel) for rel in content if rel not in probe.verified]
    findings = probe.notes + ([f"nothing proves the content of {', '.join(unproven[:5])}"] if unproven else [])
    return Evidence("unverified", findings, verified)


def digest_names(reported: str, checkpoint_digest: str, fs: Any, path: str) -> bool:
    """Does a digest a trainer reported name the checkpoint at ``path``? mlchaos's own checkpoint digest
    (``blake3:<hex>``, or the bare hex), or ``<algorithm>:<hex>`` / a bare sha256 or md5 of the file,
    or of one file of a folder (the weights the trainer checked)."""
    if reported.strip().lower() in (checkpoint_digest, checkpoint_digest.removeprefix("blake3:")):
        return True
    parsed = _normalise(reported)
    if parsed is None:
        return False
    algorithm, want = parsed
    files = _listing(fs, path)
    return any(_hash(fs, _full(path, rel), algorithm, None) == want for rel in files)


# -- declared digests -------------------------------------------------------------------------------
def _normalise(value: Any) -> tuple[str, str] | None:
    """'sha256:<hex>' or a bare hex digest -> (algorithm, hex); None when it is not one."""
    if not isinstance(value, str):
        return None
    algorithm, _, hexpart = value.strip().lower().rpartition(":")
    if not re.fullmatch(r"[0-9a-f]+", hexpart):
        return None
    if algorithm in ALGORITHMS:
        return algorithm, hexpart
    guessed = BY_LENGTH.get(len(hexpart))
    return (guessed, hexpart) if guessed and not algorithm else None


def _entry_digest(entry: Any) -> tuple[str, str] | None:
    if isinstance(entry, dict):
        for algorithm in ALGORITHMS:
            if isinstance(entry.get(algorithm), str) and (found := _normalise(entry[algorithm])):
                return algorithm, found[1]
        return _normalise(entry.get("digest") or entry.get("hash") or entry.get("checksum"))
    return _normalise(entry)


def _from_json(data: Any, files: dict[str, int], manifest: str) -> dict[str, tuple[str, str]]:
    """The digests a JSON manifest declares, by relative file name."""
    found: dict[str, tuple[str, str]] = {}
    if isinstance(data, dict):
        top = _entry_digest({k: v for k, v in data.items() if k in ALGORITHMS or k == "digest"})
        others = [rel for rel in files if rel != manifest]
        if top and len(others) == 1:  # {"sha256": ...} beside exactly one file: that file's digest
            found[others[0]] = top
        listing = data.get("files", data)
        if isinstance(listing, dict):
            for name, entry in listing.items():
                if _file_name(name, files) and (digest := _entry_digest(entry)):
                    found[name.removeprefix("./")] = digest
        data = listing
    if isinstance(data, list):
        for entry in data:
            if isinstance(entry, dict):
                name = entry.get("path") or entry.get("file") or entry.get("name") or entry.get("filename")
                if _file_name(name, files) and (digest := _entry_digest(entry)):
                    found[name.removeprefix("./")] = digest
    return found


def _file_name(name: Any, files: dict[str, int]) -> bool:
    """A key that names a file (one of the checkpoint's, or with an extension): a run id that happens to
    look like a digest is not a file's digest."""
    if not isinstance(name, str):
        return False
    name = name.removeprefix("./")
    return name in files or bool(re.fullmatch(r"[\w.\-/]*\w\.[A-Za-z0-9]{1,12}", name))


def _from_sums(text: str) -> dict[str, tuple[str, str]]:
    """``<hex>  <name>`` lines (sha256sum, md5sum) -> digests by name."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(r"\s*([0-9a-fA-F]{32,128})\s+\*?(.+?)\s*", line)
        if match and (algorithm := BY_LENGTH.get(len(match.group(1)))):
            found[match.group(2).removeprefix("./")] = (algorithm, match.group(1).lower())
    return found


def _read_small(fs: Any, path: str, limit: int = MAX_PARSED_JSON) -> str | None:
    try:
        if int(fs.size(path)) > limit:
            return None
        with fs.open(path, "rb") as handle:
            return bytes(handle.read()).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _declared_digests(fs: Any, path: str, files: dict[str, int]) -> dict[str, tuple[str, str, str]]:
    """rel -> (algorithm, hex, the file that declared it)."""
    if "." in files:
        return _sidecar_digest(fs, path)
    declared: dict[str, tuple[str, str, str]] = {}
    for rel in files:
        text = None
        if MANIFEST_NAME.search(rel) or SUM_FILE.search(rel):
            text = _read_small(fs, _full(path, rel))
        if text is None:
            continue
        if rel.lower().endswith(".json"):
            try:
                entries = _from_json(json.loads(text), files, rel)
            except ValueError:
                continue  # a manifest that does not parse is judged as a JSON file below
        else:
            entries = _from_sums(text)
        folder = posixpath.dirname(rel)
        for name, digest in entries.items():
            declared[posixpath.normpath(posixpath.join(folder, name))] = (*digest, rel)
    return declared


def _sidecar_digest(fs: Any, path: str) -> dict[str, tuple[str, str, str]]:
    """A file checkpoint: the sum file beside it (``step-400.pt.sha256``)."""
    for suffix in SIDECAR_SUFFIXES:
        sidecar = path.rstrip("/") + suffix
        text = _read_small(fs, sidecar) if fs.exists(sidecar) else None
        digest = next(iter(_from_sums(text).values()), None) if text else None
        if digest:
            return {".": (*digest, posixpath.basename(sidecar))}
    return {}


def _hash(fs: Any, path: str, algorithm: str, check: Any) -> str:
    digest = hashlib.new(algorithm)
    with fs.open(path, "rb") as handle:
        while chunk := handle.read(8 * 1024 * 1024):
            if check is not None:
                check()
            digest.update(chunk)
    return digest.hexdigest()


# -- formats ----------------------------------------------------------------------------------------
def _check_format(fs: Any, full: str, name: str, rel: str, size: int, probe: _Probe, check: Any) -> None:
    lower = name.lower()
    try:
        with fs.open(full, "rb") as handle:
            head = bytes(handle.read(8))
    except OSError as exc:
        probe.damage.append(f"{name} cannot be read: {exc}")
        return
    # An empty file proves nothing by itself (marker files are empty): its format, or its siblings, may.
    if head.startswith(ZIP_MAGIC):
        _check_zip(fs, full, name, rel, probe)
    elif lower.endswith(".safetensors"):
        _check_safetensors(fs, full, name, size, probe)
    elif head.startswith(NPY_MAGIC):
        _check_npy(fs, full, name, size, probe)
    elif lower.endswith((".pkl", ".pickle")) or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5):
        _check_pickle(fs, full, name, size, probe)
    elif lower.endswith(".json") and size <= MAX_PARSED_JSON:
        text = _read_small(fs, full)
        try:
            json.loads(text or "")
        except ValueError:
            probe.damage.append(f"{name} is not valid JSON (cut short?)")


def _check_zip(fs: Any, full: str, name: str, rel: str, probe: _Probe) -> None:
    """torch.save, .keras and .npz files are zip archives: every member's CRC-32 checks its content."""
    try:
        with fs.open(full, "rb") as handle, zipfile.ZipFile(handle) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError, NotImplementedError) as exc:
        probe.damage.append(f"{name} is not a whole zip archive ({exc})")
        return
    if bad is not None:
        probe.damage.append(f"member {bad} of {name} fails its CRC")
    else:
        probe.verified.add(rel)


def _check_safetensors(fs: Any, full: str, name: str, size: int, probe: _Probe) -> None:
    """8 bytes of header length, a JSON header, then the tensors: the last tensor's end is the file's."""
    try:
        with fs.open(full, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > size - 8:
                probe.damage.append(f"{name} holds {size} bytes, fewer than its safetensors header alone ({length})")
                return
            header = json.loads(handle.read(length))
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as exc:
        probe.damage.append(f"{name} has no readable safetensors header ({exc})")
        return
    if 8 + length + end != size:
        probe.damage.append(f"{name} holds {size} bytes where its safetensors header says {8 + length + end}")
    else:
        probe.notes.append(f"{name}: safetensors header and size agree")


def _check_npy(fs: Any, full: str, name: str, size: int, probe: _Probe) -> None:
    import numpy as np
    from numpy.lib import format as npy

    try:
        with fs.open(full, "rb") as handle:
            version = npy.read_magic(handle)
            shape, _, dtype = (npy.read_array_header_1_0(handle) if version == (1, 0)
                               else npy.read_array_header_2_0(handle))
            start = handle.tell()
    except (ValueError, OSError, SyntaxError) as exc:
        probe.damage.append(f"{name} has no readable .npy header ({exc})")
        return
    if dtype.hasobject:
        return
    expected = start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if expected != size:
        probe.damage.append(f"{name} holds {size} bytes where its .npy header says {expected}")
    else:
        probe.notes.append(f"{name}: .npy header and size agree")


def _check_pickle(fs: Any, full: str, name: str, size: int, probe: _Probe) -> None:
    """Walk the opcodes to STOP without executing any: a save cut short ends before it."""
    import pickletools

    if size > MAX_WALKED_PICKLE:
        return
    try:
        with fs.open(full, "rb") as handle:
            for opcode, _, _ in pickletools.genops(handle):
                if opcode.name == "STOP":
                    break
            else:
                raise ValueError("no STOP opcode")
    except Exception as exc:  # genops raises ValueError, EOFError, struct.error... on a cut stream
        probe.damage.append(f"{name} is not a whole pickle stream ({type(exc).__name__}: {exc})")
        return
    probe.notes.append(f"{name}: a whole pickle stream")


# -- siblings ---------------------------------------------------------------------------------------
def _against_siblings(fs: Any, path: str, files: dict[str, int], siblings: list[str]) -> list[str]:
    """A binary file much shorter than the size every sibling agrees on, or a file all (at least two)
    siblings hold and this checkpoint lacks: what a save cut short leaves."""
    listings = []
    for sibling in siblings:
        try:
            listings.append(_listing(fs, sibling))
        except OSError:
            continue
    listings = [s for s in listings if ("." in s) == ("." in files)]
    if not listings:
        return []
    damage = []
    for rel in sorted({rel for s in listings for rel in s}):
        sizes = {s[rel] for s in listings if rel in s}
        if rel not in files:
            if len(listings) >= 2 and all(rel in s for s in listings):
                damage.append(f"lacks {rel}, which the {len(listings)} checkpoints beside it hold")
            continue
        if _name(path, rel).lower().endswith(TEXT_SUFFIXES) or len(sizes) != 1:
            continue
        (usual,) = sizes
        if files[rel] < SHORT_FRACTION * usual:
            damage.append(f"{_name(path, rel)} holds {files[rel]} bytes where the checkpoints beside it hold {usual}")
    return damage
