"""Upload a built tar to S3 once: a conditional create, multipart when large.

``If-None-Match: *`` makes a second upload of the same batch (a recovered or
duplicated flush) fail with 412 instead of overwriting; the existing object is
then compared by the SHA-256 we store in its metadata, and equal means done.
"""

from __future__ import annotations

import base64
import contextlib
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from batcher.errors import BatchConflictError, UploadError
from batcher.tarwriter import BuiltTar

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

SHA256_METADATA = "s3batch-sha256"
MULTIPART_THRESHOLD_BYTES = 128 * 1024 * 1024
PART_BYTES = 16 * 1024 * 1024
_RETRIES = {"mode": "standard", "max_attempts": 6}


def s3_client(**kwargs: Any) -> S3Client:
    """A boto3 S3 client configured the boto3 way (env, profiles), with standard retries."""
    config = Config(retries=_RETRIES, connect_timeout=10, read_timeout=60)  # type: ignore[arg-type]
    return boto3.client("s3", config=config, **kwargs)


class Uploader:
    """Puts batches into one bucket."""

    def __init__(
        self,
        client: S3Client | None = None,
        *,
        multipart_threshold_bytes: int = MULTIPART_THRESHOLD_BYTES,
        part_bytes: int = PART_BYTES,
    ) -> None:
        self.client = client or s3_client()
        self.multipart_threshold_bytes = multipart_threshold_bytes
        self.part_bytes = part_bytes

    def upload(self, bucket: str, key: str, tar: BuiltTar) -> str:
        """Create ``key`` from the tar unless an identical object is there; returns the ETag.

        Raises BatchConflictError when a different object holds the key, UploadError otherwise.
        """
        try:
            if tar.size >= self.multipart_threshold_bytes:
                return self._multipart(bucket, key, tar)
            return self._put(bucket, key, tar)
        except ClientError as exc:
            if _status(exc) == 412:
                return self._existing_etag(bucket, key, tar)
            raise UploadError(f"S3 refused batch s3://{bucket}/{key}: {_describe(exc)}") from exc
        except BotoCoreError as exc:
            raise UploadError(f"could not upload batch s3://{bucket}/{key}: {exc}") from exc

    def _put(self, bucket: str, key: str, tar: BuiltTar) -> str:
        tar.file.seek(0)
        response = self.client.put_object(
            Bucket=bucket,
            Key=key,
            Body=tar.file,
            ContentLength=tar.size,
            ContentType="application/x-tar",
            ChecksumSHA256=base64.b64encode(bytes.fromhex(tar.sha256)).decode(),
            Metadata={SHA256_METADATA: tar.sha256},
            IfNoneMatch="*",
        )
        return response["ETag"]

    def _multipart(self, bucket: str, key: str, tar: BuiltTar) -> str:
        upload = self.client.create_multipart_upload(
            Bucket=bucket, Key=key, ContentType="application/x-tar", Metadata={SHA256_METADATA: tar.sha256}
        )
        upload_id = upload["UploadId"]
        try:
            parts: list[CompletedPartTypeDef] = []
            tar.file.seek(0)
            number = 1
            while chunk := tar.file.read(self.part_bytes):
                part = self.client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
                )
                parts.append({"PartNumber": number, "ETag": part["ETag"]})
                number += 1
            response = self.client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, IfNoneMatch="*"
            )
        except BaseException:
            # What we cannot abort, the bucket's lifecycle rule for incomplete uploads cleans up.
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise
        return response["ETag"]

    def _existing_etag(self, bucket: str, key: str, tar: BuiltTar) -> str:
        head = self.client.head_object(Bucket=bucket, Key=key)
        theirs = head.get("Metadata", {}).get(SHA256_METADATA)
        if theirs != tar.sha256:
            raise BatchConflictError(
                f"s3://{bucket}/{key} already exists with different content (sha256 {theirs}, ours "
                f"{tar.sha256}); refusing to overwrite it"
            )
        return head["ETag"]


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _describe(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', 'error')} (HTTP {_status(exc)}): {error.get('Message', exc)}"
