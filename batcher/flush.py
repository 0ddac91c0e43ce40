"""The flush: claim due batches, build their tar, upload it, publish refs, clean up.

Results go to a ResultSink passed in, so the library knows nothing of Celery.
Every step can be repeated by a later flush that takes over an expired lease:
the tar is rebuilt byte for byte from the staged records and the conditional
upload finds the first copy. Nothing leaves Redis before its batch is in S3.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from batcher import checkpoints
from batcher.clock import ServerClock
from batcher.config import Settings
from batcher.errors import BatchConflictError, DeadLetterError, PermanentUploadError, StagingError, UploadError
from batcher.ids import new_batch_id
from batcher.lanes import SWEEP_EVERY_MS, Lanes
from batcher.metrics import Recorder, Uploaded
from batcher.models import BatchRef, ClaimedBatch, StagedObject
from batcher.partitions import default_partition, lane_index_of
from batcher.staging import Staging
from batcher.tarwriter import build_tar
from batcher.uploader import Uploader

log = logging.getLogger(__name__)

PUBLISH_CHUNK = 1000
# Batches of at least this many bytes are flushed one at a time, so that a flush's memory stays that of one
# batch (read chunk, in-memory spool and multipart part, each at its cap); smaller ones overlap by two.
ALONE_BYTES = 16 * 1024 * 1024
MAX_BACKOFF_S = 60.0
REKEY_ATTEMPTS = 3
MAX_DUE_PAGES = 64  # pages of due lanes one flush works through before it returns (beat sends the next)
PROBE_INTERVAL_MS = 15_000  # how often a flush asks S3 whether it answers again, while batches wait for it


class ResultSink(Protocol):
    """Where the flush reports each object's outcome; both calls must be idempotent."""

    def publish(self, batch: ClaimedBatch, uploaded: Sequence[tuple[StagedObject, BatchRef]]) -> None:
        """Store SUCCESS with the ref of each object of ``batch`` (given as staging holds it, without its body)."""

    def fail(
        self, batch: ClaimedBatch, record_ids: Sequence[str], error: Exception, heads: Mapping[str, StagedObject]
    ) -> None:
        """Store FAILURE with ``error`` for each record id; ``heads`` holds those staging still describes."""


@dataclass(frozen=True)
class FlushedBatch:
    """One batch a flush handled, for logs and reports; ``error`` is set when it was not uploaded."""

    batch_id: str
    bucket: str
    key: str
    objects: int
    size_bytes: int
    tar_bytes: int
    seconds: float
    recovered: bool
    error: str | None = None


def batch_key(prefix: str, batch_id: str, created_ms: int) -> str:
    """``{prefix}{YYYY}/{MM}/{DD}/{HH}/{batch_id}.tar`` in UTC."""
    when = datetime.fromtimestamp(created_ms / 1000, tz=UTC)
    return f"{prefix}{when:%Y/%m/%d/%H}/{batch_id}.tar"


def backoff_s(attempts: int) -> float:
    """Seconds to wait after ``attempts`` failed uploads: exponential from 1 s, capped, jittered."""
    return min(MAX_BACKOFF_S, 2.0 ** (attempts - 1)) * random.uniform(0.5, 1.0)


