"""Check over HTTP what LiteLLM's proxy and the test auth hook send.

The batcher tests rely on these responses. When a LiteLLM upgrade changes one,
the failure shows up here first, with the raw status, headers and body.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from gateway_support import new_key, read_proxy_requests

pytestmark = pytest.mark.gateway

RETRY_HEADERS = ("retry-after", "retry-after-ms", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
REQUEST_TIMEOUT_S = 10


@dataclass(frozen=True)
class Reply:
    """Status, headers and decoded JSON body of one proxy response."""

    status: int
    headers: dict[str, str]
    body: Any


def _auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def _fetch(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    api_key: str | None,
    payload: dict[str, Any] | None = None,
) -> Reply:
    async with session.request(method, url, headers=_auth_headers(api_key), json=payload) as response:
        text = await response.text()
        headers = {name.lower(): value for name, value in response.headers.items()}
        body = json.loads(text) if response.content_type == "application/json" else text
        return Reply(status=response.status, headers=headers, body=body)


def fetch_all(
    method: str, url: str, api_key: str | None, payloads: list[dict[str, Any] | None], *, concurrent: bool = False
) -> list[Reply]:
    """Send one request per payload, in order or all at once, and return the replies."""

    async def send() -> list[Reply]:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            if concurrent:
                calls = [_fetch(session, method, url, api_key, payload) for payload in payloads]
                return list(await asyncio.gather(*calls))
            return [await _fetch(session, method, url, api_key, payload) for payload in payloads]

    return asyncio.run(send())


def chat_payload(model: str = "mock-gpt", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 20, **extra}


def test_models_lists_mock_models(base_url: str) -> None:
    [reply] = fetch_all("GET", f"{base_url}/models", new_key("sk-gw-unlimited"), [None])

    assert reply.status == 200
    model_ids = {model["id"] for model in reply.body["data"]}
    assert {"mock-gpt", "mock-gpt-limited"} <= model_ids


def test_chat_returns_mock_response(base_url: str) -> None:
    api_key = new_key("sk-gw-unlimited")

    [reply] = fetch_all("POST", f"{base_url}/chat/completions", api_key, [chat_payload()])

    assert reply.status == 200, reply
    assert reply.body["object"] == "chat.completion"
    assert reply.body["choices"][0]["message"]["content"] == "Hello from the LiteLLM mock."
    assert reply.body["usage"]["total_tokens"] > 0
    assert [request.route for request in read_proxy_requests(api_key)] == ["/chat/completions"]


def test_unknown_key_gets_401_with_numeric_code(base_url: str) -> None:
    api_key = "sk-not-a-gateway-test-key"

    [reply] = fetch_all("GET", f"{base_url}/models", api_key, [None])

    assert reply.status == 401
    # LiteLLM writes the HTTP status into error.code, where OpenAI writes a
    # name such as "invalid_api_key"; batcher must not depend on the name.
    assert reply.body["error"]["code"] == "401"
    assert reply.body["error"]["type"] == "auth_error"
    assert read_proxy_requests(api_key)[-1].outcome == "unknown_key"


def test_missing_key_gets_json_401(base_url: str) -> None:
    [reply] = fetch_all("GET", f"{base_url}/models", None, [None])

    assert reply.status == 401
    assert reply.headers["content-type"] == "application/json"
    assert reply.body["error"]["code"] == "401"


def test_quota_key_lists_models(base_url: str) -> None:
    [reply] = fetch_all("GET", f"{base_url}/models", new_key("sk-gw-quota"), [None])

    assert reply.status == 200


def test_quota_key_gets_insufficient_quota(base_url: str) -> None:
    api_key = new_key("sk-gw-quota")

    [reply] = fetch_all("POST", f"{base_url}/chat/completions", api_key, [chat_payload()])

    assert reply.status == 429
    assert reply.body["error"]["type"] == "insufficient_quota"
    # As with 401, LiteLLM puts the status in error.code, so only the type
    # distinguishes a quota error from a rate limit.
    assert reply.body["error"]["code"] == "429"
    for header in RETRY_HEADERS:
        assert header not in reply.headers


def test_rpm2_key_third_request_gets_retry_after(base_url: str) -> None:
    api_key = new_key("sk-gw-rpm2")

    replies = fetch_all("POST", f"{base_url}/chat/completions", api_key, [chat_payload()] * 3)

    assert [reply.status for reply in replies] == [200, 200, 429]
    assert replies[1].headers["x-ratelimit-api_key-limit-requests"] == "2"
    assert replies[1].headers["x-ratelimit-api_key-remaining-requests"] == "0"
    # The standard OpenAI names are absent for a key limit; LiteLLM puts the
    # limit's descriptor (api_key) in the header name.
    assert "x-ratelimit-limit-requests" not in replies[1].headers
    limited = replies[2]
    assert limited.headers["retry-after"] == "60"
    assert limited.body["error"]["type"] == "throttling_error"
    assert limited.body["error"]["code"] == "429"


def test_tpm100_key_runs_out_of_tokens(base_url: str) -> None:
    api_key = new_key("sk-gw-tpm100")

    # The mock reports 30 tokens a request, so the fifth request at the latest
    # finds the 100-token budget spent.
    replies = fetch_all("POST", f"{base_url}/chat/completions", api_key, [chat_payload()] * 6)

    statuses = [reply.status for reply in replies]
    assert statuses[0] == 200
    assert 429 in statuses
    limited = replies[statuses.index(429)]
    assert limited.headers["rate_limit_type"] == "tokens"
    assert limited.headers["retry-after"] == "60"


def test_parallel1_key_rejects_second_concurrent(base_url: str) -> None:
    api_key = new_key("sk-gw-parallel1")
    slow_payload = chat_payload(model="mock-gpt-slow")

    replies = fetch_all("POST", f"{base_url}/chat/completions", api_key, [slow_payload] * 2, concurrent=True)

    assert sorted(reply.status for reply in replies) == [200, 429]


def test_deployment_limit_429_has_no_retry_headers(base_url: str) -> None:
    api_key = new_key("sk-gw-unlimited")
    payload = chat_payload(model="mock-gpt-limited-probe")

    first, second = fetch_all("POST", f"{base_url}/chat/completions", api_key, [payload] * 2)

    assert first.status == 200
    assert first.headers["x-ratelimit-limit-requests"] == "1"
    assert second.status == 429
    assert second.body["error"]["message"].startswith("No deployments available")
    assert second.body["error"]["type"] == "rate_limit_error"
    for header in RETRY_HEADERS:
        assert header not in second.headers
