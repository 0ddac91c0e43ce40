"""Read objects back from their batches with one ranged GET each."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from batcher.errors import BatchNotFoundError, ChecksumMismatchError, InvalidRefError, ReadError
from batcher.models import BatchRef
from batcher.uploader import s3_client as default_s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_MISSING = {"NoSuchKey", "NoSuchBucket", "404"}


class BatchReader:
    """Fetches objects by their BatchRef."""

    def __init__(self, s3_client: S3Client | None = None) -> None:
        self.client = s3_client or default_s3_client()

    def get(self, ref: BatchRef, *, verify: bool = True) -> bytes:
        """The object's bytes, from one ranged GET (none for an empty object).

        Raises BatchNotFoundError, ChecksumMismatchError (when ``verify``) or ReadError.
        """
        if not isinstance(ref, BatchRef):
            raise InvalidRefError(
                f"BatchReader.get takes a BatchRef (BatchRef.from_dict(result)), got {type(ref).__name__}"
            )
        data = b"" if ref.size == 0 else self._get_range(ref)
        if len(data) != ref.size:
            raise ReadError(
                f"s3://{ref.bucket}/{ref.key} returned {len(data)} bytes for {ref.range}, expected {ref.size}"
            )
        if verify and hashlib.sha256(data).hexdigest() != ref.sha256:
            raise ChecksumMismatchError(
                f"{ref.object_key!r} in s3://{ref.bucket}/{ref.key} ({ref.range}) does not match its sha256 "
                f"{ref.sha256}: the batch is corrupted or the ref points at the wrong bytes"
            )
        return data

    def _get_range(self, ref: BatchRef) -> bytes:
        try:
            response = self.client.get_object(Bucket=ref.bucket, Key=ref.key, Range=ref.range)
            return response["Body"].read()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                raise BatchNotFoundError(f"batch s3://{ref.bucket}/{ref.key} does not exist ({code})") from exc
            if code == "InvalidRange":
                raise InvalidRefError(f"{ref.range} is outside s3://{ref.bucket}/{ref.key}") from exc
            raise ReadError(f"could not read {ref.object_key!r} from s3://{ref.bucket}/{ref.key}: {code}") from exc
        except BotoCoreError as exc:
            raise ReadError(f"could not read {ref.object_key!r} from s3://{ref.bucket}/{ref.key}: {exc}") from exc
