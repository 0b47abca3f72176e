"""One batch end to end: key, lock, resume, preflight, workers, summary and exit code."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from batcher.auth import ApiKey, build_headers, describe_headers, read_key
from batcher.client import ApiClient
from batcher.errors import BatcherError, ExitCode
from batcher.job import Job
from batcher.logs import LogSinks
from batcher.progress import ProgressBar
from batcher.preflight import PreflightResult, SentCredentials, run_preflight
from batcher.prompts import PromptCheck, check_prompts, iter_prompts
from batcher.runner import Runner, RunSettings
from batcher.store import SUMMARY_NAME, FILE_MODE, ResultsStore, RunLock, make_private_dir, write_json_atomically
from batcher.summary import RunStats, build_summary, utc_now_iso

log = structlog.get_logger("batcher.batch")

# Seconds that requests in flight get to finish after SIGINT or SIGTERM before they are cancelled.
GRACE_S = 10.0

_STOP_EXIT_CODES = {
    "auth": ExitCode.AUTH,
    "permission": ExitCode.AUTH,
    "quota": ExitCode.QUOTA,
}


@dataclass(frozen=True)
class RunOptions:
    """Command-line choices that override or extend the job file."""

    output_dir: Path | None = None
    limit: int | None = None
    concurrency: int | None = None
    requests_per_minute: float | None = None


def new_run_id() -> str:
    """Return a run id that sorts by start time: `20261204T190000Z-1a2b3c`."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


@contextlib.asynccontextmanager
async def endpoint_for(job: Job) -> AsyncIterator[tuple[str, ApiKey | None]]:
    """Yield the base URL and key to use: the job's, or the bundled endpoint started in-process."""
    if not job.endpoint.local:
        key = read_key(api_key_env=job.endpoint.api_key_env, api_key_file=job.endpoint.api_key_file)
        yield job.endpoint.base_url, key
        return

    from batcher.endpoint import EndpointConfig, LocalEndpoint

    generated = "sk-local-" + secrets.token_hex(16)
    async with LocalEndpoint(EndpointConfig(key=generated)) as local:
        yield local.base_url, ApiKey(value=generated, source="the bundled local endpoint")


def _credentials(job: Job, key: ApiKey | None, headers: dict[str, str]) -> SentCredentials:
    return SentCredentials(
        key=key,
        organization=job.endpoint.organization,
        project=job.endpoint.project,
        header_names=tuple(name for name in headers if name.lower() not in ("content-type", "accept")),
    )


def _warn_key(key: ApiKey | None) -> None:
    if key is None:
        return
    for warning in key.warnings:
        log.warning("key.trimmed", message=warning, key=key.fingerprint)


async def check_job(job: Job, *, sinks: LogSinks) -> PreflightResult:
    """Run the key checks and the preflight only; raise the error that ends the check."""
    counts = check_prompts(job)
    async with endpoint_for(job) as (base_url, key):
        if key is not None:
            sinks.add_secrets([key.value])
        _warn_key(key)
        headers = build_headers(key, organization=job.endpoint.organization, project=job.endpoint.project)
        async with ApiClient(base_url, headers=headers, timeout_s=job.endpoint.timeout_s, max_connections=2) as client:
            return await run_preflight(
                client,
                mode=job.endpoint.preflight if job.endpoint.preflight != "off" else "models",
                model=job.model,
                models_used=counts.models or frozenset({job.model}),
                credentials=_credentials(job, key, headers),
                headers=headers,
            )


