"""A client shaped like boto3's S3 client, for code that already calls ``s3.put_object(Bucket=, Key=, Body=)``.

``put_object`` takes boto3's own argument names and returns the object's handle (with ``workers.S3BatchClient``
a Celery AsyncResult, whose ``get()`` gives the ref) instead of boto3's answer. An argument that batching
cannot honour is refused, naming it and why, never dropped: the batch's tar is one S3 object, so per-object
ACLs, encryption keys, storage classes, tags, object locks or conditional writes do not exist for its members.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any, Generic, TypeVar

import botocore.session

from batcher.client import Batcher
from batcher.errors import InvalidBodyError, UnsupportedArgumentError

H = TypeVar("H")
G = TypeVar("G")

SUPPORTED = frozenset({"Bucket", "Key", "Body", "ContentType", "Metadata"})
_WHY = {
    "ACL": "a batch is one S3 object: grant access on the bucket or the prefix instead",
    "Grant*": "a batch is one S3 object: grant access on the bucket or the prefix instead",
    "SSECustomer*": "readers would need the customer key to read the batch (SSE-C is not supported)",
    "ServerSideEncryption": "encryption is per batch: set it for the deployment or the partition (S3BATCH_UPLOAD_ARGS)",
    "SSEKMS*": "encryption is per batch: set it for the deployment or the partition (S3BATCH_UPLOAD_ARGS)",
    "BucketKeyEnabled": "encryption is per batch: set it for the deployment or the partition (S3BATCH_UPLOAD_ARGS)",
    "StorageClass": "the storage class is per batch: set it for the deployment or the partition (S3BATCH_UPLOAD_ARGS)",
    "Tagging": "tags are per batch: set them for the deployment or the partition (S3BATCH_UPLOAD_ARGS)",
    "ObjectLock*": "object locks are per batch: set them for the deployment or the partition (S3BATCH_UPLOAD_ARGS)",
    "Checksum*": "s3batch checks every object by its SHA-256 (in the ref) and every batch by its own checksum",
    "ContentMD5": "s3batch checks every object by its SHA-256 (in the ref) and every batch by its own checksum",
    "IfMatch": "a batched object is never overwritten: each put is a new object with its own ref",
    "IfNoneMatch": "a batched object is never overwritten: each put is a new object with its own ref",
    "WriteOffsetBytes": "a batched object is never appended to",
    "Expires": "a batch's headers are the tar's: readers get the object's bytes by range, without them",
    "CacheControl": "a batch's headers are the tar's: readers get the object's bytes by range, without them",
    "Content*": "a batch's headers are the tar's: readers get the object's bytes by range, without them",
    "WebsiteRedirectLocation": "a batched object is not an S3 object of its own",
    "RequestPayer": "set it for the deployment (the workers pay for their uploads)",
    "ExpectedBucketOwner": "set it for the deployment or the partition (S3BATCH_UPLOAD_ARGS)",
}


class S3BatchClient(Generic[H, G]):
    """``put_object`` in boto3's shape over a Batcher; ``prefix`` is the key prefix of the batches (the
    partition's, S3BATCH_PREFIX when None)."""

    def __init__(self, batcher: Batcher[H, G], *, prefix: str | None = None) -> None:
        self.batcher = batcher
        self.prefix = prefix

    def put_object(self, **arguments: Any) -> H:
        """Stage ``Body`` under ``Key`` in the partition of ``Bucket``; the object's handle.

        ``Body`` is bytes-like or a readable binary file object. Raises UnsupportedArgumentError naming every
        argument that batching cannot honour or that PutObject does not have, InputError subclasses for bad
        values (as ``Batcher.put_object``).
        """
        refused = sorted(set(arguments) - SUPPORTED)
        if refused:
            raise UnsupportedArgumentError("; ".join(f"{name}: {_why(name)}" for name in refused))
        missing = [name for name in ("Bucket", "Key", "Body") if name not in arguments]
        if missing:
            raise UnsupportedArgumentError(f"put_object needs {', '.join(missing)} (as boto3's does)")
        return self.batcher.put_object(
            arguments["Key"],
            _read(arguments["Key"], arguments["Body"]),
            arguments.get("ContentType"),
            _metadata(arguments.get("Metadata")),
            bucket=arguments["Bucket"],
            prefix=self.prefix,
        )


def _why(name: str) -> str:
    if name not in _put_object_parameters():
        return "not a PutObject parameter"
    for pattern, why in _WHY.items():
        if name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1])):
            return why
    return "not supported for batched objects"


@cache
def _put_object_parameters() -> frozenset[str]:
    """PutObject's parameters in the installed botocore's S3 model (no credentials, no request)."""
    shape = botocore.session.get_session().get_service_model("s3").operation_model("PutObject").input_shape
    return frozenset(shape.members) if shape is not None else frozenset()


def _read(key: Any, body: Any) -> Any:
    """A file object's bytes, read once; anything else as given (validation names what is wrong)."""
    read = getattr(body, "read", None)
    if callable(read) and not isinstance(body, bytes | bytearray | memoryview):
        data = read()
        if not isinstance(data, bytes):
            raise InvalidBodyError(f"Body of {key!r} is a file object opened in text mode: open it with 'rb'")
        return data
    return body


def _metadata(metadata: Any) -> Any:
    return dict(metadata) if isinstance(metadata, Mapping) else metadata
