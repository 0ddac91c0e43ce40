"""Find an object whose ref was lost, from the indexes of the batches that may hold it (``s3batch find``).

Batch keys sort by time (``{prefix}YYYY/MM/DD/HH/{ULID}.tar``), so a listing can start at the hour of
``since``; each batch listed costs its index read, one or two ranged GETs (``BatchReader.index``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from botocore.exceptions import BotoCoreError, ClientError

from batcher.errors import BatchNotFoundError, ReadError
from batcher.index import ObjectInfo
from batcher.reader import BatchReader

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``2026-11-30``, ``2026-11-30T12:00`` (UTC unless it says otherwise) or a duration back from now: ``90m``,
    ``6h``, ``7d``. Raises ValueError naming the accepted forms."""
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(text.strip())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO 8601 time (2026-11-30T12:00) nor a duration (90m, 6h, 7d)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def batch_keys(reader: BatchReader, bucket: str, prefix: str, since: datetime | None = None) -> Iterator[str]:
    """The keys of the batches under ``prefix``, oldest first, from the hour of ``since`` on."""
    start_after = f"{prefix}{since.astimezone(UTC):%Y/%m/%d/%H}/" if since else ""
    paginator = reader.client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix, StartAfter=start_after):
            for item in page.get("Contents", []):
                if item["Key"].endswith(".tar"):
                    yield item["Key"]
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            raise BatchNotFoundError(f"bucket {bucket!r} does not exist") from exc
        raise ReadError(f"could not list s3://{bucket}/{prefix}: {code}") from exc
    except BotoCoreError as exc:
        raise ReadError(f"could not list s3://{bucket}/{prefix}: {exc}") from exc


def find(
    reader: BatchReader, bucket: str, prefix: str, object_key: str, since: datetime | None = None
) -> Iterator[ObjectInfo]:
    """Every object stored under ``object_key`` in the batches under ``prefix`` (since ``since``), oldest first."""
    for key in batch_keys(reader, bucket, prefix, since):
        for info in reader.index(bucket, key).objects:
            if info.ref.object_key == object_key:
                yield info
