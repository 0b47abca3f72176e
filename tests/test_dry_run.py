"""`run --dry-run`: everything is checked and shown, nothing is sent."""

from __future__ import annotations

import json
from pathlib import Path

from support import TEST_KEY, cli_env, run_cli, serve, write_job


def test_dry_run_sends_nothing(tmp_path: Path) -> None:
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=7)
        result = run_cli("run", str(job), "--dry-run")
        stats = endpoint.stats

    assert result.returncode == 0, result.stderr
    assert "7 in the job, 0 already succeeded, 7 to send" in result.stdout
    assert "nothing was sent" in result.stdout
    assert stats.chat_requests == 0
    assert stats.models_requests == 0
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_dry_run_shows_first_body_and_fingerprint(tmp_path: Path) -> None:
    job = write_job(tmp_path, base_url="http://127.0.0.1:9/v1", count=2, system="Be terse.")

    result = run_cli("run", str(job), "--dry-run")

    assert result.returncode == 0, result.stderr
    assert TEST_KEY not in result.stdout
    assert "sk-...cdef" in result.stdout
    body = json.loads(result.stdout.split("/chat/completions\n", 1)[1].splitlines()[0])
    assert body["messages"][0] == {"role": "system", "content": "Be terse."}
    assert body["messages"][1] == {"role": "user", "content": "prompt number 0"}
    assert body["max_tokens"] == 16


def test_dry_run_counts_done_prompts(tmp_path: Path) -> None:
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=6)
        first = run_cli("run", str(job), "--limit", "4", "--quiet")
        result = run_cli("run", str(job), "--dry-run")

    assert first.returncode == 0, first.stderr
    assert "6 in the job, 4 already succeeded, 2 to send" in result.stdout


def test_dry_run_runs_key_checks(tmp_path: Path) -> None:
    job = write_job(tmp_path, base_url="http://127.0.0.1:9/v1")

    result = run_cli("run", str(job), "--dry-run", env=cli_env(key="YOUR_API_KEY"))

    assert result.returncode == 3
    assert "placeholder" in result.stderr


def test_invalid_prompts_file_line_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "prompts.jsonl").write_text('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y"}\nnot json\n', encoding="utf-8")
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, prompts=[], prompts_file="prompts.jsonl")
        result = run_cli("run", str(job))
        stats = endpoint.stats

    assert result.returncode == 2
    assert "prompts.jsonl:3" in result.stderr
    assert "Traceback" not in result.stderr
    assert stats.chat_requests == 0
    assert stats.models_requests == 0


def test_batch_line_with_wrong_url_is_exit_2(tmp_path: Path) -> None:
    lines = [
        {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}},
        {"custom_id": "b", "method": "POST", "url": "/v1/embeddings", "body": {"model": "text-embedding-3-small", "input": "x"}},
    ]
    (tmp_path / "batch.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    job = write_job(tmp_path, base_url="http://127.0.0.1:9/v1", prompts=[], prompts_file="batch.jsonl")

    result = run_cli("run", str(job), "--dry-run")

    assert result.returncode == 2
    assert "batch.jsonl:2" in result.stderr
    assert "/v1/embeddings" in result.stderr
