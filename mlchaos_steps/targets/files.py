"""Digests of what mlchaos backs up, and copies that compute them in the same pass.

Digests are BLAKE3 (``blake3:<hex>``): cryptographic, and fast enough (about 4 GB/s on one core
here, against 1.7 GB/s for SHA-256) that checking a backup costs less than copying it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import blake3

CHUNK = 8 * 1024 * 1024
PREFIX = "blake3:"


def hasher() -> Any:
    return blake3.blake3()


def hexdigest(h: Any) -> str:
    return PREFIX + h.hexdigest()


def copy_with_digest(src_fs: Any, src: str, dst_fs: Any, dst: str) -> tuple[str, int]:
    """Copy one file and return (digest, bytes).

    Two reused buffers: while chunk i is written, a worker thread hashes it (both release the GIL)
    and chunk i+1 is read into the other buffer.
    """
    digest = hasher()
    size = 0
    buffers = [bytearray(CHUNK), bytearray(CHUNK)]
    with ThreadPoolExecutor(max_workers=1) as pool, src_fs.open(src, "rb") as reader, \
            dst_fs.open(dst, "wb") as writer:
        pending = None
        i = 0
        while True:
            view = memoryview(buffers[i % 2])
            n = reader.readinto(view)
            if pending is not None:
                pending.result()  # the other buffer is free again
            if not n:
                break
            chunk = view[:n]
            pending = pool.submit(digest.update, chunk)
            writer.write(chunk)
            size += n
            i += 1
    return hexdigest(digest), size


def file_digest(fs: Any, path: str, check: Any = None) -> str:
    """BLAKE3 of one file; ``check`` (the kill switch) runs between chunks."""
    digest = hasher()
    with fs.open(path, "rb") as reader:
        while chunk := reader.read(CHUNK):
            if check is not None:
                check()
            digest.update(chunk)
    return hexdigest(digest)


FICLONE = 0x40049409  # ioctl of Linux file systems that share extents copy-on-write (btrfs, xfs, ...)


def clone_or_copy(src: str, dst: str, check: Any = None) -> str:
    """Give ``dst`` the bytes of ``src`` without sharing an inode: a reflink where the file system offers
    one (copy-on-write, so a later write to either never reaches the other), else a plain copy.
    Returns ``reflink`` or ``copy``; ``check`` runs between chunks. Never a hard link: a trainer
    re-saving in place would write through it into the other file."""
    import fcntl

    with open(src, "rb") as reader, open(dst, "wb") as writer:
        try:
            fcntl.ioctl(writer.fileno(), FICLONE, reader.fileno())
            return "reflink"
        except OSError:
            pass
        while chunk := reader.read(CHUNK):
            if check is not None:
                check()  # the kill switch, between chunks: a large copy stops within a second
            writer.write(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return "copy"