class _SignalStop:
    """Turns SIGINT and SIGTERM into a graceful stop, and a second SIGINT into an immediate one."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self.signal_number: int | None = None
        self._grace: asyncio.TimerHandle | None = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, self._on_signal, number)

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(number)
        if self._grace is not None:
            self._grace.cancel()

    def _on_signal(self, number: int) -> None:
        name = signal.Signals(number).name
        if self.signal_number is not None:
            log.warning("run.stop_now", signal=name, failure_kind=None, in_flight=self._runner.in_flight)
            self._runner.cancel_in_flight()
            return
        self.signal_number = number
        log.warning(
            "run.stopping",
            signal=name,
            stopped_reason="interrupted",
            in_flight=self._runner.in_flight,
            grace_s=GRACE_S,
        )
        self._runner.stop("interrupted")
        self._grace = asyncio.get_running_loop().call_later(GRACE_S, self._runner.cancel_in_flight)


async def run_job(job: Job, options: RunOptions, *, sinks: LogSinks) -> int:
    """Run a job and return the exit code; errors before the first request are raised."""
    run_id = new_run_id()
    output_dir = options.output_dir or job.output_dir
    structlog.contextvars.bind_contextvars(run_id=run_id)

    counts = check_prompts(job)
    make_private_dir(output_dir)
    make_private_dir(output_dir / "logs")
    with RunLock(output_dir):
        log_path = output_dir / "logs" / f"{run_id}.jsonl"
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        sinks.open_file(open(fd, "w", encoding="utf-8", newline="\n"))
        try:
            return await _run_locked(job, options, run_id=run_id, output_dir=output_dir, sinks=sinks, counts=counts)
        finally:
            sinks.close_file()


async def _run_locked(
    job: Job, options: RunOptions, *, run_id: str, output_dir: Path, sinks: LogSinks, counts: PromptCheck
) -> int:
    prompt_count = counts.count
    started_at = utc_now_iso()
    started = time.monotonic()
    stats = RunStats()
    store = ResultsStore(output_dir)
    resume = store.open()
    log.info(
        "run.started",
        job=job.name,
        job_file=str(job.path),
        output_dir=str(output_dir),
        prompts=prompt_count,
        already_succeeded=resume.succeeded,
    )
    if resume.repaired_bytes or resume.unparsable_lines:
        log.warning(
            "results.repaired",
            torn_bytes_removed=resume.repaired_bytes,
            unparsable_lines_ignored=resume.unparsable_lines,
        )

    stopped_reason: str | None = None
    exit_code: int = ExitCode.OK
    client: ApiClient | None = None
    try:
        async with endpoint_for(job) as (base_url, key):
            if key is not None:
                sinks.add_secrets([key.value])
            _warn_key(key)
            headers = build_headers(key, organization=job.endpoint.organization, project=job.endpoint.project)
            log.info("run.headers", base_url=base_url, headers=describe_headers(headers))
            settings = RunSettings(
                concurrency=options.concurrency or job.limits.concurrency,
                max_attempts=job.limits.max_attempts,
                requests_per_minute=options.requests_per_minute or job.limits.requests_per_minute,
                tokens_per_minute=job.limits.tokens_per_minute,
                backoff_base_s=job.limits.backoff_base_s,
                backoff_max_s=job.limits.backoff_max_s,
                max_wait_s=job.limits.max_wait_s,
                limit=options.limit,
            )
            async with ApiClient(
                base_url,
                headers=headers,
                timeout_s=job.endpoint.timeout_s,
                max_connections=settings.concurrency + 2,
            ) as client:
                await run_preflight(
                    client,
                    mode=job.endpoint.preflight,
                    model=job.model,
                    models_used=counts.models or frozenset({job.model}),
                    credentials=_credentials(job, key, headers),
                    headers=headers,
                )
                runner = Runner(
                    client=client,
                    store=store,
                    prompts=iter_prompts(job),
                    settings=settings,
                    stats=stats,
                    run_id=run_id,
                )
                stopper = _SignalStop(runner)
                stopper.install()
                bar_task = _start_progress(sinks, stats, total=prompt_count)
                try:
                    stopped_reason = await runner.run()
                finally:
                    stopper.remove()
                    await _stop_progress(sinks, bar_task)
                exit_code = _exit_code(stats, stopped_reason, stopper.signal_number)
    except BatcherError as exc:
        stopped_reason = exc.failure_kind if exc.failure_kind in _STOP_EXIT_CODES else None
        exit_code = exc.exit_code
        log.error(
            "preflight.failed",
            failure_kind=exc.failure_kind or _kind_for_exit(exc.exit_code),
            exit_code=int(exc.exit_code),
            message=exc.message,
        )
        _finish(
            store, stats, run_id=run_id, job=job, output_dir=output_dir, started_at=started_at,
            started=started, requests_sent=client.requests_sent if client else 0,
            stopped_reason=stopped_reason, exit_code=exit_code, prompt_count=prompt_count,
        )
        raise
    _finish(
        store, stats, run_id=run_id, job=job, output_dir=output_dir, started_at=started_at,
        started=started, requests_sent=client.requests_sent if client else 0,
        stopped_reason=stopped_reason, exit_code=exit_code, prompt_count=prompt_count,
    )
    return exit_code


def _start_progress(sinks: LogSinks, stats: RunStats, *, total: int) -> asyncio.Task[None] | None:
    if not sinks.show_progress:
        return None
    sinks.progress = ProgressBar(sys.stderr, stats, total=total)
    return asyncio.create_task(sinks.progress.run(), name="batcher-progress")


async def _stop_progress(sinks: LogSinks, task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    sinks.progress = None


def _kind_for_exit(exit_code: int) -> str:
    return {ExitCode.UNREACHABLE: "network", ExitCode.INVALID_INPUT: "bad_request"}.get(exit_code, "auth")


def _exit_code(stats: RunStats, stopped_reason: str | None, signal_number: int | None) -> int:
    if stopped_reason in _STOP_EXIT_CODES:
        return _STOP_EXIT_CODES[stopped_reason]
    if signal_number is not None:
        return ExitCode.SIGTERM if signal_number == signal.SIGTERM else ExitCode.SIGINT
    if stats.failed:
        return ExitCode.SOME_FAILED
    return ExitCode.OK


def _finish(
    store: ResultsStore,
    stats: RunStats,
    *,
    run_id: str,
    job: Job,
    output_dir: Path,
    started_at: str,
    started: float,
    requests_sent: int,
    stopped_reason: str | None,
    exit_code: int,
    prompt_count: int,
) -> None:
    store.close()
    if stats.total < prompt_count:
        # The run ended before the producer read every prompt (a preflight failure).
        stats.total = prompt_count
    summary = build_summary(
        stats,
        run_id=run_id,
        job_name=job.name,
        job_path=str(job.path),
        started_at=started_at,
        finished_at=utc_now_iso(),
        duration_s=time.monotonic() - started,
        requests_sent=requests_sent,
        stopped_reason=stopped_reason,
        exit_code=int(exit_code),
    )
    write_json_atomically(output_dir / SUMMARY_NAME, summary)
    level = log.info if exit_code in (ExitCode.OK, ExitCode.SOME_FAILED) else log.warning
    level("run.finished", **summary)
