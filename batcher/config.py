"""The one frozen settings object and its one loader.

Every entry point (workers, beat, ``Batcher``, the CLI, the examples) calls
``Settings.from_env()``: it reads the ``S3BATCH_*`` environment variables, then
the ``s3batch_<field>`` values of the configuration module named by
``S3BATCH_CELERY_CONFIG`` (which win), with the same parsing and validation
for both, and names the variable or setting that is wrong.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from batcher.checksums import ALGORITHMS
from batcher.errors import ConfigError
from batcher.uploadargs import ARCHIVE_STORAGE_CLASSES, combined, parse_args, parse_partition_args, partition_targets

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
VERIFY_MODES = ("auto", "always", "never")
CONFIG_MODULE_VARIABLE = "S3BATCH_CELERY_CONFIG"
MODULE_PREFIX = "s3batch_"

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
    upload_retry_s: float = 600.0
    """How long a batch's uploads may keep failing for a transient reason before its callers hear FAILURE."""
    result_expires_s: float = 7 * 24 * 3600.0
    """How long results (the refs) stay in the result backend: long enough for a producer to store them."""
    no_worker_timeout_s: float = 60.0
    """How long s3batch's own waits let a queue go unconsumed before they raise NoWorkerError."""
    buckets: str = ""
    """Comma-separated glob patterns of the buckets a producer may name per call; empty: the default bucket."""
    lanes: int = 1
    """Staging lanes per partition, each its own Redis Cluster hash tag: flushed independently."""
    redis_sentinel_master: str | None = None
    """The Sentinel master's name, when S3BATCH_REDIS_URL lists sentinels (sentinel://...)."""
    staging_replicas: int = 0
    """STAGED only once Redis WAIT confirms this many replicas hold the object."""
    upload_args: str = "{}"
    """boto3 PutObject arguments for every batch, as canonical JSON (batcher.uploadargs)."""
    partition_upload_args: str = "{}"
    """More of them per bucket, or bucket and prefix ("bucket/prefix/"), as canonical JSON; they win."""
    upload_checksum: str = "CRC64NVME"
    """The S3 checksum every upload carries (batcher.checksums); NONE for servers that refuse checksums."""
    verify_uploads: str = "auto"
    """Read each batch back after its upload: auto (where the server does not verify checksums), always, never."""

    def __post_init__(self) -> None:
        for variable in _VARIABLES:
            if variable.positive:
                _check_positive(variable.name, getattr(self, variable.attr))
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
        if self.lanes > 4096:
            raise ConfigError(f"S3BATCH_LANES={self.lanes} is above 4096 lanes per partition")
        if self.staging_replicas < 0:
            raise ConfigError(f"S3BATCH_STAGING_REPLICAS={self.staging_replicas} must be 0 or more")
        # Set directly (not through from_env), these are checked and made canonical here too.
        object.__setattr__(self, "upload_args", parse_args(self.upload_args, "S3BATCH_UPLOAD_ARGS"))
        partition_args = parse_partition_args(self.partition_upload_args, "S3BATCH_PARTITION_UPLOAD_ARGS")
        object.__setattr__(self, "partition_upload_args", partition_args)
        for name, value, choices in (
            ("S3BATCH_UPLOAD_CHECKSUM", self.upload_checksum, ALGORITHMS),
            ("S3BATCH_VERIFY_UPLOADS", self.verify_uploads, VERIFY_MODES),
        ):
            if value not in choices:
                raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")
        self._check_upload_args(self.bucket or "", self.prefix)  # the default partition's must go together
        for target in partition_targets(self.partition_upload_args):
            bucket = target.split("/", 1)[0]
            if self.bucket_patterns and not self.allows_bucket(bucket):
                raise ConfigError(
                    f"S3BATCH_PARTITION_UPLOAD_ARGS names {target!r}, but S3BATCH_BUCKETS="
                    f"{','.join(self.bucket_patterns)!r} does not allow bucket {bucket!r}: fix the name or allow it"
                )
            prefix = target[len(bucket) + 1 :] if "/" in target else self.prefix
            self._check_upload_args(bucket, prefix)
        if self.redis_url.startswith("sentinel://") and not self.redis_sentinel_master:
            raise ConfigError(
                f"S3BATCH_REDIS_URL={self.redis_url!r} lists sentinels: set S3BATCH_REDIS_SENTINEL_MASTER to the name "
                "of the master they watch"
            )

    @property
    def bucket_patterns(self) -> list[str]:
        """The glob patterns of S3BATCH_BUCKETS, or the default bucket alone when it is empty."""
        patterns = [p.strip() for p in self.buckets.split(",") if p.strip()]
        return patterns or ([self.bucket] if self.bucket else [])

    def upload_args_for(self, bucket: str, prefix: str) -> dict[str, Any]:
        """The upload arguments of the partition ``bucket``/``prefix`` (batcher.uploadargs.combined)."""
        return combined(self.upload_args, self.partition_upload_args, bucket, prefix)

    def _check_upload_args(self, bucket: str, prefix: str) -> None:
        """ConfigError when a partition's upload arguments are a combination S3 refuses, or ask for a read-back
        that their storage class makes impossible."""
        storage_class = self.upload_args_for(bucket, prefix).get("StorageClass")
        if self.verify_uploads == "always" and storage_class in ARCHIVE_STORAGE_CLASSES:
            raise ConfigError(
                f"S3BATCH_VERIFY_UPLOADS=always reads every batch back, which S3 refuses for StorageClass "
                f"{storage_class} (S3BATCH_UPLOAD_ARGS or S3BATCH_PARTITION_UPLOAD_ARGS, s3://{bucket}/{prefix}) "
                "until it is restored: use auto (S3 itself verifies the checksum every upload carries) or a storage "
                "class that can be read at once"
            )

    def allows_bucket(self, bucket: str) -> bool:
        """Whether producers may send objects to ``bucket`` (S3BATCH_BUCKETS)."""
        return any(fnmatch.fnmatchcase(bucket, pattern) for pattern in self.bucket_patterns)

    @property
    def flush_interval_s(self) -> float:
        """Seconds between beat's flush ticks: a tenth of the batch age, between 0.2 and 1 s."""
        return min(1.0, max(0.2, self.max_batch_age_s / 10))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The S3BATCH_* variables, then the ``s3batch_<field>`` values of the S3BATCH_CELERY_CONFIG module.

        Raises ConfigError naming the variable or module setting that is wrong.
        """
        env = os.environ if environ is None else environ
        for old, new in _REPLACED.items():
            if (env.get(old) or "").strip():
                raise ConfigError(f"{old} was replaced by {new}; set that one instead (README: configuration)")
        values: dict[str, Any] = {}
        for variable in _VARIABLES:
            raw = env.get(variable.name)
            if raw is not None and raw.strip() != "":
                values[variable.attr] = variable.parse(raw.strip(), variable.name)
        module_name = (env.get(CONFIG_MODULE_VARIABLE) or "").strip()
        if module_name:
            values.update(_module_values(module_name, load_config_module(module_name)))
        return cls(**values)

    def require_bucket(self) -> str:
        """The bucket, or ConfigError telling how to set it (workers need one)."""
        if not self.bucket:
            raise ConfigError("S3BATCH_BUCKET is not set: workers need the bucket that receives the batches")
        return self.bucket


def load_config_module(name: str) -> dict[str, Any]:
    """The public lowercase settings of the configuration module ``name``; ConfigError if it cannot be imported."""
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # any failure while importing a user's module is a configuration problem
        raise ConfigError(f"{CONFIG_MODULE_VARIABLE}={name!r} cannot be imported: {exc!r}") from exc
    return {key: value for key, value in vars(module).items() if key.islower() and not key.startswith("_")}


def _module_values(module_name: str, module: Mapping[str, Any]) -> dict[str, Any]:
    by_setting = {f"{MODULE_PREFIX}{variable.attr}": variable for variable in _VARIABLES}
    values: dict[str, Any] = {}
    for setting, value in module.items():
        if not setting.startswith(MODULE_PREFIX):
            continue
        variable = by_setting.get(setting)
        if variable is None:
            close = difflib.get_close_matches(setting, by_setting, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f"; known: {', '.join(sorted(by_setting))}"
            raise ConfigError(f"{setting} in {CONFIG_MODULE_VARIABLE}={module_name!r} is not an s3batch setting{hint}")
        where = f"{setting} in {CONFIG_MODULE_VARIABLE}={module_name!r}"
        values[variable.attr] = variable.parse(value, where)
    return values


def _integer(value: object, where: str) -> int:
    """A whole number from text (``64_000_000`` allowed) or an int; ConfigError naming ``where``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip().replace("_", ""))
        except ValueError:
            pass
    raise ConfigError(f"{where}={value!r} is not a valid integer")


