"""Strict YAML loading that keeps every value's position and rejects duplicate keys."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from batcher.errors import JobError

YamlPath = tuple[str | int, ...]

# Maximum number of values that aliases may repeat. Nested aliases can make a
# small file expand into billions of values ("billion laughs").
MAX_ALIASED_VALUES = 100_000
# Maximum number of values (keys included) written in a document. Each costs about 1 KB while
# it is checked (measured with PyYAML 6.0 on CPython 3.11), and a 10 MiB `[1,1,1,...]` holds 5 million.
MAX_VALUES = 100_000

_TAG = "tag:yaml.org,2002:"
_SCALAR_KINDS = {
    _TAG + "bool": "bool",
    _TAG + "int": "int",
    _TAG + "float": "float",
    _TAG + "null": "null",
    _TAG + "timestamp": "timestamp",
}
_CONSTRUCTORS = {
    "bool": yaml.constructor.SafeConstructor.construct_yaml_bool,
    "int": yaml.constructor.SafeConstructor.construct_yaml_int,
    "float": yaml.constructor.SafeConstructor.construct_yaml_float,
    "null": yaml.constructor.SafeConstructor.construct_yaml_null,
}
_SIMPLE_KEY_VALUE = re.compile(r"^(\s*(?:- )?)([A-Za-z0-9_.-]+): (.+)$")


@dataclass(frozen=True, slots=True)
class Position:
    """A 1-based line and column in a text file."""

    line: int
    column: int


@dataclass(frozen=True, slots=True)
class PlainReading:
    """A plain (unquoted) scalar that YAML resolved to something other than a string."""

    text: str  # the scalar as written in the file
    kind: str  # bool, int, float, null or timestamp


@dataclass(frozen=True)
class YamlDocument:
    """Plain Python values of one YAML document, with positions keyed by path.

    A path is the tuple of mapping keys and list indexes from the root, so
    `("limits", "concurrency")` or `("prompts", 0, "id")`. Timestamps stay the
    text as written, because JSON cannot carry them; `readings` marks them.
    """

    data: Any
    value_positions: dict[YamlPath, Position]
    key_positions: dict[YamlPath, Position]
    readings: dict[YamlPath, PlainReading]
    # Problems that do not stop reading, such as duplicate keys (the first one is kept).
    problems: list[tuple[Position, str]]
    # Paths of the strings written as plain (unquoted) scalars, such as `1e3`, which YAML 1.1 reads as text.
    plain_strings: frozenset[YamlPath] = field(default_factory=frozenset)

    def position(self, path: YamlPath, *, key: bool = False) -> Position | None:
        """Return where the value (or its key) at `path` starts, else the nearest ancestor's."""
        if key and path in self.key_positions:
            return self.key_positions[path]
        while True:
            if path in self.value_positions:
                return self.value_positions[path]
            if not path:
                return None
            path = path[:-1]


def load_yaml(text: str, *, filename: str) -> YamlDocument:
    """Parse one YAML document into plain values and positions.

    Duplicate keys and unsupported tags do not stop reading; they are
    returned in `problems` so that the caller can list them with its own.

    Raises:
        JobError: a syntax error, as one `file:line:column: message` line, a
            document of more than MAX_VALUES values, or one whose aliases
            repeat more than MAX_ALIASED_VALUES values.
    """
    try:
        root = yaml.compose(text, Loader=_CountingLoader)
    except _TooManyValues:
        raise JobError(
            f"{filename}: the YAML has more than {MAX_VALUES:,} values; "
            "move the prompts to a prompts_file, which is read one line at a time"
        ) from None
    except yaml.MarkedYAMLError as exc:
        raise JobError(_describe_syntax_error(exc, text, filename)) from None
    except yaml.reader.ReaderError as exc:
        raise JobError(_describe_reader_error(exc, text, filename)) from None
    except yaml.YAMLError as exc:
        raise JobError(f"{filename}: invalid YAML: {exc}") from None
    except RecursionError:
        raise JobError(f"{filename}: the YAML is nested too deeply to read") from None

    converter = _Converter()
    try:
        data = None if root is None else converter.convert(root, ())
    except RecursionError:
        raise JobError(f"{filename}: the YAML is nested too deeply to read") from None
    except _TooManyAliasedValues:
        raise JobError(
            f"{filename}: aliases repeat more than {MAX_ALIASED_VALUES:,} values; "
            "write the values out, or move the prompts to a prompts_file"
        ) from None

    return YamlDocument(
        data,
        converter.values,
        converter.keys,
        converter.readings,
        converter.problems,
        frozenset(converter.plain_strings),
    )


