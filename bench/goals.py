"""Which figures the suite reports, with their goals, and which of them the chart's size panel shows."""

from __future__ import annotations

from bench.figures import Figures, Goal
from bench.outcome import Outcome
from bench.scenarios import KIB, Bench, Plan, size_label

PUT_CALL_GOAL = 2  # PutObject calls for 10,000 objects of 1 KiB (one batch holds 10,000)


def record_run(figures: Figures, outcomes: dict[str, Outcome], bench: Bench) -> None:
    """Add one run's figures; every ratio is between outcomes of this same run."""
    plan, age = bench.plan, bench.settings.max_batch_age_s

    def rate(name: str, label: str) -> None:
        if name in outcomes:
            figures.add(f"{name}.objects_per_s", label, "objects/s", outcomes[name].objects_per_s)

    def ratio(key: str, label: str, num: str, den: str, goal: Goal | None = None) -> None:
        if num in outcomes and den in outcomes:
            value = outcomes[num].objects_per_s / outcomes[den].objects_per_s
            figures.add(key, label, "ratio", value, goal)

    def calls(name: str, label: str, goal: Goal | None) -> None:
        """PutObject calls per 10,000 objects (the run's calls scaled to 10,000 objects)."""
        if name in outcomes:
            o = outcomes[name]
            label = f"{label}: PutObject calls per 10,000 objects ({o.put_calls} for {o.objects:,})"
            figures.add(f"{name}.put_calls", label, "calls", (o.put_calls or 0) * 10_000 / o.objects, goal)

    rate("naive1", "naive boto3, 1 thread")
    rate("naive16", "naive boto3, 16 threads")
    rate("noop", "no-op task .delay()")
    rate("delay", "put_object.delay()")
    ratio("delay.vs_noop", "put_object.delay() / no-op task", "delay", "noop", Goal(">=", 0.70))
    ratio("delay.vs_naive16", "put_object.delay() / naive 16 threads", "delay", "naive16", Goal(">=", 1.0))
    # delay() closes a batch every MAX_BATCH_AGE at the rate it gets: its calls are shown, the goal is the Batcher's.
    calls("delay", f"put_object.delay() at MAX_BATCH_AGE {age:g} s", None)
    rate("batcher", "Batcher.put_objects()")
    ratio("batcher.vs_naive16", "Batcher.put_objects() / naive 16 threads", "batcher", "naive16", Goal(">=", 25))
    calls("batcher", "Batcher.put_objects()", Goal("<=", PUT_CALL_GOAL))
    if "paced" in outcomes:
        d = outcomes["paced"].details
        label = f"delay() at {plan.paced_rate_per_s:g}/s"
        figures.add("paced.rate", f"{label}: rate achieved", "objects/s", d["achieved_rate_per_s"])
        figures.add("paced.p50", f"{label}: send -> SUCCESS p50", "s", d["latency_p50_s"])
        figures.add("paced.p99", f"{label}: send -> SUCCESS p99", "s", d["latency_p99_s"], Goal("<=", age + 1))
    if "flush" in outcomes:
        o = outcomes["flush"]
        label = f"flush of {o.payload_bytes / 2**20:,.0f} MiB batch"
        figures.add("flush.mb_per_s", label, "MB/s", o.mb_per_s)
        figures.add("flush.peak_rss", f"{label}: peak RSS", "MiB", o.details["peak_rss_mib"], Goal("<=", 128))
    rate("seaweedfs.naive1", "SeaweedFS: naive boto3, 1 thread")
    rate("seaweedfs.naive16", "SeaweedFS: naive boto3, 16 threads")
    rate("seaweedfs.delay", "SeaweedFS: put_object.delay()")
    rate("seaweedfs.batcher", "SeaweedFS: Batcher.put_objects()")
    ratio("seaweedfs.delay.vs_naive16", "SeaweedFS: delay() / naive 16 threads", "seaweedfs.delay", "seaweedfs.naive16")
    ratio(
        "seaweedfs.batcher.vs_naive16",
        "SeaweedFS: Batcher / naive 16 threads",
        "seaweedfs.batcher",
        "seaweedfs.naive16",
    )
    calls("seaweedfs.batcher", "SeaweedFS: Batcher.put_objects()", None)
    rate("rabbitmq.delay", "RabbitMQ broker: put_object.delay()")
    ratio("rabbitmq.delay.vs_redis", "RabbitMQ broker: delay() / Redis broker delay()", "rabbitmq.delay", "delay")
    for size in plan.sizes:
        tag, sl = f"size{size.size}", size.label
        for method, label in (("naive16", "naive 16 threads"), ("delay", "delay()"), ("batcher", "Batcher")):
            name = f"{tag}.{method}"
            if name in outcomes:
                figures.add(f"{name}.objects_per_s", f"{sl}: {label}", "objects/s", outcomes[name].objects_per_s)
                figures.add(f"{name}.mb_per_s", f"{sl}: {label}", "MB/s", outcomes[name].mb_per_s)
        ratio(f"{tag}.delay.vs_naive16", f"{sl}: delay() / naive 16 threads", f"{tag}.delay", f"{tag}.naive16")
        ratio(f"{tag}.batcher.vs_naive16", f"{sl}: Batcher / naive 16 threads", f"{tag}.batcher", f"{tag}.naive16")


def size_columns(plan: Plan) -> list[tuple[str, int, dict[str, str]]]:
    """The chart's per-size columns; 1 KiB comes from scenarios 1, 3 and 4."""
    methods = ("naive16", "delay", "batcher")
    columns = [
        (size_label(s.size), s.size, {m: f"size{s.size}.{m}.objects_per_s" for m in methods}) for s in plan.sizes
    ]
    columns.append(("1 KiB", KIB, {m: f"{m}.objects_per_s" for m in methods}))
    return sorted(columns, key=lambda column: column[1])
