"""One batch end to end: key, lock, resume, preflight, workers, summary and exit code."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from batcher.auth import ApiKey, build_headers, describe_headers, read_key
from batcher.client import ApiClient
from batcher.errors import BatcherError, ExitCode, JobError, OutputError
from batcher.job import Job
from batcher.logs import LogSinks
from batcher.progress import ProgressBar
from batcher.preflight import PreflightResult, SentCredentials, run_preflight
from batcher.prompts import PromptCheck, check_prompts, iter_prompts
from batcher.runner import Runner, RunSettings, StopCause
from batcher.signals import Interrupted, SignalStop
from batcher.stops import explain_stop
from batcher.store import SUMMARY_NAME, FILE_MODE, ResultsStore, RunLock, make_private_dir, write_json_atomically
from batcher.summary import RunStats, build_summary, utc_now_iso

log = structlog.get_logger("batcher.batch")



# Failure kinds that mean the request never reached a working endpoint.
_UNREACHABLE_KINDS = frozenset({"network", "timeout"})

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
        log.warning("key.warning", message=warning, key=key.fingerprint, key_source=key.source)


async def check_job(
    job: Job, *, sinks: LogSinks, show_headers: Callable[[dict[str, str]], None] | None = None
) -> PreflightResult:
    """Run the key checks and the preflight only; raise the error that ends the check.

    `show_headers` receives the request headers, with the key as a fingerprint, before the
    preflight sends anything.
    """
    counts = check_prompts(job)
    async with endpoint_for(job) as (base_url, key):
        if key is not None:
            sinks.add_secrets([key.value])
        _warn_key(key)
        headers = build_headers(key, organization=job.endpoint.organization, project=job.endpoint.project)
        if show_headers is not None:
            show_headers(describe_headers(headers))
        async with ApiClient(base_url, headers=headers, timeout_s=job.endpoint.timeout_s, max_connections=2) as client:
            return await run_preflight(
                client,
                mode=job.endpoint.preflight if job.endpoint.preflight != "off" else "models",
                model=job.model,
                models_used=counts.models or frozenset({job.model}),
                credentials=_credentials(job, key, headers),
                headers=headers,
            )


async def run_job(job: Job, options: RunOptions, *, sinks: LogSinks) -> int:
    """Run a job and return the exit code; errors before the first request are raised."""
    run_id = new_run_id()
    output_dir = options.output_dir or job.output_dir
    structlog.contextvars.bind_contextvars(run_id=run_id)

    counts = check_prompts(job)
    # asyncio.run turns a SIGINT during the synchronous check above into a cancellation of this
    # task. This await delivers it, so the command ends with exit 130 before creating any file.
    await asyncio.sleep(0)

    try:
        make_private_dir(output_dir)
        make_private_dir(output_dir / "logs")
    except OSError as exc:
        raise JobError(
            f"Cannot create the output folder {output_dir}: {exc.strerror}. "
            f"Choose a writable folder with --output-dir or `output_dir` in the job file."
        ) from None
    with RunLock(output_dir):
        log_path = output_dir / "logs" / f"{run_id}.jsonl"
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        sinks.open_file(open(fd, "w", encoding="utf-8", newline="\n"))
        stopper = SignalStop()
        stopper.install()
        try:
            return await _run_locked(
                job, options, run_id=run_id, output_dir=output_dir, sinks=sinks, counts=counts, stopper=stopper
            )
        finally:
            stopper.remove()
            sinks.close_file()


async def _run_locked(
    job: Job,
    options: RunOptions,
    *,
    run_id: str,
    output_dir: Path,
    sinks: LogSinks,
    counts: PromptCheck,
    stopper: SignalStop,
) -> int:
    prompt_count = counts.count
    started_at = utc_now_iso()
    started = time.monotonic()
    stats = RunStats()
    store = ResultsStore(output_dir)
    resume = store.open()
    tokens_per_minute = job.limits.tokens_per_minute
    if tokens_per_minute is not None and counts.max_estimated_tokens > tokens_per_minute:
        log.warning(
            "limits.request_over_budget",
            failure_kind=None,
            estimated_tokens=counts.max_estimated_tokens,
            tokens_per_minute=tokens_per_minute,
            prompt_source=counts.max_estimated_tokens_source,
            message="A request estimated above tokens_per_minute waits for an empty minute and then "
            "goes alone; raise tokens_per_minute or lower max_tokens.",
        )
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
    stop_message: str | None = None
    exit_code: int = ExitCode.OK
    client: ApiClient | None = None
    try:
        async with endpoint_for(job) as (base_url, key):
            if key is not None:
                sinks.add_secrets([key.value])
                store.redactor.add([key.value])
            _warn_key(key)
            headers = build_headers(key, organization=job.endpoint.organization, project=job.endpoint.project)
            log.info("run.headers", base_url=base_url, headers=describe_headers(headers))
            settings = RunSettings(
                # No more workers than prompts: a small job with a large pool would only idle.
                concurrency=min(options.concurrency or job.limits.concurrency, prompt_count),
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
                credentials = _credentials(job, key, headers)
                preflight = await stopper.guard(
                    run_preflight(
                        client,
                        mode=job.endpoint.preflight,
                        model=job.model,
                        models_used=counts.models or frozenset({job.model}),
                        credentials=credentials,
                        headers=headers,
                    )
                )
                runner = Runner(
                    client=client,
                    store=store,
                    prompts=iter_prompts(job),
                    settings=settings,
                    stats=stats,
                    run_id=run_id,
                )
                stopper.attach(runner)
                bar_task = _start_progress(sinks, stats, total=prompt_count)
                try:
                    stopped_reason = await runner.run()
                finally:
                    # A signal after the runner returned finds nothing left to stop.
                    signal_number = stopper.signal_number
                    await _stop_progress(sinks, bar_task)
                exit_code = _exit_code(stats, stopped_reason, signal_number)
                if runner.stop_cause is not None:
                    stop_message = explain_stop(
                        runner.stop_cause,
                        credentials=credentials,
                        stats=stats,
                        key_worked=preflight.method != "off" or stats.succeeded > 0,
                    )
                    _log_stop(runner.stop_cause, stop_message)
    except Interrupted:
        stopped_reason = "interrupted"
        exit_code = stopper.exit_code
    except OutputError as exc:
        stopped_reason = "output_error"
        exit_code = exc.exit_code
        _finish(
            store, stats, run_id=run_id, job=job, output_dir=output_dir, started_at=started_at,
            started=started, client=client,
            stopped_reason=stopped_reason, exit_code=exit_code, prompt_count=prompt_count,
        )
        raise
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
            started=started, client=client,
            stopped_reason=stopped_reason, exit_code=exit_code, prompt_count=prompt_count,
        )
        raise
    _finish(
        store, stats, run_id=run_id, job=job, output_dir=output_dir, started_at=started_at,
        started=started, client=client,
        stopped_reason=stopped_reason, exit_code=exit_code, prompt_count=prompt_count,
    )
    if stop_message is not None:
        # Printed last, like the message of an error that ends the command.
        print(f"batcher: {stop_message}", file=sys.stderr)
    elif sinks.is_tty and (exit_code != ExitCode.OK or not sinks.quiet):
        # Without a terminal, stderr carries JSON lines only, and run.finished has the same counts.
        print(f"batcher: {_outcome_line(stats, exit_code, output_dir)}", file=sys.stderr)
    return exit_code


def _log_stop(cause: StopCause, message: str) -> None:
    failure = cause.failure
    log.error(
        "run.stopped",
        stopped_reason=failure.kind.value,
        failure_kind=failure.kind.value,
        prompt_id=cause.prompt_id,
        status=failure.status,
        code=failure.code,
        request_id=failure.request_id,
        message=message,
    )


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
    if stats.failed and not stats.succeeded and set(stats.failures_by_kind) <= _UNREACHABLE_KINDS:
        # Nothing got through at all, so the endpoint is down or the address is wrong. Only
        # happens with `preflight: off`, since the preflight catches it otherwise.
        return ExitCode.UNREACHABLE
    if stats.failed:
        return ExitCode.SOME_FAILED
    return ExitCode.OK


def _outcome_line(stats: RunStats, exit_code: int, output_dir: Path) -> str:
    """Return the run's last line for a person: counts, and what a rerun will do."""
    counts = f"{stats.succeeded} succeeded, {stats.failed} failed"
    if stats.failed:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(stats.failures_by_kind.items()))
        counts += f" ({kinds})"
    if stats.skipped:
        counts += f", {stats.skipped} skipped (done earlier)"
    if stats.not_attempted:
        counts += f", {stats.not_attempted} not attempted"
    if exit_code == ExitCode.UNREACHABLE:
        advice = "No request got through: check that the endpoint is up and that base_url is right."
    elif stats.failed or stats.not_attempted:
        advice = f"A rerun sends the prompts that did not succeed; `batcher report {output_dir}` shows the details."
    else:
        advice = f"Results are in {output_dir / 'results.jsonl'}."
    return f"{counts}. {advice}"


