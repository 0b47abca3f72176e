"""Parse the rate-limit headers of OpenAI-compatible responses into seconds and counts."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

# Go's time.Duration text, as OpenAI sends it in x-ratelimit-reset-*: "20ms", "1.5s", "6m0s", "1h2m3.5s".
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float | None:
    """Return the seconds in a Go duration such as `6m0s`, or None if the text is not one.

    A bare number is read as seconds, since some gateways send that instead.
    """
    text = text.strip()
    if not text:
        return None

    sign = -1.0 if text.startswith("-") else 1.0
    text = text.lstrip("+-")
    try:
        return sign * float(text)
    except ValueError:
        pass

    total_s = 0.0
    position = 0
    for match in _GO_DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total_s += float(match.group(1)) * _GO_UNIT_S[match.group(2)]
        position = match.end()
    if position != len(text) or position == 0:
        return None
    return sign * total_s


def parse_retry_after(text: str, *, now_s: float | None = None) -> float | None:
    """Return the seconds a `retry-after` value requests: delta seconds or an HTTP date."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass

    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return when.timestamp() - (time.time() if now_s is None else now_s)


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def _positive(value: float | None) -> float | None:
    """Return a positive, finite number of seconds, else None (`inf` and `nan` included)."""
    return value if value is not None and 0 < value < math.inf else None


def retry_wait_s(headers: Mapping[str, str], *, error_type: str | None = None) -> float | None:
    """Return how long the endpoint requests the client to wait, or None without such a header.

    The order is `retry-after-ms`, `retry-after`, then the `x-ratelimit-reset-*` header of the
    limit that is exhausted (remaining 0, or the limit named by the error's `type`). Negative and
    zero values count as not said, so the caller falls back to backoff.
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            wait_s = _positive(float(millis) / 1000.0)
        except ValueError:
            wait_s = None
        if wait_s is not None:
            return wait_s

    after = headers.get("retry-after")
    if after is not None:
        wait_s = _positive(parse_retry_after(after))
        if wait_s is not None:
            return wait_s

    resets: list[float] = []
    for limit in ("requests", "tokens"):
        reset_text = headers.get(f"x-ratelimit-reset-{limit}")
        if reset_text is None:
            continue
        reset_s = _positive(parse_go_duration(reset_text))
        if reset_s is None:
            continue
        exhausted = _header_int(headers, f"x-ratelimit-remaining-{limit}") == 0
        if exhausted or error_type == limit:
            resets.append(reset_s)
    return max(resets) if resets else None


@dataclass(frozen=True, slots=True)
class AnnouncedLimits:
    """The limits and remaining budget an endpoint reports in its `x-ratelimit-*` headers."""

    requests_per_minute: int | None
    tokens_per_minute: int | None
    remaining_requests: int | None
    remaining_tokens: int | None
    reset_requests_s: float | None
    reset_tokens_s: float | None


def read_announced_limits(headers: Mapping[str, str]) -> AnnouncedLimits | None:
    """Return the announced limits, or None when the response carries no `x-ratelimit-*` header."""
    if "x-ratelimit-limit-requests" not in headers and "x-ratelimit-limit-tokens" not in headers:
        return None

    def reset(name: str) -> float | None:
        value = headers.get(name)
        return None if value is None else parse_go_duration(value)

    return AnnouncedLimits(
        requests_per_minute=_header_int(headers, "x-ratelimit-limit-requests"),
        tokens_per_minute=_header_int(headers, "x-ratelimit-limit-tokens"),
        remaining_requests=_header_int(headers, "x-ratelimit-remaining-requests"),
        remaining_tokens=_header_int(headers, "x-ratelimit-remaining-tokens"),
        reset_requests_s=reset("x-ratelimit-reset-requests"),
        reset_tokens_s=reset("x-ratelimit-reset-tokens"),
    )
