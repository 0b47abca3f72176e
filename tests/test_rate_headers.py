"""Parsing of retry-after and x-ratelimit-* headers."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from batcher.rate_headers import parse_go_duration, read_announced_limits, retry_wait_s


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20ms", 0.02), ("1.5s", 1.5), ("6m0s", 360.0), ("1m30.5s", 90.5), ("1h2m3s", 3723.0), ("76ms", 0.076), ("2", 2.0), ("250us", 0.00025)],
)
def test_go_duration(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "1x", "s", "1m junk"])
def test_go_duration_rejects(text: str) -> None:
    assert parse_go_duration(text) is None


def test_retry_after_ms_wins() -> None:
    assert retry_wait_s({"retry-after-ms": "250", "retry-after": "3"}) == 0.25


def test_retry_after_seconds() -> None:
    assert retry_wait_s({"retry-after": "3"}) == 3.0


def test_retry_after_http_date() -> None:
    wait_s = retry_wait_s({"retry-after": formatdate(time.time() + 30, usegmt=True)})

    assert wait_s is not None
    assert 28.0 <= wait_s <= 31.0


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_non_positive_retry_after_is_ignored(value: str) -> None:
    assert retry_wait_s({"retry-after": value}) is None


def test_reset_of_exhausted_limit() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "6m0s",
        "x-ratelimit-remaining-tokens": "1500",
        "x-ratelimit-reset-tokens": "76ms",
    }
    assert retry_wait_s(headers) == 360.0


def test_reset_named_by_error_type() -> None:
    headers = {"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "9.8s"}

    assert retry_wait_s(headers, error_type="tokens") == pytest.approx(9.8)


def test_no_headers_means_no_wait() -> None:
    assert retry_wait_s({}) is None


def test_announced_limits() -> None:
    limits = read_announced_limits(
        {"x-ratelimit-limit-requests": "500", "x-ratelimit-limit-tokens": "90000", "x-ratelimit-remaining-requests": "499", "x-ratelimit-reset-requests": "120ms"}
    )

    assert limits is not None
    assert limits.requests_per_minute == 500
    assert limits.tokens_per_minute == 90000
    assert limits.remaining_requests == 499
    assert limits.reset_requests_s == pytest.approx(0.12)
    assert read_announced_limits({}) is None


@pytest.mark.parametrize("headers", [{"retry-after-ms": "inf"}, {"retry-after": "nan"}, {"retry-after": "1e999"}])
def test_infinite_wait_is_ignored(headers: dict[str, str]) -> None:
    assert retry_wait_s(headers) is None
