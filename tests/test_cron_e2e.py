"""End to end: runs that cron starts, kills, locks out, interrupts and resumes."""

from __future__ import annotations

import json
import os
import pty
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from batcher.batch import GRACE_S
from batcher.endpoint import Rule
from support import (
    CLI_TIMEOUT_S,
    KEY_ENV,
    TEST_KEY,
    cli_env,
    final_states,
    read_log,
    read_results,
    read_summary,
    run_cli,
    serve,
    write_job,
)

# How often the tests look at a file or counter that a running process changes.
POLL_S = 0.005
# Upper bound on waiting for a running process to reach a state; a miss fails the test.
WAIT_S = 20.0
# What "exits at once" means for a CLI process: interpreter start, imports and one job check.
PROMPT_EXIT_S = 5.0


def start_cli(*args: str, env: Mapping[str, str] | None = None, **popen: Any) -> subprocess.Popen[bytes]:
    """Start `python -m batcher ARGS` without waiting for it; output goes to pipes unless given."""
    popen.setdefault("stdin", subprocess.DEVNULL)
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
        [sys.executable, "-m", "batcher", *args], env=dict(env if env is not None else cli_env()), **popen
    )


def wait_until(condition: Callable[[], bool], description: str, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `condition` until it holds; fail if it takes WAIT_S or the process ends first."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process exited with {process.returncode} before {description}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_S} s waiting for {description}")
        time.sleep(POLL_S)


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def log_events(output_dir: Path) -> list[str]:
    """Return the event names of every complete line in the newest log, while it is written."""
    logs = sorted((output_dir / "logs").glob("*.jsonl"))
    if not logs:
        return []
    lines = logs[-1].read_bytes().split(b"\n")[:-1]
    return [json.loads(line)["event"] for line in lines]


def finish(process: subprocess.Popen[bytes], timeout_s: float = CLI_TIMEOUT_S) -> tuple[int, str]:
    """Wait for the process; return its exit code and stderr."""
    _, stderr = process.communicate(timeout=timeout_s)
    return process.returncode, (stderr or b"").decode("utf-8")


def succeeded_lines(output_dir: Path) -> Counter[str]:
    return Counter(record["id"] for record in read_results(output_dir) if record["status"] == "succeeded")


def test_sigkill_three_times_then_resume(tmp_path: Path) -> None:
    concurrency = 8
    kills_after_lines = (1, 100, 200)
    out = tmp_path / "out"
    with serve(latency_ms=40) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=300, limits={"concurrency": concurrency})
        for lines in kills_after_lines:
            process = start_cli("run", str(job), "--quiet")
            wait_until(lambda: count_lines(out / "results.jsonl") >= lines, f"{lines} results lines", process)
            process.kill()
            process.wait(CLI_TIMEOUT_S)
            assert process.returncode == -signal.SIGKILL

        result = run_cli("run", str(job), "--quiet")
        chat_requests = endpoint.stats.chat_requests

    assert result.returncode == 0, result.stderr
    succeeded = succeeded_lines(out)
    assert set(succeeded) == {f"p{index}" for index in range(300)}
    assert max(succeeded.values()) == 1
    assert chat_requests <= 300 + concurrency * len(kills_after_lines)
    summary = read_summary(out)
    assert summary["skipped"] + summary["succeeded"] == 300
    assert summary["skipped"] >= 200
    assert summary["exit_code"] == 0


def test_torn_line_repaired_and_logged(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    whole = [
        json.dumps({"id": f"p{index}", "status": "succeeded", "attempts": 1, "response": {"choices": []}})
        for index in range(2)
    ]
    # Cut inside the two-byte UTF-8 encoding of "é", as a kill in the middle of a write can.
    torn = '{"id":"p2","status":"succeeded","response":{"text":"café"}}'.encode()
    torn = torn[: torn.index("é".encode()) + 1]
    (out / "results.jsonl").write_bytes(("\n".join(whole) + "\n").encode() + torn)

    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=5)
        result = run_cli("run", str(job), "--quiet")
        chat_requests = endpoint.stats.chat_requests

    assert result.returncode == 0, result.stderr
    assert chat_requests == 3
    raw_lines = (out / "results.jsonl").read_bytes().split(b"\n")
    assert raw_lines[-1] == b""
    records = [json.loads(line) for line in raw_lines[:-1]]
    assert [record["id"] for record in records[:2]] == ["p0", "p1"]
    assert sorted(record["id"] for record in records[2:]) == ["p2", "p3", "p4"]
    repairs = [event for event in read_log(out) if event["event"] == "results.repaired"]
    assert len(repairs) == 1
    assert repairs[0]["torn_bytes_removed"] == len(torn)
    assert repairs[0]["level"] == "warning"


