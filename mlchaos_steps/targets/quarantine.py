"""Replacing a file or folder of a store with a damaged copy, and putting the original back: what every
stage that breaks files needs (checkpoints, data batches).

The original is moved into the store's quarantine through the ledger (write-ahead, digest-checked on
stores without rename); a damaged copy is written beside the quarantine, its digest recorded, and only
then put in place, so restore can always tell the stage's own damage from what someone else wrote. On a
local disk a rename keeps what a file is (inode, size, mtime): restore recognises both the original and
the damaged copy by that, without reading them again; elsewhere by digest.

Example::

    replace(ctx, store, "quarantine-batch", victim, run_dir, {"seed": 7}, write_damage=corrupt)
    # restore, from the ledger alone:
    put_back(store, undo, is_own_damage=lambda digest: rewritten_is(store, undo, digest, corrupt))
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Callable
from typing import Any

from mlchaos_steps.core.context import PhaseContext, check_kill_switch
from mlchaos_steps.core.records import Action
from mlchaos_steps.errors import RestoreError
from mlchaos_steps.targets.checkpoints import CheckpointStore

# (source in quarantine, staging path) -> extra undo fields; writes the damaged copy at staging.
DamageWriter = Callable[[str, str], dict[str, Any]]
# The key of a restore result that names the stage's own damaged copy, set aside for removal after the phase.
DISCARD = "discard"


def replace(ctx: PhaseContext, store: CheckpointStore, kind: str, victim: dict[str, Any], run_dir: str,
            undo: dict[str, Any], write_damage: DamageWriter | None = None) -> Action:
    """Move ``victim`` (``path``, ``name``, ``digest``, ``on_disk`` as snapshot recorded them) into
    quarantine through the ledger, then put the damaged copy ``write_damage`` writes in its place (or
    nothing: a delete). ``undo`` holds what restore needs beyond the paths and digest."""
    quarantine = store.quarantine_path(run_dir, victim["name"])
    undo = {**undo, "store": store.url, "original": victim["path"], "quarantine": quarantine,
            "digest": victim["digest"], "on_disk": victim["on_disk"]}
    # Time of check to time of use: the victim must still be what snapshot recorded and digested.
    store.check_unchanged(victim["path"], victim["on_disk"], victim["name"])
    store.make_quarantine(run_dir)
    with ctx.destructive(kind, victim["path"], undo) as action:
        if store.exists(quarantine):
            raise RestoreError(f"{quarantine} already exists: restore run {ctx.run_key!r} first")
        store.move(victim["path"], quarantine, expected_digest=victim["digest"])
        if store.local:  # a rename keeps the inode: what moved must be what was checked
            store.check_unchanged(quarantine, victim["on_disk"], victim["name"])
        if write_damage is not None:
            staging = quarantine + ".damaged"
            detail = write_damage(quarantine, staging)
            # Local: what the damaged copy is on disk (a rename keeps it), instead of reading it all again
            # for a digest; restore recognises it by either.
            mark = ({"damaged_on_disk": store.signature(staging)} if store.local
                    else {"damaged_digest": store.digest(staging, check_kill_switch)})
            action.undo = {**undo, **detail, **mark, "placing": True}
            ctx.ledger.mark_action(action, action.state, undo=action.undo)
            store.move(staging, victim["path"])
    return action


def _unchanged(store: CheckpointStore, path: str, recorded: Any) -> bool:
    """Local stores: is ``path`` still exactly what was recorded on disk (entries, sizes, mtimes, inodes)?"""
    if not store.local or not recorded:
        return False
    try:
        return store.signature(path) == recorded
    except (OSError, ValueError):
        return False


def put_back(store: CheckpointStore, undo: dict[str, Any], is_own_damage: Callable[[str], bool]) -> dict[str, Any]:
    """Restore one replaced file or folder from the ledger's ``undo``; idempotent, and safe after a crash
    of any phase. ``is_own_damage(digest)``: whether what is at the original path now is the stage's own
    damaged copy (removed); anything else there is foreign and kept in quarantine as evidence."""
    started = time.perf_counter()
    original, quarantine, digest = undo["original"], undo["quarantine"], undo["digest"]
    staging, trash = quarantine + ".damaged", quarantine + ".removing"
    result: dict[str, Any] = {"original": original}
    _clear_leftovers(store, undo, staging, trash, result)
    if store.local and _unchanged(store, original, undo.get("damaged_on_disk")) \
            and _unchanged(store, quarantine, undo.get("on_disk")):
        # Both as this stage left them, inode for inode: no byte was written to either since (a write
        # changes size or mtime), so no digest to recompute. Two renames make the store whole; the damaged
        # copy (slow to delete when large: the kernel frees every block) is removed after the phase (see
        # ``discard``): the ledger records it, and ``restore --orphaned`` finishes it after a crash.
        store.move(original, trash)
        store.move(quarantine, original)
        whole_after_s = time.perf_counter() - started
        return {**result, "removed_own_damage": True, "verified_on_disk": True,
                "whole_after_s": round(whole_after_s, 6),
                DISCARD: {"store": store.url, "path": trash, "on_disk": undo["damaged_on_disk"]}}
    if store.exists(original):
        current = store.digest(original)
        if current == digest:
            if store.exists(quarantine):
                store.remove(quarantine)  # verified duplicate of what is back in place
            remove_empty_quarantine(store, quarantine)
            return {**result, "note": "already in place, digest verified"}
        if current == undo.get("damaged_digest") or _unchanged(store, original, undo.get("damaged_on_disk")) \
                or is_own_damage(current):
            store.remove(original)  # the damaged copy this stage wrote
            result["removed_own_damage"] = True
        else:
            displaced = f"{quarantine}.displaced-{int(time.time())}"
            store.move(original, displaced, expected_digest=current)
            result["kept_foreign"] = displaced  # something else took the name: kept, not deleted
    if not store.exists(quarantine):
        raise RestoreError(f"{original} is missing and its quarantined copy {quarantine} is gone")
    if store.digest(quarantine) != digest:
        raise RestoreError(f"the quarantined copy {quarantine} does not match its recorded digest: "
                           "kept in quarantine; inspect it before restoring by hand")
    # Local: a rename, so the verified bytes are what lands. Elsewhere: move() checks the copy's digest
    # before it deletes the quarantined one.
    store.move(quarantine, original, expected_digest=digest)
    remove_empty_quarantine(store, quarantine)
    return {**result, "digest_verified": True}


def rewritten_is(store: CheckpointStore, undo: dict[str, Any], current: str,
                 write_damage: Callable[[str, str], Any]) -> bool:
    """Is ``current`` (the digest now at the original path) the damaged copy this stage wrote, when a crash
    kept its record out of the ledger? The damage is deterministic: it is written again aside, from the
    backup (only if the backup is intact), and compared."""
    backup = undo["quarantine"]
    if not store.exists(backup) or store.digest(backup) != undo["digest"]:
        return False
    scratch = f"{backup.rstrip('/')}.mlchaos-redamage-{os.getpid()}"
    try:
        write_damage(backup, scratch)
        return store.digest(scratch) == current
    finally:
        if store.exists(scratch):
            store.remove(scratch)


def _clear_leftovers(store: CheckpointStore, undo: dict[str, Any], staging: str, trash: str,
                     result: dict[str, Any]) -> None:
    """What a crash left of this stage's own damaged copy: renamed aside by a restore, or never (fully)
    put in place."""
    if store.exists(trash):
        store.remove(trash)
    if store.exists(staging):
        if undo.get("placing") and store.exists(undo["original"]) and not store.local:
            store.remove(undo["original"])  # a copy of our staging cut short by a crash
        store.remove(staging)
        result["removed_own_damage"] = True


def discard(entry: dict[str, Any]) -> dict[str, Any]:
    """Remove a damaged copy ``put_back`` set aside (``entry`` is its result's ``DISCARD``); idempotent.
    Only if it is still exactly what the stage wrote (same entries, sizes, mtimes, inodes): anything else
    is left in quarantine as evidence."""
    store = CheckpointStore(entry["store"])
    path = entry["path"]
    if not store.exists(path):
        remove_empty_quarantine(store, path)
        return {"path": path, "note": "already removed"}
    if not _unchanged(store, path, entry.get("on_disk")):
        return {"path": path, "kept": "changed since restore set it aside: kept in quarantine as evidence"}
    store.remove(path)
    remove_empty_quarantine(store, path)
    return {"path": path, "removed": True}


def remove_empty_quarantine(store: CheckpointStore, quarantine: str) -> None:
    """Remove the run's quarantine folder, and the quarantine itself, once they hold nothing."""
    run_folder = posixpath.dirname(quarantine)
    for folder in (run_folder, posixpath.dirname(run_folder)):
        try:
            if store.fs.isdir(folder) and not store.fs.ls(folder):
                store.fs.rmdir(folder)
        except OSError:
            return
