"""Typed checks of job and prompt values that report problems with their file position."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from typing import Any, Protocol

import yaml

from batcher.errors import JobError
from batcher.yaml_strict import PlainReading, YamlDocument, YamlPath

# Maximum number of problems listed in one error; the rest are counted.
MAX_LISTED_PROBLEMS = 20

_SEXAGESIMAL_OR_OCTAL = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?|0[0-7_]+)$")
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
# A number with an exponent, split into sign, integer part, fraction, exponent sign and exponent.
_EXPONENT_NUMBER = re.compile(r"([-+]?)([0-9][0-9_]*)?(?:\.([0-9_]*))?[eE]([-+]?)([0-9]+)")
# Maximum digits of an integer spelled out in a hint, so `1e308` gets only the exponent spelling.
_MAX_SPELLED_DIGITS = 16
_YAML_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
# Key names that mean "the API key itself", compared without case, `-` or `_`.
_SECRET_KEY_NAMES = frozenset(
    {
        "apikey",
        "key",
        "openaiapikey",
        "secret",
        "secretkey",
        "token",
        "accesstoken",
        "bearer",
        "authorization",
        "password",
    }
)


class Locator(Protocol):
    """Source of checked values: a YAML document, or one line of a JSONL file."""

    def locate(self, path: YamlPath, *, key: bool = False) -> tuple[str, tuple[int, int]]:
        """Return the `file:line[:column]` label of a value and a key to sort problems by."""
        ...

    def reading(self, path: YamlPath) -> PlainReading | None:
        """Return how YAML resolved a plain scalar that is not a string, if it did."""
        ...

    def is_plain_string(self, path: YamlPath) -> bool:
        """Return whether the value is a string written without quotes."""
        ...


class YamlLocator:
    """Positions of values in a job file."""

    def __init__(self, document: YamlDocument, filename: str) -> None:
        self._document = document
        self._filename = filename

    def locate(self, path: YamlPath, *, key: bool = False) -> tuple[str, tuple[int, int]]:
        position = self._document.position(path, key=key)
        if position is None:
            return self._filename, (0, 0)
        return f"{self._filename}:{position.line}:{position.column}", (position.line, position.column)

    def reading(self, path: YamlPath) -> PlainReading | None:
        return self._document.readings.get(path)

    def is_plain_string(self, path: YamlPath) -> bool:
        return path in self._document.plain_strings


class LineLocator:
    """Position of every value on one line of a JSONL file."""

    def __init__(self, filename: str, line_number: int) -> None:
        self._label = f"{filename}:{line_number}"
        self._sort_key = (line_number, 0)

    def locate(self, path: YamlPath, *, key: bool = False) -> tuple[str, tuple[int, int]]:
        return self._label, self._sort_key

    def reading(self, path: YamlPath) -> PlainReading | None:
        return None

    def is_plain_string(self, path: YamlPath) -> bool:
        return False  # JSON strings are always quoted


def describe_type(value: Any) -> str:
    """Name a value's JSON type with an article, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def name_of(path: YamlPath) -> str:
    """Name the value at `path` for messages: "`model`", or "item 2 of `stop`"."""
    if not path:
        return "the document"
    last = path[-1]
    if isinstance(last, int):
        parent = next((part for part in reversed(path) if isinstance(part, str)), None)
        return f"item {last + 1} of `{parent}`" if parent else f"item {last + 1}"
    return f"`{last}`"


