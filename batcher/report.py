"""The `report` command: the last run of an output folder, as a table or JSON."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from batcher.errors import JobError
from batcher.jsonl import dumps, loads
from batcher.store import SUMMARY_NAME


def load_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / SUMMARY_NAME
    try:
        summary = loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobError(f"{path} does not exist. Pass the output folder of a run (it holds summary.json).") from None
    except (OSError, ValueError) as exc:
        raise JobError(f"{path} cannot be read as JSON ({exc}).") from None
    if not isinstance(summary, dict):
        raise JobError(f"{path} is not a batcher summary (expected a JSON object).")
    return summary


def build_report(summary: dict[str, Any]) -> dict[str, Any]:
    """Return the report's figures, derived from a summary."""
    duration_s = float(summary.get("duration_s") or 0.0)
    requests = int(summary.get("requests_sent") or 0)
    return {
        "run_id": summary.get("run_id"),
        "job": summary.get("job"),
        "started_at": summary.get("started_at"),
        "finished_at": summary.get("finished_at"),
        "total": summary.get("total"),
        "succeeded": summary.get("succeeded"),
        "failed": summary.get("failed"),
        "skipped": summary.get("skipped"),
        "not_attempted": summary.get("not_attempted"),
        "failures_by_kind": summary.get("failures_by_kind", {}),
        "retries_by_kind": summary.get("retries_by_kind", {}),
        "rate_limited_responses": summary.get("rate_limited_responses"),
        "requests_sent": requests,
        "usage": summary.get("usage", {}),
        "wall_time_s": duration_s,
        "requests_per_minute": round(requests / duration_s * 60.0, 1) if duration_s > 0 else None,
        "stopped_reason": summary.get("stopped_reason"),
        "exit_code": summary.get("exit_code"),
    }


def _format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items())) or "none"


def show_report(run_dir: Path, *, as_json: bool) -> int:
    report = build_report(load_summary(run_dir))
    if as_json:
        sys.stdout.write(dumps(report) + "\n")
        return 0

    usage = report["usage"] or {}
    rows = [
        ("run", f"{report['run_id']} (job {report['job']})"),
        ("time", f"{report['started_at']} to {report['finished_at']}, {report['wall_time_s']:.1f} s"),
        ("prompts", f"{report['total']} total: {report['succeeded']} succeeded, {report['failed']} failed, "
                    f"{report['skipped']} skipped, {report['not_attempted']} not attempted"),
        ("failed by kind", _format_counts(report["failures_by_kind"])),
        ("retries by kind", _format_counts(report["retries_by_kind"])),
        ("429 responses", str(report["rate_limited_responses"])),
        ("requests sent", str(report["requests_sent"])),
        ("tokens", f"{usage.get('total_tokens', 0)} ({usage.get('prompt_tokens', 0)} prompt, "
                   f"{usage.get('completion_tokens', 0)} completion)"),
        ("achieved rate", "n/a" if report["requests_per_minute"] is None else f"{report['requests_per_minute']} requests/min"),
        ("stopped", report["stopped_reason"] or "no (ran to the end)"),
        ("exit code", str(report["exit_code"])),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0
