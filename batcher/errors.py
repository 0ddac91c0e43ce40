"""Every error the project raises on purpose, under one base class.

Each error takes a single human-readable message so that Celery's JSON result
backend can carry it to the caller and rebuild the same class there.
"""

from __future__ import annotations

from typing import Any


class S3BatchError(Exception):
    """Raised for every failure that s3batch detects and explains itself."""


class ConfigError(S3BatchError):
    """Raised when a setting is missing or has a value that cannot work."""


class InputError(S3BatchError):
    """Raised when a put_object call is refused before anything is staged."""


class InvalidKeyError(InputError):
    """Raised when an object key is not a valid S3 key (1 to 1024 UTF-8 bytes)."""


class InvalidBucketError(InputError):
    """Raised when a producer names a bucket that is not a valid S3 bucket name or not on S3BATCH_BUCKETS."""


class InvalidPrefixError(InputError):
    """Raised when a producer names a key prefix that S3 or a batch key cannot hold."""


class UnsupportedArgumentError(InputError):
    """Raised when a boto3-shaped call passes an argument that batching cannot honour (ACL, SSECustomerKey...)."""


class InvalidBodyError(InputError):
    """Raised when an object body is not bytes-like."""


class ObjectTooLargeError(InputError):
    """Raised when an object body is larger than MAX_OBJECT_BYTES."""


class InvalidMetadataError(InputError):
    """Raised when content_type or metadata are not strings within S3's limits."""


class TaskIdReusedError(InputError):
    """Raised when a task id that staged one object is sent again with another key or content."""


class ContentRefusedError(InputError):
    """Raised when a task message is not JSON (pickle and others are refused)."""


class NoWorkerError(S3BatchError):
    """Raised when a producer waits on a queue that no worker has served for S3BATCH_NO_WORKER_TIMEOUT."""


class StagingError(S3BatchError):
    """Raised when Redis staging cannot take or give back objects."""

    accepted: Any = None
    """From ``Batcher.put_objects``: the results of the objects it staged before the error; they will be uploaded."""


class StagingFullError(StagingError):
    """Raised when staging already holds MAX_STAGED_BYTES (backpressure)."""


class StagingLostError(StagingError):
    """Raised (in callers' results and waits) when the staged data an object was in is gone from Redis."""


class UploadError(S3BatchError):
    """Raised when a batch cannot be uploaded to S3."""


class DeadLetterError(UploadError):
    """Raised (in callers' results) when a batch's retry budget is spent; its objects wait in Redis."""


class PermanentUploadError(UploadError):
    """Raised when S3 refuses an upload for a reason that retrying cannot fix (403, missing bucket)."""


class BatchConflictError(PermanentUploadError):
    """Raised when S3 already holds a different object under a batch's key."""


class StoredBytesDifferError(BatchConflictError):
    """Raised when the server stored other bytes than were sent (its checksum or a read-back says so): the key
    holds a bad copy, so the batch is uploaded again under a new key, as for any other object at its key."""


class ReadError(S3BatchError):
    """Raised when an object cannot be read back from its batch."""


class BatchArchivedError(ReadError):
    """Raised when a batch's storage class is an archive one (GLACIER, DEEP_ARCHIVE): S3 serves it only after
    a restore."""


class InvalidRefError(ReadError):
    """Raised when a BatchRef is malformed (missing field, negative offset, bad range)."""


class BatchNotFoundError(ReadError):
    """Raised when the bucket or the batch's tar does not exist."""


class ChecksumMismatchError(ReadError):
    """Raised when the bytes read back do not have the SHA-256 recorded at staging."""


class CorruptedBatchError(ReadError):
    """Raised when a batch's tar, index or trailer is damaged, truncated or not written by s3batch."""


class MemoryLimitError(ReadError):
    """Raised when a read would hold more than the reader's max_memory_bytes: raise the limit or read less at once."""