class Checker:
    """Collects problems found in loaded values; `raise_if_any` turns them into a JobError.

    The typed getters return the value when it is valid and None after
    reporting a problem, so one pass finds every problem in the file.
    """

    def __init__(self, locator: Locator) -> None:
        self.locator = locator
        self._problems: list[tuple[tuple[int, int], str]] = []

    @property
    def count(self) -> int:
        """Number of problems reported so far."""
        return len(self._problems)

    def report(self, path: YamlPath, message: str, *, key: bool = False) -> None:
        label, sort_key = self.locator.locate(path, key=key)
        self._problems.append((sort_key, f"{label}: {message}"))

    def add(self, sort_key: tuple[int, int], message: str) -> None:
        """Add a problem whose message already starts with its position."""
        self._problems.append((sort_key, message))

    def messages(self) -> list[str]:
        """Return the problems in file order, one line each."""
        return [message for _, message in sorted(self._problems, key=lambda item: item[0])]

    def raise_if_any(self) -> None:
        if not self._problems:
            return
        lines = self.messages()
        if len(lines) > MAX_LISTED_PROBLEMS:
            hidden = len(lines) - MAX_LISTED_PROBLEMS
            lines = lines[:MAX_LISTED_PROBLEMS] + [f"... and {hidden} more problems"]
        raise JobError("\n".join(lines))

    def known_keys(self, mapping: dict[str, Any], path: YamlPath, allowed: Iterable[str], where: str) -> None:
        """Report every key of `mapping` that is not in `allowed`, with the closest known key."""
        allowed = list(allowed)
        for key in mapping:
            if key in allowed:
                continue
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            if close:
                hint = f"did you mean `{close[0]}`?"
            else:
                hint = "expected one of: " + ", ".join(allowed)
            self.report(path + (key,), f"unknown key `{key}` {where}; {hint}", key=True)

    def secret_keys(self, mapping: dict[str, Any], path: YamlPath) -> set[str]:
        """Report and return the keys of `mapping` whose names mean the API key itself.

        The values are never echoed, because they are probably keys.
        """
        found = [key for key in mapping if key.lower().replace("-", "").replace("_", "") in _SECRET_KEY_NAMES]
        for key in found:
            self.report(
                path + (key,),
                f"`{key}` does not belong in a job or prompts file, because such files get copied "
                "and committed; put the API key in an environment variable named by "
                "`endpoint.api_key_env` (default OPENAI_API_KEY), or in a file named by "
                "`endpoint.api_key_file`",
                key=True,
            )
        return set(found)

    def string(self, value: Any, path: YamlPath, *, allow_empty: bool = False) -> str | None:
        """Return `value` if it is a string that the file wrote as a string."""
        reading = self.locator.reading(path)
        if reading is not None:
            self.report(path, _misread_string_message(name_of(path), path, reading, value))
            return None
        if not isinstance(value, str):
            self.report(path, f"{name_of(path)} must be a string, not {describe_type(value)}")
            return None
        if not value and not allow_empty:
            self.report(path, f"{name_of(path)} is empty; write a value or remove the key")
            return None
        return value

    def single_line(self, value: Any, path: YamlPath) -> str | None:
        """Return `value` if it is a non-empty string without control characters."""
        text = self.string(value, path)
        if text is None:
            return None
        if _CONTROL_CHARACTERS.search(text):
            self.report(path, f"{name_of(path)} must not contain line breaks or control characters")
            return None
        return text

    def boolean(self, value: Any, path: YamlPath) -> bool | None:
        """Return `value` if it is true or false, written as such."""
        reading = self.locator.reading(path)
        if isinstance(value, bool) and reading is not None and reading.text.lower() not in ("true", "false"):
            self.report(
                path,
                f"{name_of(path)} must be true or false; YAML 1.1 reads `{reading.text}` as "
                f"{str(value).lower()}, but write {str(value).lower()} so every reader agrees",
            )
            return None
        if not isinstance(value, bool):
            hint = "; remove the quotes" if isinstance(value, str) and value.lower() in ("true", "false") else ""
            self.report(path, f"{name_of(path)} must be true or false, not {describe_type(value)}{hint}")
            return None
        return value

    def integer(
        self, value: Any, path: YamlPath, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        """Return `value` if it is an integer of at least `minimum` and at most `maximum`."""
        if isinstance(value, float) and math.isfinite(value):
            self.report(path, f"{name_of(path)} must be a whole number, not {value!r}")
            return None
        if isinstance(value, float):
            self.report(path, f"{name_of(path)} must be an integer, not {value}")
            return None
        if isinstance(value, str) and (message := self._number_string_message(value, path, whole=True)):
            self.report(path, message)
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            self.report(path, f"{name_of(path)} must be an integer, not {describe_type(value)}")
            return None
        if not self._number_reading_ok(path):
            return None
        if minimum is not None and value < minimum:
            self.report(path, f"{name_of(path)} must be at least {minimum}, not {value}")
            return None
        if maximum is not None and value > maximum:
            self.report(path, f"{name_of(path)} must be at most {maximum}, not {value}")
            return None
        return value

    def number(
        self,
        value: Any,
        path: YamlPath,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        above: float | None = None,
    ) -> float | int | None:
        """Return `value` if it is a finite number within the bounds (`above` is exclusive)."""
        if isinstance(value, str) and (message := self._number_string_message(value, path, whole=False)):
            self.report(path, message)
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            self.report(path, f"{name_of(path)} must be a number, not {describe_type(value)}")
            return None
        if not math.isfinite(value):
            self.report(path, f"{name_of(path)} must be a finite number, not {value}")
            return None
        if not self._number_reading_ok(path):
            return None
        if above is not None and value <= above:
            self.report(path, f"{name_of(path)} must be greater than {above:g}, not {value:g}")
            return None
        if minimum is not None and value < minimum:
            bound = f"between {minimum:g} and {maximum:g}" if maximum is not None else f"at least {minimum:g}"
            self.report(path, f"{name_of(path)} must be {bound}, not {value:g}")
            return None
        if maximum is not None and value > maximum:
            bound = f"between {minimum:g} and {maximum:g}" if minimum is not None else f"at most {maximum:g}"
            self.report(path, f"{name_of(path)} must be {bound}, not {value:g}")
            return None
        return value

    def mapping(self, value: Any, path: YamlPath) -> dict[str, Any] | None:
        """Return `value` if it is a mapping."""
        if isinstance(value, dict):
            return value
        self.report(
            path, f"{name_of(path)} must be a mapping, not {describe_type(value)}{_empty_hint(value, path, self)}"
        )
        return None

    def sequence(self, value: Any, path: YamlPath) -> list[Any] | None:
        """Return `value` if it is a list."""
        if isinstance(value, list):
            return value
        self.report(path, f"{name_of(path)} must be a list, not {describe_type(value)}{_empty_hint(value, path, self)}")
        return None

    def json_value(self, value: Any, path: YamlPath) -> None:
        """Report YAML 1.1 readings that would send something other than what was written.

        `yes`, `no`, `on` and `off` become booleans, `1:30` becomes 90 and
        `010` becomes 8 in YAML 1.1; dates, NaN and infinity have no JSON form.
        """
        if isinstance(value, dict):
            for key, item in value.items():
                self.json_value(item, path + (key,))
            return
        if isinstance(value, list):
            for index, item in enumerate(value):
                self.json_value(item, path + (index,))
            return

        if isinstance(value, float) and not math.isfinite(value):
            self.report(path, f"{name_of(path)} is {value}, which JSON cannot carry; write a finite number")
            return
        if isinstance(value, str) and self.locator.is_plain_string(path):
            number = _parse_number(value)
            if number is not None and math.isfinite(number):
                spellings = " or ".join(_number_spellings(value, number, whole=False)) or "the number in decimal"
                self.report(
                    path,
                    f"{name_of(path)}: YAML 1.1 read `{value}` as a string, not a number; "
                    f"write {spellings}, or quote it if you mean the text",
                )
            return
        reading = self.locator.reading(path)
        if reading is None:
            return
        if reading.kind == "timestamp":
            self.report(
                path, f"{name_of(path)}: YAML read `{reading.text}` as a date, which JSON cannot carry; quote it"
            )
        elif reading.kind == "bool" and reading.text.lower() not in ("true", "false"):
            self.report(
                path,
                f"{name_of(path)}: YAML 1.1 read `{reading.text}` as the boolean {str(value).lower()}; "
                f"write {str(value).lower()}, or quote it if you mean the text",
            )
        elif reading.kind in ("int", "float"):
            self._number_reading_ok(path)

    def _number_string_message(self, text: str, path: YamlPath, *, whole: bool) -> str | None:
        """Return a message for a string that spells a number where a number belongs, or None if it spells none."""
        number = _parse_number(text)
        if number is None:
            return None
        name = name_of(path)
        expected = "an integer" if whole else "a number"
        if not math.isfinite(number):
            return f"{name} must be {expected if whole else 'a finite number'}, not `{text}`"
        plain = self.locator.is_plain_string(path)
        if not plain and _yaml_reads_as_number(text):
            return f"{name} must be {expected}, not a string; remove the quotes"

        spellings = _number_spellings(text, number, whole=whole)
        if spellings:
            fix = "write " + " or ".join(spellings)
        else:
            fix = "write a whole number" if whole and not _is_integral(number) else "write the number in decimal"
        if not plain:
            return f"{name} must be {expected}, not a string; {fix} without quotes"

        reason = ""
        if _EXPONENT_NUMBER.fullmatch(text):
            reason = ", because its exponent form needs a dot and a signed exponent, as in 1.0e+3"
        return f"{name} must be {expected}, but YAML 1.1 reads `{text}` as a string{reason}; {fix}"

    def _number_reading_ok(self, path: YamlPath) -> bool:
        reading = self.locator.reading(path)
        if reading is None or not _SEXAGESIMAL_OR_OCTAL.match(reading.text):
            return True
        self.report(
            path,
            f"{name_of(path)}: YAML 1.1 read `{reading.text}` as a base-60 or octal number; "
            "write the number in decimal, or quote it if you mean the text",
        )
        return False


def _misread_string_message(name: str, path: YamlPath, reading: PlainReading, value: Any) -> str:
    if reading.kind == "null" and reading.text == "":
        return f"{name} has no value; write a string"
    if reading.kind == "bool":
        read_as = f"the boolean {str(value).lower()}"
    elif reading.kind in ("int", "float"):
        read_as = f"the number {value!r}"
    elif reading.kind == "null":
        read_as = "null"
    else:
        read_as = "a date"
    key = f"{path[-1]}: " if path and isinstance(path[-1], str) else ""
    return f'{name} must be a string, but YAML read it as {read_as}; quote it: {key}"{reading.text}"'


def _parse_number(text: str) -> int | float | None:
    """Return the number that `text` spells in Python syntax, such as 1e3, 0o10 or inf, else None."""
    if not text.isascii():
        return None  # Python also reads digits of other scripts, such as `١٢`
    try:
        return int(text, 0)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def _is_integral(number: int | float) -> bool:
    return isinstance(number, int) or number.is_integer()


def _yaml_reads_as_number(text: str) -> bool:
    """Return whether YAML 1.1 reads `text`, written without quotes, as an int or a float."""
    tag = yaml.resolver.Resolver().resolve(yaml.ScalarNode, text, (True, False))
    return tag in _YAML_NUMBER_TAGS


def _number_spellings(text: str, number: int | float, *, whole: bool) -> list[str]:
    """Return ways to write `number` that YAML 1.1 reads as a number: decimal, then with an exponent.

    For `whole`, only an integer in decimal qualifies.
    """
    spellings = []
    if _is_integral(number):
        decimal = str(int(number))
        if len(decimal.lstrip("-")) <= _MAX_SPELLED_DIGITS:
            spellings.append(decimal)
    elif not whole and "e" not in repr(number):
        spellings.append(repr(number))
    if whole:
        return spellings

    match = _EXPONENT_NUMBER.fullmatch(text)
    if match is not None:
        sign, integer_part, fraction, exponent_sign, exponent = match.groups()
        exponent_spelling = f"{sign}{integer_part or '0'}.{fraction or '0'}e{exponent_sign or '+'}{exponent}"
        if exponent_spelling not in spellings and _yaml_reads_as_number(exponent_spelling):
            spellings.append(exponent_spelling)
    return spellings


def _empty_hint(value: Any, path: YamlPath, checker: Checker) -> str:
    reading = checker.locator.reading(path)
    if value is None and reading is not None and reading.text == "":
        return " (the key has no value); fill it in or remove the key"
    return ""
