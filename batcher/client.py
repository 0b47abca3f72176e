"""The run's one aiohttp session, and sending a single API request."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from batcher.failures import Failure, classify_exception, classify_response
from batcher.jsonl import dumps, loads


def is_loopback_url(url: str) -> bool:
    """Return True when the URL's host is this machine (localhost, 127.0.0.0/8 or ::1)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Reply:
    """Result of one request: a parsed body or a Failure, plus the response headers."""

    body: dict[str, Any] | None
    failure: Failure | None
    headers: Mapping[str, str]
    latency_ms: int


class ApiClient:
    """Sends requests to one OpenAI-compatible base URL with fixed headers.

    Redirects are never followed, so the key cannot travel to another host; a 3xx becomes a
    `server` failure with its `Location`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str],
        timeout_s: float,
        max_connections: int,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # Every request sent and every 429 received, the preflight's included, for the summary.
        self.requests_sent = 0
        self.rate_limited_responses = 0
        self._headers = dict(headers)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._chat_url = f"{self.base_url}/chat/completions"
        self._models_url = f"{self.base_url}/models"

    async def __aenter__(self) -> ApiClient:
        connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            timeout=self._timeout,
            connector=connector,
            # Proxy variables apply to remote endpoints only; loopback is always direct.
            trust_env=not is_loopback_url(self.base_url),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post_chat(self, body: Mapping[str, Any] | bytes) -> Reply:
        """Send one chat-completion request and classify what comes back."""
        data = body if isinstance(body, bytes) else dumps(body).encode()
        return await self._request("POST", self._chat_url, data=data)

    async def get_models(self) -> Reply:
        """Send `GET /models`; a 200 with a `data` list counts as success."""
        return await self._request("GET", self._models_url, data=None, expect_completion=False)

    async def _request(
        self, method: str, url: str, *, data: bytes | None, expect_completion: bool = True
    ) -> Reply:
        assert self._session is not None, "ApiClient is used outside `async with`"
        self.requests_sent += 1
        started = time.perf_counter()
        try:
            async with self._session.request(
                method, url, data=data, allow_redirects=False
            ) as response:
                raw = await response.read()
                status = response.status
                headers = response.headers
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorError):
                # No connection was made, so no request reached the endpoint.
                self.requests_sent -= 1
            return Reply(None, classify_exception(exc), {}, _elapsed_ms(started))

        latency_ms = _elapsed_ms(started)
        if status == 429:
            self.rate_limited_responses += 1
        if expect_completion:
            verdict = classify_response(status, headers, raw)
        else:
            verdict = _classify_models(status, headers, raw)
        if isinstance(verdict, Failure):
            return Reply(None, verdict, headers, latency_ms)
        return Reply(verdict, None, headers, latency_ms)


def _classify_models(status: int, headers: Mapping[str, str], raw: bytes) -> dict[str, Any] | Failure:
    """Classify a `/models` response: a 2xx needs a `data` list, errors follow the chat rules."""
    if 200 <= status < 300:
        try:
            parsed = loads(raw)
        except (ValueError, UnicodeDecodeError):
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("data"), list):
            return parsed
        # An object without `choices` makes the classifier report an invalid response.
        return classify_response(status, headers, b"{}")
    return classify_response(status, headers, raw)


def _elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
