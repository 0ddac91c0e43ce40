"""Prometheus figures kept in Redis by the flushes, and the collector that reads them at scrape time.

Every worker's flush adds what it did to the same Redis hash, so one scrape of one exporter sees the
whole deployment, however many workers there are and whichever of them did the work. Writing costs one
script call per finished batch (plus one read of that lane's counters); a scrape costs three commands
whatever the number of partitions and lanes (``SCRAPE_COMMANDS``).

What the staging figures mean: objects and bytes staged, batches in flight and dead letters are what the
lane held when a flush last finished one of its batches (idle ticks write nothing, and producers do not write
here: a lane's figures change with its next batch, at most about S3BATCH_MAX_BATCH_AGE later); the age of the
oldest staged object is live, from the index that finds due lanes.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.commands.core import Script

from batcher.config import Settings
from batcher.keys import IndexKeys
from batcher.partitions import Partition, partition_id_of

log = logging.getLogger(__name__)

SCRAPE_COMMANDS = 3  # partitions, the metrics hash, the due index: one pipeline
OUTCOMES = ("uploaded", "retried", "dead_lettered", "rekeyed")
LABELS = ["bucket", "prefix"]


@dataclass(frozen=True)
class Histogram:
    """A histogram kept as one counter per bucket (not cumulative: an observation adds to one field) and a sum."""

    name: str
    help: str
    bounds: tuple[float, ...]
    scale: float = 1.0
    """What the stored sum is in, per exported unit (1000: milliseconds stored, seconds exported)."""

    def slot(self, value: float) -> int:
        """The index of the bucket ``value`` falls in (len(bounds) for +Inf)."""
        return bisect_left(self.bounds, value)


BATCH_OBJECTS = Histogram("s3batch_batch_objects", "Objects per uploaded batch.",
                          (1, 10, 100, 1000, 2500, 5000, 10000, 50000, 100000))  # fmt: skip
BATCH_BYTES = Histogram("s3batch_batch_bytes", "Object bytes per uploaded batch (the tar is a little larger).",
                        (2**12, 2**16, 2**20, 2**22, 2**24, 2**26, 2**28, 2**30, 5 * 2**30))  # fmt: skip
FLUSH_SECONDS = Histogram(
    "s3batch_flush_duration_seconds", "Seconds from claiming a batch to its upload being recorded (one flush).",
    (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300), scale=1000,
)  # fmt: skip
LATENCY_SECONDS = Histogram(
    "s3batch_staged_to_uploaded_seconds", "Seconds from an object's staging to its batch being in S3, per object.",
    (0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300, 900, 3600), scale=1000,
)  # fmt: skip
HISTOGRAMS = (BATCH_OBJECTS, BATCH_BYTES, FLUSH_SECONDS, LATENCY_SECONDS)

# Add to the counters of one partition, raise its "latest" fields, and replace a lane's figures unless a newer
# snapshot is there already (two batches of a lane may finish in either order).
# KEYS: the metrics hash   ARGV: lane, figures ('' for none), n, n (field, value) to raise, (field, add)...
_RECORD = Script(
    cast(Any, None),
    b"""
if ARGV[2] ~= '' then
  local old = redis.call('HGET', KEYS[1], ARGV[1])
  if not old or tonumber(string.match(old, '^%d+')) <= tonumber(string.match(ARGV[2], '^%d+')) then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  end
end
local i = 4
for _ = 1, tonumber(ARGV[3]) do
  if tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0') < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  i = i + 2
