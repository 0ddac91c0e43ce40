"""The one frozen settings object, read from environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from batcher.errors import ConfigError

DEFAULT_REDIS_URL = "redis://localhost:6379/0"

# A multipart upload has at most 10,000 parts of 16 MiB (batcher.uploader.PART_BYTES), and a Redis string
# holds at most 512 MiB, which bounds one staged object.
_MAX_BATCH_BYTES = 10_000 * 16 * 1024 * 1024
_MAX_OBJECT_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Configuration shared by producers, workers and readers (see DESIGN.md)."""

    bucket: str | None = None
    prefix: str = "batches/"
    redis_url: str = DEFAULT_REDIS_URL
    max_batch_age_s: float = 10.0
    max_batch_bytes: int = 64 * 1024 * 1024
    max_batch_objects: int = 10_000
    max_object_bytes: int = 5 * 1024 * 1024
    max_staged_bytes: int = 1024 * 1024 * 1024
    lease_s: float = 30.0
    upload_attempts: int = 5

    def __post_init__(self) -> None:
        _check_positive("S3BATCH_MAX_BATCH_AGE", self.max_batch_age_s)
        _check_positive("S3BATCH_MAX_BATCH_BYTES", self.max_batch_bytes)
        _check_positive("S3BATCH_MAX_BATCH_OBJECTS", self.max_batch_objects)
        _check_positive("S3BATCH_MAX_OBJECT_BYTES", self.max_object_bytes)
        _check_positive("S3BATCH_MAX_STAGED_BYTES", self.max_staged_bytes)
        _check_positive("S3BATCH_LEASE_SECONDS", self.lease_s)
        _check_positive("S3BATCH_UPLOAD_ATTEMPTS", self.upload_attempts)
        if self.max_batch_bytes > _MAX_BATCH_BYTES:
            raise ConfigError(
                f"S3BATCH_MAX_BATCH_BYTES={self.max_batch_bytes} is above {_MAX_BATCH_BYTES} "
                "(10,000 multipart parts of 16 MiB)"
            )
        if self.max_object_bytes > _MAX_OBJECT_BYTES:
            raise ConfigError(f"S3BATCH_MAX_OBJECT_BYTES={self.max_object_bytes} is above Redis's 512 MiB value limit")
        if self.max_object_bytes > self.max_batch_bytes:
            raise ConfigError(
                f"S3BATCH_MAX_OBJECT_BYTES={self.max_object_bytes} is larger than "
                f"S3BATCH_MAX_BATCH_BYTES={self.max_batch_bytes}: an object must fit in one batch"
            )
        if self.max_staged_bytes < self.max_batch_bytes:
            raise ConfigError(
                f"S3BATCH_MAX_STAGED_BYTES={self.max_staged_bytes} is smaller than "
                f"S3BATCH_MAX_BATCH_BYTES={self.max_batch_bytes}: a full batch could never be staged"
            )
        if self.prefix.startswith("/"):
            raise ConfigError(f"S3BATCH_PREFIX={self.prefix!r} must not start with '/' (S3 keys are relative)")

    @property
    def flush_interval_s(self) -> float:
        """Seconds between beat's flush ticks: a tenth of the batch age, between 0.2 and 1 s."""
        return min(1.0, max(0.2, self.max_batch_age_s / 10))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the S3BATCH_* variables; raises ConfigError naming the variable that is wrong."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name, attr, parse in _VARIABLES:
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[attr] = parse(raw.strip())
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a valid {parse.__name__}") from None
        return cls(**values)  # type: ignore[arg-type]

    def require_bucket(self) -> str:
        """The bucket, or ConfigError telling how to set it (workers need one)."""
        if not self.bucket:
            raise ConfigError("S3BATCH_BUCKET is not set: workers need the bucket that receives the batches")
        return self.bucket


def _size(raw: str) -> int:
    return int(raw.replace("_", ""))


_size.__name__ = "integer"


def _seconds(raw: str) -> float:
    return float(raw)


_seconds.__name__ = "number of seconds"


def _text(raw: str) -> str:
    return raw


_text.__name__ = "string"

_VARIABLES = (
    ("S3BATCH_BUCKET", "bucket", _text),
    ("S3BATCH_PREFIX", "prefix", _text),
    ("S3BATCH_REDIS_URL", "redis_url", _text),
    ("S3BATCH_MAX_BATCH_AGE", "max_batch_age_s", _seconds),
    ("S3BATCH_MAX_BATCH_BYTES", "max_batch_bytes", _size),
    ("S3BATCH_MAX_BATCH_OBJECTS", "max_batch_objects", _size),
    ("S3BATCH_MAX_OBJECT_BYTES", "max_object_bytes", _size),
    ("S3BATCH_MAX_STAGED_BYTES", "max_staged_bytes", _size),
    ("S3BATCH_LEASE_SECONDS", "lease_s", _seconds),
    ("S3BATCH_UPLOAD_ATTEMPTS", "upload_attempts", _size),
)
assert {attr for _, attr, _ in _VARIABLES} == {f.name for f in fields(Settings)}


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name}={value} must be greater than zero")
