"""Waiting for thousands of results at once without a round trip per result.

Celery's ``ResultSet.join_native`` on the Redis backend subscribes, reads and
unsubscribes result by result (under cProfile: 2.5 s for 10,000 results that were already
SUCCESS). ``BulkResultSet`` keeps its interface and its answers but subscribes to a
thousand result channels per command, reads every stored state with MGET, then
only listens for the results still missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from celery import states
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import ResultSet, assert_will_not_block  # type: ignore[attr-defined]  # not in celery-types

from workers import celery_internals as internals
from workers.liveness import check_served
from workers.redelivery import resend_lost
from workers.results import STAGED, PutObjectResult, staging_lost

_CHUNK = 1000
# Re-read what is still pending after 1 s without its notification, then 2, 4, 8, 10 s: a safety net for a
# notification missed (a reconnect), not a poll.
_RECHECK_FIRST_S = 1.0
_RECHECK_MAX_S = 10.0


class BulkResultSet(ResultSet):
    """A ResultSet whose ``join_native`` (and so ``get``) waits for all its results in bulk on Redis."""

    def __init__(self, results: list[Any], app: Any = None) -> None:
        # Not ResultSet.__init__: its barrier calls then() on every result, which subscribes to each one in its
        # own round trip (0.7 s for 10,000), and joining needs none of it. Without it, then() cannot fire.
        internals.init_result_set(self, results, app)

    def then(self, callback: Any, on_error: Any = None, weak: bool = False) -> Any:
        raise NotImplementedError("BulkResultSet does not call back when ready: use join_native() or get()")

    def iter_native(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's own, for backends other than Redis: it needs the barrier after all."""
        internals.ensure_barrier(self)
        return super().iter_native(*args, **kwargs)

    def join_native(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        callback: Callable[[str, Any], None] | None = None,
        no_ack: bool = True,
        on_message: Any = None,
        on_interval: Any = None,
        disable_sync_subtasks: bool = True,
    ) -> list[Any]:
        """Celery's ``ResultSet.join_native``, in bulk on the Redis backend; with a ``callback`` the values go to it
        (and the returned list holds None)."""
        backend = self.backend
        if not internals.is_redis_backend(backend) or on_message is not None or on_interval is not None:
            return super().join_native(
                timeout, propagate, interval, callback, no_ack, on_message, on_interval, disable_sync_subtasks
            )
        if disable_sync_subtasks:
            assert_will_not_block()  # as Celery's own: waiting inside a task can starve the flush it waits for
        results: list[Any] = list(self.results or [])
        position = {result.id: i for i, result in enumerate(results)}
        values: list[Any] = [None] * len(results)
        for result in _wait_all(self.app, backend, results, timeout):
            meta = internals.cached_meta(result) or {}
            if propagate and meta["status"] in states.PROPAGATE_STATES:
                raise meta["result"]
            if callback is not None:
                callback(result.id, meta["result"])
            else:
                values[position[result.id]] = meta["result"]
        return values


def _wait_all(app: Any, backend: Any, results: list[Any], timeout: float | None) -> Iterator[Any]:
    """Yield each result once it is ready (its meta cached on it), in the order they become ready.

    Raises NoWorkerError when results wait on a queue that no worker serves (workers.liveness).
    """
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    pending: dict[bytes, Any] = {}
    states_seen: dict[bytes, str] = {}
    for result in results:
        meta = internals.cached_meta(result)
        if meta is not None and meta["status"] in states.READY_STATES:
            yield result
        else:
            pending[internals.result_key(backend, result.id)] = result
    if not pending:
        return
    client: Any = backend.client
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        keys = list(pending)
        for start in range(0, len(keys), _CHUNK):
            pubsub.subscribe(*keys[start : start + _CHUNK])
        # Subscribed first, read second: a result stored in between is in the read or in a message.
        yield from _read_ready(backend, client, pending, states_seen)
        every = _RECHECK_FIRST_S
        recheck = time.monotonic() + every
        while pending:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise CeleryTimeoutError(f"{len(pending)} of {len(results)} results were not ready in {timeout} s")
            if now >= recheck:
                yield from _read_ready(backend, client, pending, states_seen)
                waiting = {key: states_seen.get(key, states.PENDING) for key in pending}
                resend_lost(app, [pending[k] for k, state in waiting.items() if state == states.PENDING
                                  and isinstance(pending[k], PutObjectResult)])  # fmt: skip
                check_served(app, set(waiting.values()), now - started)
                every = min(_RECHECK_MAX_S, every * 2)
                recheck = time.monotonic() + every
                continue
            wait = recheck - now if deadline is None else min(recheck, deadline) - now
            message = pubsub.get_message(timeout=max(0.0, wait))
            if message is None or message["type"] != "message":
                continue
            key = _as_bytes(message["channel"])
            if key in pending:
                status = _cache_if_ready(backend, pending[key], message["data"])
                if status in states.READY_STATES:
                    yield pending.pop(key)
                else:
                    states_seen[key] = status
    finally:
        pubsub.close()


def _read_ready(backend: Any, client: Any, pending: dict[bytes, Any], states_seen: dict[bytes, str]) -> Iterator[Any]:
    keys = list(pending)
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        for key, payload in zip(chunk, client.mget(chunk), strict=True):
            if payload is None:
                result = pending[key]
                epoch = result.staged_epoch if isinstance(result, PutObjectResult) else None
                if states_seen.pop(key, None) == STAGED or epoch is not None:  # STAGED, then nothing: lost with a
                    lost = staging_lost(result.id, epoch or "")  # Redis that restarted empty
                    internals.cache_meta(pending[key], {"status": states.FAILURE, "result": lost, "traceback": None,
                                                        "children": [], "date_done": None})  # fmt: skip
                    yield pending.pop(key)
                continue
            status = _cache_if_ready(backend, pending[key], payload)
            if status in states.READY_STATES:
                yield pending.pop(key)
            else:
                states_seen[key] = status


def _cache_if_ready(backend: Any, result: Any, payload: bytes | str) -> str:
    """The stored state; when final, cached on ``result`` (a later get() costs no round trip)."""
    meta = backend.decode_result(_as_bytes(payload))
    if meta["status"] in states.READY_STATES:
        internals.cache_meta(result, meta)
    if isinstance(result, PutObjectResult):
        result.saw(meta)
    return str(meta["status"])


def _as_bytes(key: bytes | str) -> bytes:
    return key.encode() if isinstance(key, str) else key
