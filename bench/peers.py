"""The three peers, each run as a child process: batcher's CLI, the openai SDK and bare aiohttp."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import Measurement, run_measured
from bench.workload import MAX_TOKENS, MODEL

BATCHER = "batcher"
SDK = "openai SDK"
BARE = "bare aiohttp"
PEERS = (BATCHER, SDK, BARE)

_HERE = Path(__file__).resolve().parent
_SCRIPTS = {SDK: _HERE / "peer_sdk.py", BARE: _HERE / "peer_bare.py"}


class PeerFailed(RuntimeError):
    """A peer exited with an error or did not send every prompt; the benchmark is void."""


@dataclass(frozen=True)
class PeerRun:
    """One peer's run: its measurement, what it completed, and its own timing."""

    peer: str
    measurement: Measurement
    succeeded: int
    failed: int
    # Seconds from the first request to the last response, as the peer itself timed them.
    send_s: float
    # batcher's summary.json; None for the other peers.
    summary: dict[str, Any] | None = None


@dataclass(frozen=True)
class Workload:
    """The endpoint, prompts, job file, pool size and environment (with the key) of one benchmark."""

    base_url: str
    prompts_file: Path
    job_file: Path
    prompt_count: int
    concurrency: int
    env: dict[str, str]
    work_dir: Path


def run_peer(peer: str, workload: Workload, *, timeout_s: float, expect_all: bool = True) -> PeerRun:
    """Run one peer over the workload; raise PeerFailed if it failed or lost prompts."""
    if peer == BATCHER:
        run = _run_batcher(workload, timeout_s=timeout_s)
    else:
        run = _run_script(peer, workload, timeout_s=timeout_s)
    if expect_all and run.succeeded != workload.prompt_count:
        raise PeerFailed(
            f"{peer} succeeded on {run.succeeded} of {workload.prompt_count} prompts "
            f"({run.failed} failed, exit code {run.measurement.exit_code}); "
            f"stderr ends with: {run.measurement.stderr[-500:]!r}"
        )
    return run


def batcher_command() -> list[str]:
    """Return the `batcher` console script of this virtual environment, as a user runs it."""
    return [str(Path(sys.executable).parent / "batcher")]


def run_batcher_cli(
    workload: Workload,
    *,
    timeout_s: float,
    extra_args: tuple[str, ...] = (),
    terminate_after_s: float | None = None,
    cpu_marks_at_s: tuple[float, ...] = (),
) -> tuple[Measurement, dict[str, Any] | None]:
    """Run `batcher run JOB --quiet` into a fresh output folder; return its measurement and summary."""
    output_dir = Path(tempfile.mkdtemp(prefix="out-", dir=workload.work_dir))
    try:
        measurement = run_measured(
            [*batcher_command(), "run", str(workload.job_file), "--quiet", "--output-dir", str(output_dir), *extra_args],
            env=workload.env,
            cwd=workload.work_dir,
            timeout_s=timeout_s,
            terminate_after_s=terminate_after_s,
            cpu_marks_at_s=cpu_marks_at_s,
        )
        summary_path = output_dir / "summary.json"
        summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else None
        if summary is not None:
            _check_outputs(output_dir, summary)
        return measurement, summary
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)


def _check_outputs(output_dir: Path, summary: dict[str, Any]) -> None:
    """Check that the run wrote what a user relies on: a results line per finished prompt, and a log."""
    with (output_dir / "results.jsonl").open("rb") as results:
        lines = sum(1 for _ in results)
    finished = summary["succeeded"] + summary["failed"]
    if lines != finished:
        raise PeerFailed(f"batcher wrote {lines} results lines for {finished} finished prompts")
    if not any((output_dir / "logs").glob("*.jsonl")):
        raise PeerFailed("batcher wrote no log file")


def _run_batcher(workload: Workload, *, timeout_s: float) -> PeerRun:
    measurement, summary = run_batcher_cli(workload, timeout_s=timeout_s)
    if summary is None:
        raise PeerFailed(
            f"batcher wrote no summary (exit code {measurement.exit_code}); "
            f"stderr ends with: {measurement.stderr[-500:]!r}"
        )
    return PeerRun(
        peer=BATCHER,
        measurement=measurement,
        succeeded=summary["succeeded"],
        failed=summary["failed"],
        send_s=summary["duration_s"],
        summary=summary,
    )


def _run_script(peer: str, workload: Workload, *, timeout_s: float) -> PeerRun:
    argv = [
        sys.executable, str(_SCRIPTS[peer]),
        "--base-url", workload.base_url,
        "--prompts", str(workload.prompts_file),
        "--concurrency", str(workload.concurrency),
        "--model", MODEL,
        "--max-tokens", str(MAX_TOKENS),
    ]
    measurement = run_measured(argv, env=workload.env, cwd=workload.work_dir, timeout_s=timeout_s)
    try:
        reported = json.loads(measurement.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise PeerFailed(
            f"{peer} printed no result (exit code {measurement.exit_code}); "
            f"stderr ends with: {measurement.stderr[-500:]!r}"
        ) from None
    return PeerRun(
        peer=peer,
        measurement=measurement,
        succeeded=reported["succeeded"],
        failed=reported["failed"],
        send_s=reported["send_s"],
    )
