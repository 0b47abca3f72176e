"""End to end: rate limits, retries and failure kinds against the bundled endpoint on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from batcher.auth import ApiKey, build_headers
from batcher.client import ApiClient, Reply
from batcher.endpoint import EndpointConfig, LocalEndpoint, Rule
from batcher.jsonl import loads
from batcher.limits import Pacer
from batcher.prompts import Prompt
from batcher.runner import Runner, RunSettings
from batcher.store import ResultsStore
from batcher.summary import RunStats
from support import TEST_KEY, FakeClock, final_states, read_log, read_results, read_summary, run_cli, serve, write_job

# A 429 whose request limit resets in six minutes, and whose token limit (not exhausted) in 76 ms.
SIX_MINUTE_RESET = {
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": "6m0s",
    "x-ratelimit-reset-tokens": "76ms",
}


def events_named(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [event for event in events if event["event"] == name]


def log_time_s(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def max_in_window(start_times: list[float], window_s: float) -> int:
    """Return the maximum number of starts in any half-open window [t, t + window_s)."""
    times = sorted(start_times)
    most = 0
    first = 0
    for last, started in enumerate(times):
        while started - times[first] >= window_s:
            first += 1
        most = max(most, last - first + 1)
    return most


def gaps_at_least(start_times: list[float], min_gap_s: float) -> list[float]:
    """Return the gaps between consecutive start times that are at least `min_gap_s` long."""
    times = sorted(start_times)
    return [later - earlier for earlier, later in zip(times, times[1:]) if later - earlier >= min_gap_s]


def test_quota_429_stops_with_exit_4(tmp_path: Path) -> None:
    """A 429 insufficient_quota is not retried, and the run stops with exit 4 and reason quota."""
    with serve(quota_after=3) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=20, limits={"concurrency": 2, "max_attempts": 5})
        result = run_cli("run", str(job), "--quiet")
        responses = dict(endpoint.stats.responses_by_status)
        chat_requests = endpoint.stats.chat_requests

    out = tmp_path / "out"
    assert result.returncode == 4, result.stderr
    summary = read_summary(out)
    quota_429s = responses["429"]
    assert summary["stopped_reason"] == "quota"
    assert summary["exit_code"] == 4
    assert summary["succeeded"] == 3
    assert 1 <= quota_429s <= 2  # the one that stopped the run, and at most one more in flight
    assert chat_requests == 3 + quota_429s
    assert summary["failures_by_kind"] == {"quota": quota_429s}
    assert summary["retries_by_kind"] == {}
    assert summary["rate_limited_responses"] == quota_429s
    assert summary["not_attempted"] == 20 - 3 - quota_429s

    failed = [record for record in final_states(out).values() if record["status"] == "failed"]
    assert len(failed) == quota_429s
    assert all(record["attempts"] == 1 for record in failed)
    assert all(record["error"]["kind"] == "quota" for record in failed)
    assert all(record["error"]["code"] == "insufficient_quota" for record in failed)

    events = read_log(out)
    assert events_named(events, "prompt.retry") == []
    failures = events_named(events, "prompt.failed")
    assert len(failures) == quota_429s
    for event in failures:
        assert event["failure_kind"] == "quota"
        assert event["status"] == 429
        assert event["attempt"] == 1
        assert event["request_id"].startswith("req_")
        assert event["prompt_id"].startswith("p")


def test_reset_header_minutes_not_seconds(tmp_path: Path) -> None:
    """`6m0s` is a wait of 360 s, logged as such when max_wait_s fails the prompt instead."""
    rules = (Rule(match="limited", status=429, times=1, headers=SIX_MINUTE_RESET),)
    prompts = [{"id": "limited", "prompt": "limited"}] + [{"id": f"ok{index}", "prompt": f"fine {index}"} for index in range(4)]
    with serve(rules=rules) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, prompts=prompts, limits={"max_wait_s": 0.5})
        result = run_cli("run", str(job), "--quiet")

    out = tmp_path / "out"
    assert result.returncode == 1, result.stderr
    states = final_states(out)
    assert states["limited"]["status"] == "failed"
    assert states["limited"]["error"]["kind"] == "rate_limit"
    assert states["limited"]["attempts"] == 1
    assert all(states[f"ok{index}"]["status"] == "succeeded" for index in range(4))
    events = read_log(out)
    (failure,) = events_named(events, "prompt.failed")
    assert failure["wait_s"] == 360.0
    assert failure["reason"] == "wait over max_wait_s"
    assert failure["prompt_id"] == "limited"
    assert failure["failure_kind"] == "rate_limit"
    assert failure["request_id"].startswith("req_")
    # The other prompts pause for the job's max_wait_s, not for the six minutes.
    assert read_summary(out)["duration_s"] < 10


class _RecordingClient(ApiClient):
    """An ApiClient that records, on a fake clock, when each chat request starts and its reply comes."""

    def __init__(self, *args: Any, clock: FakeClock, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock
        # ("start" or "reply", prompt text, fake time, status of the reply or None)
        self.timeline: list[tuple[str, str, float, int | None]] = []

    async def post_chat(self, body: Any) -> Reply:
        text = loads(body)["messages"][0]["content"]
        self.timeline.append(("start", text, self.clock(), None))
        reply = await super().post_chat(body)
        status = 200 if reply.failure is None else reply.failure.status
        self.timeline.append(("reply", text, self.clock(), status))
        return reply


def test_reset_header_wait_on_fake_clock(tmp_path: Path) -> None:
    """Every worker waits out the six minutes of `6m0s` before its next request, on a fake clock."""
    rules = (
        Rule(match="limited", status=429, times=1, headers=SIX_MINUTE_RESET),
        # The other prompts answer later than the 429, so they all start after it.
        Rule(match="fine", delay_ms=20),
    )
    texts = ["limited"] + [f"fine {index}" for index in range(6)]
    prompts = [
        Prompt(id=text, body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}, source="test", estimated_tokens=20)
        for text in texts
    ]
    clock = FakeClock()
    stats = RunStats()

    async def run() -> _RecordingClient:
        headers = build_headers(ApiKey(value=TEST_KEY, source="the test"), organization=None, project=None)
        async with LocalEndpoint(EndpointConfig(key=TEST_KEY, rules=rules)) as endpoint:
            async with _RecordingClient(endpoint.base_url, headers=headers, timeout_s=10, max_connections=4, clock=clock) as client:
                store = ResultsStore(tmp_path)
                store.open()
                try:
                    runner = Runner(
                        client=client,
                        store=store,
                        prompts=prompts,
                        settings=RunSettings(concurrency=3, max_attempts=3),
                        stats=stats,
                        run_id="fake-clock",
                        pacer=Pacer(requests_per_minute=None, tokens_per_minute=None, clock=clock, sleep=clock.sleep),
                    )
                    assert await runner.run() is None
                finally:
                    store.close()
        return client

    started = time.monotonic()
    with capture_logs() as events:
        client = asyncio.run(run())
    wall_s = time.monotonic() - started

    assert stats.succeeded == 7
    assert {record["id"]: record["attempts"] for record in read_results(tmp_path)}["limited"] == 2
    (retry,) = [event for event in events if event["event"] == "prompt.retry"]
    assert retry["wait_s"] == 360.0
    assert retry["wait_source"] == "endpoint"

    timeline = client.timeline
    (limited_reply,) = [index for index, entry in enumerate(timeline) if entry[0] == "reply" and entry[3] == 429]
    limited_at = timeline[limited_reply][2]
    later_starts = [entry for entry in timeline[limited_reply:] if entry[0] == "start"]
    assert len(later_starts) >= 4  # the retry and at least three other prompts
    assert all(entry[2] >= limited_at + 360.0 for entry in later_starts)
    assert clock() - limited_at == 360.0
    assert wall_s < 5.0


def test_retry_after_holds_every_worker(tmp_path: Path) -> None:
    """No worker starts a request during either `retry-after: 3` wait, and the prompt then succeeds."""
    rules = (Rule(match="limited", status=429, times=2, headers={"retry-after": "3"}),)
    prompts = [{"id": "limited", "prompt": "limited"}] + [{"id": f"ok{index}", "prompt": f"fine {index}"} for index in range(10)]
    limits = {"concurrency": 4, "requests_per_minute": 1200, "max_attempts": 3}
    with serve(rules=rules) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, prompts=prompts, limits=limits)
        result = run_cli("run", str(job), "--quiet")
        start_times = list(endpoint.stats.chat_start_times)

    out = tmp_path / "out"
    assert result.returncode == 0, result.stderr
    states = final_states(out)
    assert states["limited"]["status"] == "succeeded"
    assert states["limited"]["attempts"] == 3
    assert len(start_times) == 13
    # Each wait starts when the 429 arrives, so a start inside either wait would split
    # its gap into two shorter ones.
    assert len(gaps_at_least(start_times, 3.0)) == 2
    retries = events_named(read_log(out), "prompt.retry")
    assert [event["wait_s"] for event in retries] == [3.0, 3.0]
    assert all(event["wait_source"] == "endpoint" for event in retries)
    assert [event["attempt"] for event in retries] == [1, 2]
    assert read_summary(out)["rate_limited_responses"] == 2


def test_wait_in_message_text_ignored(tmp_path: Path) -> None:
    """A 429 without retry headers backs off instead of reading "try again in 9.8s" in its message."""
    body = {
        "error": {
            "message": "Rate limit reached for gpt-3.5-turbo-1106 on tokens per min (TPM): Limit 90000, "
            "Used 89000, Requested 2000. Please try again in 9.8s.",
            "type": "tokens",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    rules = (Rule(match="limited", status=429, times=1, body=body),)
    prompts = [{"id": "limited", "prompt": "limited"}, {"id": "plain", "prompt": "hello"}]
    with serve(rules=rules) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, prompts=prompts, limits={"backoff_base_s": 0.05})
        result = run_cli("run", str(job), "--quiet")

    out = tmp_path / "out"
    assert result.returncode == 0, result.stderr
    assert final_states(out)["limited"]["attempts"] == 2
    (retry,) = events_named(read_log(out), "prompt.retry")
    assert retry["failure_kind"] == "rate_limit"
    assert retry["wait_source"] == "backoff"
    assert retry["wait_s"] <= 0.05
    assert read_summary(out)["duration_s"] < 9.8


def test_html_502s_retried_as_server(tmp_path: Path) -> None:
    """A proxy's HTML 502 pages are server failures, retried until every prompt succeeds."""
    with serve(fail_rate=0.3) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=30, limits={"max_attempts": 12})
        result = run_cli("run", str(job), "--quiet")
        responses = dict(endpoint.stats.responses_by_status)

    out = tmp_path / "out"
    assert result.returncode == 0, result.stderr
    assert all(record["status"] == "succeeded" for record in final_states(out).values())
    bad_gateways = responses["502"]
    assert bad_gateways > 0
    summary = read_summary(out)
    assert summary["succeeded"] == 30
    assert summary["retries_by_kind"] == {"server": bad_gateways}
    assert summary["failures_by_kind"] == {}
    retries = events_named(read_log(out), "prompt.retry")
    assert len(retries) == bad_gateways
    for event in retries:
        assert event["failure_kind"] == "server"
        assert event["status"] == 502
        assert event["request_id"].startswith("req_")
        assert event["wait_source"] == "backoff"


