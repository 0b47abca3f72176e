"""Request spacing, token budget, cooldown, backoff and rate learning, on short real windows or a fake clock."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from batcher.limits import CATCH_UP_S, SAFETY_MARGIN, Cooldown, Pacer, RequestRate, RequestSlot, TokenBudget, backoff_s
from support import FakeClock


def test_request_rate_spaces_starts_evenly() -> None:
    rate = RequestRate(1200)  # one start every 51.5 ms with the margin
    starts: list[float] = []

    async def worker() -> None:
        for _ in range(3):
            await rate.acquire()
            starts.append(time.monotonic())

    async def main() -> None:
        await asyncio.gather(*(worker() for _ in range(4)))

    asyncio.run(main())

    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]
    assert len(starts) == 12
    # A late start brings the next one closer by CATCH_UP_S at most. The extra millisecond
    # covers the time between a start and its measurement here.
    assert min(gaps) >= rate.interval_s - CATCH_UP_S - 0.001
    assert rate.interval_s == pytest.approx(60 / (1200 * (1 - SAFETY_MARGIN)))


def test_request_rate_lateness_does_not_add_up() -> None:
    """Each start is timed from when it was due, so wake-up delays do not slow the rate."""
    rate = RequestRate(6000)  # one start every 10.3 ms with the margin
    starts: list[float] = []

    async def main() -> None:
        for _ in range(80):
            await rate.acquire()
            starts.append(time.monotonic())

    asyncio.run(main())

    ideal_s = 79 * rate.interval_s
    # Timed from the previous start instead, the 80 starts took about 75 ms longer, because
    # each wake-up is late by up to about 1 ms. Timed from when each was due, they took at
    # most 8 ms longer with both CPUs of a 2-CPU machine busy.
    assert starts[-1] - starts[0] < ideal_s + 0.025


def test_token_budget_waits_for_the_window() -> None:
    budget = TokenBudget(1000)
    budget.window_s = 0.3

    async def main() -> float:
        await budget.acquire(600)
        started = time.monotonic()
        await budget.acquire(600)
        return time.monotonic() - started

    waited_s = asyncio.run(main())

    assert 0.25 <= waited_s < 1.0


def test_token_budget_settle_keeps_estimate() -> None:
    """A response that used fewer tokens than estimated frees nothing, as OpenAI counts the estimate."""
    budget = TokenBudget(1000)
    budget.window_s = 0.3

    async def main() -> float:
        entry = await budget.acquire(900)
        budget.settle(entry, 100)
        started = time.monotonic()
        await budget.acquire(800)
        return time.monotonic() - started

    assert asyncio.run(main()) >= 0.25


def test_token_budget_settle_raises_estimate() -> None:
    budget = TokenBudget(1000)
    budget.window_s = 0.3

    async def main() -> float:
        entry = await budget.acquire(100)
        budget.settle(entry, 900)
        started = time.monotonic()
        await budget.acquire(200)
        return time.monotonic() - started

    assert asyncio.run(main()) >= 0.25


def test_oversized_request_goes_alone() -> None:
    budget = TokenBudget(100)
    budget.window_s = 0.2

    async def main() -> None:
        await budget.acquire(5000)
        await asyncio.wait_for(budget.acquire(5000), timeout=2.0)

    asyncio.run(main())


def test_cooldown_holds_every_waiter() -> None:
    cooldown = Cooldown()

    async def main() -> list[float]:
        cooldown.extend(0.2)
        started = time.monotonic()

        async def waiter() -> float:
            await cooldown.wait()
            return time.monotonic() - started

        return await asyncio.gather(*(waiter() for _ in range(5)))

    assert all(waited >= 0.19 for waited in asyncio.run(main()))


def test_cooldown_never_shrinks() -> None:
    cooldown = Cooldown()
    cooldown.extend(10.0)
    cooldown.extend(0.1)

    assert cooldown.remaining_s > 9.0


def test_pacer_rechecks_cooldown_after_rate_wait() -> None:
    """A worker queued behind the request rate waits out a 429 pause that began meanwhile."""
    pacer = Pacer(requests_per_minute=600, tokens_per_minute=None)  # one start every 103 ms

    async def main() -> float:
        await pacer.before_request(10)
        queued = asyncio.create_task(pacer.before_request(10))
        await asyncio.sleep(0.02)
        pacer.cooldown.extend(0.3)
        started = time.monotonic()
        await queued
        return time.monotonic() - started

    assert asyncio.run(main()) >= 0.29


def test_pacer_returns_tokens_of_unsent_start() -> None:
    """A token start given up for a 429 pause does not count against the budget."""
    pacer = Pacer(requests_per_minute=600, tokens_per_minute=1000)

    async def main() -> float:
        await pacer.before_request(500)
        queued = asyncio.create_task(pacer.before_request(400))
        await asyncio.sleep(0.02)
        pacer.cooldown.extend(0.2)
        await asyncio.wait_for(queued, timeout=1.0)
        started = time.monotonic()
        # 970 tokens fit a minute after the margin: 500 + 400 are in, the given-up 400 is not.
        await asyncio.wait_for(pacer.before_request(60), timeout=1.0)
        return time.monotonic() - started

    assert asyncio.run(main()) < 0.2


def test_backoff_is_jittered_and_capped() -> None:
    rng = random.Random(7)
    waits = [backoff_s(attempt, base_s=1.0, max_s=8.0, rng=rng) for attempt in range(1, 10)]

    assert all(0.0 <= wait <= 8.0 for wait in waits)
    assert len(set(waits)) == len(waits)
    assert backoff_s(1, base_s=1.0, max_s=8.0, rng=random.Random(1)) <= 1.0


def fake_pacer(clock: FakeClock) -> Pacer:
    return Pacer(requests_per_minute=None, tokens_per_minute=None, clock=clock, sleep=clock.sleep)


def test_pacer_adopts_announced_limits() -> None:
    pacer = Pacer(requests_per_minute=None, tokens_per_minute=None)

    pacer.after_success(RequestSlot(0.0), {"x-ratelimit-limit-requests": "600", "x-ratelimit-limit-tokens": "50000"}, total_tokens=None)

    assert pacer.requests_per_minute == 600
    assert pacer.tokens_per_minute == 50000


def test_pacer_keeps_the_jobs_limits() -> None:
    pacer = Pacer(requests_per_minute=100, tokens_per_minute=1000)

    pacer.after_success(RequestSlot(0.0), {"x-ratelimit-limit-requests": "600", "x-ratelimit-limit-tokens": "50000"}, total_tokens=None)
    pacer.after_failure(RequestSlot(0.0), {}, rate_limited=True, wait_s=0.1)

    assert pacer.requests_per_minute == 100
    assert pacer.tokens_per_minute == 1000


def test_announced_limit_replaces_learned_rate() -> None:
    clock = FakeClock()
    pacer = fake_pacer(clock)
    pacer.after_success(RequestSlot(clock()), {}, total_tokens=None)
    pacer.after_failure(RequestSlot(clock()), {}, rate_limited=True, wait_s=1.0)

    pacer.after_success(RequestSlot(clock()), {"x-ratelimit-limit-requests": "600"}, total_tokens=None)
    pacer.after_failure(RequestSlot(clock()), {}, rate_limited=True, wait_s=1.0)

    assert pacer.requests_per_minute == 600


def test_pacer_pauses_when_remaining_is_zero() -> None:
    pacer = Pacer(requests_per_minute=None, tokens_per_minute=None)

    pacer.after_success(
        RequestSlot(0.0),
        {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"},
        total_tokens=None,
    )

    assert pacer.cooldown.remaining_s > 1.5


def test_pacer_learns_a_rate_from_a_429() -> None:
    """The rate learned from a 429 is the rate of successes over the last second of the run."""
    clock = FakeClock()
    pacer = fake_pacer(clock)
    for _ in range(10):
        pacer.after_success(RequestSlot(clock()), {}, total_tokens=None)

    pacer.after_failure(RequestSlot(clock()), {}, rate_limited=True, wait_s=0.5)

    assert pacer.requests_per_minute == 600
    assert pacer.cooldown.remaining_s == 0.5


def test_pacer_learns_nothing_without_successes() -> None:
    clock = FakeClock()
    pacer = fake_pacer(clock)

    pacer.after_failure(RequestSlot(clock()), {}, rate_limited=True, wait_s=0.5)

    assert pacer.requests_per_minute is None


def test_other_failures_are_not_successes() -> None:
    clock = FakeClock()
    pacer = fake_pacer(clock)
    for _ in range(10):
        pacer.after_failure(RequestSlot(clock()), {}, rate_limited=False, wait_s=0.1)

    pacer.after_failure(RequestSlot(clock()), {}, rate_limited=True, wait_s=0.5)

    assert pacer.requests_per_minute is None


def test_burst_of_429s_learns_one_rate() -> None:
    """429s of the burst that taught the rate do not lower it, and its later successes count."""
    clock = FakeClock()
    pacer = fake_pacer(clock)
    burst = [RequestSlot(clock()) for _ in range(32)]
    clock.advance(0.01)

    # Ten of the 32 succeed, but three 429s are read before most of the successes.
    for slot in burst[:2]:
        pacer.after_success(slot, {}, total_tokens=None)
    for slot in burst[10:13]:
        pacer.after_failure(slot, {}, rate_limited=True, wait_s=1.0)
    for slot in burst[2:10]:
        pacer.after_success(slot, {}, total_tokens=None)
    for slot in burst[13:]:
        pacer.after_failure(slot, {}, rate_limited=True, wait_s=1.0)

    assert pacer.requests_per_minute == 600


def test_learned_rate_lowered_by_later_429() -> None:
    """A 429 to a request paced by the learned rate lowers it, once per change."""
    clock = FakeClock()
    pacer = fake_pacer(clock)
    for _ in range(10):
        pacer.after_success(RequestSlot(clock()), {}, total_tokens=None)
    pacer.after_failure(RequestSlot(clock()), {}, rate_limited=True, wait_s=1.0)
    clock.advance(2.0)
    paced = [RequestSlot(clock()), RequestSlot(clock())]
    clock.advance(0.01)

    pacer.after_failure(paced[0], {}, rate_limited=True, wait_s=0.1)
    lowered = pacer.requests_per_minute
    clock.advance(0.01)
    pacer.after_failure(paced[1], {}, rate_limited=True, wait_s=0.1)

    assert lowered == 600 * 0.8
    assert pacer.requests_per_minute == lowered


def test_learned_rate_raised_after_successes() -> None:
    clock = FakeClock()
    pacer = fake_pacer(clock)
    for _ in range(10):
        pacer.after_success(RequestSlot(clock()), {}, total_tokens=None)
    pacer.after_failure(RequestSlot(clock()), {}, rate_limited=True, wait_s=1.0)

    for _ in range(50):
        clock.advance(0.1)
        pacer.after_success(RequestSlot(clock()), {}, total_tokens=None)

    assert pacer.requests_per_minute == pytest.approx(600 * 1.1)


def test_rate_change_keeps_waiters_in_line() -> None:
    """A changed rate applies from the next start; a worker already waiting is not skipped."""
    rate = RequestRate(300)  # one start every 206 ms

    async def main() -> float:
        await rate.acquire()
        started = time.monotonic()
        waiting = asyncio.create_task(rate.acquire())
        await asyncio.sleep(0.01)
        rate.change(6000)
        await rate.acquire()
        assert waiting.done()
        return time.monotonic() - started

    # The waiting worker sleeps out the old interval, then the newcomer goes 10 ms later.
    assert 0.2 <= asyncio.run(main()) < 0.4


def test_cooldown_waits_on_the_given_clock() -> None:
    clock = FakeClock()
    cooldown = Cooldown(clock=clock, sleep=clock.sleep)
    cooldown.extend(360.0)

    asyncio.run(cooldown.wait())

    assert clock() == 1360.0
