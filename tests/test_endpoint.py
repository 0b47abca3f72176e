"""Tests of the local endpoint's routes, auth, scenarios and stats, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from batcher.endpoint import EndpointConfig, LocalEndpoint, Rule

KEY = "sk-test-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=5)
SCENARIO_TIMEOUT_S = 10

Scenario = Callable[[LocalEndpoint, aiohttp.ClientSession], Awaitable[Any]]


def serve(config: EndpointConfig, scenario: Scenario) -> Any:
    """Run `scenario` against a fresh endpoint and return what it returns."""

    async def main() -> Any:
        async with (
            LocalEndpoint(config) as endpoint,
            aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session,
        ):
            return await asyncio.wait_for(scenario(endpoint, session), SCENARIO_TIMEOUT_S)

    return asyncio.run(main())


async def post_chat(
    session: aiohttp.ClientSession,
    endpoint: LocalEndpoint,
    content: str = "hello there world",
    *,
    headers: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
    **params: Any,
) -> tuple[int, Any, Any]:
    """Send one chat request; return the status, the headers and the JSON body (or text)."""
    if body is None:
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": content}],
            **params,
        }
    async with session.post(
        f"{endpoint.base_url}/chat/completions",
        headers=AUTH if headers is None else headers,
        json=body,
    ) as response:
        return response.status, response.headers, await _body(response)


async def get(
    session: aiohttp.ClientSession, url: str, *, headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    async with session.get(url, headers=AUTH if headers is None else headers) as response:
        return response.status, response.headers, await _body(response)


async def _body(response: aiohttp.ClientResponse) -> Any:
    text = await response.text()
    if response.content_type == "application/json":
        return json.loads(text)
    return text


def stats_url(endpoint: LocalEndpoint) -> str:
    return f"http://127.0.0.1:{endpoint.port}/_batcher/stats"


# Routes and the completion


def test_endpoint_rejects_non_loopback_host() -> None:
    """LocalEndpoint listens on loopback addresses only."""
    with pytest.raises(ValueError, match="loopback"):
        LocalEndpoint(EndpointConfig(key=KEY), host="0.0.0.0")


def test_models_list_shape() -> None:
    """GET /v1/models lists every configured model in OpenAI's list shape."""
    config = EndpointConfig(key=KEY, models=("m-one", "m-two"))

    async def scenario(endpoint, session):
        return await get(session, f"{endpoint.base_url}/models")

    status, headers, body = serve(config, scenario)

    assert status == 200
    assert body["object"] == "list"
    assert [model["id"] for model in body["data"]] == ["m-one", "m-two"]
    for model in body["data"]:
        assert model["object"] == "model"
        assert isinstance(model["created"], int)
        assert model["owned_by"] == "batcher"
    assert headers["x-request-id"].startswith("req_")


def test_retrieve_model_known_and_unknown() -> None:
    """GET /v1/models/{id} returns a listed model and a model_not_found 404 otherwise."""

    async def scenario(endpoint, session):
        known = await get(session, f"{endpoint.base_url}/models/gpt-4o")
        unknown = await get(session, f"{endpoint.base_url}/models/gpt-9")
        return known, unknown

    known, unknown = serve(EndpointConfig(key=KEY), scenario)

    assert known[0] == 200
    assert known[2]["id"] == "gpt-4o"
    assert unknown[0] == 404
    assert unknown[2]["error"]["code"] == "model_not_found"


def test_completion_shape_and_usage() -> None:
    """A completion has OpenAI's fields, an echo of the prompt and consistent usage."""
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "alpha beta gamma"},
    ]

    async def scenario(endpoint, session):
        return await post_chat(session, endpoint, body={"model": "gpt-4o", "messages": messages})

    status, headers, body = serve(EndpointConfig(key=KEY), scenario)

    assert status == 200
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "gpt-4o"
    choice = body["choices"][0]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "Echo: alpha beta gamma"
    assert choice["finish_reason"] == "stop"
    # 4 per message plus characters / 4 rounded up: (4 + 4) + (4 + 4).
    assert body["usage"]["prompt_tokens"] == 16
    assert body["usage"]["completion_tokens"] == 4
    assert body["usage"]["total_tokens"] == 20
    assert headers["x-request-id"].startswith("req_")
    assert "x-ratelimit-limit-requests" not in headers


