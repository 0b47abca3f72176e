"""Child processes measured from outside: wall time, CPU time and peak RSS from wait4."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# CPU that benchmark clients are pinned to; the endpoint gets the other one.
CLIENT_CPU = 1
ENDPOINT_CPU = 0


@dataclass(frozen=True)
class Measurement:
    """One child process's run: exit status, times and peak memory."""

    exit_code: int
    wall_s: float
    cpu_s: float
    max_rss_mb: float
    stdout: str
    stderr: str
    timed_out: bool
    # (seconds since the start, CPU seconds so far) read from /proc at the requested times.
    cpu_marks: tuple[tuple[float, float], ...] = ()

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def can_pin() -> bool:
    """Return True when this machine has the two CPUs that pinning needs."""
    return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2


def pin(pid: int, cpu: int) -> None:
    """Pin a process to one CPU, so client and endpoint do not take turns on the same core."""
    if can_pin():
        os.sched_setaffinity(pid, {sorted(os.sched_getaffinity(0))[cpu]})


def run_measured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    timeout_s: float,
    terminate_after_s: float | None = None,
    cpu_marks_at_s: tuple[float, ...] = (),
) -> Measurement:
    """Run `argv` to its end and measure it with wait4, which reports only this child.

    The child is killed after `timeout_s`. With `terminate_after_s` it gets SIGTERM at that
    time, for benchmarks of a run that is stopped from outside. `cpu_marks_at_s` reads the
    child's CPU time so far at those times, which shows its cost after start-up.
    """
    out_path = cwd / f".child-{os.getpid()}-{time.monotonic_ns()}"
    with open(f"{out_path}.out", "w+b") as stdout, open(f"{out_path}.err", "w+b") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(argv, env=dict(env), cwd=cwd, stdout=stdout, stderr=stderr)
        pin(process.pid, CLIENT_CPU)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            _signal(process.pid, signal.SIGKILL)

        timers = [threading.Timer(timeout_s, kill)]
        if terminate_after_s is not None:
            timers.append(threading.Timer(terminate_after_s, _signal, (process.pid, signal.SIGTERM)))
        cpu_marks: list[tuple[float, float]] = []
        for mark_s in cpu_marks_at_s:
            timers.append(threading.Timer(mark_s, _mark_cpu, (process.pid, started, cpu_marks)))
        for timer in timers:
            timer.start()
        try:
            # Wait without reaping first: the pid stays taken until the timers are cancelled,
            # so a late timer cannot signal an unrelated process that reused it.
            os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
        except BaseException:
            _stop_timers(timers)
            _signal(process.pid, signal.SIGKILL)
            process.wait()
            raise
        _stop_timers(timers)
        _, status, usage = os.wait4(process.pid, 0)
        wall_s = time.perf_counter() - started
        # wait4 reaped the child; tell Popen so that it does not wait for it again.
        process.returncode = os.waitstatus_to_exitcode(status)

        stdout.seek(0)
        stderr.seek(0)
        out_text = stdout.read().decode("utf-8", errors="replace")
        err_text = stderr.read().decode("utf-8", errors="replace")
    os.unlink(f"{out_path}.out")
    os.unlink(f"{out_path}.err")

    return Measurement(
        exit_code=_shell_exit_code(process.returncode),
        wall_s=wall_s,
        cpu_s=usage.ru_utime + usage.ru_stime,
        # ru_maxrss is in kibibytes on Linux.
        max_rss_mb=usage.ru_maxrss / 1024,
        stdout=out_text,
        stderr=err_text,
        timed_out=timed_out.is_set(),
        cpu_marks=tuple(sorted(cpu_marks)),
    )


def _shell_exit_code(returncode: int) -> int:
    """Map Popen's negative "killed by signal N" to the shell's 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _mark_cpu(pid: int, started: float, marks: list[tuple[float, float]]) -> None:
    """Append the child's elapsed time and CPU time (user + system) read from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            text = stat.read()
    except OSError:
        return
    elapsed_s = time.perf_counter() - started
    # Fields after the command name, which is in brackets and may contain spaces.
    fields = text.rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of proc(5), counted in clock ticks.
    ticks = int(fields[11]) + int(fields[12])
    marks.append((elapsed_s, ticks / os.sysconf("SC_CLK_TCK")))


def _stop_timers(timers: list[threading.Timer]) -> None:
    for timer in timers:
        timer.cancel()
        timer.join()


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass
