"""Run every benchmark and write docs/benchmarks.md."""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from bench.peers import PeerFailed
from bench.procs import can_pin
from bench.report import Section, TargetCheck, load_average, render_page
from bench.suites import (
    Context,
    Settings,
    check_batcher_loads_jobs,
    measure_idle,
    measure_latency_bound,
    measure_limit_adherence,
    measure_memory,
    measure_startup,
    measure_throughput,
)

REPO_DIR = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_DIR / "docs" / "benchmarks.md"
SUITES = ("throughput", "latency", "memory", "idle", "limits")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Benchmark batcher against the openai SDK and a bare aiohttp loop.")
    parser.add_argument("--quick", action="store_true", help="small sizes and one run each, to check the harness; prints the page instead of writing it")
    parser.add_argument("--runs", type=int, help="repetitions of each short benchmark (default: 5)")
    parser.add_argument("--only", action="append", choices=SUITES, help="run only this benchmark (repeatable); prints the page instead of writing it")
    parser.add_argument("--output", type=Path, help=f"where to write the page (default: {DEFAULT_OUTPUT.relative_to(REPO_DIR)} for a full run)")
    return parser.parse_args()


def main() -> int:
    args = _parse_args()
    settings = Settings()
    if args.quick:
        settings = settings.quick()
    if args.runs is not None:
        settings = replace(settings, runs=args.runs)
    chosen = tuple(args.only or SUITES)
    output = args.output
    if output is None and not args.quick and chosen == SUITES:
        output = DEFAULT_OUTPUT

    started = time.monotonic()
    started_at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = load_average()
    work_dir = Path(tempfile.mkdtemp(prefix="batcher-bench-"))
    # A throwaway key that only the benchmark's own endpoint accepts.
    ctx = Context(key="sk-bench-" + secrets.token_hex(16), work_dir=work_dir, repo_dir=REPO_DIR, settings=settings)
    try:
        sections, targets = _run_suites(ctx, chosen)
    except PeerFailed as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    command = "make bench" if output == DEFAULT_OUTPUT else "python -m bench " + " ".join(sys.argv[1:])
    page = render_page(
        command=command,
        started_at=started_at,
        duration_s=time.monotonic() - started,
        load_before=load_before,
        load_after=load_average(),
        repo_dir=REPO_DIR,
        method=_method_notes(settings),
        sections=sections,
        targets=targets,
    )
    if output is None:
        print(page)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(page, encoding="utf-8")
        print(f"bench: wrote {output}", file=sys.stderr)
    return 0


def _run_suites(ctx: Context, chosen: tuple[str, ...]) -> tuple[list[Section], list[TargetCheck]]:
    sections: list[Section] = []
    targets: list[TargetCheck] = []

    def record(result: tuple[Section, list[TargetCheck]]) -> None:
        sections.append(result[0])
        targets.extend(result[1])

    check_batcher_loads_jobs(ctx)
    _progress("start-up")
    with ctx.endpoint() as endpoint:
        startup_section, startup = measure_startup(ctx, endpoint)
        sections.append(startup_section)
        if "throughput" in chosen:
            _progress("throughput")
            record(measure_throughput(ctx, endpoint, startup))
    if "latency" in chosen:
        _progress("latency-bound")
        record(measure_latency_bound(ctx, startup))
    if "memory" in chosen:
        _progress("memory")
        record(measure_memory(ctx))
    if "idle" in chosen:
        _progress("idle cost")
        record(measure_idle(ctx))
    if "limits" in chosen:
        _progress("limit adherence")
        record(measure_limit_adherence(ctx))
    return sections, targets


def _progress(name: str) -> None:
    print(f"bench: {name} ...", file=sys.stderr, flush=True)


def _method_notes(settings: Settings) -> list[str]:
    pinning = (
        "The endpoint process is pinned to one CPU and the client to the other, so neither's CPU time counts as the other's."
        if can_pin()
        else "This machine has one CPU, so endpoint and client share it; wall times suffer."
    )
    return [
        "The endpoint is the bundled one, `python -m batcher serve`, in its own process on 127.0.0.1.",
        pinning,
        "Peer 1 is batcher as a user runs it, `batcher run JOB --quiet`, with its log and results files.",
        "Peer 2 is the official `openai` SDK: `AsyncOpenAI` with an `asyncio.Semaphore` and its default retries.",
        "Peer 3 is a bare aiohttp loop with the same concurrency and no logging, results or limits. "
        "It reads each body without parsing it.",
        f"Short benchmarks run {settings.runs} times and those of 30 s or more {settings.long_runs} times; "
        "the peers take turns within each round, and the round's first peer rotates.",
        "Every run is checked: each peer must complete every prompt, counted by the endpoint, and batcher must "
        "write a results line per prompt and a log file.",
        "To see where batcher's time goes, install py-spy into `.venv` and run "
        "`.venv/bin/py-spy record -o profile.svg -- .venv/bin/batcher run JOB --quiet` against `batcher serve`.",
    ]
