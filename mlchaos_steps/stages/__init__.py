"""Stage kinds, and loading stage specs from Python mappings or YAML/JSON files.

A stage file holds one or more YAML documents of the form ``{kind: CheckpointWipe, spec: {...}}``.
Invalid input raises :class:`~mlchaos_steps.errors.SpecError` naming the field, at load time.

Example::

    from mlchaos_steps.stages import load_stages, parse_stage
    wipe = parse_stage({"kind": "CheckpointWipe", "spec": {"store": "file:///data/ckpts", ...}})
    stages = load_stages("stages/wipe.yaml")
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mlchaos_steps.core.spec import StageSpec
from mlchaos_steps.errors import SpecError

# kind -> "module:Class". Adding a stage: one module in this package and one line here.
STAGE_KINDS: dict[str, str] = {
    "CheckpointWipe": "mlchaos_steps.stages.checkpoint_wipe:CheckpointWipe",
    "PodDelete": "mlchaos_steps.stages.pod_delete:PodDelete",
    "RegistryArtifactRemoval": "mlchaos_steps.stages.registry_artifact_removal:RegistryArtifactRemoval",
    "CanaryFailure": "mlchaos_steps.stages.canary_failure:CanaryFailure",
    "DataCorruption": "mlchaos_steps.stages.data_corruption:DataCorruption",
    "FeatureDrift": "mlchaos_steps.stages.feature_drift:FeatureDrift",
    "DependencyLatency": "mlchaos_steps.stages.dependency_latency:DependencyLatency",
    "StreamDelay": "mlchaos_steps.stages.stream_delay:StreamDelay",
}

API_VERSIONS = ("mlchaos.io/v1alpha1",)

__all__ = ["STAGE_KINDS", "StageSpec", "load_stages", "parse_stage", "stage_class", "stage_schema"]


def stage_class(kind: str) -> type[StageSpec]:
    """The spec class registered for a kind."""
    if kind not in STAGE_KINDS:
        raise SpecError("kind", f"unknown kind {kind!r}: use one of {', '.join(sorted(STAGE_KINDS))}")
    module_name, class_name = STAGE_KINDS[kind].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    assert issubclass(cls, StageSpec)
    return cls  # type: ignore[no-any-return]


def _format_validation_error(exc: ValidationError, source: str) -> SpecError:
    # A misspelt or non-string key explains the "missing" field beside it: name it first.
    errors = sorted(exc.errors(), key=lambda e: e["type"] not in ("invalid_key", "extra_forbidden"))
    first = errors[0]
    loc = ".".join(str(p) for p in ("spec", *first["loc"]))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field: remove it or check its spelling (`mlchaos schema` lists the fields)"
    elif first["type"] == "missing":
        message = "is required: add it (`mlchaos schema` lists the fields)"
    elif first["type"] == "finite_number":
        message = "must be a finite number (not .inf or .nan): give a plain number"
    elif first["type"] == "invalid_key":
        message = "is not a field name (field names are strings): quote it or fix its spelling"
    more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
    where = f"{source}: " if source else ""
    return SpecError(f"{where}{loc}", f"{message}{more}")


def parse_stage(document: Any, source: str = "") -> StageSpec:
    """Validate one ``{kind, spec}`` mapping (or pass a ``StageSpec`` through)."""
    if isinstance(document, StageSpec):
        return document
    where = f"{source}: " if source else ""
    if not isinstance(document, dict):
        raise SpecError(
            f"{where}document",
            f"expected a mapping with 'kind' and 'spec', got {type(document).__name__}: "
            "write `kind: CheckpointWipe` and `spec: {...}`",
        )
    extra = set(document) - {"kind", "spec", "apiVersion"}
    if extra:  # keys of any type (YAML reads `1:` and `true:` as numbers and booleans)
        first = sorted(extra, key=lambda k: (not isinstance(k, str), str(k)))[0]
        what = "" if isinstance(first, str) else f" ({type(first).__name__} key {first!r}: field names are strings)"
        raise SpecError(f"{where}{first}", f"unknown top-level field{what}: a stage has only 'kind' and 'spec'")
    if "apiVersion" in document and document["apiVersion"] not in API_VERSIONS:
        raise SpecError(f"{where}apiVersion", f"{document['apiVersion']!r} is not a version of the stage format: "
                                              f"write {API_VERSIONS[0]!r} or leave it out")
    if "kind" not in document:
        raise SpecError(f"{where}kind", f"is required: one of {', '.join(sorted(STAGE_KINDS))}")
    cls = stage_class(str(document["kind"]))
    spec = document.get("spec")
    if not isinstance(spec, dict):
        raise SpecError(f"{where}spec", "must be a mapping of the stage's fields (`mlchaos schema` lists them)")
    try:
        return cls.model_validate(spec)
    except ValidationError as exc:
        raise _format_validation_error(exc, source) from None


def load_stages(path: str | Path) -> list[StageSpec]:
    """Read every stage of a YAML or JSON file (bounded: hostile files are refused, see ``documents``)."""
    from mlchaos_steps.stages.documents import read_documents

    path = Path(path)
    documents = read_documents(path)
    if not documents:
        raise SpecError(str(path), "holds no stage: write `kind:` and `spec:`")
    return [parse_stage(doc, str(path)) for doc in documents]


def stage_schema() -> dict[str, Any]:
    """JSON schema of a stage document: one of the registered kinds, each ``{kind, spec}``."""
    variants = []
    defs: dict[str, Any] = {}
    for kind in sorted(STAGE_KINDS):
        schema = stage_class(kind).model_json_schema(ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        defs[kind] = schema
        variants.append({
            "type": "object",
            "title": kind,
            "required": ["kind", "spec"],
            "additionalProperties": False,
            "properties": {
                "apiVersion": {"enum": list(API_VERSIONS)},
                "kind": {"const": kind},
                "spec": {"$ref": f"#/$defs/{kind}"},
            },
        })
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "mlchaos stage",
        "oneOf": variants,
        "$defs": defs,
    }
