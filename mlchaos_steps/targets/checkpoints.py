"""Checkpoint stores through fsspec: listing, confinement, digests, quarantine and damage.

A store is a folder (any fsspec URL); each direct child whose name matches the stage's pattern is
one checkpoint, a file or a folder. Quarantine lives inside the store (``.mlchaos-quarantine/``) so
that on a local disk it is a rename on the same file system: a multi-GB checkpoint costs no copy.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlchaos_steps import config
from mlchaos_steps.errors import InfrastructureError, RestoreError, SafetyError, SpecError
from mlchaos_steps.targets.files import CHUNK, clone_or_copy, file_digest, hasher, hexdigest

QUARANTINE_DIR = ".mlchaos-quarantine"
# Folders that are never a checkpoint store, even when someone points at them.
FORBIDDEN_ROOTS = {"/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/root", "/run", "/sbin",
                   "/sys", "/usr", "/var", "/home", "/tmp"}
# System folders: nothing under them is a checkpoint store either.
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin",
                "/sys", "/usr", "/snap", "/var/lib/dpkg", "/var/lib/apt", "/var/log", "/var/cache", "/var/spool",
                "/var/mail", "/var/backups", "/var/run", "/var/lock")


def _refused_local_path(path: str) -> bool:
    path = posixpath.normpath("/" + path.lstrip("/"))
    return path in FORBIDDEN_ROOTS or any(path == t or path.startswith(t + "/") for t in SYSTEM_TREES)


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint: a direct child of the store."""

    name: str
    step: int
    path: str
    is_dir: bool


def siblings(found: list[Checkpoint], checkpoint: Checkpoint, each_side: int = 2) -> list[str]:
    """The paths of the checkpoints next to ``checkpoint`` in ``found`` (sorted by step), up to
    ``each_side`` older and newer: what a checkpoint's files are compared with."""
    index = next(i for i, c in enumerate(found) if c.path == checkpoint.path)
    return [c.path for c in found[max(0, index - each_side): index] + found[index + 1: index + 1 + each_side]]


def check_store_url(url: str, field: str = "spec.store") -> None:
    """Static checks, done when the spec is built: one file system, no '..', not a system folder."""
    if "::" in url:
        raise SafetyError(field, f"{url!r} chains file systems (simplecache::, filecache::...): a cache layer "
                                 "hides where the stage really writes; give the store's own URL")
    protocol, _, path = url.partition("://") if "://" in url else ("file", "", url)
    if re.match(r"[^/@]+:[^/@]*@", path):
        raise SafetyError(field, "holds credentials: give them to the file system through its environment or "
                                 "fsspec configuration, never in the URL (it is written to the ledger and journals)")
    if "\0" in url:
        raise SafetyError(field, "contains a NUL byte: give the store's real path")
    if ".." in path.replace("\\", "/").split("/"):
        raise SafetyError(field, f"{url!r} contains '..': give the store's real path, without '..'")
    if protocol in ("file", "local") and _refused_local_path(path):
        raise SafetyError(field, f"{url!r} is a system folder (or under one), which is not allowed: point it at "
                                 "the folder that holds your checkpoints")
    if not path.strip("/"):
        raise SafetyError(field, f"{url!r} is not allowed: point it at the folder that holds your checkpoints")


def _files(fs: Any, path: str) -> list[str]:
    if fs.isdir(path):
        return sorted(f for f in fs.find(path) if posixpath.basename(f) != "registered_model_meta")
    return [path]


