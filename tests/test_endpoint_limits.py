"""Tests of the local endpoint's rolling-window rate limits and their headers."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from batcher.endpoint import EndpointConfig, LocalEndpoint
from batcher.endpoint.ratelimits import RateLimits, RollingWindow, format_go_duration

KEY = "sk-test-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=5)
SCENARIO_TIMEOUT_S = 10


class FakeClock:
    """A clock that moves only when a test advances it."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


Scenario = Callable[[LocalEndpoint, aiohttp.ClientSession], Awaitable[Any]]


def serve(config: EndpointConfig, scenario: Scenario, *, clock: FakeClock | None = None) -> Any:
    """Run `scenario` against a fresh endpoint and return what it returns."""

    async def main() -> Any:
        async with (
            LocalEndpoint(config, clock=clock) as endpoint,
            aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session,
        ):
            return await asyncio.wait_for(scenario(endpoint, session), SCENARIO_TIMEOUT_S)

    return asyncio.run(main())


async def post_chat(
    session: aiohttp.ClientSession, endpoint: LocalEndpoint, content: str = "hi", **params: Any
) -> tuple[int, Any, Any]:
    """Send one chat request; return the status, the headers and the JSON body."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **params}
    async with session.post(
        f"{endpoint.base_url}/chat/completions", headers=AUTH, json=body
    ) as response:
        return response.status, response.headers, json.loads(await response.text())


# The window and the duration format


def test_window_admits_up_to_limit() -> None:
    """A window reports used and remaining amounts and drops entries older than its span."""
    window = RollingWindow(limit=3, span_s=60.0)

    window.add(1, now=0.0)
    window.add(1, now=10.0)

    assert window.used(now=10.0) == 2
    assert window.remaining(now=10.0) == 1
    assert window.used(now=60.0) == 1
    assert window.remaining(now=70.0) == 3


def test_window_wait_until_room() -> None:
    """The wait is until enough of the oldest entries leave the window."""
    window = RollingWindow(limit=100, span_s=60.0)
    window.add(30, now=0.0)
    window.add(50, now=20.0)

    assert window.wait_s(20, now=30.0) == 0.0
    assert window.wait_s(40, now=30.0) == pytest.approx(30.0)
    assert window.wait_s(90, now=30.0) == pytest.approx(50.0)
    assert window.wait_s(101, now=30.0) == math.inf


def test_window_reset_is_oldest_expiry() -> None:
    """reset_s is the time until the oldest entry leaves, 0 for an empty window."""
    window = RollingWindow(limit=5, span_s=60.0)

    assert window.reset_s(now=0.0) == 0.0
    window.add(1, now=0.0)
    window.add(1, now=30.0)
    assert window.reset_s(now=45.0) == pytest.approx(15.0)
    assert window.reset_s(now=60.0) == pytest.approx(30.0)


def test_rejected_request_not_counted() -> None:
    """RateLimits counts an admitted request in every window and a rejected one in none."""
    limits = RateLimits(rpm=10, tpm=100, rps=None)

    assert limits.admit(60, now=0.0) is None
    exceeded = limits.admit(60, now=1.0)
    assert exceeded is not None
    assert exceeded.kind == "tokens"
    assert limits.headers(now=1.0)["x-ratelimit-remaining-requests"] == "9"
    assert limits.headers(now=1.0)["x-ratelimit-remaining-tokens"] == "40"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (-1.0, "0s"),
        (0.0754, "76ms"),
        (0.999, "999ms"),
        (1.0, "1s"),
        (1.2, "1.2s"),
        (12.345, "12.345s"),
        (360.0, "6m0s"),
        (90.5, "1m30.5s"),
        (3723.5, "1h2m3.5s"),
    ],
)
def test_go_duration_format(seconds: float, text: str) -> None:
    """Durations print as Go's time.Duration does, rounded up to milliseconds."""
    assert format_go_duration(seconds) == text


# Limits over HTTP


