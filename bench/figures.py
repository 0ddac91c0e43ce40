"""The suite's figures: one value per run each, summarised as median, min and max and checked against a goal."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Goal:
    """A target the median must meet: ``op`` is ">=" or "<="."""

    op: str
    target: float

    def met(self, value: float) -> bool:
        return value >= self.target if self.op == ">=" else value <= self.target

    def __str__(self) -> str:
        return f"{self.op} {format_value(self.target)}"


@dataclass
class Figure:
    """One measured quantity across runs (``values[i]`` is from run ``i``)."""

    key: str
    label: str
    unit: str
    goal: Goal | None = None
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def met(self) -> bool | None:
        """Whether the median meets the goal (None without a goal)."""
        return None if self.goal is None else self.goal.met(self.median)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "values": self.values,
            "goal": None if self.goal is None else {"op": self.goal.op, "target": self.goal.target},
            "met": self.met,
        }


class Figures:
    """Figures in the order they were first recorded; a figure's values are only ever appended."""

    def __init__(self) -> None:
        self._by_key: dict[str, Figure] = {}

    def add(self, key: str, label: str, unit: str, value: float, goal: Goal | None = None) -> None:
        figure = self._by_key.setdefault(key, Figure(key, label, unit, goal))
        figure.values.append(value)

    def get(self, key: str) -> Figure | None:
        return self._by_key.get(key)

    def __iter__(self) -> Iterator[Figure]:
        return iter(self._by_key.values())

    def to_list(self) -> list[dict[str, Any]]:
        return [figure.to_dict() for figure in self]


def format_value(value: float) -> str:
    """Few significant digits, thousands separated: 12,345 / 123 / 12.3 / 1.23 / 0.123."""
    if math.isnan(value):
        return "nan"
    size = abs(value)
    if size >= 100 or (size >= 1 and float(value).is_integer()):
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def table_lines(figures: Figures) -> list[str]:
    """The final table: figure, unit, median, min, max, goal, met (on the median)."""
    header = ("figure", "unit", "median", "min", "max", "goal", "met")
    rows = [
        (
            f.label,
            f.unit,
            format_value(f.median),
            format_value(f.low),
            format_value(f.high),
            "" if f.goal is None else str(f.goal),
            {None: "", True: "yes", False: "NO"}[f.met],
        )
        for f in figures
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    left_aligned = {0, 1}

    def line(row: tuple[str, ...]) -> str:
        cells = (
            c.ljust(w) if i in left_aligned else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        return "  ".join(cells).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(row) for row in rows)]


def print_table(figures: Figures, out: Callable[[str], None] = print) -> None:
    for text in table_lines(figures):
        out(text)