def test_locked_folder_exits_6(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with serve(latency_ms=200) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=40)
        first = start_cli("run", str(job), "--quiet")
        wait_until(lambda: count_lines(out / "results.jsonl") >= 1, "the first run's first result", first)

        started = time.monotonic()
        second = run_cli("run", str(job), "--quiet")
        second_s = time.monotonic() - started
        first_code, first_stderr = finish(first)

    assert second.returncode == 6
    assert second_s < PROMPT_EXIT_S
    assert f"process {first.pid}" in second.stderr
    assert first_code == 0, first_stderr
    assert len(list((out / "logs").glob("*.jsonl"))) == 1
    succeeded = succeeded_lines(out)
    assert set(succeeded) == {f"p{index}" for index in range(40)}
    assert max(succeeded.values()) == 1
    summary = read_summary(out)
    assert summary["succeeded"] == 40
    assert summary["exit_code"] == 0


def _interrupt_mid_run(tmp_path: Path, number: signal.Signals) -> tuple[int, float, int, Path]:
    """Signal a run after its first results; return the exit code, seconds to exit, chat_succeeded and output folder."""
    out = tmp_path / "out"
    with serve(latency_ms=300) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=40)
        process = start_cli("run", str(job), "--quiet")
        wait_until(lambda: count_lines(out / "results.jsonl") >= 4, "4 results lines", process)

        process.send_signal(number)
        signalled = time.monotonic()
        code, stderr = finish(process)
        exit_s = time.monotonic() - signalled
        chat_succeeded = endpoint.stats.chat_succeeded
    assert "Traceback" not in stderr
    return code, exit_s, chat_succeeded, out


def test_sigterm_exits_143_after_in_flight(tmp_path: Path) -> None:
    code, exit_s, chat_succeeded, out = _interrupt_mid_run(tmp_path, signal.SIGTERM)

    assert code == 143
    assert exit_s < GRACE_S
    assert sum(succeeded_lines(out).values()) == chat_succeeded
    summary = read_summary(out)
    assert summary["stopped_reason"] == "interrupted"
    assert summary["exit_code"] == 143
    assert summary["succeeded"] == chat_succeeded
    assert summary["not_attempted"] == 40 - chat_succeeded
    assert summary["not_attempted"] > 0
    events = read_log(out)
    stopping = [event for event in events if event["event"] == "run.stopping"]
    assert len(stopping) == 1
    assert stopping[0]["signal"] == "SIGTERM"
    assert events[-1]["event"] == "run.finished"


def test_sigint_exits_130_after_in_flight(tmp_path: Path) -> None:
    code, exit_s, chat_succeeded, out = _interrupt_mid_run(tmp_path, signal.SIGINT)

    assert code == 130
    assert exit_s < GRACE_S
    assert sum(succeeded_lines(out).values()) == chat_succeeded
    summary = read_summary(out)
    assert summary["stopped_reason"] == "interrupted"
    assert summary["exit_code"] == 130
    assert summary["not_attempted"] == 40 - chat_succeeded


