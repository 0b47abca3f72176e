"""Counters of one run, and the summary built from them."""

from __future__ import annotations

import functools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from batcher.failures import Failure, FailureKind


def utc_now_iso() -> str:
    """Return the current UTC time as ISO 8601 with a `Z`, to the second."""
    return _format_utc_second(int(time.time()))


# Every results line carries this time. Formatting it once a second instead of once a line
# takes 0.15 instead of 2.6 microseconds a call (timeit), about 1% of a request's CPU.
@functools.lru_cache(maxsize=1)
def _format_utc_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


@dataclass
class RunStats:
    """Counters of this run, updated as it goes."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    failures_by_kind: Counter[str] = field(default_factory=Counter)
    retries_by_kind: Counter[str] = field(default_factory=Counter)
    rate_limited_responses: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def add_usage(self, usage: Any) -> int | None:
        """Add a response's `usage` to the totals; return its total tokens, if it had them."""
        if not isinstance(usage, dict):
            return None
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        total = usage.get("total_tokens")
        if isinstance(prompt, int):
            self.prompt_tokens += prompt
        if isinstance(completion, int):
            self.completion_tokens += completion
        if not isinstance(total, int):
            total = (prompt if isinstance(prompt, int) else 0) + (
                completion if isinstance(completion, int) else 0
            )
        self.total_tokens += total
        return total

    def note_response_failure(self, failure: Failure) -> None:
        """Count a failed response; every 429 counts, quota ones included."""
        if failure.status == 429:
            self.rate_limited_responses += 1

    def note_retry(self, kind: FailureKind) -> None:
        self.retries_by_kind[kind.value] += 1

    def note_final_failure(self, kind: FailureKind) -> None:
        self.failed += 1
        self.failures_by_kind[kind.value] += 1

    @property
    def not_attempted(self) -> int:
        return max(self.total - self.succeeded - self.failed - self.skipped, 0)


def build_summary(
    stats: RunStats,
    *,
    run_id: str,
    job_name: str,
    job_path: str,
    started_at: str,
    finished_at: str,
    duration_s: float,
    requests_sent: int,
    stopped_reason: str | None,
    exit_code: int,
) -> dict[str, Any]:
    """Return the `summary.json` object of a run."""
    return {
        "run_id": run_id,
        "job": job_name,
        "job_file": job_path,
        "started_at": started_at,
        "finished_at": finished_at,
        "duration_s": round(duration_s, 3),
        "total": stats.total,
        "succeeded": stats.succeeded,
        "failed": stats.failed,
        "skipped": stats.skipped,
        "not_attempted": stats.not_attempted,
        "requests_sent": requests_sent,
        "failures_by_kind": dict(sorted(stats.failures_by_kind.items())),
        "retries_by_kind": dict(sorted(stats.retries_by_kind.items())),
        "rate_limited_responses": stats.rate_limited_responses,
        "usage": {
            "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.completion_tokens,
            "total_tokens": stats.total_tokens,
        },
        "stopped_reason": stopped_reason,
        "exit_code": exit_code,
    }
