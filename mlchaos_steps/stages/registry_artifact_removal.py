"""``registry-artifact-removal``: delete the artifacts behind a model version, check the loss is handled.

``expect: detected`` passes when loading the broken version fails loudly and the promotion gate
refuses it; snapshot first checks that the intact version loads here, so an unrelated load error never
passes for detection. ``expect: fallback`` passes when ``models:/name@champion`` still loads, serving stays
healthy and the champion alias does not move. Files are backed up with digests in ``snapshot``;
``inject`` checks each backup's digest again, deletes, and lists the store again: a store that
reports success but keeps the files makes the verdict ``inconclusive``. Restore uploads the backups,
compares digests and loads the model.

Example::

    kind: RegistryArtifactRemoval
    spec:
      model: churn-classifier
      version: "@challenger"
      scope: weights        # weights (default) | all
      expect: detected      # detected | fallback
"""

from __future__ import annotations

import os
import posixpath
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from mlchaos_steps.core.context import PhaseContext
from mlchaos_steps.core.records import Action
from mlchaos_steps.core.spec import StageSpec, StrictModel, version_or_alias
from mlchaos_steps.core.verdict import Verdict
from mlchaos_steps.errors import InfrastructureError, RestoreError, SpecError
from mlchaos_steps.targets.files import file_digest


class ServingCheck(StrictModel):
    """A serving endpoint that must stay healthy (``/ping`` and one ``/invocations`` request)."""

    url: str
    sample: dict[str, Any] | None = Field(default=None, description="JSON body for one /invocations request")


