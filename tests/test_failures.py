"""The classifier: every response and transport error maps to one failure kind."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from batcher.failures import Failure, FailureKind, classify_exception, classify_response

COMPLETION = {"id": "c1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}


def error_body(code: object = None, error_type: object = None, message: str = "m") -> bytes:
    return json.dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}}).encode()


CLOUDFLARE_502 = b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>cloudflare</body></html>"

# (case, status, headers, body, kind, retryable)
CASES = [
    ("401 invalid key", 401, {}, error_body("invalid_api_key", "invalid_request_error"), FailureKind.AUTH, False),
    ("401 no key", 401, {}, error_body(None, "invalid_request_error"), FailureKind.AUTH, False),
    ("403", 403, {}, error_body("unsupported_country_region_territory", "request_forbidden"), FailureKind.PERMISSION, False),
    ("429 insufficient_quota", 429, {}, error_body("insufficient_quota", "insufficient_quota"), FailureKind.QUOTA, False),
    ("429 requests", 429, {"retry-after": "2"}, error_body("rate_limit_exceeded", "requests"), FailureKind.RATE_LIMIT, True),
    ("429 azure shape", 429, {}, error_body("429", None), FailureKind.RATE_LIMIT, True),
    ("429 with a day-long wait", 429, {"retry-after": "40000"}, error_body("rate_limit_exceeded", "requests"), FailureKind.QUOTA, False),
    ("404 model", 404, {}, error_body("model_not_found", "invalid_request_error"), FailureKind.NOT_FOUND, False),
    ("400", 400, {}, error_body("invalid_value", "invalid_request_error"), FailureKind.BAD_REQUEST, False),
    ("409", 409, {}, error_body(), FailureKind.BAD_REQUEST, False),
    ("413", 413, {}, b"too large", FailureKind.BAD_REQUEST, False),
    ("422", 422, {}, error_body(), FailureKind.BAD_REQUEST, False),
    ("400 content_filter", 400, {}, error_body("content_filter", "invalid_request_error"), FailureKind.CONTENT_FILTER, False),
    ("500 json", 500, {}, error_body(None, "server_error"), FailureKind.SERVER, True),
    ("502 html page", 502, {"content-type": "text/html"}, CLOUDFLARE_502, FailureKind.SERVER, True),
    ("503", 503, {}, b"", FailureKind.SERVER, True),
    ("302 redirect", 302, {"location": "https://elsewhere.test/v1"}, b"", FailureKind.SERVER, False),
    ("200 not json", 200, {}, b"<html>hello</html>", FailureKind.INVALID_RESPONSE, True),
    ("200 no choices", 200, {}, b'{"object": "list"}', FailureKind.INVALID_RESPONSE, True),
    ("200 empty choices", 200, {}, b'{"choices": []}', FailureKind.CONTENT_FILTER, False),
    ("200 finish content_filter", 200, {}, json.dumps({"choices": [{"finish_reason": "content_filter", "message": {"content": None}}]}).encode(), FailureKind.CONTENT_FILTER, False),
    ("500 told not to retry", 500, {"x-should-retry": "false"}, b"", FailureKind.SERVER, False),
    ("400 told to retry", 400, {"x-should-retry": "true"}, error_body(), FailureKind.BAD_REQUEST, True),
    ("401 told to retry", 401, {"x-should-retry": "true"}, error_body("invalid_api_key"), FailureKind.AUTH, False),
]


@pytest.mark.parametrize(("status", "headers", "body", "kind", "retryable"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_response_kind(status: int, headers: dict[str, str], body: bytes, kind: FailureKind, retryable: bool) -> None:
    verdict = classify_response(status, headers, body)

    assert isinstance(verdict, Failure)
    assert verdict.kind is kind
    assert verdict.retryable is retryable


def test_every_kind_is_covered() -> None:
    covered = {case[4] for case in CASES} | {FailureKind.TIMEOUT, FailureKind.NETWORK}
    assert covered == set(FailureKind)


def test_completion_is_returned() -> None:
    verdict = classify_response(200, {}, json.dumps(COMPLETION).encode())

    assert verdict == COMPLETION


def test_kind_ignores_message_text() -> None:
    body = error_body("rate_limit_exceeded", "tokens", message="You exceeded your current quota. Please try again in 9.8s.")

    verdict = classify_response(429, {}, body)

    assert isinstance(verdict, Failure)
    assert verdict.kind is FailureKind.RATE_LIMIT
    assert verdict.wait_s is None


def test_failure_keeps_request_id_and_location() -> None:
    verdict = classify_response(301, {"x-request-id": "req_1", "location": "https://x.test/"}, b"")

    assert isinstance(verdict, Failure)
    assert verdict.request_id == "req_1"
    assert verdict.location == "https://x.test/"


def test_rate_limit_wait_comes_from_headers() -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s", "x-ratelimit-reset-tokens": "76ms"}

    verdict = classify_response(429, headers, error_body("rate_limit_exceeded", "requests"))

    assert isinstance(verdict, Failure)
    assert verdict.wait_s == 360.0


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (asyncio.TimeoutError(), FailureKind.TIMEOUT),
        (aiohttp.ServerTimeoutError("read"), FailureKind.TIMEOUT),
        (aiohttp.ClientPayloadError("Response payload is not completed"), FailureKind.NETWORK),
        (aiohttp.ServerDisconnectedError(), FailureKind.NETWORK),
        (ConnectionRefusedError(111, "refused"), FailureKind.NETWORK),
        (ConnectionResetError(104, "reset"), FailureKind.NETWORK),
        (aiohttp.ClientOSError(104, "reset"), FailureKind.NETWORK),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_exception_kind(exc: BaseException, kind: FailureKind) -> None:
    failure = classify_exception(exc)

    assert failure.kind is kind
    assert failure.retryable is True


def test_other_exception_is_not_classified() -> None:
    with pytest.raises(TypeError):
        classify_exception(KeyError("x"))
