"""Upload a built tar to S3 once: a conditional create, multipart when large, with the partition's options.

``If-None-Match: *`` makes a second upload of the same batch (a recovered or
duplicated flush) fail with 412 instead of overwriting; the existing object is
then compared by the SHA-256 we store in its metadata, and equal means done.
For servers that ignore the header, a batch that may already exist (one taken
over from a dead flush) is looked up with HEAD first.

Every request carries the tar's checksum (batcher.checksums), which S3 verifies against the bytes it
receives. A server that stores whatever arrives without checking (moto does; S3, MinIO and SeaweedFS check)
is found out once per uploader by a probe with a wrong checksum, and there each batch is read back and
compared before its callers hear SUCCESS (``verify="auto"``; ``"always"``/``"never"`` to choose). Bytes
that differ are never reported uploaded: the batch is uploaded again under a new key. Batches stored in an
archive class (GLACIER, DEEP_ARCHIVE) cannot be read back before a restore: for them the server's answer
is all there is (S3 verifies the checksum; Settings refuses ``always`` with such a class).

Transient failures (connection errors, timeouts, 5xx, throttling) are retried
by botocore's standard retry mode, configured here rather than left to the
installed botocore's defaults: 3 attempts per round with exponential backoff
and jitter, connect timeout 5 s, read timeout 60 s. What is left is raised as
UploadError (the flush retries it with its own backoff within
S3BATCH_UPLOAD_RETRY_SECONDS), and as PermanentUploadError when retrying
cannot help.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from batcher import checkpoints, checksums
from batcher.checksums import Checksum
from batcher.errors import BatchConflictError, PermanentUploadError, StoredBytesDifferError, UploadError
from batcher.tarwriter import BuiltTar
from batcher.uploadargs import ARCHIVE_STORAGE_CLASSES, for_request

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

SHA256_METADATA = "s3batch-sha256"
VERIFY_MODES = ("auto", "always", "never")
READ_BACK_CHUNK = 8 * 1024 * 1024
MULTIPART_THRESHOLD_BYTES = 128 * 1024 * 1024
PART_BYTES = 16 * 1024 * 1024
S3_ATTEMPTS = 3  # per round: the flush's own backoff spans longer outages
_RETRIES = {"mode": "standard", "total_max_attempts": S3_ATTEMPTS}
# Refusals that another try cannot fix (every 403 too); any other error is retried within the budget.
_PERMANENT_CODES = {
    "NoSuchBucket", "InvalidBucketName", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "AccountProblem", "PermanentRedirect", "InvalidObjectState", "MethodNotAllowed", "InvalidStorageClass",
    "InvalidEncryptionAlgorithmError", "InvalidTag", "InvalidRequest",
}  # fmt: skip
# KMS refusals (a missing, disabled or pending-deletion key, a key of the wrong kind) need an operator; KMS
# throttling does not.
_KMS_TRANSIENT = ("KMS.ThrottlingException", "KMS.LimitExceededException", "KMS.KMSInternalException")
_PROBE_BODY = b"s3batch checks that this server verifies checksums; a server that does refuses this object\n"


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
    """Puts batches into S3 with one client (one endpoint), reading them back where the server does not verify
    checksums (``verify``: auto, always or never)."""

    def __init__(
        self,
        client: S3Client | None = None,
        *,
        verify: str = "auto",
        multipart_threshold_bytes: int = MULTIPART_THRESHOLD_BYTES,
        part_bytes: int = PART_BYTES,
    ) -> None:
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        self.client = client or s3_client()
        self.verify = verify
        self.multipart_threshold_bytes = multipart_threshold_bytes
        self.part_bytes = part_bytes
        self._server_verifies: bool | None = None  # found by the first upload's probe (verify="auto")
        self._probe_lock = threading.Lock()

    def requests_for(self, tar_bytes: int) -> int:
        """PUT-class requests one upload of ``tar_bytes`` costs with this uploader's thresholds."""
        return upload_requests(tar_bytes, self.multipart_threshold_bytes, self.part_bytes)

    def upload(
        self, bucket: str, key: str, tar: BuiltTar, *, may_exist: bool = False, args: Mapping[str, Any] | None = None
    ) -> str:
        """Create ``key`` from the tar unless an identical object is there; returns the ETag.

        ``args`` are the partition's upload arguments (batcher.uploadargs), the same for a single PutObject and
        a multipart upload. ``may_exist`` asks S3 first (for servers that ignore If-None-Match). Raises
        BatchConflictError when a different object holds the key (StoredBytesDifferError when the server
        stored other bytes than were sent), PermanentUploadError for refusals that retrying cannot fix (the
        KMS key named), UploadError for the rest.
        """
        where = f"s3://{bucket}/{key}"
        request = for_request(args or {})
        try:
            etag = self._upload(bucket, key, tar, may_exist=may_exist, request=request)
            if request.get("StorageClass") not in ARCHIVE_STORAGE_CLASSES and self._must_read_back(bucket, key):
                self._read_back(bucket, key, tar, etag)
            return etag
        except ClientError as exc:
            why = f"{_describe(exc)}{_kms_key(exc, request)}"
            if _permanent(exc):
                raise PermanentUploadError(f"S3 refused batch {where}: {why}") from exc
            raise UploadError(f"S3 failed to store batch {where}: {why}") from exc
        except NoCredentialsError as exc:
            raise PermanentUploadError(
                f"no AWS credentials to upload {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile"
            ) from exc
        except (BotoCoreError, ValueError) as exc:  # ValueError: botocore parsing a response cut short
            raise UploadError(f"could not upload batch {where} after {S3_ATTEMPTS} attempts: {exc}") from exc

    def _upload(self, bucket: str, key: str, tar: BuiltTar, *, may_exist: bool, request: dict[str, Any]) -> str:
        where = f"s3://{bucket}/{key}"
        try:
            if may_exist:
                existing = self._lookup_before_upload(bucket, key, tar)
                if existing is not None:
                    return existing
            if tar.size >= self.multipart_threshold_bytes:
                return self._multipart(bucket, key, tar, request)
            return self._put(bucket, key, tar, request)
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

    def _put(self, bucket: str, key: str, tar: BuiltTar, request: dict[str, Any]) -> str:
        tar.file.seek(0)
        # ChecksumAlgorithm too: S3 wants x-amz-sdk-checksum-algorithm (or Content-MD5) on Object Lock writes
        checksum: dict[str, Any] = {}
        if tar.checksum:
            checksum = {
                "ChecksumAlgorithm": tar.checksum.algorithm,
                f"Checksum{tar.checksum.algorithm}": tar.checksum.value,
            }
        response = self.client.put_object(
            **request,
            **checksum,
            Bucket=bucket,
            Key=key,
            Body=tar.file,
            ContentLength=tar.size,
            ContentType="application/x-tar",
            Metadata=_metadata(tar),
            IfNoneMatch="*",
        )
        if tar.checksum:
            _check_answer(response, tar.checksum.algorithm, tar.checksum.value, bucket, key)
        return self._confirmed_etag(response, bucket, key, tar)

    def _multipart(self, bucket: str, key: str, tar: BuiltTar, request: dict[str, Any]) -> str:
        """CreateMultipartUpload, UploadPart with each part's checksum, CompleteMultipartUpload with the whole
        object's (full-object CRCs) or the parts' (composite digests), under If-None-Match."""
        algorithm = tar.checksum.algorithm if tar.checksum else None
        full_object = algorithm in checksums.FULL_OBJECT
        options: dict[str, Any] = {}
        if algorithm:
            options = {"ChecksumAlgorithm": algorithm, **({"ChecksumType": "FULL_OBJECT"} if full_object else {})}
        upload = self.client.create_multipart_upload(
            **request, **options, Bucket=bucket, Key=key, ContentType="application/x-tar", Metadata=_metadata(tar)
        )
        upload_id = upload["UploadId"]
        try:
            parts: list[CompletedPartTypeDef] = []
            part_sums: list[Checksum] = []
            tar.file.seek(0)
            number = 1
            while chunk := tar.file.read(self.part_bytes):
                extra: dict[str, Any] = {}
                sent: dict[str, Any] = {}
                if algorithm:
                    part_sums.append(checksums.of(algorithm, chunk))
                    extra = {f"Checksum{algorithm}": part_sums[-1].value}
                    sent = {"ChecksumAlgorithm": algorithm, **extra}
                part = self.client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk, **sent
                )
                parts.append({"PartNumber": number, "ETag": part["ETag"], **extra})  # type: ignore[typeddict-item]
                del chunk  # one part in memory at a time
                checkpoints.reached("part-uploaded")
                number += 1
            whole: dict[str, Any] = {}
            if algorithm and tar.checksum and full_object:
                whole = {f"Checksum{algorithm}": tar.checksum.value, "ChecksumType": "FULL_OBJECT"}
            response = self.client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, IfNoneMatch="*", **whole
            )
        except BaseException:
            # What we cannot abort, the bucket's lifecycle rule for incomplete uploads cleans up.
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise
        if algorithm and tar.checksum:
            expected = tar.checksum.value if full_object else checksums.composite(algorithm, part_sums)
            _check_answer(response, algorithm, expected, bucket, key)
        return self._confirmed_etag(response, bucket, key, tar)

    # ---- servers that do not verify checksums ----

    def _must_read_back(self, bucket: str, key: str) -> bool:
        """Whether this upload must be read back: always, never, or (auto) when the server does not verify."""
        if self.verify != "auto":
            return self.verify == "always"
        with self._probe_lock:
            if self._server_verifies is None:
                probe_key = f"{key.rsplit('/', 1)[0]}/.s3batch-probe"
                self._server_verifies = self.server_verifies_checksums(bucket, probe_key)
                if self._server_verifies is False:
                    log.warning(
                        "s3batch: the S3 server at %s stores objects whose checksum does not match; every batch is "
                        "read back and compared before its callers hear SUCCESS (S3BATCH_VERIFY_UPLOADS=never to "
                        "skip)", self.client.meta.endpoint_url,
                    )  # fmt: skip
            return self._server_verifies is not True

    def server_verifies_checksums(self, bucket: str, probe_key: str) -> bool | None:
        """Whether the server refuses a PutObject whose checksum does not match its body (None: it did not say).

        The probe object, stored only by a server that does not verify, is deleted again where the credentials
        allow it.
        """
        wrong = checksums.of("CRC32", _PROBE_BODY + b"!").value
        try:
            self.client.put_object(Bucket=bucket, Key=probe_key, Body=_PROBE_BODY, ChecksumCRC32=wrong)
        except ClientError as exc:
            if _code(exc) in ("BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch", "InvalidRequest"):
                return True
            return None
        except BotoCoreError:
            return None
        with contextlib.suppress(ClientError, BotoCoreError):
            self.client.delete_object(Bucket=bucket, Key=probe_key)
        return False

    def _read_back(self, bucket: str, key: str, tar: BuiltTar, etag: str) -> None:
        """Read the stored object (the version ``etag`` names) and compare it with the tar: StoredBytesDifferError
        when they differ, so that the batch is uploaded again under a new key."""
        algorithm = tar.checksum.algorithm if tar.checksum else "SHA256"
        ours = tar.checksum.value if tar.checksum else checksums.from_hex(tar.sha256)
        running = Checksum(algorithm)
        response = self.client.get_object(Bucket=bucket, Key=key, IfMatch=etag)
        size = 0
        with response["Body"] as body:
            while chunk := body.read(READ_BACK_CHUNK):
                running.update(chunk)
                size += len(chunk)
        theirs = running.value
        if size != tar.size or theirs != ours:
            raise StoredBytesDifferError(
                f"s3://{bucket}/{key} holds {size} bytes with {algorithm} {theirs}, not the {tar.size} bytes sent "
                f"({ours}): the server stored other bytes than were sent"
            )

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


