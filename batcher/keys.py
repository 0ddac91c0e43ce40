"""Every Redis key s3batch stages with, under one namespace.

All keys of a lane share the hash tag ``{lane}`` so that each Lua script only
touches keys of one Redis Cluster slot (``Keys``). The indexes that find the
lanes with work to do are single keys of their own (``IndexKeys``), each read
or written by single-key commands, so they work on a Redis Cluster too.
"""

from __future__ import annotations

from dataclasses import dataclass

NAMESPACE = "s3batch"


@dataclass(frozen=True)
class Keys:
    """Key names of one staging lane."""

    lane: str
    namespace: str = NAMESPACE

    @property
    def _base(self) -> str:
        return f"{self.namespace}:{{{self.lane}}}"

    @property
    def queue(self) -> str:
        """LIST of queue entries ``"<staged_ms> <size> <record_id>"`` in staging order."""
        return f"{self._base}:queue"

    @property
    def totals(self) -> str:
        """HASH of counters: staged_bytes (all in Redis), queued_bytes and queued_objects (not claimed), the
        lifetime uploaded_objects, uploaded_batches, uploaded_bytes, uploaded_tar_bytes, put_requests,
        failed_rounds and lost_objects, and last_upload_ms."""
        return f"{self._base}:totals"

    @property
    def epoch(self) -> str:
        """STRING naming this lane's staged data (``"<id> <created_ms>"``): it exists as long as the data does, so
        a new one after a restart tells that what was staged before is gone."""
        return f"{self._base}:epoch"

    @property
    def waiting(self) -> str:
        """ZSET of claimed batches not yet uploaded (in flight or dead-lettered), scored by the staging time of their
        oldest object: with the queue's head, the oldest object waiting anywhere."""
        return f"{self._base}:waiting"

    @property
    def leases(self) -> str:
        """ZSET of claimed batch ids scored by lease expiry (ms since the epoch)."""
        return f"{self._base}:leases"

    @property
    def dead(self) -> str:
        """ZSET of dead-lettered batch ids (retry budget spent) scored by when they died (ms)."""
        return f"{self._base}:dead"

    @property
    def flush_requested(self) -> str:
        """STRING with a short expiry: a flush was already requested, do not ask again."""
        return f"{self._base}:flush-requested"

    def record(self, record_id: str) -> str:
        """HASH of one staged object: its head and its body (batcher.records)."""
        return f"{self._base}:rec:{record_id}"

    def seen(self, record_id: str) -> str:
        """STRING with an expiry, the fingerprint of what this record id staged: never stage it again, and refuse
        another key or body under the same id."""
        return f"{self._base}:seen:{record_id}"

    def batch(self, batch_id: str) -> str:
        """HASH describing one claimed batch (S3 key, creation time, lease token, state)."""
        return f"{self._base}:batch:{batch_id}"

    def batch_entries(self, batch_id: str) -> str:
        """LIST of the queue entries a batch claimed, in staging order."""
        return f"{self._base}:batch:{batch_id}:entries"


@dataclass(frozen=True)
class IndexKeys:
    """Keys of the indexes over all lanes (batcher.lanes), and of the workers' heartbeats."""

    namespace: str = NAMESPACE

    @property
    def partitions(self) -> str:
        """HASH of partition id -> JSON [bucket, prefix]."""
        return f"{self.namespace}:partitions"

    @property
    def lanes(self) -> str:
        """SET of every lane that ever staged (for stats and the sweep that repairs the indexes)."""
        return f"{self.namespace}:lanes"

    @property
    def due(self) -> str:
        """ZSET of lanes with staged objects, scored by their oldest object's staging time (ms; 0 or 1 when they
        hold a full batch): due once the score is S3BATCH_MAX_BATCH_AGE old."""
        return f"{self.namespace}:due"

    @property
    def leased(self) -> str:
        """ZSET of lanes with claimed batches, scored by (at most) their earliest lease expiry (ms)."""
        return f"{self.namespace}:leased"

    @property
    def dead(self) -> str:
        """SET of lanes with dead-lettered batches."""
        return f"{self.namespace}:dead-lanes"

    @property
    def probe(self) -> str:
        """STRING with a short expiry: a flush asked S3 lately whether it answers again (for transient dead
        letters); the others need not."""
        return f"{self.namespace}:probe"

    @property
    def sweep(self) -> str:
        """STRING with an expiry: a flush checked every lane against the indexes lately."""
        return f"{self.namespace}:sweep"

    @property
    def metrics(self) -> str:
        """HASH of what the flushes did (batcher.metrics): counters and histogram buckets in fields
        ``<partition id>|<name>``, and in field ``<lane>`` what the lane held when a flush last finished one of its
        batches. One key, so that one script writes a batch's figures on a Redis Cluster too."""
        return f"{self.namespace}:metrics"

    @property
    def consumers(self) -> str:
        """HASH of worker name -> "<last report ms> <queue>,<queue>..." (batcher.consumers)."""
        return f"{self.namespace}:consumers"
