"""Failure kinds and the one classifier that decides them."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp

from batcher.jsonl import loads
from batcher.rate_headers import retry_wait_s


class FailureKind(StrEnum):
    """The reason a request failed; every log line and summary count uses these names."""

    AUTH = "auth"
    PERMISSION = "permission"
    QUOTA = "quota"
    RATE_LIMIT = "rate_limit"
    NOT_FOUND = "not_found"
    BAD_REQUEST = "bad_request"
    CONTENT_FILTER = "content_filter"
    SERVER = "server"
    TIMEOUT = "timeout"
    NETWORK = "network"
    INVALID_RESPONSE = "invalid_response"


# Kinds that end the whole run: no new request starts after one of these.
STOPPING_KINDS = frozenset({FailureKind.AUTH, FailureKind.PERMISSION, FailureKind.QUOTA})

# Kinds retried by default; `x-should-retry` overrides this for a single response.
RETRIED_KINDS = frozenset(
    {
        FailureKind.RATE_LIMIT,
        FailureKind.SERVER,
        FailureKind.TIMEOUT,
        FailureKind.NETWORK,
        FailureKind.INVALID_RESPONSE,
    }
)

_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "quota_exceeded"})
_CONTENT_FILTER_CODES = frozenset({"content_filter", "content_policy_violation"})
_BAD_REQUEST_STATUSES = frozenset({400, 409, 413, 422})

# A 429 that requests a wait longer than this is a per-day (or longer) limit. No batch should
# sleep through it, so it is treated as quota and stops the run.
PER_DAY_WAIT_S = 3600.0


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed request: its kind, whether to retry it, and the endpoint's error fields."""

    kind: FailureKind
    retryable: bool
    status: int | None = None
    code: str | None = None
    type: str | None = None
    message: str = ""
    request_id: str | None = None
    # Seconds the endpoint requested to wait (retry-after, x-ratelimit-reset-*), or None.
    wait_s: float | None = None
    # Where a 3xx pointed; redirects are never followed with the key.
    location: str | None = None

    @property
    def stops_run(self) -> bool:
        return self.kind in STOPPING_KINDS

    def to_record(self) -> dict[str, Any]:
        """Return the `error` object of a results line."""
        return {
            "kind": self.kind.value,
            "status": self.status,
            "code": self.code,
            "type": self.type,
            "message": self.message,
            "request_id": self.request_id,
        }


def _error_fields(body: bytes) -> tuple[str | None, str | None, str]:
    """Return (code, type, message) from an OpenAI-style error body, tolerating other shapes."""
    try:
        parsed = loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, None, _short_text(body)

    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, str):
        return None, None, error
    if not isinstance(error, dict):
        return None, None, _short_text(body)

    code = error.get("code")
    error_type = error.get("type")
    message = error.get("message")
    return (
        None if code is None else str(code),
        None if error_type is None else str(error_type),
        message if isinstance(message, str) else "",
    )


def _short_text(body: bytes, limit: int = 300) -> str:
    text = body[:limit].decode("utf-8", errors="replace")
    return " ".join(text.split())


def _should_retry_override(headers: Mapping[str, str]) -> bool | None:
    value = headers.get("x-should-retry")
    if value is None:
        return None
    value = value.strip().lower()
    if value == "true":
        return True
    if value == "false":
        return False
    return None


def _kind_for_error_status(status: int, code: str | None, error_type: str | None) -> FailureKind:
    if status == 401:
        return FailureKind.AUTH
    if status == 403:
        return FailureKind.PERMISSION
    if status == 404:
        return FailureKind.NOT_FOUND
    if status == 429:
        if code in _QUOTA_CODES or error_type in _QUOTA_CODES:
            return FailureKind.QUOTA
        return FailureKind.RATE_LIMIT
    if status == 408:
        return FailureKind.TIMEOUT
    if status == 400 and (code in _CONTENT_FILTER_CODES or error_type in _CONTENT_FILTER_CODES):
        return FailureKind.CONTENT_FILTER
    if status >= 500 or 300 <= status < 400:
        return FailureKind.SERVER
    if status in _BAD_REQUEST_STATUSES:
        return FailureKind.BAD_REQUEST
    return FailureKind.BAD_REQUEST


def classify_response(
    status: int, headers: Mapping[str, str], body: bytes
) -> dict[str, Any] | Failure:
    """Return the parsed chat completion, or the Failure that this response is.

    The kind comes from the status, `error.code`, `error.type` and the body's shape, never from
    message text. `x-should-retry: true|false` overrides whether the kind is retried, except that
    auth, permission and quota failures always stop the run.
    """
    request_id = headers.get("x-request-id")
    if 200 <= status < 300:
        return _classify_success(status, headers, body, request_id)

    code, error_type, message = _error_fields(body)
    kind = _kind_for_error_status(status, code, error_type)
    wait_s = retry_wait_s(headers, error_type=error_type) if status in (429, 503) else None
    if kind is FailureKind.RATE_LIMIT and wait_s is not None and wait_s > PER_DAY_WAIT_S:
        kind = FailureKind.QUOTA

    # A redirect would come back the same way every time, so it is a server failure not retried.
    retryable = kind in RETRIED_KINDS and not 300 <= status < 400
    override = _should_retry_override(headers)
    if override is not None and kind not in STOPPING_KINDS:
        retryable = override

    return Failure(
        kind=kind,
        retryable=retryable,
        status=status,
        code=code,
        type=error_type,
        message=message,
        request_id=request_id,
        wait_s=wait_s,
        location=headers.get("location") if 300 <= status < 400 else None,
    )


def _classify_success(
    status: int, headers: Mapping[str, str], body: bytes, request_id: str | None
) -> dict[str, Any] | Failure:
    try:
        parsed = loads(body)
    except (ValueError, UnicodeDecodeError):
        parsed = None

    choices = parsed.get("choices") if isinstance(parsed, dict) else None
    if not isinstance(choices, list):
        override = _should_retry_override(headers)
        return Failure(
            kind=FailureKind.INVALID_RESPONSE,
            retryable=True if override is None else override,
            status=status,
            message="the response is not a chat completion: "
            + ("no `choices` list" if isinstance(parsed, dict) else "the body is not a JSON object"),
            request_id=request_id,
        )

    filtered = not choices or any(
        isinstance(choice, dict) and choice.get("finish_reason") == "content_filter"
        for choice in choices
    )
    if filtered:
        return Failure(
            kind=FailureKind.CONTENT_FILTER,
            retryable=False,
            status=status,
            code="content_filter",
            message="the response has no choices" if not choices else "finish_reason is content_filter",
            request_id=request_id,
        )
    return parsed


def classify_exception(exc: BaseException) -> Failure:
    """Return the Failure for a transport error raised while sending or reading a request."""
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        kind = FailureKind.TIMEOUT
        message = "no complete response within the timeout"
    elif isinstance(exc, aiohttp.ClientPayloadError):
        kind = FailureKind.NETWORK
        message = f"the response body was cut short ({type(exc).__name__})"
    elif isinstance(exc, (aiohttp.ClientError, OSError)):
        kind = FailureKind.NETWORK
        message = f"{type(exc).__name__}: {exc}"
    else:
        raise TypeError(f"not a transport error: {type(exc).__name__}") from exc
    return Failure(kind=kind, retryable=True, message=message)
