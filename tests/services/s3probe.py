"""One probe of the S3 features s3batch relies on or may use, run against any S3-compatible server.

Each check does what s3batch would do with boto3 and compares the answer with AWS S3's documented behaviour,
so a server's table says where it differs, not only what it answered. ``python -m tests.services.s3probe``
starts moto's server (a subprocess, as the tests use it) and SeaweedFS, probes both and prints the Markdown
table kept in tests/services/README.md.

Checksums are computed here (CRC32C and CRC64NVME in pure Python) and sent as ready-made headers, so the
probe needs no ``botocore[crt]``: botocore only computes a checksum itself when none was given.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedMultipartUploadTypeDef, CompletedPartTypeDef

MIB = 1024 * 1024


@dataclass(frozen=True)
class Finding:
    """What one check found: whether the server behaves like AWS S3 there, and what it answered."""

    feature: str
    like_aws: bool
    detail: str

    def cell(self) -> str:
        return ("yes: " if self.like_aws else "**no**: ") + self.detail


def _crc_table(poly: int) -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc_table(0x82F63B78)
_CRC64NVME_TABLE = _crc_table(0x9A6C9329AC4BC9B5)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as S3's ChecksumCRC32C (check value of b"123456789": 0xE3069283)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc64nvme(data: bytes) -> int:
    """CRC-64/NVME, as S3's ChecksumCRC64NVME (check value of b"123456789": 0xAE8B14860A799888)."""
    crc = 0xFFFFFFFFFFFFFFFF
    for byte in data:
        crc = _CRC64NVME_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFFFFFFFFFF


def _b64(value: int, size: int) -> str:
    return base64.b64encode(value.to_bytes(size, "big")).decode()


def checksum_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def checksum_crc32c(data: bytes) -> str:
    return _b64(crc32c(data), 4)


def checksum_crc64nvme(data: bytes) -> str:
    return _b64(crc64nvme(data), 8)


def checksum_crc32(data: bytes) -> str:
    return _b64(zlib.crc32(data), 4)


def _error(exc: ClientError) -> str:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
    code = exc.response.get("Error", {}).get("Code", "?")
    return f"{status} {code}"


def _status(response: Any) -> int:
    return int(response["ResponseMetadata"]["HTTPStatusCode"])


def _attempt(call: Callable[[], Any]) -> tuple[Any, str | None]:
    """Run one request; returns (response, None) or (None, "412 PreconditionFailed")."""
    try:
        return call(), None
    except ClientError as exc:
        return None, _error(exc)


# (behaves like AWS S3, what the server answered)
Verdict = tuple[bool, str]
Check = Callable[["S3Client", str], Verdict]


def check_put_if_none_match(s3: S3Client, bucket: str) -> Verdict:
    _, first = _attempt(lambda: s3.put_object(Bucket=bucket, Key="inm", Body=b"one", IfNoneMatch="*"))
    _, second = _attempt(lambda: s3.put_object(Bucket=bucket, Key="inm", Body=b"two", IfNoneMatch="*"))
    body = s3.get_object(Bucket=bucket, Key="inm")["Body"].read()
    detail = f"first {first or 'ok'}, second {second or 'ok'}, object holds {body!r}"
    return (first is None and (second or "").startswith("412") and body == b"one", detail)


def _multipart(s3: S3Client, bucket: str, key: str, parts: list[bytes], **complete: Any) -> tuple[Any, str | None]:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    etags = []
    for number, part in enumerate(parts, start=1):
        etags.append(s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=part)["ETag"])
    layout: CompletedMultipartUploadTypeDef = {
        "Parts": [{"ETag": etag, "PartNumber": n} for n, etag in enumerate(etags, start=1)]
    }
    response, error = _attempt(
        lambda: s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload=layout, **complete
        )
    )
    if error is not None:
        _attempt(lambda: s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id))
    return response, error


