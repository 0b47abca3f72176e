"""The `report` command: the last run of an output folder, as a table or JSON."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from batcher.errors import JobError
from batcher.jsonl import dumps, loads
from batcher.store import RESULTS_NAME, SUMMARY_NAME

# Summary fields the report reads: the counts must be integers, the others JSON objects.
_COUNT_FIELDS = ("total", "succeeded", "failed", "skipped", "not_attempted", "requests_sent", "rate_limited_responses")
_MAPPING_FIELDS = ("failures_by_kind", "retries_by_kind", "usage")


def load_summary(run_dir: Path) -> dict[str, Any]:
    """Read and check the summary.json of an output folder.

    Raises:
        JobError: the folder or its summary is missing or not a batcher summary (exit 2). The
            message names what to pass instead.
    """
    if not run_dir.exists():
        raise JobError(f"{run_dir} does not exist. Pass the output folder of a run (the job's output_dir, by default runs/<name>).")
    if not run_dir.is_dir():
        raise JobError(f"{run_dir} is not a folder. Pass the output folder of a run, which contains {SUMMARY_NAME}.")

    path = run_dir / SUMMARY_NAME
    try:
        summary = loads(path.read_bytes())
    except FileNotFoundError:
        raise JobError(_no_summary_message(run_dir)) from None
    except (OSError, ValueError) as exc:
        raise JobError(f"{path} cannot be read as JSON ({exc}).") from None

    if not isinstance(summary, dict):
        raise JobError(f"{path} is not a batcher summary: expected a JSON object.")
    invalid = [name for name in _COUNT_FIELDS if not _is_count(summary.get(name))]
    invalid += [name for name in _MAPPING_FIELDS if not isinstance(summary.get(name), dict)]
    if invalid:
        raise JobError(
            f"{path} is not a batcher summary, because these fields are missing or of the wrong type: "
            f"{', '.join(invalid)}. Pass the output folder of a batcher run."
        )
    return summary


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _no_summary_message(run_dir: Path) -> str:
    runs = sorted(str(summary.parent) for summary in run_dir.glob(f"*/{SUMMARY_NAME}"))
    if runs:
        return f"{run_dir} contains no {SUMMARY_NAME}, but these folders in it do: {', '.join(runs)}. Pass one of them."
    if (run_dir / RESULTS_NAME).exists():
        return (
            f"{run_dir} contains {RESULTS_NAME} but no {SUMMARY_NAME}, so no run in it has finished. A run writes "
            f"its summary when it ends, and a killed run writes none. Run the job again to finish it."
        )
    return f"{run_dir} contains no {SUMMARY_NAME}. Pass the output folder of a run (the job's output_dir, by default runs/<name>)."


def build_report(summary: dict[str, Any]) -> dict[str, Any]:
    """Return the report's figures, derived from a summary."""
    duration_s = float(summary.get("duration_s") or 0.0)
    requests = summary["requests_sent"]
    return {
        "run_id": summary.get("run_id"),
        "job": summary.get("job"),
        "started_at": summary.get("started_at"),
        "finished_at": summary.get("finished_at"),
        "total": summary["total"],
        "succeeded": summary["succeeded"],
        "failed": summary["failed"],
        "skipped": summary["skipped"],
        "not_attempted": summary["not_attempted"],
        "failures_by_kind": summary["failures_by_kind"],
        "retries_by_kind": summary["retries_by_kind"],
        "rate_limited_responses": summary["rate_limited_responses"],
        "requests_sent": requests,
        "usage": summary["usage"],
        "wall_time_s": duration_s,
        # Every request of the run, the preflight's included, over its whole wall time.
        # Under a second, a per-minute rate reflects timer resolution more than the run.
        "requests_per_minute": round(requests / duration_s * 60.0, 1) if duration_s >= 1.0 else None,
        "stopped_reason": summary.get("stopped_reason"),
        "exit_code": summary.get("exit_code"),
    }


def _format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items())) or "none"


def _describe_stop(report: dict[str, Any]) -> str:
    if report["stopped_reason"]:
        return str(report["stopped_reason"])
    if report["exit_code"] in (0, 1):
        return "no (ran to the end)"
    return f"before the batch (exit {report['exit_code']}; the log has the reason)"


def show_report(run_dir: Path, *, as_json: bool) -> int:
    """Print the report of the last run in `run_dir` on stdout and return the exit code, 0."""
    report = build_report(load_summary(run_dir))
    if as_json:
        sys.stdout.write(dumps(report) + "\n")
        return 0

    usage = report["usage"]
    rate = report["requests_per_minute"]
    rows = [
        ("run", f"{report['run_id']} (job {report['job']})"),
        ("time", f"{report['started_at']} to {report['finished_at']}"),
        ("wall time", f"{report['wall_time_s']:.1f} s"),
        ("prompts", f"{report['total']} total: {report['succeeded']} succeeded, {report['failed']} failed, "
                    f"{report['skipped']} skipped, {report['not_attempted']} not attempted"),
        ("failed by kind", _format_counts(report["failures_by_kind"])),
        ("retries by kind", _format_counts(report["retries_by_kind"])),
        ("429 responses", str(report["rate_limited_responses"])),
        ("requests sent", str(report["requests_sent"])),
        ("tokens", f"{usage.get('total_tokens', 0)} ({usage.get('prompt_tokens', 0)} prompt, "
                   f"{usage.get('completion_tokens', 0)} completion)"),
        ("achieved rate", "n/a (the run took under a second)" if rate is None else f"{rate} requests/min"),
        ("stopped", _describe_stop(report)),
        ("exit code", str(report["exit_code"])),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0
