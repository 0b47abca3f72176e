"""The report command, run as a subprocess on the output folder of a real run."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from batcher.endpoint import Rule
from support import read_summary, run_cli, serve, write_job


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return the output folder of a run with a failure, a server retry and a 429 retry."""
    directory = tmp_path_factory.mktemp("report")
    rules = (
        Rule(match="broken", status=500),
        Rule(match="limited", status=429, times=1, headers={"retry-after-ms": "100"}),
    )
    prompts = [{"id": "broken", "prompt": "broken"}, {"id": "limited", "prompt": "limited"}]
    prompts += [{"id": f"ok{index}", "prompt": f"fine {index}"} for index in range(5)]
    with serve(rules=rules) as endpoint:
        job = write_job(directory, base_url=endpoint.base_url, prompts=prompts, limits={"max_attempts": 2})
        result = run_cli("run", str(job), "--quiet")
    assert result.returncode == 1, result.stderr
    return directory / "out"


def table_rows(stdout: str) -> dict[str, str]:
    """Split the report table into {label: value}, where two or more spaces end each label."""
    rows = {}
    for line in stdout.splitlines():
        label, value = re.split(r"\s{2,}", line, maxsplit=1)
        rows[label] = value
    return rows


def test_report_table_shows_counts(run_dir: Path) -> None:
    summary = read_summary(run_dir)

    result = run_cli("report", str(run_dir))

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = table_rows(result.stdout)
    assert rows["run"] == f"{summary['run_id']} (job e2e)"
    assert rows["prompts"] == "7 total: 6 succeeded, 1 failed, 0 skipped, 0 not attempted"
    assert rows["failed by kind"] == "server 1"
    assert rows["retries by kind"] == "rate_limit 1, server 1"
    assert rows["429 responses"] == "1"
    assert rows["requests sent"] == "10"  # 7 prompts, 2 retries and the preflight
    usage = summary["usage"]
    assert usage["total_tokens"] > 0
    assert rows["tokens"] == f"{usage['total_tokens']} ({usage['prompt_tokens']} prompt, {usage['completion_tokens']} completion)"
    assert rows["wall time"] == f"{summary['duration_s']:.1f} s"
    assert rows["achieved rate"] == f"{round(10 / summary['duration_s'] * 60, 1)} requests/min"
    assert rows["stopped"] == "no (ran to the end)"
    assert rows["exit code"] == "1"


def test_report_json_has_every_figure(run_dir: Path) -> None:
    summary = read_summary(run_dir)

    result = run_cli("report", str(run_dir), "--json")

    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["run_id"] == summary["run_id"]
    assert report["total"] == 7
    assert report["succeeded"] == 6
    assert report["failed"] == 1
    assert report["failures_by_kind"] == {"server": 1}
    assert report["retries_by_kind"] == {"rate_limit": 1, "server": 1}
    assert report["rate_limited_responses"] == 1
    assert report["requests_sent"] == 10
    assert report["usage"] == summary["usage"]
    assert report["wall_time_s"] == summary["duration_s"]
    assert report["requests_per_minute"] == round(10 / summary["duration_s"] * 60, 1)
    assert report["stopped_reason"] is None
    assert report["exit_code"] == 1


def test_report_after_quota_stop(tmp_path: Path) -> None:
    with serve(quota_after=2) as endpoint:
        job = write_job(tmp_path, base_url=endpoint.base_url, count=6, limits={"concurrency": 1})
        assert run_cli("run", str(job), "--quiet").returncode == 4

    result = run_cli("report", str(tmp_path / "out"))

    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert rows["prompts"] == "6 total: 2 succeeded, 1 failed, 0 skipped, 3 not attempted"
    assert rows["failed by kind"] == "quota 1"
    assert rows["retries by kind"] == "none"
    assert rows["429 responses"] == "1"
    assert rows["stopped"] == "quota"
    assert rows["exit code"] == "4"


def test_folder_without_summary_exits_2(tmp_path: Path) -> None:
    result = run_cli("report", str(tmp_path))

    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{tmp_path} contains no summary.json" in result.stderr
    assert "Pass the output folder of a run" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_folder_exits_2(tmp_path: Path) -> None:
    result = run_cli("report", str(tmp_path / "absent"))

    assert result.returncode == 2
    assert f"{tmp_path / 'absent'} does not exist" in result.stderr


def test_parent_folder_names_the_runs(run_dir: Path) -> None:
    result = run_cli("report", str(run_dir.parent))

    assert result.returncode == 2
    assert f"these folders in it do: {run_dir}." in result.stderr


def test_results_without_summary_exits_2(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_text('{"id":"p0","status":"succeeded"}\n', encoding="utf-8")

    result = run_cli("report", str(tmp_path))

    assert result.returncode == 2
    assert "no run in it has finished" in result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "cannot be read as JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"run_id": "x", "failures_by_kind": null}', "total, succeeded"),
    ],
    ids=["not-json", "list", "null-field"],
)
def test_invalid_summary_exits_2(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "summary.json").write_text(content, encoding="utf-8")

    result = run_cli("report", str(tmp_path))

    assert result.returncode == 2
    assert expected in result.stderr
    assert "internal error" not in result.stderr
