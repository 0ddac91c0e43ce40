"""The benchmark suite: every scenario side by side on the same local services, median of several runs.

Run from the project root: ``python -m bench.suite`` (``--quick`` for a 2.5-minute smoke run). It starts its
own redis-server, moto S3 server and Celery workers on free loopback ports (and SeaweedFS for the
``seaweedfs`` scenario) and sends nothing anywhere else.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.checks import BenchError
from bench.figures import Figures, print_table
from bench.goals import record_run, size_columns
from bench.outcome import Outcome
from bench.scenarios import QUICK_PLAN, SCENARIOS, Bench, Plan
from bench.services import Services, start_services

RESULTS = Path(__file__).resolve().parent / "results"


def describe(name: str, outcome: Outcome) -> str:
    """One progress line for a scenario's outcome."""
    text = f"{outcome.objects:,} objects in {outcome.seconds:.2f} s = {outcome.objects_per_s:,.0f} objects/s"
    text += f", {outcome.mb_per_s:,.1f} MB/s"
    if outcome.put_calls is not None and not name.endswith(("naive1", "naive16")):
        text += f", {outcome.put_calls} PutObject calls"
    if outcome.verified:
        text += f", {outcome.verified} verified by ranged GET"
    shown = ("send_seconds", "last_success_s", "latency_p50_s", "latency_p99_s", "achieved_rate_per_s", "peak_rss_mib")
    extra = [f"{k} {v:g}" for k, v in outcome.details.items() if k in shown]
    return f"  {name}: {text}" + (f" ({', '.join(extra)})" if extra else "")


def load_batcher() -> tuple[Any | None, str | None]:
    """``workers.Batcher`` (the direct path with Celery results), or None and why not."""
    batcher_cls = getattr(importlib.import_module("workers"), "Batcher", None)
    if batcher_cls is None:
        return None, "workers.Batcher does not exist: the Batcher.put_objects() scenarios are skipped"
    return batcher_cls, None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="runs of every scenario (default 3, 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer objects, one run, about 2.5 minutes")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list of: " + ", ".join(SCENARIOS))
    parser.add_argument("--max-batch-age", type=float, default=2.0, help="S3BATCH_MAX_BATCH_AGE of the workers (s)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (the first one runs beat)")
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes per worker")
    parser.add_argument("--verify", type=int, default=None, help="results read back by range per run (100; 20 quick)")
    parser.add_argument("--json", type=Path, help="where to write the figures (bench/results/suite[-quick].json)")
    parser.add_argument("--png", type=Path, help="where to draw the chart (bench/results/suite[-quick].png)")
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    stem = "suite-quick" if args.quick else "suite"  # a smoke run never overwrites the figures of a full one
    args.json = args.json or RESULTS / f"{stem}.json"
    args.png = args.png or RESULTS / f"{stem}.png"
    args.verify = args.verify if args.verify is not None else (20 if args.quick else 100)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    if min(args.runs, args.workers, args.concurrency) < 1 or args.max_batch_age <= 0:
        parser.error("--runs, --workers and --concurrency must be at least 1, --max-batch-age above 0")
    return args


def versions() -> dict[str, str]:
    names = ("celery", "kombu", "redis", "boto3", "moto")
    return {"python": platform.python_version(), **{n: metadata.version(n) for n in names}}


def run_suite(args: argparse.Namespace, services: Services) -> int:
    # The app reads the environment when it is imported: only now that start_services has set it.
    from batcher.config import Settings
    from bench.noop import noop
    from workers.app import app
    from workers.tasks import put_object

    batcher_cls, skipped = load_batcher()
    plan = QUICK_PLAN if args.quick else Plan()
    settings = Settings.from_env()
    services.start_workers(app, args.workers, args.concurrency)
    bench = Bench(services, app, put_object, noop, batcher_cls, settings, plan, args.verify)
    print(
        f"redis {services.redis_url()}, moto S3 {services.endpoint_url}, {args.workers} workers x "
        f"{args.concurrency} processes; batch age {settings.max_batch_age_s:g} s, at most "
        f"{settings.max_batch_objects:,} objects / {settings.max_batch_bytes / 2**20:g} MiB per batch; "
        f"{args.runs} run(s) of {', '.join(args.scenarios)}"
    )
    if skipped:
        print(f"NOTE: {skipped}")

    figures = Figures()
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    for run in range(args.runs):
        outcomes: dict[str, Outcome] = {}
        for name in args.scenarios:
            t0 = time.monotonic()
            produced = SCENARIOS[name](bench, run)
            for key, outcome in produced.items():
                print(describe(key, outcome))
            print(f"[run {run + 1}/{args.runs}] {name} done in {time.monotonic() - t0:.1f} s")
            outcomes.update(produced)
        record_run(figures, outcomes, bench)
        runs.append({"run": run, "outcomes": {k: o.to_dict() for k, o in outcomes.items()}})

    write_report(args, settings, plan, skipped, figures, runs)
    print(
        f"\nmedian of {args.runs} run(s), min and max; ratios are taken within each run; "
        f"batch age {settings.max_batch_age_s:g} s; {time.monotonic() - started:.0f} s in all\n"
    )
    print_table(figures)
    goals = [f for f in figures if f.goal is not None]
    print(f"\ngoals met (on the median): {sum(bool(f.met) for f in goals)} of {len(goals)}")
    if skipped:
        print(f"NOTE: {skipped}")
    print(f"wrote {args.json}")

    from bench.chart import draw  # matplotlib is slow to import; only once there is something to draw

    title = (
        f"s3batch benchmark suite: {os.cpu_count()} cores, moto S3 and redis-server on loopback, "
        f"{args.workers} workers x {args.concurrency}\nbatch age {settings.max_batch_age_s:g} s, "
        f"median of {args.runs} run(s){' (quick)' if args.quick else ''}"
    )
    draw(figures, size_columns(plan), title, args.png)
    print(f"wrote {args.png}")
    return 0


def write_report(
    args: argparse.Namespace,
    settings: Any,
    plan: Plan,
    skipped: str | None,
    figures: Figures,
    runs: list[dict[str, Any]],
) -> None:
    """Every figure (median, min, max, per-run values, goal) and every run's raw outcomes, as JSON."""
    report = {
        "config": {
            "runs": args.runs,
            "quick": args.quick,
            "scenarios": args.scenarios,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "max_batch_age_s": settings.max_batch_age_s,
            "max_batch_objects": settings.max_batch_objects,
            "max_batch_bytes": settings.max_batch_bytes,
            "plan": dataclasses.asdict(plan),
            "cpus": os.cpu_count(),
            "versions": versions(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "skipped": skipped,
        "figures": figures.to_list(),
        "runs": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    services = start_services(max_batch_age_s=args.max_batch_age)
    try:
        return run_suite(args, services)
    except BenchError as exc:
        print(f"\nABORTED: {exc}", file=sys.stderr)
        for worker in services.workers:
            tail = "\n".join(worker.log().splitlines()[-20:])
            print(f"--- last lines of worker {worker.name}'s log:\n{tail}", file=sys.stderr)
        return 1
    finally:
        services.close()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process the suite started is stopped", file=sys.stderr)
        sys.exit(130)