def _seconds(value: object, where: str) -> float:
    """A number of seconds from text or a number; ConfigError naming ``where``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"{where}={value!r} is not a valid number of seconds")


def _text(value: object, where: str) -> str:
    if isinstance(value, str):
        return value
    raise ConfigError(f"{where}={value!r} must be a string")


def _choice(*choices: str) -> Callable[[object, str], str]:
    """A parser of one of ``choices`` (any case); ConfigError listing them."""

    def parse(value: object, where: str) -> str:
        for choice in choices:
            if isinstance(value, str) and value.strip().upper() == choice.upper():
                return choice
        raise ConfigError(f"{where}={value!r} must be one of {', '.join(choices)}")

    return parse


@dataclass(frozen=True)
class _Variable:
    name: str
    attr: str
    parse: Callable[[object, str], Any]
    positive: bool = True


_VARIABLES = (
    _Variable("S3BATCH_BUCKET", "bucket", _text, positive=False),
    _Variable("S3BATCH_PREFIX", "prefix", _text, positive=False),
    _Variable("S3BATCH_REDIS_URL", "redis_url", _text, positive=False),
    _Variable("S3BATCH_MAX_BATCH_AGE", "max_batch_age_s", _seconds),
    _Variable("S3BATCH_MAX_BATCH_BYTES", "max_batch_bytes", _integer),
    _Variable("S3BATCH_MAX_BATCH_OBJECTS", "max_batch_objects", _integer),
    _Variable("S3BATCH_MAX_OBJECT_BYTES", "max_object_bytes", _integer),
    _Variable("S3BATCH_MAX_STAGED_BYTES", "max_staged_bytes", _integer),
    _Variable("S3BATCH_LEASE_SECONDS", "lease_s", _seconds),
    _Variable("S3BATCH_UPLOAD_RETRY_SECONDS", "upload_retry_s", _seconds),
    _Variable("S3BATCH_RESULT_EXPIRES", "result_expires_s", _seconds),
    _Variable("S3BATCH_NO_WORKER_TIMEOUT", "no_worker_timeout_s", _seconds),
    _Variable("S3BATCH_BUCKETS", "buckets", _text, positive=False),
    _Variable("S3BATCH_LANES", "lanes", _integer),
    _Variable("S3BATCH_REDIS_SENTINEL_MASTER", "redis_sentinel_master", _text, positive=False),
    _Variable("S3BATCH_STAGING_REPLICAS", "staging_replicas", _integer, positive=False),
    _Variable("S3BATCH_UPLOAD_ARGS", "upload_args", parse_args, positive=False),
    _Variable("S3BATCH_PARTITION_UPLOAD_ARGS", "partition_upload_args", parse_partition_args, positive=False),
    _Variable("S3BATCH_UPLOAD_CHECKSUM", "upload_checksum", _choice(*ALGORITHMS), positive=False),
    _Variable("S3BATCH_VERIFY_UPLOADS", "verify_uploads", _choice(*VERIFY_MODES), positive=False),
)
assert {variable.attr for variable in _VARIABLES} == {f.name for f in fields(Settings)}

_REPLACED = {
    "S3BATCH_UPLOAD_ATTEMPTS": "S3BATCH_UPLOAD_RETRY_SECONDS, a retry budget in seconds (default 600)",
}

VARIABLES: dict[str, str] = {variable.name: variable.attr for variable in _VARIABLES}
"""Each S3BATCH_* variable and the Settings field it sets."""


def to_env(settings: Settings) -> dict[str, str]:
    """The S3BATCH_* variables that make another process load ``settings`` (for worker subprocesses)."""
    return {name: str(getattr(settings, attr) or "") for name, attr in VARIABLES.items()}


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name}={value} must be greater than zero")
