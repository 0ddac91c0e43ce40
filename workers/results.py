"""Writes task states into Celery's result backend on behalf of the staging task and the flush.

On the Redis backend every write is one Lua call per few hundred tasks that does what the
backend itself does per task (SET with the result's expiry, then PUBLISH, so that every
waiting ``AsyncResult.get()`` wakes at once); STAGED and FAILURE never replace a final state.
Other backends get the generic calls.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from celery import Celery, states
from celery.backends.redis import RedisBackend

from batcher.models import BatchRef
from workers import canvas

STAGED = "STAGED"
_CHUNK = 500  # results per round trip

# Store and announce many results in one call: SET + PUBLISH per task, exactly what the backend itself does,
# so that every waiting AsyncResult wakes. With ARGV[2] = '1' a task that already reached SUCCESS or FAILURE
# is left alone: a STAGED written after the flush was faster, or a dead letter's FAILURE after a first flush
# published SUCCESS, must not undo it. (Celery's Redis result backend is one Redis server, never a Cluster.)
_WRITE = """
local ttl = tonumber(ARGV[1])
local guarded = ARGV[2] == '1'
local written = 0
for i, key in ipairs(KEYS) do
  local final = false
  if guarded then
    local current = redis.call('GET', key)
    if current then
      local ok, meta = pcall(cjson.decode, current)
      final = ok and type(meta) == 'table' and (meta.status == 'SUCCESS' or meta.status == 'FAILURE')
    end
  end
  if not final then
    local value = ARGV[i + 2]
    if ttl > 0 then
      redis.call('SET', key, value, 'EX', ttl)
    else
      redis.call('SET', key, value)
    end
    redis.call('PUBLISH', key, value)
    written = written + 1
  end
end
return written
"""


class ResultWriter:
    """Stores STAGED and SUCCESS states for put_object tasks."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.backend: Any = cast(Any, app.backend)  # celery-types does not describe RedisBackend's client and keys
        redis_backend = isinstance(self.backend, RedisBackend)
        self._write_script = self.backend.client.register_script(_WRITE) if redis_backend else None
        # Plain JSON is what the backend's own encoder writes for these JSON-safe results, at a third of the cost
        # (it runs once per object); any other serializer or a compression goes through the backend.
        self._plain_json = self.backend.serializer == "json" and not self.backend.compression

    def _meta(self, task_id: str, state: str, result: Any, date_done: str | None = None) -> str:
        meta = {
            "status": state,
            "result": result,
            "traceback": None,
            "children": [],
            "date_done": (date_done or _now_iso()) if state in states.READY_STATES else None,
            "task_id": task_id,
        }
        if self._plain_json:
            return json.dumps(meta)
        encoded: str | bytes = self.backend.encode(meta)
        return encoded.decode() if isinstance(encoded, bytes) else encoded

    def mark_staged(self, task_id: str, info: dict[str, Any]) -> None:
        """Record that the object's bytes are in Redis staging."""
        self._write([(task_id, STAGED, info)], unless_final=True)

    def mark_staged_many(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """mark_staged for many tasks, a few hundred per round trip."""
        self._write([(task_id, STAGED, info) for task_id, info in items], unless_final=True)

    def publish(self, refs: Sequence[tuple[str, BatchRef]], contexts: Mapping[str, str]) -> None:
        """Store SUCCESS with each ref's dict, then run the canvas of the records that have one."""
        self._write([(task_id, states.SUCCESS, ref.to_dict()) for task_id, ref in refs], unless_final=False)
        if self.app.conf.worker_send_task_events:
            self._send_events("task-succeeded", [(task_id, {"result": repr(ref.to_dict())}) for task_id, ref in refs])
        for task_id, ref in refs:
            if task_id in contexts:
                canvas.on_success(self.app, task_id, ref.to_dict(), contexts[task_id])

    def fail(self, record_ids: Sequence[str], error: Exception, contexts: Mapping[str, str]) -> None:
        """Store FAILURE with ``error`` (rebuilt as its class by the caller's ``get()``); run errbacks."""
        if self.app.conf.worker_send_task_events:
            self._send_events("task-failed", [(task_id, {"exception": repr(error)}) for task_id in record_ids])
        encoded = self.backend.prepare_exception(error)
        self._write(
            [(task_id, states.FAILURE, encoded) for task_id in record_ids if task_id not in contexts], unless_final=True
        )
        for task_id in record_ids:
            if task_id in contexts:
                canvas.on_failure(self.app, task_id, error, contexts[task_id])

    def _send_events(self, event: str, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Tell monitors such as Flower the final state (callers check worker_send_task_events first)."""
        with self.app.events.default_dispatcher() as dispatcher:
            for task_id, fields in items:
                dispatcher.send(event, uuid=task_id, **fields)

    def _write(self, items: Sequence[tuple[str, str, Any]], *, unless_final: bool) -> None:
        """Store (task id, state, result) items; with ``unless_final`` never over a SUCCESS or FAILURE."""
        if self._write_script is None:
            for task_id, state, result in items:
                if not (unless_final and self.backend.get_state(task_id) in states.READY_STATES):
                    self.backend.store_result(task_id, result, state)
            return
        ttl = int(self.backend.expires or 0)
        date_done = _now_iso()
        for start in range(0, len(items), _CHUNK):
            chunk = items[start : start + _CHUNK]
            keys = [self.backend.get_key_for_task(task_id) for task_id, _, _ in chunk]
            values = [self._meta(task_id, state, result, date_done) for task_id, state, result in chunk]
            self._write_script(keys=keys, args=[ttl, int(unless_final), *values])


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()
