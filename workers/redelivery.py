"""Messages the Redis broker lost are sent again by the producers that still hold them.

kombu's Redis transport pops a message (BRPOP) and then records it as unacknowledged in a second command: a
worker SIGKILLed between the two loses the message, and its task stays PENDING for good (RabbitMQ has no such
window). A producer's wait (``PutObjectResult.get``, the bulk wait, ``s3batch put``) sends such a message again
with the same task id once it is certainly not in the broker any more: still PENDING longer than a dead worker's
messages take to come back, and the queue is empty or holds only messages sent after it. Staging is idempotent
per task id, so a message that was not lost after all costs a duplicate that stages nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from typing import Any, Protocol

import redis
from celery import Celery

from workers import celery_internals as internals
from workers.app import QUEUE

log = logging.getLogger(__name__)

MAX_RESENDS = 3
_MARGIN_S = 5.0
# kombu 5.7 sweeps for a dead worker's messages every unacked_restore_interval x unacked_restore_throttle seconds
# (5 x 1, workers.app); older ones scan on one call in 10 (QoS.restore_visible's interval) of a 10 s timer, so
# about every 100 s after the scan a worker makes when it starts (tests/test_celery_internals.py holds kombu to it).
_OLD_KOMBU_SWEEP_S = 100.0


class Resendable(Protocol):
    """A result whose producer can send its message again."""

    id: str
    sent_at: float | None
    resends: int

    def resend(self) -> None: ...


def restore_sweep_s(options: Mapping[str, Any]) -> float:
    """How often a running worker's kombu looks for dead workers' messages, with these broker transport options."""
    kombu_version = tuple(int(part) for part in version("kombu").split(".")[:2])
    if kombu_version < (5, 7):
        return _OLD_KOMBU_SWEEP_S
    return float(options.get("unacked_restore_interval", 10)) * float(options.get("unacked_restore_throttle", 10))


def lost_after_s(app: Celery) -> float:
    """How long a PENDING message may have been sent before it counts as lost: a dead worker's messages come
    back within the visibility timeout plus one sweep."""
    options = app.conf.broker_transport_options or {}
    return float(options.get("visibility_timeout", 3600)) + restore_sweep_s(options) + _MARGIN_S


def resend_lost(app: Celery, pending: Sequence[Resendable]) -> int:
    """Send again the messages of ``pending`` (results known to be PENDING) that the Redis broker lost; how many.

    Does nothing on other brokers (they acknowledge for real) or for results whose message cannot be resent.
    """
    candidates = [r for r in pending if r.sent_at is not None and r.resends < MAX_RESENDS]
    lost = lost_messages(app, [r.sent_at or 0.0 for r in candidates])
    now = time.time()
    for result, gone in zip(candidates, lost, strict=True):
        if gone:
            log.warning("s3batch: task %s stayed PENDING %.0f s and is not in the broker: sending it again",
                        result.id, now - (result.sent_at or now))  # fmt: skip
            result.resend()
    return sum(lost)


def lost_messages(app: Celery, sent_at: Sequence[float]) -> list[bool]:
    """For messages of PENDING tasks sent at ``sent_at`` (seconds since the epoch): which ones the Redis broker
    certainly no longer holds (all False on other brokers)."""
    broker_url = str(app.conf.broker_url)
    if not sent_at or not broker_url.startswith(("redis://", "rediss://", "unix://")):
        return [False] * len(sent_at)
    now = time.time()
    bound = lost_after_s(app)
    old = [now - sent > bound for sent in sent_at]
    if not any(old):
        return old
    oldest_queued = _oldest_sent_in_queue(broker_url)
    return [
        is_old and (oldest_queued is None or oldest_queued > sent) for is_old, sent in zip(old, sent_at, strict=True)
    ]


def _oldest_sent_in_queue(broker_url: str) -> float | None:
    """When the oldest message still in the put_object queue was sent (None: the queue is empty)."""
    client = redis.Redis.from_url(broker_url, socket_connect_timeout=5)
    try:
        raw: Any = client.lindex(QUEUE, -1)  # kombu pushes on the left and pops on the right
    finally:
        client.close()
    if raw is None:
        return None
    try:
        headers = json.loads(raw).get("headers") or {}
        return float(headers.get(internals.SENT_HEADER) or 0.0)
    except (ValueError, TypeError, AttributeError):
        return 0.0  # not one of ours: assume it is old, resend nothing
