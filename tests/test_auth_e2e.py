"""End to end: key checks, the auth preflight, mid-run stops and secrets, through the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from batcher.endpoint import Rule
from batcher.preflight import PREFLIGHT_ATTEMPTS
from support import (
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

FINGERPRINT = "sk-...cdef"
# The part of TEST_KEY between its prefix and the last four characters that a fingerprint shows.
KEY_BODY = TEST_KEY[len("sk-test-") : -4]


def cli_message(result: subprocess.CompletedProcess[str]) -> str:
    """Return the last `batcher: ...` line of stderr: the message that ends the command."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("batcher: ")]
    assert lines, f"no `batcher:` message on stderr:\n{result.stderr}"
    return lines[-1]


def stderr_events(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """Return the JSON log events that a run without a terminal prints on stderr."""
    return [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]


def events_named(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [event for event in events if event["event"] == name]


def assert_nothing_sent(stats: Any) -> None:
    assert stats.models_requests == 0
    assert stats.chat_requests == 0
    assert stats.responses_by_status == {}


# Guarantee 1: the auth preflight


def test_stripped_authorization_is_diagnosed(tmp_path: Path) -> None:
    """A proxy that drops the Authorization header gets a message naming the likely causes."""
    with serve(strip_authorization=True) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url)
        result = run_cli("run", str(job))
        stats = endpoint.stats

    assert result.returncode == 3
    message = cli_message(result)
    assert "batcher sent one" in message
    assert "did not reach the server" in message
    assert "proxy" in message
    assert "redirect" in message
    assert "wrong object" in message
    assert FINGERPRINT in message
    assert KEY_ENV in message
    assert stats.models_requests == 1
    assert stats.chat_requests == 0
    failed = events_named(read_log(tmp_path / "out"), "preflight.failed")
    assert [event["failure_kind"] for event in failed] == ["auth"]
    summary = read_summary(tmp_path / "out")
    assert summary["stopped_reason"] == "auth"
    assert summary["not_attempted"] == 5
    assert summary["requests_sent"] == 1


def test_key_file_with_crlf_is_trimmed(tmp_path: Path) -> None:
    """A key file written on Windows works, and the log warns that the key was trimmed."""
    key_file = tmp_path / "key"
    key_file.write_bytes(TEST_KEY.encode() + b"\r\n")
    key_file.chmod(0o600)
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, endpoint={"api_key_file": str(key_file)})
        result = run_cli("run", str(job), "--quiet", env=cli_env(key=None))
        succeeded = endpoint.stats.chat_succeeded

    assert result.returncode == 0, result.stderr
    assert succeeded == 5
    warnings = events_named(read_log(tmp_path / "out"), "key.warning")
    assert len(warnings) == 1
    assert "Trimmed surrounding whitespace" in warnings[0]["message"]
    assert str(key_file) in warnings[0]["message"]
    assert warnings[0]["key"] == FINGERPRINT
    assert warnings[0]["level"] == "warning"


def test_key_file_readable_by_others_warns(tmp_path: Path) -> None:
    """A key file that other users can read is used, with a warning to chmod it."""
    key_file = tmp_path / "key"
    key_file.write_text(TEST_KEY, encoding="utf-8")
    key_file.chmod(0o644)
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, endpoint={"api_key_file": str(key_file)})
        result = run_cli("run", str(job), "--quiet", env=cli_env(key=None))

    assert result.returncode == 0, result.stderr
    warnings = events_named(read_log(tmp_path / "out"), "key.warning")
    assert len(warnings) == 1
    assert "mode 0644" in warnings[0]["message"]
    assert f"chmod 600 {key_file}" in warnings[0]["message"]


def test_quoted_key_sends_nothing(tmp_path: Path) -> None:
    """A key whose quotes were kept by an env file stops the run before any request."""
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url)
        result = run_cli("run", str(job), env=cli_env(key=f'"{TEST_KEY}"'))
        stats = endpoint.stats

    assert result.returncode == 3
    message = cli_message(result)
    assert "wrapped in quotes" in message
    assert f"the variable {KEY_ENV}" in message
    assert f"({FINGERPRINT})" in message
    assert_nothing_sent(stats)
    assert read_summary(tmp_path / "out")["stopped_reason"] == "auth"


