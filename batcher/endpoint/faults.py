"""Simulated transport and server faults: connection resets, cut bodies, failure statuses."""

from __future__ import annotations

import enum
import random
import socket
import struct
from collections.abc import Mapping

from aiohttp import web

from batcher.endpoint import responses

_PROXY_STATUSES = frozenset({502, 503, 504})


class Fault(enum.Enum):
    """A failure that replaces the response to a chat request."""

    RESET = "reset"
    TRUNCATE = "truncate"
    FAIL = "fail"


class FaultPicker:
    """Choose the fault of each chat request from a seeded random sequence.

    Each call to `pick` draws one number from [0, 1). A draw below reset_rate
    means a reset, the next truncate_rate of the range a cut body, and the
    next fail_rate a failure status. So the same seed and the same order of
    requests give the same faults.
    """

    def __init__(
        self, *, reset_rate: float, truncate_rate: float, fail_rate: float, seed: int
    ) -> None:
        self._random = random.Random(seed)
        self._reset_below = reset_rate
        self._truncate_below = reset_rate + truncate_rate
        self._fail_below = reset_rate + truncate_rate + fail_rate

    def pick(self) -> Fault | None:
        """Return the fault for the next request, or None for a normal response."""
        if self._fail_below <= 0:
            return None
        draw = self._random.random()
        if draw < self._reset_below:
            return Fault.RESET
        if draw < self._truncate_below:
            return Fault.TRUNCATE
        if draw < self._fail_below:
            return Fault.FAIL
        return None


def failure_response(status: int) -> web.Response:
    """Build a failure response: a proxy's HTML page for 502, 503 and 504, else OpenAI JSON."""
    if status in _PROXY_STATUSES:
        return responses.proxy_error_page(status)
    return responses.generic_error(status)


def reset_connection(request: web.Request) -> web.Response:
    """Abort the request's TCP connection with a reset, and return a response that is never sent.

    aiohttp fails to write the returned response on the closed transport and
    ends the connection quietly.
    """
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger on with a zero timeout makes close() send RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=200)


async def truncate_response(
    request: web.Request, body: bytes, headers: Mapping[str, str]
) -> web.StreamResponse:
    """Send a 200 whose Content-Length is that of `body`, then half of `body`, then close.

    The client sees a body cut short. The returned response is already sent,
    and aiohttp fails quietly to end it on the closed transport.
    """
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = "application/json"
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])

    transport = request.transport
    if transport is not None:
        transport.close()
    return response
