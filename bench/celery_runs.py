"""Sending objects through Celery (``task.delay()``) or ``Batcher.put_objects()`` and waiting for every result.

The clock runs from the first send until every result is ready (``ResultSet.join_native``), which for
s3batch means until the batch holding the last object is in S3.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.checks import BenchError
from workers.bulkwait import BulkResultSet


@dataclass
class Sent:
    """The results of one run, in send order, and when each object was sent."""

    results: list[Any]
    values: list[Any]
    sent_at: list[float]  # time.time() just before each send
    send_seconds: float  # sending alone
    seconds: float  # first send to every result ready


def bulk(results: list[Any]) -> BulkResultSet:
    """The results as the set Batcher.put_objects returns, whose join costs no round trip per result (Celery's
    own ResultSet.join_native takes 2.5 s for 10,000 results): the wait is measured, not Celery's bookkeeping."""
    return BulkResultSet(results, app=results[0].app if results else None)


def join(result_set: Any, timeout_s: float, what: str) -> list[Any]:
    """Every result's value in order (``ResultSet.join_native``); raises BenchError naming a failure or the timeout."""
    try:
        values: list[Any] = result_set.join_native(timeout=timeout_s)
    except Exception as exc:  # a task's own error, or a timeout: the run is void either way
        raise BenchError(f"{what}: waiting for the results failed: {type(exc).__name__}: {exc}") from exc
    return values


def send_each(task: Any, keys: Sequence[str], bodies: Sequence[bytes], timeout_s: float, what: str) -> Sent:
    """``task.delay(key, body)`` for every object, then wait for every result."""
    results = []
    sent_at = []
    start = time.perf_counter()
    for key, body in zip(keys, bodies, strict=True):
        sent_at.append(time.time())
        results.append(task.delay(key, body))
    send_seconds = time.perf_counter() - start
    values = join(bulk(results), timeout_s, what)
    return Sent(results, values, sent_at, send_seconds, time.perf_counter() - start)


def send_paced(
    task: Any,
    keys: Sequence[str],
    bodies: Sequence[bytes],
    rate_per_s: float,
    timeout_s: float,
    what: str,
    drain: Callable[[float], None],
) -> Sent:
    """``task.delay(key, body)`` at a steady ``rate_per_s``, then wait for every result.

    Between sends ``drain`` reads result notifications for up to the given seconds, so that a long run does
    not pile them up in Redis's pub/sub buffer. A producer that falls behind sends at once (no catching up in
    bursts beyond that), and the achieved rate is reported.
    """
    results = []
    sent_at = []
    start = time.perf_counter()
    for i, (key, body) in enumerate(zip(keys, bodies, strict=True)):
        due = start + i / rate_per_s
        while (left := due - time.perf_counter()) > 0:
            drain(left)
        sent_at.append(time.time())
        results.append(task.delay(key, body))
    send_seconds = time.perf_counter() - start
    values = join(bulk(results), timeout_s, what)
    return Sent(results, values, sent_at, send_seconds, time.perf_counter() - start)


def put_with_batcher(batcher: Any, keys: Sequence[str], bodies: Sequence[bytes], timeout_s: float, what: str) -> Sent:
    """``batcher.put_objects(...)`` for every object, then wait for every result."""
    start = time.perf_counter()
    sent_at = time.time()
    result_set = batcher.put_objects(zip(keys, bodies, strict=True))
    send_seconds = time.perf_counter() - start
    results = list(result_set.results)
    if len(results) != len(keys):
        raise BenchError(f"{what}: put_objects returned {len(results)} results for {len(keys)} objects")
    values = join(result_set, timeout_s, what)
    return Sent(results, values, [sent_at] * len(keys), send_seconds, time.perf_counter() - start)


def result_drainer(app: Any) -> Callable[[float], None]:
    """A function that reads the result backend's notifications for up to ``seconds`` (sleeps without one)."""
    consumer = getattr(app.backend, "result_consumer", None)
    if consumer is None or not hasattr(consumer, "drain_events"):
        return time.sleep

    def drain(seconds: float) -> None:
        consumer.drain_events(timeout=seconds)

    return drain


def date_done_by_id(results: Sequence[Any]) -> dict[str, float]:
    """Unix time of each joined result's ``date_done`` (when the flush stored SUCCESS).

    The join cached every result's stored state on it (BulkResultSet), so this reads nothing from Redis.
    """
    out: dict[str, float] = {}
    for result in results:
        done = result.date_done
        if done is None:
            raise BenchError(f"no date_done for task {result.id}: was its result joined?")
        out[result.id] = done.timestamp()
    return out


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def forget(sent: Sent) -> None:
    """Drop the run's AsyncResults now (their unsubscribes must not run after the services are gone)."""
    sent.results.clear()
