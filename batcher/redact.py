"""Removing the API key from text before it is written anywhere."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

REDACTED = "[REDACTED]"

# A piece of the key this long, at the key's start, counts as the key: servers that echo a
# rejected header often cut it short.
MIN_PIECE = 16


class Redactor:
    """Replaces each secret, and any cut-short copy of its first MIN_PIECE or more characters."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: tuple[str, ...] = ()
        self.add(secrets)

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def add(self, secrets: Iterable[str]) -> None:
        self._secrets = tuple(sorted({*self._secrets, *(s for s in secrets if s)}, key=len, reverse=True))

    def text(self, text: str) -> str:
        for secret in self._secrets:
            if len(secret) <= MIN_PIECE:
                if secret in text:
                    text = text.replace(secret, REDACTED)
                continue
            text = _replace_prefix_copies(text, secret)
        return text

    def value(self, value: Any) -> Any:
        """Redact strings inside dicts, lists and tuples; other values pass unchanged."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(item) for item in value]
        return value


def _replace_prefix_copies(text: str, secret: str) -> str:
    piece = secret[:MIN_PIECE]
    start = text.find(piece)
    if start == -1:
        return text

    parts: list[str] = []
    position = 0
    while start != -1:
        end = start + MIN_PIECE
        limit = min(len(text), start + len(secret))
        while end < limit and text[end] == secret[end - start]:
            end += 1
        parts.append(text[position:start])
        parts.append(REDACTED)
        position = end
        start = text.find(piece, end)
    parts.append(text[position:])
    return "".join(parts)
