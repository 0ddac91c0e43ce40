"""Upload options: boto3's own PutObject arguments for every batch, set for the deployment and per partition.

``S3BATCH_UPLOAD_ARGS`` is a JSON object of PutObject argument names (``{"StorageClass": "STANDARD_IA",
"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "..."}``); ``S3BATCH_PARTITION_UPLOAD_ARGS`` (or
``s3batch_partition_upload_args`` in the configuration module) maps a bucket, or a bucket and prefix written
``"bucket/prefix/"``, to more of them, which win over the deployment's. Names and values are checked against
the installed botocore's model of PutObject and CreateMultipartUpload when the settings are loaded, so a
misspelt option stops the worker at start instead of failing every upload, and the same arguments go to single
and multipart uploads.

Arguments that cannot hold for a batch are refused with the reason: what s3batch sets itself (key, body,
content type, metadata, checksums, the conditional create), SSE-C (every reader would need the customer key),
a content encoding (readers take byte ranges of the tar as stored). ``ObjectLockRetainUntilDate`` is a
retention period (``"30d"``, ``"12h"``, ``"90m"``, seconds) counted from each upload, since a fixed date would
soon be in the past for every new batch.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any
from urllib.parse import parse_qsl, urlencode

import botocore.session

from batcher.errors import ConfigError

ALLOWED = frozenset({
    "ServerSideEncryption", "SSEKMSKeyId", "SSEKMSEncryptionContext", "BucketKeyEnabled", "StorageClass",
    "Tagging", "ExpectedBucketOwner", "ObjectLockMode", "ObjectLockRetainUntilDate", "ObjectLockLegalHoldStatus",
    "ACL", "GrantFullControl", "GrantRead", "GrantReadACP", "GrantWriteACP", "RequestPayer", "CacheControl",
    "ContentDisposition", "ContentLanguage",
})  # fmt: skip
_REFUSED = {
    "SSECustomer": "SSE-C is not supported: every reader of the batch would need the customer key",
    "Checksum": "set the checksum with S3BATCH_UPLOAD_CHECKSUM (s3batch computes it over the whole tar)",
    "ContentMD5": "set the checksum with S3BATCH_UPLOAD_CHECKSUM (s3batch computes it over the whole tar)",
    "ContentEncoding": "readers take byte ranges of the tar as stored; an encoding would change what they get",
    "If": "s3batch's uploads are conditional creates of their own",
    "WriteOffsetBytes": "a batch is written once",
    "Expires": "a fixed date would be the same for every batch",
}
_SET_BY_S3BATCH = frozenset({"Bucket", "Key", "Body", "ContentLength", "ContentType", "Metadata"})
_KMS = ("aws:kms", "aws:kms:dsse")
_PERIOD = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdy]?)\s*$")
_PERIOD_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "y": 365 * 86400}
RETENTION_ARGUMENT = "ObjectLockRetainUntilDate"
# Storage classes whose objects S3 serves only after a restore (GLACIER_IR is read at once)
ARCHIVE_STORAGE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})


@cache
def _shapes() -> dict[str, Any]:
    """The members of PutObject's input that CreateMultipartUpload also takes, from the installed botocore."""
    model = botocore.session.get_session().get_service_model("s3")
    put = model.operation_model("PutObject").input_shape
    multipart = model.operation_model("CreateMultipartUpload").input_shape
    assert put is not None and multipart is not None
    return {name: shape for name, shape in put.members.items() if name in multipart.members}


@cache
def _put_object_names() -> frozenset[str]:
    model = botocore.session.get_session().get_service_model("s3")
    shape = model.operation_model("PutObject").input_shape
    return frozenset(shape.members) if shape is not None else frozenset()


def parse_args(value: object, where: str) -> str:
    """Upload arguments as canonical JSON text (what Settings keeps); ConfigError naming ``where`` and the argument.

    ``value`` is JSON text or a mapping (from the configuration module); text is parsed once per process.
    """
    return _canonical(_parse, value, where)


def _canonical(parse: Callable[[object, str], str], value: object, where: str) -> str:
    """``parse(value, where)``; JSON text (hashable, and the same text for every Settings) only once per process."""
    return _parsed_text(parse, value, where) if isinstance(value, str) else parse(value, where)


@cache
def _parsed_text(parse: Callable[[object, str], str], value: str, where: str) -> str:
    return parse(value, where)


def _parse(value: object, where: str) -> str:
    args = _object(value, where)
    checked = {name: check_value(name, raw, where) for name, raw in sorted(args.items())}
    return json.dumps(checked, sort_keys=True, separators=(",", ":"))


def parse_partition_args(value: object, where: str) -> str:
    """Per-partition upload arguments (``{"bucket" or "bucket/prefix": {...}}``) as canonical JSON text."""
    return _canonical(_parse_partition, value, where)


def _parse_partition(value: object, where: str) -> str:
    by_partition = _object(value, where)
    canonical: dict[str, Any] = {}
    for target, args in sorted(by_partition.items()):
        bucket = target.split("/", 1)[0]
        if not bucket:
            raise ConfigError(f"{where}: {target!r} must name a bucket, or a bucket and a prefix ('bucket/prefix/')")
        canonical[target] = json.loads(parse_args(args, f"{where}[{target!r}]"))
    return json.dumps(canonical, sort_keys=True, separators=(",", ":"))