def check_multipart_if_none_match(s3: S3Client, bucket: str) -> Verdict:
    parts = [b"a" * (5 * MIB), b"b" * 100]
    first, first_error = _multipart(s3, bucket, "mpu-inm", parts, IfNoneMatch="*")
    _, second_error = _multipart(s3, bucket, "mpu-inm", [b"c" * 100], IfNoneMatch="*")
    head = s3.head_object(Bucket=bucket, Key="mpu-inm")
    etag = first["ETag"] if first else "-"
    detail = (
        f"first {first_error or 'ok'} (ETag {etag}), second {second_error or 'ok'}, "
        f"object {head['ContentLength']} bytes"
    )
    like_aws = (
        first_error is None
        and (second_error or "").startswith("412")
        and head["ContentLength"] == sum(map(len, parts))
        and etag.endswith('-2"')
    )
    return (like_aws, detail)


def check_ranged_get(s3: S3Client, bucket: str) -> Verdict:
    body = bytes(range(256)) * 40
    s3.put_object(Bucket=bucket, Key="range", Body=body)
    response = s3.get_object(Bucket=bucket, Key="range", Range="bytes=1000-1999")
    got = response["Body"].read()
    empty, empty_error = _attempt(lambda: s3.get_object(Bucket=bucket, Key="range", Range="bytes=20000-20001"))
    detail = (
        f"{_status(response)}, {len(got)} bytes, exact {got == body[1000:2000]}, "
        f"Content-Range {response.get('ContentRange')}; past the end: {empty_error or _status(empty)}"
    )
    like_aws = (
        _status(response) == 206
        and got == body[1000:2000]
        and response.get("ContentRange") == f"bytes 1000-1999/{len(body)}"
        and (empty_error or "").startswith("416")
    )
    return (like_aws, detail)


def check_suffix_range_get(s3: S3Client, bucket: str) -> Verdict:
    """A suffix range longer than the object returns all of it; on an empty object none is satisfiable, and
    AWS answers 416 (RFC 9110). BatchReader.index() opens every batch with ``bytes=-65536``."""
    s3.put_object(Bucket=bucket, Key="suffix", Body=b"x" * 100)
    s3.put_object(Bucket=bucket, Key="suffix-empty", Body=b"")
    short = s3.get_object(Bucket=bucket, Key="suffix", Range="bytes=-65536")
    got = short["Body"].read()
    empty, empty_error = _attempt(lambda: s3.get_object(Bucket=bucket, Key="suffix-empty", Range="bytes=-65536"))
    answered = empty_error or f"{_status(empty)} with {len(empty['Body'].read())} bytes"
    detail = (
        f"100-byte object: {_status(short)}, {len(got)} bytes, Content-Range {short.get('ContentRange')}; "
        f"empty object: {answered}"
    )
    return (_status(short) == 206 and got == b"x" * 100 and (empty_error or "").startswith("416"), detail)


def check_multi_range_get(s3: S3Client, bucket: str) -> Verdict:
    s3.put_object(Bucket=bucket, Key="multirange", Body=b"0123456789")
    response, error = _attempt(lambda: s3.get_object(Bucket=bucket, Key="multirange", Range="bytes=0-1,4-5"))
    if error is not None:
        return (False, error)
    got = response["Body"].read()
    # AWS ignores a multi-range header and answers 200 with the whole object.
    return (got == b"0123456789", f"{_status(response)} with {got[:40]!r}")


def check_user_metadata(s3: S3Client, bucket: str) -> Verdict:
    sent = {"Mixed-Case": "Value One", "lower": "two"}
    s3.put_object(Bucket=bucket, Key="meta", Body=b"m", Metadata=sent, ContentType="application/x-probe")
    head = s3.head_object(Bucket=bucket, Key="meta")
    got = head.get("Metadata", {})
    detail = f"came back as {got}, ContentType {head.get('ContentType')}"
    # AWS stores metadata keys lowercased (HTTP headers are case-insensitive).
    like_aws = got == {"mixed-case": "Value One", "lower": "two"} and head.get("ContentType") == "application/x-probe"
    return (like_aws, detail)


