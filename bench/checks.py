"""Correctness checks every s3batch run passes before its figures count: exact bytes back, exact tar count."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from bench.buckets import listing


class BenchError(RuntimeError):
    """Raised when a benchmark run is wrong (lost objects, wrong bytes), which aborts the suite."""


def verify_sample(
    client: Any, refs: Sequence[Any], keys: Sequence[str], bodies: Sequence[bytes], sample: int, what: str
) -> int:
    """Ranged GET of ``sample`` random refs; raises BenchError unless each returns exactly the bytes sent.

    Returns the number of objects read back.
    """
    if len(refs) != len(keys):
        raise BenchError(f"{what}: {len(refs)} results for {len(keys)} objects sent")
    picked = random.Random(len(refs)).sample(range(len(refs)), min(sample, len(refs)))
    for i in picked:
        ref = refs[i]
        if not isinstance(ref, dict) or ref.get("object_key") != keys[i]:
            raise BenchError(f"{what}: result {i} is {ref!r}, not the ref of {keys[i]!r}")
        got = client.get_object(Bucket=ref["bucket"], Key=ref["key"], Range=ref["range"])["Body"].read()
        if got != bodies[i]:
            raise BenchError(
                f"{what}: a ranged GET {ref['range']} of s3://{ref['bucket']}/{ref['key']} returned "
                f"{len(got)} bytes that are not the {len(bodies[i])} bytes sent as {keys[i]!r}"
            )
    return len(picked)


def tars_of_run(client: Any, bucket: str, refs: Sequence[Any], what: str, multipart_threshold: int) -> dict[str, int]:
    """The tars a run wrote (the bucket is emptied after each run), checked against the refs' keys.

    Raises BenchError when the bucket holds other tars than the refs name, or a tar that needed a multipart
    upload (then it was more than one PutObject).
    """
    tars = listing(client, bucket)
    named = {ref["key"] for ref in refs}
    if named != set(tars):
        raise BenchError(
            f"{what}: the results name {len(named)} tars but the bucket holds {len(tars)} "
            f"(e.g. {sorted(named ^ set(tars))[:3]})"
        )
    big = [key for key, size in tars.items() if size >= multipart_threshold]
    if big:
        raise BenchError(f"{what}: {len(big)} tars are multipart uploads (more than one PutObject each)")
    return tars