def test_second_sigint_stops_at_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # Responses take far longer than the test waits, so only the second SIGINT can end the run.
    with serve(latency_ms=30_000) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=10)
        process = start_cli("run", str(job), "--quiet")
        wait_until(lambda: endpoint.stats.in_flight >= 4, "4 requests in flight", process)

        process.send_signal(signal.SIGINT)
        wait_until(lambda: "run.stopping" in log_events(out), "the run.stopping event", process)
        process.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        code, stderr = finish(process)
        exit_s = time.monotonic() - signalled

    assert code == 130
    assert exit_s < PROMPT_EXIT_S
    assert "Traceback" not in stderr
    assert read_results(out) == []
    summary = read_summary(out)
    assert summary["stopped_reason"] == "interrupted"
    assert summary["not_attempted"] == 10
    events = read_log(out)
    assert [event["event"] for event in events].count("run.stop_now") == 1
    assert events[-1]["event"] == "run.finished"


def _interrupt_preflight(tmp_path: Path, number: signal.Signals) -> tuple[int, str, Path]:
    """Signal a run while its chat preflight probe waits on the endpoint."""
    out = tmp_path / "out"
    rules = (Rule(match="ping", delay_ms=30_000, times=1),)
    with serve(rules=rules) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=6, endpoint={"preflight": "chat"})
        process = start_cli("run", str(job), "--quiet")
        wait_until(lambda: endpoint.stats.in_flight >= 1, "the preflight probe", process)

        process.send_signal(number)
        signalled = time.monotonic()
        code, stderr = finish(process)
        exit_s = time.monotonic() - signalled
        chat_requests = endpoint.stats.chat_requests

    assert exit_s < PROMPT_EXIT_S
    assert chat_requests == 1
    return code, stderr, out


def test_sigint_during_preflight_writes_summary(tmp_path: Path) -> None:
    code, stderr, out = _interrupt_preflight(tmp_path, signal.SIGINT)

    assert code == 130
    assert "Traceback" not in stderr
    summary = read_summary(out)
    assert summary["stopped_reason"] == "interrupted"
    assert summary["exit_code"] == 130
    assert summary["not_attempted"] == 6
    assert summary["requests_sent"] == 1
    assert read_log(out)[-1]["event"] == "run.finished"


def test_sigterm_during_preflight_writes_summary(tmp_path: Path) -> None:
    code, stderr, out = _interrupt_preflight(tmp_path, signal.SIGTERM)

    assert code == 143
    assert "Traceback" not in stderr
    summary = read_summary(out)
    assert summary["stopped_reason"] == "interrupted"
    assert summary["exit_code"] == 143
    assert summary["not_attempted"] == 6


UNICODE_ID = "café-“quoted”-😀"
UNICODE_TEXT = "Crème brûlée, “double” and ‘single’ quotes, naïve 😀 日本"


def _c_locale_env(*, utf8_mode: bool) -> dict[str, str]:
    env = {
        name: value
        for name, value in cli_env().items()
        if not name.startswith(("LC_", "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONCOERCECLOCALE"))
    }
    env.update(LANG="C", LC_ALL="C")
    if not utf8_mode:
        # Turn off the interpreter's own remedies for the C locale, so stderr really is ASCII.
        env.update(PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    return env


def _check_c_locale_run(tmp_path: Path, *, utf8_mode: bool) -> None:
    # Without UTF-8 mode the interpreter cannot encode a non-ASCII path at all, so only then is
    # the output folder plain ASCII.
    out = tmp_path / ("sortie-été" if utf8_mode else "out")
    # The first attempt of the accented prompt fails, so the log carries its id in a retry event.
    rules = (Rule(match="Crème", status=500, times=1),)
    prompts = [{"id": UNICODE_ID, "prompt": UNICODE_TEXT}, {"id": "plain", "prompt": "plain text"}]
    with serve(rules=rules) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, prompts=prompts, output_dir=str(out))
        with open(tmp_path / "stdout.txt", "wb") as stdout, open(tmp_path / "stderr.txt", "wb") as stderr:
            process = start_cli(
                "run", str(job), env=_c_locale_env(utf8_mode=utf8_mode), stdout=stdout, stderr=stderr,
                stdin=None, preexec_fn=lambda: os.close(0),
            )
            code = process.wait(CLI_TIMEOUT_S)

    stderr_bytes = (tmp_path / "stderr.txt").read_bytes()
    assert code == 0, stderr_bytes.decode("utf-8", errors="replace")

    results = (out / "results.jsonl").read_bytes().decode("utf-8")
    assert UNICODE_ID in results
    assert "brûlée" in results
    states = final_states(out)
    assert states[UNICODE_ID]["status"] == "succeeded"
    assert UNICODE_TEXT.split()[-1] in states[UNICODE_ID]["response"]["choices"][0]["message"]["content"]

    log_bytes = next((out / "logs").glob("*.jsonl")).read_bytes()
    assert b"\r" not in log_bytes
    log_text = log_bytes.decode("utf-8")
    events = [json.loads(line) for line in log_text.splitlines()]
    assert all(isinstance(event, dict) for event in events)
    assert UNICODE_ID in log_text
    assert [event["prompt_id"] for event in events if event["event"] == "prompt.retry"] == [UNICODE_ID]
    assert any(event.get("output_dir") == str(out) for event in events)

    assert b"\r" not in stderr_bytes
    assert b"\x1b" not in stderr_bytes
    # Decoding as ASCII also checks that an ASCII stream got nothing it cannot hold.
    stderr_text = stderr_bytes.decode("utf-8" if utf8_mode else "ascii")
    stderr_events = [json.loads(line) for line in stderr_text.splitlines()]
    assert stderr_events
    assert [event["prompt_id"] for event in stderr_events if event["event"] == "prompt.retry"] == [UNICODE_ID]
    assert stderr_events[-1]["event"] == "run.finished"