def _position(mark: yaml.Mark) -> Position:
    return Position(mark.line + 1, mark.column + 1)


def _describe_syntax_error(exc: yaml.MarkedYAMLError, text: str, filename: str) -> str:
    """Build a `file:line:column: problem; fix` line from a PyYAML error."""
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "invalid YAML"
    if mark is None:
        return f"{filename}: invalid YAML: {problem}"

    where = f"{filename}:{mark.line + 1}:{mark.column + 1}"
    lines = text.splitlines()
    line = lines[mark.line] if mark.line < len(lines) else ""

    if "'\\t'" in problem:
        return f"{where}: invalid YAML: a tab character where YAML expects spaces; indent with spaces only"
    if problem.startswith("mapping values are not allowed"):
        return f"{where}: invalid YAML: a value contains `: `; {_quote_hint(line)}"
    if problem.startswith("found character") and "cannot start any token" in problem:
        return f"{where}: invalid YAML: {problem}; put the value in double quotes"
    if problem == "found unexpected end of stream" and exc.context_mark is not None:
        opened = exc.context_mark
        return (
            f"{where}: invalid YAML: the quoted value opened on line {opened.line + 1} "
            "is never closed; add the closing quote"
        )
    if "expected <block end>" in problem or "could not find expected ':'" in problem:
        return f"{where}: invalid YAML: {problem}; check the indentation of this line against the lines above it"

    context = ""
    if exc.context and exc.context_mark is not None and exc.context_mark is not mark:
        context = f" ({exc.context} on line {exc.context_mark.line + 1})"
    return f"{where}: invalid YAML: {problem}{context}"


def _describe_reader_error(exc: yaml.reader.ReaderError, text: str, filename: str) -> str:
    """Build a `file:line:column` line for a character that YAML does not allow."""
    offset = exc.position
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    character = exc.character if isinstance(exc.character, str) else chr(exc.character)
    return (
        f"{filename}:{line}:{column}: invalid YAML: the control character U+{ord(character):04X} "
        "is not allowed; remove it, or write it as an escape inside double quotes"
    )


def _quote_hint(line: str) -> str:
    """Suggest how to write a value that contains `: ` so YAML reads it as one string."""
    generic = (
        'quote the value (key: "text: more text"), or write it as a block scalar '
        "(key: | followed by the text indented on the next lines)"
    )
    match = _SIMPLE_KEY_VALUE.match(line)
    if match is None or '"' in match.group(3) or "\\" in match.group(3):
        return generic

    key, value = match.group(2), match.group(3).rstrip()
    if "key" in key.lower():
        return generic  # the value may be a secret, so it is not echoed
    return f'quote it: {key}: "{value}", or write it as a block scalar after {key}: |'


class _TooManyValues(Exception):
    """The document has more than MAX_VALUES values."""