def test_job_rate_under_endpoint_limit(tmp_path: Path) -> None:
    """A job rate equal to the endpoint's limit gets no 429 and at least 95% of that rate."""
    # 600 a minute against 10 a second is the same ratio as 300 against 5, with the same
    # margin in every rolling second, at half the wall time (6 s for 60 prompts).
    limits = {"concurrency": 8, "requests_per_minute": 600}
    with serve(rps=10) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=60, limits=limits)
        result = run_cli("run", str(job), "--quiet")
        responses = dict(endpoint.stats.responses_by_status)
        start_times = list(endpoint.stats.chat_start_times)

    out = tmp_path / "out"
    assert result.returncode == 0, result.stderr
    assert "429" not in responses
    assert read_summary(out)["rate_limited_responses"] == 0
    assert len(start_times) == 60
    assert max_in_window(start_times, 1.0) <= 10
    achieved_per_s = (len(start_times) - 1) / (max(start_times) - min(start_times))
    assert achieved_per_s >= 0.95 * 10


def test_learned_rate_avoids_retry_storm(tmp_path: Path) -> None:
    """With no limit set or announced, the 429s of the first burst teach a rate that holds."""
    limits = {"concurrency": 32, "max_attempts": 10}
    with serve(rps=10) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=100, limits=limits)
        result = run_cli("run", str(job), "--quiet")
        responses = dict(endpoint.stats.responses_by_status)

    out = tmp_path / "out"
    assert result.returncode == 0, result.stderr
    summary = read_summary(out)
    assert summary["succeeded"] == 100
    assert summary["rate_limited_responses"] == responses["429"]

    # Before the first 429 is read, the 32 workers have sent 32 requests and the 10 that
    # succeeded have sent 10 more, so up to 32 of those get a 429. Once the rate is learned,
    # only the probe after every 50 successes may get one.
    retries = [event for event in events_named(read_log(out), "prompt.retry") if event["failure_kind"] == "rate_limit"]
    assert len(retries) == responses["429"]
    first_s = log_time_s(retries[0])
    first_wave = [event for event in retries if log_time_s(event) - first_s < 1.0]
    assert len(first_wave) <= 32
    assert len(retries) - len(first_wave) <= 3
    # 100 prompts at 10 a second take 10 s at best.
    assert summary["duration_s"] < 15


