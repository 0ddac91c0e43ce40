"""Losses are reported: results left STAGED by staged data that Redis lost turn FAILURE with the reason.

Staging names its data with an epoch (``Keys.epoch``) that lives and dies with it. Every STAGED result is
also listed, in the result backend, in a registry of its lane and epoch (written by the same call that stores
the state; removed when the flush publishes the outcome). When the result backend survives a restart of the
staging Redis that did not (no appendonly persistence, a flush of the database), the lane's epoch is new or
gone, and ``fail_lost`` turns every result still in an old epoch's registry into FAILURE with
StagingLostError; a result STAGED long ago whose record its lane no longer holds (a failover to a replica
that missed the last writes) too. Where the results were lost with the staged data, there is nothing to turn:
the producers' own waits see STAGED become PENDING and raise StagingLostError (workers.results,
workers.bulkwait).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any, cast

from celery import Celery, states

from batcher.errors import StagingError, StagingLostError
from batcher.lanes import Lanes
from batcher.preflight import redact
from batcher.staging import Staging
from workers import celery_internals as internals

log = logging.getLogger(__name__)

STALE_AFTER_MS = 60_000
REGISTRY_INDEX = "s3batch:staged-epochs"
"""SET of the registries that exist, as JSON ``[lane, epoch]``."""
CHECK_LOCK = "s3batch:loss-check"
CHECK_EVERY_MS = 10_000
_CHUNK = 500


def registry_key(lane: str, epoch: str) -> str:
    """The ZSET of the result keys of the objects STAGED in ``lane`` during ``epoch``, scored by when (ms)."""
    return f"s3batch:staged:{lane}:{epoch.split(' ', 1)[0]}"


def registry_member(lane: str, epoch: str) -> str:
    return json.dumps([lane, epoch])


def fail_lost(app: Celery, lanes: Lanes) -> int:
    """FAILURE with StagingLostError for every result STAGED in data its lane no longer holds; how many.

    Two ways staged data goes: all of a lane's (its epoch is new or gone: a Redis restarted empty, a flushed
    database), or the last writes before a failover to a replica that had not received them (the epoch stayed,
    some records did not). A result STAGED for longer than a batch could take to be claimed (STALE_AFTER_MS past
    the batch age) whose record is not in its lane is the second kind; a batch still being retried keeps its
    records, so it is never mistaken for one. At most one worker checks every CHECK_EVERY_MS; a staging Redis
    that does not answer is skipped (its data may well be there).
    """
    backend: Any = app.backend
    if not internals.is_redis_backend(backend):
        return 0
    client = backend.client
    if not client.set(CHECK_LOCK, b"1", px=CHECK_EVERY_MS, nx=True):
        return 0
    settings = cast(Any, app).s3batch_settings
    stale_before = int(time.time() * 1000) - int(settings.max_batch_age_s * 1000) - STALE_AFTER_MS
    prefix = _prefix(backend)
    failed = 0
    for member in cast(set[bytes], client.smembers(REGISTRY_INDEX)):  # (lane, epoch) pairs with STAGED results
        lane, epoch = json.loads(member)
        staging = lanes.staging(lane)
        registry = registry_key(lane, epoch)
        try:
            if staging.epoch() != epoch:
                keys = cast(list[bytes], client.zrange(registry, 0, -1))
                if _fail(app, staging, registry, keys, lost_epoch(settings, lane, epoch)):
                    failed += len(keys)
                    lanes.keep(lane)  # its count of lost objects stays in stats, though the lane list was lost
                client.delete(registry)
                client.srem(REGISTRY_INDEX, member)
                continue
            stale = cast(list[bytes], client.zrangebyscore(registry, "-inf", stale_before))
            missing = staging.missing_records([key.removeprefix(prefix).decode() for key in stale])
            gone = [key for key in stale if key.removeprefix(prefix).decode() in missing]
            failed += _fail(app, staging, registry, gone, lost_records(settings, lane))
        except StagingError as exc:
            log.warning("s3batch loss check: lane %s not checked: %s", lane, exc)
    return failed


def lost_epoch(settings: Any, lane: str, epoch: str) -> StagingLostError:
    return StagingLostError(
        f"the object was staged in Redis ({redact(settings.redis_url)}, lane {lane}, staging epoch "
        f"{_describe(epoch)}) and that staged data is gone: the Redis restarted without appendonly persistence, or "
        "was flushed, before its batch was uploaded. Send the object again"
    )


def lost_records(settings: Any, lane: str) -> StagingLostError:
    return StagingLostError(
        f"the object was staged in Redis ({redact(settings.redis_url)}, lane {lane}) and its record is gone: a "
        "failover to a replica that had not received it yet (S3BATCH_STAGING_REPLICAS makes STAGED wait for "
        "replicas), or a lost write. Send the object again"
    )


def _fail(app: Celery, staging: Staging, registry: str, keys: list[bytes], error: StagingLostError) -> int:
    """FAILURE with ``error`` for the results at ``keys`` that are not final yet; they leave the registry."""
    if not keys:
        return 0
    backend: Any = app.backend
    encoded = backend.prepare_exception(error)
    store = backend.client.register_script(internals.STORE_SCRIPT)
    prefix = _prefix(backend)
    ttl = internals.result_ttl_s(backend)
    written = 0
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        values = [
            internals.result_meta(backend, key.removeprefix(prefix).decode(), states.FAILURE, encoded, _now_iso())
            for key in chunk
        ]
        written += int(store(keys=[registry, REGISTRY_INDEX, *chunk], args=[ttl, 1, "remove", "", 0, *values]))
    if written:
        staging.count_lost(written)
        log.error("s3batch: %d staged objects were lost; their callers got FAILURE: %s", written, error)
    return written


def _prefix(backend: Any) -> bytes:
    prefix = backend.task_keyprefix
    return prefix.encode() if isinstance(prefix, str) else bytes(prefix)


def _describe(epoch: str) -> str:
    """``<id> begun <ISO time>`` of an epoch value ``"<id> <created ms>"``."""
    name, _, created_ms = epoch.partition(" ")
    if not created_ms.isdigit():
        return name
    return f"{name} begun {datetime.fromtimestamp(int(created_ms) / 1000, UTC):%Y-%m-%d %H:%M:%S} UTC"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()