def test_completion_is_deterministic() -> None:
    """Equal requests get equal ids and contents; different prompts get different ids."""

    async def scenario(endpoint, session):
        first = await post_chat(session, endpoint, "same prompt")
        second = await post_chat(session, endpoint, "same prompt")
        other = await post_chat(session, endpoint, "other prompt")
        return first, second, other

    first, second, other = serve(EndpointConfig(key=KEY), scenario)

    assert first[2]["id"] == second[2]["id"]
    assert first[2]["choices"] == second[2]["choices"]
    assert other[2]["id"] != first[2]["id"]
    assert first[1]["x-request-id"] != second[1]["x-request-id"]


def test_max_tokens_cuts_reply() -> None:
    """max_tokens 1 returns one token with finish_reason length."""

    async def scenario(endpoint, session):
        one_token = await post_chat(session, endpoint, "a b c", max_tokens=1)
        newer_name = await post_chat(session, endpoint, "a b c", max_completion_tokens=2)
        return one_token, newer_name

    one_token, newer_name = serve(EndpointConfig(key=KEY), scenario)

    assert one_token[0] == 200
    assert one_token[2]["choices"][0]["message"]["content"] == "Echo:"
    assert one_token[2]["choices"][0]["finish_reason"] == "length"
    assert one_token[2]["usage"]["completion_tokens"] == 1
    assert newer_name[2]["choices"][0]["message"]["content"] == "Echo: a"
    assert newer_name[2]["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        (
            {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]},
            404,
            None,
            "model_not_found",
        ),
        ({"model": "gpt-4o", "messages": []}, 400, "messages", "empty_array"),
        ({"model": "gpt-4o"}, 400, "messages", None),
        ({"messages": [{"role": "user", "content": "x"}]}, 400, "model", None),
        ({"model": "gpt-4o", "messages": ["x"]}, 400, "messages[0]", "invalid_type"),
        (
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            400,
            "max_tokens",
            "integer_below_min_value",
        ),
        (
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"},
            400,
            "max_tokens",
            "invalid_type",
        ),
        (
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": True},
            400,
            "stream",
            None,
        ),
    ],
)
def test_invalid_chat_body(
    body: dict[str, Any], status: int, param: str | None, code: str | None
) -> None:
    """An invalid body gets OpenAI's error with the offending param and code."""

    async def scenario(endpoint, session):
        return await post_chat(session, endpoint, body=body)

    answer_status, _headers, answer = serve(EndpointConfig(key=KEY), scenario)

    assert answer_status == status
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == param
    assert answer["error"]["code"] == code


def test_unparsable_json_body() -> None:
    """A body that is not JSON gets a 400 invalid_request_error."""

    async def scenario(endpoint, session):
        async with session.post(
            f"{endpoint.base_url}/chat/completions", headers=AUTH, data=b"{not json"
        ) as response:
            return response.status, await response.json()

    status, body = serve(EndpointConfig(key=KEY), scenario)

    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"


def test_unknown_path_and_method() -> None:
    """Unknown paths and methods get OpenAI's JSON 404 with a request id."""

    async def scenario(endpoint, session):
        path = await get(session, f"{endpoint.base_url}/engines")
        method = await get(session, f"{endpoint.base_url}/chat/completions")
        return path, method

    path, method = serve(EndpointConfig(key=KEY), scenario)

    assert path[0] == 404
    assert path[2]["error"]["message"] == "Invalid URL (GET /v1/engines)"
    assert path[2]["error"]["type"] == "invalid_request_error"
    assert path[1]["x-request-id"].startswith("req_")
    assert method[0] == 404
    assert method[2]["error"]["message"] == "Invalid URL (GET /v1/chat/completions)"


def test_latency_delays_chat_only() -> None:
    """latency_ms delays chat responses, and concurrent requests overlap during it."""
    config = EndpointConfig(key=KEY, latency_ms=100)

    async def scenario(endpoint, session):
        loop = asyncio.get_running_loop()
        started = loop.time()
        await get(session, f"{endpoint.base_url}/models")
        models_s = loop.time() - started

        started = loop.time()
        answers = await asyncio.gather(*(post_chat(session, endpoint) for _ in range(5)))
        chat_s = loop.time() - started
        return models_s, chat_s, answers, endpoint.stats.max_in_flight

    models_s, chat_s, answers, max_in_flight = serve(config, scenario)

    assert models_s < 0.1
    assert chat_s >= 0.1
    assert chat_s < 0.5
    assert [answer[0] for answer in answers] == [200] * 5
    assert max_in_flight == 5