class _CountingLoader(yaml.SafeLoader):
    """SafeLoader that stops composing after MAX_VALUES nodes, before their memory adds up."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._node_count = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._node_count += 1
        if self._node_count > MAX_VALUES:
            raise _TooManyValues
        return super().compose_node(parent, index)


class _TooManyAliasedValues(Exception):
    """Aliases repeat more than MAX_ALIASED_VALUES values."""


class _Converter:
    """Converter from a node tree to plain values that records positions and problems."""

    def __init__(self) -> None:
        self.values: dict[YamlPath, Position] = {}
        self.keys: dict[YamlPath, Position] = {}
        self.readings: dict[YamlPath, PlainReading] = {}
        self.plain_strings: set[YamlPath] = set()
        self.problems: list[tuple[Position, str]] = []
        self._converted: set[int] = set()  # ids of the nodes converted so far
        self._aliased_count = 0
        self._constructor = yaml.constructor.SafeConstructor()

    def convert(self, node: Node, path: YamlPath) -> Any:
        # An alias is the same node object again, so a node seen before is a repeat.
        if id(node) in self._converted:
            self._aliased_count += 1
            if self._aliased_count > MAX_ALIASED_VALUES:
                raise _TooManyAliasedValues
        else:
            self._converted.add(id(node))
        self.values[path] = _position(node.start_mark)

        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if isinstance(node, SequenceNode):
            if node.tag != _TAG + "seq":
                self._unsupported_tag(node)
            return [self.convert(item, path + (index,)) for index, item in enumerate(node.value)]
        if node.tag != _TAG + "map":
            self._unsupported_tag(node)
        return self._mapping(node, path)

    def _scalar(self, node: ScalarNode, path: YamlPath) -> Any:
        if node.tag in (_TAG + "str", _TAG + "value"):
            if node.style is None:
                self.plain_strings.add(path)
            return node.value

        kind = _SCALAR_KINDS.get(node.tag)
        if kind is None:
            self._unsupported_tag(node)
            return node.value
        if node.style is None:
            self.readings[path] = PlainReading(node.value, kind)
        if kind == "timestamp":
            return node.value

        try:
            return _CONSTRUCTORS[kind](self._constructor, node)
        except (ValueError, yaml.YAMLError):
            self.problems.append((_position(node.start_mark), f"`{node.value}` is not a valid {kind}"))
            return node.value

    def _mapping(self, node: MappingNode, path: YamlPath) -> dict[str, Any]:
        explicit, merged = self._flatten(node)
        result: dict[str, Any] = {}
        first_seen: dict[str, Position] = {}

        for key_node, value_node in explicit:
            key = self._key(key_node)
            if key is None:
                continue
            key_position = _position(key_node.start_mark)
            if key in first_seen:
                self.problems.append(
                    (
                        key_position,
                        f"duplicate key `{key}`; it is also set on line {first_seen[key].line}. Keep one of them",
                    )
                )
                continue
            first_seen[key] = key_position
            self.keys[path + (key,)] = key_position
            result[key] = self.convert(value_node, path + (key,))

        # Explicit keys win over merged ones, and earlier merge sources over later ones.
        for key_node, value_node in merged:
            key = self._key(key_node)
            if key is None or key in result:
                continue
            self.keys[path + (key,)] = _position(key_node.start_mark)
            result[key] = self.convert(value_node, path + (key,))

        return result

    def _flatten(self, node: MappingNode) -> tuple[list[tuple[Node, Node]], list[tuple[Node, Node]]]:
        """Split a mapping's pairs into its own and those brought in by `<<` merge keys."""
        explicit: list[tuple[Node, Node]] = []
        merged: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _TAG + "merge":
                explicit.append((key_node, value_node))
                continue

            if isinstance(value_node, MappingNode):
                sources = [value_node]
            elif isinstance(value_node, SequenceNode) and all(
                isinstance(item, MappingNode) for item in value_node.value
            ):
                sources = value_node.value
            else:
                self.problems.append(
                    (
                        _position(value_node.start_mark),
                        "the merge key `<<` needs an alias to a mapping, or a list of them",
                    )
                )
                continue

            for source in sources:
                source_explicit, source_merged = self._flatten(source)
                merged.extend(source_explicit + source_merged)
        return explicit, merged

    def _key(self, node: Node) -> str | None:
        # A plain key such as `yes:` or `50256:` means its text; JSON keys are strings anyway.
        if isinstance(node, ScalarNode) and node.tag in (_TAG + "str", *_SCALAR_KINDS):
            return node.value
        self.problems.append((_position(node.start_mark), "a mapping key must be a plain string"))
        return None

    def _unsupported_tag(self, node: Node) -> None:
        self.problems.append(
            (
                _position(node.start_mark),
                f"the YAML tag {node.tag} is not supported; use plain strings, numbers, booleans, lists and mappings",
            )
        )
