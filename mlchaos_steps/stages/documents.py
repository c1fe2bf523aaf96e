"""Reading stage files with bounds, so a hostile file is refused (exit 2) in well under a second.

Limits: file size, UTF-8, YAML aliases (an alias bomb expands a few hundred bytes into gigabytes),
nesting depth (deep nesting exhausts the stack), and integer digits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from mlchaos_steps.errors import SpecError

MAX_BYTES = 1024 * 1024
MAX_ALIASES = 100
MAX_DEPTH = 64
MAX_NODES = 100_000  # nodes after aliases are expanded
MAX_INT_DIGITS = 100


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents past the bounds while they are composed."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise SpecError("document", f"uses more than {MAX_ALIASES} YAML aliases: write the values out")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise SpecError("document", f"is nested deeper than {MAX_DEPTH} levels: a stage spec is flat")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: Any) -> int:
        if len(str(node.value)) > MAX_INT_DIGITS:
            raise SpecError("document", f"holds an integer of more than {MAX_INT_DIGITS} digits: no field needs one")
        return super().construct_yaml_int(node)  # type: ignore[no-any-return]


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def _expanded_nodes(node: Any, memo: dict[int, int]) -> int:
    """How many nodes the document has once every alias is expanded (shared nodes counted each time)."""
    if id(node) in memo:
        return memo[id(node)]
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_nodes(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_expanded_nodes(k, memo) + _expanded_nodes(v, memo) for k, v in node.value)
    memo[id(node)] = total
    if total > MAX_NODES:
        raise SpecError("document", f"expands to more than {MAX_NODES} values (YAML aliases): write the values out")
    return total


def load_yaml_documents(text: str) -> list[Any]:
    """Every YAML document of ``text``, within the bounds above; SpecError otherwise."""
    loader = _BoundedLoader(text)
    try:
        documents = []
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            _expanded_nodes(node, {})
            documents.append(loader.construct_document(node))
        return documents
    finally:
        loader.dispose()


def _bounded_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise SpecError("document", f"holds an integer of more than {MAX_INT_DIGITS} digits: no field needs one")
    return int(text)


def read_documents(path: Path) -> list[Any]:
    """The documents of a YAML or JSON stage file; every failure is a SpecError naming the file."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise SpecError(str(path), f"cannot read the stage file: {exc.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise SpecError(str(path), f"is larger than {MAX_BYTES // 1024} KiB: a stage file is a few lines")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(str(path), f"is not valid UTF-8 (byte {exc.start}): save it as UTF-8") from None
    try:
        if path.suffix == ".json":
            loaded = json.loads(text, parse_int=_bounded_int)
            return loaded if isinstance(loaded, list) else [loaded]
        return [d for d in load_yaml_documents(text) if d is not None]
    except SpecError as exc:
        raise SpecError(str(path), str(exc)) from None
    except RecursionError:
        raise SpecError(str(path), "is nested too deeply: a stage spec is flat") from None
    except (yaml.YAMLError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise SpecError(str(path), f"is not valid YAML/JSON: {exc}") from None
