"""What one scenario run measured, in the units the figures are computed from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    """Objects and payload bytes moved in ``seconds`` (first send to last result), PutObject calls used."""

    objects: int
    payload_bytes: int
    seconds: float
    put_calls: int | None = None
    verified: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def objects_per_s(self) -> float:
        return self.objects / self.seconds

    @property
    def mb_per_s(self) -> float:
        """Payload megabytes (10^6 bytes) per second."""
        return self.payload_bytes / 1e6 / self.seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "payload_bytes": self.payload_bytes,
            "seconds": round(self.seconds, 4),
            "objects_per_s": round(self.objects_per_s, 1),
            "mb_per_s": round(self.mb_per_s, 3),
            "put_calls": self.put_calls,
            "verified_ranged_gets": self.verified,
            **self.details,
        }