def test_rpm_429_with_openai_headers() -> None:
    """Over the RPM limit, the response is OpenAI's 429 with retry and x-ratelimit headers."""
    clock = FakeClock()
    config = EndpointConfig(key=KEY, rpm=2, tpm=1000)

    async def scenario(endpoint, session):
        first = await post_chat(session, endpoint)
        clock.advance(1.2)
        second = await post_chat(session, endpoint)
        clock.advance(0.6)
        third = await post_chat(session, endpoint)
        return first, second, third

    first, second, third = serve(config, scenario, clock=clock)

    assert first[0] == 200
    assert first[1]["x-ratelimit-limit-requests"] == "2"
    assert first[1]["x-ratelimit-remaining-requests"] == "1"
    assert first[1]["x-ratelimit-limit-tokens"] == "1000"
    # "hi" is 4 + 1 prompt tokens, plus the default of 64 completion tokens.
    assert first[1]["x-ratelimit-remaining-tokens"] == str(1000 - 69)
    assert first[1]["x-ratelimit-reset-requests"] == "1m0s"
    assert second[0] == 200
    assert second[1]["x-ratelimit-remaining-requests"] == "0"

    status, headers, body = third
    assert status == 429
    assert body["error"]["type"] == "requests"
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["message"] == (
        "Rate limit reached for gpt-4o-mini on requests per min (RPM): "
        "Limit 2, Used 2, Requested 1. Please try again in 58.2s."
    )
    assert headers["retry-after"] == "59"
    assert headers["retry-after-ms"] == "58200"
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "58.2s"
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    assert headers["x-ratelimit-remaining-tokens"] == str(1000 - 2 * 69)
    assert headers["x-request-id"].startswith("req_")


def test_rpm_window_rolls_and_skips_rejected() -> None:
    """The RPM window admits again once the oldest request is 60 s old; 429s take no slot."""
    clock = FakeClock()
    config = EndpointConfig(key=KEY, rpm=2)

    async def scenario(endpoint, session):
        statuses = []
        for advance_s in (0.0, 30.0, 10.0, 20.0, 1.0):
            clock.advance(advance_s)
            statuses.append((await post_chat(session, endpoint))[0])
        return statuses

    # At 0 and 30 s admitted, at 40 s rejected, at 60 s the first has left, at 61 s full again.
    assert serve(config, scenario, clock=clock) == [200, 200, 429, 200, 429]


def test_rps_429_without_minute_headers() -> None:
    """The RPS limit rejects a second request in the same second, without x-ratelimit headers."""
    clock = FakeClock()
    config = EndpointConfig(key=KEY, rps=1)

    async def scenario(endpoint, session):
        first = await post_chat(session, endpoint)
        clock.advance(0.25)
        second = await post_chat(session, endpoint)
        clock.advance(0.75)
        third = await post_chat(session, endpoint)
        return first, second, third

    first, second, third = serve(config, scenario, clock=clock)

    assert first[0] == 200
    assert "x-ratelimit-limit-requests" not in first[1]
    assert second[0] == 429
    assert second[2]["error"]["type"] == "requests"
    assert "requests per sec (RPS): Limit 1, Used 1, Requested 1" in second[2]["error"]["message"]
    assert second[1]["retry-after-ms"] == "750"
    assert second[1]["retry-after"] == "1"
    assert third[0] == 200


def test_tpm_429_counts_prompt_and_max_tokens() -> None:
    """The TPM limit counts the prompt estimate plus max_tokens, and its 429 has type tokens."""
    clock = FakeClock()
    config = EndpointConfig(key=KEY, tpm=100)

    async def scenario(endpoint, session):
        # Each request is 4 + 1 prompt tokens plus 40 max_tokens = 45.
        answers = [await post_chat(session, endpoint, max_tokens=40) for _ in range(3)]
        clock.advance(60.0)
        answers.append(await post_chat(session, endpoint, max_tokens=40))
        return answers

    answers = serve(config, scenario, clock=clock)

    assert [answer[0] for answer in answers] == [200, 200, 429, 200]
    assert answers[1][1]["x-ratelimit-remaining-tokens"] == "10"
    error = answers[2][2]["error"]
    assert error["type"] == "tokens"
    assert error["code"] == "rate_limit_exceeded"
    assert "tokens per min (TPM): Limit 100, Used 90, Requested 45" in error["message"]
    assert answers[2][1]["retry-after"] == "60"


def test_tpm_request_too_large() -> None:
    """A request larger than the whole TPM limit gets 429 without retry headers."""
    config = EndpointConfig(key=KEY, tpm=100)

    async def scenario(endpoint, session):
        return await post_chat(session, endpoint, max_tokens=500)

    status, headers, body = serve(config, scenario)

    assert status == 429
    assert body["error"]["type"] == "tokens"
    assert body["error"]["message"].startswith("Request too large for gpt-4o-mini")
    assert "retry-after" not in headers
    assert "retry-after-ms" not in headers


def test_rpm_on_real_clock() -> None:
    """With the event loop's clock, requests beyond the RPM limit get 429 at once."""
    config = EndpointConfig(key=KEY, rpm=3)

    async def scenario(endpoint, session):
        return await asyncio.gather(*(post_chat(session, endpoint) for _ in range(5)))

    answers = serve(config, scenario)

    assert sorted(answer[0] for answer in answers) == [200] * 3 + [429] * 2
    retry_after_ms = [int(answer[1]["retry-after-ms"]) for answer in answers if answer[0] == 429]
    assert all(59_000 < value <= 60_000 for value in retry_after_ms)
