"""Run counters and the summary's timestamps."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from batcher.summary import _format_utc_second, utc_now_iso


def test_format_utc_second_epoch() -> None:
    assert _format_utc_second(0) == "1970-01-01T00:00:00Z"


def test_format_utc_second_matches_datetime() -> None:
    second = 1_796_410_800  # 2026-12-04T19:00:00Z

    expected = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    assert _format_utc_second(second) == expected
    assert _format_utc_second(second + 1) == "2026-12-04T19:00:01Z"


def test_utc_now_iso_is_current_second() -> None:
    before = int(time.time())
    text = utc_now_iso()
    after = int(time.time())

    assert text in {_format_utc_second(second) for second in range(before, after + 1)}
