"""Upload a built tar to S3 once: a conditional create, multipart when large.

``If-None-Match: *`` makes a second upload of the same batch (a recovered or
duplicated flush) fail with 412 instead of overwriting; the existing object is
then compared by the SHA-256 we store in its metadata, and equal means done.
For servers that ignore the header, a batch that may already exist (one taken
over from a dead flush) is looked up with HEAD first.

Transient failures (connection errors, timeouts, 5xx, throttling) are retried
by botocore's standard retry mode, configured here rather than left to the
installed botocore's defaults: 3 attempts per round with exponential backoff
and jitter, connect timeout 5 s, read timeout 60 s. What is left is raised as
UploadError (the flush retries it with its own backoff within
S3BATCH_UPLOAD_RETRY_SECONDS), and as PermanentUploadError when retrying
cannot help.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from batcher import checkpoints
from batcher.errors import BatchConflictError, PermanentUploadError, UploadError
from batcher.tarwriter import BuiltTar

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

SHA256_METADATA = "s3batch-sha256"
MULTIPART_THRESHOLD_BYTES = 128 * 1024 * 1024
PART_BYTES = 16 * 1024 * 1024
S3_ATTEMPTS = 3  # per round: the flush's own backoff spans longer outages
_RETRIES = {"mode": "standard", "total_max_attempts": S3_ATTEMPTS}
# Refusals that another try cannot fix (every 403 too); any other error is retried within the budget.
_PERMANENT_CODES = {
    "NoSuchBucket", "InvalidBucketName", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "AccountProblem", "PermanentRedirect", "InvalidObjectState", "MethodNotAllowed",
}  # fmt: skip


def upload_requests(
    tar_bytes: int, multipart_threshold_bytes: int = MULTIPART_THRESHOLD_BYTES, part_bytes: int = PART_BYTES
) -> int:
    """PUT-class requests one upload costs: 1, or its parts plus create and complete."""
    if tar_bytes < multipart_threshold_bytes:
        return 1
    return -(-tar_bytes // part_bytes) + 2


def s3_client(**kwargs: Any) -> S3Client:
    """A boto3 S3 client configured the boto3 way (env, profiles), with standard retries."""
    config = Config(retries=_RETRIES, connect_timeout=5, read_timeout=60)  # type: ignore[arg-type]
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

    def requests_for(self, tar_bytes: int) -> int:
        """PUT-class requests one upload of ``tar_bytes`` costs with this uploader's thresholds."""
        return upload_requests(tar_bytes, self.multipart_threshold_bytes, self.part_bytes)

    def upload(self, bucket: str, key: str, tar: BuiltTar, *, may_exist: bool = False) -> str:
        """Create ``key`` from the tar unless an identical object is there; returns the ETag.

        ``may_exist`` asks S3 first (for servers that ignore If-None-Match). Raises
        BatchConflictError when a different object holds the key, PermanentUploadError for
        refusals that retrying cannot fix, UploadError for the rest.
        """
        where = f"s3://{bucket}/{key}"
        try:
            return self._upload(bucket, key, tar, may_exist=may_exist)
        except ClientError as exc:
            if _status(exc) == 403 or _code(exc) in _PERMANENT_CODES:
                raise PermanentUploadError(f"S3 refused batch {where}: {_describe(exc)}") from exc
            raise UploadError(f"S3 failed to store batch {where}: {_describe(exc)}") from exc
        except NoCredentialsError as exc:
            raise PermanentUploadError(
                f"no AWS credentials to upload {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile"
            ) from exc
        except (BotoCoreError, ValueError) as exc:  # ValueError: botocore parsing a response cut short
            raise UploadError(f"could not upload batch {where} after {S3_ATTEMPTS} attempts: {exc}") from exc

    def _upload(self, bucket: str, key: str, tar: BuiltTar, *, may_exist: bool) -> str:
        where = f"s3://{bucket}/{key}"
        try:
            if may_exist:
                existing = self._lookup_before_upload(bucket, key, tar)
                if existing is not None:
                    return existing
            if tar.size >= self.multipart_threshold_bytes:
                return self._multipart(bucket, key, tar)
            return self._put(bucket, key, tar)
        except ClientError as exc:
            if _status(exc) != 412:
                raise
            etag = self._existing_etag(bucket, key, tar)  # its own errors reach upload()'s translation
            if etag is None:
                raise UploadError(f"S3 answered 412 for {where} but has no object there") from exc
            return etag

    def _lookup_before_upload(self, bucket: str, key: str, tar: BuiltTar) -> str | None:
        """``_existing_etag`` for a batch that may be in S3 already; a 403 counts as "not there".

        Without s3:ListBucket, S3 answers a HEAD of a missing key with 403, not 404: the conditional create
        that follows is what keeps an existing object safe then.
        """
        try:
            return self._existing_etag(bucket, key, tar)
        except ClientError as exc:
            if _status(exc) == 403:
                return None
            raise

    def _put(self, bucket: str, key: str, tar: BuiltTar) -> str:
        tar.file.seek(0)
        response = self.client.put_object(
            Bucket=bucket,
            Key=key,
            Body=tar.file,
            ContentLength=tar.size,
            ContentType="application/x-tar",
            ChecksumSHA256=base64.b64encode(bytes.fromhex(tar.sha256)).decode(),
            Metadata={**tar.s3_metadata, SHA256_METADATA: tar.sha256},
            IfNoneMatch="*",
        )
        return self._confirmed_etag(response, bucket, key, tar)

    def _multipart(self, bucket: str, key: str, tar: BuiltTar) -> str:
        upload = self.client.create_multipart_upload(
            Bucket=bucket,
            Key=key,
            ContentType="application/x-tar",
            Metadata={**tar.s3_metadata, SHA256_METADATA: tar.sha256},
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
                del chunk  # one part in memory at a time
                checkpoints.reached("part-uploaded")
                number += 1
            response = self.client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, IfNoneMatch="*"
            )
        except BaseException:
            # What we cannot abort, the bucket's lifecycle rule for incomplete uploads cleans up.
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise
        return self._confirmed_etag(response, bucket, key, tar)

    def _confirmed_etag(self, response: Mapping[str, Any], bucket: str, key: str, tar: BuiltTar) -> str:
        """The ETag of a successful answer, or, when it lacks a whole (quoted) one, the ETag HEAD finds.

        An answer cut short after its status code still parses as a success, because http.client
        ends the headers at the end of the connection: its ETag may be missing or cut in half.
        """
        etag = response.get("ETag")
        if _whole_etag(etag):
            return str(etag)
        existing = self._existing_etag(bucket, key, tar)
        if existing is None:
            raise UploadError(
                f"S3 answered s3://{bucket}/{key} without a whole ETag ({etag!r}) and holds no object there"
            )
        return existing

    def _existing_etag(self, bucket: str, key: str, tar: BuiltTar) -> str | None:
        """The ETag at ``key`` if it is our tar, None if nothing is there; BatchConflictError otherwise.

        A HEAD answer that lacks a whole ETag or our checksum metadata (a response cut short) is
        asked again rather than taken as a conflict; three whole answers that agree on an object of
        another size without s3batch's metadata name a foreign object. Anything else stays UploadError
        (retried).
        """
        answers: list[tuple[str, int]] = []
        for _ in range(3):
            try:
                head = self.client.head_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if _status(exc) == 404:
                    return None
                raise
            etag, theirs = head.get("ETag"), head.get("Metadata", {}).get(SHA256_METADATA)
            if _whole_etag(etag) and theirs is not None:
                if theirs != tar.sha256:
                    raise BatchConflictError(
                        f"s3://{bucket}/{key} already exists with different content (sha256 {theirs}, ours "
                        f"{tar.sha256}); refusing to overwrite it"
                    )
                return str(etag)
            if _whole_etag(etag) and not any(name.startswith("s3batch-") for name in head.get("Metadata", {})):
                answers.append((str(etag), int(head.get("ContentLength", -1))))
        if len(answers) == 3 and len(set(answers)) == 1 and answers[0][1] != tar.size:
            raise BatchConflictError(
                f"s3://{bucket}/{key} holds a foreign object (not written by s3batch: {answers[0][1]} bytes, ETag "
                f"{answers[0][0]}, no s3batch metadata); refusing to overwrite it"
            )
        raise UploadError(f"S3 answered HEAD s3://{bucket}/{key} incompletely (ETag {etag!r}, sha256 {theirs!r})")

    def probe(self, bucket: str, key: str) -> bool:
        """Whether S3 answers at all: any HTTP answer below 500 to a HEAD of ``key`` (which need not exist)."""
        try:
            self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            return 0 < _status(exc) < 500
        except BotoCoreError:
            return False
        return True


def _whole_etag(etag: object) -> bool:
    return isinstance(etag, str) and len(etag) >= 2 and etag.startswith('"') and etag.endswith('"')


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _describe(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', 'error')} (HTTP {_status(exc)}): {error.get('Message', exc)}"
