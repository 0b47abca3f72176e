"""The worker pool: sends prompts within the limits, retries, records results, and stops."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from batcher.client import ApiClient, Reply
from batcher.errors import OutputError
from batcher.failures import Failure, FailureKind
from batcher.jsonl import dumps
from batcher.limits import Pacer, backoff_s
from batcher.store import ResultsStore
from batcher.summary import RunStats, utc_now_iso

log = structlog.get_logger("batcher.runner")


class PromptLike(Protocol):
    id: str
    body: dict[str, Any]
    estimated_tokens: int


@dataclass(frozen=True)
class RunSettings:
    """Settings of the runner: pool size, attempts, backoff, and the longest wait it accepts."""

    concurrency: int
    max_attempts: int
    requests_per_minute: float | None = None
    tokens_per_minute: int | None = None
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    # A retry wait longer than this ends the prompt as failed instead of waiting; None waits.
    max_wait_s: float | None = None
    # Prompts to send at most in this run (not counting those done earlier); None sends all.
    limit: int | None = None


@dataclass(frozen=True)
class StopCause:
    """The response that stopped the run (auth, permission or quota) and the prompt it answered."""

    prompt_id: str
    failure: Failure


_END = object()


class Runner:
    """Sends the prompts of one run through a fixed pool of workers.

    A producer reads prompts lazily into a small queue, so a prompts file of any size costs
    the same memory. Stop conditions (auth, permission, quota, a signal) are acted on here:
    no new request starts, and requests in flight finish and are recorded.
    """

    def __init__(
        self,
        *,
        client: ApiClient,
        store: ResultsStore,
        prompts: Iterable[PromptLike],
        settings: RunSettings,
        stats: RunStats,
        run_id: str,
        on_result: Callable[[], None] | None = None,
        rng: random.Random | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        """Prepare the pool. `pacer` contains the limits to wait for (default: built from `settings`)."""
        self._client = client
        self._store = store
        self._prompts = iter(prompts)
        self._settings = settings
        self._stats = stats
        self._run_id = run_id
        self._on_result = on_result
        self._rng = rng or random.Random()
        self.pacer = pacer or Pacer(
            requests_per_minute=settings.requests_per_minute,
            tokens_per_minute=settings.tokens_per_minute,
        )
        self.stopped_reason: str | None = None
        # The first error writing results.jsonl (a full disk); the run stops on it.
        self.output_error: OSError | None = None
        # The first response that stopped the run; None when the run was not stopped by one.
        self.stop_cause: StopCause | None = None
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=max(settings.concurrency * 2, 16))
        self._workers: list[asyncio.Task[None]] = []
        self._sending: set[asyncio.Task[Any]] = set()
        self._producer: asyncio.Task[None] | None = None

    async def run(self) -> str | None:
        """Send every prompt that is not done yet; return the stop reason, or None."""
        self._producer = asyncio.create_task(self._produce(), name="batcher-producer")
        self._workers = [
            asyncio.create_task(self._work(), name=f"batcher-worker-{index}")
            for index in range(self._settings.concurrency)
        ]
        tasks = [self._producer, *self._workers]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
        if self.output_error is not None:
            raise OutputError(
                f"Cannot write to {self._store.path}: {self.output_error.strerror or self.output_error}. "
                f"The run stopped so that no more answers are lost; free disk space or fix the "
                f"folder's permissions, then run again: prompts already recorded are skipped."
            ) from self.output_error
        if self.stopped_reason is not None:
            self._count_rest()
        return self.stopped_reason

    def _count_rest(self) -> None:
        """Count the prompts a stopped run never reached, so the summary's totals stay true."""
        for prompt in self._prompts:
            self._stats.total += 1
            if self._store.has_succeeded(prompt.id):
                self._stats.skipped += 1

    def stop(self, reason: str) -> None:
        """Start no new request; requests in flight finish and are recorded.

        Workers that are waiting (on the queue, a limit or a backoff) are cancelled at once,
        which is safe because they have no response to lose.
        """
        if self.stopped_reason is None:
            self.stopped_reason = reason
        if self._producer is not None:
            self._producer.cancel()
        for worker in self._workers:
            if worker not in self._sending:
                worker.cancel()

    def cancel_in_flight(self) -> None:
        """Cancel everything, requests in flight included (the grace period is over)."""
        self.stop(self.stopped_reason or "interrupted")
        for worker in self._workers:
            worker.cancel()

    @property
    def in_flight(self) -> int:
        return len(self._sending)

    async def _produce(self) -> None:
        sent = 0
        limit = self._settings.limit
        try:
            for prompt in self._prompts:
                self._stats.total += 1
                if self._store.has_succeeded(prompt.id):
                    self._stats.skipped += 1
                    continue
                if limit is not None and sent >= limit:
                    continue
                sent += 1
                await self._queue.put(prompt)
        finally:
            if self.stopped_reason is None:
                for _ in self._workers:
                    await self._queue.put(_END)

    async def _work(self) -> None:
        while True:
            prompt = await self._queue.get()
            if prompt is _END or self.stopped_reason is not None:
                return
            await self._send_until_done(prompt)

    async def _send_until_done(self, prompt: PromptLike) -> None:
        data = dumps(prompt.body).encode("utf-8")
        attempt = 0
        while self.stopped_reason is None:
            slot = await self.pacer.before_request(prompt.estimated_tokens)
            if self.stopped_reason is not None:
                return
            attempt += 1
            reply = await self._send(data)

            if reply.failure is None:
                usage_total = self._stats.add_usage(reply.body.get("usage") if reply.body else None)
                self.pacer.after_success(slot, reply.headers, total_tokens=usage_total)
                self._record_success(prompt, reply, attempt)
                return

            failure = reply.failure
            self._stats.note_response_failure(failure)
            wait_s = self._retry_wait_s(failure, attempt)
            max_wait_s = self._settings.max_wait_s
            too_long = max_wait_s is not None and wait_s > max_wait_s
            # A wait longer than the job accepts fails this prompt, and the other workers then
            # pause only max_wait_s instead of the whole wait.
            self.pacer.after_failure(
                slot,
                reply.headers,
                rate_limited=failure.kind is FailureKind.RATE_LIMIT,
                wait_s=min(wait_s, max_wait_s) if max_wait_s is not None else wait_s,
            )
            if failure.stops_run:
                self._record_failure(prompt, failure, attempt, reason="stops the run")
                if self.stop_cause is None and self.stopped_reason is None:
                    self.stop_cause = StopCause(prompt_id=prompt.id, failure=failure)
                self.stop(failure.kind.value)
                return
            if self.stopped_reason is not None:
                # The run stopped while this request was in flight. Its response is recorded instead
                # of a retry that would never come, and the next run sends the prompt again.
                self._record_failure(prompt, failure, attempt, reason="run stopped")
                return
            if not failure.retryable:
                self._record_failure(prompt, failure, attempt, reason="not retried")
                return
            if attempt >= self._settings.max_attempts:
                self._record_failure(prompt, failure, attempt, reason="max_attempts reached")
                return
            if too_long:
                self._record_failure(prompt, failure, attempt, reason="wait over max_wait_s")
                return

            self._stats.note_retry(failure.kind)
            log.info(
                "prompt.retry",
                prompt_id=prompt.id,
                attempt=attempt,
                failure_kind=failure.kind.value,
                status=failure.status,
                code=failure.code,
                request_id=failure.request_id,
                wait_s=round(wait_s, 3),
                wait_source="endpoint" if failure.wait_s is not None else "backoff",
                location=failure.location,
            )
            if failure.kind is not FailureKind.RATE_LIMIT:
                await asyncio.sleep(wait_s)

    async def _send(self, data: bytes) -> Reply:
        task = asyncio.current_task()
        assert task is not None
        self._sending.add(task)
        try:
            return await self._client.post_chat(data)
        finally:
            self._sending.discard(task)

    def _retry_wait_s(self, failure: Failure, attempt: int) -> float:
        if failure.wait_s is not None:
            return failure.wait_s
        return backoff_s(
            attempt,
            base_s=self._settings.backoff_base_s,
            max_s=self._settings.backoff_max_s,
            rng=self._rng,
        )

    def _append(self, record: dict[str, Any]) -> bool:
        """Append a results line; on a write error (disk full), stop the run at once."""
        try:
            self._store.append(record)
        except OSError as exc:
            if self.output_error is None:
                self.output_error = exc
                log.error(
                    "results.write_failed",
                    failure_kind=None,
                    prompt_id=record["id"],
                    path=str(self._store.path),
                    error=exc.strerror or str(exc),
                )
            self.stop("output_error")
            self.cancel_in_flight()
            return False
        return True

    def _record_success(self, prompt: PromptLike, reply: Reply, attempt: int) -> None:
        recorded = self._append(
            {
                "id": prompt.id,
                "status": "succeeded",
                "model": prompt.body.get("model"),
                "attempts": attempt,
                "latency_ms": reply.latency_ms,
                "run_id": self._run_id,
                "finished_at": utc_now_iso(),
                "response": reply.body,
            }
        )
        if not recorded:
            return
        self._stats.succeeded += 1
        if self._on_result is not None:
            self._on_result()

    def _record_failure(
        self, prompt: PromptLike, failure: Failure, attempt: int, *, reason: str
    ) -> None:
        recorded = self._append(
            {
                "id": prompt.id,
                "status": "failed",
                "model": prompt.body.get("model"),
                "attempts": attempt,
                "run_id": self._run_id,
                "finished_at": utc_now_iso(),
                "error": failure.to_record(),
            }
        )
        if not recorded:
            return
        self._stats.note_final_failure(failure.kind)
        event = log.error if failure.stops_run else log.warning
        event(
            "prompt.failed",
            prompt_id=prompt.id,
            attempt=attempt,
            failure_kind=failure.kind.value,
            status=failure.status,
            code=failure.code,
            error_type=failure.type,
            request_id=failure.request_id,
            message=failure.message,
            location=failure.location,
            # The wait the endpoint requested, even though this prompt no longer waits for it.
            wait_s=None if failure.wait_s is None else round(failure.wait_s, 3),
            reason=reason,
        )
        if self._on_result is not None:
            self._on_result()
