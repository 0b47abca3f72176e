"""Helpers for end-to-end tests: the bundled endpoint in a thread, job files, CLI runs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from batcher.endpoint import EndpointConfig, LocalEndpoint

TEST_KEY = "sk-test-" + "0123456789abcdef" * 2 + "cdef"
KEY_ENV = "BATCHER_TEST_KEY"
# Upper bound on a single CLI run in a test; a hung run fails the test instead of the suite.
CLI_TIMEOUT_S = 60.0


class FakeClock:
    """A monotonic clock that moves only when a test advances it or a sleep on it ends.

    `sleep` yields to the event loop once and then moves the clock to the sleeper's wake-up
    time, so sleepers that wait for the same moment move it only once.
    """

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds

    async def sleep(self, seconds: float) -> None:
        wake_s = self.now_s + seconds
        await asyncio.sleep(0)
        self.now_s = max(self.now_s, wake_s)


class ThreadedEndpoint:
    """The bundled endpoint served on 127.0.0.1 from a background thread's event loop."""

    def __init__(self, endpoint: LocalEndpoint, loop: asyncio.AbstractEventLoop) -> None:
        self.endpoint = endpoint
        self._loop = loop

    @property
    def base_url(self) -> str:
        return self.endpoint.base_url

    @property
    def stats(self) -> Any:
        return self.endpoint.stats


@contextmanager
def serve(config: EndpointConfig | None = None, **options: Any) -> Iterator[ThreadedEndpoint]:
    """Serve the endpoint for the block; keyword options build an EndpointConfig with TEST_KEY."""
    config = config or EndpointConfig(key=TEST_KEY, **options)
    loop = asyncio.new_event_loop()
    endpoint = LocalEndpoint(config)
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(endpoint.start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(endpoint.close())
        loop.close()

    thread = threading.Thread(target=run, name="test-endpoint", daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the test endpoint did not start within 10 s")
    try:
        yield ThreadedEndpoint(endpoint, loop)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def write_job(
    directory: Path,
    *,
    base_url: str | None,
    prompts: list[dict[str, Any]] | None = None,
    count: int = 5,
    limits: Mapping[str, Any] | None = None,
    endpoint: Mapping[str, Any] | None = None,
    name: str = "e2e",
    **fields: Any,
) -> Path:
    """Write a job file into `directory`; results go to `directory/out`.

    The key comes from KEY_ENV unless `endpoint` sets `api_key_file`.
    """
    if prompts is None:
        prompts = [{"id": f"p{index}", "prompt": f"prompt number {index}"} for index in range(count)]
    endpoint = dict(endpoint or {})
    if "api_key_file" not in endpoint:
        endpoint = {"api_key_env": KEY_ENV, **endpoint}
    job: dict[str, Any] = {
        "name": name,
        "endpoint": "local" if base_url is None else {"base_url": base_url, **endpoint},
        "model": "gpt-3.5-turbo-1106",
        "params": {"max_tokens": 16},
        "limits": {"concurrency": 4, "max_attempts": 3, "backoff_base_s": 0.01, **(limits or {})},
        "prompts": prompts,
        "output_dir": str(directory / "out"),
        **fields,
    }
    if not job["prompts"]:
        del job["prompts"]
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def cli_env(key: str | None = TEST_KEY, **extra: str) -> dict[str, str]:
    """Return the environment for a CLI run, with the key in KEY_ENV (or unset for None)."""
    env = {name: value for name, value in os.environ.items() if name != KEY_ENV}
    if key is not None:
        env[KEY_ENV] = key
    env.update(extra)
    return env


def run_cli(*args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run `python -m batcher ARGS` to the end and return what it printed."""
    return subprocess.run(
        [sys.executable, "-m", "batcher", *args],
        env=dict(env if env is not None else cli_env()),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout_s,
    )


def read_results(output_dir: Path) -> list[dict[str, Any]]:
    path = output_dir / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def read_summary(output_dir: Path) -> dict[str, Any]:
    return json.loads((output_dir / "summary.json").read_text(encoding="utf-8"))


def read_log(output_dir: Path) -> list[dict[str, Any]]:
    """Return the events of the newest run's log."""
    logs = sorted((output_dir / "logs").glob("*.jsonl"))
    assert logs, f"no log in {output_dir / 'logs'}"
    return [json.loads(line) for line in logs[-1].read_text(encoding="utf-8").splitlines()]


def final_states(output_dir: Path) -> dict[str, dict[str, Any]]:
    """Return each id's last results line."""
    states: dict[str, dict[str, Any]] = {}
    for record in read_results(output_dir):
        states[record["id"]] = record
    return states
