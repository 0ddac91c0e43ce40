"""The suite's chart (PNG, matplotlib's Agg backend): objects/s per scenario, and per object size."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, NullFormatter

from bench.figures import Figure, Figures

# (figure key, bar label) of the first panel, top to bottom.
SCENARIO_BARS = (
    ("naive1.objects_per_s", "naive boto3, 1 thread", "#c7c7c7"),
    ("naive16.objects_per_s", "naive boto3, 16 threads", "#9e9e9e"),
    ("noop.objects_per_s", "no-op Celery task .delay()", "#8fbc8f"),
    ("delay.objects_per_s", "put_object.delay()", "#4c72b0"),
    ("batcher.objects_per_s", "Batcher.put_objects()", "#dd8452"),
    ("seaweedfs.naive1.objects_per_s", "SeaweedFS: naive boto3, 1 thread", "#e0e0e0"),
    ("seaweedfs.naive16.objects_per_s", "SeaweedFS: naive boto3, 16 threads", "#bdbdbd"),
    ("seaweedfs.delay.objects_per_s", "SeaweedFS: put_object.delay()", "#8da0cb"),
    ("seaweedfs.batcher.objects_per_s", "SeaweedFS: Batcher.put_objects()", "#f2b48c"),
    ("rabbitmq.delay.objects_per_s", "RabbitMQ broker: put_object.delay()", "#937860"),
)
# (figure key part, legend label, colour) of the second panel's groups.
METHODS = (
    ("naive16", "naive boto3, 16 threads", "#9e9e9e"),
    ("delay", "put_object.delay()", "#4c72b0"),
    ("batcher", "Batcher.put_objects()", "#dd8452"),
)

PLAIN = FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1 else f"{value:g}")


def log_limits(figures: Sequence[Figure]) -> tuple[float, float]:
    """From the decade below the smallest minimum (bars on a log axis start there) to room for labels above."""
    low = min(f.low for f in figures) / 2  # at least half a decade of bar below the smallest
    return 10 ** math.floor(math.log10(low)), max(f.high for f in figures) * 4


def error_bars(figures: Sequence[Figure]) -> list[list[float]]:
    """matplotlib's asymmetric error bars: distance from the median down to min and up to max."""
    return [[f.median - f.low for f in figures], [f.high - f.median for f in figures]]


SizeColumn = tuple[str, int, dict[str, str]]  # label, object bytes, method -> key of its objects/s figure


def draw(figures: Figures, sizes: Sequence[SizeColumn], title: str, path: Path) -> None:
    """Write the PNG; ``sizes`` lists the second panel's columns in order."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 10), height_ratios=(1, 1.2))
    fig.suptitle(title, fontsize=11)

    shown = [(f, label, colour) for key, label, colour in SCENARIO_BARS if (f := figures.get(key)) is not None]
    if shown:
        ys = range(len(shown))
        medians = [f.median for f, _, _ in shown]
        bars = [f for f, _, _ in shown]
        top.barh(ys, medians, xerr=error_bars(bars), color=[c for _, _, c in shown], capsize=4)
        top.set_yticks(list(ys), [label for _, label, _ in shown])
        top.invert_yaxis()
        top.set_xscale("log")
        top.set_xlim(*log_limits(bars))
        top.xaxis.set_major_formatter(PLAIN)
        top.xaxis.set_minor_formatter(NullFormatter())
        top.set_xlabel("objects/s (1 KiB objects; median, bars from min to max)")
        for y, value in zip(ys, medians, strict=True):
            top.annotate(f"{value:,.0f}/s", (value, y), xytext=(6, -3), textcoords="offset points", fontsize=9)
        top.set_title("End to end, first send until every result is ready", fontsize=10)
        top.grid(axis="x", which="both", alpha=0.3)

    width = 0.8 / len(METHODS)
    drawn: list[Figure] = []
    for m, (method, legend, colour) in enumerate(METHODS):
        xs: list[float] = []
        found: list[tuple[Figure, int]] = []
        for column, (_, object_bytes, keys) in enumerate(sizes):
            figure = figures.get(keys.get(method, ""))
            if figure is not None:
                xs.append(column + (m - (len(METHODS) - 1) / 2) * width)
                found.append((figure, object_bytes))
        if not found:
            continue
        drawn += [f for f, _ in found]
        medians = [f.median for f, _ in found]
        bottom.bar(xs, medians, width, yerr=error_bars([f for f, _ in found]), color=colour, label=legend, capsize=3)
        for x, (figure, object_bytes) in zip(xs, found, strict=True):
            mb_per_s = figure.median * object_bytes / 1e6
            where = (x, figure.high)
            bottom.annotate(
                f"{mb_per_s:.3g}\nMB/s", where, xytext=(0, 3), textcoords="offset points", ha="center", fontsize=7
            )
    bottom.set_xticks(range(len(sizes)), [label for label, _, _ in sizes])
    bottom.set_yscale("log")
    if drawn:
        bottom.set_ylim(*log_limits(drawn))
    bottom.yaxis.set_major_formatter(PLAIN)
    bottom.yaxis.set_minor_formatter(NullFormatter())
    bottom.set_ylabel("objects/s (median, bars from min to max)")
    bottom.set_xlabel("object size (payload MB/s above each bar)")
    bottom.set_title("s3batch vs one PutObject per object, by object size", fontsize=10)
    if drawn:
        bottom.legend(loc="upper right", fontsize=9)
    bottom.grid(axis="y", which="both", alpha=0.3)

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
