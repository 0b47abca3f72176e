"""Run the batcher CLI against LiteLLM's proxy and check its results, summary and log."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from gateway_support import (
    BatcherRun,
    RunBatcher,
    build_job,
    count_proxy_requests,
    new_key,
    read_proxy_requests,
)

pytestmark = pytest.mark.gateway

CHAT_ROUTE = "/chat/completions"
MODELS_ROUTE = "/models"
# LiteLLM's key rate limiter answers every 429 with `retry-after: 60`, the length
# of its window (LITELLM_RATE_LIMIT_WINDOW_SIZE, default 60 s).
KEY_LIMIT_RETRY_AFTER_S = 60.0


def final_results(run: BatcherRun) -> dict[str, dict]:
    """Return the last results line of each prompt id, which is its current state."""
    return {line["id"]: line for line in run.results()}


def chat_request_times(api_key: str) -> list[float]:
    return sorted(request.time_s for request in read_proxy_requests(api_key) if request.route == CHAT_ROUTE)


def rate_limit_waits(run: BatcherRun, prompt_id: str) -> list[float]:
    """Return the wait_s of every rate_limit event the run logged for one prompt."""
    return [
        event["wait_s"]
        for event in run.log_events()
        if event.get("prompt_id") == prompt_id
        and event.get("failure_kind") == "rate_limit"
        and event.get("wait_s") is not None
    ]


def test_good_key_stores_litellm_responses(base_url: str, tmp_path: Path, run_batcher: RunBatcher) -> None:
    api_key = new_key("sk-gw-unlimited")
    job = build_job(base_url, tmp_path / "out", prompt_count=3)

    run = run_batcher(job, api_key)

    assert run.exit_code == 0, run.describe()
    results = final_results(run)
    assert sorted(results) == ["p0", "p1", "p2"]
    for line in results.values():
        assert line["status"] == "succeeded"
        assert line["attempts"] == 1
        response = line["response"]
        assert response["id"].startswith("chatcmpl-")
        assert response["model"] == "mock-gpt"
        assert response["choices"][0]["message"]["content"] == "Hello from the LiteLLM mock."
    summary = run.summary()
    assert summary["succeeded"] == 3
    assert summary["failed"] == 0
    assert summary["requests_sent"] == 4
    routes = Counter(request.route for request in read_proxy_requests(api_key))
    assert routes == {MODELS_ROUTE: 1, CHAT_ROUTE: 3}


def test_unknown_key_stops_at_preflight(base_url: str, tmp_path: Path, run_batcher: RunBatcher) -> None:
    api_key = "sk-unknown-to-the-gateway"
    job = build_job(base_url, tmp_path / "out", prompt_count=3)

    run = run_batcher(job, api_key)

    assert run.exit_code == 3, run.describe()
    assert [request.route for request in read_proxy_requests(api_key)] == [MODELS_ROUTE]
    # LiteLLM sends error.code "401" where OpenAI sends "invalid_api_key"; the
    # diagnosis must still be the invalid key, not a key that never arrived.
    assert "invalid" in run.stderr
    assert "no API key" not in run.stderr
    assert api_key not in run.stderr
    preflight_failures = [event for event in run.log_events() if event.get("failure_kind") == "auth"]
    assert preflight_failures
    assert "invalid" in preflight_failures[-1]["message"]
    summary = run.summary()
    assert summary["stopped_reason"] == "auth"
    assert summary["requests_sent"] == 1
    assert summary["exit_code"] == 3
    assert run.results() == []


def test_key_rpm_limit_fails_extra_prompts(base_url: str, tmp_path: Path, run_batcher: RunBatcher) -> None:
    api_key = new_key("sk-gw-rpm2")
    # Concurrency covers every prompt, so all five start before the first 429
    # (the hook delays each one by a second) and none waits out the 60 s
    # cooldown that the 429 starts.
    limits = {"concurrency": 5, "max_attempts": 1}
    job = build_job(base_url, tmp_path / "out", prompt_count=5, limits=limits)

    run = run_batcher(job, api_key)

    assert run.exit_code == 1, run.describe()
    results = final_results(run)
    statuses = Counter(line["status"] for line in results.values())
    assert statuses == {"succeeded": 2, "failed": 3}, run.describe()
    failed = [line for line in results.values() if line["status"] == "failed"]
    for line in failed:
        assert line["error"]["kind"] == "rate_limit"
        assert line["attempts"] == 1
        assert rate_limit_waits(run, line["id"]) == [KEY_LIMIT_RETRY_AFTER_S]
    summary = run.summary()
    assert summary["failures_by_kind"] == {"rate_limit": 3}
    assert summary["rate_limited_responses"] == 3
    assert len(chat_request_times(api_key)) == 5


def test_key_rpm_limit_retry_honours_wait(base_url: str, tmp_path: Path, run_batcher: RunBatcher) -> None:
    api_key = new_key("sk-gw-rpm2")
    # Three prompts: the third meets the limit, and its retry, a minute later,
    # opens a new window and succeeds, so the run waits exactly once.
    limits = {"concurrency": 3, "max_attempts": 2}
    job = build_job(base_url, tmp_path / "out", prompt_count=3, limits=limits)

    # The one test that waits out a whole 60 s rate-limit window.
    run = run_batcher(job, api_key)

    assert run.exit_code == 0, run.describe()
    results = final_results(run)
    statuses = Counter(line["status"] for line in results.values())
    assert statuses == {"succeeded": 3}
    attempts = Counter(line["attempts"] for line in results.values())
    assert attempts == {1: 2, 2: 1}
    [retried] = [line["id"] for line in results.values() if line["attempts"] == 2]
    assert rate_limit_waits(run, retried) == [KEY_LIMIT_RETRY_AFTER_S]

    # The proxy's clock: the retry arrives at least retry-after seconds after
    # the first three requests, which came before the 429 that asked for it.
    request_times = chat_request_times(api_key)
    assert len(request_times) == 4
    first_wave, retry = request_times[:3], request_times[3]
    assert retry - first_wave[-1] >= KEY_LIMIT_RETRY_AFTER_S
    summary = run.summary()
    assert summary["retries_by_kind"] == {"rate_limit": 1}
    assert summary["rate_limited_responses"] == 1
    assert summary["failures_by_kind"] == {}


def test_deployment_limit_backs_off_with_jitter(base_url: str, tmp_path: Path, run_batcher: RunBatcher) -> None:
    api_key = new_key("sk-gw-unlimited")
    # The job's own rate keeps batcher from adopting the 1 rpm that the
    # deployment announces in x-ratelimit-limit-requests, which would space
    # the retries a minute apart and hide the backoff.
    limits = {"concurrency": 4, "max_attempts": 2, "requests_per_minute": 600}
    job = build_job(base_url, tmp_path / "out", prompt_count=4, model="mock-gpt-limited", limits=limits)

    run = run_batcher(job, api_key)

    assert run.exit_code == 1, run.describe()
    results = final_results(run)
    failed = [line for line in results.values() if line["status"] == "failed"]
    assert len(failed) == 3, run.describe()
    waits = []
    for line in failed:
        assert line["error"]["kind"] == "rate_limit"
        assert line["error"]["status"] == 429
        assert line["attempts"] == 2
        prompt_waits = rate_limit_waits(run, line["id"])
        assert len(prompt_waits) == 1
        waits.extend(prompt_waits)
    # No header gave a wait, so each comes from the exponential backoff: below
    # the header's 60 s, and spread by the jitter. batcher logs waits to the
    # millisecond, so three equal values would be a one-in-a-million chance.
    for wait_s in waits:
        assert 0 <= wait_s < KEY_LIMIT_RETRY_AFTER_S
    assert len(set(waits)) > 1
    assert run.summary()["retries_by_kind"] == {"rate_limit": 3}


def test_quota_key_stops_without_retry(base_url: str, tmp_path: Path, run_batcher: RunBatcher) -> None:
    api_key = new_key("sk-gw-quota")
    # One request in flight, so exactly one chat request meets the quota
    # before the run stops.
    limits = {"concurrency": 1, "max_attempts": 3}
    job = build_job(base_url, tmp_path / "out", prompt_count=4, limits=limits)

    run = run_batcher(job, api_key)

    assert run.exit_code == 4, run.describe()
    results = run.results()
    assert len(results) == 1
    assert results[0]["status"] == "failed"
    assert results[0]["error"]["kind"] == "quota"
    assert results[0]["attempts"] == 1
    assert len(chat_request_times(api_key)) == 1
    summary = run.summary()
    assert summary["stopped_reason"] == "quota"
    assert summary["failures_by_kind"] == {"quota": 1}
    assert summary["retries_by_kind"] == {}
    assert summary["not_attempted"] == 3
    assert summary["exit_code"] == 4


@pytest.mark.parametrize("api_key", ["", None], ids=["empty", "unset"])
def test_missing_key_sends_nothing(
    base_url: str, tmp_path: Path, run_batcher: RunBatcher, api_key: str | None
) -> None:
    job = build_job(base_url, tmp_path / "out", prompt_count=2)
    # Tests run one at a time, so any request during this run is the CLI's.
    requests_before = count_proxy_requests()

    run = run_batcher(job, api_key)

    assert run.exit_code == 3, run.describe()
    assert "GW_KEY" in run.stderr
    assert count_proxy_requests() == requests_before
    summary = run.summary()
    assert summary["requests_sent"] == 0
    assert summary["stopped_reason"] == "auth"
