"""Every reliance of s3batch on Celery behaviour that Celery does not document as public API, in one place.

``put_object`` only stages its object; its outcome (the ref, the canvas, the
final event) comes later, from the flush, in another process. Doing that the
way Celery's own tracer would takes the pieces below, each with a contract
test in ``tests/test_celery_internals.py`` that CI runs on the oldest and the
newest supported Celery (see ``.ci/run``):

1. RESULT FORMAT: the Redis result backend stores a result as the JSON of
   ``{status, result, traceback, children, date_done, task_id}`` under
   ``backend.get_key_for_task(id)`` with the backend's expiry, then PUBLISHes
   the same value on that key, which is what a waiting ``AsyncResult`` hears.
   ``STORE_SCRIPT`` does exactly that for many tasks in one call.
2. RESULT CACHE: ``AsyncResult._set_cache(meta)`` makes ``state`` and ``get()``
   answer without a round trip (the bulk wait fills it from one MGET);
   ``_get_task_meta()`` is the one read behind ``state`` and ``info``.
3. RESULTSET BARRIER: ``ResultSet.__init__`` builds a barrier that subscribes to
   every result in its own round trip; ``init_result_set`` skips it and
   ``ensure_barrier`` builds it only where Celery's own code needs it (5.6
   moved it into ``_set_ready_barrier``).
4. CANVAS: a request's ``callbacks``, ``errbacks``, ``chain``, ``chord``,
   ``group``, ``group_index``, ``root_id`` and ``parent_id`` are what the tracer
   uses after a task returns; ``replay_success`` and ``replay_failure`` do
   what it does (``backend.on_chord_part_return`` and ``mark_as_failure`` with
   a ``Context`` built from them).
5. REQUEST EDITS: ``request.ignore_result = True`` stops the tracer storing a
   return value, and clearing ``callbacks``, ``chain`` and ``chord`` stops it
   firing the canvas.
6. REQUEST CLASS: a ``celery.worker.request.Request`` subclass given as a
   task's ``Request`` decides what the worker announces (``send_event``).
7. CUSTOM HEADERS: a header given to ``apply_async(headers=...)`` is an
   attribute of the worker's ``task.request``.
8. EVENTS STATE: the worker's consumer knows whether task events are on
   (``event_dispatcher.enabled`` and its ``task`` group), whether turned on by
   ``-E``, ``worker_send_task_events`` or the ``enable_events`` control
   command; ``app.conf.worker_send_task_events`` does not follow the last two.
9. LOG RECORDS: beat's sending (logger ``celery.beat``), task receipt
   (``celery.worker.strategy``), success (``celery.app.trace``) and discarded
   expired tasks (``celery.worker.request``) are logged at INFO with
   arguments that name the task.
10. GENERIC TASK: ``celery.Task`` and ``AsyncResult`` are subscriptable only
   from Celery 5.7, so ``Task[...]`` appears in annotations only.
11. PRODUCER POOLS: an app builds its broker connection pool (``app._pool``)
   and its producer pool (``app.amqp._producer_pool``) once, for the broker
   URL of its first message; ``forget_broker_connections`` drops both (and
   kombu's registry of pools) so that the next message goes to the broker
   the configuration names now (the tests switch brokers in one process).
12. RESULT LIFETIME: before Celery 5.7, ``AsyncResult.__del__`` calls
   ``backend.remove_pending_result``, which forgets and unsubscribes the task
   id whichever object waits on it (5.7 forgets only the object itself).
   ``group`` and ``chord`` drop the result ``Task.apply_async`` returns and
   wait on the member they froze, with the same id: a dropped result must die
   at once, by reference counting, before the member registers. A result in a
   reference cycle dies whenever the cycle collector runs, later, and then
   silently stops the group's wait (``grouped.get()`` times out although every
   result was published). So nothing a ``PutObjectResult`` holds refers back
   to it (``tasks.PutObjectTask.apply_async``'s resend closure names the id,
   not the result).

And of kombu's Redis transport, documented options: ``unacked_key``,
``unacked_index_key`` and ``unacked_mutex_key`` (every supported kombu), and
``unacked_restore_interval`` / ``unacked_restore_throttle`` (kombu 5.7 and
later; older ones sweep for dead workers' messages about every 100 s).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from celery import Celery, signature, states
from celery.app.task import Context
from celery.backends.redis import RedisBackend
from celery.worker.request import Request

# ---- 1. result format ----

STORE_SCRIPT = """
-- Store and announce results as the Redis result backend does per task: SET with its expiry, then PUBLISH.
-- KEYS: registry zset, registry index set, then the result keys.
-- ARGV: ttl_s (0: none), guarded ('1': never over a SUCCESS or FAILURE), registry ('add', 'remove' or ''),
--       registry index member, now_ms (the registry's score), then one value per result key.
-- With 'add' the result keys join the registry set (and the set its index), with 'remove' they leave it: the
-- registry of STAGED results of one staging epoch (workers.losses), which is s3batch's, not Celery's.
-- Returns how many results were written.
local ttl = tonumber(ARGV[1])
local guarded = ARGV[2] == '1'
local registry = ARGV[3]
local written = 0
for i = 3, #KEYS do
  local key = KEYS[i]
  local final = false
  if guarded then
    local current = redis.call('GET', key)
    if current then
      local ok, meta = pcall(cjson.decode, current)
      final = ok and type(meta) == 'table' and (meta.status == 'SUCCESS' or meta.status == 'FAILURE')
    end
  end
  if not final then
    local value = ARGV[i + 3]
    if ttl > 0 then
      redis.call('SET', key, value, 'EX', ttl)
    else
      redis.call('SET', key, value)
    end
    redis.call('PUBLISH', key, value)
    written = written + 1
  end
end
if registry == 'add' and #KEYS > 2 then
  for i = 3, #KEYS do
    redis.call('ZADD', KEYS[1], ARGV[5], KEYS[i])
  end
  redis.call('SADD', KEYS[2], ARGV[4])
  if ttl > 0 then
    redis.call('EXPIRE', KEYS[1], ttl)
  end
elseif registry == 'remove' and #KEYS > 2 then
  redis.call('ZREM', KEYS[1], unpack(KEYS, 3))
end
return written
"""


def is_redis_backend(backend: Any) -> bool:
    """True when results live in Redis, where STORE_SCRIPT and the bulk wait apply."""
    return isinstance(backend, RedisBackend)


def result_key(backend: Any, task_id: str) -> bytes:
    """The Redis key (and pub/sub channel) of a task's result."""
    key = backend.get_key_for_task(task_id)
    return key.encode() if isinstance(key, str) else bytes(key)


def result_meta(backend: Any, task_id: str, state: str, result: Any, date_done: str | None) -> str:
    """The stored value of one result, as the backend's own ``store_result`` would write it.

    Plain ``json.dumps`` where the backend's encoder would give the same JSON (a third of its cost, once per
    object); the backend's encoder otherwise.
    """
    meta = {
        "status": state,
        "result": result,
        "traceback": None,
        "children": [],
        "date_done": date_done if state in states.READY_STATES else None,
        "task_id": task_id,
    }
    compression = getattr(backend, "compression", None) or backend.app.conf.result_compression  # 5.5 has no attribute
    if backend.serializer == "json" and not compression:
        return json.dumps(meta)
    encoded: str | bytes = backend.encode(meta)
    return encoded.decode() if isinstance(encoded, bytes) else encoded


def result_ttl_s(backend: Any) -> int:
    """The expiry the backend gives results, in seconds (0: none)."""
    return int(backend.expires or 0)


# ---- 2. result cache ----


def cached_meta(result: Any) -> dict[str, Any] | None:
    """The meta an AsyncResult already holds, or None."""
    cache: dict[str, Any] | None = result._cache
    return cache


def task_meta(result: Any) -> dict[str, Any]:
    """The meta an AsyncResult answers ``state`` and ``info`` from: cached when final, read otherwise."""
    meta: dict[str, Any] = result._get_task_meta()
    return meta


def cache_meta(result: Any, meta: dict[str, Any]) -> None:
    """Make ``result.state`` and ``result.get()`` answer from ``meta``."""
    result._set_cache(meta)


# ---- 3. ResultSet barrier ----


def init_result_set(result_set: Any, results: list[Any], app: Any) -> None:
    """What ``ResultSet.__init__`` sets, without its barrier (one subscription round trip per result)."""
    from weakref import proxy

    from vine import promise

    result_set._app = app
    result_set.results = results
    result_set.on_ready = promise(args=(proxy(result_set),))
    result_set._on_full = None


def ensure_barrier(result_set: Any) -> None:
    """Build the barrier that Celery's own ``iter_native`` needs (for backends other than Redis)."""
    from vine import barrier, promise

    if result_set._on_full is None:
        if hasattr(result_set, "_set_ready_barrier"):  # Celery 5.6 and later
            result_set._set_ready_barrier(barrier(result_set.results))
        else:  # Celery 5.5's __init__ does it inline
            result_set._on_full = barrier(result_set.results)
            result_set._on_full.then(promise(result_set._on_ready, weak=True))


# ---- 4. canvas ----

_CANVAS_FIELDS = ("callbacks", "errbacks", "chain", "chord", "group", "group_index", "root_id", "parent_id")


def capture_canvas(request: Any) -> dict[str, Any] | None:
    """What the tracer would use of ``request`` after the task, or None for a plain ``delay()``."""
    canvas = {name: value for name in _CANVAS_FIELDS if (value := getattr(request, name, None)) is not None}
    if not any(canvas.get(name) for name in ("callbacks", "errbacks", "chain", "chord")):
        return None
    return canvas


def replay_success(app: Celery, task_id: str, result: Any, canvas: Mapping[str, Any]) -> None:
    """Run links and the next step of a chain with ``result``; count a chord member as done."""
    options: Any = {"parent_id": task_id, "root_id": canvas.get("root_id") or task_id}
    for callback in canvas.get("callbacks") or ():
        signature(callback, app=app).apply_async((result,), **options)
    chain = list(canvas.get("chain") or ())
    if chain:
        signature(chain.pop(), app=app).apply_async((result,), chain=chain, **options)
    if canvas.get("chord"):
        # The backend counts a member once by task id, so a recovered flush publishing again is harmless.
        app.backend.on_chord_part_return(_context(task_id, canvas), states.SUCCESS, result)


def replay_failure(app: Celery, task_id: str, error: Exception, canvas: Mapping[str, Any]) -> None:
    """Store FAILURE through Celery's own path, which runs errbacks and fails a chord."""
    app.backend.mark_as_failure(task_id, error, request=_context(task_id, canvas), call_errbacks=True)


def _context(task_id: str, canvas: Mapping[str, Any]) -> Context:
    return Context(
        id=task_id,
        group=canvas.get("group"),
        group_index=canvas.get("group_index"),
        chord=canvas.get("chord"),
        chain=canvas.get("chain"),
        errbacks=canvas.get("errbacks"),
        root_id=canvas.get("root_id"),
        parent_id=canvas.get("parent_id"),
        delivery_info={},
    )


# ---- 5. request edits ----


def leave_outcome_to_flush(request: Any) -> None:
    """The tracer must neither store this task's return nor fire its canvas: the flush does both.

    (Ending the task in ``Ignore`` would do the same, but Celery formats a traceback for every ignored task:
    measured at two thirds of a put_object's time in the worker.)
    """
    request.ignore_result = True  # read again by the backend when the tracer stores the return
    request.callbacks = request.chain = request.chord = None


# ---- 6. request class ----


class StagingRequest(Request):
    """The worker's side of a put_object: its return only means "staged", so it announces no task-succeeded
    event (the flush sends that one, with the ref, once the batch is in S3)."""

    def send_event(self, type: str, **fields: Any) -> None:
        if type != "task-succeeded":
            super().send_event(type, **fields)


# ---- 7. custom headers ----

SENT_HEADER = "s3batch_sent"
"""The header put_object messages carry: when the producer sent them (seconds since the epoch)."""
LANE_HEADER = "s3batch_lane"
"""The header put_object messages carry: the lane index the producer keeps to."""


def header(request: Any, name: str) -> Any:
    """A custom message header as the worker's request holds it (None when absent)."""
    return getattr(request, name, None)


# ---- 8. events state ----


def task_events_on(consumer: Any) -> bool:
    """Whether the worker whose consumer this is sends task events right now."""
    dispatcher = getattr(consumer, "event_dispatcher", None)
    if dispatcher is None or not dispatcher.enabled:
        return False
    groups = dispatcher.groups
    return not groups or "task" in groups


# ---- 9. log records ----

TASK_LOGGERS = ("celery.beat", "celery.worker.strategy", "celery.app.trace", "celery.worker.request")


def logged_task_name(record: logging.LogRecord) -> str | None:
    """The task name a record of TASK_LOGGERS is about, if it says."""
    args = record.args
    if isinstance(args, Mapping):
        name = args.get("name")  # 'Task %(name)s[%(id)s] received' and '... succeeded in ...'
        return name if isinstance(name, str) else None
    if isinstance(args, tuple) and len(args) == 2 and all(isinstance(arg, str) for arg in args):
        entry_name, task_name = str(args[0]), str(args[1])
        # 'Scheduler: Sending due task %s (%s)' (entry, task); 'Discarding revoked task: %s[%s]' (task, id)
        return task_name if record.name == "celery.beat" else entry_name
    return None


# ---- 11. producer pools ----


def forget_broker_connections(app: Any) -> None:
    """Close the app's pooled broker connections and producers: its next message connects to the broker that
    ``CELERY_BROKER_URL`` / ``broker_url`` name at that moment (both pools are otherwise kept for the first)."""
    from kombu import pools

    pools.reset()  # closes every pooled connection of this process and empties kombu's registry of pools
    app._pool = None
    app.amqp._producer_pool = None
