"""Is a model version's artifact set whole? The gate refuses a version whose files are gone.

When a stage snapshots a version it records the file list (path and size) as the tag
``mlchaos.artifacts.manifest``; the check compares the store against it. Without a manifest it
requires an ``MLmodel`` file.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

MANIFEST_TAG = "mlchaos.artifacts.manifest"


def _fingerprint(files: dict[str, int]) -> str:
    return hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()


def record_manifest(ref: Any, files: dict[str, int]) -> None:
    from mlchaos_steps.targets.mlflow import client

    value = json.dumps({"files": len(files), "bytes": sum(files.values()), "sha256": _fingerprint(files)})
    client().set_model_version_tag(ref.name, ref.version, MANIFEST_TAG, value)


def artifacts_intact(ref: Any, tags: dict[str, str] | None = None) -> tuple[bool, str]:
    """(intact, why) for the version's artifacts right now."""
    from mlchaos_steps.targets.mlflow import client, version_artifacts

    if tags is None:
        tags = dict(client().get_model_version(ref.name, ref.version).tags or {})
    files = version_artifacts(ref).list()
    manifest = tags.get(MANIFEST_TAG)
    if manifest:
        expected = json.loads(manifest)
        if _fingerprint(files) != expected["sha256"]:
            return False, (f"artifacts differ from the recorded manifest: {len(files)} file(s) now, "
                           f"{expected['files']} recorded")
        return True, f"{len(files)} file(s) match the recorded manifest"
    if not any(rel.rsplit("/", 1)[-1] == "MLmodel" for rel in files):
        return False, "no MLmodel file among the version's artifacts"
    return True, f"{len(files)} file(s), MLmodel present"
