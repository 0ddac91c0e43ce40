"""The s3batch Celery app: ``celery -A workers.app worker -B`` runs a worker with embedded beat.

``create_app(settings)`` builds an app from one ``Settings`` object;
``workers.app:app`` is the one built from the environment (``Settings.from_env()``,
which also reads the ``S3BATCH_CELERY_CONFIG`` module), configured lazily: at
first use, not at import. The configuration module's Celery settings
(``imports``, ``worker_send_task_events``, ...) apply on top of s3batch's, and a
``broker_transport_options`` there is merged into s3batch's, key by key.

Broker and result backend default to S3BATCH_REDIS_URL; CELERY_BROKER_URL and
CELERY_RESULT_BACKEND override them (Celery reads those itself). Only JSON
messages are accepted.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from celery import Celery
from celery.signals import beat_init, celeryd_after_setup, worker_init
from kombu import Exchange, Queue

from batcher.config import CONFIG_MODULE_VARIABLE, MODULE_PREFIX, Settings, load_config_module
from batcher.errors import ConfigError

log = logging.getLogger(__name__)

EXCHANGE = "s3batch"
QUEUE = "s3batch"
# Flushes get a queue of their own, so that a backlog of put_object messages never holds back the
# beat tick that uploads aged batches (a worker consumes both queues unless told otherwise). Each queue
# has its own routing key, so a message reaches exactly one of them.
FLUSH_QUEUE = "s3batch.flush"
PUT_ROUTING_KEY = "s3batch.put_object"
FLUSH_ROUTING_KEY = "s3batch.flush"
# kombu's Redis transport keeps one table of unacknowledged messages per database, shared by every app on
# it, and a worker's restore sweep redelivers whatever in it is older than *its* visibility timeout: with
# these names of its own, s3batch's short timeout never re-runs another app's long tasks, and another app's
# sweep never touches s3batch's messages.
# RabbitMQ gives a consumer's unacknowledged messages back when its connection closes; a worker that hangs whole
# (SIGSTOP, a frozen VM, a cut network) keeps its connection until RabbitMQ has seen nothing from it for two of
# its once-per-heartbeat checks, 2 to 3 heartbeats. With Celery's default (120 s, negotiated down to the node's
# 60 s) a hung worker held its prefetched put_objects for about three minutes; 10 s brings them back within
# 20-30 s (tests/test_brokers.py), and a live worker's main process sends heartbeats from its event loop every
# 5 s (broker_heartbeat_checkrate 2).
AMQP_HEARTBEAT_S = 10
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp", "librabbitmq")
UNACKED_KEYS = {
    "unacked_key": "s3batch.unacked",
    "unacked_index_key": "s3batch.unacked_index",
    "unacked_mutex_key": "s3batch.unacked_mutex",
}


class S3BatchApp(Celery):
    """A Celery app configured from one Settings object (loaded from the environment at first use if not given)."""

    def __init__(
        self,
        settings: Settings | None = None,
        config_module: Mapping[str, Any] | None = None,
        *,
        include: list[str] | None = None,
    ) -> None:
        # Not the process's current app: a host application that imports s3batch keeps its own.
        super().__init__("s3batch", set_as_current=False, include=include)
        self._s3batch_settings = settings
        self._config_module = config_module
        self.add_defaults(self._celery_settings)

    def _celery_settings(self) -> dict[str, Any]:
        try:
            return celery_settings(self.s3batch_settings, self.config_module)
        except ConfigError:
            # Said in one line where it can be: the worker's preflight, beat's start, a producer's first call.
            return {}

    @property
    def s3batch_settings(self) -> Settings:
        """The settings this app's tasks use."""
        if self._s3batch_settings is None:
            self._s3batch_settings = Settings.from_env()
        return self._s3batch_settings

    @property
    def config_module(self) -> Mapping[str, Any]:
        """The Celery settings of the S3BATCH_CELERY_CONFIG module (empty when there is none)."""
        if self._config_module is None:
            name = (os.environ.get(CONFIG_MODULE_VARIABLE) or "").strip()
            self._config_module = load_config_module(name) if name else {}
        return self._config_module


