"""YAML read strictly: a key given twice in one mapping is an error, and every key keeps its line."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml

# key path (mapping keys as loaded, sequence indices) → 1-based line where it is written
KeyLines = dict[tuple[Any, ...], int]

_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.YAMLError):
    """Mappings that name a key twice: YAML would silently keep only the second value."""

    def __init__(self, duplicates: list[tuple[tuple[Any, ...], int, int]]) -> None:
        self.duplicates = duplicates  # (key path, first line, second line)
        super().__init__("\n".join(text for _, text in self.lines()))

    def lines(self) -> list[tuple[int, str]]:
        """Each duplicate's line and description."""
        out = []
        for path, first, second in self.duplicates:
            where = f"at lines {first} and {second}" if first != second else f"on line {first}"
            out.append((second, f"{'.'.join(map(str, path))}: key given twice, {where} (YAML keeps only the second)"))
        return out


class StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate mapping keys and records the line of every key and item."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.lines: KeyLines = {}
        self.duplicates: list[tuple[tuple[Any, ...], int, int]] = []

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        self._check(node, (), set())
        if self.duplicates:
            raise DuplicateKeyError(self.duplicates)
        return self.construct_document(node)

    def _check(self, node: yaml.Node, path: tuple[Any, ...], visited: set[int]) -> None:
        if id(node) in visited:  # an alias: checked where its anchor is
            return
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.lines.setdefault((*path, index), item.start_mark.line + 1)
                self._check(item, (*path, index), visited)
        elif isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:  # `<<: *base`: explicit keys may override merged ones
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                if not isinstance(key, Hashable):  # the constructor refuses it
                    continue
                if key in first:
                    self.duplicates.append(((*path, key), first[key], line))
                first.setdefault(key, line)
                self.lines.setdefault((*path, key), line)
                self._check(value_node, (*path, key), visited)


def load_yaml(text: str) -> tuple[Any, KeyLines]:
    """The document in `text` and the line of each of its keys; raises yaml.YAMLError."""
    loader = StrictLoader(text)
    try:
        return loader.get_single_data(), loader.lines
    finally:
        loader.dispose()


def describe_error(exc: yaml.YAMLError) -> list[tuple[int | None, str]]:
    """The line (1-based, where known) and a one-line description of each problem in a YAML error."""
    if isinstance(exc, DuplicateKeyError):
        return list(exc.lines())
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return [(None, f"not valid YAML: {exc}")]
    text = f"not valid YAML: {exc.problem}"
    if exc.context and exc.context_mark is not None:
        text += f" ({exc.context} that starts at line {exc.context_mark.line + 1})"
    elif exc.context:
        text += f" ({exc.context})"
    return [(exc.problem_mark.line + 1, text)]
