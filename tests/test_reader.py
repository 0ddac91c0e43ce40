"""BatchReader against moto's S3 server: one ranged GET per object, specific errors."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from batcher import BatchReader, BatchRef
from batcher.errors import BatchNotFoundError, ChecksumMismatchError, InvalidRefError
from batcher.tarwriter import build_tar
from batcher.uploader import Uploader
from tests.factories import staged
from tests.support import Stack


def upload(stack: Stack, key: str, bodies: list[bytes]) -> list[BatchRef]:
    objs = [staged(f"o{i}", body) for i, body in enumerate(bodies)]
    with build_tar([o.object_key for o in objs], objs) as tar:
        etag = Uploader(stack.s3).upload(stack.settings.bucket or "", key, tar)
    return [
        BatchRef(stack.settings.bucket or "", key, m.offset, m.size, m.object_key, "B1", etag, m.sha256)
        for m in tar.members
    ]


def counting(client: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    client.meta.events.register("before-send.s3", lambda request, **_: sent.append(dict(request.headers)))
    return sent


def test_get_is_one_ranged_get(stack: Stack) -> None:
    refs = upload(stack, "r/1.tar", [b"alpha", b"", b"gamma" * 1000])
    sent = counting(stack.s3)
    reader = BatchReader(stack.s3)
    assert reader.get(refs[0]) == b"alpha"
    assert len(sent) == 1 and sent[0]["Range"] == refs[0].range.encode()
    assert reader.get(refs[1]) == b""
    assert len(sent) == 1  # an empty object needs no request
    assert reader.get(refs[2]) == b"gamma" * 1000


def test_missing_batch(stack: Stack) -> None:
    (ref,) = upload(stack, "r/2.tar", [b"x"])
    with pytest.raises(BatchNotFoundError, match="does not exist"):
        BatchReader(stack.s3).get(replace(ref, key="r/none.tar"))
    with pytest.raises(BatchNotFoundError):
        BatchReader(stack.s3).get(replace(ref, bucket="no-such-bucket-s3batch"))


def test_corrupted_byte_is_detected(stack: Stack) -> None:
    (ref,) = upload(stack, "r/3.tar", [b"precious bytes"])
    data = bytearray(stack.tar_bytes("r/3.tar"))
    data[ref.offset + 3] ^= 0xFF
    stack.s3.put_object(Bucket=ref.bucket, Key=ref.key, Body=bytes(data))
    with pytest.raises(ChecksumMismatchError, match="does not match its sha256"):
        BatchReader(stack.s3).get(ref)
    assert BatchReader(stack.s3).get(ref, verify=False) != b"precious bytes"


def test_bad_refs(stack: Stack) -> None:
    with pytest.raises(InvalidRefError):
        BatchReader(stack.s3).get({"bucket": "b"})  # type: ignore[arg-type]
    (ref,) = upload(stack, "r/4.tar", [b"x"])
    with pytest.raises(InvalidRefError, match="outside"):
        BatchReader(stack.s3).get(replace(ref, offset=10**9))
