"""The benchmarks: start-up, throughput, latency-bound, memory, idle cost and limit adherence."""

from __future__ import annotations

import math
import os
import shutil
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bench.endpoint import EndpointProcess
from bench.peers import (
    BARE,
    BATCHER,
    PEERS,
    SDK,
    PeerFailed,
    PeerRun,
    Workload,
    batcher_command,
    run_batcher_cli,
    run_peer,
)
from bench.procs import run_measured
from bench.report import Section, Table, TargetCheck
from bench.stats import Spread
from bench.workload import KEY_ENV, write_job, write_prompts

# Exit code of a batcher run stopped by SIGTERM after finishing the requests in flight.
SIGTERM_EXIT_CODE = 143
# Environment variables that could send the peers' traffic anywhere but 127.0.0.1.
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
_OPENAI_VARIABLES = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID")


@dataclass(frozen=True)
class Settings:
    """Sizes, repetitions and time limits of the benchmarks."""

    runs: int = 5
    # Repetitions of the benchmarks that take 30 s or more each.
    long_runs: int = 3
    startup_timeout_s: float = 60.0
    throughput_prompts: int = 3000
    throughput_concurrency: int = 64
    throughput_timeout_s: float = 120.0
    latency_prompts: int = 1000
    latency_concurrency: int = 100
    latency_ms: float = 100.0
    latency_timeout_s: float = 60.0
    dry_run_lines: int = 1_000_000
    memory_run_prompts: int = 20_000
    memory_timeout_s: float = 300.0
    idle_prompts: int = 1000
    idle_requests_per_minute: int = 60
    idle_concurrency: int = 64
    idle_s: float = 30.0
    limit_requests_per_minute: int = 3000
    limit_prompts: int = 3300
    limit_concurrency: int = 64
    limit_timeout_s: float = 150.0

    def quick(self) -> Settings:
        """Return a small version that checks the harness in about a minute; its figures mean little."""
        return replace(
            self,
            runs=1,
            long_runs=1,
            throughput_prompts=300,
            latency_prompts=200,
            dry_run_lines=50_000,
            memory_run_prompts=1000,
            idle_prompts=100,
            idle_s=5.0,
            limit_requests_per_minute=1200,
            limit_prompts=150,
        )


@dataclass(frozen=True)
class Context:
    """The key, scratch folder, repository and settings that every benchmark shares."""

    key: str
    work_dir: Path
    repo_dir: Path
    settings: Settings

    @property
    def env(self) -> dict[str, str]:
        """The children's environment: the key added, proxies and OpenAI variables removed."""
        env = {name: value for name, value in os.environ.items() if name not in (*_PROXY_VARIABLES, *_OPENAI_VARIABLES)}
        env[KEY_ENV] = self.key
        # Users' Pythons cache bytecode; without the cache every run would compile batcher again.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        return env

    def endpoint(self, *, latency_ms: float = 0.0, extra_args: Sequence[str] = ()) -> EndpointProcess:
        return EndpointProcess(key=self.key, latency_ms=latency_ms, extra_args=extra_args, cwd=self.repo_dir)

    def workload(
        self,
        name: str,
        *,
        base_url: str,
        prompt_count: int,
        concurrency: int,
        requests_per_minute: int | None = None,
    ) -> Workload:
        folder = self.work_dir / name
        folder.mkdir(exist_ok=True)
        prompts_file = folder / f"prompts-{prompt_count}.jsonl"
        if not prompts_file.exists():
            write_prompts(prompts_file, prompt_count)
        job_file = write_job(
            folder / "job.yaml",
            base_url=base_url,
            prompts_file=prompts_file,
            concurrency=concurrency,
            requests_per_minute=requests_per_minute,
        )
        return Workload(
            base_url=base_url,
            prompts_file=prompts_file,
            job_file=job_file,
            prompt_count=prompt_count,
            concurrency=concurrency,
            env=self.env,
            work_dir=folder,
        )


class Samples:
    """Values of each figure for each peer, in the order the runs happened."""

    def __init__(self) -> None:
        self._values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def add(self, peer: str, figure: str, value: float) -> None:
        self._values[peer][figure].append(value)

    def spread(self, peer: str, figure: str) -> Spread:
        return Spread.of(self._values[peer][figure])

    def median(self, peer: str, figure: str) -> float:
        return self.spread(peer, figure).median

    def values(self, peer: str, figure: str) -> list[float]:
        return list(self._values[peer][figure])


def interleaved(peers: Sequence[str], runs: int) -> Iterator[str]:
    """Yield the peers `runs` times, each round starting one peer later, so no peer always goes first."""
    for round_index in range(runs):
        shift = round_index % len(peers)
        yield from (*peers[shift:], *peers[:shift])


