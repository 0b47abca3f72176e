"""JSON encoding: orjson where installed, the json module as its fallback, with the same output."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest

import batcher.jsonl

# A results line with what the fast path must keep exactly: nesting, nulls, non-ASCII text
# and control characters.
RECORD = {
    "id": "p-\u00e9t\u00e9",
    "status": "succeeded",
    "attempts": 1,
    "latency_ms": 412,
    "response": {
        "choices": [{"message": {"content": "caf\u00e9 \u2028 \x1f \"quoted\"", "refusal": None}}],
        "usage": {"total_tokens": 22},
        "temperature": 0.7,
    },
}


def compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@pytest.fixture(params=["orjson", "json"])
def jsonl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The jsonl module as loaded with orjson, and as loaded where orjson is missing."""
    if request.param == "orjson":
        pytest.importorskip("orjson")
    else:
        # A None entry in sys.modules makes `import orjson` raise ImportError.
        monkeypatch.setitem(sys.modules, "orjson", None)
    yield importlib.reload(batcher.jsonl)
    monkeypatch.undo()
    importlib.reload(batcher.jsonl)


def test_fallback_loaded_without_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "orjson", None)
    try:
        module = importlib.reload(batcher.jsonl)
        assert module.orjson is None
        assert module.loads is json.loads
    finally:
        monkeypatch.undo()
        importlib.reload(batcher.jsonl)


def test_dumps_matches_json_module(jsonl: ModuleType) -> None:
    assert jsonl.dumps(RECORD) == compact(RECORD)


def test_dumps_round_trips(jsonl: ModuleType) -> None:
    assert jsonl.loads(jsonl.dumps(RECORD)) == RECORD


@pytest.mark.parametrize(
    "value",
    [{"big": 2**70}, {1: "integer key"}, {"lone surrogate": "\ud800"}],
    ids=["integer beyond 64 bits", "integer key", "lone surrogate"],
)
def test_dumps_values_orjson_rejects(jsonl: ModuleType, value: object) -> None:
    assert jsonl.dumps(value) == compact(value)


def test_dumps_unsupported_type_raises(jsonl: ModuleType) -> None:
    with pytest.raises(TypeError):
        jsonl.dumps({"value": object()})


def test_loads_bytes_and_text(jsonl: ModuleType) -> None:
    assert jsonl.loads(b'{"a": [1, 2.5, null]}') == {"a": [1, 2.5, None]}
    assert jsonl.loads('{"a": "\u00e9"}') == {"a": "\u00e9"}


def test_loads_nan_as_json_module_does(jsonl: ModuleType) -> None:
    value = jsonl.loads(b'{"x": NaN}')["x"]

    assert value != value


@pytest.mark.parametrize("data", [b"", b"{", b"<html>502</html>", b"\xff\xfe"], ids=["empty", "cut short", "html", "not utf-8"])
def test_loads_invalid_raises_value_error(jsonl: ModuleType, data: bytes) -> None:
    with pytest.raises(ValueError):
        jsonl.loads(data)


def test_dumps_ascii_only_escapes(jsonl: ModuleType) -> None:
    assert jsonl.dumps(RECORD, ascii_only=True) == json.dumps(RECORD, separators=(",", ":"))
    assert jsonl.dumps(RECORD, ascii_only=True).isascii()