def test_should_retry_header_overrides(tmp_path: Path) -> None:
    """`x-should-retry: false` stops the retries of a 500, and `true` retries a 400."""
    rules = (
        Rule(match="do not retry", status=500, headers={"x-should-retry": "false"}),
        Rule(match="retry me", status=400, times=1, headers={"x-should-retry": "true"}),
    )
    prompts = [{"id": "server", "prompt": "do not retry"}, {"id": "bad", "prompt": "retry me"}]
    with serve(rules=rules) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, prompts=prompts, limits={"max_attempts": 4})
        result = run_cli("run", str(job), "--quiet")
        chat_requests = endpoint.stats.chat_requests

    out = tmp_path / "out"
    assert result.returncode == 1, result.stderr
    assert chat_requests == 3
    states = final_states(out)
    assert states["server"]["status"] == "failed"
    assert states["server"]["attempts"] == 1
    assert states["server"]["error"]["kind"] == "server"
    assert states["bad"]["status"] == "succeeded"
    assert states["bad"]["attempts"] == 2
    (retry,) = events_named(read_log(out), "prompt.retry")
    assert retry["prompt_id"] == "bad"
    assert retry["failure_kind"] == "bad_request"
    assert retry["status"] == 400
    summary = read_summary(out)
    assert summary["retries_by_kind"] == {"bad_request": 1}
    assert summary["failures_by_kind"] == {"server": 1}