# Auth


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": f"Basic {KEY}"}, {"Authorization": "Bearer "}, {"Authorization": KEY}],
    ids=["absent", "basic", "empty-bearer", "no-scheme"],
)
def test_missing_key_401(headers: dict[str, str]) -> None:
    """A request without a Bearer key gets the no-key 401 with a null code."""

    async def scenario(endpoint, session):
        chat = await post_chat(session, endpoint, headers=headers)
        models = await get(session, f"{endpoint.base_url}/models", headers=headers)
        return chat, models

    chat, models = serve(EndpointConfig(key=KEY), scenario)

    for status, _headers, body in (chat, models):
        assert status == 401
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["code"] is None
        assert body["error"]["param"] is None
        assert "didn't provide an API key" in body["error"]["message"]


def test_wrong_key_401_shows_fingerprint() -> None:
    """A wrong key gets invalid_api_key, and the message shows only its fingerprint."""
    wrong = "sk-wrong-key-9999abcd"

    async def scenario(endpoint, session):
        return await post_chat(session, endpoint, headers={"Authorization": f"Bearer {wrong}"})

    status, _headers, body = serve(EndpointConfig(key=KEY), scenario)

    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
    assert body["error"]["type"] == "invalid_request_error"
    assert "sk-...abcd" in body["error"]["message"]
    assert wrong not in body["error"]["message"]
    assert KEY not in json.dumps(body)


def test_organization_mismatch_401() -> None:
    """A different OpenAI-Organization header gets mismatched_organization; same or none passes."""
    config = EndpointConfig(key=KEY, organization="org-right")

    async def scenario(endpoint, session):
        wrong = await post_chat(
            session, endpoint, headers={**AUTH, "OpenAI-Organization": "org-wrong"}
        )
        right = await post_chat(
            session, endpoint, headers={**AUTH, "OpenAI-Organization": "org-right"}
        )
        absent = await post_chat(session, endpoint)
        models = await get(
            session, f"{endpoint.base_url}/models", headers={**AUTH, "OpenAI-Organization": "org-x"}
        )
        return wrong, right, absent, models

    wrong, right, absent, models = serve(config, scenario)

    assert wrong[0] == 401
    assert wrong[2]["error"]["code"] == "mismatched_organization"
    assert right[0] == 200
    assert absent[0] == 200
    assert models[0] == 401
    assert models[2]["error"]["code"] == "mismatched_organization"


def test_project_mismatch_401() -> None:
    """A different OpenAI-Project header gets mismatched_project."""
    config = EndpointConfig(key=KEY, project="proj_right")

    async def scenario(endpoint, session):
        wrong = await post_chat(session, endpoint, headers={**AUTH, "OpenAI-Project": "proj_wrong"})
        right = await post_chat(session, endpoint, headers={**AUTH, "OpenAI-Project": "proj_right"})
        return wrong, right

    wrong, right = serve(config, scenario)

    assert wrong[0] == 401
    assert wrong[2]["error"]["code"] == "mismatched_project"
    assert right[0] == 200


def test_strip_authorization_rejects_right_key() -> None:
    """With strip_authorization, the right key gets the no-key 401 and is not counted as seen."""
    config = EndpointConfig(key=KEY, strip_authorization=True)

    async def scenario(endpoint, session):
        chat = await post_chat(session, endpoint)
        models = await get(session, f"{endpoint.base_url}/models")
        return chat, models, endpoint.stats.authorization_seen

    chat, models, authorization_seen = serve(config, scenario)

    for status, _headers, body in (chat, models):
        assert status == 401
        assert body["error"]["code"] is None
    assert authorization_seen == 0


def test_revoke_after_rejects_key_everywhere() -> None:
    """After revoke_after completions, chat and models get 401 invalid_api_key."""
    config = EndpointConfig(key=KEY, revoke_after=2)

    async def scenario(endpoint, session):
        chats = [await post_chat(session, endpoint) for _ in range(3)]
        models = await get(session, f"{endpoint.base_url}/models")
        return chats, models

    chats, models = serve(config, scenario)

    assert [chat[0] for chat in chats] == [200, 200, 401]
    assert chats[2][2]["error"]["code"] == "invalid_api_key"
    assert models[0] == 401
    assert models[2]["error"]["code"] == "invalid_api_key"


