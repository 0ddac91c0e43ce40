"""Contract tests: each reliance listed in workers/celery_internals.py holds for the installed Celery.

CI runs this module on the oldest and the newest supported Celery (.ci/run); a failure here names the
reliance that a Celery release broke.
"""

from __future__ import annotations

import inspect
import json
import logging
import uuid
from typing import Any, cast

import celery
import pytest
import redis
from celery import Celery, Task
from celery.app.task import Context
from celery.beat import ScheduleEntry, Scheduler
from celery.events.dispatcher import EventDispatcher
from celery.result import AsyncResult, ResultSet
from celery.utils.imports import symbol_by_name
from celery.worker.request import Request

from batcher.embedded import RedisServer
from workers import celery_internals as internals
from workers.app import app

CELERY_VERSION = tuple(int(part) for part in celery.__version__.split(".")[:2])


@pytest.fixture
def backend(redis_server: RedisServer) -> Any:
    return app.backend


def test_1_result_format_is_what_the_backend_itself_stores(backend: Any) -> None:
    ours, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    value = {"bucket": "b", "offset": 1536}
    backend.store_result(theirs, value, "SUCCESS")
    script = backend.client.register_script(internals.STORE_SCRIPT)
    meta = internals.result_meta(backend, ours, "SUCCESS", value, "2026-01-01T00:00:00+00:00")
    script(
        keys=["", "", internals.result_key(backend, ours)], args=[internals.result_ttl_s(backend), 0, "", "", 0, meta]
    )
    stored_ours = backend.decode_result(backend.client.get(internals.result_key(backend, ours)))
    stored_theirs = backend.decode_result(backend.client.get(backend.get_key_for_task(theirs)))
    for stored in (stored_ours, stored_theirs):
        stored.pop("date_done")
        stored.pop("task_id")
        stored["children"] = stored["children"] or []  # [] from a task's request, None without one
    assert stored_ours == stored_theirs
    assert backend.client.ttl(internals.result_key(backend, ours)) == backend.client.ttl(
        backend.get_key_for_task(theirs)
    )
    assert AsyncResult(ours, app=app).get(timeout=5) == value


def test_1_a_waiting_result_wakes_on_the_scripts_publish(backend: Any) -> None:
    task_id = str(uuid.uuid4())
    result: AsyncResult[Any] = AsyncResult(task_id, app=app)
    assert result.state == "PENDING"  # subscribed from here on
    script = backend.client.register_script(internals.STORE_SCRIPT)
    meta = internals.result_meta(backend, task_id, "SUCCESS", {"ok": True}, "2026-01-01T00:00:00+00:00")
    script(keys=["", "", internals.result_key(backend, task_id)], args=[0, 1, "", "", 0, meta])
    assert result.get(timeout=5) == {"ok": True}


def test_2_a_cached_meta_answers_without_the_backend() -> None:
    offline = Celery("offline", backend="redis://127.0.0.1:9/0", set_as_current=False)
    result: AsyncResult[Any] = AsyncResult("cached", app=offline)
    internals.cache_meta(result, {"status": "SUCCESS", "result": {"k": 1}, "traceback": None, "children": []})
    assert internals.cached_meta(result) is not None
    assert result.state == "SUCCESS" and result.get(timeout=1) == {"k": 1}


def test_3_result_set_without_its_barrier_has_what_result_set_init_sets(backend: Any) -> None:
    results: list[AsyncResult[Any]] = [AsyncResult(str(uuid.uuid4()), app=app) for _ in range(3)]
    real = ResultSet(results, app=app)
    ours = object.__new__(ResultSet)
    internals.init_result_set(ours, results, app)
    assert set(vars(ours)) == set(vars(real))
    assert ours.results == results and ours.app is app
    internals.ensure_barrier(ours)
    assert ours._on_full is not None  # type: ignore[attr-defined]  # private, not in celery-types


def test_4_canvas_fields_are_request_fields_and_replay_calls_exist() -> None:
    context = Context(id="t", callbacks=[{"task": "x"}], chain=[{"task": "y"}], chord=None, group="g")
    assert internals.capture_canvas(context) == {"callbacks": [{"task": "x"}], "chain": [{"task": "y"}], "group": "g"}
    assert internals.capture_canvas(Context(id="plain")) is None
    mark = inspect.signature(app.backend.mark_as_failure).parameters
    assert {"request", "call_errbacks"} <= set(mark)
    assert list(inspect.signature(app.backend.on_chord_part_return).parameters)[:3] == ["request", "state", "result"]


