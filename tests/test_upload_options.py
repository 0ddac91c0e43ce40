"""Upload options and checksums: boto3's PutObject arguments per deployment and partition, validated at start,
applied to single and multipart uploads on moto and SeaweedFS; a byte flipped on the way never reaches a caller
as SUCCESS; a refused KMS key dead-letters the batch with the key named."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from batcher import BatchReader
from batcher.checksums import METADATA, Checksum, Stored, composite, of
from batcher.config import Settings
from batcher.embedded import S3Server
from batcher.errors import BatchArchivedError, ConfigError, DeadLetterError
from batcher.flush import Flusher
from batcher.partitions import Partition
from batcher.producer import stage_object
from batcher.uploadargs import combined, for_request, retention_seconds
from batcher.uploader import Uploader, s3_client
from tests.factories import staged
from tests.faultproxy import FaultProxy
from tests.s3backends import SEAWEEDFS, S3Backend, backend_for
from tests.support import Stack
from tests.test_flush import Recorder
from tests.test_worker_start import assert_refused

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SMALL_PARTS = 5 * 1024 * 1024  # S3's smallest part: a 12 MiB batch goes multipart in three parts
KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/8d6f1b4e-0000-4000-8000-000000000001"


# ---- the arguments themselves (no services) ----


def test_checksums_match_the_published_check_values() -> None:
    """The CRC check values of "123456789" (CRC RevEng catalogue), in S3's base64 of the big-endian value."""
    for algorithm, check in (("CRC32", 0xCBF43926), ("CRC32C", 0xE3069283), ("CRC64NVME", 0xAE8B14860A799888)):
        width = 8 if algorithm == "CRC64NVME" else 4
        assert of(algorithm, b"123456789").value == base64.b64encode(check.to_bytes(width, "big")).decode()
    running = Checksum("CRC64NVME")
    for piece in (b"1234", b"", b"56789"):
        running.update(piece)
    assert running.value == of("CRC64NVME", b"123456789").value
    parts = [of("SHA256", b"a"), of("SHA256", b"b")]
    assert composite("SHA256", parts).endswith("-2")
    assert Stored.decode("CRC32C:4waSgw==") == Stored("CRC32C", "4waSgw==")
    assert Stored.decode("MD5:abc") is None and Stored.decode(None) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"StorageClas": "STANDARD_IA"}', "StorageClas: not a PutObject argument; did you mean StorageClass?"),
        ('{"StorageClass": "STANDARD-IA"}', "is not one of STANDARD, "),
        ('{"StorageClass": "STANDARD-IA"}', "(did you mean 'STANDARD_IA'?)"),
        ('{"SSECustomerKey": "k"}', "SSE-C is not supported: every reader of the batch would need the customer key"),
        ('{"ChecksumAlgorithm": "SHA256"}', "set the checksum with S3BATCH_UPLOAD_CHECKSUM"),
        ('{"ContentEncoding": "gzip"}', "readers take byte ranges of the tar as stored"),
        ('{"Metadata": {"a": "b"}}', "Metadata: s3batch sets it for every batch"),
        ('{"BucketKeyEnabled": "yes"}', "BucketKeyEnabled must be true or false"),
        ('{"SSEKMSKeyId": "k"}', 'SSEKMSKeyId needs "ServerSideEncryption": "aws:kms"'),
        ('{"ObjectLockMode": "GOVERNANCE"}', "ObjectLockMode and ObjectLockRetainUntilDate go together"),
        ('{"ObjectLockMode": "GOVERNANCE", "ObjectLockRetainUntilDate": "2030-01-01"}', "must be a retention period"),
        ('{"Tagging": "a=1&a=2"}', "1 to 10 tags with different keys"),
        ("[1]", "must be a JSON object of names to values"),
        ("{", "S3BATCH_UPLOAD_ARGS is not valid JSON"),
        ('{"StorageClass": "DEEP_ARCHIVE"}', "S3BATCH_VERIFY_UPLOADS=always reads every batch back, which S3 refuses"),
    ],
)
def test_arguments_batching_cannot_honour_are_refused_with_the_reason(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"S3BATCH_BUCKET": "b", "S3BATCH_UPLOAD_ARGS": value, "S3BATCH_VERIFY_UPLOADS": "always"})
    assert "S3BATCH_UPLOAD_ARGS" in str(refused.value) and message in str(refused.value)