def _check_checksum(s3: S3Client, bucket: str, name: str, compute: Callable[[bytes], str]) -> Verdict:
    # As an SDK sends it: x-amz-sdk-checksum-algorithm and the value (botocore computes nothing when the value
    # is given, so CRC32C and CRC64NVME need no botocore[crt] here).
    body = b"checksum probe " * 100
    value = compute(body)
    key = f"checksum-{name.lower()}"

    def put(target: str, checksum: str) -> tuple[Any, str | None]:
        arguments: dict[str, Any] = {"ChecksumAlgorithm": name, f"Checksum{name}": checksum}
        return _attempt(lambda: s3.put_object(Bucket=bucket, Key=target, Body=body, **arguments))

    _, error = put(key, value)
    if error is not None:
        return (False, f"correct checksum refused: {error}")
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    returned = head.get(f"Checksum{name}")
    _, wrong_error = put(key + "-wrong", compute(body + b"!"))
    stored_anyway = _attempt(lambda: s3.head_object(Bucket=bucket, Key=key + "-wrong"))[1] is None
    returned_text = "returned by HeadObject" if returned == value else f"HeadObject gives {returned!r}"
    wrong_text = f"wrong one refused ({wrong_error})" if wrong_error else "wrong one ACCEPTED"
    if stored_anyway:
        wrong_text += " and stored"
    like_aws = returned == value and (wrong_error or "").startswith("400") and not stored_anyway
    return (like_aws, f"{returned_text}; {wrong_text}")


def check_checksum_header_alone(s3: S3Client, bucket: str) -> Verdict:
    # Only x-amz-checksum-sha256, no x-amz-sdk-checksum-algorithm (what botocore sends when given only the value).
    body = b"bare checksum header"
    s3.put_object(Bucket=bucket, Key="checksum-bare", Body=body, ChecksumSHA256=checksum_sha256(body))
    returned = s3.head_object(Bucket=bucket, Key="checksum-bare", ChecksumMode="ENABLED").get("ChecksumSHA256")
    _, wrong_error = _attempt(
        lambda: s3.put_object(
            Bucket=bucket, Key="checksum-bare-wrong", Body=body, ChecksumSHA256=checksum_sha256(body + b"!")
        )
    )
    detail = (
        f"HeadObject gives {'the value' if returned == checksum_sha256(body) else repr(returned)}; "
        f"wrong one {wrong_error or 'ACCEPTED'}"
    )
    return (returned == checksum_sha256(body) and (wrong_error or "").startswith("400"), detail)


def check_checksum_sha256(s3: S3Client, bucket: str) -> Verdict:
    return _check_checksum(s3, bucket, "SHA256", checksum_sha256)


def check_checksum_crc32c(s3: S3Client, bucket: str) -> Verdict:
    return _check_checksum(s3, bucket, "CRC32C", checksum_crc32c)


def check_checksum_crc64nvme(s3: S3Client, bucket: str) -> Verdict:
    return _check_checksum(s3, bucket, "CRC64NVME", checksum_crc64nvme)


def check_content_md5(s3: S3Client, bucket: str) -> Verdict:
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    _, error = _attempt(lambda: s3.put_object(Bucket=bucket, Key="md5", Body=b"body", ContentMD5=wrong))
    return ((error or "").startswith("400"), error or "accepted")