def test_c_locale_keeps_utf8_files(tmp_path: Path) -> None:
    _check_c_locale_run(tmp_path, utf8_mode=True)


def test_ascii_stderr_gets_escaped_json(tmp_path: Path) -> None:
    _check_c_locale_run(tmp_path, utf8_mode=False)


def test_cron_environment_with_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(TEST_KEY + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=5)
        settings = yaml.safe_load(job.read_text(encoding="utf-8"))
        del settings["endpoint"]["api_key_env"]
        settings["endpoint"]["api_key_file"] = str(key_file)
        job.write_text(yaml.safe_dump(settings), encoding="utf-8")
        result = subprocess.run(
            [sys.executable, "-m", "batcher", "run", str(job)],
            env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path, stdin=subprocess.DEVNULL,
            capture_output=True, timeout=CLI_TIMEOUT_S,
        )

    assert result.returncode == 0, result.stderr.decode()
    assert len(succeeded_lines(tmp_path / "out")) == 5


def test_cron_environment_with_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "batcher.env"
    env_file.write_text(f"export {KEY_ENV}='{TEST_KEY}'\n", encoding="utf-8")
    env_file.chmod(0o600)
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=5)
        command = f". {env_file} && exec {sys.executable} -m batcher run {job}"
        result = subprocess.run(
            ["/bin/sh", "-c", command],
            env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path, stdin=subprocess.DEVNULL,
            capture_output=True, timeout=CLI_TIMEOUT_S,
        )

    assert result.returncode == 0, result.stderr.decode()
    assert len(succeeded_lines(tmp_path / "out")) == 5
    assert TEST_KEY.encode() not in result.stderr


def test_limit_takes_next_prompts_each_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=10)
        first = run_cli("run", str(job), "--limit", "3", "--quiet")
        first_summary = read_summary(out)
        first_ids = set(succeeded_lines(out))
        second = run_cli("run", str(job), "--limit", "3", "--quiet")
        chat_requests = endpoint.stats.chat_requests

    assert first.returncode == 0, first.stderr
    assert first_ids == {"p0", "p1", "p2"}
    assert first_summary["succeeded"] == 3
    assert first_summary["not_attempted"] == 7
    assert second.returncode == 0, second.stderr
    assert set(succeeded_lines(out)) - first_ids == {"p3", "p4", "p5"}
    second_summary = read_summary(out)
    assert second_summary["skipped"] == 3
    assert second_summary["succeeded"] == 3
    assert second_summary["not_attempted"] == 4
    assert chat_requests == 6


