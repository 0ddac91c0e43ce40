"""Metrics: what the flushes record in Redis, what a scrape reads (and at what cost), the ``s3batch metrics``
endpoint during a real run, and the alert rules and dashboard that name its metrics."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from batcher import BatchRef
from batcher.flush import Flusher
from batcher.keys import IndexKeys
from batcher.metrics import HISTOGRAMS, SCRAPE_COMMANDS, Recorder, S3BatchCollector, Uploaded, serve
from batcher.partitions import Partition
from batcher.producer import stage_object
from batcher.uploader import Uploader
from tests.factories import staged
from tests.support import Stack
from tests.test_flush import Recorder as Results
from tests.test_partitions import allowing, command_count, tenants
from workers import Batcher

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "s3batch-dashboard.json"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def scrape_text(client: Any, stack: Stack) -> str:
    registry = CollectorRegistry()
    registry.register(S3BatchCollector(client, stack.settings))
    return generate_latest(registry).decode()


@contextmanager
def exporter(stack: Stack, **env: Any) -> Iterator[str]:
    """A real ``s3batch metrics`` process on a free port (it prints the port it got); yields its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "batcher.cli", "metrics", "--port", "0"],
        env=stack.env(**env), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        found = re.search(r"serving (http://\S+/metrics)", line)
        assert found, f"s3batch metrics did not start: {line}{process.stderr.read() if process.poll() else ''}"
        yield found.group(1)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read()).decode()


# ---- what a flush records ----


