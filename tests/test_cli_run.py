"""End to end: the CLI as a subprocess against the bundled endpoint on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

from batcher.endpoint import Rule
from support import TEST_KEY, cli_env, final_states, read_log, read_results, read_summary, run_cli, serve, write_job


def test_good_run_succeeds(tmp_path: Path) -> None:
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=12)
        result = run_cli("run", str(job), "--quiet")
        chat_requests = endpoint.stats.chat_requests

    out = tmp_path / "out"
    assert result.returncode == 0, result.stderr
    states = final_states(out)
    assert sorted(states) == sorted(f"p{index}" for index in range(12))
    assert all(record["status"] == "succeeded" for record in states.values())
    assert chat_requests == 12
    summary = read_summary(out)
    assert summary["succeeded"] == 12
    assert summary["failed"] == 0
    assert summary["total"] == 12
    assert summary["exit_code"] == 0
    assert summary["requests_sent"] == 13  # the preflight's GET /models included
    assert summary["usage"]["total_tokens"] > 0
    events = read_log(out)
    assert events[-1]["event"] == "run.finished"
    assert all({"timestamp", "level", "event", "run_id"} <= set(event) for event in events)


def test_missing_key_sends_nothing(tmp_path: Path) -> None:
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url)
        result = run_cli("run", str(job), env=cli_env(key=None))
        stats = endpoint.stats

    assert result.returncode == 3
    assert "BATCHER_TEST_KEY is not set" in result.stderr
    assert stats.chat_requests == 0
    assert stats.models_requests == 0


def test_wrong_key_stops_at_preflight(tmp_path: Path) -> None:
    wrong = "sk-wrong-" + "9" * 30 + "beef"
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url)
        result = run_cli("run", str(job), env=cli_env(key=wrong))
        stats = endpoint.stats

    assert result.returncode == 3
    assert "invalid" in result.stderr
    assert "sk-...beef" in result.stderr
    assert wrong not in result.stderr + result.stdout
    assert stats.chat_requests == 0
    summary = read_summary(tmp_path / "out")
    assert summary["stopped_reason"] == "auth"
    assert summary["not_attempted"] == 5


def test_429_wait_is_honoured(tmp_path: Path) -> None:
    rules = (Rule(match="slow down", status=429, times=1, headers={"retry-after-ms": "300"}),)
    prompts = [{"id": "limited", "prompt": "please slow down"}, {"id": "plain", "prompt": "hello"}]
    with serve(rules=rules) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, prompts=prompts)
        result = run_cli("run", str(job), "--quiet")

    out = tmp_path / "out"
    assert result.returncode == 0, result.stderr
    states = final_states(out)
    assert states["limited"]["status"] == "succeeded"
    assert states["limited"]["attempts"] == 2
    retries = [event for event in read_log(out) if event["event"] == "prompt.retry"]
    assert len(retries) == 1
    assert retries[0]["failure_kind"] == "rate_limit"
    assert retries[0]["wait_s"] == 0.3
    assert retries[0]["prompt_id"] == "limited"
    summary = read_summary(out)
    assert summary["rate_limited_responses"] == 1
    assert summary["retries_by_kind"] == {"rate_limit": 1}


def test_always_500_fails_after_max_attempts(tmp_path: Path) -> None:
    rules = (Rule(match="broken", status=500),)
    prompts = [{"id": "broken", "prompt": "this one is broken"}] + [{"id": f"ok{index}", "prompt": f"fine {index}"} for index in range(4)]
    with serve(rules=rules) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, prompts=prompts, limits={"max_attempts": 3})
        result = run_cli("run", str(job), "--quiet")

    out = tmp_path / "out"
    assert result.returncode == 1, result.stderr
    states = final_states(out)
    assert states["broken"]["status"] == "failed"
    assert states["broken"]["attempts"] == 3
    assert states["broken"]["error"]["kind"] == "server"
    assert states["broken"]["error"]["status"] == 500
    assert all(states[f"ok{index}"]["status"] == "succeeded" for index in range(4))
    summary = read_summary(out)
    assert summary["failures_by_kind"] == {"server": 1}
    assert summary["retries_by_kind"] == {"server": 2}


def test_example_job_runs_offline(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "jobs" / "example.yaml"

    result = run_cli("run", str(example), "--output-dir", str(tmp_path / "out"), "--quiet")

    assert result.returncode == 0, result.stderr
    records = read_results(tmp_path / "out")
    assert len(records) == 21
    assert {record["status"] for record in records} == {"succeeded"}
    assert read_summary(tmp_path / "out")["succeeded"] == 21


def test_key_never_appears_in_output(tmp_path: Path) -> None:
    rules = (Rule(match="broken", status=500),)
    prompts = [{"id": "broken", "prompt": "broken"}, {"id": "fine", "prompt": "fine"}]
    with serve(rules=rules) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, prompts=prompts, limits={"max_attempts": 2})
        result = run_cli("run", str(job))

    assert result.returncode == 1
    assert TEST_KEY not in result.stdout
    assert TEST_KEY not in result.stderr
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert TEST_KEY not in path.read_text(encoding="utf-8"), path


def test_echoed_key_is_redacted_in_results(tmp_path: Path) -> None:
    rules = (Rule(match="", status=400, body={"error": {"message": f"Bad request from key {TEST_KEY}", "type": "invalid_request_error", "code": None}}),)
    with serve(rules=rules) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=2)
        result = run_cli("run", str(job))

    assert result.returncode == 1
    assert TEST_KEY not in result.stderr
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert TEST_KEY not in path.read_text(encoding="utf-8"), path
    states = final_states(tmp_path / "out")
    assert "[REDACTED]" in states["p0"]["error"]["message"]


def test_full_disk_stops_run_with_exit_74(tmp_path: Path) -> None:
    import resource
    import subprocess
    import sys

    def limit_file_size() -> None:
        # Files stop growing at 16 KiB, as on a full disk; Python ignores SIGXFSZ, so writes fail with EFBIG.
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))

    with serve(latency_ms=5) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=200)
        result = subprocess.run(
            [sys.executable, "-m", "batcher", "run", str(job), "--quiet"],
            env=cli_env(), capture_output=True, text=True, timeout=60, preexec_fn=limit_file_size,
        )
        # With space again, the next run repairs the torn line and sends only the rest.
        rerun = run_cli("run", str(job), "--quiet")

    assert result.returncode == 74, result.stderr
    assert "Cannot write to" in result.stderr
    assert "results.jsonl" in result.stderr
    assert "Traceback" not in result.stderr
    assert rerun.returncode == 0, rerun.stderr
    succeeded = [record["id"] for record in read_results(tmp_path / "out") if record["status"] == "succeeded"]
    assert sorted(succeeded) == sorted(f"p{index}" for index in range(200))


def test_unreachable_endpoint_without_preflight_exits_5(tmp_path: Path) -> None:
    # Port 9 (discard) has no listener here, so every connection is refused at once.
    job = write_job(
        tmp_path,
        base_url="http://127.0.0.1:9/v1",
        count=3,
        endpoint={"preflight": "off"},
        limits={"max_attempts": 2, "backoff_base_s": 0.01},
    )

    result = run_cli("run", str(job), "--quiet")

    assert result.returncode == 5, result.stderr
    summary = read_summary(tmp_path / "out")
    assert summary["failures_by_kind"] == {"network": 3}
    assert summary["exit_code"] == 5


def test_redirect_is_not_retried(tmp_path: Path) -> None:
    rules = (Rule(match="", status=307, headers={"location": "https://elsewhere.test/v1/chat/completions"}),)
    with serve(rules=rules) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=1, limits={"max_attempts": 5})
        result = run_cli("run", str(job), "--quiet")
        chat_requests = endpoint.stats.chat_requests

    assert result.returncode == 1, result.stderr
    assert chat_requests == 1
    failed = [event for event in read_log(tmp_path / "out") if event["event"] == "prompt.failed"]
    assert failed[0]["failure_kind"] == "server"
    assert failed[0]["location"] == "https://elsewhere.test/v1/chat/completions"
    assert failed[0]["reason"] == "not retried"


def test_bad_command_line_values_exit_2(tmp_path: Path) -> None:
    job = write_job(tmp_path, base_url="http://127.0.0.1:9/v1")

    for args, expected in [
        (["--concurrency", "5000"], "expected at most 1000"),
        (["--output-dir", ""], "expected a folder path"),
        (["--limit", "0"], "at least 1"),
    ]:
        result = run_cli("run", str(job), *args)
        assert result.returncode == 2, args
        assert expected in result.stderr, args
        assert "Traceback" not in result.stderr


def test_request_over_token_budget_warns(tmp_path: Path) -> None:
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=1, params={"max_tokens": 200}, limits={"tokens_per_minute": 50})
        result = run_cli("run", str(job), "--quiet")

    assert result.returncode == 0, result.stderr
    warnings = [event for event in read_log(tmp_path / "out") if event["event"] == "limits.request_over_budget"]
    assert len(warnings) == 1
    assert warnings[0]["tokens_per_minute"] == 50
    assert warnings[0]["estimated_tokens"] > 200


def test_key_failure_on_finished_folder_counts_skipped(tmp_path: Path) -> None:
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=4)
        first = run_cli("run", str(job), "--quiet")
        second = run_cli("run", str(job), "--quiet", env=cli_env(key=None))

    assert first.returncode == 0, first.stderr
    assert second.returncode == 3
    summary = read_summary(tmp_path / "out")
    assert summary["skipped"] == 4
    assert summary["not_attempted"] == 0