def celery_settings(settings: Settings, module: Mapping[str, Any]) -> dict[str, Any]:
    """s3batch's Celery settings for ``settings``, with ``module``'s Celery settings on top.

    A ``broker_transport_options`` in ``module`` is merged into s3batch's, never replaces them.
    """
    exchange = Exchange(EXCHANGE, type="direct")
    conf: dict[str, Any] = {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "result_expires": settings.result_expires_s,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Dedicated queues, so that a busy application queue never delays staging or flushes.
        "task_default_queue": QUEUE,
        "task_default_exchange": EXCHANGE,
        "task_default_routing_key": PUT_ROUTING_KEY,
        "task_queues": [
            Queue(QUEUE, exchange, routing_key=PUT_ROUTING_KEY),
            Queue(FLUSH_QUEUE, exchange, routing_key=FLUSH_ROUTING_KEY),
        ],
        "task_routes": {
            "s3batch.put_object": {"queue": QUEUE, "routing_key": PUT_ROUTING_KEY},
            "s3batch.flush": {"queue": FLUSH_QUEUE, "routing_key": FLUSH_ROUTING_KEY},
        },
        # Late ack: a worker killed before staging leaves the message to be redelivered.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "broker_transport_options": broker_transport_options(settings),
        "broker_connection_retry_on_startup": True,
        "beat_schedule": {
            "s3batch-flush": {
                "task": "s3batch.flush",
                "schedule": settings.flush_interval_s,
                # A tick nobody picked up soon is superseded by the next one.
                "options": {"expires": max(5.0, 5 * settings.flush_interval_s)},
            }
        },
        "timezone": "UTC",
    }
    if is_amqp(os.environ.get("CELERY_BROKER_URL") or module.get("broker_url") or settings.redis_url):
        conf["broker_heartbeat"] = AMQP_HEARTBEAT_S  # a configuration module's own value wins (below)
    overrides = {key: value for key, value in module.items() if not key.startswith(MODULE_PREFIX)}
    theirs = overrides.pop("broker_transport_options", None) or {}
    conf.update(overrides)
    conf["broker_transport_options"] = {**conf["broker_transport_options"], **theirs}
    return conf


def is_amqp(broker_url: Any) -> bool:
    """True when ``broker_url`` (a URL, ``;``-separated failover URLs, or a list of them) names RabbitMQ."""
    first = broker_url[0] if isinstance(broker_url, list | tuple) and broker_url else broker_url
    scheme = str(first or "").split(";", 1)[0].split("://", 1)[0].split("+")[-1].strip().lower()
    return scheme in AMQP_SCHEMES


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """s3batch's own transport options (used by the Redis transport; other transports ignore them).

    A dead worker's unacknowledged messages come back after the visibility timeout: about three batch ages,
    so that its objects still land soon. Redelivering a live worker's message is harmless: staging is
    idempotent per task id, and a second flush finds nothing left to do. The sweep that gives them back
    runs every 5 s (kombu's default is about every 100 s).
    """
    return {
        "visibility_timeout": max(10, int(3 * settings.max_batch_age_s)),
        "unacked_restore_interval": 5,
        "unacked_restore_throttle": 1,
        **UNACKED_KEYS,
    }


def create_app(settings: Settings | None = None, config_module: Mapping[str, Any] | None = None) -> S3BatchApp:
    """A new s3batch app with its tasks, for ``settings`` (from the environment when None)."""
    from workers.tasks import register

    app = S3BatchApp(settings, config_module)
    register(app)
    return app


@worker_init.connect
def _add_bootsteps(sender: Any = None, **_: Any) -> None:
    """What an s3batch worker adds to Celery's: checks before it starts, the events state its pool processes
    need, the heartbeat that producers' waits read (registered before the worker builds its blueprints), and
    quiet logs for idle flush ticks."""
    celery_app = getattr(sender, "app", None)
    if not isinstance(celery_app, S3BatchApp):
        return
    from workers.liveness import Heartbeat
    from workers.monitoring import EventsFlag, EventsState, quiet_ticks
    from workers.preflight import Preflight

    celery_app.steps["worker"].update({Preflight, EventsFlag})
    celery_app.steps["consumer"].update({EventsState, Heartbeat})
    quiet_ticks()


@beat_init.connect
def _check_beat(sender: Any = None, **_: Any) -> None:
    """Beat of an s3batch app with bad settings stops at once with one line, as a worker does."""
    celery_app = getattr(sender, "app", None)
    if isinstance(celery_app, S3BatchApp):
        try:
            celery_app.s3batch_settings  # noqa: B018  (loading them is the check)
        except ConfigError as exc:
            log.critical("s3batch beat cannot start: %s", exc)
            print(f"s3batch beat cannot start: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None


@celeryd_after_setup.connect
def _log_redelivery(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """Say at start how long a dead worker's messages wait before they come back, and from where."""
    celery_app = getattr(instance, "app", None)
    if not isinstance(celery_app, S3BatchApp):
        return
    conf = celery_app.conf
    if is_amqp(conf.broker_url):
        log.info(
            "s3batch broker amqp: a dead worker's unacknowledged messages are redelivered when its connection "
            "closes, a hung worker's 2 to 3 heartbeats after its last frame (broker_heartbeat %s s); a task "
            "stuck in a live worker's only after the RabbitMQ node's consumer_timeout",
            conf.broker_heartbeat,
        )
        return
    timeout = conf.broker_transport_options.get("visibility_timeout")
    log.info(
        "s3batch broker %s: a dead worker's unacknowledged messages are redelivered after %s s "
        "(broker_transport_options visibility_timeout, Redis transport; kept in %s)",
        str(conf.broker_url).split("://", 1)[0], timeout, conf.broker_transport_options.get("unacked_key"),
    )  # fmt: skip


# The app of ``celery -A workers.app``; its tasks are registered when workers.tasks is imported (``include``).
app = S3BatchApp(include=["workers.tasks"])
