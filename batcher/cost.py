"""Request and storage cost arithmetic: one PutObject per object versus one per batch, in any storage class.

Prices are S3's us-east-1 list prices (2025) per storage class: PUT-class requests, storage per GB-month with
the class's minimum billable object size and per-object archive overhead, and the lifecycle transition into
the class (per object transitioned: a batch is one object, so batching cuts transitions as it cuts PUTs). They
change rarely; check https://aws.amazon.com/s3/pricing/ before quoting them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from batcher.tarwriter import BLOCK, RECORD
from batcher.uploader import upload_requests

KIB = 1024


@dataclass(frozen=True)
class StorageClassPrice:
    """What S3 charges in one storage class.

    ``min_billable_bytes``: each object is billed as at least this size (128 KiB for the IA classes and
    Glacier Instant Retrieval). ``overhead_bytes`` and ``overhead_standard_bytes``: per-object index data of
    the archive classes, billed at the class's rate and at Standard's. ``transition_usd_per_1000``: lifecycle
    transitions into the class (None for Standard). ``min_days``: the minimum storage duration billed.
    """

    put_usd_per_1000: float
    storage_usd_per_gb_month: float
    transition_usd_per_1000: float | None = None
    min_billable_bytes: int = 0
    overhead_bytes: int = 0
    overhead_standard_bytes: int = 0
    min_days: int = 0


PRICES: dict[str, StorageClassPrice] = {
    "STANDARD": StorageClassPrice(0.005, 0.023),
    # objects under 128 KiB are not monitored and stay in the frequent-access tier (Standard's price)
    "INTELLIGENT_TIERING": StorageClassPrice(0.005, 0.023, transition_usd_per_1000=0.01),
    "STANDARD_IA": StorageClassPrice(0.01, 0.0125, 0.01, min_billable_bytes=128 * KIB, min_days=30),
    "ONEZONE_IA": StorageClassPrice(0.01, 0.01, 0.01, min_billable_bytes=128 * KIB, min_days=30),
    "GLACIER_IR": StorageClassPrice(0.02, 0.004, 0.02, min_billable_bytes=128 * KIB, min_days=90),
    "GLACIER": StorageClassPrice(0.03, 0.0036, 0.03, overhead_bytes=32 * KIB, overhead_standard_bytes=8 * KIB,
                                 min_days=90),
    "DEEP_ARCHIVE": StorageClassPrice(0.05, 0.00099, 0.05, overhead_bytes=32 * KIB, overhead_standard_bytes=8 * KIB,
                                      min_days=180),
}  # fmt: skip
PUT_USD_PER_1000 = PRICES["STANDARD"].put_usd_per_1000
STORAGE_USD_PER_GB_MONTH = PRICES["STANDARD"].storage_usd_per_gb_month


@dataclass(frozen=True)
class CostRow:
    """What storing ``objects`` objects of ``size`` bytes costs with batches of ``batch_objects`` in
    ``storage_class``: PUT requests, stored and billed bytes, storage per month, and the one-time cost of a
    lifecycle rule moving them from Standard into the class (None for Standard)."""

    batch_objects: int
    batches: int
    put_requests: int
    put_usd: float
    stored_bytes: int
    storage_usd_month: float
    storage_class: str = "STANDARD"
    billed_bytes: int = 0
    transition_usd: float | None = None


def tar_bytes(objects: int, size: int) -> int:
    """Bytes of a batch tar of ``objects`` objects of ``size`` bytes with short ASCII names, without the index.

    Each member is a pax header and its record (the s3batch comment), a ustar header, and the data padded.
    """
    data = objects * (3 * BLOCK + math.ceil(size / BLOCK) * BLOCK)
    return math.ceil((data + 2 * BLOCK) / RECORD) * RECORD


def plan(objects: int, size: int, batch_objects: int, storage_class: str = "STANDARD") -> CostRow:
    """The cost row for one batch size; ``batch_objects=1`` is the naive one-PutObject-per-object path."""
    price = PRICES[storage_class]
    if batch_objects == 1:
        puts, batches = objects, objects
        sizes = [(size, objects)]
    else:
        batches = math.ceil(objects / batch_objects)
        full, rest = divmod(objects, batch_objects)
        sizes = [(tar_bytes(batch_objects, size), full)] + ([(tar_bytes(rest, size), 1)] if rest else [])
        puts = batches * upload_requests(tar_bytes(batch_objects, size))
    stored = sum(each * count for each, count in sizes)
    billed = sum((max(each, price.min_billable_bytes) + price.overhead_bytes) * count for each, count in sizes)
    storage_usd = billed / 1e9 * price.storage_usd_per_gb_month
    storage_usd += batches * price.overhead_standard_bytes / 1e9 * STORAGE_USD_PER_GB_MONTH
    transitions = price.transition_usd_per_1000
    return CostRow(
        batch_objects=batch_objects,
        batches=batches,
        put_requests=puts,
        put_usd=puts * price.put_usd_per_1000 / 1000,
        stored_bytes=stored,
        storage_usd_month=storage_usd,
        storage_class=storage_class,
        billed_bytes=billed + batches * price.overhead_standard_bytes,
        transition_usd=None if transitions is None else batches * transitions / 1000,
    )


def cost_table(
    objects: int, size: int, batch_sizes: tuple[int, ...] = (1, 100, 1000, 10_000), storage_class: str = "STANDARD"
) -> list[CostRow]:
    """Rows for the naive path and several batch sizes."""
    return [plan(objects, size, n, storage_class) for n in batch_sizes]