def check_put_if_match(s3: S3Client, bucket: str) -> Verdict:
    etag = s3.put_object(Bucket=bucket, Key="im", Body=b"v1")["ETag"]
    _, matching = _attempt(lambda: s3.put_object(Bucket=bucket, Key="im", Body=b"v2", IfMatch=etag))
    _, stale = _attempt(lambda: s3.put_object(Bucket=bucket, Key="im", Body=b"v3", IfMatch=etag))
    _, missing = _attempt(lambda: s3.put_object(Bucket=bucket, Key="im-missing", Body=b"x", IfMatch=etag))
    body = s3.get_object(Bucket=bucket, Key="im")["Body"].read()
    detail = (
        f"matching ETag {matching or 'ok'}, stale ETag {stale or 'ok'}, missing key {missing or 'ok'}, "
        f"object holds {body!r}"
    )
    like_aws = (
        matching is None and (stale or "").startswith("412") and (missing or "").startswith("404") and body == b"v2"
    )
    return (like_aws, detail)


def check_upload_part_copy(s3: S3Client, bucket: str) -> Verdict:
    source = bytes(range(256)) * (6 * MIB // 256)
    s3.put_object(Bucket=bucket, Key="copy-source", Body=source)
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="copy-target")["UploadId"]
    try:
        first = s3.upload_part_copy(
            Bucket=bucket, Key="copy-target", UploadId=upload_id, PartNumber=1,
            CopySource={"Bucket": bucket, "Key": "copy-source"}, CopySourceRange=f"bytes=0-{5 * MIB - 1}",
        )  # fmt: skip
        second = s3.upload_part_copy(
            Bucket=bucket, Key="copy-target", UploadId=upload_id, PartNumber=2,
            CopySource={"Bucket": bucket, "Key": "copy-source"}, CopySourceRange=f"bytes={5 * MIB}-{len(source) - 1}",
        )  # fmt: skip
        parts: list[CompletedPartTypeDef] = [
            {"ETag": first["CopyPartResult"]["ETag"], "PartNumber": 1},
            {"ETag": second["CopyPartResult"]["ETag"], "PartNumber": 2},
        ]
        s3.complete_multipart_upload(
            Bucket=bucket, Key="copy-target", UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except ClientError as exc:
        _attempt(lambda: s3.abort_multipart_upload(Bucket=bucket, Key="copy-target", UploadId=upload_id))
        return (False, _error(exc))
    got = s3.get_object(Bucket=bucket, Key="copy-target")["Body"].read()
    return (got == source, f"2 parts copied, target equals source: {got == source}")


def check_versioning(s3: S3Client, bucket: str) -> Verdict:
    versioned = f"{bucket}-v"
    s3.create_bucket(Bucket=versioned)
    _, error = _attempt(
        lambda: s3.put_bucket_versioning(Bucket=versioned, VersioningConfiguration={"Status": "Enabled"})
    )
    if error is not None:
        return (False, f"PutBucketVersioning {error}")
    status = s3.get_bucket_versioning(Bucket=versioned).get("Status")
    first = s3.put_object(Bucket=versioned, Key="k", Body=b"v1").get("VersionId")
    second = s3.put_object(Bucket=versioned, Key="k", Body=b"v2").get("VersionId")
    versions = s3.list_object_versions(Bucket=versioned, Prefix="k").get("Versions", [])
    old: bytes | str = "-"
    if first:
        old_response, old_error = _attempt(lambda: s3.get_object(Bucket=versioned, Key="k", VersionId=first))
        old = old_error or old_response["Body"].read()
    latest = [v.get("VersionId") for v in versions if v.get("IsLatest")]
    detail = (
        f"status {status}, VersionIds {'distinct' if first and second and first != second else (first, second)}, "
        f"{len(versions)} versions listed (latest is the second: {latest == [second]}), old version reads {old!r}"
    )
    like_aws = status == "Enabled" and bool(first) and first != second and len(versions) == 2 and old == b"v1"
    return (like_aws, detail)


def check_server_side_encryption(s3: S3Client, bucket: str) -> Verdict:
    _, error = _attempt(lambda: s3.put_object(Bucket=bucket, Key="sse", Body=b"secret", ServerSideEncryption="AES256"))
    if error is not None:
        return (False, f"PutObject {error}")
    head = s3.head_object(Bucket=bucket, Key="sse")
    body = s3.get_object(Bucket=bucket, Key="sse")["Body"].read()
    value = head.get("ServerSideEncryption")
    return (value == "AES256" and body == b"secret", f"HeadObject ServerSideEncryption={value!r}, GET ok")


def check_sse_kms(s3: S3Client, bucket: str) -> Verdict:
    # No key id: AWS uses the account's default aws/s3 key.
    _, error = _attempt(lambda: s3.put_object(Bucket=bucket, Key="kms", Body=b"secret", ServerSideEncryption="aws:kms"))
    if error is not None:
        return (False, f"PutObject {error}")
    head = s3.head_object(Bucket=bucket, Key="kms")
    value, key_id = head.get("ServerSideEncryption"), head.get("SSEKMSKeyId")
    return (value == "aws:kms", f"HeadObject ServerSideEncryption={value!r}, SSEKMSKeyId={key_id!r}")


def check_storage_class(s3: S3Client, bucket: str) -> Verdict:
    _, error = _attempt(lambda: s3.put_object(Bucket=bucket, Key="ia", Body=b"cold", StorageClass="STANDARD_IA"))
    if error is not None:
        return (False, f"PutObject {error}")
    standard = s3.put_object(Bucket=bucket, Key="std", Body=b"warm") and s3.head_object(Bucket=bucket, Key="std")
    value = s3.head_object(Bucket=bucket, Key="ia").get("StorageClass")
    listed = {
        o["Key"]: o.get("StorageClass") for o in s3.list_objects_v2(Bucket=bucket, Prefix="ia").get("Contents", [])
    }
    # AWS omits StorageClass from HeadObject for STANDARD and gives it for every other class.
    detail = f"HeadObject StorageClass={value!r} (STANDARD: {standard.get('StorageClass')!r}), ListObjectsV2 {listed}"
    return (value == "STANDARD_IA", detail)


def check_tagging(s3: S3Client, bucket: str) -> Verdict:
    _, error = _attempt(lambda: s3.put_object(Bucket=bucket, Key="tags", Body=b"t", Tagging="a=1&b=two"))
    if error is not None:
        return (False, f"PutObject {error}")
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key="tags")["TagSet"]}
    count = s3.get_object(Bucket=bucket, Key="tags").get("TagCount")
    return (tags == {"a": "1", "b": "two"} and count == 2, f"tags {tags}, GetObject TagCount={count!r}")


