"""Partitions: the objects bound for one bucket and prefix, batched apart from all others (a tenant each).

A producer names a partition per call (``bucket=``, ``prefix=``; S3BATCH_BUCKET and S3BATCH_PREFIX by
default), and workers write only to buckets that S3BATCH_BUCKETS allows, so a producer cannot make them
write anywhere else. A partition is staged in ``Settings.lanes`` lanes; a lane is the unit of staging order
and of Redis Cluster placement (its name is its keys' hash tag, batcher.keys), and each producer process
keeps to one lane of a partition, so that its objects keep their order.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import zlib
from dataclasses import dataclass
from typing import Any

from batcher.config import Settings
from batcher.errors import InvalidBucketError, InvalidPrefixError

# S3's rules for bucket names (general purpose buckets): 3 to 63 lowercase letters, digits, dots and hyphens,
# beginning and ending with a letter or digit, not an IP address.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
# Room in a 1,024-byte S3 key for "YYYY/MM/DD/HH/" and "<ULID>-<lane>.tar".
MAX_PREFIX_BYTES = 1024 - 14 - 26 - 1 - 6 - 4


@dataclass(frozen=True)
class Partition:
    """Where a partition's batches go: ``s3://bucket/prefix...``."""

    bucket: str
    prefix: str

    @property
    def id(self) -> str:
        """A short name for the partition in Redis keys (stable: the same bucket and prefix, the same id)."""
        return hashlib.sha256(f"{self.bucket}\0{self.prefix}".encode()).hexdigest()[:16]

    def lane(self, index: int) -> str:
        """The name of lane ``index`` of this partition (the hash tag of its Redis keys)."""
        return f"{self.id}.{index}"

    def encode(self) -> str:
        return json.dumps([self.bucket, self.prefix])

    @classmethod
    def decode(cls, text: str | bytes) -> Partition:
        bucket, prefix = json.loads(text)
        return cls(str(bucket), str(prefix))


def lane_index_of(lane: str) -> int:
    """The index of a lane within its partition (the part after the last '.')."""
    return int(lane.rsplit(".", 1)[1])


def partition_id_of(lane: str) -> str:
    return lane.rsplit(".", 1)[0]


def default_partition(settings: Settings) -> Partition:
    """The partition of S3BATCH_BUCKET and S3BATCH_PREFIX; ConfigError when there is no bucket."""
    return Partition(settings.require_bucket(), settings.prefix)


def resolve(settings: Settings, bucket: Any = None, prefix: Any = None) -> Partition:
    """The partition a producer names (the defaults for None); raises InvalidBucketError or InvalidPrefixError
    naming what is wrong, before anything is staged."""
    if bucket is None:
        if not settings.bucket:
            raise InvalidBucketError("no bucket given and S3BATCH_BUCKET is not set: name one per call or set it")
        bucket = settings.bucket
    if not isinstance(bucket, str) or not _BUCKET.match(bucket) or _IP.match(bucket) or ".." in bucket:
        raise InvalidBucketError(
            f"bucket {bucket!r} is not a valid S3 bucket name (3 to 63 lowercase letters, digits, dots and hyphens)"
        )
    if not settings.allows_bucket(bucket):
        raise InvalidBucketError(
            f"bucket {bucket!r} is not allowed: S3BATCH_BUCKETS={','.join(settings.bucket_patterns)!r} lists the "
            "buckets producers may name (comma-separated glob patterns)"
        )
    return Partition(bucket, check_prefix(settings.prefix if prefix is None else prefix))


def check_prefix(prefix: Any) -> str:
    """The prefix itself; InvalidPrefixError unless it is text S3 keys can begin with and batch keys can hold."""
    if not isinstance(prefix, str):
        raise InvalidPrefixError(f"prefix must be a str, got {type(prefix).__name__}")
    try:
        size = len(prefix.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidPrefixError(f"prefix {prefix[:80]!r} is not valid UTF-8") from None
    if prefix.startswith("/"):
        raise InvalidPrefixError(f"prefix {prefix[:80]!r} must not start with '/' (S3 keys are relative)")
    if size > MAX_PREFIX_BYTES:
        raise InvalidPrefixError(f"prefix is {size} UTF-8 bytes; a batch key leaves room for {MAX_PREFIX_BYTES}")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in prefix):
        raise InvalidPrefixError(f"prefix {prefix[:80]!r} holds a control character")
    return prefix


def producer_lane(settings: Settings, producer: str | None = None) -> int:
    """The lane this producer keeps to: the same for every call of one process (its objects keep their order)."""
    identity = producer or f"{socket.gethostname()}:{os.getpid()}"
    return zlib.crc32(identity.encode()) % settings.lanes
