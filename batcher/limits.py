"""Client-side limits: evenly spaced request starts, a token budget, and a shared 429 cooldown."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from asyncio_throttle import Throttler

from batcher.rate_headers import AnnouncedLimits, read_announced_limits

# Fraction of each limit kept unused, so that network jitter between our clock and the
# server's cannot push a rolling window over the limit.
SAFETY_MARGIN = 0.03

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


# Lateness of a start that the next start may make up for. Each wake-up of the event loop is
# late by up to about 1 ms, because epoll rounds its timeout up to whole milliseconds. Timing
# each start from when it was due keeps that lateness from adding up over a run. Starts are
# then at least one interval minus CATCH_UP_S apart, and the safety margin covers that:
# ceil(rpm / 60) + 1 starts still span more than 1.02 s.
CATCH_UP_S = 0.005


class _SpacedThrottler(Throttler):
    """asyncio-throttle's rolling window, woken exactly when a slot frees instead of polling.

    The library's own `acquire` polls every `retry_interval` (10 ms by default), which costs CPU
    for every waiting worker. Waiters here queue on a lock, and the one at the front sleeps until
    the oldest start leaves the window.
    """

    def __init__(self, rate_limit: int, period: float) -> None:
        super().__init__(rate_limit=rate_limit, period=period)
        self._queue = asyncio.Lock()

    def flush(self) -> None:
        # The library drops a start only once it is more than `period` old. A waiter woken at
        # exactly `period` would then sleep once more, so a start leaves at `period` here.
        now = time.monotonic()
        while self._task_logs and now - self._task_logs[0] >= self.period:
            self._task_logs.popleft()

    async def acquire(self) -> None:
        async with self._queue:
            due_s = time.monotonic()
            while True:
                if len(self._task_logs) >= self.rate_limit:
                    due_s = self._task_logs[0] + self.period
                self.flush()
                if len(self._task_logs) < self.rate_limit:
                    break
                await asyncio.sleep(max(due_s - time.monotonic(), 0.0005))
            self._task_logs.append(max(due_s, time.monotonic() - CATCH_UP_S))


class RequestRate:
    """Starts at most `requests_per_minute` requests a minute, evenly spaced.

    One start per interval of 60 / rpm seconds (widened by the safety margin) keeps every
    rolling minute under the limit and every rolling second under ceil(rpm / 60).
    """

    def __init__(self, requests_per_minute: float) -> None:
        self._throttler = _SpacedThrottler(rate_limit=1, period=_interval_s(requests_per_minute))
        self.requests_per_minute = requests_per_minute

    @property
    def interval_s(self) -> float:
        return self._throttler.period

    def change(self, requests_per_minute: float) -> None:
        """Use a new rate from the next start on; workers already waiting keep their place."""
        self._throttler.period = _interval_s(requests_per_minute)
        self.requests_per_minute = requests_per_minute

    async def acquire(self) -> None:
        await self._throttler.acquire()


def _interval_s(requests_per_minute: float) -> float:
    return 60.0 / (requests_per_minute * (1.0 - SAFETY_MARGIN))


class _TokenStart:
    """One request's share of the token window."""

    __slots__ = ("start_s", "tokens", "in_window")

    def __init__(self, start_s: float, tokens: float) -> None:
        self.start_s = start_s
        self.tokens = tokens
        self.in_window = True


class TokenBudget:
    """Keeps the estimated tokens started in any rolling 60 s window within `tokens_per_minute`.

    Each start is recorded with its estimate and corrected by `settle` once the response's
    `usage` is known. A request larger than the whole budget waits for an empty window and then
    goes alone, so it is neither starved nor able to block the run forever.
    """

    window_s = 60.0

    def __init__(self, tokens_per_minute: int) -> None:
        self.tokens_per_minute = tokens_per_minute
        self._budget = tokens_per_minute * (1.0 - SAFETY_MARGIN)
        self._starts: deque[_TokenStart] = deque()
        self._used = 0.0
        self._queue = asyncio.Lock()

    def _expire(self, now: float) -> None:
        while self._starts and now - self._starts[0].start_s >= self.window_s:
            expired = self._starts.popleft()
            expired.in_window = False
            self._used -= expired.tokens

    async def acquire(self, tokens: int) -> _TokenStart:
        """Wait until `tokens` fit in the window, record them, and return the entry to settle."""
        needed = min(float(tokens), self._budget)
        async with self._queue:
            while True:
                now = time.monotonic()
                self._expire(now)
                if self._used + needed <= self._budget or not self._starts:
                    break
                await asyncio.sleep(max(self._starts[0].start_s + self.window_s - now, 0.001))
            entry = _TokenStart(now, needed)
            self._starts.append(entry)
            self._used += needed
            return entry

    def settle(self, entry: _TokenStart, actual_tokens: int) -> None:
        """Raise a start's estimate to the tokens the response reports, if it used more.

        A lower usage does not free budget: OpenAI-style limiters count the estimate (prompt
        plus max_tokens) when the request starts, so giving it back would lead to 429s.
        """
        actual = min(float(actual_tokens), self._budget)
        if actual <= entry.tokens:
            return
        if entry.in_window:
            self._used += actual - entry.tokens
        entry.tokens = actual

    def release(self, entry: _TokenStart) -> None:
        """Give back the tokens of a start whose request was never sent."""
        if entry.in_window:
            self._used -= entry.tokens
        entry.tokens = 0.0


