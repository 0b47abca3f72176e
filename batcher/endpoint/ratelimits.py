"""Rolling-window request and token limits, and OpenAI's x-ratelimit-* headers."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace


class RollingWindow:
    """Amounts (requests or tokens) admitted during the last `span_s` seconds."""

    __slots__ = ("limit", "span_s", "_entries", "_used")

    def __init__(self, limit: int, span_s: float) -> None:
        self.limit = limit
        self.span_s = span_s
        # (admission time, amount), oldest first.
        self._entries: deque[tuple[float, int]] = deque()
        self._used = 0

    def used(self, now: float) -> int:
        """Return the amount admitted during the window that ends at `now`."""
        self._expire(now)
        return self._used

    def remaining(self, now: float) -> int:
        """Return how much more the window admits at `now`."""
        return max(0, self.limit - self.used(now))

    def wait_s(self, amount: int, now: float) -> float:
        """Return the seconds until `amount` fits: 0 if it fits now, inf if it never can."""
        if amount > self.limit:
            return math.inf
        excess = self.used(now) + amount - self.limit
        if excess <= 0:
            return 0.0

        freed = 0
        for admitted_at, admitted in self._entries:
            freed += admitted
            if freed >= excess:
                return admitted_at + self.span_s - now
        raise AssertionError("the entries add up to the used amount")

    def reset_s(self, now: float) -> float:
        """Return the seconds until the oldest admitted amount leaves the window, 0 if empty.

        That is when `remaining` next grows. OpenAI documents its reset headers
        as the time until the limit is back to its full value, which for its
        continuously refilled limits is the same order of magnitude.
        """
        self._expire(now)
        if not self._entries:
            return 0.0
        return self._entries[0][0] + self.span_s - now

    def add(self, amount: int, now: float) -> None:
        """Admit `amount` at `now`."""
        self._entries.append((now, amount))
        self._used += amount

    def _expire(self, now: float) -> None:
        cutoff = now - self.span_s
        entries = self._entries
        while entries and entries[0][0] <= cutoff:
            self._used -= entries.popleft()[1]


@dataclass(frozen=True)
class RateLimitExceeded:
    """Why a request was rejected: which limit, and how long until it fits."""

    kind: str  # "requests" or "tokens", OpenAI's error type
    label: str  # for the message, e.g. "requests per min (RPM)"
    limit: int
    used: int
    requested: int
    wait_s: float  # inf when the request is larger than the limit


@dataclass(frozen=True)
class _Limit:
    window: RollingWindow
    kind: str  # "requests" or "tokens"
    label: str
    counts_tokens: bool

    def amount(self, tokens: int) -> int:
        return tokens if self.counts_tokens else 1


class RateLimits:
    """The per-second request limit and the per-minute request and token limits."""

    def __init__(self, *, rpm: int | None, tpm: int | None, rps: int | None) -> None:
        self._rpm = RollingWindow(rpm, 60.0) if rpm is not None else None
        self._tpm = RollingWindow(tpm, 60.0) if tpm is not None else None
        # Checked in this order; the first exceeded limit names the error.
        self._limits: list[_Limit] = []
        if rps is not None:
            self._limits.append(
                _Limit(RollingWindow(rps, 1.0), "requests", "requests per sec (RPS)", False)
            )
        if self._rpm is not None:
            self._limits.append(_Limit(self._rpm, "requests", "requests per min (RPM)", False))
        if self._tpm is not None:
            self._limits.append(_Limit(self._tpm, "tokens", "tokens per min (TPM)", True))

    @property
    def active(self) -> bool:
        """Whether any limit is set."""
        return bool(self._limits)

    def admit(self, tokens: int, now: float) -> RateLimitExceeded | None:
        """Admit one request of `tokens` estimated tokens, or return the limit it exceeds.

        A rejected request is not counted in any window, as with OpenAI. When
        several limits are exceeded, the first one is reported with the
        longest wait of all, so that a client waiting that long fits them all.
        """
        exceeded: RateLimitExceeded | None = None
        for limit in self._limits:
            amount = limit.amount(tokens)
            wait_s = limit.window.wait_s(amount, now)
            if wait_s <= 0:
                continue
            if exceeded is None:
                exceeded = RateLimitExceeded(
                    kind=limit.kind,
                    label=limit.label,
                    limit=limit.window.limit,
                    used=limit.window.used(now),
                    requested=amount,
                    wait_s=wait_s,
                )
            elif wait_s > exceeded.wait_s:
                exceeded = replace(exceeded, wait_s=wait_s)
        if exceeded is not None:
            return exceeded

        for limit in self._limits:
            limit.window.add(limit.amount(tokens), now)
        return None

    def headers(self, now: float) -> dict[str, str]:
        """Return OpenAI's x-ratelimit-* headers for the per-minute limits that are set."""
        headers: dict[str, str] = {}
        if self._rpm is not None:
            headers["x-ratelimit-limit-requests"] = str(self._rpm.limit)
            headers["x-ratelimit-remaining-requests"] = str(self._rpm.remaining(now))
            headers["x-ratelimit-reset-requests"] = format_go_duration(self._rpm.reset_s(now))
        if self._tpm is not None:
            headers["x-ratelimit-limit-tokens"] = str(self._tpm.limit)
            headers["x-ratelimit-remaining-tokens"] = str(self._tpm.remaining(now))
            headers["x-ratelimit-reset-tokens"] = format_go_duration(self._tpm.reset_s(now))
        return headers


def format_go_duration(seconds: float) -> str:
    """Format `seconds` as Go's time.Duration prints it, at millisecond precision.

    Examples: "0s", "76ms", "1.2s", "6m0s", "1h2m3.5s". The value is rounded up
    to the next millisecond, so a client that waits this long finds room.
    """
    total_ms = math.ceil(round(seconds * 1000, 6))
    if total_ms <= 0:
        return "0s"
    if total_ms < 1000:
        return f"{total_ms}ms"

    hours, rest_ms = divmod(total_ms, 3_600_000)
    minutes, rest_ms = divmod(rest_ms, 60_000)
    whole_s, fraction_ms = divmod(rest_ms, 1000)
    seconds_text = f"{whole_s}.{fraction_ms:03d}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{seconds_text}s"
    if minutes:
        return f"{minutes}m{seconds_text}s"
    return f"{seconds_text}s"