def test_organization_mismatch_names_it(tmp_path: Path) -> None:
    """A job organization that the key does not belong to is named in the message."""
    with serve(organization="org-main") as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, endpoint={"organization": "org-other"})
        result = run_cli("run", str(job))
        stats = endpoint.stats

    assert result.returncode == 3
    message = cli_message(result)
    assert "mismatched_organization" in message
    assert "`org-other`" in message
    assert "OpenAI-Organization" in message
    assert "Fix `organization` in the job file" in message
    assert FINGERPRINT in message
    assert stats.chat_requests == 0
    assert read_summary(tmp_path / "out")["stopped_reason"] == "auth"


@pytest.mark.parametrize("models_status", [403, 404])
def test_inconclusive_models_falls_back_to_chat(tmp_path: Path, models_status: int) -> None:
    """A 403 or 404 on /models is followed by a chat probe, and the run goes on."""
    with serve(models_status=models_status) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url)
        result = run_cli("run", str(job), "--quiet")
        stats = endpoint.stats

    assert result.returncode == 0, result.stderr
    assert stats.models_requests == 1
    assert stats.chat_requests == 6  # the probe and the 5 prompts
    events = read_log(tmp_path / "out")
    inconclusive = events_named(events, "preflight.models_inconclusive")
    assert [event["status"] for event in inconclusive] == [models_status]
    assert [event["method"] for event in events_named(events, "preflight.passed")] == ["chat"]
    summary = read_summary(tmp_path / "out")
    assert summary["succeeded"] == 5
    assert summary["requests_sent"] == 7


def test_base_url_without_v1_suggests_it(tmp_path: Path) -> None:
    """When /models and the chat probe both return 404, the message suggests adding /v1."""
    with serve() as endpoint:
        root = endpoint.base_url.removesuffix("/v1")
        job = write_job(tmp_path, base_url=root)
        result = run_cli("run", str(job))
        stats = endpoint.stats

    assert result.returncode == 5
    message = cli_message(result)
    assert "returned 404" in message
    assert f"Try {root}/v1" in message
    assert stats.responses_by_status == {"404": 2}
    assert stats.chat_requests == 0  # the /v1 route never saw a request
    failed = events_named(read_log(tmp_path / "out"), "preflight.failed")
    assert [event["failure_kind"] for event in failed] == ["not_found"]
    assert read_summary(tmp_path / "out")["exit_code"] == 5


# Guarantee 2: the mid-run stop


def test_revoked_key_stops_run_and_rerun_resumes(tmp_path: Path) -> None:
    """A key revoked mid-run stops new requests, and a rerun sends only the prompts left."""
    concurrency = 8
    # The latency keeps all 8 workers in flight when the key is revoked.
    with serve(revoke_after=50, latency_ms=20) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=100, limits={"concurrency": concurrency})
        first = run_cli("run", str(job))
        stats = endpoint.stats

    out = tmp_path / "out"
    assert first.returncode == 3, first.stderr
    rejected = stats.responses_by_status["401"]
    assert stats.chat_succeeded == 50
    assert 1 <= rejected <= concurrency
    assert stats.chat_requests == 50 + rejected
    assert stats.max_in_flight <= concurrency

    states = final_states(out)
    succeeded_first = {prompt_id for prompt_id, record in states.items() if record["status"] == "succeeded"}
    failed_first = [record for record in states.values() if record["status"] == "failed"]
    assert len(succeeded_first) == 50
    assert len(failed_first) == rejected
    assert {record["error"]["kind"] for record in failed_first} == {"auth"}
    summary = read_summary(out)
    assert summary["stopped_reason"] == "auth"
    assert summary["exit_code"] == 3
    assert summary["succeeded"] == 50
    assert summary["failed"] == rejected
    assert summary["not_attempted"] == 100 - 50 - rejected
    assert summary["requests_sent"] == 1 + stats.chat_requests

    message = cli_message(first)
    assert "invalid_api_key" in message
    assert "revoked or rotated" in message
    assert "50 succeeded" in message
    assert FINGERPRINT in message
    assert KEY_ENV in message
    assert "not sent again" in message
    stopped = events_named(read_log(out), "run.stopped")
    assert len(stopped) == 1
    assert stopped[0]["failure_kind"] == "auth"
    assert stopped[0]["status"] == 401

    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=100, limits={"concurrency": concurrency})
        second = run_cli("run", str(job), "--quiet")
        rerun_requests = endpoint.stats.chat_requests

    assert second.returncode == 0, second.stderr
    assert rerun_requests == 50
    second_run_id = read_summary(out)["run_id"]
    resent = {record["id"] for record in read_results(out) if record["run_id"] == second_run_id}
    assert resent.isdisjoint(succeeded_first)
    assert len(resent) == 50
    succeeded_lines = [record["id"] for record in read_results(out) if record["status"] == "succeeded"]
    assert sorted(succeeded_lines) == sorted(f"p{index}" for index in range(100))
    rerun_summary = read_summary(out)
    assert rerun_summary["skipped"] == 50
    assert rerun_summary["succeeded"] == 50


