"""The output folder: results file (resume index, append, repair), summary and run lock."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import time
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from json.decoder import scanstring
from pathlib import Path
from typing import Any

from batcher.errors import LockError
from batcher.jsonl import dumps, loads
from batcher.redact import Redactor

RESULTS_NAME = "results.jsonl"
SUMMARY_NAME = "summary.json"
LOCK_NAME = ".lock"

# Files are readable by their owner only: results carry whole responses.
FILE_MODE = 0o600
DIR_MODE = 0o700

# Each line reaches the kernel in one write(2) as soon as a prompt finishes, so a killed process
# (SIGKILL included) loses nothing it recorded. An fsync, which only matters for a power loss or
# a kernel crash, runs at the first append this long after the previous one, and when the store
# closes. Between those, the kernel writes the lines back on its own schedule (Linux: within
# about 30 s, vm.dirty_expire_centisecs). An fsync per line would block the event loop for one
# disk flush per result; docs/durability.md measures what that costs.
FSYNC_INTERVAL_S = 1.0

_ID_PREFIX = b'{"id":"'
_SUCCEEDED_AFTER_ID = ',"status":"succeeded"'


def make_private_dir(path: Path) -> None:
    """Create a folder (and parents) that only its owner can read."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def _id_hash(prompt_id: str) -> int:
    digest = hashlib.blake2b(prompt_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


@dataclass(frozen=True, slots=True)
class ResumeState:
    """Counts from reading an earlier run's results file."""

    succeeded: int
    lines: int
    unparsable_lines: int
    repaired_bytes: int


class ResultsStore:
    """Appends one line per finished prompt, and tracks which ids succeeded in earlier runs.

    The succeeded ids are kept as a sorted array of 64-bit hashes (8 bytes an id), so a
    million-line results file costs about 8 MB. Two different ids share a hash with a
    probability of about n^2 / 2^65 (3e-8 for a million ids).
    """

    def __init__(self, output_dir: Path, *, fsync_interval_s: float = FSYNC_INTERVAL_S) -> None:
        self.path = output_dir / RESULTS_NAME
        self._succeeded = array("q")
        # Removes the API key from lines, in case an endpoint echoes it in a response.
        self.redactor = Redactor()
        self._fd: int | None = None
        self._fsync_interval_s = fsync_interval_s
        self._last_fsync = 0.0

    def open(self) -> ResumeState:
        """Repair a torn last line, build the index of succeeded ids, and open for appending."""
        repaired = self._repair_torn_tail()
        state = self.load_index()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        return ResumeState(state.succeeded, state.lines, state.unparsable_lines, repaired)

    def load_index(self) -> ResumeState:
        """Build the index of succeeded ids without changing the file (a torn line is skipped)."""
        lines = unparsable = 0
        hashes = array("q")
        if self.path.exists():
            with self.path.open("rb") as results:
                for line in results:
                    lines += 1
                    state = _read_id_and_status(line)
                    if state is None:
                        unparsable += 1
                    elif state[1]:
                        hashes.append(_id_hash(state[0]))
        self._succeeded = array("q", sorted(set(hashes)))
        return ResumeState(len(self._succeeded), lines, unparsable, 0)

    def _repair_torn_tail(self) -> int:
        """Cut a last line that has no newline (a write interrupted by a kill); return its size."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return 0
        if size == 0:
            return 0

        with self.path.open("r+b") as results:
            results.seek(size - 1)
            if results.read(1) == b"\n":
                return 0
            keep = _last_newline_end(results, size)
            results.truncate(keep)
            results.flush()
            os.fsync(results.fileno())
        return size - keep

    @property
    def succeeded_count(self) -> int:
        """Ids that succeeded in earlier runs, as read by `open` or `load_index`."""
        return len(self._succeeded)

    def has_succeeded(self, prompt_id: str) -> bool:
        key = _id_hash(prompt_id)
        index = bisect_left(self._succeeded, key)
        return index < len(self._succeeded) and self._succeeded[index] == key

    def append(self, record: dict[str, Any]) -> None:
        """Write one results line in a single write; it survives a kill of this process."""
        assert self._fd is not None, "ResultsStore.append before open"
        line = dumps(record)
        if self.redactor:
            line = self.redactor.text(line)
        data = (line + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

        now = time.monotonic()
        if now - self._last_fsync >= self._fsync_interval_s:
            os.fsync(self._fd)
            self._last_fsync = now

    def close(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _last_newline_end(results: Any, size: int, chunk: int = 65536) -> int:
    """Return the offset just past the last newline before `size`, or 0 if there is none."""
    end = size
    while end > 0:
        start = max(0, end - chunk)
        results.seek(start)
        block = results.read(end - start)
        position = block.rfind(b"\n")
        if position != -1:
            return start + position + 1
        end = start
    return 0


def _read_id_and_status(line: bytes) -> tuple[str, bool] | None:
    """Return (id, succeeded) of a results line, or None if the line is not a result.

    batcher writes `id` and `status` first, so the common line is read without parsing the
    whole response it carries. Other lines fall back to a full parse.
    """
    if line.startswith(_ID_PREFIX):
        try:
            text = line.decode("utf-8")
            prompt_id, end = scanstring(text, len(_ID_PREFIX))
            return prompt_id, text.startswith(_SUCCEEDED_AFTER_ID, end)
        except (UnicodeDecodeError, ValueError):
            return None

    try:
        record = loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        return None
    return record["id"], record.get("status") == "succeeded"


def write_json_atomically(path: Path, value: Any) -> None:
    """Replace `path` with `value` as JSON so that a reader sees the old or the new file, whole."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(dumps(value))
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RunLock:
    """An OS lock on `output_dir/.lock`, released by the kernel if the process dies."""

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise LockError(
                f"The output folder {self.path.parent} is locked by another run (process {holder}). "
                f"Wait for it to finish, or use another --output-dir."
            ) from None

        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
