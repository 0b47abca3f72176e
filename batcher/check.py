"""The `check` command: key checks and preflight, reported for a person or a health check."""

from __future__ import annotations

import asyncio
import sys

from batcher.batch import check_job
from batcher.errors import BatcherError
from batcher.job import Job
from batcher.logs import LogSinks


def run_check(job: Job, *, sinks: LogSinks) -> int:
    """Check the job's key and endpoint; print a short report and return the exit code."""
    print(f"job:       {job.name} ({job.path})")
    print(f"endpoint:  {'bundled local endpoint' if job.endpoint.local else job.endpoint.base_url}")
    print(f"model:     {job.model}")
    try:
        result = asyncio.run(check_job(job, sinks=sinks, show_headers=_print_headers))
    except BatcherError as exc:
        print(f"result:    FAILED (exit {int(exc.exit_code)})")
        print(f"batcher: {exc.message}", file=sys.stderr)
        return int(exc.exit_code)

    print(f"result:    OK ({'GET /models' if result.method == 'models' else 'one-token chat request'})")
    if result.models is not None:
        shown = ", ".join(sorted(result.models)[:20])
        more = f" and {len(result.models) - 20} more" if len(result.models) > 20 else ""
        print(f"models:    {shown}{more}")
    return 0


def _print_headers(headers: dict[str, str]) -> None:
    shown = ", ".join(f"{name}: {value}" for name, value in headers.items())
    print(f"headers:   {shown}", flush=True)