class Cooldown:
    """A pause that every worker waits out together after a 429.

    `clock` and `sleep` default to `time.monotonic` and `asyncio.sleep`; tests pass a fake pair
    to wait out minutes in no time.
    """

    def __init__(self, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._until = 0.0

    @property
    def remaining_s(self) -> float:
        return max(self._until - self._clock(), 0.0)

    def extend(self, wait_s: float) -> None:
        """Make every worker wait at least `wait_s` seconds from now before its next request."""
        self._until = max(self._until, self._clock() + wait_s)

    async def wait(self) -> None:
        while (remaining_s := self._until - self._clock()) > 0:
            await self._sleep(remaining_s)


def backoff_s(attempt: int, *, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Return an exponential backoff with full jitter for the given attempt (1 = the first retry)."""
    ceiling = min(max_s, base_s * (2.0 ** (attempt - 1)))
    return (rng or random).uniform(0.0, ceiling)


@dataclass(frozen=True, slots=True)
class RequestSlot:
    """One request's permission to start: when it was granted, and its share of the token budget."""

    started_s: float
    budget: TokenBudget | None = None
    tokens: _TokenStart | None = None


class Pacer:
    """Everything a worker waits for before a request: cooldown, request rate and token budget.

    The job's limits are used as given. Where the job sets none, the first limits the endpoint
    announces in `x-ratelimit-limit-*` take their place, and an `x-ratelimit-remaining-*` of zero
    pauses every worker until its reset. Where neither exists, a 429 sets a learned request rate
    from the rate that was succeeding, so that the workers do not storm the endpoint. Later 429s
    lower the learned rate, and a run of successes raises it slowly.
    """

    # Seconds of successes used to estimate the rate the endpoint accepts after a 429.
    _OBSERVE_WINDOW_S = 10.0
    # After this many successes since the learned rate last changed, it is raised by `_INCREASE`.
    _INCREASE_AFTER = 50
    _INCREASE = 1.1
    _DECREASE = 0.8

    def __init__(
        self,
        *,
        requests_per_minute: float | None,
        tokens_per_minute: int | None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """Set up the job's limits; `clock` and `sleep` drive the cooldown and the rate learning."""
        self._clock = clock
        self.cooldown = Cooldown(clock=clock, sleep=sleep)
        self._request_rate = RequestRate(requests_per_minute) if requests_per_minute else None
        self._token_budget = TokenBudget(tokens_per_minute) if tokens_per_minute else None
        # Where the request rate comes from: "job", "announced", "learned", or None for no rate.
        self._rate_source: str | None = "job" if requests_per_minute else None
        self._tokens_fixed = tokens_per_minute is not None
        self._started_s = clock()
        self._successes: deque[float] = deque()
        # Start and 429 times while no rate is set, for a first estimate when 429s come back
        # before any success (fast rejections, slow completions).
        self._starts: deque[float] = deque()
        self._rejections: deque[float] = deque()
        # When the learned rate last changed, whether that change was an estimate from the
        # successes, and how many successes came since.
        self._rate_changed_s = 0.0
        self._rate_estimated = False
        self._successes_since_change = 0

    @property
    def requests_per_minute(self) -> float | None:
        return None if self._request_rate is None else self._request_rate.requests_per_minute

    @property
    def tokens_per_minute(self) -> int | None:
        return None if self._token_budget is None else self._token_budget.tokens_per_minute

    async def before_request(self, estimated_tokens: int) -> RequestSlot:
        """Wait for the cooldown and the limits, and return the slot to report back with."""
        while True:
            await self.cooldown.wait()
            if self._request_rate is not None:
                await self._request_rate.acquire()
            budget = self._token_budget
            entry = await budget.acquire(estimated_tokens) if budget is not None else None
            if self.cooldown.remaining_s <= 0:
                started_s = self._clock()
                if self._rate_source is None:
                    _append_recent(self._starts, started_s, self._OBSERVE_WINDOW_S)
                return RequestSlot(started_s, budget, entry)

            # A 429 arrived while this worker waited for a slot, and its wait applies to every
            # request that has not started yet.
            if budget is not None and entry is not None:
                budget.release(entry)

    def after_success(self, slot: RequestSlot, headers: Mapping[str, str], *, total_tokens: int | None) -> None:
        """Count a success, correct its token estimate, and follow the announced limits."""
        if slot.budget is not None and slot.tokens is not None and total_tokens is not None:
            slot.budget.settle(slot.tokens, total_tokens)
        self._note_success()
        self._follow_announced(headers, rate_limited=False)

    def after_failure(
        self, slot: RequestSlot, headers: Mapping[str, str], *, rate_limited: bool, wait_s: float
    ) -> None:
        """Adapt to a failed response; after a 429, every worker pauses for `wait_s`."""
        self._follow_announced(headers, rate_limited=rate_limited)
        if rate_limited:
            self.cooldown.extend(wait_s)
            self._on_rate_limited(slot.started_s)

    def _follow_announced(self, headers: Mapping[str, str], *, rate_limited: bool) -> None:
        announced = read_announced_limits(headers) if headers else None
        if announced is None:
            return
        self._adopt_announced(announced)
        # After a 429, the cooldown already contains the wait the endpoint requested.
        if not rate_limited:
            if announced.remaining_requests == 0 and announced.reset_requests_s:
                self.cooldown.extend(announced.reset_requests_s)
            if announced.remaining_tokens == 0 and announced.reset_tokens_s:
                self.cooldown.extend(announced.reset_tokens_s)

    def _adopt_announced(self, announced: AnnouncedLimits) -> None:
        rpm = announced.requests_per_minute
        if self._rate_source in (None, "learned") and rpm and rpm > 0:
            if self._request_rate is None:
                self._request_rate = RequestRate(rpm)
            else:
                self._request_rate.change(rpm)
            self._rate_source = "announced"
        tpm = announced.tokens_per_minute
        if not self._tokens_fixed and tpm and tpm > 0:
            self._token_budget = TokenBudget(tpm)
            self._tokens_fixed = True

    def _note_success(self) -> None:
        now = self._clock()
        self._successes.append(now)
        while now - self._successes[0] > self._OBSERVE_WINDOW_S:
            self._successes.popleft()
        if self._rate_source != "learned" or self._request_rate is None:
            return

        self._successes_since_change += 1
        if self._successes_since_change >= self._INCREASE_AFTER:
            self._change_learned_rate(self._request_rate.requests_per_minute * self._INCREASE, now)

    def _on_rate_limited(self, started_s: float) -> None:
        if self._rate_source in ("job", "announced"):
            return
        now = self._clock()
        if self._rate_source is None:
            _append_recent(self._rejections, now, self._OBSERVE_WINDOW_S)
        estimate = self._accepted_per_minute(now)
        if self._request_rate is None:
            # With no success seen yet there is no rate to learn; the cooldown paces the retries.
            if estimate is not None:
                self._request_rate = RequestRate(estimate)
                self._rate_source = "learned"
                self._rate_changed_s = now
                self._rate_estimated = True
                self._successes_since_change = 0
            return

        if started_s < self._rate_changed_s:
            # The request was sent before the rate last changed, so that rate did not pace it and
            # is not lowered. Successes of the same burst that arrived after an estimate was made
            # may still raise that estimate.
            current = self._request_rate.requests_per_minute
            if self._rate_estimated and estimate is not None and estimate > current:
                self._request_rate.change(estimate)
            return
        self._change_learned_rate(max(self._request_rate.requests_per_minute * self._DECREASE, 1.0), now)

    def _change_learned_rate(self, requests_per_minute: float, now: float) -> None:
        assert self._request_rate is not None
        self._request_rate.change(requests_per_minute)
        self._rate_changed_s = now
        self._rate_estimated = False
        self._successes_since_change = 0

    def _accepted_per_minute(self, now: float) -> float | None:
        """Return the rate the endpoint accepted over the recent past, or None if unknown.

        That is the rate of successes or, before the first success, of the starts that were not
        rejected with a 429, since those are still in flight.
        """
        span_s = min(self._OBSERVE_WINDOW_S, max(now - self._started_s, 1.0))
        recent = sum(1 for succeeded in self._successes if now - succeeded <= span_s)
        if not recent:
            started = sum(1 for start in self._starts if now - start <= span_s)
            rejected = sum(1 for rejection in self._rejections if now - rejection <= span_s)
            recent = started - rejected
        return recent / span_s * 60.0 if recent > 0 else None


def _append_recent(times: deque[float], now: float, window_s: float) -> None:
    """Append `now` and drop the times older than `window_s`."""
    times.append(now)
    while now - times[0] > window_s:
        times.popleft()