def test_403_mid_run_stops_with_permission(tmp_path: Path) -> None:
    """A 403 on a prompt stops the run with kind permission and exit 3."""
    prompts = [{"id": f"p{index}", "prompt": f"prompt {index}"} for index in range(20)]
    prompts[3] = {"id": "denied", "prompt": "this one is forbidden"}
    rules = (Rule(match="forbidden", status=403),)
    with serve(rules=rules) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, prompts=prompts, limits={"concurrency": 2})
        result = run_cli("run", str(job))
        chat_requests = endpoint.stats.chat_requests

    out = tmp_path / "out"
    assert result.returncode == 3
    # 4 prompts up to the denied one, and at most one more that was in flight.
    assert chat_requests <= 5
    denied = final_states(out)["denied"]
    assert denied["status"] == "failed"
    assert denied["error"]["kind"] == "permission"
    assert denied["error"]["status"] == 403
    summary = read_summary(out)
    assert summary["stopped_reason"] == "permission"
    assert summary["failures_by_kind"] == {"permission": 1}
    assert summary["not_attempted"] >= 15
    message = cli_message(result)
    assert "prompt `denied` returned 403" in message
    assert "not allowed" in message
    assert FINGERPRINT in message


def test_quota_at_preflight_exits_4(tmp_path: Path) -> None:
    """An exhausted quota found by the chat probe stops the run with exit 4 and no prompt sent."""
    with serve(quota_after=0) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, endpoint={"preflight": "chat"})
        result = run_cli("run", str(job))
        stats = endpoint.stats

    assert result.returncode == 4
    assert stats.chat_requests == 1
    message = cli_message(result)
    assert "The chat probe returned 429 insufficient_quota" in message
    assert "no prompt was sent" in message
    summary = read_summary(tmp_path / "out")
    assert summary["stopped_reason"] == "quota"
    assert summary["rate_limited_responses"] == 1
    assert summary["requests_sent"] == 1
    assert summary["not_attempted"] == 5


def test_quota_mid_run_exits_4(tmp_path: Path) -> None:
    """An exhausted quota during the run stops it with exit 4, keeping what succeeded."""
    with serve(quota_after=3) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=20, limits={"concurrency": 1})
        result = run_cli("run", str(job))

    assert result.returncode == 4
    summary = read_summary(tmp_path / "out")
    assert summary["stopped_reason"] == "quota"
    assert summary["succeeded"] == 3
    assert summary["failures_by_kind"] == {"quota": 1}
    assert summary["not_attempted"] == 16
    assert summary["rate_limited_responses"] == 1
    assert "quota is used up" in cli_message(result)


def test_per_day_limit_mid_run_exits_4(tmp_path: Path) -> None:
    """A 429 that requests a wait of hours is a per-day limit, so the run stops with exit 4."""
    prompts = [{"id": "daily", "prompt": "over the daily limit"}, {"id": "other", "prompt": "hello"}]
    rules = (Rule(match="daily", status=429, headers={"retry-after": "7200"}),)
    with serve(rules=rules) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, prompts=prompts, limits={"concurrency": 1})
        result = run_cli("run", str(job))

    assert result.returncode == 4
    summary = read_summary(tmp_path / "out")
    assert summary["stopped_reason"] == "quota"
    assert summary["not_attempted"] == 1
    message = cli_message(result)
    assert "prompt `daily` returned 429 and requests a wait of 2.0 hours" in message
    assert "per-day limit" in message