def test_a_flush_records_counters_histograms_and_the_lanes_figures(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    lanes = stack.lanes
    flusher = Flusher(stack.settings, lanes, Uploader(stack.s3), Results())
    partition = Partition(stack.settings.require_bucket(), "m/")
    for i in range(30):
        stage_object(lanes, partition, partition.lane(0), staged(f"k{i}", b"x" * 100, record_id=f"r{i}"))
    recorder = Recorder(lanes.client, lanes.keys)
    recorder.outcome(partition.lane(0), "retried", None, int(time.time() * 1000))  # loads the script
    sent: list[str] = []
    execute = lanes.client.execute_command

    def counting(*args: Any, **kwargs: Any) -> Any:
        sent.append(args[0])
        return execute(*args, **kwargs)

    monkeypatch.setattr(lanes.client, "execute_command", counting)
    recorder.outcome(partition.lane(0), "retried", None, int(time.time() * 1000))
    assert sent == ["EVALSHA"]  # one command, one round trip
    monkeypatch.undo()
    flushed = flusher.flush(force=True)
    assert [batch.objects for batch in flushed] == [30]
    samples = parse(scrape_text(lanes.client, stack))
    labels = {"bucket": partition.bucket, "prefix": "m/"}
    assert value(samples, "s3batch_uploaded_objects_total", **labels) == 30
    assert value(samples, "s3batch_uploaded_bytes_total", **labels) == 3000
    assert value(samples, "s3batch_uploaded_batches_total", **labels) == 1
    assert value(samples, "s3batch_put_requests_total", **labels) == 1
    assert value(samples, "s3batch_put_requests_saved_total", **labels) == 29
    assert value(samples, "s3batch_batch_outcomes_total", outcome="uploaded", **labels) == 1
    assert value(samples, "s3batch_batch_outcomes_total", outcome="retried", **labels) == 2
    assert value(samples, "s3batch_batch_objects_bucket", le="100.0", **labels) == 1
    assert value(samples, "s3batch_batch_objects_bucket", le="10.0", **labels) == 0
    assert value(samples, "s3batch_batch_objects_sum", **labels) == 30
    assert value(samples, "s3batch_staged_to_uploaded_seconds_count", **labels) == 30
    assert value(samples, "s3batch_staged_objects", **labels) == 0
    assert value(samples, "s3batch_staged_bytes", **labels) == 0
    assert time.time() - value(samples, "s3batch_last_upload_timestamp_seconds", **labels) < 30
    assert value(samples, "s3batch_redis_up") == 1
    assert value(samples, "s3batch_staged_bytes_limit") == stack.settings.max_staged_bytes
    # What one uploaded batch's record costs the server: the EVALSHA and the commands its script runs.
    before = command_count(lanes.client)
    batch = Uploaded(objects=30, size_bytes=3000, tar_bytes=60_000, put_requests=1, seconds=0.3,
                     staged_ms=[int(time.time() * 1000) - 200] * 30)  # fmt: skip
    recorder.uploaded(partition.lane(0), batch, {"queued_objects": 0}, int(time.time() * 1000))
    print(f"\nRedis commands run per uploaded batch's record: {command_count(lanes.client) - before - 1} "
          "(one EVALSHA and what its script runs; plus Staging.totals: one pipeline of 6)")  # fmt: skip


def test_staged_age_is_live_and_dead_letters_are_counted(stack: Stack) -> None:
    lanes = stack.lanes
    partition = Partition(stack.settings.require_bucket(), "age/")
    stage_object(lanes, partition, partition.lane(0), staged("k", b"abc", record_id="r1"))
    time.sleep(0.3)
    samples = parse(scrape_text(lanes.client, stack))
    labels = {"bucket": partition.bucket, "prefix": "age/"}
    assert value(samples, "s3batch_oldest_staged_age_seconds", **labels) >= 0.3  # no flush yet: from the due index
    Recorder(lanes.client, lanes.keys).outcome(
        partition.lane(0), "dead_lettered", {"dead_letters": 2, "staged_bytes": 7}, int(time.time() * 1000)
    )
    samples = parse(scrape_text(lanes.client, stack))
    assert value(samples, "s3batch_dead_letters", **labels) == 2
    assert value(samples, "s3batch_fullest_lane_staged_bytes", **labels) == 7


def test_a_scrape_costs_the_same_commands_with_ten_or_a_thousand_partitions(stack: Stack) -> None:
    lanes = stack.lanes
    recorder = Recorder(lanes.client, lanes.keys)
    collector = S3BatchCollector(lanes.client, stack.settings)
    bucket = stack.settings.require_bucket()
    now_ms = int(time.time() * 1000)
    costs: list[int] = []
    for total in (10, 1000):
        for i in range(len(lanes.all()), total):  # the default partition is registered, with nothing recorded
            partition = Partition(bucket, f"p/{i}/")
            lanes.register(partition, partition.lane(0))
            lanes.mark_due(partition.lane(0), now_ms - 1000)
            batch = Uploaded(objects=10, size_bytes=1000, tar_bytes=9000, put_requests=1, seconds=0.2,
                             staged_ms=[now_ms - 500] * 10)  # fmt: skip
            recorder.uploaded(partition.lane(0), batch, {"queued_objects": 3, "staged_bytes": 300}, now_ms)
        before = command_count(lanes.client)
        families = list(collector.collect())
        costs.append(command_count(lanes.client) - before - 1)  # less the INFO that reads the count
        staged_objects = next(f for f in families if f.name == "s3batch_staged_objects")
        assert len(staged_objects.samples) == total and sum(s.value for s in staged_objects.samples) == 3 * (total - 1)
    print(f"\nRedis commands per scrape: {costs[0]} with 10 partitions, {costs[1]} with 1,000")
    assert costs == [SCRAPE_COMMANDS, SCRAPE_COMMANDS]


# ---- the endpoint during a real run ----


def test_the_endpoint_during_five_thousand_objects_over_three_partitions(stack: Stack) -> None:
    buckets = tenants(stack, 2)
    partitions = [(buckets[0], "logs/"), (buckets[0], "img/"), (buckets[1], "logs/")]
    settings = allowing(stack, max_batch_age_s=1, max_batch_objects=250)
    env = {"S3BATCH_BUCKETS": settings.buckets, "S3BATCH_MAX_BATCH_AGE": 1, "S3BATCH_MAX_BATCH_OBJECTS": 250}
    stack.start_worker(concurrency=2, **env)
    sizes: dict[tuple[str, str], list[int]] = {p: [] for p in partitions}
    with exporter(stack, **env) as url, Batcher(settings) as batcher:
        items = []
        for i in range(5000):
            bucket, prefix = partitions[i % 3]
            body = b"%d" % i * (1 + i % 40)
            sizes[(bucket, prefix)].append(len(body))
            items.append({"key": f"o/{i:05d}", "body": body, "bucket": bucket, "prefix": prefix})
        results = batcher.put_objects(items)
        during = parse(fetch(url))  # while the flushes run
        values = results.join_native(timeout=120)
        refs = [BatchRef.from_dict(v) for v in values]
        deadline = time.time() + 10
        while True:  # the flush records a batch right after publishing its refs: wait for the last one
            after = parse(fetch(url))
            uploaded = sum(v for (name, _), v in after.items() if name == "s3batch_uploaded_objects_total")
            if uploaded == 5000 or time.time() > deadline:
                break
            time.sleep(0.2)
    assert sum(v for (name, _), v in during.items() if name == "s3batch_uploaded_objects_total") <= 5000
    for bucket, prefix in partitions:
        labels = {"bucket": bucket, "prefix": prefix}
        mine = [ref for ref in refs if ref.bucket == bucket and ref.key.startswith(prefix)]
        listed = stack.s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        tars = {item["Key"]: item["Size"] for item in listed.get("Contents", [])}
        batches = len(tars)
        assert {ref.key for ref in mine} == set(tars)
        assert value(after, "s3batch_uploaded_objects_total", **labels) == len(mine) == len(sizes[(bucket, prefix)])
        assert value(after, "s3batch_uploaded_bytes_total", **labels) == sum(sizes[(bucket, prefix)])
        assert value(after, "s3batch_uploaded_tar_bytes_total", **labels) == sum(tars.values())
        assert value(after, "s3batch_uploaded_batches_total", **labels) == batches >= len(mine) / 250
        assert value(after, "s3batch_batch_outcomes_total", outcome="uploaded", **labels) == batches
        requests = value(after, "s3batch_put_requests_total", **labels)
        assert requests == batches  # all single-part
        assert value(after, "s3batch_put_requests_saved_total", **labels) == len(mine) - requests
        for histogram in HISTOGRAMS:
            count = value(after, f"{histogram.name}_count", **labels)
            assert count == (len(mine) if histogram.name == "s3batch_staged_to_uploaded_seconds" else batches)
            assert value(after, f"{histogram.name}_bucket", le="+Inf", **labels) == count
        assert value(after, "s3batch_batch_objects_sum", **labels) == len(mine)
        assert value(after, "s3batch_batch_bytes_sum", **labels) == sum(sizes[(bucket, prefix)])
        assert value(after, "s3batch_dead_letters", **labels) == 0
        assert value(after, "s3batch_batches_in_flight", **labels) == 0
        assert value(after, "s3batch_staged_objects", **labels) == 0
    print(f"\n5,000 objects over 3 partitions: {sum(after[k] for k in after if k[0].endswith('batches_total'))} "
          "batches, counters equal to what S3 holds")  # fmt: skip


# ---- alert rules and dashboard ----


def metric_names(text: str) -> set[str]:
    """The names in PromQL ``text`` that are s3batch's (its metric names all start with s3batch_)."""
    return set(re.findall(r"\bs3batch_[a-z_]+\b", text))


@pytest.fixture
def exported(stack: Stack) -> set[str]:
    """Every sample name a live exporter serves, once a batch has been recorded."""
    partition = Partition(stack.settings.require_bucket(), "a/")
    stack.lanes.register(partition, partition.lane(0))
    batch = Uploaded(objects=1, size_bytes=1, tar_bytes=3072, put_requests=1, seconds=0.1, staged_ms=[1])
    Recorder(stack.lanes.client, IndexKeys()).uploaded(partition.lane(0), batch, {}, int(time.time() * 1000))
    server = serve(stack.lanes.client, stack.settings, "127.0.0.1", 0)
    try:
        text = fetch(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
    return {name for name, _ in parse(text)}


def test_alert_rules_load_and_name_only_exported_metrics(exported: set[str]) -> None:
    document = yaml.safe_load(ALERTS.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} >= {
        "S3BatchOldestStagedTooOld", "S3BatchStagedBytesNearCap", "S3BatchDeadLetters", "S3BatchNoFlush",
    }  # fmt: skip
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names and names <= exported, f"{rule['alert']}: {sorted(names - exported)} are not exported"
        assert rule["labels"]["severity"] and rule["annotations"]["summary"]
    if shutil.which("promtool"):  # not installed by scripts/ensure-system-packages; checked where it is
        subprocess.run(["promtool", "check", "rules", str(ALERTS)], check=True)


def test_dashboard_loads_and_its_panels_name_only_exported_metrics(exported: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    targets = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(targets) >= 8
    used: set[str] = set()
    for expr in targets:
        names = metric_names(expr)
        assert names and names <= exported, f"{expr}: {sorted(names - exported)} are not exported"
        used |= names
    assert len(used) >= 12  # the dashboard shows most of what is exported


def test_a_redis_that_does_not_answer_is_reported_not_raised(stack: Stack) -> None:
    import redis

    settings = dataclasses.replace(stack.settings, redis_url="redis://127.0.0.1:1/0")
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1)
    samples = parse(scrape_text(client, stack))
    assert value(samples, "s3batch_redis_up") == 0
    client.close()


def test_metrics_once_prints_one_scrape(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from batcher.cli import main
    from tests.support import settings_env

    for name, setting in settings_env(stack.settings).items():
        monkeypatch.setenv(name, setting)
    assert main(["metrics", "--once"]) == 0
    samples = parse(capsys.readouterr().out)
    assert value(samples, "s3batch_redis_up") == 1
    labels = {"bucket": stack.settings.require_bucket(), "prefix": stack.settings.prefix}
    assert value(samples, "s3batch_staged_objects", **labels) == 0  # the default partition, registered, empty