def test_revoke_after_holds_under_concurrency() -> None:
    """Concurrent requests admitted together still get at most revoke_after completions."""
    config = EndpointConfig(key=KEY, revoke_after=3, latency_ms=20)

    async def scenario(endpoint, session):
        return await asyncio.gather(*(post_chat(session, endpoint) for _ in range(8)))

    answers = serve(config, scenario)

    assert sorted(answer[0] for answer in answers) == [200] * 3 + [401] * 5


def test_quota_after_insufficient_quota() -> None:
    """After quota_after completions, chat gets a 429 insufficient_quota without retry headers."""
    config = EndpointConfig(key=KEY, quota_after=1)

    async def scenario(endpoint, session):
        first = await post_chat(session, endpoint)
        second = await post_chat(session, endpoint)
        models = await get(session, f"{endpoint.base_url}/models")
        return first, second, models

    first, second, models = serve(config, scenario)

    assert first[0] == 200
    assert second[0] == 429
    assert second[2]["error"]["type"] == "insufficient_quota"
    assert second[2]["error"]["code"] == "insufficient_quota"
    assert "retry-after" not in second[1]
    assert "retry-after-ms" not in second[1]
    assert models[0] == 200


def test_quota_after_zero_rejects_first_request() -> None:
    """quota_after 0 simulates an account without credit from the first request."""

    async def scenario(endpoint, session):
        return await post_chat(session, endpoint)

    status, _headers, body = serve(EndpointConfig(key=KEY, quota_after=0), scenario)

    assert status == 429
    assert body["error"]["code"] == "insufficient_quota"


@pytest.mark.parametrize(
    ("models_status", "content_type", "error_type", "code"),
    [
        (403, "application/json", "invalid_request_error", "insufficient_permissions"),
        (404, "text/plain", None, None),
        (503, "application/json", "server_error", None),
    ],
)
def test_models_status_leaves_chat_working(
    models_status: int, content_type: str, error_type: str | None, code: str | None
) -> None:
    """models_status makes /v1/models fail with that status while chat gets 200."""
    config = EndpointConfig(key=KEY, models_status=models_status)

    async def scenario(endpoint, session):
        async with session.get(f"{endpoint.base_url}/models", headers=AUTH) as response:
            models = response.status, response.content_type, await response.text()
        chat = await post_chat(session, endpoint, max_tokens=1)
        return models, chat

    (status, answer_type, text), chat = serve(config, scenario)

    assert status == models_status
    assert answer_type == content_type
    if error_type is not None:
        error = json.loads(text)["error"]
        assert error["type"] == error_type
        assert error["code"] == code
    assert chat[0] == 200


# Faults


def test_fail_rate_502_sends_html() -> None:
    """fail_rate 1 fails every chat request with a proxy's HTML 502 page."""
    config = EndpointConfig(key=KEY, fail_rate=1.0)

    async def scenario(endpoint, session):
        async with session.post(
            f"{endpoint.base_url}/chat/completions",
            headers=AUTH,
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
        ) as response:
            return response.status, response.content_type, await response.text()

    status, content_type, text = serve(config, scenario)

    assert status == 502
    assert content_type == "text/html"
    assert "502 Bad Gateway" in text


def test_fail_status_500_sends_json() -> None:
    """A fail_status outside 502-504 is sent as OpenAI's JSON server_error."""
    config = EndpointConfig(key=KEY, fail_rate=1.0, fail_status=500)

    async def scenario(endpoint, session):
        return await post_chat(session, endpoint)

    status, _headers, body = serve(config, scenario)

    assert status == 500
    assert body["error"]["type"] == "server_error"


def test_fail_rate_is_reproducible_by_seed() -> None:
    """The same seed fails the same requests; another seed fails others."""

    def statuses(seed: int) -> list[int]:
        config = EndpointConfig(key=KEY, fail_rate=0.5, seed=seed)

        async def scenario(endpoint, session):
            return [(await post_chat(session, endpoint))[0] for _ in range(40)]

        return serve(config, scenario)

    first = statuses(seed=7)

    assert first == statuses(seed=7)
    assert first != statuses(seed=8)
    assert 10 <= first.count(502) <= 30
    assert set(first) == {200, 502}