# Key checks before any request


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("sk-...", "placeholder"),
        ("YOUR_API_KEY", "placeholder"),
        ("$OPENAI_API_KEY", "never expanded"),
        (f"Bearer {TEST_KEY}", "starts with `Bearer`"),
        (TEST_KEY[:12] + "\u200b" + TEST_KEY[12:], "U+200B"),
        ("", "set but empty"),
        (None, "is not set"),
    ],
    ids=["placeholder", "template", "unexpanded", "bearer", "zero-width-space", "empty", "unset"],
)
def test_malformed_key_sends_nothing(tmp_path: Path, key: str | None, expected: str) -> None:
    """A missing or malformed key ends the run with exit 3 before any request."""
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url)
        result = run_cli("run", str(job), env=cli_env(key=key))
        stats = endpoint.stats

    assert result.returncode == 3
    message = cli_message(result)
    assert expected in message
    assert KEY_ENV in message
    assert TEST_KEY not in result.stdout + result.stderr
    assert_nothing_sent(stats)
    assert read_summary(tmp_path / "out")["requests_sent"] == 0


# Models and preflight modes


def test_unknown_model_names_closest(tmp_path: Path) -> None:
    """A model missing from /models ends the run with exit 2 and names the closest models."""
    prompts = [{"id": "a", "prompt": "hello", "model": "gpt-4o-minii"}]
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, prompts=prompts)
        result = run_cli("run", str(job))
        chat_requests = endpoint.stats.chat_requests

    assert result.returncode == 2
    message = cli_message(result)
    assert "`gpt-4o-minii` is not in the model list" in message
    assert "The closest are: gpt-4o-mini" in message
    assert chat_requests == 0
    failed = events_named(read_log(tmp_path / "out"), "preflight.failed")
    assert [event["failure_kind"] for event in failed] == ["not_found"]


def test_preflight_chat_skips_model_list(tmp_path: Path) -> None:
    """`preflight: chat` checks the key with a one-token chat request instead of /models."""
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, endpoint={"preflight": "chat"})
        result = run_cli("run", str(job), "--quiet")
        stats = endpoint.stats

    assert result.returncode == 0, result.stderr
    assert stats.models_requests == 0
    assert stats.chat_requests == 6
    assert read_summary(tmp_path / "out")["requests_sent"] == 6


def test_preflight_off_sends_only_prompts(tmp_path: Path) -> None:
    """`preflight: off` sends the prompts and nothing else."""
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, endpoint={"preflight": "off"})
        result = run_cli("run", str(job), "--quiet")
        stats = endpoint.stats

    assert result.returncode == 0, result.stderr
    assert stats.models_requests == 0
    assert stats.chat_requests == 5
    assert read_summary(tmp_path / "out")["requests_sent"] == 5


def test_preflight_off_still_stops_on_401(tmp_path: Path) -> None:
    """Without a preflight, the first 401 stops the run and is diagnosed like the preflight's."""
    wrong = "sk-wrong-" + "9" * 30 + "beef"
    with serve() as endpoint:
        job = write_job(
            tmp_path, base_url=endpoint.base_url, count=20, endpoint={"preflight": "off"}, limits={"concurrency": 2}
        )
        result = run_cli("run", str(job), env=cli_env(key=wrong))
        chat_requests = endpoint.stats.chat_requests

    assert result.returncode == 3
    assert chat_requests <= 2
    message = cli_message(result)
    assert "rejected the key as invalid" in message
    assert "sk-...beef" in message
    assert "revoked" not in message
    assert read_summary(tmp_path / "out")["stopped_reason"] == "auth"


# The check command


