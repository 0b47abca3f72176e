"""SIGINT and SIGTERM: a graceful stop first, an immediate one on the second signal."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from batcher.errors import ExitCode

if TYPE_CHECKING:
    from batcher.runner import Runner

log = structlog.get_logger("batcher.signals")

# Seconds that requests in flight get to finish after SIGINT or SIGTERM before they are cancelled.
GRACE_S = 10.0

_T = TypeVar("_T")


class Interrupted(Exception):
    """A signal arrived before the workers started, so the run ends without sending the batch."""


class SignalStop:
    """Turns SIGINT and SIGTERM into a graceful stop, and a second signal into an immediate one.

    Before the workers start, a signal cancels the step in progress (the endpoint start or the
    preflight), because no response worth waiting for is in flight yet. Once the runner is
    attached, a signal stops it gracefully: requests in flight get GRACE_S to finish.
    """

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._runner: Runner | None = None
        self._guarded: asyncio.Future[Any] | None = None
        self._grace: asyncio.TimerHandle | None = None

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.SIGTERM if self.signal_number == signal.SIGTERM else ExitCode.SIGINT

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, self._on_signal, number)

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(number)
        if self._grace is not None:
            self._grace.cancel()

    async def guard(self, awaitable: Awaitable[_T]) -> _T:
        """Await a step before the workers start; raise Interrupted if a signal cancels it."""
        if self.signal_number is not None:
            raise Interrupted
        task = asyncio.ensure_future(awaitable)
        self._guarded = task
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            # Only our own cancellation becomes Interrupted; one aimed at this task passes on.
            if self.signal_number is None or (current is not None and current.cancelling()):
                raise
            raise Interrupted from None
        finally:
            self._guarded = None

    def attach(self, runner: Runner) -> None:
        """Route later signals to `runner`; raise Interrupted if one has already arrived."""
        if self.signal_number is not None:
            raise Interrupted
        self._runner = runner

    def _on_signal(self, number: int) -> None:
        name = signal.Signals(number).name
        runner = self._runner
        if self.signal_number is not None:
            if runner is not None:
                log.warning("run.stop_now", signal=name, failure_kind=None, in_flight=runner.in_flight)
                runner.cancel_in_flight()
            return

        self.signal_number = number
        if runner is None:
            log.warning("run.stopping", signal=name, failure_kind=None, stopped_reason="interrupted", in_flight=0)
            if self._guarded is not None:
                self._guarded.cancel()
            return

        log.warning(
            "run.stopping",
            signal=name,
            failure_kind=None,
            stopped_reason="interrupted",
            in_flight=runner.in_flight,
            grace_s=GRACE_S,
        )
        runner.stop("interrupted")
        self._grace = asyncio.get_running_loop().call_later(GRACE_S, runner.cancel_in_flight)
