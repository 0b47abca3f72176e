"""The redactor: the key, and cut-short copies of it, never reach a file."""

from __future__ import annotations

from pathlib import Path

from batcher.redact import REDACTED, Redactor
from batcher.store import ResultsStore

KEY = "sk-proj-" + "Zq9" * 20 + "cdef"


def test_whole_key_is_replaced() -> None:
    assert Redactor([KEY]).text(f"key {KEY} rejected") == f"key {REDACTED} rejected"


def test_cut_short_copy_is_replaced() -> None:
    echoed = f"Bearer {KEY[:40]}... (truncated)"

    redacted = Redactor([KEY]).text(echoed)

    assert KEY[:16] not in redacted
    assert redacted == f"Bearer {REDACTED}... (truncated)"


def test_short_piece_and_fingerprint_are_kept() -> None:
    text = f"key {KEY[:10]} and sk-...cdef"

    assert Redactor([KEY]).text(text) == text


def test_nested_values_are_redacted() -> None:
    value = {"error": {"message": f"bad key {KEY}", "items": [KEY, 3]}}

    assert Redactor([KEY]).value(value) == {"error": {"message": f"bad key {REDACTED}", "items": [REDACTED, 3]}}


def test_store_redacts_echoed_key(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.redactor.add([KEY])
    store.open()
    store.append({"id": "a", "status": "failed", "error": {"message": f"Bad request from key {KEY}"}})
    store.close()

    text = (tmp_path / "results.jsonl").read_text(encoding="utf-8")
    assert KEY not in text
    assert KEY[:16] not in text
    assert REDACTED in text
