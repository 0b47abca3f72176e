"""LiteLLM custom-auth hook: static test keys with limits, and a request log."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time

from fastapi import Request
from litellm.proxy._types import ProxyException, UserAPIKeyAuth

# Name of the variable that contains the path of the JSON-lines request log.
# The hook appends one line per request that reaches authentication, so a test
# can count what arrived, by route and by key, from the proxy's side.
REQUEST_LOG_ENV = "GATEWAY_REQUEST_LOG"

# A test key is one of these prefixes, a hyphen and a suffix of letters and
# digits that the test picks. LiteLLM counts limits per key, so a fresh suffix
# gives each test its own rate-limit window on the one shared proxy.
KEY_LIMITS: dict[str, dict[str, int]] = {
    "sk-gw-unlimited": {},
    "sk-gw-rpm2": {"rpm_limit": 2},
    "sk-gw-tpm100": {"tpm_limit": 100},
    "sk-gw-parallel1": {"max_parallel_requests": 1},
    "sk-gw-quota": {},
}
# The quota key lists models but gets a 429 `insufficient_quota` on every other
# route. A client's preflight passes and the quota shows on the first chat
# completion, which models an account whose credit runs out mid-batch.
QUOTA_KEY_PREFIX = "sk-gw-quota"
MODEL_LIST_ROUTE = "/models"

# Seconds the hook delays each request of these keys before LiteLLM's rate
# limiter sees it. A client's burst of concurrent requests then arrives in full
# before the first 429 goes back, unless sending the burst takes the client
# over a second, so the number of requests that get through does not depend on
# scheduling.
AUTH_DELAY_S: dict[str, float] = {"sk-gw-rpm2": 1.0}


def fingerprint_key(api_key: str) -> str:
    """Return a short SHA-256 digest that names a key without revealing it."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:12]


def _key_prefix(api_key: str) -> str | None:
    prefix, separator, suffix = api_key.rpartition("-")
    if not separator or not suffix.isalnum():
        return None
    return prefix


def _route(request: Request) -> str:
    return request.url.path.removeprefix("/v1")


def _record_request(request: Request, api_key: str, outcome: str) -> None:
    log_path = os.environ.get(REQUEST_LOG_ENV)
    if not log_path:
        return

    entry = {
        "time_s": time.time(),
        "method": request.method,
        "route": _route(request),
        "key_fingerprint": fingerprint_key(api_key) if api_key else None,
        "outcome": outcome,
    }
    # One write of a whole line to a file opened for appending, so lines from
    # concurrent requests do not interleave.
    with open(log_path, "a", encoding="utf-8") as log_file:
        log_file.write(json.dumps(entry) + "\n")


async def user_api_key_auth(request: Request, api_key: str | None) -> UserAPIKeyAuth:
    """Accept the test keys with their limits and reject every other key.

    Raises:
        ProxyException: 401 for a missing or unknown key, and 429 with type
            `insufficient_quota` for the quota key outside the model list.
    """
    # LiteLLM passes None when the request has no Authorization header.
    api_key = api_key or ""
    prefix = _key_prefix(api_key)

    if prefix not in KEY_LIMITS:
        _record_request(request, api_key, "unknown_key")
        raise ProxyException(
            message="Invalid API key: it is not one of the gateway test keys.",
            type="auth_error",
            param="api_key",
            code=401,
        )

    if prefix == QUOTA_KEY_PREFIX and _route(request) != MODEL_LIST_ROUTE:
        _record_request(request, api_key, "quota")
        raise ProxyException(
            message="You exceeded your current quota, please check your plan and billing details.",
            type="insufficient_quota",
            param=None,
            code=429,
            openai_code="insufficient_quota",
        )

    _record_request(request, api_key, "accepted")
    await asyncio.sleep(AUTH_DELAY_S.get(prefix, 0.0))
    return UserAPIKeyAuth(api_key=api_key, key_alias=prefix, **KEY_LIMITS[prefix])
