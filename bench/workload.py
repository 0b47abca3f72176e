"""The benchmark's inputs: prompts files and the batcher job that sends them."""

from __future__ import annotations

import json
from pathlib import Path

MODEL = "gpt-3.5-turbo-1106"
MAX_TOKENS = 16
# Variable holding the benchmark's throwaway key, for batcher's job and the other peers.
KEY_ENV = "BENCH_KEY"


def write_prompts(path: Path, count: int) -> Path:
    """Write `count` prompts of about 40 characters as JSONL lines `{"id", "prompt"}`."""
    with path.open("w", encoding="utf-8") as lines:
        for index in range(count):
            prompt = f"Write a greeting for guest number {index}."
            lines.write(json.dumps({"id": f"p{index:07d}", "prompt": prompt}) + "\n")
    return path


def write_job(
    path: Path,
    *,
    base_url: str,
    prompts_file: Path,
    concurrency: int,
    requests_per_minute: int | None = None,
) -> Path:
    """Write a batcher job for the endpoint at `base_url`; the output folder is given per run."""
    limits: dict[str, object] = {"concurrency": concurrency, "max_attempts": 3}
    if requests_per_minute is not None:
        limits["requests_per_minute"] = requests_per_minute
    job = {
        "name": "bench",
        "endpoint": {"base_url": base_url, "api_key_env": KEY_ENV, "preflight": "models"},
        "model": MODEL,
        "params": {"max_tokens": MAX_TOKENS},
        "limits": limits,
        "prompts_file": str(prompts_file),
        "output_dir": str(path.parent / "out"),
    }
    # JSON is valid YAML, and it keeps this file free of a YAML writer.
    path.write_text(json.dumps(job, indent=2) + "\n", encoding="utf-8")
    return path
