"""A stage document on its way into a workflow: read, checked at render time, and its mutex name.

A stage file for Argo may use the workflow's parameters (``{{workflow.parameters.workdir}}``); Argo fills
them in when the stage runs. To check the document when the workflow is *built*, each such reference is
replaced by the value the workflow gives the parameter (or one passed in ``params``); a reference with no
value is refused, so that nothing reaches a cluster unchecked.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlchaos_steps.errors import SpecError

_ANY_VARIABLE = re.compile(r"\{\{.*?\}\}")
_REFERENCE = re.compile(r"\{\{\s*(workflow\.parameters|inputs\.parameters)\.([-\w]+)\s*\}\}")


@dataclass(frozen=True)
class StageDocument:
    """The text that goes into the workflow, and what it was checked as."""

    text: str
    stage_ids: tuple[str, ...]
    target_ids: tuple[str, ...]

    @property
    def lock(self) -> str:
        """The mutex of this stage's targets (``mlchaos-`` and a digest): two workflows that would break the
        same target run one after the other."""
        digest = hashlib.sha256("\n".join(sorted(self.target_ids)).encode()).hexdigest()[:16]
        return f"mlchaos-{digest}"

    @property
    def default_name(self) -> str:
        return "chaos-" + "-".join(self.stage_ids)[:50].strip("-")


def read_stage(stage: str | Path | Mapping[str, Any], params: Mapping[str, Any] | None = None,
               where: str = "stage") -> StageDocument:
    """Read a stage file (or take a mapping), check it with the workflow's parameter values substituted,
    and return its text. Raises SpecError (exit 2) naming ``where`` and what to do."""
    from mlchaos_steps.stages import parse_stage

    if isinstance(stage, Mapping):
        text = yaml.safe_dump(dict(stage), sort_keys=False)
    else:
        path = Path(stage)
        if not path.is_file():
            raise SpecError(where, f"{path} is not a file: give the path of a stage file (YAML)")
        text = path.read_text()
    values = {str(k): v for k, v in (params or {}).items()}

    def substitute(match: re.Match[str]) -> str:
        if match.group(2) not in values:
            raise SpecError(where, f"uses {match.group(0)} but the workflow gives {match.group(2)!r} no value: "
                                   "give the parameter a value (or pass params=...) so the stage can be checked")
        return str(values[match.group(2)])

    checked = _REFERENCE.sub(substitute, text)
    other = _ANY_VARIABLE.search(checked)
    if other:
        raise SpecError(where, f"holds {other.group(0)}, which the stage cannot be checked with (and Argo may not "
                               "resolve, comments included): use {{workflow.parameters.NAME}} and give it a value")
    try:
        documents = [d for d in yaml.safe_load_all(checked) if d is not None]
    except yaml.YAMLError as exc:
        raise SpecError(where, f"is not valid YAML: {exc}") from exc
    if not documents:
        raise SpecError(where, "holds no stage: write `kind: ...` and `spec: {...}`")
    specs = [parse_stage(d, source=str(where)) for d in documents]
    return StageDocument(text, tuple(s.stage_id for s in specs),
                         tuple(t for s in specs for t in s.target_ids()))


def workflow_parameters(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec.arguments.parameters`` as ``{name: value}`` (the values a run starts with)."""
    out = {}
    for parameter in (spec.get("arguments") or {}).get("parameters") or []:
        if isinstance(parameter, Mapping) and parameter.get("value") is not None:
            out[str(parameter["name"])] = parameter["value"]
    return out
