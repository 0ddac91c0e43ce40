"""batcher.clock: leases, ages and staging times are judged by the staging Redis's clock, whatever the wall clock
of the host that stages or flushes says (a host 3 minutes ahead, as in tests/test_hosts.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from batcher.clock import ServerClock
from batcher.partitions import default_partition
from batcher.producer import stage_into
from batcher.records import parse_entry
from tests.factories import staged
from tests.support import Stack
from tests.test_flush import make_flusher

AHEAD_S = 180.0


def redis_ms(stack: Stack) -> int:
    seconds, microseconds = stack.lanes.client.time()
    return int(seconds) * 1000 + int(microseconds) // 1000


@pytest.fixture
def ahead(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to move this process's wall clock AHEAD_S ahead (time.time only: monotonic stays)."""
    real = time.time

    def shift() -> None:
        monkeypatch.setattr(time, "time", lambda: real() + AHEAD_S)

    return shift


def test_the_server_clock_is_redis_time_not_this_hosts(stack: Stack, ahead: Callable[[], None]) -> None:
    ahead()
    clock = ServerClock(stack.lanes.client)
    before = redis_ms(stack)
    now = clock.now_ms()
    assert before <= now <= redis_ms(stack) + 2  # (rounding, and half a round trip)
    assert time.time() * 1000 - now > (AHEAD_S - 1) * 1000  # this host's clock is indeed ahead
    time.sleep(0.2)
    assert 150 <= clock.now_ms() - now <= 1000  # advanced by the monotonic clock between samples


def test_a_staging_time_ahead_of_redis_is_capped_so_the_batch_comes_due(stack: Stack) -> None:
    partition = default_partition(stack.settings)
    lane = partition.lane(0)
    future = redis_ms(stack) + int(AHEAD_S * 1000)  # staged by a host whose clock is 3 minutes ahead
    stage_into(stack.lanes, partition, lane, [staged("ahead/1", b"one", staged_ms=future)])
    stage_into(stack.lanes, partition, lane, [staged("ahead/2", b"two")])  # then one with the right time
    entries = stack.lanes.client.lrange(stack.staging.keys.queue, 0, -1)
    times = [parse_entry(entry)[0] for entry in entries]
    assert times[0] <= times[1] <= redis_ms(stack)  # in order, and neither in Redis's future
    flusher, recorder = make_flusher(stack, max_batch_age_s=0.5)
    time.sleep(0.6)
    assert [batch.objects for batch in flusher.flush()] == [2]  # due after the batch age, not in 3 minutes
    assert len(recorder.refs) == 2


def test_a_flush_on_a_host_ahead_leaves_a_live_lease_alone(stack: Stack, ahead: Callable[[], None]) -> None:
    partition = default_partition(stack.settings)
    stage_into(stack.lanes, partition, partition.lane(0), [staged(f"live/{i}", b"x" * i) for i in range(3)])
    holder, recorder = make_flusher(stack, lease_s=30)
    batch = holder.claim(force=True)  # claimed by a host with the right clock, lease 30 s
    assert batch is not None
    ahead()
    other, other_recorder = make_flusher(stack, lease_s=30)
    assert other.flush() == []  # a host 3 minutes ahead: the lease has 30 s to run, not -150 s
    fields = stack.lanes.client.hgetall(stack.staging.keys.batch(batch.batch_id))
    assert fields[b"token"].decode() == batch.token and b"takeovers" not in fields
    assert holder.process(batch).error is None
    assert len(recorder.refs) == 3 and not other_recorder.refs