def _run_checked(endpoint: EndpointProcess, peer: str, workload: Workload, *, timeout_s: float) -> PeerRun:
    """Run a peer, then check on the endpoint's counters that every prompt reached it once."""
    endpoint.reset_stats()
    run = run_peer(peer, workload, timeout_s=timeout_s)
    chat_succeeded = endpoint.stats()["chat_succeeded"]
    if chat_succeeded != workload.prompt_count:
        raise PeerFailed(f"the endpoint completed {chat_succeeded} requests of {peer}, expected {workload.prompt_count}")
    return run


def measure_startup(ctx: Context, endpoint: EndpointProcess) -> tuple[Section, Samples]:
    """Time a one-prompt run of each peer: interpreter, imports, set-up and one request."""
    workload = ctx.workload("startup", base_url=endpoint.base_url, prompt_count=1, concurrency=1)
    samples = Samples()
    for peer in interleaved(PEERS, ctx.settings.runs):
        run = _run_checked(endpoint, peer, workload, timeout_s=ctx.settings.startup_timeout_s)
        samples.add(peer, "wall_s", run.measurement.wall_s)
        samples.add(peer, "cpu_s", run.measurement.cpu_s)
        samples.add(peer, "rss_mb", run.measurement.max_rss_mb)

    table = Table(
        ("peer", "wall time (s)", "CPU time (s)", "peak RSS (MB)"),
        [
            (peer, samples.spread(peer, "wall_s").format(), samples.spread(peer, "cpu_s").format(), samples.spread(peer, "rss_mb").format(0))
            for peer in PEERS
        ],
    )
    section = Section(
        "Start-up",
        "One prompt at zero latency: the whole process, from exec to exit. batcher's figure includes "
        "the job checks, the `/models` preflight, the lock and the output files. The other figures "
        "subtract these start-up costs where they say so.",
        [table],
    )
    return section, samples


def measure_throughput(ctx: Context, endpoint: EndpointProcess, startup: Samples) -> tuple[Section, list[TargetCheck]]:
    """Send the same prompts with each peer at zero latency; compare speed and CPU per request."""
    settings = ctx.settings
    count = settings.throughput_prompts
    workload = ctx.workload(
        "throughput", base_url=endpoint.base_url, prompt_count=count, concurrency=settings.throughput_concurrency
    )
    samples = Samples()
    for peer in interleaved(PEERS, settings.runs):
        run = _run_checked(endpoint, peer, workload, timeout_s=settings.throughput_timeout_s)
        measurement = run.measurement
        samples.add(peer, "wall_s", measurement.wall_s)
        samples.add(peer, "send_s", run.send_s)
        samples.add(peer, "rps", count / run.send_s)
        samples.add(peer, "rps_process", count / measurement.wall_s)
        samples.add(peer, "cpu_ms", measurement.cpu_s / count * 1000)
        net_cpu_s = measurement.cpu_s - startup.median(peer, "cpu_s")
        samples.add(peer, "net_cpu_ms", net_cpu_s / count * 1000)
        samples.add(peer, "rss_mb", measurement.max_rss_mb)

    per_peer = Table(
        ("peer", "wall time (s)", "sending (s)", "requests/s", "requests/s, whole process", "CPU per request (ms)", "CPU per request after start-up (ms)", "peak RSS (MB)"),
        [
            (
                peer,
                samples.spread(peer, "wall_s").format(),
                samples.spread(peer, "send_s").format(),
                samples.spread(peer, "rps").format(0),
                samples.spread(peer, "rps_process").format(0),
                samples.spread(peer, "cpu_ms").format(3),
                samples.spread(peer, "net_cpu_ms").format(3),
                samples.spread(peer, "rss_mb").format(0),
            )
            for peer in PEERS
        ],
    )
    ratios = {
        "throughput, batcher / SDK": _ratios(samples, "rps", BATCHER, SDK),
        "throughput, batcher / bare": _ratios(samples, "rps", BATCHER, BARE),
        "CPU per request, batcher / SDK": _ratios(samples, "cpu_ms", BATCHER, SDK),
        "CPU per request, batcher / bare": _ratios(samples, "cpu_ms", BATCHER, BARE),
        "CPU per request after start-up, batcher / bare": _ratios(samples, "net_cpu_ms", BATCHER, BARE),
    }
    ratio_table = Table(("ratio", "value"), [(name, spread.format()) for name, spread in ratios.items()])
    section = Section(
        "Throughput at zero latency",
        f"{count:,} prompts, concurrency {settings.throughput_concurrency}, an endpoint that answers at once. "
        "\"Sending\" is the time each peer reports from its first request to its last response "
        "(batcher: `duration_s` of summary.json, preflight included); requests/s divide the prompts by it. "
        "CPU is user plus system time of the client process from wait4, divided by the prompts; "
        "\"after start-up\" first subtracts the median CPU time of that peer's one-prompt run. "
        "Ratios are taken within each round, then summarised.",
        [per_peer, ratio_table],
    )
    throughput_ratio = ratios["throughput, batcher / SDK"].median
    cpu_ratio = ratios["CPU per request, batcher / bare"].median
    net_cpu_ratio = ratios["CPU per request after start-up, batcher / bare"].median
    targets = [
        TargetCheck("throughput at least 6x the openai SDK's", f"{throughput_ratio:.1f}x", throughput_ratio >= 6.0),
        TargetCheck("CPU per request within 1.3x the bare loop's (whole process)", f"{cpu_ratio:.2f}x", cpu_ratio <= 1.3),
        TargetCheck("CPU per request within 1.3x the bare loop's (after start-up)", f"{net_cpu_ratio:.2f}x", net_cpu_ratio <= 1.3),
    ]
    return section, targets