def _metadata(tar: BuiltTar) -> dict[str, str]:
    """The tar's S3 metadata: the batch facts, its SHA-256 and the checksum S3 keeps for it."""
    extra = {checksums.METADATA: tar.checksum.encode()} if tar.checksum else {}
    return {**tar.s3_metadata, SHA256_METADATA: tar.sha256, **extra}


def _check_answer(response: Mapping[str, Any], algorithm: str, expected: str, bucket: str, key: str) -> None:
    """StoredBytesDifferError when the server answers with another checksum than the tar's."""
    theirs = response.get(f"Checksum{algorithm}")
    if theirs is not None and theirs != expected:
        raise StoredBytesDifferError(
            f"S3 stored s3://{bucket}/{key} with {algorithm} {theirs}, not the {expected} of the bytes sent"
        )


def _permanent(exc: ClientError) -> bool:
    """Whether retrying cannot fix this refusal: every 403, the codes above, KMS refusals other than throttling."""
    code = _code(exc)
    if code.startswith("KMS."):
        return code not in _KMS_TRANSIENT
    return _status(exc) == 403 or code in _PERMANENT_CODES


def _kms_key(exc: ClientError, request: Mapping[str, Any]) -> str:
    """``; KMS key ...`` when the request used one and the error may be about it (S3 does not always name it)."""
    if request.get("ServerSideEncryption") not in ("aws:kms", "aws:kms:dsse"):
        return ""
    code, message = _code(exc), str(exc.response.get("Error", {}).get("Message", ""))
    if code.startswith("KMS.") or "kms" in message.lower() or _status(exc) == 403 or code == "InvalidArgument":
        key = request.get("SSEKMSKeyId") or "the bucket's default (aws/s3) key"
        return f"; KMS key {key} (S3BATCH_UPLOAD_ARGS): check that it exists, is enabled and the workers may use it"
    return ""


def _whole_etag(etag: object) -> bool:
    return isinstance(etag, str) and len(etag) >= 2 and etag.startswith('"') and etag.endswith('"')


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _describe(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', 'error')} (HTTP {_status(exc)}): {error.get('Message', exc)}"
