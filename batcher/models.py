"""Plain data passed between the stages: staged objects, claimed batches, refs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from batcher.errors import InvalidRefError

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class StagedObject:
    """One object as staging holds it; ``record_id`` names the result it will get (workers use the task id)."""

    record_id: str
    object_key: str
    body: bytes
    staged_ms: int
    sha256: str
    content_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    context: str | None = None
    """Opaque to the library: what the result writer needs to answer this record (Celery callbacks)."""
    size: int = -1
    """The body's length; given where the body is not (a head read from staging), else taken from ``body``."""

    def __post_init__(self) -> None:
        if self.size < 0:
            object.__setattr__(self, "size", len(self.body))


@dataclass(frozen=True)
class ClaimedBatch:
    """A batch taken from the queue under a lease; ``token`` fences the lease holder."""

    batch_id: str
    s3_key: str
    created_ms: int
    token: str
    objects: int
    size_bytes: int
    state: str = "claimed"
    epoch: str = ""
    """The epoch of the staged data its objects belong to (Keys.epoch)."""
    lane: str = "0"
    """The staging lane it was claimed from."""


@dataclass(frozen=True)
class BatchRef:
    """Where one object landed: read ``size`` bytes at ``offset`` of the tar ``key`` in ``bucket``."""

    bucket: str
    key: str
    offset: int
    size: int
    object_key: str
    batch_id: str
    etag: str
    sha256: str

    def __post_init__(self) -> None:
        for name in ("bucket", "key", "object_key", "batch_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InvalidRefError(f"BatchRef.{name} must be a non-empty string, got {value!r}")
        for name in ("offset", "size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidRefError(f"BatchRef.{name} must be an integer >= 0, got {value!r}")
        if not isinstance(self.etag, str):
            raise InvalidRefError(f"BatchRef.etag must be a string, got {self.etag!r}")
        if not isinstance(self.sha256, str) or not _SHA256_HEX.match(self.sha256):
            raise InvalidRefError(f"BatchRef.sha256 must be 64 lowercase hex digits, got {self.sha256!r}")

    @property
    def range(self) -> str:
        """The HTTP Range header value for the object's bytes; empty for an empty object."""
        if self.size == 0:
            return ""
        return f"bytes={self.offset}-{self.offset + self.size - 1}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe result dict that ``AsyncResult.get()`` returns (see DESIGN.md)."""
        return {
            "bucket": self.bucket,
            "key": self.key,
            "offset": self.offset,
            "size": self.size,
            "range": self.range,
            "object_key": self.object_key,
            "batch_id": self.batch_id,
            "etag": self.etag,
            "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchRef:
        """Rebuild a ref from a result dict; raises InvalidRefError naming what is wrong."""
        if not isinstance(data, Mapping):
            raise InvalidRefError(f"a BatchRef is built from a dict, got {type(data).__name__}")
        missing = [name for name in _REF_FIELDS if name not in data]
        if missing:
            raise InvalidRefError(f"result dict lacks {', '.join(missing)}: is it an s3batch put_object result?")
        ref = cls(**{name: data[name] for name in _REF_FIELDS})
        given_range = data.get("range")
        if given_range and given_range != ref.range:
            raise InvalidRefError(f"range {given_range!r} disagrees with offset/size ({ref.range!r})")
        return ref


_REF_FIELDS = ("bucket", "key", "offset", "size", "object_key", "batch_id", "etag", "sha256")