def check_missing_bucket(s3: S3Client, bucket: str) -> Verdict:
    missing = f"{bucket}-missing"
    _, error = _attempt(lambda: s3.put_object(Bucket=missing, Key="k", Body=b"x"))
    created = _attempt(lambda: s3.head_bucket(Bucket=missing))[1] is None
    detail = (error or "accepted") + (" (bucket created)" if created else "")
    return ((error or "").startswith("404") and not created, detail)


def check_delete_non_empty_bucket(s3: S3Client, bucket: str) -> Verdict:
    other = f"{bucket}-full"
    s3.create_bucket(Bucket=other)
    s3.put_object(Bucket=other, Key="k", Body=b"x")
    _, error = _attempt(lambda: s3.delete_bucket(Bucket=other))
    return ((error or "").startswith("409"), error or "deleted with its objects")


CHECKS: tuple[tuple[str, Check], ...] = (
    ("PutObject `IfNoneMatch='*'` (create, then again)", check_put_if_none_match),
    ("CompleteMultipartUpload `IfNoneMatch='*'` (create, then again)", check_multipart_if_none_match),
    ("PutObject `IfMatch=<ETag>` (conditional overwrite)", check_put_if_match),
    ("GetObject `Range: bytes=a-b` (exact bytes)", check_ranged_get),
    ("GetObject suffix range `bytes=-65536` on a 100-byte and an empty object", check_suffix_range_get),
    ("GetObject with two ranges `bytes=0-1,4-5`", check_multi_range_get),
    ("User metadata round trip (keys `Mixed-Case`, `lower`)", check_user_metadata),
    ("PutObject `ChecksumAlgorithm` + `ChecksumSHA256` (returned? wrong one refused?)", check_checksum_sha256),
    ("PutObject `ChecksumAlgorithm` + `ChecksumCRC32C` (returned? wrong one refused?)", check_checksum_crc32c),
    ("PutObject `ChecksumAlgorithm` + `ChecksumCRC64NVME` (returned? wrong one refused?)", check_checksum_crc64nvme),
    ("PutObject `ChecksumSHA256` without `ChecksumAlgorithm`", check_checksum_header_alone),
    ("PutObject with a wrong `ContentMD5`", check_content_md5),
    ("UploadPartCopy with `CopySourceRange`", check_upload_part_copy),
    ("PutBucketVersioning, ListObjectVersions, GetObject `VersionId`", check_versioning),
    ("PutObject `ServerSideEncryption='AES256'`, HeadObject field", check_server_side_encryption),
    ("PutObject `ServerSideEncryption='aws:kms'` without a key id", check_sse_kms),
    ("PutObject `StorageClass='STANDARD_IA'`, HeadObject field", check_storage_class),
    ("PutObject `Tagging='a=1&b=two'`, GetObjectTagging, HeadObject tag count", check_tagging),
    ("PutObject to a bucket that does not exist", check_missing_bucket),
    ("DeleteBucket on a non-empty bucket", check_delete_non_empty_bucket),
)


