"""The `batcher` command: argument parsing, logging set-up, and exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import structlog

from batcher import __version__
from batcher.errors import BatcherError, ExitCode
from batcher.logs import LogSinks, configure_logging

log = structlog.get_logger("batcher.cli")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors exit with the documented code 2 and no traceback."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(ExitCode.INVALID_INPUT, f"batcher: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def _concurrency(text: str) -> int:
    from batcher.job import MAX_CONCURRENCY

    value = _positive_int(text)
    if value > MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_CONCURRENCY}, got {value}")
    return value


def _folder(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder path, got an empty string")
    return Path(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="batcher",
        description="Run batches of chat-completion prompts against OpenAI-compatible APIs.",
    )
    parser.add_argument("--version", action="version", version=f"batcher {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run a job file", description="Run a job: check the key, then send every prompt not done yet.")
    run.add_argument("job", type=Path, help="the job file (YAML)")
    run.add_argument("--output-dir", type=_folder, help="folder for results, logs and summary (default: the job's output_dir)")
    run.add_argument("--limit", type=_positive_int, metavar="N", help="send only the first N prompts that are not done yet")
    run.add_argument("--concurrency", type=_concurrency, metavar="N", help="requests in flight at once (overrides limits.concurrency)")
    run.add_argument("--rpm", type=_positive_float, metavar="N", help="requests per minute (overrides limits.requests_per_minute)")
    run.add_argument("--dry-run", action="store_true", help="validate and show what would be sent; send nothing")
    run.add_argument("--quiet", action="store_true", help="print only warnings and errors on stderr")

    check = commands.add_parser("check", help="check the key and the endpoint, send no batch", description="Run the key checks and the preflight only; exit codes as for `run`.")
    check.add_argument("job", type=Path, help="the job file (YAML)")

    serve = commands.add_parser("serve", help="serve the bundled OpenAI-compatible endpoint on 127.0.0.1", description="Serve the bundled OpenAI-compatible endpoint on 127.0.0.1, with flags that rehearse limits and failures.")
    from batcher.endpoint import command as serve_command

    serve_command.add_arguments(serve)

    report = commands.add_parser("report", help="summarise the last run in an output folder", description="Show counts by status and failure kind, retries, 429s, tokens, time and rate of the last run.")
    report.add_argument("run_dir", type=Path, help="the run's output folder")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except BatcherError as exc:
        print(f"batcher: {exc.message}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("batcher: interrupted", file=sys.stderr)
        return int(ExitCode.SIGINT)
    except Exception as exc:
        # A bug, not bad input: show what failed in one line, and the traceback only on request,
        # since cron mails whatever is printed.
        if os.environ.get("BATCHER_DEBUG"):
            raise
        print(
            f"batcher: internal error: {type(exc).__name__}: {exc}. "
            f"Run again with BATCHER_DEBUG=1 to see the traceback, and report it.",
            file=sys.stderr,
        )
        return int(ExitCode.INTERNAL_ERROR)


def _raise_open_file_limit() -> None:
    """Raise the soft limit on open files to the hard limit; each request in flight needs one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        from batcher.endpoint import command as serve_command

        configure_logging(LogSinks(stderr=sys.stderr, show_progress=False))
        return serve_command.run(args)
    if args.command == "report":
        from batcher.report import show_report

        return show_report(args.run_dir, as_json=args.json)

    from batcher.job import load_job

    quiet = getattr(args, "quiet", False)
    sinks = LogSinks(stderr=sys.stderr, stderr_level="warning" if quiet else "info", show_progress=not quiet)
    configure_logging(sinks)
    job = load_job(args.job)

    if args.command == "check":
        from batcher.check import run_check

        return run_check(job, sinks=sinks)

    if args.dry_run:
        from batcher.dry_run import show_dry_run

        return show_dry_run(job, output_dir=args.output_dir, limit=args.limit)

    from batcher.batch import RunOptions, run_job

    _raise_open_file_limit()

    options = RunOptions(
        output_dir=args.output_dir,
        limit=args.limit,
        concurrency=args.concurrency,
        requests_per_minute=args.rpm,
    )
    return run_event_loop(run_job(job, options, sinks=sinks))


def run_event_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run `main` on uvloop where it is installed, else on asyncio's own event loop.

    uvloop cut batcher's CPU per request by about 11% in the zero-latency benchmark of
    `make bench` (median of two sets of 11 interleaved rounds of 3,000 prompts).
    """
    if not _standard_streams_open():
        # With stdin, stdout or stderr closed (cron can do that), a socket may get fd 0, 1 or 2,
        # and libuv aborts the process when it closes such a socket (uvloop 0.23).
        return asyncio.run(main)
    try:
        import uvloop
    except ImportError:  # not installed, or no wheel for this platform (Windows)
        return asyncio.run(main)
    return uvloop.run(main)


def _standard_streams_open() -> bool:
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