end
while i < #ARGV do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
return 1
""",
)

# A lane's figures, in this order after the time they were read at (ms), space-separated.
_LANE_FIGURES = ("queued_objects", "staged_bytes", "batches_in_flight", "dead_letters", "oldest_staged_ms",
                 "oldest_waiting_ms")  # fmt: skip


@dataclass(frozen=True)
class Uploaded:
    """What one uploaded batch adds to the figures."""

    objects: int
    size_bytes: int
    tar_bytes: int
    put_requests: int
    seconds: float
    staged_ms: Sequence[int]
    """The staging time of each object whose head the flush read (a recovered batch's may be unknown)."""


class Recorder:
    """Writes what the flushes do into Redis; a failure to write is logged, never raised (a figure is not worth a
    batch)."""

    def __init__(self, client: Any, keys: IndexKeys) -> None:
        self.client = client
        self.keys = keys

    def uploaded(self, lane: str, batch: Uploaded, totals: Mapping[str, int] | None, now_ms: int) -> None:
        """Count an uploaded batch of ``lane`` (once: the flush whose drop removed it), with the lane's figures."""
        adds: dict[str, float] = {
            "uploaded_batches": 1, "uploaded_objects": batch.objects, "uploaded_bytes": batch.size_bytes,
            "uploaded_tar_bytes": batch.tar_bytes, "put_requests": batch.put_requests, "outcome:uploaded": 1,
        }  # fmt: skip
        _observe(adds, BATCH_OBJECTS, [batch.objects])
        _observe(adds, BATCH_BYTES, [batch.size_bytes])
        _observe(adds, FLUSH_SECONDS, [batch.seconds])
        _observe(adds, LATENCY_SECONDS, [max(0, now_ms - ms) / 1000 for ms in batch.staged_ms])
        self._write(lane, adds, totals, now_ms, {"last_upload_ms": now_ms})

    def outcome(self, lane: str, outcome: str, totals: Mapping[str, int] | None, now_ms: int) -> None:
        """Count a batch that was not uploaded this time (``OUTCOMES``), with the lane's figures."""
        self._write(lane, {f"outcome:{outcome}": 1}, totals, now_ms, {})

    def _write(
        self, lane: str, adds: Mapping[str, float], totals: Mapping[str, int] | None, now_ms: int,
        latest: Mapping[str, int],
    ) -> None:  # fmt: skip
        partition_id = partition_id_of(lane)
        figures = (
            "" if totals is None else " ".join(str(v) for v in [now_ms, *(totals.get(n, 0) for n in _LANE_FIGURES)])
        )
        args: list[Any] = [lane, figures, len(latest)]
        for name, value in latest.items():
            args += [f"{partition_id}|{name}", value]
        for name, add in adds.items():
            if add:
                args += [f"{partition_id}|{name}", round(add)]
        try:
            _RECORD(keys=[self.keys.metrics], args=args, client=self.client)
        except redis.RedisError as exc:
            log.warning("s3batch could not record metrics for lane %s: %s", lane, exc)


def _observe(adds: dict[str, float], histogram: Histogram, values: Iterable[float]) -> None:
    for value in values:
        slot, total = f"{histogram.name}:{histogram.slot(value)}", f"{histogram.name}:sum"
        adds[slot] = adds.get(slot, 0) + 1
        adds[total] = adds.get(total, 0) + value * histogram.scale


# ---- the collector ----


class S3BatchCollector(Collector):
    """Reads the figures of every partition from Redis at each scrape (``SCRAPE_COMMANDS`` commands)."""

    def __init__(self, client: Any, settings: Settings, keys: IndexKeys | None = None) -> None:
        self.client = client
        self.settings = settings
        self.keys = keys or IndexKeys()

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("s3batch_redis_up", "1 when this scrape could read the staging Redis, else 0.")
        try:
            raw = self._read()
        except redis.RedisError as exc:
            log.warning("s3batch metrics: could not read Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._settings_gauges()
        yield from _families(*raw, now_ms=int(time.time() * 1000))

    def _read(self) -> tuple[dict[str, Partition], dict[str, dict[str, int]], dict[str, list[int]], list[Any]]:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.partitions)
        pipe.hgetall(self.keys.metrics)
        pipe.zrange(self.keys.due, 0, -1, withscores=True)
        partitions_raw, metrics_raw, due = pipe.execute()
        partitions = {k.decode(): Partition.decode(v) for k, v in partitions_raw.items()}
        counters: dict[str, dict[str, int]] = defaultdict(dict)
        lanes: dict[str, list[int]] = {}
        for field, value in metrics_raw.items():
            owner, bar, name = field.decode().partition("|")
            if bar:  # a partition's counter
                counters[owner][name] = int(value)
            else:  # a lane's figures
                lanes[owner] = [int(x) for x in value.split()]
        return partitions, counters, lanes, due

    def _settings_gauges(self) -> Iterator[Metric]:
        s = self.settings
        for name, help_text, value in (
            ("s3batch_staged_bytes_limit", "S3BATCH_MAX_STAGED_BYTES: what one lane may hold.", s.max_staged_bytes),
            ("s3batch_max_batch_age_seconds", "S3BATCH_MAX_BATCH_AGE.", s.max_batch_age_s),
            ("s3batch_flush_interval_seconds", "Seconds between the beat's flush ticks.", s.flush_interval_s),
        ):
            yield GaugeMetricFamily(name, help_text, value=value)


def _families(
    partitions: Mapping[str, Partition],
    counters: Mapping[str, Mapping[str, int]],
    lanes: Mapping[str, list[int]],
    due: Sequence[tuple[bytes, float]],
    *,
    now_ms: int,
) -> Iterator[Metric]:
    """The metric families of every known partition, from what ``S3BatchCollector._read`` returned."""
    staged: dict[str, Counter[str]] = defaultdict(Counter)
    by_lane = {lane: dict(zip(_LANE_FIGURES, values[1:], strict=False)) for lane, values in lanes.items()}
    for lane, figures in by_lane.items():
        row = staged[partition_id_of(lane)]
        for name in ("queued_objects", "staged_bytes", "batches_in_flight", "dead_letters"):
            row[name] += figures.get(name, 0)
        row["fullest_lane_bytes"] = max(row["fullest_lane_bytes"], figures.get("staged_bytes", 0))
        _keep_oldest(row, "oldest_waiting_ms", figures.get("oldest_waiting_ms", 0))
    for lane_raw, score in due:  # live: the lanes with queued objects, scored by the oldest one's staging time
        lane = lane_raw.decode()
        row = staged[partition_id_of(lane)]
        # 0 or 1: the lane holds a full batch, due whatever its age; its last figures tell the age
        oldest_ms = int(score) if score > 1 else by_lane.get(lane, {}).get("oldest_staged_ms", 0)
        _keep_oldest(row, "oldest_staged_ms", oldest_ms)
        _keep_oldest(row, "oldest_waiting_ms", oldest_ms)
    gauges = {
        "staged_objects": ("Objects staged and not yet in a batch.", "queued_objects"),
        "staged_bytes": ("Bytes held in staging (queued and in claimed batches).", "staged_bytes"),
        "fullest_lane_staged_bytes": ("Staged bytes of the partition's fullest lane (S3BATCH_MAX_STAGED_BYTES "
                                      "applies per lane).", "fullest_lane_bytes"),
        "batches_in_flight": ("Batches claimed and not yet uploaded (uploading or backing off).",
                              "batches_in_flight"),
        "dead_letters": ("Dead-lettered batches (their objects are kept in Redis).", "dead_letters"),
    }  # fmt: skip
    families = {name: GaugeMetricFamily(f"s3batch_{name}", text, labels=LABELS) for name, (text, _) in gauges.items()}
    ages = {
        "oldest_staged_age_seconds": GaugeMetricFamily(
            "s3batch_oldest_staged_age_seconds", "Age of the oldest object staged, not yet in a batch.", labels=LABELS
        ),
        "oldest_waiting_age_seconds": GaugeMetricFamily(
            "s3batch_oldest_waiting_age_seconds",
            "Age of the oldest object not yet in S3 (staged, in flight or dead-lettered), as of the lane's last batch.",
            labels=LABELS,
        ),
        "last_upload": GaugeMetricFamily(
            "s3batch_last_upload_timestamp_seconds", "When a batch of the partition was last uploaded (Unix time).",
            labels=LABELS,
        ),
    }  # fmt: skip
    totals = {
        "uploaded_batches": "Batches uploaded.",
        "uploaded_objects": "Objects uploaded (in batches).",
        "uploaded_bytes": "Object bytes uploaded.",
        "uploaded_tar_bytes": "Tar bytes uploaded (objects, headers and the batch index).",
        "put_requests": "PutObject-class requests the uploads used (a multipart upload uses several).",
        "put_requests_saved": "PutObject requests saved: objects uploaded minus the requests used.",
    }
    counter_families = {
        name: CounterMetricFamily(f"s3batch_{name}", text, labels=LABELS) for name, text in totals.items()
    }
    outcomes = CounterMetricFamily(
        "s3batch_batch_outcomes", "What each flush of a batch ended in: " + ", ".join(OUTCOMES) + ".",
        labels=[*LABELS, "outcome"],
    )  # fmt: skip
    histograms = {h.name: HistogramMetricFamily(h.name, h.help, labels=LABELS) for h in HISTOGRAMS}

    for partition_id in sorted(set(partitions) | set(counters) | set(staged)):  # every registered one, zeros too
        partition = partitions.get(partition_id)
        if partition is None:
            continue  # its registration is gone (Redis flushed): nothing to name it by
        labels = [partition.bucket, partition.prefix]
        row, values = staged.get(partition_id, Counter()), counters.get(partition_id, {})
        for name, (_, source) in gauges.items():
            families[name].add_metric(labels, row[source])
        ages["oldest_staged_age_seconds"].add_metric(labels, _age_s(now_ms, row["oldest_staged_ms"]))
        ages["oldest_waiting_age_seconds"].add_metric(labels, _age_s(now_ms, row["oldest_waiting_ms"]))
        ages["last_upload"].add_metric(labels, values.get("last_upload_ms", 0) / 1000)
        for name, family in counter_families.items():
            if name == "put_requests_saved":
                value = max(0, values.get("uploaded_objects", 0) - values.get("put_requests", 0))
            else:
                value = values.get(name, 0)
            family.add_metric(labels, value)
        for outcome in OUTCOMES:
            outcomes.add_metric([*labels, outcome], values.get(f"outcome:{outcome}", 0))
        for histogram in HISTOGRAMS:
            buckets, running = [], 0
            for i, bound in enumerate([*histogram.bounds, float("inf")]):
                running += values.get(f"{histogram.name}:{i}", 0)
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))  # "100.0", as usual
            total = values.get(f"{histogram.name}:sum", 0) / histogram.scale
            histograms[histogram.name].add_metric(labels, buckets, total)
    yield from families.values()
    yield from ages.values()
    yield from counter_families.values()
    yield outcomes
    yield from histograms.values()


def _keep_oldest(row: Counter[str], name: str, ms: int) -> None:
    if ms:
        row[name] = min(row[name] or ms, ms)


def _age_s(now_ms: int, ms: int) -> float:
    return round(max(0, now_ms - ms) / 1000, 3) if ms else 0.0


def serve(client: Any, settings: Settings, address: str, port: int) -> Any:
    """Serve ``/metrics`` on ``address:port`` from a thread; returns the HTTP server (``.shutdown()`` stops it).
    Raises OSError when the port is taken."""
    registry = CollectorRegistry()
    registry.register(S3BatchCollector(client, settings))
    server, _thread = start_http_server(port, addr=address, registry=registry)
    return server