def test_check_good_key(tmp_path: Path) -> None:
    """`check` prints the endpoint, the headers with a fingerprint, the result and the models."""
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url)
        result = run_cli("check", str(job))
        stats = endpoint.stats

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"endpoint:  {endpoint.base_url}" in lines
    headers = next(line for line in lines if line.startswith("headers:"))
    assert f"Authorization: Bearer {FINGERPRINT}" in headers
    assert "OpenAI-Organization" not in headers
    assert "result:    OK (GET /models)" in lines
    models = next(line for line in lines if line.startswith("models:"))
    assert "gpt-4o-mini" in models
    assert TEST_KEY not in result.stdout + result.stderr
    assert stats.models_requests == 1
    assert stats.chat_requests == 0
    assert not (tmp_path / "out").exists()


def test_check_bad_key(tmp_path: Path) -> None:
    """`check` with a key the endpoint rejects exits 3 with the diagnosis."""
    wrong = "sk-wrong-" + "9" * 30 + "beef"
    with serve() as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url)
        result = run_cli("check", str(job), env=cli_env(key=wrong))

    assert result.returncode == 3
    assert "result:    FAILED (exit 3)" in result.stdout.splitlines()
    message = cli_message(result)
    assert "rejected the key as invalid" in message
    assert "sk-...beef" in message
    assert wrong not in result.stdout + result.stderr


def test_check_models_503_retries_then_exits_5(tmp_path: Path) -> None:
    """A /models that keeps returning 503 is retried, then reported with its host and exit 5."""
    with serve(models_status=503) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url)
        result = run_cli("check", str(job))
        models_requests = endpoint.stats.models_requests
        host = endpoint.base_url.split("/")[2]

    assert result.returncode == 5
    assert models_requests == PREFLIGHT_ATTEMPTS
    retries = events_named(stderr_events(result), "preflight.retry")
    assert len(retries) == PREFLIGHT_ATTEMPTS - 1
    assert {event["failure_kind"] for event in retries} == {"server"}
    message = cli_message(result)
    assert f"GET /models at {host} failed after {PREFLIGHT_ATTEMPTS} attempts with 503" in message
    assert "preflight: off" in message


# Guarantee 5: transport safety and secrets


def test_plain_http_to_remote_host_rejected(tmp_path: Path) -> None:
    """A job that would send the key over plain http to a remote host is invalid, exit 2."""
    job = write_job(tmp_path, base_url="http://example.invalid/v1")

    # No key is set: a loader that let the job through would stop at the key check (exit 3),
    # before any network activity, so this test never reaches out to the host.
    result = run_cli("run", str(job), env=cli_env(key=None))

    assert result.returncode == 2
    assert "allow_insecure_http" in result.stderr
    assert "example.invalid" in result.stderr
    assert f"{job}:" in result.stderr
    assert not (tmp_path / "out").exists()


def test_plain_http_from_environment_rejected(tmp_path: Path) -> None:
    """OPENAI_BASE_URL with plain http to a remote host is rejected like a job's base_url."""
    job = write_job(tmp_path, base_url="http://127.0.0.1:9/v1")
    data = yaml.safe_load(job.read_text(encoding="utf-8"))
    del data["endpoint"]["base_url"]
    job.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

    result = run_cli("run", str(job), env=cli_env(key=None, OPENAI_BASE_URL="http://example.invalid/v1"))

    assert result.returncode == 2
    assert "OPENAI_BASE_URL" in result.stderr
    assert "allow_insecure_http" in result.stderr
    assert not (tmp_path / "out").exists()


def test_redirect_is_not_followed(tmp_path: Path) -> None:
    """A 3xx is a server failure with its location logged, and the key never goes there."""
    with serve() as target:
        location = f"{target.base_url}/chat/completions"
        rules = (Rule(match="moved", status=302, headers={"Location": location}),)
        prompts = [{"id": "moved", "prompt": "this one has moved"}, {"id": "fine", "prompt": "hello"}]
        with serve(rules=rules) as endpoint:
            job = write_job(tmp_path, base_url=endpoint.base_url, prompts=prompts, limits={"max_attempts": 2})
            result = run_cli("run", str(job), "--quiet")
        target_stats = target.stats

    out = tmp_path / "out"
    assert result.returncode == 1, result.stderr
    states = final_states(out)
    assert states["moved"]["error"]["kind"] == "server"
    assert states["moved"]["error"]["status"] == 302
    assert states["fine"]["status"] == "succeeded"
    failed = [event for event in events_named(read_log(out), "prompt.failed") if event["prompt_id"] == "moved"]
    assert len(failed) == 1
    assert failed[0]["location"] == location
    assert failed[0]["failure_kind"] == "server"
    assert_nothing_sent(target_stats)
    assert target_stats.authorization_seen == 0


