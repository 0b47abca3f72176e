"""The progress bar shown on a terminal: done, failed by kind, rate and ETA."""

from __future__ import annotations

import asyncio
import time
from typing import TextIO

from batcher.summary import RunStats

_CLEAR_LINE = "\r\x1b[K"
_WIDTH = 24


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class ProgressBar:
    """Redraws one status line on stderr a few times a second; only used on a TTY.

    Log lines printed meanwhile call `clear` first and `draw` after, so the bar never
    interleaves with them.
    """

    interval_s = 0.25

    def __init__(self, stream: TextIO, stats: RunStats, *, total: int) -> None:
        self._stream = stream
        self._stats = stats
        self._total = total
        self._started = time.monotonic()
        self._finished_at_start = stats.succeeded + stats.failed
        self._visible = False

    def render(self) -> str:
        stats = self._stats
        done = stats.succeeded + stats.failed + stats.skipped
        total = max(self._total, done, 1)
        filled = int(_WIDTH * done / total)
        elapsed_s = max(time.monotonic() - self._started, 1e-6)
        finished_now = stats.succeeded + stats.failed - self._finished_at_start
        rate = finished_now / elapsed_s
        remaining = total - done
        eta = remaining / rate if rate > 0 else None
        failed = ""
        if stats.failed:
            kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(stats.failures_by_kind.items()))
            failed = f" failed {stats.failed} ({kinds})"
        return (
            f"[{'#' * filled}{'.' * (_WIDTH - filled)}] {done}/{total} "
            f"ok {stats.succeeded}{failed} {rate:.1f}/s ETA {format_eta(eta)}"
        )

    def draw(self) -> None:
        self._stream.write(_CLEAR_LINE + self.render())
        self._stream.flush()
        self._visible = True

    def clear(self) -> None:
        if self._visible:
            self._stream.write(_CLEAR_LINE)
            self._stream.flush()
            self._visible = False

    async def run(self) -> None:
        """Redraw until cancelled, then leave the last state on its own line."""
        try:
            while True:
                self.draw()
                await asyncio.sleep(self.interval_s)
        finally:
            self.draw()
            self._stream.write("\n")
            self._stream.flush()
            self._visible = False