def _object(value: object, where: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{where} must be a JSON object of names to values, got {type(value).__name__}")
    return dict(value)


def check_value(name: str, value: Any, where: str) -> Any:
    """The value to keep for upload argument ``name``; ConfigError saying what is wrong and what to do."""
    if name not in ALLOWED:
        raise ConfigError(f"{where}: {name}: {_why_not(name)}")
    shape = _shapes()[name]
    if name == RETENTION_ARGUMENT:
        retention_seconds(value, f"{where}: {name}")
        return value
    if name == "Tagging" and isinstance(value, Mapping):
        value = urlencode({str(k): str(v) for k, v in value.items()})
    if name == "SSEKMSEncryptionContext" and isinstance(value, Mapping):
        value = base64.b64encode(json.dumps(dict(value)).encode()).decode()
    if shape.type_name == "boolean":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {name} must be true or false, got {value!r}")
        return value
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {name} must be a non-empty string, got {value!r}")
    enum = list(getattr(shape, "enum", []) or [])
    if enum and value not in enum:
        close = difflib.get_close_matches(value, enum, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: {name}={value!r} is not one of {', '.join(enum)}{hint}")
    if name == "Tagging":
        _check_tagging(value, f"{where}: Tagging")
    if name == "SSEKMSEncryptionContext":
        _check_encryption_context(value, f"{where}: SSEKMSEncryptionContext")
    return value


def check_combination(args: Mapping[str, Any], where: str) -> None:
    """ConfigError for arguments that S3 only accepts together."""
    encryption = args.get("ServerSideEncryption")
    for needs_kms in ("SSEKMSKeyId", "SSEKMSEncryptionContext", "BucketKeyEnabled"):
        if needs_kms in args and encryption not in _KMS:
            raise ConfigError(f'{where}: {needs_kms} needs "ServerSideEncryption": "aws:kms" (or "aws:kms:dsse")')
    if ("ObjectLockMode" in args) != (RETENTION_ARGUMENT in args):
        raise ConfigError(
            f"{where}: ObjectLockMode and ObjectLockRetainUntilDate go together (a mode and a retention period such "
            'as "30d"); the bucket must have Object Lock enabled'
        )


def combined(deployment: str, by_partition: str, bucket: str, prefix: str) -> dict[str, Any]:
    """The upload arguments of partition ``bucket``/``prefix``: the deployment's, then the bucket's, then the
    bucket and prefix's (each key wins over the ones before)."""
    partitions = _loaded(by_partition)
    args = {**_loaded(deployment), **partitions.get(bucket, {}), **partitions.get(f"{bucket}/{prefix}", {})}
    check_combination(args, f"S3BATCH_UPLOAD_ARGS and S3BATCH_PARTITION_UPLOAD_ARGS for s3://{bucket}/{prefix}")
    return args


def for_request(args: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """``args`` as boto3 takes them for one upload: the retention period becomes a date from now."""
    request = dict(args)
    if RETENTION_ARGUMENT in request:
        seconds = retention_seconds(request[RETENTION_ARGUMENT], RETENTION_ARGUMENT)
        request[RETENTION_ARGUMENT] = (now or datetime.now(UTC)) + timedelta(seconds=seconds)
    return request


def retention_seconds(value: Any, where: str) -> float:
    """Seconds of a retention period (``"30d"``, ``"12h"``, ``"90m"``, ``"45s"``, ``"1y"`` or a number)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    match = _PERIOD.match(value) if isinstance(value, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(
            f'{where}={value!r} must be a retention period counted from each upload, such as "30d", "12h" or '
            "a number of seconds (a fixed date would soon be in the past for every new batch)"
        )
    return float(match.group(1)) * _PERIOD_UNITS[match.group(2)]


def partition_targets(by_partition: str) -> list[str]:
    """The buckets (``bucket`` or ``bucket/prefix``) that have upload arguments of their own."""
    return sorted(_loaded(by_partition))


@cache
def _loaded(text: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(text or "{}")
    return loaded


def _why_not(name: str) -> str:
    if name in _SET_BY_S3BATCH:
        return "s3batch sets it for every batch"
    for start, why in _REFUSED.items():
        if name.startswith(start):
            return why
    if name in _shapes() or name in _put_object_names():
        return "not supported for batches (supported: " + ", ".join(sorted(ALLOWED)) + ")"
    close = difflib.get_close_matches(name, sorted(ALLOWED), n=1)
    hint = f"; did you mean {close[0]}?" if close else f"; supported: {', '.join(sorted(ALLOWED))}"
    return f"not a PutObject argument{hint}"


def _check_tagging(value: str, where: str) -> None:
    """S3's limits: at most 10 tags, keys up to 128 characters, values up to 256, no key twice."""
    tags = parse_qsl(value, keep_blank_values=True, strict_parsing=False)
    keys = [key for key, _ in tags]
    if not tags or len(tags) > 10 or len(set(keys)) != len(keys):
        raise ConfigError(f"{where}={value!r} must hold 1 to 10 tags with different keys ('k1=v1&k2=v2' or an object)")
    for key, tag in tags:
        if not 1 <= len(key) <= 128 or len(tag) > 256:
            raise ConfigError(f"{where}: tag {key!r} is too long (keys up to 128 characters, values up to 256)")


def _check_encryption_context(value: str, where: str) -> None:
    try:
        decoded = json.loads(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        decoded = None
    if not isinstance(decoded, dict):
        raise ConfigError(f"{where} must be a JSON object (or its base64 encoding, as boto3 takes it)")