def test_organization_and_project_headers_only_when_set(tmp_path: Path) -> None:
    """OpenAI-Organization and OpenAI-Project go out only when the job sets them."""
    (tmp_path / "plain").mkdir()
    (tmp_path / "scoped").mkdir()
    with serve(organization="org-main", project="proj_main") as endpoint:
        plain = write_job(tmp_path / "plain", base_url=endpoint.base_url)
        plain_result = run_cli("run", str(plain), "--quiet")
        plain_seen = (endpoint.stats.organization_seen, endpoint.stats.project_seen)
        plain_requests = endpoint.stats.models_requests + endpoint.stats.chat_requests

        scoped = write_job(
            tmp_path / "scoped",
            base_url=endpoint.base_url,
            endpoint={"organization": "org-main", "project": "proj_main"},
        )
        scoped_result = run_cli("run", str(scoped), "--quiet")
        scoped_seen = (endpoint.stats.organization_seen, endpoint.stats.project_seen)
        all_requests = endpoint.stats.models_requests + endpoint.stats.chat_requests

    assert plain_result.returncode == 0, plain_result.stderr
    assert plain_requests == 6
    assert plain_seen == (0, 0)
    plain_headers = events_named(read_log(tmp_path / "plain" / "out"), "run.headers")[0]["headers"]
    assert plain_headers["Authorization"] == f"Bearer {FINGERPRINT}"
    assert "OpenAI-Organization" not in plain_headers
    assert "OpenAI-Project" not in plain_headers

    assert scoped_result.returncode == 0, scoped_result.stderr
    assert scoped_seen == (all_requests - plain_requests, all_requests - plain_requests)
    scoped_headers = events_named(read_log(tmp_path / "scoped" / "out"), "run.headers")[0]["headers"]
    assert scoped_headers["OpenAI-Organization"] == "org-main"
    assert scoped_headers["OpenAI-Project"] == "proj_main"
    assert scoped_headers["Authorization"] == f"Bearer {FINGERPRINT}"


def test_key_absent_from_all_output(tmp_path: Path) -> None:
    """No file, log line or terminal output of good, failed and rejected runs contains the key."""
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    key_file = secret_dir / "key"
    key_file.write_bytes(TEST_KEY.encode() + b"\r\n")
    key_file.chmod(0o600)
    runs = tmp_path / "runs"
    outputs: list[str] = []

    def run_in(name: str, *args: str, **job_options: Any) -> None:
        directory = runs / name
        directory.mkdir(parents=True)
        job = write_job(directory, base_url=endpoint.base_url, **job_options)
        result = run_cli(*args, str(job), env=cli_env(key=TEST_KEY))
        outputs.extend([result.stdout, result.stderr])

    rules = (Rule(match="broken", status=500), Rule(match="forbidden", status=403))
    with serve(rules=rules, organization="org-main") as endpoint:
        run_in("good", "run")
        run_in("good-from-file", "run", endpoint={"api_key_file": str(key_file)})
        run_in("failed", "run", prompts=[{"id": "b", "prompt": "broken"}, {"id": "f", "prompt": "fine"}], limits={"max_attempts": 2})
        run_in("permission", "run", prompts=[{"id": "d", "prompt": "forbidden"}])
        run_in("organization", "run", endpoint={"organization": "org-other"})
        run_in("check", "check")
        run_in("check-organization", "check", endpoint={"organization": "org-other"})
    with serve(revoke_after=2) as endpoint:
        run_in("revoked", "run", count=6)

    files = [path for path in runs.rglob("*") if path.is_file()]
    assert len(files) > 20
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert TEST_KEY not in text, path
        assert KEY_BODY not in text, path
    for text in outputs:
        assert TEST_KEY not in text
        assert KEY_BODY not in text
    assert any(FINGERPRINT in text for text in outputs)
