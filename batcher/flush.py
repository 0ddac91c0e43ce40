"""The flush: claim due batches, build their tar, upload it, publish refs, clean up.

Results are published through a callable passed in, so the library knows
nothing of Celery. Every step can be repeated by a later flush that takes over
an expired lease: the tar is rebuilt byte for byte from the staged records and
the conditional upload finds the first copy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from batcher.config import Settings
from batcher.ids import new_batch_id
from batcher.models import BatchRef, ClaimedBatch
from batcher.staging import Staging
from batcher.tarwriter import build_tar
from batcher.uploader import Uploader

log = logging.getLogger(__name__)

Publisher = Callable[[Sequence[tuple[str, BatchRef]]], None]
"""Stores SUCCESS with the ref for each (record id, ref); must be idempotent."""

LEASE_S = 30.0


@dataclass(frozen=True)
class FlushedBatch:
    """One batch a flush finished, for logs and reports."""

    batch_id: str
    bucket: str
    key: str
    objects: int
    size_bytes: int
    tar_bytes: int
    seconds: float
    recovered: bool


def batch_key(prefix: str, batch_id: str, created_ms: int) -> str:
    """``{prefix}{YYYY}/{MM}/{DD}/{HH}/{batch_id}.tar`` in UTC."""
    when = datetime.fromtimestamp(created_ms / 1000, tz=UTC)
    return f"{prefix}{when:%Y/%m/%d/%H}/{batch_id}.tar"


class Flusher:
    """Turns due staged objects into uploaded batches."""

    def __init__(
        self,
        settings: Settings,
        staging: Staging,
        uploader: Uploader,
        publish: Publisher,
        *,
        lease_s: float = LEASE_S,
    ) -> None:
        self.settings = settings
        self.bucket = settings.require_bucket()
        self.staging = staging
        self.uploader = uploader
        self.publish = publish
        self.lease_ms = int(lease_s * 1000)

    def flush(self, *, force: bool = False, max_batches: int | None = None) -> list[FlushedBatch]:
        """Finish abandoned batches, then close and upload every due batch; raises S3BatchError."""
        self.staging.clear_flush_request()
        done: list[FlushedBatch] = []
        for batch_id in self.staging.expired(_now_ms()):
            batch = self.staging.take_over(batch_id, _now_ms(), self.lease_ms)
            if batch is not None:
                log.warning("s3batch taking over batch %s (its flush stopped before finishing)", batch_id)
                done.append(self.process(batch, recovered=True))
        while max_batches is None or len(done) < max_batches:
            batch = self.claim(force=force)
            if batch is None:
                break
            done.append(self.process(batch))
        return done

    def claim(self, *, force: bool = False) -> ClaimedBatch | None:
        """Claim the next due batch, or None when nothing is due."""
        now_ms = _now_ms()
        batch_id = new_batch_id(now_ms)
        return self.staging.claim(
            now_ms=now_ms,
            batch_id=batch_id,
            s3_key=batch_key(self.settings.prefix, batch_id, now_ms),
            max_age_ms=int(self.settings.max_batch_age_s * 1000),
            max_objects=self.settings.max_batch_objects,
            max_bytes=self.settings.max_batch_bytes,
            lease_ms=self.lease_ms,
            force=force,
        )

    def process(self, batch: ClaimedBatch, *, recovered: bool = False) -> FlushedBatch:
        """Upload a claimed batch, publish its refs and delete it from staging."""
        started = time.monotonic()
        entries = self.staging.entries(batch)
        tar_bytes = 0
        if batch.state != "done":
            keys = self.staging.read_keys(entries)
            with self._lease(batch), build_tar(keys, self.staging.read_objects(entries)) as tar:
                tar_bytes = tar.size
                etag = self.uploader.upload(self.bucket, batch.s3_key, tar)
            refs = [
                (
                    m.record_id,
                    BatchRef(
                        self.bucket,
                        batch.s3_key,
                        m.offset,
                        m.size,
                        m.object_key,
                        batch.batch_id,
                        etag,
                        m.sha256,
                    ),
                )
                for m in tar.members
            ]
            self.publish(refs)
            if not self.staging.mark_uploaded(batch, etag):
                log.warning(
                    "s3batch batch %s was taken over while uploading; leaving cleanup to its new holder",
                    batch.batch_id,
                )
                return self._report(batch, tar_bytes, started, recovered)
        self.staging.delete_records(entries)
        self.staging.drop(batch)
        report = self._report(batch, tar_bytes, started, recovered)
        log.info(
            "s3batch batch uploaded batch_id=%s objects=%d bytes=%d tar_bytes=%d seconds=%.3f key=s3://%s/%s",
            report.batch_id,
            report.objects,
            report.size_bytes,
            report.tar_bytes,
            report.seconds,
            self.bucket,
            report.key,
        )
        return report

    def _report(self, batch: ClaimedBatch, tar_bytes: int, started: float, recovered: bool) -> FlushedBatch:
        return FlushedBatch(
            batch.batch_id,
            self.bucket,
            batch.s3_key,
            batch.objects,
            batch.size_bytes,
            tar_bytes,
            time.monotonic() - started,
            recovered,
        )

    @contextmanager
    def _lease(self, batch: ClaimedBatch) -> Iterator[None]:
        """Renew the batch's lease in the background while the block runs."""
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lease_ms / 3000):
                try:
                    if not self.staging.renew(batch, _now_ms() + self.lease_ms):
                        log.warning("s3batch lost the lease on batch %s", batch.batch_id)
                        return
                except Exception:  # a failed renewal only shortens the lease; the flush goes on
                    log.exception("s3batch could not renew the lease on batch %s", batch.batch_id)

        thread = threading.Thread(target=renew, name=f"lease-{batch.batch_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def _now_ms() -> int:
    return int(time.time() * 1000)