def _finish(
    store: ResultsStore,
    stats: RunStats,
    *,
    run_id: str,
    job: Job,
    output_dir: Path,
    started_at: str,
    started: float,
    client: ApiClient | None,
    stopped_reason: str | None,
    exit_code: int,
    prompt_count: int,
) -> None:
    try:
        store.close()
    except OSError as exc:
        log.error("results.close_failed", failure_kind=None, path=str(store.path), error=exc.strerror)
    if stats.total == 0 and prompt_count:
        # The run ended before the workers started (a key or preflight failure). Prompts done in
        # earlier runs still count as skipped, so that the summary does not report them as left.
        stats.total = prompt_count
        if store.succeeded_count:
            stats.skipped = sum(1 for prompt in iter_prompts(job) if store.has_succeeded(prompt.id))
    if client is not None:
        # The client also counts the preflight's 429s, which never reach the runner.
        stats.rate_limited_responses = client.rate_limited_responses
    summary = build_summary(
        stats,
        run_id=run_id,
        job_name=job.name,
        job_path=str(job.path),
        started_at=started_at,
        finished_at=utc_now_iso(),
        duration_s=time.monotonic() - started,
        requests_sent=client.requests_sent if client is not None else 0,
        stopped_reason=stopped_reason,
        exit_code=int(exit_code),
    )
    try:
        write_json_atomically(output_dir / SUMMARY_NAME, summary)
    except OSError as exc:
        # The log line below still carries the whole summary.
        log.error("summary.write_failed", failure_kind=None, path=str(output_dir / SUMMARY_NAME), error=exc.strerror)
    level = log.info if exit_code == ExitCode.OK else log.warning
    level("run.finished", **summary)