def test_partition_arguments_win_over_the_deployments_and_name_allowed_buckets() -> None:
    env = {
        "S3BATCH_BUCKET": "main",
        "S3BATCH_BUCKETS": "main,tenant-*",
        "S3BATCH_UPLOAD_ARGS": '{"StorageClass": "STANDARD_IA", "Tagging": {"team": "a b"}}',
        "S3BATCH_PARTITION_UPLOAD_ARGS": json.dumps({
            "tenant-a": {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": KMS_KEY},
            "tenant-a/cold/": {"StorageClass": "GLACIER_IR"},
        }),
    }  # fmt: skip
    settings = Settings.from_env(env)
    assert settings.upload_args_for("main", "batches/") == {"StorageClass": "STANDARD_IA", "Tagging": "team=a+b"}
    tenant = settings.upload_args_for("tenant-a", "logs/")
    assert tenant["SSEKMSKeyId"] == KMS_KEY and tenant["StorageClass"] == "STANDARD_IA"
    assert settings.upload_args_for("tenant-a", "cold/")["StorageClass"] == "GLACIER_IR"
    with pytest.raises(ConfigError, match=r"S3BATCH_PARTITION_UPLOAD_ARGS.*'other'.*S3BATCH_BUCKETS"):
        Settings.from_env({**env, "S3BATCH_PARTITION_UPLOAD_ARGS": '{"other": {"StorageClass": "STANDARD"}}'})
    with pytest.raises(ConfigError, match=r"needs \"ServerSideEncryption\": \"aws:kms\""):
        combined('{"SSEKMSKeyId":"k"}', "{}", "main", "batches/")


def test_a_retention_period_becomes_a_date_from_each_upload() -> None:
    assert retention_seconds("30d", "x") == 30 * 86400 and retention_seconds("90m", "x") == 5400
    assert retention_seconds(45, "x") == 45
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 12, 1, tzinfo=UTC)
    request = for_request({"ObjectLockMode": "GOVERNANCE", "ObjectLockRetainUntilDate": "1d"}, now)
    assert request["ObjectLockRetainUntilDate"] == now + timedelta(days=1)


# ---- the options reach the server, on single and multipart uploads, per partition ----


@pytest.fixture
def seaweedfs(s3_server: S3Server) -> S3Backend:
    """The session's SeaweedFS (tests/s3backends.py starts it on first use)."""
    return backend_for(SEAWEEDFS, s3_server)


def flush_partitions(
    stack: Stack, settings: Settings, client: S3Client, bodies: dict[Partition, list[bytes]]
) -> tuple[list[Any], Recorder]:
    """Stage ``bodies`` per partition and flush them all with an uploader on ``client`` (5 MiB parts)."""
    lanes = stack.lanes_for(settings)
    uploader = Uploader(client, verify=settings.verify_uploads, multipart_threshold_bytes=SMALL_PARTS,
                        part_bytes=SMALL_PARTS)  # fmt: skip
    for partition, partition_bodies in bodies.items():
        for i, body in enumerate(partition_bodies):
            record = f"{partition.bucket}/{partition.prefix}{i}"
            stage_object(lanes, partition, partition.lane(0), staged(f"k{i}", body, record_id=record))
    flushed = Flusher(settings, lanes, uploader, recorder := Recorder()).flush(force=True)
    return flushed, recorder