class CheckpointStore:
    """A checkpoint store behind an fsspec URL.

    Example::

        store = CheckpointStore("file:///data/ckpts")
        newest = store.checkpoints(r"step-(\\d+)")[-1]
    """

    def __init__(self, url: str, field: str = "spec.store"):
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        self.field = field  # the spec field that names this store, in every error about it
        check_store_url(url, field)
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise SpecError(self.field, f"cannot open {url!r}: {exc}") from None
        self.url = url
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/") or "/"
        allowed = config.allowed_paths()
        if self.local:
            real = os.path.realpath(self.root)
            if _refused_local_path(real) or real == str(Path.home()):
                raise SafetyError(self.field, f"{url!r} resolves to {real}, which is not allowed: "
                                                "point it at the folder that holds your checkpoints")
            if allowed is not None and not any(Path(real).is_relative_to(a) for a in allowed.paths):
                raise SafetyError(self.field, f"{real} is outside MLCHAOS_ALLOWED_PATHS: add it there or "
                                                "choose a store inside the allowed paths")
            self.real_root = real
        elif allowed is not None and not any(url.rstrip("/") == p or url.startswith(p + "/") for p in allowed.urls):
            raise SafetyError(self.field, f"{url} is outside MLCHAOS_ALLOWED_PATHS: add its URL prefix there "
                                            "(e.g. s3://bucket/checkpoints) or choose a store inside it")
        if not self.fs.isdir(self.root):
            raise SpecError(self.field, f"{url!r} is not a folder: point it at the folder that holds your "
                                          "checkpoints")

    def join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    # -- reading ----------------------------------------------------------------------------------
    def checkpoints(self, pattern: str, field: str = "spec.pattern") -> list[Checkpoint]:
        """Direct children whose names fully match ``pattern`` (the spec's ``field``), oldest first by step."""
        regex = re.compile(pattern)
        found = []
        for info in self.fs.ls(self.root, detail=True):
            name = posixpath.basename(info["name"].rstrip("/"))
            match = regex.fullmatch(name)
            if not match or name == QUARANTINE_DIR:
                continue
            path = self.join(name)
            self.check_confined(path)
            if not match.group(1) or not match.group(1).isdigit():
                raise SpecError(field, f"group 1 of {pattern!r} captured {match.group(1)!r} in {name!r}: it "
                                                "must capture the step number's digits, e.g. 'step-(\\d+)'")
            found.append(Checkpoint(name, int(match.group(1)), path, info["type"] == "directory"))
        return sorted(found, key=lambda c: (c.step, c.name))

    def check_confined(self, path: str) -> None:
        """Refuse a checkpoint that is, or holds, a symlink leading outside the store."""
        if not self.local:
            return
        candidates = [path]
        if os.path.isdir(path) and not os.path.islink(path):
            for folder, dirs, files in os.walk(path):
                candidates += [os.path.join(folder, n) for n in dirs + files]
        for candidate in candidates:
            if os.path.islink(candidate):
                target = os.path.realpath(candidate)
                if not (target == self.real_root or target.startswith(self.real_root + os.sep)):
                    raise SafetyError(
                        self.field,
                        f"{candidate} is a symlink to {target}, outside the store {self.real_root}: "
                        "chaos stays inside the store; remove the link or point the store elsewhere",
                    )

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(path))

    def files(self, path: str) -> list[str]:
        """Every file of a checkpoint (itself, for a file checkpoint), sorted."""
        return _files(self.fs, path)

    def digest(self, path: str, check: Any = None) -> str:
        """One digest over a checkpoint: its files' relative names and contents."""
        return self.digest_with(self.fs, path, check)

    @staticmethod
    def digest_with(fs: Any, path: str, check: Any = None) -> str:
        """The checkpoint digest of ``path`` on any fsspec file system (a mirror the trainer loaded)."""
        outer = hasher()
        base = path.rstrip("/")
        for file in _files(fs, path):
            rel = posixpath.relpath(file, base) if file != base else "."
            outer.update(f"{rel}\0{file_digest(fs, file, check)}\n".encode())
        return hexdigest(outer)

    def size_bytes(self, path: str) -> int:
        return sum(int(self.fs.size(f)) for f in self.files(path))

    # -- changing ---------------------------------------------------------------------------------
    def quarantine_path(self, run_dir: str, name: str) -> str:
        return self.join(QUARANTINE_DIR, run_dir, name)

    def make_quarantine(self, run_dir: str) -> None:
        """Create ``.mlchaos-quarantine/<run>/`` as real folders: a link planted there is never followed."""
        folder = self.join(QUARANTINE_DIR)
        if not self.local:
            self.fs.makedirs(self.join(QUARANTINE_DIR, run_dir), exist_ok=True)
            return
        for path in (folder, self.join(QUARANTINE_DIR, run_dir)):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
            if os.path.islink(path) or not os.path.isdir(path):
                raise SafetyError(self.field, f"{path} is a link or not a folder: mlchaos creates its "
                                                "quarantine itself; remove it and run the stage again")

    def signature(self, path: str) -> list[list[Any]]:
        """What a checkpoint is right now, read without following links: every entry's type, size,
        mtime, inode (local stores) or its digest (elsewhere). A link inside the store that leaves the
        checkpoint, or a checkpoint that is itself a link, is refused."""
        if not self.local:
            return [[".", "digest", self.digest(path)]]
        base = path.rstrip("/")
        st = os.lstat(base)
        if os.path.islink(base):
            raise SafetyError(self.field, f"{base} is a symlink: chaos never breaks a link's target; point the "
                                            "stage at real checkpoints")
        # A folder's own mtime may change when it is renamed into quarantine (its '..' entry): its
        # entries say what it holds.
        entries: list[list[Any]] = [[".", st.st_mode, st.st_ino] if os.path.isdir(base)
                                    else [".", st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino]]
        if os.path.isdir(base):
            for folder, dirs, files in os.walk(base, followlinks=False):
                for name in sorted(dirs + files):
                    full = os.path.join(folder, name)
                    st = os.lstat(full)
                    rel = os.path.relpath(full, base)
                    entry: list[Any] = [rel, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino]
                    if os.path.islink(full):
                        target = os.path.realpath(full)
                        if not (target == base or target.startswith(base + os.sep)):
                            raise SafetyError(self.field, f"{full} links to {target}, outside its checkpoint "
                                                            f"{base}: remove the link or point the store elsewhere")
                        entry.append(os.readlink(full))
                    entries.append(entry)
        return entries

    def check_unchanged(self, path: str, recorded: list[list[Any]], what: str) -> None:
        """Refuse to act when ``path`` is no longer what ``signature`` recorded (time of check to time of use)."""
        try:
            now = self.signature(path)
        except FileNotFoundError:
            now = []
        if now != recorded:
            raise InfrastructureError(f"{what} changed since snapshot (re-saved, replaced or linked by someone "
                                      "else): nothing was moved; run the stage again once the store is quiet")
    def move(self, src: str, dst: str, expected_digest: str | None = None) -> None:
        """Move a checkpoint. Local: one rename. Elsewhere: copy, check the copy's digest, then delete."""
        self.fs.makedirs(posixpath.dirname(dst), exist_ok=True)
        if self.local:
            os.rename(src, dst)
            return
        self.fs.copy(src, dst, recursive=self.fs.isdir(src))
        if expected_digest is not None and self.digest(dst) != expected_digest:
            self.fs.rm(dst, recursive=True)
            raise InfrastructureError(f"the copy of {src} at {dst} does not match its digest: nothing was deleted")
        self.fs.rm(src, recursive=True)

    def remove(self, path: str) -> None:
        self.fs.rm(path, recursive=self.fs.isdir(path))

    def write_damaged(self, source: str, dest: str, mode: str, check: Any = None) -> dict[str, Any]:
        """Write a damaged copy of the checkpoint at ``source`` to ``dest``.

        ``truncate`` keeps the first half (at most 4 MiB) of the largest file; ``corrupt`` flips
        bytes spread through it. Other files of a folder checkpoint are reflinked where the file system
        can, else copied: never hard-linked, so nothing written to the damaged copy (a trainer that
        re-saves in place) can reach the quarantined original.
        """
        files = self.files(source)
        victim = max(files, key=lambda f: (int(self.fs.size(f)), f))
        base = source.rstrip("/")
        for file in files:
            rel = posixpath.relpath(file, base) if file != base else ""
            out = posixpath.join(dest, rel) if rel else dest
            self.fs.makedirs(posixpath.dirname(out), exist_ok=True)
            if file == victim:
                self._damage(file, out, mode, check)
            elif self.local:
                clone_or_copy(file, out, check)
            else:
                self.fs.copy(file, out)
        return {"damaged_file": posixpath.relpath(victim, base) if victim != base else posixpath.basename(base)}

    def _damage(self, src: str, dst: str, mode: str, check: Any = None) -> None:
        size = int(self.fs.size(src))
        with self.fs.open(src, "rb") as reader, self.fs.open(dst, "wb") as writer:
            if mode == "truncate":
                keep = min(size // 2, 4 * 1024 * 1024)
                writer.write(reader.read(keep))
                return
            # corrupt: same size, 64-byte runs inverted at eight places through the file
            offsets = {int(size * k / 9) for k in range(1, 9)} if size else set()
            position = 0
            while chunk := reader.read(CHUNK):
                if check is not None:
                    check()
                data = bytearray(chunk)
                for off in offsets:
                    for i in range(off, off + 64):
                        if position <= i < position + len(data):
                            data[i - position] ^= 0xFF
                writer.write(bytes(data))
                position += len(chunk)
        if size and mode == "corrupt" and self.digest(dst) == self.digest(src):
            raise RestoreError(f"corrupting {src} left it unchanged")