def _ratios(samples: Samples, figure: str, numerator: str, denominator: str) -> Spread:
    pairs = zip(samples.values(numerator, figure), samples.values(denominator, figure), strict=True)
    return Spread.of(top / bottom for top, bottom in pairs)


def measure_latency_bound(ctx: Context, startup: Samples) -> tuple[Section, list[TargetCheck]]:
    """Send prompts at 100 ms latency with as many in flight as prompts per ideal second."""
    settings = ctx.settings
    count = settings.latency_prompts
    concurrency = settings.latency_concurrency
    ideal_s = math.ceil(count / concurrency) * settings.latency_ms / 1000
    samples = Samples()
    with ctx.endpoint(latency_ms=settings.latency_ms) as endpoint:
        workload = ctx.workload("latency", base_url=endpoint.base_url, prompt_count=count, concurrency=concurrency)
        for peer in interleaved(PEERS, settings.runs):
            run = _run_checked(endpoint, peer, workload, timeout_s=settings.latency_timeout_s)
            samples.add(peer, "wall_s", run.measurement.wall_s)
            samples.add(peer, "send_s", run.send_s)
            samples.add(peer, "send_ideal", run.send_s / ideal_s)
            samples.add(peer, "cpu_s", run.measurement.cpu_s)

    table = Table(
        ("peer", "wall time (s)", "sending (s)", "sending / ideal", "CPU time (s)"),
        [
            (
                peer,
                samples.spread(peer, "wall_s").format(),
                samples.spread(peer, "send_s").format(),
                samples.spread(peer, "send_ideal").format(),
                samples.spread(peer, "cpu_s").format(),
            )
            for peer in PEERS
        ],
    )
    section = Section(
        "Latency-bound efficiency",
        f"{count:,} prompts at {settings.latency_ms:.0f} ms latency with concurrency {concurrency}: "
        f"the ideal is {ideal_s:.1f} s of sending. Wall time adds start-up.",
        [table],
    )
    startup_s = startup.median(BATCHER, "wall_s")
    wall_s = samples.median(BATCHER, "wall_s")
    send_ratio = samples.median(BATCHER, "send_ideal")
    allowed_s = 1.2 * ideal_s + startup_s
    targets = [
        TargetCheck(
            f"{count:,} prompts at {settings.latency_ms:.0f} ms within 1.2x the ideal {ideal_s:.1f} s plus start-up "
            f"({startup_s:.2f} s), so {allowed_s:.2f} s of wall time",
            f"{wall_s:.2f} s",
            wall_s <= allowed_s,
        ),
        TargetCheck(
            f"the same, sending time alone within 1.2x the ideal {ideal_s:.1f} s",
            f"{send_ratio:.2f}x",
            send_ratio <= 1.2,
        ),
    ]
    return section, targets