def test_reset_rate_drops_connection() -> None:
    """reset_rate 1 resets every chat connection, which the client sees as a connection error."""
    config = EndpointConfig(key=KEY, reset_rate=1.0)

    async def scenario(endpoint, session):
        with pytest.raises(aiohttp.ClientConnectionError):
            await post_chat(session, endpoint)
        models = await get(session, f"{endpoint.base_url}/models")
        return models, endpoint.stats

    models, stats = serve(config, scenario)

    assert models[0] == 200
    assert stats.connections_reset == 1
    assert stats.chat_succeeded == 0
    assert stats.responses_by_status == {"200": 1}


def test_truncate_rate_cuts_body() -> None:
    """truncate_rate 1 sends less body than Content-Length, a payload error for the client."""
    config = EndpointConfig(key=KEY, truncate_rate=1.0)

    async def scenario(endpoint, session):
        with pytest.raises(aiohttp.ClientPayloadError):
            await post_chat(session, endpoint)
        return endpoint.stats

    stats = serve(config, scenario)

    assert stats.bodies_truncated == 1
    assert stats.chat_succeeded == 0


# Rules


def test_rule_times_then_normal() -> None:
    """A rule with times 2 responds twice with its status and headers, then the usual path runs."""
    rule = Rule(
        match="flaky",
        times=2,
        status=429,
        headers={"retry-after": "1"},
        body={
            "error": {
                "message": "slow down",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        },
    )
    config = EndpointConfig(key=KEY, rules=(rule,))

    async def scenario(endpoint, session):
        flaky = [await post_chat(session, endpoint, "a flaky prompt") for _ in range(3)]
        other = await post_chat(session, endpoint, "a steady prompt")
        return flaky, other

    flaky, other = serve(config, scenario)

    assert [answer[0] for answer in flaky] == [429, 429, 200]
    assert flaky[0][1]["retry-after"] == "1"
    assert flaky[0][2]["error"]["code"] == "rate_limit_exceeded"
    assert flaky[0][1]["x-request-id"].startswith("req_")
    assert other[0] == 200


def test_rule_always_applies_before_auth() -> None:
    """A rule with no times limit handles every match, even without a key."""
    config = EndpointConfig(key=KEY, rules=(Rule(match="poison", status=500),))

    async def scenario(endpoint, session):
        keyed = [await post_chat(session, endpoint, "poison pill") for _ in range(3)]
        keyless = await post_chat(session, endpoint, "poison pill", headers={})
        return keyed, keyless

    keyed, keyless = serve(config, scenario)

    assert [answer[0] for answer in keyed] == [500, 500, 500]
    assert keyed[0][2]["error"]["type"] == "server_error"
    assert keyless[0] == 500


def test_rule_string_body_and_first_match_wins() -> None:
    """A string body is sent as given, and the first matching rule with uses left wins."""
    rules = (
        Rule(match="x", times=1, status=200, body="not json at all"),
        Rule(match="", status=503, body="<html>down</html>", headers={"content-type": "text/html"}),
    )
    config = EndpointConfig(key=KEY, rules=rules)

    async def scenario(endpoint, session):
        first = await post_chat(session, endpoint, "x")
        second = await post_chat(session, endpoint, "x")
        return first, second

    first, second = serve(config, scenario)

    assert first[0] == 200
    assert first[1]["content-type"].startswith("text/plain")
    assert first[2] == "not json at all"
    assert second[0] == 503
    assert second[1]["content-type"].startswith("text/html")
    assert second[2] == "<html>down</html>"


def test_rule_without_body_sends_completion_after_delay() -> None:
    """A 2xx rule without a body sends the generated completion after delay_ms."""
    rule = Rule(match="slow", status=200, delay_ms=100, headers={"x-should-retry": "false"})
    config = EndpointConfig(key=KEY, rules=(rule,))

    async def scenario(endpoint, session):
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await post_chat(session, endpoint, "slow words")
        return answer, loop.time() - started, endpoint.stats.chat_succeeded

    (status, headers, body), elapsed_s, succeeded = serve(config, scenario)

    assert status == 200
    assert body["choices"][0]["message"]["content"] == "Echo: slow words"
    assert headers["x-should-retry"] == "false"
    assert elapsed_s >= 0.1
    assert succeeded == 1


def test_rule_matches_any_message_content() -> None:
    """Rules match on all message contents joined, text parts of list contents included."""
    config = EndpointConfig(key=KEY, rules=(Rule(match="secret-word", status=418),))
    messages = [
        {"role": "system", "content": "plain"},
        {"role": "user", "content": [{"type": "text", "text": "has secret-word inside"}]},
    ]

    async def scenario(endpoint, session):
        return await post_chat(session, endpoint, body={"model": "gpt-4o", "messages": messages})

    status, _headers, _body = serve(config, scenario)

    assert status == 418


def test_rule_without_body_by_status() -> None:
    """Without a body, a 429 rule sends a rate-limit error and a 200 rule keeps validation."""
    rules = (Rule(match="limited", status=429), Rule(match="valid", status=200))
    config = EndpointConfig(key=KEY, rules=rules)

    async def scenario(endpoint, session):
        limited = await post_chat(session, endpoint, "limited")
        invalid = await post_chat(
            session,
            endpoint,
            body={"model": "gpt-9", "messages": [{"role": "user", "content": "valid"}]},
        )
        return limited, invalid

    limited, invalid = serve(config, scenario)

    assert limited[0] == 429
    assert limited[2]["error"]["type"] == "requests"
    assert limited[2]["error"]["code"] == "rate_limit_exceeded"
    assert "retry-after" not in limited[1]
    assert invalid[0] == 404
    assert invalid[2]["error"]["code"] == "model_not_found"


# Stats


def test_stats_count_requests_and_reset() -> None:
    """The stats route counts requests by kind and status, and the reset route zeroes them."""
    config = EndpointConfig(key=KEY)

    async def scenario(endpoint, session):
        await get(session, f"{endpoint.base_url}/models")
        await post_chat(session, endpoint)
        await post_chat(session, endpoint, headers={})
        await post_chat(session, endpoint, body={"model": "gpt-4o", "messages": []})
        async with session.get(stats_url(endpoint)) as response:
            before = await response.json()
        async with session.post(f"{stats_url(endpoint)}/reset") as response:
            reset_status = response.status
        async with session.get(stats_url(endpoint)) as response:
            after = await response.json()
        return before, reset_status, after

    before, reset_status, after = serve(config, scenario)

    assert before["models_requests"] == 1
    assert before["chat_requests"] == 3
    assert before["chat_succeeded"] == 1
    assert before["responses_by_status"] == {"200": 2, "401": 1, "400": 1}
    assert before["authorization_seen"] == 3
    assert before["max_in_flight"] == 1
    assert len(before["chat_start_times"]) == 3
    assert before["chat_start_times"] == sorted(before["chat_start_times"])
    assert reset_status == 200
    assert after["models_requests"] == 0
    assert after["chat_requests"] == 0
    assert after["chat_succeeded"] == 0
    assert after["responses_by_status"] == {}
    assert after["chat_start_times"] == []
    assert after["authorization_seen"] == 0
    assert after["max_in_flight"] == 0


def test_stats_count_organization_and_project_headers() -> None:
    """organization_seen and project_seen count requests that carry those headers."""

    async def scenario(endpoint, session):
        await post_chat(session, endpoint)
        await post_chat(session, endpoint, headers={**AUTH, "OpenAI-Organization": "org-a"})
        await get(session, f"{endpoint.base_url}/models", headers={**AUTH, "OpenAI-Project": "proj_b"})
        return endpoint.stats.to_dict()

    stats = serve(EndpointConfig(key=KEY), scenario)

    assert stats["authorization_seen"] == 3
    assert stats["organization_seen"] == 1
    assert stats["project_seen"] == 1


def test_stats_route_not_counted() -> None:
    """The stats route responds without a key and does not count itself."""

    async def scenario(endpoint, session):
        async with session.get(stats_url(endpoint)) as response:
            await response.read()
        async with session.get(stats_url(endpoint)) as response:
            return response.status, await response.json()

    status, stats = serve(EndpointConfig(key=KEY), scenario)

    assert status == 200
    assert stats["responses_by_status"] == {}
    assert stats["authorization_seen"] == 0


def test_stats_start_times_use_loop_time() -> None:
    """chat_start_times are loop.time() values taken when each request arrives."""

    async def scenario(endpoint, session):
        loop = asyncio.get_running_loop()
        before = loop.time()
        await post_chat(session, endpoint)
        after = loop.time()
        return before, endpoint.stats.chat_start_times, after

    before, start_times, after = serve(EndpointConfig(key=KEY), scenario)

    assert len(start_times) == 1
    assert before <= start_times[0] <= after
