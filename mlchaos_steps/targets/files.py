"""Copying bytes between fsspec file systems while computing their sha256, in one pass."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

CHUNK = 8 * 1024 * 1024


def copy_with_digest(src_fs: Any, src: str, dst_fs: Any, dst: str) -> tuple[str, int]:
    """Copy one file and return (sha256, bytes). Hashing overlaps writing (both release the GIL)."""
    digest = hashlib.sha256()
    size = 0
    with ThreadPoolExecutor(max_workers=1) as hasher, src_fs.open(src, "rb") as reader, \
            dst_fs.open(dst, "wb") as writer:
        pending = None
        while chunk := reader.read(CHUNK):
            if pending is not None:
                pending.result()
            pending = hasher.submit(digest.update, chunk)
            writer.write(chunk)
            size += len(chunk)
        if pending is not None:
            pending.result()
    return digest.hexdigest(), size


def file_digest(fs: Any, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as reader:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