class RegistryArtifactRemoval(StageSpec):
    """Remove the artifacts behind an MLflow model version."""

    kind: ClassVar[str] = "RegistryArtifactRemoval"
    stage_id: ClassVar[str] = "registry-artifact-removal"
    title: ClassVar[str] = "Registry artifact removal"

    model: str = Field(min_length=1, description="registered model name")
    version: str = Field(description="a version number or an @alias")
    scope: Literal["weights", "all"] = Field(
        default="weights", description="weights: the model's own data files (its loader must notice); all: "
                                       "every file, MLmodel included (MLflow itself fails first)")
    expect: Literal["detected", "fallback"] = "detected"
    champion_alias: str = Field(default="champion", description="the alias serving relies on (fallback)")
    serving: ServingCheck | None = None

    _version = field_validator("version", mode="before")(version_or_alias)

    def target_ids(self) -> list[str]:
        return [f"mlflow-model:{self.model}"]

    def describe(self) -> str:
        return f"remove {self.scope} artifacts of {self.model} {self.version} (expect {self.expect})"

    # -- phases -----------------------------------------------------------------------------------
    def _resolve(self) -> tuple[Any, Any, dict[str, int], dict[str, int]]:
        """(version, its artifact store, every file, the files to remove): one listing of the store."""
        from mlchaos_steps.targets.mlflow import resolve_version, version_artifacts, weights_only

        ref = resolve_version(self.model, self.version)
        store = version_artifacts(ref)
        files = store.list()
        if not files:
            raise InfrastructureError(f"{ref.uri} has no artifacts at {store.uri}: nothing to remove")
        victims = files if self.scope == "all" else weights_only(files)
        if not victims:
            raise SpecError("spec.scope", f"{ref.uri} has no weight files besides MLmodel: use scope: all")
        return ref, store, files, victims

    def plan(self, ctx: PhaseContext) -> dict[str, Any]:
        ref, store, _, victims = self._resolve()
        return {"model_version": ref.uri, "artifact_uri": store.uri, "would_remove": sorted(victims)}

    def snapshot(self, ctx: PhaseContext) -> dict[str, Any]:
        from mlchaos_steps.gate.integrity import record_manifest
        from mlchaos_steps.targets.mlflow import alias_version
        from mlchaos_steps.verification import model_loads, serving_healthy

        ref, store, files, victims = self._resolve()
        champion = alias_version(ref.name, self.champion_alias)
        if self.expect == "detected":
            # A load failure only means "detected" if the intact version loads here: otherwise any
            # unrelated error (a package missing in this runner) would pass for detection.
            intact = model_loads(ref.uri)
            if not intact.ok:
                raise InfrastructureError(
                    f"steady state not met before the fault: the intact {ref.uri} does not load in this "
                    f"environment ({intact.detail[:300]}); install what it needs, then run the stage again")
        if self.expect == "fallback":
            checks = [model_loads(f"models:/{ref.name}@{self.champion_alias}")]
            if self.serving:
                checks.append(serving_healthy(self.serving.url, self.serving.sample))
            failing = [c for c in checks if not c.ok]
            if failing:
                raise InfrastructureError("steady state not met before the fault: "
                                          + "; ".join(f"{c.name}: {c.detail}" for c in failing))
        record_manifest(ref, files)
        backup_root = ctx.run_dir / "backup"
        backups = []
        for rel, size in sorted(victims.items()):
            local = str(backup_root / rel)
            digest, copied = store.backup(rel, local)
            if copied != size:
                raise InfrastructureError(f"backup of {rel} has {copied} bytes, the store lists {size}: nothing "
                                          "was removed")
            backups.append({"rel": rel, "size": size, "digest": digest, "backup": local})
        ctx.ledger.store_backup(ctx.run_key, backup_root)  # MLflow ledger: the backup travels with the run
        ctx.set_model_version(ref)
        ctx.save(artifact_uri=store.uri, champion_before=champion, backups=backups)
        return {"model_version": ref.uri, "artifact_uri": store.uri, "files": len(backups),
                "bytes": sum(b["size"] for b in backups), "champion": champion}

    def inject(self, ctx: PhaseContext) -> dict[str, Any]:
        import fsspec

        from mlchaos_steps.targets.mlflow import ArtifactStore

        state = ctx.state
        store = ArtifactStore(state["artifact_uri"])
        local = fsspec.filesystem("file")
        for backup in state["backups"]:
            undo = {"artifact_uri": state["artifact_uri"], **backup, "model_version": ctx.model_version.as_dict()}
            with ctx.destructive("remove-artifact", f"{state['artifact_uri']}/{backup['rel']}", undo):
                if file_digest(local, backup["backup"]) != backup["digest"]:
                    raise InfrastructureError(f"the backup of {backup['rel']} no longer matches its digest: "
                                              "nothing was removed")
                store.delete(backup["rel"])
        remaining = store.list()
        still_there = sorted(b["rel"] for b in state["backups"] if b["rel"] in remaining)
        ctx.save(still_there=still_there)
        return {"removed": len(state["backups"]) - len(still_there), "still_there": still_there}

    def verify(self, ctx: PhaseContext) -> Verdict:
        from mlchaos_steps.gate.integrity import artifacts_intact
        from mlchaos_steps.verification import alias_unchanged, model_loads, serving_healthy

        state = ctx.state
        ref = ctx.model_version
        if state.get("still_there"):
            return Verdict.inconclusive(
                f"the artifact store reported the deletion but {len(state['still_there'])} file(s) are still there "
                f"({', '.join(state['still_there'][:5])}): nothing was tested",
                evidence={"still_there": state["still_there"]})
        checks = []
        if self.expect == "detected":
            load = model_loads(ref.uri)
            intact, why = artifacts_intact(ref)
            checks = [load.as_dict(), {"name": "gate-refuses", "ok": not intact, "detail": why}]
            evidence = {"checks": checks}
            if load.ok:
                return Verdict.failed(f"{ref.uri} loaded with its {self.scope} artifacts gone: the loss went "
                                      "undetected", evidence=evidence)
            if intact:
                return Verdict.failed(f"the promotion gate would accept {ref.uri} with its artifacts gone",
                                      evidence=evidence)
            return Verdict.passed(f"loading {ref.uri} failed loudly ({load.detail[:120]}) and the gate refuses it",
                                  metrics={"detect_seconds": load.seconds}, evidence=evidence)
        results = [model_loads(f"models:/{ref.name}@{self.champion_alias}"),
                   alias_unchanged(ref.name, self.champion_alias, state["champion_before"])]
        if self.serving:
            results.append(serving_healthy(self.serving.url, self.serving.sample))
        evidence = {"checks": [r.as_dict() for r in results]}
        failing = [r for r in results if not r.ok]
        if failing:
            return Verdict.failed("; ".join(f"{r.name}: {r.detail}" for r in failing), evidence=evidence)
        return Verdict.passed(f"@{self.champion_alias} kept loading and serving while {ref.uri} lost its artifacts",
                              evidence=evidence)

    @classmethod
    def restore_action(cls, action: Action, ctx: PhaseContext) -> dict[str, Any]:
        import fsspec

        from mlchaos_steps.targets.mlflow import ArtifactStore

        undo = action.undo
        store = ArtifactStore(undo["artifact_uri"])
        local = fsspec.filesystem("file")
        # This may be another machine than the one that took the backup: find it under our run folder.
        backup = str(ctx.run_dir / "backup" / undo["rel"])
        if not os.path.exists(backup):
            ctx.ledger.fetch_backup(ctx.run_key, ctx.run_dir / "backup")
        if store.fs is not None:
            target = posixpath.join(store.root, undo["rel"])
            if store.fs.exists(target) and file_digest(store.fs, target) == undo["digest"]:
                _drop(backup)
                return {"rel": undo["rel"], "note": "already in place, digest verified"}
        if not os.path.exists(backup):
            raise RestoreError(f"the backup of {undo['rel']} at {backup} is gone")
        if file_digest(local, backup) != undo["digest"]:
            raise RestoreError(f"the backup of {undo['rel']} at {backup} does not match its digest: kept, not "
                               "uploaded; inspect it")
        if store.upload(backup, undo["rel"]) != undo["digest"]:
            raise RestoreError(f"{undo['rel']} does not match its digest after upload: the backup is kept at {backup}")
        _drop(backup)
        return {"rel": undo["rel"], "digest_verified": True}

    @classmethod
    def after_restore(cls, ctx: PhaseContext) -> dict[str, Any]:
        from mlchaos_steps.verification import model_loads

        uri = ctx.state.get("artifact_uri")
        if not uri or not ctx.state.get("backups"):
            return {}
        # From the physical location, so the check needs no tracking server.
        loaded = model_loads(uri)
        if not loaded.ok:
            raise RestoreError(f"the model at {uri} does not load after restore: {loaded.detail}")
        return {"model_loads": True}


def _drop(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