def test_5_request_edits_stop_the_tracer_storing_and_firing(backend: Any) -> None:
    from celery.app.trace import build_tracer

    fired: list[Any] = []

    @app.task(name="tests.internals.quiet", bind=True, shared=False)
    def quiet(self: Any) -> str:
        internals.leave_outcome_to_flush(self.request)
        return "staged"

    task_id = str(uuid.uuid4())
    tracer = build_tracer(quiet.name, quiet, app=app, eager=False)
    request = {"id": task_id, "callbacks": [{"task": "tests.internals.never"}], "chain": None}
    app.send_task = lambda *a, **k: fired.append((a, k))  # type: ignore[method-assign,assignment]  # a stand-in that records
    try:
        tracer(task_id, [], {}, request)
    finally:
        del app.send_task
    assert backend.client.get(backend.get_key_for_task(task_id)) is None
    assert fired == []


def test_6_a_request_class_decides_the_events_the_worker_sends() -> None:
    from workers.tasks import put_object as put

    # A class or its dotted name, resolved as the worker's strategy does (celery.worker.strategy).
    assert symbol_by_name(put.Request) is internals.StagingRequest
    assert issubclass(internals.StagingRequest, Request)
    assert list(inspect.signature(Request.send_event).parameters) == ["self", "type", "fields"]


def test_7_custom_headers_reach_the_request_through_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from batcher.config import Settings
    from workers.app import create_app

    monkeypatch.delenv("CELERY_BROKER_URL")  # Celery prefers these to the settings
    monkeypatch.delenv("CELERY_RESULT_BACKEND")

    memory = create_app(Settings(bucket="contract"), {"broker_url": "memory://", "result_backend": "cache+memory://"})
    sent = memory.tasks["s3batch.put_object"].delay("k", b"x")
    with memory.connection_for_read() as connection:
        message = connection.SimpleQueue("s3batch").get(timeout=5)
    request = Request(message, app=memory, task=memory.tasks["s3batch.put_object"])
    context = Context(request.request_dict)
    assert context.id == sent.id
    assert isinstance(internals.header(context, internals.SENT_HEADER), float)


def test_8_event_dispatchers_say_whether_task_events_are_on() -> None:
    dispatcher = EventDispatcher(connection=None, enabled=False)
    consumer = type("Consumer", (), {"event_dispatcher": dispatcher})()
    assert internals.task_events_on(consumer) is False
    dispatcher.enabled, dispatcher.groups = True, {"task"}
    assert internals.task_events_on(consumer) is True
    dispatcher.groups = {"worker"}
    assert internals.task_events_on(consumer) is False


def test_9_log_records_name_their_task(caplog: pytest.LogCaptureFixture) -> None:
    from celery.app import trace

    caplog.set_level(logging.INFO)
    trace.info(trace.LOG_SUCCESS, {"id": "i", "name": "s3batch.flush", "return_value": None, "runtime": 0.1})
    trace.info(trace.LOG_RECEIVED, {"id": "i", "name": "s3batch.put_object"})
    memory = Celery("beat-contract", broker="memory://", set_as_current=False)
    # celery-types wants a schedule object; Celery takes seconds too (maybe_schedule), as beat_schedule does
    entry = ScheduleEntry(name="s3batch-flush", task="s3batch.flush", schedule=1.0, app=memory)  # type: ignore[arg-type]
    Scheduler(memory, lazy=True).apply_entry(entry, producer=memory.producer_pool.acquire(block=True))
    names = [(r.name, internals.logged_task_name(r)) for r in caplog.records if r.name in internals.TASK_LOGGERS]
    assert ("celery.app.trace", "s3batch.flush") in names
    assert ("celery.app.trace", "s3batch.put_object") in names
    assert ("celery.beat", "s3batch.flush") in names


def test_10_task_is_generic_only_from_celery_5_7() -> None:
    if CELERY_VERSION >= (5, 7):
        assert Task[Any, Any] is not None
    else:
        with pytest.raises(TypeError):
            Task[Any, Any]
    import workers.tasks  # imports on every supported Celery

    assert workers.tasks.put_object.name == "s3batch.put_object"


def test_kombu_redis_transport_options_exist() -> None:
    from importlib.metadata import version

    from kombu.transport.redis import Channel

    options = ["visibility_timeout", "unacked_key", "unacked_index_key", "unacked_mutex_key"]
    if tuple(int(part) for part in version("kombu").split(".")[:2]) >= (5, 7):
        options += ["unacked_restore_interval", "unacked_restore_throttle"]  # the 5 s sweep (README: reliability)
    for option in options:
        assert option in Channel.from_transport_options, option