def head(client: S3Client, bucket: str, key: str) -> dict[str, Any]:
    answer: dict[str, Any] = dict(client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED"))
    answer["Tags"] = {t["Key"]: t["Value"] for t in client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
    return answer


def assert_checksum_kept(answer: dict[str, Any], multipart: bool) -> None:
    stored = Stored.decode(answer["Metadata"].get(METADATA))
    assert stored is not None and stored.algorithm == "CRC64NVME"
    assert answer.get("ChecksumCRC64NVME") == stored.value  # full-object CRC, for multipart uploads too
    assert answer["ETag"].strip('"').endswith("-3") == multipart


def test_options_reach_moto_per_partition_on_single_and_multipart_uploads(stack: Stack) -> None:
    main = stack.settings.require_bucket()
    locked = f"{main[:50]}-lock"
    stack.s3.create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True)
    env = {
        **stack.env(),
        "S3BATCH_BUCKETS": f"{main},{locked}",
        "S3BATCH_UPLOAD_ARGS": json.dumps({"StorageClass": "STANDARD_IA", "Tagging": {"retention": "short"}}),
        "S3BATCH_PARTITION_UPLOAD_ARGS": json.dumps({
            f"{main}/kms/": {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": KMS_KEY, "BucketKeyEnabled": True},
            locked: {"ObjectLockMode": "GOVERNANCE", "ObjectLockRetainUntilDate": "2d", "StorageClass": "STANDARD"},
        }),
        "S3BATCH_VERIFY_UPLOADS": "never",
    }  # fmt: skip
    settings = Settings.from_env(env)
    large = [bytes([i]) * (4 * 1024 * 1024) for i in range(3)]  # 12 MiB: multipart
    plain, kms, lock = Partition(main, "plain/"), Partition(main, "kms/"), Partition(locked, "held/")
    bodies = {plain: [b"a" * 10], kms: [b"b" * 10], lock: [b"c" * 10], Partition(main, "big/"): large,
              Partition(main, "kms-big/"): large}  # fmt: skip
    created: dict[str, dict[str, Any]] = {}  # CreateMultipartUpload's arguments by key

    def record(params: dict[str, Any], **_: Any) -> None:
        created[params["Key"]] = dict(params)

    stack.s3.meta.events.register("provide-client-params.s3.CreateMultipartUpload", record)
    flushed, recorder = flush_partitions(stack, settings, stack.s3, {**bodies, Partition(locked, "big/"): large})
    assert all(batch.error is None for batch in flushed) and len(flushed) == 6, flushed
    assert not recorder.failures
    refs = {record.rsplit("/", 1)[0] + "/": ref for record, ref in recorder.refs.items()}

    for partition in (plain, Partition(main, "big/")):
        answer = head(stack.s3, main, refs[f"{main}/{partition.prefix}"].key)
        assert answer["StorageClass"] == "STANDARD_IA" and answer["Tags"] == {"retention": "short"}
        assert "SSEKMSKeyId" not in answer
        assert_checksum_kept(answer, multipart=partition.prefix == "big/")
    answer = head(stack.s3, main, refs[f"{main}/kms/"].key)
    assert answer["ServerSideEncryption"] == "aws:kms" and answer["SSEKMSKeyId"] == KMS_KEY
    assert answer["StorageClass"] == "STANDARD_IA" and answer["Tags"] == {"retention": "short"}
    for prefix in ("held/", "big/"):
        key = refs[f"{locked}/{prefix}"].key
        answer = head(stack.s3, locked, key)
        assert answer.get("StorageClass", "STANDARD") == "STANDARD" and answer["Tags"] == {"retention": "short"}
        assert_checksum_kept(answer, multipart=prefix == "big/")
        if prefix == "big/":  # moto keeps no Object Lock of a multipart upload: what the request carried
            lock_mode, until = created[key]["ObjectLockMode"], created[key]["ObjectLockRetainUntilDate"]
        else:
            lock_mode, until = answer["ObjectLockMode"], answer["ObjectLockRetainUntilDate"]
        assert lock_mode == "GOVERNANCE" and 1.99 < (until - answer["LastModified"]).total_seconds() / 86400 < 2.01
    for record_id, ref in recorder.refs.items():  # and every object reads back as staged
        partition_prefix, index = record_id.rsplit("/", 1)
        expected = [body for p, b in bodies.items() for body in b if f"{p.bucket}/{p.prefix}" == f"{partition_prefix}/"]
        if expected:
            assert BatchReader(stack.s3).get(ref) == expected[int(index)]
    mpu_kms = head(stack.s3, main, refs[f"{main}/kms-big/"].key)
    assert mpu_kms["StorageClass"] == "STANDARD_IA" and "SSEKMSKeyId" not in mpu_kms  # only kms/ has the key


def test_options_reach_seaweedfs_on_single_and_multipart_uploads(stack: Stack, seaweedfs: S3Backend) -> None:
    client = seaweedfs.client()
    bucket = f"opts-{stack.settings.require_bucket()[-20:]}".lower()
    client.create_bucket(Bucket=bucket)
    args = {"StorageClass": "STANDARD_IA", "ServerSideEncryption": "AES256", "Tagging": "tenant=a"}
    settings = dataclasses.replace(stack.settings, bucket=bucket, buckets=bucket, upload_args=json.dumps(args))
    small, large = Partition(bucket, "small/"), Partition(bucket, "large/")
    big = [bytes([i]) * (4 * 1024 * 1024) for i in range(3)]
    flushed, recorder = flush_partitions(stack, settings, client, {small: [b"x" * 100], large: big})
    assert len(flushed) == 2 and all(batch.error is None for batch in flushed) and not recorder.failures
    for prefix in ("small/", "large/"):
        ref = recorder.refs[f"{bucket}/{prefix}0"]
        answer = head(client, bucket, ref.key)
        assert answer["StorageClass"] == "STANDARD_IA" and answer["ServerSideEncryption"] == "AES256"
        assert answer["Tags"] == {"tenant": "a"}
        assert_checksum_kept(answer, multipart=prefix == "large/")
        assert BatchReader(client).get(ref) == (b"x" * 100 if prefix == "small/" else big[0])
    assert Uploader(client).server_verifies_checksums(bucket, "probe/.s3batch-probe") is True


def test_a_misspelt_option_stops_the_worker_at_start_with_its_name(stack: Stack) -> None:
    assert_refused(stack, "S3BATCH_UPLOAD_ARGS: StorageClas: not a PutObject argument; did you mean StorageClass?",
                   S3BATCH_UPLOAD_ARGS='{"StorageClas": "GLACIER"}')  # fmt: skip


# ---- refusals and corrupted bytes ----


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.endpoint_url, seed=15) as fault_proxy:
        yield fault_proxy


def test_a_refused_kms_key_dead_letters_the_batch_naming_the_key(stack: Stack, proxy: FaultProxy) -> None:
    proxy.answer_when("x-amz-server-side-encryption-aws-kms-key-id", KMS_KEY, status=400,
                      code="KMS.NotFoundException", message="Invalid keyId")  # fmt: skip
    bucket = stack.settings.require_bucket()
    args = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": KMS_KEY}
    settings = dataclasses.replace(
        stack.settings, partition_upload_args=json.dumps({f"{bucket}/tenant/": args}), verify_uploads="never"
    )
    client = s3_client(endpoint_url=proxy.url)
    flushed, recorder = flush_partitions(
        stack, settings, client, {Partition(bucket, "tenant/"): [b"secret"], Partition(bucket, "other/"): [b"fine"]}
    )
    assert sorted(batch.error is None for batch in flushed) == [False, True]
    assert len(recorder.refs) == 1 and f"{bucket}/other/0" in recorder.refs  # the other partition is not held up
    error = recorder.failures[f"{bucket}/tenant/0"]
    assert isinstance(error, DeadLetterError)
    assert "KMS.NotFoundException" in str(error) and f"KMS key {KMS_KEY}" in str(error), error
    assert sum(proxy.requests.values()) <= 4  # refused once, not retried: a missing key needs an operator


@pytest.mark.parametrize("verify", ["auto", "always"])
def test_a_byte_flipped_on_the_way_to_moto_is_never_reported_uploaded(
    stack: Stack, proxy: FaultProxy, verify: str
) -> None:
    """moto stores what arrives without checking the checksum: the read-back finds the difference, the batch is
    uploaded again under a new key, and the callers hear only of the good copy."""
    bucket = stack.settings.require_bucket()
    client = s3_client(endpoint_url=proxy.url)
    settings = dataclasses.replace(stack.settings, verify_uploads=verify)
    if verify == "auto":
        assert Uploader(client).server_verifies_checksums(bucket, "probe/.s3batch-probe") is False
    proxy.corrupt_bodies(1)
    bodies = [b"%05d" % i * 50 for i in range(20)]
    flushed, recorder = flush_partitions(stack, settings, client, {Partition(bucket, "flip/"): bodies})
    assert len(proxy.corrupted) == 1 and len(flushed) == 1 and flushed[0].error is None
    assert len(recorder.refs) == 20 and not recorder.failures
    keys = {ref.key for ref in recorder.refs.values()}
    assert len(keys) == 1 and proxy.corrupted[0].endswith(".tar") and not proxy.corrupted[0].endswith(next(iter(keys)))
    for record, ref in recorder.refs.items():
        assert BatchReader(stack.s3).get(ref) == bodies[int(record.rsplit("/", 1)[1])]


def test_a_byte_flipped_on_the_way_to_seaweedfs_is_refused_by_the_server(stack: Stack, seaweedfs: S3Backend) -> None:
    client = seaweedfs.client()
    bucket = f"flip-{stack.settings.require_bucket()[-20:]}".lower()
    client.create_bucket(Bucket=bucket)
    with FaultProxy(seaweedfs.endpoint_url, seed=15) as proxy:
        proxied = s3_client(endpoint_url=proxy.url, aws_access_key_id=seaweedfs.access_key,
                            aws_secret_access_key=seaweedfs.secret_key, region_name="us-east-1")  # fmt: skip
        settings = dataclasses.replace(stack.settings, bucket=bucket, buckets=bucket, verify_uploads="never")
        proxy.corrupt_bodies(1)
        big = [bytes([i]) * (4 * 1024 * 1024) for i in range(3)]
        flushed, recorder = flush_partitions(stack, settings, proxied, {Partition(bucket, "mpu/"): big})
        assert len(proxy.corrupted) == 1 and proxy.upstream_statuses[400] == 1
        assert "BadDigest" in str(flushed[0].error) and not recorder.refs  # retried later, nobody told SUCCESS
        flusher = Flusher(settings, stack.lanes_for(settings), Uploader(proxied, verify="never"), recorder)
        started = time.monotonic()
        while not recorder.refs and time.monotonic() < started + 20:
            time.sleep(0.2)
            flusher.flush()
    # retried after its backoff (1-2 s), not at the end of its 30 s lease
    assert len(recorder.refs) == 3 and not recorder.failures and time.monotonic() - started < 10
    for i, body in enumerate(big):
        assert BatchReader(client).get(recorder.refs[f"{bucket}/mpu/{i}"]) == body


# ---- reading back ----


def test_verify_checks_the_s3_checksum_kept_in_the_metadata(stack: Stack) -> None:
    bucket = stack.settings.require_bucket()
    _, recorder = flush_partitions(stack, stack.settings, stack.s3, {Partition(bucket, "v/"): [b"one", b"two"]})
    ref = recorder.refs[f"{bucket}/v/0"]
    reader = BatchReader(stack.s3)
    assert reader.verify(bucket, ref.key).ok
    head = stack.s3.head_object(Bucket=bucket, Key=ref.key)
    stored = Stored.decode(head["Metadata"][METADATA])
    assert stored is not None
    metadata = {**head["Metadata"], METADATA: Stored(stored.algorithm, of(stored.algorithm, b"other").value).encode()}
    copy = f"{ref.key}.copy"
    stack.s3.put_object(Bucket=bucket, Key=copy, Body=stack.tar_bytes(ref.key), Metadata=metadata)
    check = reader.verify(bucket, copy)
    assert not check.ok and check.problems == [
        f"s3://{bucket}/{copy} has CRC64NVME {stored.value}, uploaded as {metadata[METADATA].split(':', 1)[1]}"
    ]


def test_a_batch_in_an_archive_storage_class_names_the_restore_it_needs(stack: Stack) -> None:
    bucket = stack.settings.require_bucket()
    # moto does not verify checksums: verify="auto" would read every batch back, but not one in GLACIER
    settings = dataclasses.replace(stack.settings, upload_args='{"StorageClass":"GLACIER"}', verify_uploads="auto")
    _, recorder = flush_partitions(stack, settings, stack.s3, {Partition(bucket, "cold/"): [b"frozen"]})
    ref = recorder.refs[f"{bucket}/cold/0"]
    assert stack.s3.head_object(Bucket=bucket, Key=ref.key)["StorageClass"] == "GLACIER"
    with pytest.raises(BatchArchivedError, match=r"must be restored before it can be read: `aws s3api restore-object"):
        BatchReader(stack.s3).get(ref)
