"""Losses are reported: results left STAGED by staged data that Redis lost turn FAILURE with the reason.

Staging names its data with an epoch (``Keys.epoch``) that lives and dies with it. Every STAGED result is
also listed, in the result backend, in a registry of its lane and epoch (written by the same call that stores
the state; removed when the flush publishes the outcome). When the result backend survives a restart of the
staging Redis that did not (no appendonly persistence, a flush of the database), the lane's epoch is new or
gone, and ``fail_lost`` turns every result still in an old epoch's registry into FAILURE with
StagingLostError. Where the results were lost with the staged data, there is nothing to turn: the producers'
own waits see STAGED become PENDING and raise StagingLostError (workers.results, workers.bulkwait).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from celery import Celery, states

from batcher.errors import StagingError, StagingLostError
from batcher.staging import Staging
from workers import celery_internals as internals

log = logging.getLogger(__name__)

REGISTRY_INDEX = "s3batch:staged-epochs"
"""SET of the registries that exist, as JSON ``[lane, epoch]``."""
CHECK_LOCK = "s3batch:loss-check"
CHECK_EVERY_MS = 10_000
_CHUNK = 500


def registry_key(lane: str, epoch: str) -> str:
    """The SET of the result keys of the objects STAGED in ``lane`` during ``epoch``."""
    return f"s3batch:staged:{lane}:{epoch.split(' ', 1)[0]}"


def registry_member(lane: str, epoch: str) -> str:
    return json.dumps([lane, epoch])


def fail_lost(app: Celery, staging_of: Callable[[str], Staging]) -> int:
    """FAILURE with StagingLostError for every result STAGED in an epoch its lane no longer has; how many.

    At most one worker checks every CHECK_EVERY_MS; a staging Redis that does not answer is skipped (its data
    may well be there).
    """
    backend: Any = app.backend
    if not internals.is_redis_backend(backend):
        return 0
    client = backend.client
    if not client.set(CHECK_LOCK, b"1", px=CHECK_EVERY_MS, nx=True):
        return 0
    failed = 0
    for member in cast(set[bytes], client.smembers(REGISTRY_INDEX)):
        lane, epoch = json.loads(member)
        staging = staging_of(lane)
        try:
            current = staging.epoch()
        except StagingError as exc:
            log.warning("s3batch loss check: lane %s not checked: %s", lane, exc)
            continue
        if current == epoch:
            continue
        failed += _fail_registry(app, client, staging, lane, epoch)
        client.srem(REGISTRY_INDEX, member)
    return failed


def _fail_registry(app: Celery, client: Any, staging: Staging, lane: str, epoch: str) -> int:
    backend: Any = app.backend
    registry = registry_key(lane, epoch)
    error = StagingLostError(
        f"the object was staged in Redis ({_url(staging)}, lane {lane}, staging epoch {_describe(epoch)}) and "
        "that staged data is gone: the Redis restarted without appendonly persistence, or was flushed, before "
        "its batch was uploaded. Send the object again"
    )
    encoded = backend.prepare_exception(error)
    store = client.register_script(internals.STORE_SCRIPT)
    keys = cast(list[bytes], list(client.sscan_iter(registry, count=1000)))
    prefix = backend.task_keyprefix.encode() if isinstance(backend.task_keyprefix, str) else backend.task_keyprefix
    ttl = internals.result_ttl_s(backend)
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        values = [
            internals.result_meta(backend, key.removeprefix(prefix).decode(), states.FAILURE, encoded, _now_iso())
            for key in chunk
        ]
        store(keys=[registry, REGISTRY_INDEX, *chunk], args=[ttl, 1, "remove", "", *values])
    client.delete(registry)
    staging.count_lost(len(keys))
    if keys:
        log.error("s3batch: %d staged objects were lost with lane %s's staged data; their callers got FAILURE: %s",
                  len(keys), lane, error)  # fmt: skip
    return len(keys)


def _url(staging: Staging) -> str:
    kwargs = staging.client.connection_pool.connection_kwargs
    return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


def _describe(epoch: str) -> str:
    """``<id> begun <ISO time>`` of an epoch value ``"<id> <created ms>"``."""
    name, _, created_ms = epoch.partition(" ")
    if not created_ms.isdigit():
        return name
    return f"{name} begun {datetime.fromtimestamp(int(created_ms) / 1000, UTC):%Y-%m-%d %H:%M:%S} UTC"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()