def measure_memory(ctx: Context) -> tuple[Section, list[TargetCheck]]:
    """Measure batcher's peak RSS for a dry run of a huge prompts file and for a long run."""
    settings = ctx.settings
    samples = Samples()

    dry_folder = ctx.work_dir / "dry-run"
    dry_folder.mkdir(exist_ok=True)
    prompts_file = write_prompts(dry_folder / "prompts.jsonl", settings.dry_run_lines)
    # The dry run sends nothing; the job still names an endpoint, which is never called.
    job_file = write_job(dry_folder / "job.yaml", base_url="http://127.0.0.1:9/v1", prompts_file=prompts_file, concurrency=64)
    dry = Workload("http://127.0.0.1:9/v1", prompts_file, job_file, settings.dry_run_lines, 64, ctx.env, dry_folder)
    for _ in range(settings.long_runs):
        measurement, _summary = run_batcher_cli(dry, timeout_s=settings.memory_timeout_s, extra_args=("--dry-run",))
        if not measurement.ok:
            raise PeerFailed(f"the dry run exited with code {measurement.exit_code}: {measurement.stderr[-500:]!r}")
        samples.add("dry", "wall_s", measurement.wall_s)
        samples.add("dry", "rss_mb", measurement.max_rss_mb)
    prompts_file.unlink()

    count = settings.memory_run_prompts
    with ctx.endpoint() as endpoint:
        workload = ctx.workload("memory", base_url=endpoint.base_url, prompt_count=count, concurrency=64)
        for _ in range(settings.long_runs):
            run = _run_checked(endpoint, BATCHER, workload, timeout_s=settings.memory_timeout_s)
            samples.add("run", "wall_s", run.measurement.wall_s)
            samples.add("run", "rss_mb", run.measurement.max_rss_mb)
    shutil.rmtree(workload.work_dir, ignore_errors=True)

    table = Table(
        ("batcher run", "wall time (s)", "peak RSS (MB)"),
        [
            (f"`--dry-run` over {settings.dry_run_lines:,} prompts-file lines", samples.spread("dry", "wall_s").format(), samples.spread("dry", "rss_mb").format(0)),
            (f"{count:,} prompts sent at zero latency, concurrency 64", samples.spread("run", "wall_s").format(), samples.spread("run", "rss_mb").format(0)),
        ],
    )
    section = Section("Memory", "Peak RSS is `ru_maxrss` of the batcher process, from wait4.", [table])
    dry_rss = samples.median("dry", "rss_mb")
    run_rss = samples.median("run", "rss_mb")
    targets = [
        TargetCheck(f"peak RSS of a dry run over {settings.dry_run_lines:,} lines under 150 MB", f"{dry_rss:.0f} MB", dry_rss < 150),
        TargetCheck(f"peak RSS of a {count:,}-prompt run under 150 MB", f"{run_rss:.0f} MB", run_rss < 150),
    ]
    return section, targets


def measure_idle(ctx: Context) -> tuple[Section, list[TargetCheck]]:
    """Measure batcher's CPU while its workers wait on a low request rate, then stop it with SIGTERM."""
    settings = ctx.settings
    rpm = settings.idle_requests_per_minute
    # Two reads of the CPU time, after start-up and before SIGTERM, give the cost of waiting alone.
    first_mark_s = min(5.0, settings.idle_s / 5)
    last_mark_s = settings.idle_s - 1.0
    samples = Samples()
    with ctx.endpoint() as endpoint:
        workload = ctx.workload(
            "idle", base_url=endpoint.base_url, prompt_count=settings.idle_prompts,
            concurrency=settings.idle_concurrency, requests_per_minute=rpm,
        )
        for _ in range(settings.long_runs):
            measurement, summary = run_batcher_cli(
                workload,
                timeout_s=settings.idle_s + 30.0,
                terminate_after_s=settings.idle_s,
                cpu_marks_at_s=(first_mark_s, last_mark_s),
            )
            if measurement.exit_code != SIGTERM_EXIT_CODE or summary is None:
                raise PeerFailed(
                    f"batcher stopped by SIGTERM exited with code {measurement.exit_code}, "
                    f"expected {SIGTERM_EXIT_CODE} and a summary: {measurement.stderr[-500:]!r}"
                )
            if len(measurement.cpu_marks) != 2:
                raise PeerFailed("the CPU time of the waiting batcher process could not be read from /proc")
            (first_s, first_cpu_s), (last_s, last_cpu_s) = measurement.cpu_marks
            samples.add(BATCHER, "wall_s", measurement.wall_s)
            samples.add(BATCHER, "cpu_s", measurement.cpu_s)
            samples.add(BATCHER, "cpu_per_min", measurement.cpu_s / measurement.wall_s * 60)
            samples.add(BATCHER, "waiting_cpu_per_min", (last_cpu_s - first_cpu_s) / (last_s - first_s) * 60)
            samples.add(BATCHER, "requests", summary["requests_sent"])

    table = Table(
        ("wall time (s)", "requests sent", "CPU time (s)", "CPU s per minute, whole run", "CPU s per minute while waiting"),
        [
            (
                samples.spread(BATCHER, "wall_s").format(1),
                samples.spread(BATCHER, "requests").format(0),
                samples.spread(BATCHER, "cpu_s").format(),
                samples.spread(BATCHER, "cpu_per_min").format(),
                samples.spread(BATCHER, "waiting_cpu_per_min").format(3),
            )
        ],
    )
    section = Section(
        "Idle cost while waiting on a rate limit",
        f"{settings.idle_prompts:,} prompts with `requests_per_minute: {rpm}` and concurrency {settings.idle_concurrency}, "
        f"so nearly every worker waits. SIGTERM after {settings.idle_s:.0f} s; every run exited with "
        f"{SIGTERM_EXIT_CODE} and wrote its summary. \"While waiting\" is the CPU time read from "
        f"/proc at {first_mark_s:.0f} s and at {last_mark_s:.0f} s, so start-up and shutdown are left out; "
        "the whole-run figure includes them.",
        [table],
    )
    waiting = samples.median(BATCHER, "waiting_cpu_per_min")
    targets = [
        TargetCheck(
            "near-zero CPU while waiting on a rate limit: at most 0.6 CPU s per minute (1% of a core)",
            f"{waiting:.3f} CPU s per minute",
            waiting <= 0.6,
        )
    ]
    return section, targets


