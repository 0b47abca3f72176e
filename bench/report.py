"""The Markdown page `docs/benchmarks.md`: command, machine, one section per benchmark, targets."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

# Libraries whose versions decide the figures; those not installed are left out.
_LIBRARIES = ("batcher", "aiohttp", "yarl", "multidict", "structlog", "openai", "httpx", "httpx2", "orjson", "uvloop")


@dataclass(frozen=True)
class Table:
    """A Markdown table: a header row and rows of already formatted cells."""

    header: tuple[str, ...]
    rows: list[tuple[str, ...]]

    def render(self) -> str:
        lines = [
            "| " + " | ".join(self.header) + " |",
            "|" + "|".join(" --- " for _ in self.header) + "|",
        ]
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
        return "\n".join(lines)


@dataclass
class Section:
    """One benchmark's results: what was run, its tables, and remarks on what they show."""

    title: str
    setup: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        parts = [f"## {self.title}", self.setup]
        parts.extend(table.render() for table in self.tables)
        parts.extend(self.notes)
        return "\n\n".join(parts)


@dataclass(frozen=True)
class TargetCheck:
    """A performance target, the figure measured for it, and whether the figure meets it."""

    target: str
    measured: str
    met: bool


def machine_table(repo_dir: Path) -> Table:
    """Describe the machine and software the figures were measured on."""
    rows = [
        ("CPU", f"{_cpu_model()}, {os.cpu_count()} logical cores"),
        ("memory", _memory_total()),
        ("OS", platform.platform()),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("libraries", ", ".join(_library_versions())),
        ("commit", _git_commit(repo_dir)),
    ]
    return Table(("", "value"), rows)


def render_page(
    *,
    command: str,
    started_at: str,
    duration_s: float,
    load_before: str,
    load_after: str,
    repo_dir: Path,
    method: list[str],
    sections: list[Section],
    targets: list[TargetCheck],
) -> str:
    """Return the whole page as Markdown."""
    target_table = Table(
        ("target", "measured (median)", "met"),
        [(check.target, check.measured, "yes" if check.met else "**no**") for check in targets],
    )
    parts = [
        "# Benchmarks",
        f"Written by `{command}` on {started_at}; the whole run took {duration_s:.0f} s. "
        "Every figure is the median of several runs, with the spread from the lowest to the "
        "highest run in brackets.",
        "## Machine",
        machine_table(repo_dir).render(),
        f"Load average (1, 5, 15 min) before the run: {load_before}; after: {load_after}. "
        "Other processes on the machine add noise to wall times; CPU times are the client's own.",
        "## Method",
        "\n".join(f"- {line}" for line in method),
        "## Targets",
        target_table.render(),
        *(section.render() for section in sections),
    ]
    return "\n\n".join(parts) + "\n"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_total() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _library_versions() -> list[str]:
    versions = []
    for name in _LIBRARIES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return versions


def _git_commit(repo_dir: Path) -> str:
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo_dir), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo_dir), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{commit} with uncommitted changes" if dirty else commit