def test_kombu_before_5_7_sweeps_for_dead_workers_messages_about_every_100_s() -> None:
    """workers.redelivery's figure for kombu 5.5 and 5.6: the transport's 10 s timer calls QoS.restore_visible,
    which scans on one call in its ``interval`` (10), besides the scan when a worker starts polling."""
    from importlib.metadata import version

    from kombu.transport.redis import QoS, Transport

    from workers.redelivery import restore_sweep_s

    if tuple(int(part) for part in version("kombu").split(".")[:2]) >= (5, 7):
        assert restore_sweep_s(app.conf.broker_transport_options) == 5  # interval 5 x throttle 1 (workers.app)
        return
    assert inspect.signature(QoS.restore_visible).parameters["interval"].default == 10
    assert "call_repeatedly(10, cycle.maybe_restore_messages)" in inspect.getsource(Transport.register_with_event_loop)
    assert restore_sweep_s(app.conf.broker_transport_options) == 10 * 10


def test_store_script_never_overwrites_a_final_state(backend: Any) -> None:
    task_id = str(uuid.uuid4())
    key = internals.result_key(backend, task_id)
    script = backend.client.register_script(internals.STORE_SCRIPT)
    done = internals.result_meta(backend, task_id, "SUCCESS", {"v": 1}, "2026-01-01T00:00:00+00:00")
    staged = internals.result_meta(backend, task_id, "STAGED", {"v": 0}, None)
    assert script(keys=["", "", key], args=[0, 1, "", "", 0, done]) == 1
    assert script(keys=["", "", key], args=[0, 1, "", "", 0, staged]) == 0
    assert json.loads(backend.client.get(key))["status"] == "SUCCESS"
    assert isinstance(backend.client, redis.Redis)


def test_11_forgetting_the_pools_sends_the_next_message_to_the_broker_named_now(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def pools() -> tuple[str, bool]:
        """The database of the app's connection pool, and whether its producer pool draws from it."""
        celery_app: Any = app
        return str(celery_app.pool.connection.virtual_host), celery_app.amqp.producer_pool.connections is app.pool

    first, shared = pools()
    assert shared
    monkeypatch.setenv("CELERY_BROKER_URL", redis_server.url(7))
    assert pools() == (first, True)  # kept for the first URL
    internals.forget_broker_connections(app)
    assert pools() == ("7", True) and first != "7"
    with app.producer_or_acquire() as producer:
        assert producer.connection.virtual_host == "7"
    monkeypatch.undo()
    internals.forget_broker_connections(app)
    assert pools() == (first, True)


def test_12_before_celery_5_7_dropping_a_result_stops_every_wait_on_its_id(backend: Any) -> None:
    task_id = str(uuid.uuid4())
    waiting: AsyncResult[Any] = AsyncResult(task_id, app=app)
    backend.add_pending_result(waiting)
    other: AsyncResult[Any] = AsyncResult(task_id, app=app)
    del other  # AsyncResult.__del__
    still_waiting = any(task_id in mapping for mapping in backend._pending_results)
    assert still_waiting is (CELERY_VERSION >= (5, 7))
    backend.remove_pending_result(waiting)


def test_12_put_object_results_die_by_reference_counting_so_a_group_hears_its_members(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc
    import weakref

    from celery import group

    from batcher.config import Settings
    from workers.app import create_app

    monkeypatch.delenv("CELERY_BROKER_URL")  # Celery prefers these to the settings
    monkeypatch.delenv("CELERY_RESULT_BACKEND")
    guest = create_app(Settings(bucket="contract"), {"broker_url": "memory://", "result_backend": redis_server.url(0)})
    put_object = guest.tasks["s3batch.put_object"]
    gc.disable()
    try:
        dropped = weakref.ref(put_object.delay("k", b"x"))
        assert dropped() is None, "a put_object result is in a reference cycle"
    finally:
        gc.enable()
    # group.apply_async drops what put_object.apply_async returns and waits on its frozen members
    grouped = group(put_object.s(f"group/{i}", b"x") for i in range(3)).apply_async()
    gc.collect()  # where a cycle would have kept a dropped result, its __del__ runs now
    script = cast(Any, guest.backend).client.register_script(internals.STORE_SCRIPT)
    for i, member in enumerate(cast(Any, grouped).results):
        meta = internals.result_meta(guest.backend, member.id, "SUCCESS", {"n": i}, "2026-01-01T00:00:00+00:00")
        script(keys=["", "", internals.result_key(guest.backend, member.id)], args=[60, 1, "", "", 0, meta])
    assert grouped.get(timeout=10) == [{"n": 0}, {"n": 1}, {"n": 2}]
