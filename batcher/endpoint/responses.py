"""OpenAI-shaped error responses, and the HTML error page of a proxy in front of it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from http import HTTPStatus

from aiohttp import web

from batcher.endpoint.ratelimits import RateLimitExceeded, format_go_duration

_PROXY_PAGE = """<html>
<head><title>{status} {reason}</title></head>
<body>
<center><h1>{status} {reason}</h1></center>
<hr><center>cloudflare</center>
</body>
</html>
"""


def error_response(
    status: int,
    message: str,
    *,
    type: str,
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """Build a response with OpenAI's error body {"error": {message, type, param, code}}."""
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def generic_error(status: int) -> web.Response:
    """Build an OpenAI-shaped error for any status.

    5xx get type server_error, 429 a rate-limit error without retry headers,
    and other statuses type invalid_request_error.
    """
    if status >= 500:
        return error_response(
            status,
            "The server had an error while processing your request. Sorry about that!",
            type="server_error",
        )
    if status == 429:
        return error_response(
            status,
            "Rate limit reached. Please try again later.",
            type="requests",
            code="rate_limit_exceeded",
        )
    return error_response(
        status,
        f"The local endpoint responds {status} {_reason(status)} as configured.",
        type="invalid_request_error",
    )


def proxy_error_page(status: int) -> web.Response:
    """Build the HTML page that a proxy such as Cloudflare sends for 502, 503 and 504."""
    text = _PROXY_PAGE.format(status=status, reason=_reason(status))
    return web.Response(status=status, text=text, content_type="text/html")


def fingerprint(key: str) -> str:
    """Return a key shortened to its first 3 and last 4 characters, like "sk-...cdef".

    Keys shorter than 12 characters show only "***", because the fingerprint
    would reveal most of them.
    """
    if len(key) < 12:
        return "***"
    return f"{key[:3]}...{key[-4:]}"


def missing_key() -> web.Response:
    """Build OpenAI's 401 for a request without a Bearer Authorization header."""
    return error_response(
        401,
        "You didn't provide an API key. Send it in the Authorization header with "
        "Bearer auth (Authorization: Bearer YOUR_KEY).",
        type="invalid_request_error",
    )


def invalid_key(received: str) -> web.Response:
    """Build OpenAI's 401 for a wrong or revoked key, naming only its fingerprint."""
    return error_response(
        401,
        f"Incorrect API key provided: {fingerprint(received)}. Use the key that this "
        "local endpoint printed or was started with.",
        type="invalid_request_error",
        code="invalid_api_key",
    )


def mismatched_header(header: str, code: str) -> web.Response:
    """Build OpenAI's 401 for an organization or project header that does not match the key's."""
    return error_response(
        401,
        f"The {header} header does not match the one of the API key.",
        type="invalid_request_error",
        code=code,
    )


def model_not_found(model: str) -> web.Response:
    """Build OpenAI's 404 for a model that is not in the endpoint's list."""
    return error_response(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        type="invalid_request_error",
        code="model_not_found",
    )


def insufficient_quota() -> web.Response:
    """Build OpenAI's 429 for an exhausted quota; it carries no retry headers."""
    return error_response(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        type="insufficient_quota",
        code="insufficient_quota",
    )


def rate_limited(model: str, exceeded: RateLimitExceeded, headers: dict[str, str]) -> web.Response:
    """Build OpenAI's 429 for a request over a rate limit, with its retry headers.

    A request larger than the whole limit can never fit, so it gets OpenAI's
    "Request too large" message and no retry-after headers.
    """
    if math.isinf(exceeded.wait_s):
        message = (
            f"Request too large for {model} on {exceeded.label}: Limit {exceeded.limit}, "
            f"Requested {exceeded.requested}. The input or output tokens must be reduced "
            "in order to run successfully."
        )
        return error_response(
            429, message, type=exceeded.kind, code="rate_limit_exceeded", headers=headers
        )

    wait_text = format_go_duration(exceeded.wait_s)
    message = (
        f"Rate limit reached for {model} on {exceeded.label}: Limit {exceeded.limit}, "
        f"Used {exceeded.used}, Requested {exceeded.requested}. "
        f"Please try again in {wait_text}."
    )
    retry_headers = {
        **headers,
        "retry-after": str(math.ceil(exceeded.wait_s)),
        "retry-after-ms": str(math.ceil(round(exceeded.wait_s * 1000, 6))),
    }
    return error_response(
        429, message, type=exceeded.kind, code="rate_limit_exceeded", headers=retry_headers
    )


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