def probe(s3: S3Client, *, bucket: str | None = None, checks: tuple[tuple[str, Check], ...] = CHECKS) -> list[Finding]:
    """Run ``checks`` in a new bucket (and buckets named after it); an unexpected error becomes a finding."""
    bucket = bucket or f"s3probe-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    findings = []
    for feature, check in checks:
        try:
            findings.append(Finding(feature, *check(s3, bucket)))
        except ClientError as exc:
            findings.append(Finding(feature, False, f"unexpected {_error(exc)} ({exc})"))
        except Exception as exc:  # a probe reports what broke rather than stopping at the first surprise
            findings.append(Finding(feature, False, f"unexpected {exc!r}"))
    return findings


def table(columns: dict[str, list[Finding]]) -> str:
    """A Markdown table, one row per feature and one column per server."""
    names = list(columns)
    rows = [f"| feature | {' | '.join(names)} |", "| --- |" + " --- |" * len(names)]
    for index, finding in enumerate(columns[names[0]]):
        cells = [columns[name][index].cell().replace("|", "\\|") for name in names]
        rows.append(f"| {finding.feature} | {' | '.join(cells)} |")
    return "\n".join(rows)


def main() -> None:
    """Probe moto's server and SeaweedFS and print the table (python -m tests.services.s3probe)."""
    import boto3
    import moto
    from botocore.config import Config

    from batcher.embedded import S3Server
    from tests.services.seaweed import SeaweedFS

    columns: dict[str, list[Finding]] = {}
    started = time.monotonic()
    moto_server = S3Server(in_process=False)
    moto_start = time.monotonic() - started
    try:
        client = boto3.client(
            "s3", endpoint_url=moto_server.endpoint_url, aws_access_key_id="testing",
            aws_secret_access_key="testing", region_name="us-east-1", config=Config(retries={"max_attempts": 1}),
        )  # fmt: skip
        columns[f"moto {moto.__version__} (server)"] = probe(client)
        client.close()
    finally:
        moto_server.close()
    with SeaweedFS() as seaweed:
        client = seaweed.client()
        columns["SeaweedFS 4.48"] = probe(client)
        client.close()
        print(f"start-up: moto server {moto_start:.2f} s, SeaweedFS {seaweed.startup_s:.2f} s\n")
    print(table(columns))


if __name__ == "__main__":
    main()
