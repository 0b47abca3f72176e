"""The event loop that `batcher run` uses: uvloop where installed, asyncio's own otherwise."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from batcher.cli import run_event_loop


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_runs_on_uvloop_when_installed() -> None:
    pytest.importorskip("uvloop")

    assert run_event_loop(loop_module()).startswith("uvloop")


def test_falls_back_to_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import uvloop` raise ImportError.
    monkeypatch.setitem(sys.modules, "uvloop", None)

    assert run_event_loop(loop_module()).startswith("asyncio")


def test_closed_stdin_uses_asyncio() -> None:
    """libuv aborts when it closes a socket on fd 0-2, so a cron-like closed stdin gets asyncio."""
    script = (
        "import asyncio\n"
        "from batcher.cli import run_event_loop\n"
        "async def loop_module():\n"
        "    return type(asyncio.get_running_loop()).__module__\n"
        "print(run_event_loop(loop_module()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.close(0),
        timeout=30,
        check=True,
    )

    assert result.stdout.strip().startswith("asyncio")