def test_resets_and_cut_bodies_are_network(tmp_path: Path) -> None:
    """Connection resets and bodies cut short are network failures, and retried."""
    with serve(reset_rate=0.15, truncate_rate=0.15) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=30, limits={"max_attempts": 12})
        result = run_cli("run", str(job), "--quiet")
        transport_faults = endpoint.stats.connections_reset + endpoint.stats.bodies_truncated

    out = tmp_path / "out"
    assert result.returncode == 0, result.stderr
    assert transport_faults > 0
    summary = read_summary(out)
    assert summary["succeeded"] == 30
    assert summary["retries_by_kind"] == {"network": transport_faults}
    retries = events_named(read_log(out), "prompt.retry")
    assert {event["failure_kind"] for event in retries} == {"network"}
    assert all(event["status"] is None for event in retries)


def test_slow_responses_are_timeouts(tmp_path: Path) -> None:
    """A response slower than timeout_s is a timeout failure, and retried."""
    rules = (
        Rule(match="slow once", delay_ms=600, times=1),
        Rule(match="always slow", delay_ms=600),
    )
    prompts = [{"id": "once", "prompt": "slow once"}, {"id": "always", "prompt": "always slow"}]
    with serve(rules=rules) as endpoint:
        job = write_job(
            tmp_path, base_url=endpoint.base_url, prompts=prompts, limits={"max_attempts": 2}, endpoint={"timeout_s": 0.2}
        )
        result = run_cli("run", str(job), "--quiet")

    out = tmp_path / "out"
    assert result.returncode == 1, result.stderr
    states = final_states(out)
    assert states["once"]["status"] == "succeeded"
    assert states["once"]["attempts"] == 2
    assert states["always"]["status"] == "failed"
    assert states["always"]["attempts"] == 2
    assert states["always"]["error"]["kind"] == "timeout"
    summary = read_summary(out)
    assert summary["retries_by_kind"] == {"timeout": 2}
    assert summary["failures_by_kind"] == {"timeout": 1}


def test_failure_after_stop_recorded_not_retried(tmp_path: Path) -> None:
    """A 500 that arrives after a quota stop is recorded as a failure, not logged as a retry."""
    rules = (Rule(match="slow", status=500, delay_ms=300),)
    prompts = [{"id": "slow", "prompt": "slow"}] + [{"id": f"p{index}", "prompt": f"fine {index}"} for index in range(3)]
    with serve(rules=rules, quota_after=0) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, prompts=prompts, limits={"concurrency": 4, "max_attempts": 3})
        result = run_cli("run", str(job), "--quiet")
        chat_requests = endpoint.stats.chat_requests

    out = tmp_path / "out"
    assert result.returncode == 4, result.stderr
    assert chat_requests == 4
    states = final_states(out)
    assert states["slow"]["status"] == "failed"
    assert states["slow"]["error"]["kind"] == "server"
    assert states["slow"]["attempts"] == 1
    events = read_log(out)
    assert events_named(events, "prompt.retry") == []
    (slow_failure,) = [event for event in events_named(events, "prompt.failed") if event["prompt_id"] == "slow"]
    assert slow_failure["reason"] == "run stopped"
    summary = read_summary(out)
    assert summary["retries_by_kind"] == {}
    assert summary["failures_by_kind"] == {"quota": 3, "server": 1}


def test_slow_successes_still_teach_a_rate(tmp_path: Path) -> None:
    """429s that come back before any slow success still set a rate before the restart."""
    with serve(rps=20, latency_ms=300) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=100, limits={"concurrency": 64, "max_attempts": 3})
        result = run_cli("run", str(job), "--quiet")

    summary = read_summary(tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert summary["succeeded"] == 100
    # The first wave of 64 meets the limit of 20; after the pause, the learned rate keeps the
    # restart from sending another full wave.
    # Measured: 47 with the estimate from unrejected starts, 89 without it.
    assert summary["rate_limited_responses"] <= 60
