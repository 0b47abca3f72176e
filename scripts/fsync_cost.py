"""Measure results-file append throughput with an fsync per line and with batcher's policy.

Usage: python scripts/fsync_cost.py [DIR]   (DIR: a folder on the disk to measure; default .)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from batcher.store import FSYNC_INTERVAL_S, ResultsStore

# A succeeded line as a short completion produces it: about 600 bytes.
RECORD = {
    "id": "p-0123456789abcdef",
    "status": "succeeded",
    "model": "gpt-4o-mini",
    "attempts": 1,
    "latency_ms": 412,
    "run_id": "20261204T190000Z-1a2b3c",
    "finished_at": "2026-12-04T19:00:00Z",
    "response": {
        "id": "chatcmpl-0123456789abcdef0123456789",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "word " * 60}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 60, "total_tokens": 80},
    },
}
REPEATS = 5


def measure_us_per_line(directory: Path, *, fsync_interval_s: float, lines: int) -> float:
    """Append `lines` results lines to a new store; return the median microseconds per line."""
    timings = []
    for _ in range(REPEATS):
        with tempfile.TemporaryDirectory(dir=directory) as folder:
            store = ResultsStore(Path(folder), fsync_interval_s=fsync_interval_s)
            store.open()
            started = time.perf_counter()
            for _ in range(lines):
                store.append(RECORD)
            timings.append((time.perf_counter() - started) / lines * 1e6)
            store.close()
    return statistics.median(timings)


def main() -> None:
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    cases = (
        (f"fsync at most every {FSYNC_INTERVAL_S:g} s (batcher)", FSYNC_INTERVAL_S, 20_000),
        ("fsync after every line", 0.0, 2_000),
    )
    for label, interval_s, lines in cases:
        us_per_line = measure_us_per_line(directory, fsync_interval_s=interval_s, lines=lines)
        print(f"{label:40} {us_per_line:8.1f} us/line {1e6 / us_per_line:10.0f} lines/s")


if __name__ == "__main__":
    main()
