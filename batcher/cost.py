"""Request cost arithmetic: one PutObject per object versus one per batch (S3 Standard list prices)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from batcher.tarwriter import BLOCK, RECORD
from batcher.uploader import upload_requests

PUT_USD_PER_1000 = 0.005
STORAGE_USD_PER_GB_MONTH = 0.023


@dataclass(frozen=True)
class CostRow:
    """What storing ``objects`` objects of ``size`` bytes costs with batches of ``batch_objects``."""

    batch_objects: int
    batches: int
    put_requests: int
    put_usd: float
    stored_bytes: int
    storage_usd_month: float


def tar_bytes(objects: int, size: int) -> int:
    """Bytes of a batch tar of ``objects`` objects of ``size`` bytes with short ASCII names, without the index.

    Each member is a pax header and its record (the s3batch comment), a ustar header, and the data padded.
    """
    data = objects * (3 * BLOCK + math.ceil(size / BLOCK) * BLOCK)
    return math.ceil((data + 2 * BLOCK) / RECORD) * RECORD


def plan(objects: int, size: int, batch_objects: int) -> CostRow:
    """The cost row for one batch size; ``batch_objects=1`` is the naive one-PutObject-per-object path."""
    if batch_objects == 1:
        puts, stored, batches = objects, objects * size, objects
    else:
        batches = math.ceil(objects / batch_objects)
        full, rest = divmod(objects, batch_objects)
        stored = full * tar_bytes(batch_objects, size) + (tar_bytes(rest, size) if rest else 0)
        puts = batches * upload_requests(tar_bytes(batch_objects, size))
    return CostRow(
        batch_objects=batch_objects,
        batches=batches,
        put_requests=puts,
        put_usd=puts * PUT_USD_PER_1000 / 1000,
        stored_bytes=stored,
        storage_usd_month=stored / 1e9 * STORAGE_USD_PER_GB_MONTH,
    )


def cost_table(objects: int, size: int, batch_sizes: tuple[int, ...] = (1, 100, 1000, 10_000)) -> list[CostRow]:
    """Rows for the naive path and several batch sizes."""
    return [plan(objects, size, n) for n in batch_sizes]
