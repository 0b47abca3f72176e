"""LocalEndpoint: runs the local endpoint on a loopback port inside the current event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType

from aiohttp import web

from batcher.endpoint.app import build_app
from batcher.endpoint.config import EndpointConfig
from batcher.endpoint.stats import EndpointStats

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
# Seconds that shutdown waits for requests still being handled, such as long latency sleeps.
SHUTDOWN_TIMEOUT_S = 1.0


class LocalEndpoint:
    """The local endpoint as an async context manager, serving while the block runs.

    Use `async with LocalEndpoint(config) as endpoint:` and point a client at
    `endpoint.base_url` with `config.key`. Port 0 picks a free port.
    """

    def __init__(
        self,
        config: EndpointConfig,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """Prepare the endpoint; `clock` (default: the event loop's time) drives the rate limits."""
        if host not in LOOPBACK_HOSTS:
            allowed = ", ".join(sorted(LOOPBACK_HOSTS))
            raise ValueError(f"host must be a loopback address ({allowed}), got {host!r}")
        self.config = config
        self.stats = EndpointStats()
        self.port = port
        self._host = host
        self._clock = clock
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of the endpoint, like "http://127.0.0.1:PORT/v1"."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/v1"

    async def start(self) -> None:
        """Start listening; `async with` calls this.

        Raises:
            OSError: the port cannot be bound, for example because it is in use.
        """
        clock = self._clock or asyncio.get_running_loop().time
        app = build_app(self.config, self.stats, clock=clock)
        # No access log: the benchmarks send thousands of requests per second.
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise

        self._runner = runner
        self.port = runner.addresses[0][1]

    async def close(self) -> None:
        """Stop listening and close open connections; `async with` calls this."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> LocalEndpoint:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