def measure_limit_adherence(ctx: Context) -> tuple[Section, list[TargetCheck]]:
    """Run batcher with the job's request limit equal to the endpoint's; count 429s and the rate."""
    settings = ctx.settings
    rpm = settings.limit_requests_per_minute
    rps = math.ceil(rpm / 60)
    samples = Samples()
    for _ in range(settings.long_runs):
        # A fresh endpoint per run, so that no run inherits another's window.
        with ctx.endpoint(extra_args=("--rpm", str(rpm), "--rps", str(rps))) as endpoint:
            workload = ctx.workload(
                "limits", base_url=endpoint.base_url, prompt_count=settings.limit_prompts,
                concurrency=settings.limit_concurrency, requests_per_minute=rpm,
            )
            run = run_peer(BATCHER, workload, timeout_s=settings.limit_timeout_s)
            summary = run.summary
            assert summary is not None
            achieved_per_min = summary["requests_sent"] / summary["duration_s"] * 60
            samples.add(BATCHER, "rate_limited", summary["rate_limited_responses"])
            samples.add(BATCHER, "achieved", achieved_per_min)
            samples.add(BATCHER, "fraction", achieved_per_min / rpm)
            samples.add(BATCHER, "duration_s", summary["duration_s"])

    table = Table(
        ("duration (s)", "429 responses", "achieved requests per minute", "achieved / limit"),
        [
            (
                samples.spread(BATCHER, "duration_s").format(1),
                samples.spread(BATCHER, "rate_limited").format(0),
                samples.spread(BATCHER, "achieved").format(0),
                samples.spread(BATCHER, "fraction").format(3),
            )
        ],
    )
    section = Section(
        "Limit adherence",
        f"{settings.limit_prompts:,} prompts, concurrency {settings.limit_concurrency}, `requests_per_minute: {rpm}` in the job; "
        f"the endpoint runs `batcher serve --rpm {rpm} --rps {rps}`, so it also rejects more than ceil(rpm / 60) "
        "requests in any rolling second. The achieved rate is `requests_sent / duration_s` of summary.json, "
        "the preflight included.",
        [table],
    )
    total_429 = sum(samples.values(BATCHER, "rate_limited"))
    fraction = samples.median(BATCHER, "fraction")
    targets = [
        TargetCheck("zero 429s when the job's limit equals the endpoint's", f"{total_429:.0f} in all runs", total_429 == 0),
        TargetCheck("at least 95% of the allowed rate achieved", f"{fraction:.1%}", fraction >= 0.95),
    ]
    return section, targets


def check_batcher_loads_jobs(ctx: Context) -> None:
    """Fail early, before minutes of benchmarks, if `batcher run --dry-run` cannot load the job."""
    folder = ctx.work_dir / "smoke"
    folder.mkdir(exist_ok=True)
    prompts_file = write_prompts(folder / "prompts.jsonl", 3)
    job_file = write_job(folder / "job.yaml", base_url="http://127.0.0.1:9/v1", prompts_file=prompts_file, concurrency=1)
    measurement = run_measured(
        [*batcher_command(), "run", str(job_file), "--dry-run"], env=ctx.env, cwd=folder, timeout_s=60
    )
    if not measurement.ok:
        raise PeerFailed(f"`batcher run --dry-run` failed with exit code {measurement.exit_code}: {measurement.stderr[-800:]}")
