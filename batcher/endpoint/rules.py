"""Scripted responses to chat requests whose messages contain a given text."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from batcher.endpoint.values import is_finite_number, is_integer
from batcher.errors import JobError

_RULE_KEYS = ("match", "times", "status", "headers", "body", "delay_ms")


@dataclass(frozen=True)
class Rule:
    """A scripted response, checked before auth, limits and faults.

    A rule applies to a chat request whose message contents, joined with
    newlines, contain `match` ("" matches every request). `times` is how many
    requests the rule handles before it is used up, and None means no limit.
    A dict or list `body` is sent as JSON, a str `body` as given (text/plain
    unless `headers` set a content-type). Without a body, a 2xx status sends
    the usual completion (or the usual 400 or 404 for an invalid request) and
    any other status an OpenAI-shaped error for that status.
    """

    match: str
    status: int = 200
    times: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    delay_ms: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.match, str):
            raise ValueError(f"match must be a string, got {self.match!r}")
        if not is_integer(self.status) or not 100 <= self.status <= 599:
            raise ValueError(f"status must be an integer from 100 to 599, got {self.status!r}")
        if self.times is not None and (not is_integer(self.times) or self.times < 1):
            raise ValueError(
                f"times must be a positive integer, or null for no limit, got {self.times!r}"
            )
        if not is_finite_number(self.delay_ms) or self.delay_ms < 0:
            raise ValueError(f"delay_ms must be a number >= 0, got {self.delay_ms!r}")
        if not isinstance(self.body, (dict, list, str, type(None))):
            raise ValueError(f"body must be an object, a list, a string or null, got {self.body!r}")
        if not isinstance(self.headers, Mapping):
            raise ValueError(f"headers must be an object, got {self.headers!r}")

        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            if not isinstance(name, str) or not isinstance(value, (str, int, float)):
                raise ValueError(
                    f"headers must map names to strings or numbers, got {name!r}: {value!r}"
                )
            headers[name] = str(value)
        object.__setattr__(self, "headers", MappingProxyType(headers))


def load_rules(path: str | Path) -> tuple[Rule, ...]:
    """Read a JSON list of rules from `path`.

    Raises:
        JobError: the file cannot be read, is not valid JSON, or a rule is
            invalid. The message names the file and the rule's position.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobError(f"Cannot read the rules file {path}: {exc}.") from exc

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobError(
            f"{path}:{exc.lineno}:{exc.colno}: the rules file is not valid JSON: {exc.msg}."
        ) from exc
    if not isinstance(data, list):
        raise JobError(f"{path}: the rules file must contain a JSON list of rule objects.")

    rules = []
    for number, item in enumerate(data, start=1):
        rules.append(_parse_rule(item, where=f"{path}: rule {number}"))
    return tuple(rules)


def _parse_rule(item: object, *, where: str) -> Rule:
    if not isinstance(item, dict):
        raise JobError(f"{where} must be a JSON object, got {item!r}.")
    unknown = sorted(set(item) - set(_RULE_KEYS))
    if unknown:
        raise JobError(
            f"{where} has the unknown key {unknown[0]!r}. Valid keys: {', '.join(_RULE_KEYS)}."
        )
    if "match" not in item:
        raise JobError(f"{where} has no 'match' key; use \"\" to match every request.")

    try:
        return Rule(**item)
    except ValueError as exc:
        raise JobError(f"{where}: {exc}.") from exc
