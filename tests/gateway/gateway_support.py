"""Helpers for the tests against LiteLLM's proxy: keys, the proxy's request log, jobs."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASE_URL_ENV = "GATEWAY_BASE_URL"
REQUEST_LOG_ENV = "GATEWAY_REQUEST_LOG"
KEY_ENV = "GW_KEY"

# Longer than any wait a test provokes (one 60 s rate-limit window), so a hung
# CLI fails its test instead of the whole run.
CLI_TIMEOUT_S = 150


def fingerprint_key(api_key: str) -> str:
    """Return the digest that gateway/auth_hook.py writes in place of a key."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:12]


def new_key(prefix: str) -> str:
    """Return a fresh test key of one class, with its own rate-limit window."""
    return f"{prefix}-{secrets.token_hex(6)}"


@dataclass(frozen=True)
class ProxyRequest:
    """One request as the proxy's auth hook saw it."""

    time_s: float
    method: str
    route: str
    key_fingerprint: str | None
    outcome: str


def read_proxy_requests(api_key: str) -> list[ProxyRequest]:
    """Return every request that reached the proxy's auth hook with this key."""
    fingerprint = fingerprint_key(api_key)
    log_path = Path(os.environ[REQUEST_LOG_ENV])
    requests = []
    for line in log_path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry["key_fingerprint"] == fingerprint:
            requests.append(ProxyRequest(**entry))
    return requests


def count_proxy_requests() -> int:
    """Return how many requests, with any key or none, reached the proxy's auth hook."""
    log_path = Path(os.environ[REQUEST_LOG_ENV])
    return len(log_path.read_text(encoding="utf-8").splitlines())


@dataclass(frozen=True)
class BatcherRun:
    """A finished `batcher run` subprocess and the folder it wrote."""

    exit_code: int
    stdout: str
    stderr: str
    output_dir: Path

    def results(self) -> list[dict[str, Any]]:
        """Return the lines of results.jsonl, in the order they were written."""
        path = self.output_dir / "results.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    def summary(self) -> dict[str, Any]:
        """Return summary.json."""
        return json.loads((self.output_dir / "summary.json").read_text(encoding="utf-8"))

    def log_events(self) -> list[dict[str, Any]]:
        """Return the structured log lines of every run in this folder."""
        events = []
        for log_path in sorted((self.output_dir / "logs").glob("*.jsonl")):
            for line in log_path.read_text(encoding="utf-8").splitlines():
                events.append(json.loads(line))
        return events

    def describe(self) -> str:
        """Return the exit code and output, for assertion messages."""
        return f"exit {self.exit_code}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def build_job(
    base_url: str,
    output_dir: Path,
    *,
    prompt_count: int,
    model: str = "mock-gpt",
    limits: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Return a job that reads its key from GW_KEY and sends prompt_count prompts."""
    return {
        "name": "gw",
        "endpoint": {"base_url": base_url, "api_key_env": KEY_ENV, "preflight": "models"},
        "model": model,
        "params": {"max_tokens": 20},
        "limits": limits or {"concurrency": 4, "max_attempts": 1},
        "prompts": [{"id": f"p{index}", "prompt": f"hello {index}"} for index in range(prompt_count)],
        "output_dir": str(output_dir),
    }


# run_batcher(job, api_key): runs `batcher run` with the key in GW_KEY, or with
# GW_KEY unset when api_key is None.
RunBatcher = Callable[[dict[str, Any], "str | None"], BatcherRun]
