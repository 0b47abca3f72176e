"""The bundled endpoint in its own process, so its CPU is not counted as the client's."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.procs import ENDPOINT_CPU, pin

_BANNER_PREFIX = "Local OpenAI-compatible endpoint at "
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0


class EndpointProcess:
    """`python -m batcher serve` on a free 127.0.0.1 port, stopped (or killed) on exit.

    The key goes to the server through the environment, so it appears on no command line.
    """

    def __init__(self, *, key: str, latency_ms: float = 0.0, extra_args: Sequence[str] = (), cwd: Path) -> None:
        self._key = key
        self._argv = [
            sys.executable, "-m", "batcher", "serve",
            "--port", "0",
            "--latency-ms", str(latency_ms),
            *extra_args,
        ]
        self._cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    def __enter__(self) -> EndpointProcess:
        env = {**os.environ, "BATCHER_LOCAL_KEY": self._key}
        self._process = subprocess.Popen(
            self._argv, env=env, cwd=self._cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        try:
            pin(self._process.pid, ENDPOINT_CPU)
            self.base_url = self._read_base_url()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop()

    def _read_base_url(self) -> str:
        assert self._process is not None and self._process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        buffered = b""
        while b"\n" not in buffered:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise RuntimeError(f"the endpoint printed no base URL within {START_TIMEOUT_S} s")
            ready, _, _ = select.select([self._process.stdout], [], [], remaining_s)
            if not ready:
                continue
            chunk = os.read(self._process.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"the endpoint exited with code {self._process.wait()} before it started")
            buffered += chunk
        line = buffered.split(b"\n", 1)[0].decode("utf-8")
        if not line.startswith(_BANNER_PREFIX):
            raise RuntimeError(f"unexpected first line from the endpoint: {line!r}")
        return line[len(_BANNER_PREFIX):].strip()

    def _stop(self) -> None:
        process = self._process
        if process is None:
            return
        self._process = None
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def stats(self) -> dict[str, Any]:
        """Return the endpoint's counters since the last reset."""
        return self._call("GET", "/_batcher/stats")

    def reset_stats(self) -> None:
        self._call("POST", "/_batcher/stats/reset")

    def _call(self, method: str, path: str) -> dict[str, Any]:
        root = self.base_url.removesuffix("/v1")
        request = urllib.request.Request(root + path, method=method, data=b"" if method == "POST" else None)
        # The stats routes need no key; proxies are bypassed because the host is loopback.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            return json.loads(response.read())