def test_outputs_private_under_open_umask(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=3)
        process = start_cli("run", str(job), "--quiet", preexec_fn=lambda: os.umask(0))
        code, stderr = finish(process)

    assert code == 0, stderr
    modes = {path.relative_to(out).as_posix(): stat.S_IMODE(path.stat().st_mode) for path in out.rglob("*")}
    modes["."] = stat.S_IMODE(out.stat().st_mode)
    assert {"results.jsonl", "summary.json", ".lock", "logs"} <= set(modes)
    for name, mode in modes.items():
        expected = 0o700 if (out / name).is_dir() else 0o600
        assert mode == expected, f"{name} has mode {mode:o}"


def _read_all(fd: int, chunks: list[bytes]) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO once every writer of the terminal has closed it
            return
        if not data:
            return
        chunks.append(data)


def test_progress_bar_on_terminal(tmp_path: Path) -> None:
    rules = (Rule(match="broken", status=500),)
    prompts = [{"id": f"p{index}", "prompt": f"fine {index}"} for index in range(5)]
    prompts.append({"id": "broken", "prompt": "broken"})
    with serve(rules=rules) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, prompts=prompts, limits={"max_attempts": 2})
        controller, terminal = pty.openpty()
        try:
            process = start_cli("run", str(job), stderr=terminal)
        finally:
            os.close(terminal)
        chunks: list[bytes] = []
        reader = threading.Thread(target=_read_all, args=(controller, chunks), daemon=True)
        reader.start()
        code = process.wait(CLI_TIMEOUT_S)
        reader.join(WAIT_S)
        os.close(controller)

    assert code == 1
    screen = b"".join(chunks).decode("utf-8")
    bars = [part for part in screen.replace("\r\n", "\n").split("\r\x1b[K") if part.startswith("[")]
    assert bars, screen
    last = bars[-1].strip()
    assert last.startswith("[########################] 6/6 ")
    assert "ok 5" in last
    assert "failed 1 (server 1)" in last
    assert "/s" in last
    assert "ETA" in last


def test_no_progress_bar_without_terminal(tmp_path: Path) -> None:
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=5)
        result = run_cli("run", str(job))

    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    assert "\x1b" not in result.stderr
    assert "ETA" not in result.stderr
    assert all(json.loads(line)["event"] for line in result.stderr.splitlines())


# Runs a command and prints the peak resident set size of the largest process it started
# (RUSAGE_CHILDREN), in MiB, so that earlier test processes do not count.
_MEASURE_RSS = """
import resource, subprocess, sys
completed = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
print(completed.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""
PROMPT_LINES = 200_000
MAX_RSS_MIB = 150


def _peak_rss_mib(*args: str, env: Mapping[str, str]) -> tuple[int, float]:
    completed = subprocess.run(
        [sys.executable, "-c", _MEASURE_RSS, sys.executable, "-m", "batcher", *args],
        env=dict(env), capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
    )
    assert completed.returncode == 0, completed.stderr
    code, rss_mib = completed.stdout.split()
    return int(code), float(rss_mib)


def _write_prompts_file(path: Path) -> None:
    with path.open("w", encoding="utf-8") as prompts:
        for index in range(PROMPT_LINES):
            prompts.write(f'{{"id":"line-{index}","prompt":"prompt number {index} of a large file"}}\n')


def test_large_prompts_file_streams(tmp_path: Path) -> None:
    _write_prompts_file(tmp_path / "prompts.jsonl")
    out = tmp_path / "out"
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, prompts=[], prompts_file="prompts.jsonl")
        run_code, run_rss_mib = _peak_rss_mib("run", str(job), "--limit", "100", "--quiet", env=cli_env())
        dry_code, dry_rss_mib = _peak_rss_mib("run", str(job), "--dry-run", env=cli_env())
        chat_requests = endpoint.stats.chat_requests

    assert run_code == 0
    assert dry_code == 0
    assert run_rss_mib < MAX_RSS_MIB
    assert dry_rss_mib < MAX_RSS_MIB
    assert chat_requests == 100
    assert set(succeeded_lines(out)) == {f"line-{index}" for index in range(100)}
    summary = read_summary(out)
    assert summary["total"] == PROMPT_LINES
    assert summary["not_attempted"] == PROMPT_LINES - 100
