"""The uploader against moto's S3 server: conditional create, multipart, clear errors."""

from __future__ import annotations

import hashlib

import pytest

from batcher.errors import BatchConflictError, UploadError
from batcher.tarwriter import BuiltTar, build_tar
from batcher.uploader import SHA256_METADATA, Uploader
from tests.factories import staged
from tests.support import Stack


def upload(uploader: Uploader, bucket: str, key: str, *bodies: bytes) -> str:
    with tar_of(*bodies) as tar:
        return uploader.upload(bucket, key, tar)


def tar_of(*bodies: bytes) -> BuiltTar:
    objs = [staged(f"k{i}", body, staged_ms=1_700_000_000_000) for i, body in enumerate(bodies)]
    return build_tar([o.object_key for o in objs], objs, batch_id="01JUPLOADTEST", created_ms=1_700_000_000_000)


def test_put_then_identical_put_is_success_without_overwrite(stack: Stack) -> None:
    bucket = stack.settings.require_bucket()
    uploader = Uploader(stack.s3)
    first = upload(uploader, bucket, "b/1.tar", b"hello")
    modified = stack.s3.head_object(Bucket=bucket, Key="b/1.tar")["LastModified"]
    again = upload(uploader, bucket, "b/1.tar", b"hello")
    assert again == first
    head = stack.s3.head_object(Bucket=bucket, Key="b/1.tar")
    assert head["LastModified"] == modified
    assert head["Metadata"][SHA256_METADATA] == hashlib.sha256(stack.tar_bytes("b/1.tar")).hexdigest()


def test_different_content_under_the_same_key_is_never_overwritten(stack: Stack) -> None:
    bucket = stack.settings.require_bucket()
    uploader = Uploader(stack.s3)
    upload(uploader, bucket, "b/2.tar", b"ours")
    original = stack.tar_bytes("b/2.tar")
    with pytest.raises(BatchConflictError, match="refusing to overwrite"):
        upload(uploader, bucket, "b/2.tar", b"theirs")
    assert stack.tar_bytes("b/2.tar") == original


def test_large_tar_goes_multipart_and_reads_back(stack: Stack) -> None:
    bucket = stack.settings.require_bucket()
    bodies = [bytes([i]) * (3 * 1024 * 1024) for i in range(4)]
    uploader = Uploader(stack.s3, multipart_threshold_bytes=5 * 1024 * 1024, part_bytes=5 * 1024 * 1024)
    with tar_of(*bodies) as tar:
        etag = uploader.upload(bucket, "b/big.tar", tar)
    assert etag.strip('"').endswith("-3")  # a multipart ETag: 12 MiB in three parts
    data = stack.tar_bytes("b/big.tar")
    for member, body in zip(tar.members, bodies, strict=True):
        assert data[member.offset : member.offset + member.size] == body
    # the conditional create holds for multipart too
    assert upload(uploader, bucket, "b/big.tar", *bodies) == etag
    with pytest.raises(BatchConflictError):
        upload(uploader, bucket, "b/big.tar", *reversed(bodies))


def test_missing_bucket_is_a_clear_upload_error(stack: Stack) -> None:
    with pytest.raises(UploadError, match="NoSuchBucket"):
        upload(Uploader(stack.s3), "no-such-bucket-s3batch", "b/x.tar", b"x")
