"""Writes task states into Celery's result backend on behalf of the flush.

On the Redis backend, SUCCESS for a whole batch goes out in pipelined round
trips (SET + PUBLISH per task, exactly what the backend itself does, so every
waiting ``AsyncResult.get()`` wakes at once); STAGED is written by a tiny Lua
script that never replaces a final state. Other backends get the generic calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from celery import Celery, states
from celery.backends.redis import RedisBackend

from batcher.models import BatchRef
from workers import canvas

STAGED = "STAGED"
_PIPELINE_CHUNK = 500

# Write a state unless the task already reached SUCCESS or FAILURE: a STAGED written after the flush was
# faster, or a dead letter's FAILURE after a first flush published SUCCESS, must not undo it.
_UNLESS_FINAL = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and (meta.status == 'SUCCESS' or meta.status == 'FAILURE') then
    return 0
  end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class ResultWriter:
    """Stores STAGED and SUCCESS states for put_object tasks."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.backend: Any = cast(Any, app.backend)  # celery-types does not describe RedisBackend's client and keys
        self._redis = isinstance(self.backend, RedisBackend)
        self._unless_final = self.backend.client.register_script(_UNLESS_FINAL) if self._redis else None

    def _meta(self, task_id: str, state: str, result: Any) -> str:
        meta = {
            "status": state,
            "result": result,
            "traceback": None,
            "children": [],
            "date_done": datetime.now(UTC).isoformat() if state in states.READY_STATES else None,
            "task_id": task_id,
        }
        encoded: str | bytes = self.backend.encode(meta)
        return encoded.decode() if isinstance(encoded, bytes) else encoded

    def mark_staged(self, task_id: str, info: dict[str, Any]) -> None:
        """Record that the object's bytes are in Redis staging."""
        self._write_unless_final(task_id, STAGED, info)

    def _write_unless_final(self, task_id: str, state: str, result: Any) -> None:
        """Store ``state`` unless the task already has SUCCESS or FAILURE (a late write never undoes one)."""
        if self._unless_final is None:
            self.backend.store_result(task_id, result, state)
            return
        key = self.backend.get_key_for_task(task_id)
        self._unless_final(keys=[key], args=[self._meta(task_id, state, result), int(self.backend.expires or 0)])

    def publish(self, refs: Sequence[tuple[str, BatchRef]], contexts: Mapping[str, str]) -> None:
        """Store SUCCESS with each ref's dict, then run the canvas of the records that have one."""
        self._store([(task_id, states.SUCCESS, ref.to_dict()) for task_id, ref in refs])
        self._send_events("task-succeeded", [(task_id, {"result": repr(ref.to_dict())}) for task_id, ref in refs])
        for task_id, ref in refs:
            if task_id in contexts:
                canvas.on_success(self.app, task_id, ref.to_dict(), contexts[task_id])

    def fail(self, record_ids: Sequence[str], error: Exception, contexts: Mapping[str, str]) -> None:
        """Store FAILURE with ``error`` (rebuilt as its class by the caller's ``get()``); run errbacks."""
        self._send_events("task-failed", [(task_id, {"exception": repr(error)}) for task_id in record_ids])
        encoded = self.backend.prepare_exception(error)
        for task_id in record_ids:
            if task_id not in contexts:
                self._write_unless_final(task_id, states.FAILURE, encoded)
        for task_id in record_ids:
            if task_id in contexts:
                canvas.on_failure(self.app, task_id, error, contexts[task_id])

    def _send_events(self, event: str, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """With task events on (worker_send_task_events), tell monitors such as Flower the final state."""
        if not self.app.conf.worker_send_task_events:
            return
        with self.app.events.default_dispatcher() as dispatcher:
            for task_id, fields in items:
                dispatcher.send(event, uuid=task_id, **fields)

    def _store(self, items: Sequence[tuple[str, str, Any]]) -> None:
        if not self._redis:
            for task_id, state, result in items:
                self.backend.store_result(task_id, result, state)
            return
        expires = self.backend.expires
        for start in range(0, len(items), _PIPELINE_CHUNK):
            with self.backend.client.pipeline(transaction=False) as pipe:
                for task_id, state, result in items[start : start + _PIPELINE_CHUNK]:
                    key = self.backend.get_key_for_task(task_id)
                    value = self._meta(task_id, state, result)
                    if expires:
                        pipe.setex(key, expires, value)
                    else:
                        pipe.set(key, value)
                    pipe.publish(key, value)
                pipe.execute()
