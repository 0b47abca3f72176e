"""Fixtures for the tests against LiteLLM's proxy that `make test-gateway` starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway_support import BASE_URL_ENV, CLI_TIMEOUT_S, KEY_ENV, BatcherRun, RunBatcher


@pytest.fixture(autouse=True)
def _require_gateway() -> None:
    if not os.environ.get(BASE_URL_ENV):
        pytest.skip(f"{BASE_URL_ENV} is not set; `make test-gateway` starts the proxy and sets it")


@pytest.fixture
def base_url() -> str:
    """Return the proxy's OpenAI-compatible base URL, ending in /v1."""
    return os.environ[BASE_URL_ENV]


@pytest.fixture
def run_batcher(tmp_path: Path) -> RunBatcher:
    """Return a function that runs `batcher run` on a job with a key in GW_KEY."""

    def run(job: dict[str, Any], api_key: str | None) -> BatcherRun:
        job_path = tmp_path / "job.yaml"
        job_path.write_text(yaml.safe_dump(job), encoding="utf-8")

        env = {name: value for name, value in os.environ.items() if not name.startswith("OPENAI_")}
        env.pop(KEY_ENV, None)
        if api_key is not None:
            env[KEY_ENV] = api_key

        completed = subprocess.run(
            [sys.executable, "-m", "batcher", "run", str(job_path), "--quiet"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )
        return BatcherRun(
            exit_code=completed.returncode,
            stdout=completed.stdout,
            stderr=completed.stderr,
            output_dir=Path(job["output_dir"]),
        )

    return run
