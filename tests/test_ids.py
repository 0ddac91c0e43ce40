"""Batch ids: ULIDs, monotonic within a process."""

from __future__ import annotations

from batcher.ids import new_batch_id


def test_ids_of_one_millisecond_sort_in_creation_order() -> None:
    ids = [new_batch_id(1_700_000_000_000) for _ in range(1000)]
    assert ids == sorted(ids) and len(set(ids)) == 1000
    assert all(len(i) == 26 and i[:10] == ids[0][:10] for i in ids)  # the time part is the millisecond's


def test_ids_sort_by_time() -> None:
    assert new_batch_id(1_700_000_000_001) < new_batch_id(1_700_000_000_002) < new_batch_id(1_800_000_000_000)
