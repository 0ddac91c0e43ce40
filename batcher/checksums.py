"""The S3 checksum every upload carries, so that the server verifies the bytes it stores.

S3 verifies a checksum sent with PutObject, and with a multipart upload either a full-object one (CRC32,
CRC32C, CRC64NVME: the CRC of the whole object, computed from the parts) or a composite one (SHA1, SHA256:
a digest of the parts' digests, "...-N"). S3BATCH_UPLOAD_CHECKSUM chooses the algorithm (CRC64NVME by
default, S3's own default); the tar's value is computed while the tar is written, kept in the batch's S3
metadata (``s3batch-checksum``) and compared with what the server answers. CRCs come from awscrt (the AWS
common runtime, which boto3[crt] installs), hardware-accelerated; digests from hashlib.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from awscrt import checksums as crt  # type: ignore[import-untyped]  # awscrt ships no type hints

ALGORITHMS = ("CRC64NVME", "CRC32C", "CRC32", "SHA256", "SHA1", "NONE")
FULL_OBJECT = ("CRC64NVME", "CRC32C", "CRC32")  # one value for the whole object, also for multipart uploads
METADATA = "s3batch-checksum"  # "<ALGORITHM>:<base64>" of the whole tar

_CRC: dict[str, tuple[Callable[[bytes, int], int], int]] = {
    "CRC64NVME": (crt.crc64nvme, 8),
    "CRC32C": (crt.crc32c, 4),
    "CRC32": (crt.crc32, 4),
}
_DIGESTS = {"SHA256": hashlib.sha256, "SHA1": hashlib.sha1}


class Checksum:
    """A running checksum of ``algorithm`` over the bytes given to ``update``; ``value`` is S3's base64 form."""

    def __init__(self, algorithm: str) -> None:
        if algorithm not in ALGORITHMS or algorithm == "NONE":
            raise ValueError(f"no checksum algorithm {algorithm!r}")
        self.algorithm = algorithm
        self._crc = 0
        self._digest = _DIGESTS[algorithm]() if algorithm in _DIGESTS else None

    def update(self, data: bytes | memoryview) -> None:
        if self._digest is not None:
            self._digest.update(data)
        else:
            self._crc = _CRC[self.algorithm][0](bytes(data), self._crc)

    def raw(self) -> bytes:
        if self._digest is not None:
            return self._digest.digest()
        return self._crc.to_bytes(_CRC[self.algorithm][1], "big")

    @property
    def value(self) -> str:
        return base64.b64encode(self.raw()).decode()


def of(algorithm: str, data: bytes | memoryview) -> Checksum:
    """The checksum of ``data`` alone."""
    checksum = Checksum(algorithm)
    checksum.update(data)
    return checksum


def from_hex(digest: str) -> str:
    """A hex digest (hashlib's form) in S3's base64 form."""
    return base64.b64encode(bytes.fromhex(digest)).decode()


def composite(algorithm: str, parts: list[Checksum]) -> str:
    """S3's composite checksum of a multipart upload: the digest of the parts' digests, then ``-<parts>``."""
    return f"{of(algorithm, b''.join(part.raw() for part in parts)).value}-{len(parts)}"


@dataclass(frozen=True)
class Stored:
    """A batch's checksum as its S3 metadata gives it."""

    algorithm: str
    value: str

    def encode(self) -> str:
        return f"{self.algorithm}:{self.value}"

    @classmethod
    def decode(cls, text: str | None) -> Stored | None:
        """The checksum in metadata ``text``, None when absent or not s3batch's form."""
        if not text or ":" not in text:
            return None
        algorithm, value = text.split(":", 1)
        return cls(algorithm, value) if algorithm in ALGORITHMS and algorithm != "NONE" else None