class Flusher:
    """Turns due staged objects into uploaded batches, in every lane of every partition."""

    def __init__(
        self,
        settings: Settings,
        lanes: Lanes,
        uploader: Uploader,
        results: ResultSink,
        *,
        parallel: int = 2,
    ) -> None:
        settings.require_bucket()  # the default partition's: workers need one
        self.settings = settings
        self.lanes = lanes
        self.uploader = uploader
        self.results = results
        self.parallel = parallel
        self.metrics = Recorder(lanes.client, lanes.keys)
        # Leases and ages are compared across hosts: one clock for all, the staging Redis's (batcher.clock).
        self.clock = ServerClock(lanes.client)

    def flush(self, *, force: bool = False, max_batches: int | None = None) -> list[FlushedBatch]:
        """Finish abandoned or retrying batches, then close and upload every due batch (every staged one when
        ``force``).

        The lanes with work are found through their indexes (batcher.lanes), at the cost of a few commands
        however many partitions there are. Up to ``parallel`` batches are in flight at once, so that one
        batch's tar is built while the previous one uploads and publishes; a batch is claimed only when a slot
        is free for it, and one of ALONE_BYTES or more is flushed alone.
        """
        self.clock.sample()
        self._revive_when_s3_answers()
        if self.lanes.take_turn(self.lanes.keys.sweep, SWEEP_EVERY_MS):
            self.lanes.sweep(self._now_ms())
        done: list[FlushedBatch] = []
        running: set[Future[FlushedBatch]] = set()

        def make_room(slots: int) -> None:
            nonlocal running
            while len(running) > slots:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                done.extend(future.result() for future in finished)

        def room_for_more() -> bool:
            return max_batches is None or len(done) + len(running) < max_batches

        with ThreadPoolExecutor(self.parallel, thread_name_prefix="s3batch-flush") as pool:

            def start(batch: ClaimedBatch, *, recovered: bool = False) -> None:
                alone = batch.size_bytes >= ALONE_BYTES  # a big batch's buffers are at their caps: one at a time
                make_room(0 if alone else self.parallel - 1)
                running.add(pool.submit(self.process, batch, recovered=recovered))
                if alone:
                    make_room(0)

            try:
                for lane, seen in self.lanes.leased(self._now_ms()):
                    staging = self.lanes.staging(lane)
                    for batch_id in staging.expired(self._now_ms()):
                        make_room(self.parallel - 1)
                        taken = staging.take_over(batch_id, self._now_ms())
                        if taken is not None:
                            start(taken, recovered=True)
                    self.lanes.settle_leased(lane, seen)
                for _ in range(1 if force else MAX_DUE_PAGES):  # a page of due lanes at a time, the oldest first
                    due = [(lane, 0.0) for lane in self.lanes.all()] if force else self.lanes.due(self._now_ms())
                    for lane, seen in due:
                        score = 0
                        while room_for_more():
                            make_room(self.parallel - 1)
                            claimed, score = self._claim(lane, force=force)
                            if claimed is None:
                                break
                            start(claimed)
                        if not force:
                            self.lanes.settle_due(lane, seen, score)
                    if not due or not room_for_more():
                        break
            finally:
                make_room(0)
        return done

    def claim(self, lane: str | None = None, *, force: bool = False) -> ClaimedBatch | None:
        """Claim the next due batch of ``lane`` (the default partition's first lane), or None when none is due."""
        return self._claim(lane or default_partition(self.settings).lane(0), force=force)[0]

    def _claim(self, lane: str, *, force: bool) -> tuple[ClaimedBatch | None, int]:
        now_ms = self._now_ms()
        batch_id = f"{new_batch_id(now_ms)}-{lane_index_of(lane)}"  # which lane of its partition, in its key too
        s3_key = batch_key(self.lanes.partition_of(lane).prefix, batch_id, now_ms)
        claimed, score = self.lanes.staging(lane).claim(now_ms=now_ms, batch_id=batch_id, s3_key=s3_key, force=force)
        if claimed is not None:
            self.lanes.mark_leased(lane, now_ms + self.lanes.limits.lease_ms)
        return claimed, score

    def _staging(self, batch: ClaimedBatch) -> Staging:
        return self.lanes.staging(batch.lane)

    def _bucket(self, batch: ClaimedBatch) -> str:
        return self.lanes.partition_of(batch.lane).bucket

    def _revive_when_s3_answers(self) -> None:
        """Batches dead-lettered for a transient reason (their retry budget ran out) are uploaded again, with
        a fresh budget, as soon as S3 answers again: one flush asks it every PROBE_INTERVAL_MS while there are
        any. Permanent refusals wait for an operator (``s3batch retry``)."""
        if not self.lanes.take_turn(self.lanes.keys.probe, PROBE_INTERVAL_MS):
            return
        answers: dict[str, bool] = {}  # by bucket
        now_ms = self._now_ms()
        revived = 0
        for lane in self.lanes.dead():
            staging, partition = self.lanes.staging(lane), self.lanes.partition_of(lane)
            waiting = [row["batch_id"] for row in staging.dead_letters() if row.get("dead_reason") == "transient"]
            if not waiting:
                continue
            if partition.bucket not in answers:
                answers[partition.bucket] = self.uploader.probe(partition.bucket, f"{partition.prefix}.s3batch-probe")
            if answers[partition.bucket]:
                revived += sum(staging.revive(batch_id, now_ms) for batch_id in waiting)
                self.lanes.settle_dead(lane)
                self.lanes.mark_due(lane, 0)
                self.lanes.mark_leased(lane, now_ms)
        if revived:
            log.warning("s3batch: S3 answers again; %d batches dead-lettered by the outage are uploaded again", revived)

    def process(self, batch: ClaimedBatch, *, recovered: bool = False) -> FlushedBatch:
        """Upload a claimed batch, publish its refs and delete it from staging.

        An upload failure holds the batch back for a backoff, or dead-letters it (callers get
        FAILURE, records stay) once the retry budget is spent or the failure is permanent.
        """
        started = time.monotonic()
        checkpoints.reached("claimed")
        heads: list[StagedObject] = []
        tar_bytes = 0
        holder = [batch]  # a new key replaces the batch in it
        try:
            if batch.state != "done":
                heads = self._staging(batch).heads(batch)
                with self._lease(holder):  # the renewals stop before a failure sets the backoff
                    tar_bytes, etag, refs = self._upload_rekeying(holder, heads, may_exist=recovered)
        except UploadError as exc:
            return self._failed(holder[0], heads, exc, started, recovered)
        except Exception as exc:  # a missing record, a broken tar: counted like a failed upload
            log.exception("s3batch batch %s could not be built or uploaded", batch.batch_id)
            error = UploadError(f"batch {batch.batch_id} could not be built or uploaded: {exc!r}")
            return self._failed(holder[0], heads, error, started, recovered)
        batch = holder[0]
        with self._lease([batch]):
            if batch.state != "done":
                checkpoints.reached("uploaded")
                for start in range(0, len(refs), PUBLISH_CHUNK):
                    self.results.publish(batch, refs[start : start + PUBLISH_CHUNK])
                    checkpoints.reached("published-chunk")
                if not self._staging(batch).mark_uploaded(
                    batch, etag, tar_bytes, self.uploader.requests_for(tar_bytes)
                ):
                    log.warning("s3batch batch %s was taken over meanwhile; its new holder cleans up", batch.batch_id)
                    return self._report(batch, tar_bytes, started, recovered)
                checkpoints.reached("marked-done")
            self._staging(batch).delete_records(
                [head.record_id for head in heads] or self._staging(batch).record_ids(batch)
            )
            dropped = self._staging(batch).drop(batch, self._now_ms())
        report = self._report(batch, tar_bytes, started, recovered)
        if dropped:  # only the flush whose drop counted the batch in staging's totals counts it in the metrics
            uploaded = Uploaded(
                batch.objects, batch.size_bytes, tar_bytes, self.uploader.requests_for(tar_bytes) if tar_bytes else 1,
                report.seconds, [head.staged_ms for head in heads],
            )  # fmt: skip
            self.metrics.uploaded(batch.lane, uploaded, self._lane_totals(batch), self._now_ms())
        log.info(
            "s3batch batch uploaded batch_id=%s objects=%d bytes=%d tar_bytes=%d seconds=%.3f "
            "key=s3://%s/%s recovered=%s",
            report.batch_id, report.objects, report.size_bytes, report.tar_bytes, report.seconds,
            self._bucket(batch), report.key, recovered,
        )  # fmt: skip
        return report

    def _upload_rekeying(
        self, holder: list[ClaimedBatch], heads: Sequence[StagedObject], *, may_exist: bool
    ) -> tuple[int, str, list[tuple[StagedObject, BatchRef]]]:
        """``_upload`` the batch in ``holder``; when its key holds another object, give it a new id and key
        (``holder`` then names it) and upload it there: a key fixed at claim time must not keep a batch from ever
        landing."""
        for _ in range(REKEY_ATTEMPTS):
            batch = holder[0]
            try:
                return self._upload(batch, heads, may_exist=may_exist)
            except BatchConflictError as exc:
                now_ms = self._now_ms()
                new_id = f"{new_batch_id(now_ms)}-{lane_index_of(batch.lane)}"
                prefix = self.lanes.partition_of(batch.lane).prefix
                moved = self._staging(batch).rekey(batch, new_id, batch_key(prefix, new_id, now_ms), now_ms)
                if moved is None:
                    raise UploadError(f"batch {batch.batch_id} was taken over while it got a new key") from exc
                log.warning("s3batch batch %s: %s; uploading it as batch %s instead", batch.batch_id, exc, new_id)
                self.metrics.outcome(batch.lane, "rekeyed", None, now_ms)
                holder[0], may_exist = moved, False
        raise BatchConflictError(f"batch {holder[0].batch_id}: {REKEY_ATTEMPTS} keys in a row held other objects")

    def _upload(
        self, batch: ClaimedBatch, heads: Sequence[StagedObject], *, may_exist: bool
    ) -> tuple[int, str, list[tuple[StagedObject, BatchRef]]]:
        objects = self._staging(batch).with_bodies(heads)
        keys = [head.object_key for head in heads]
        partition = self.lanes.partition_of(batch.lane)
        with build_tar(
            keys, objects, batch_id=batch.batch_id, created_ms=batch.created_ms, checksum=self.settings.upload_checksum
        ) as tar:
            checkpoints.reached("tar-built")
            args = self.settings.upload_args_for(partition.bucket, partition.prefix)
            etag = self.uploader.upload(partition.bucket, batch.s3_key, tar, may_exist=may_exist, args=args)
        refs = [
            (head, BatchRef(self._bucket(batch), batch.s3_key, m.offset, m.size, m.key, batch.batch_id, etag, m.sha256))
            for head, m in zip(heads, tar.members, strict=True)
        ]
        return tar.size, etag, refs

    def _failed(
        self,
        batch: ClaimedBatch,
        heads: Sequence[StagedObject],
        exc: UploadError,
        started: float,
        recovered: bool,
    ) -> FlushedBatch:
        """Back off and try again later while the retry budget (in time) lasts; then, or at once for a refusal
        that retrying cannot fix, dead-letter the batch and tell its callers why."""
        now_ms = self._now_ms()
        attempts, first_failed_ms = self._staging(batch).record_failure(batch, str(exc), now_ms)
        if attempts < 0:
            return self._report(batch, 0, started, recovered, str(exc))
        permanent = isinstance(exc, PermanentUploadError)
        budget_ms = int(self.settings.upload_retry_s * 1000)
        failing_ms = now_ms - first_failed_ms
        if not permanent and failing_ms < budget_ms:
            retry_at_ms = now_ms + min(int(backoff_s(attempts + 1) * 1000), budget_ms - failing_ms)
            self._staging(batch).renew(batch, retry_at_ms)  # the lease becomes the backoff
            self.lanes.mark_leased(batch.lane, retry_at_ms)  # so that a tick finds it then, not at the lease's end
            log.warning(
                "s3batch batch %s upload round %d failed (%.0f s of the %.0f s retry budget spent), retrying in "
                "%.1f s: %s",
                batch.batch_id, attempts, failing_ms / 1000, budget_ms / 1000, (retry_at_ms - now_ms) / 1000, exc,
            )  # fmt: skip
            self.metrics.outcome(batch.lane, "retried", self._lane_totals(batch), self._now_ms())
            return self._report(batch, 0, started, recovered, str(exc))
        where = f"batch {batch.batch_id} (s3://{self._bucket(batch)}/{batch.s3_key}, {batch.objects} objects)"
        if permanent:
            error = DeadLetterError(
                f"{where} was refused by S3: {exc}. Its objects are kept in Redis; fix the cause, then "
                f"`s3batch retry {batch.batch_id}` uploads it again"
            )
        else:
            error = DeadLetterError(
                f"{where} could not be uploaded for {failing_ms / 1000:.0f} s (S3BATCH_UPLOAD_RETRY_SECONDS="
                f"{self.settings.upload_retry_s:g}): {exc}. Its objects are kept in Redis and it is uploaded by "
                "itself once S3 answers again"
            )
        record_ids = [head.record_id for head in heads] or self._staging(batch).record_ids(batch)
        if self._staging(batch).dead_letter(batch, str(exc), now_ms, transient=not permanent):
            self.lanes.mark_dead(batch.lane)
            self.results.fail(batch, record_ids, error, {head.record_id: head for head in heads})
            log.error("s3batch %s", error)
            self.metrics.outcome(batch.lane, "dead_lettered", self._lane_totals(batch), self._now_ms())
        return self._report(batch, 0, started, recovered, str(exc))

    def _lane_totals(self, batch: ClaimedBatch) -> dict[str, int] | None:
        """The lane's figures for the metrics (Staging.totals), or None when Redis does not answer: the flush goes
        on without them."""
        try:
            return self._staging(batch).totals()
        except StagingError as exc:
            log.warning("s3batch could not read lane %s for the metrics: %s", batch.lane, exc)
            return None

    def _report(
        self, batch: ClaimedBatch, tar_bytes: int, started: float, recovered: bool, error: str | None = None
    ) -> FlushedBatch:
        return FlushedBatch(
            batch.batch_id, self._bucket(batch), batch.s3_key, batch.objects, batch.size_bytes, tar_bytes,
            time.monotonic() - started, recovered, error,
        )  # fmt: skip

    def _now_ms(self) -> int:
        return self.clock.now_ms()

    @contextmanager
    def _lease(self, holder: list[ClaimedBatch]) -> Iterator[None]:
        """Renew the lease of the batch in ``holder`` (which a new key may replace) while the block runs."""
        stop = threading.Event()

        def renew() -> None:
            lease_ms = self.lanes.limits.lease_ms
            while not stop.wait(lease_ms / 3000):
                batch = holder[0]
                try:
                    if not self._staging(batch).renew(batch, self._now_ms() + lease_ms):
                        if holder[0] is not batch:
                            continue  # it got a new key meanwhile: renew that one
                        log.warning("s3batch lost the lease on batch %s", batch.batch_id)
                        return
                except Exception:  # a failed renewal only shortens the lease; the flush goes on
                    log.exception("s3batch could not renew the lease on batch %s", batch.batch_id)

        thread = threading.Thread(target=renew, name=f"lease-{holder[0].batch_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
