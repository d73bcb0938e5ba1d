"""Sample bytes on a remote: self-describing entries in the packs of ``data/``.

An entry is named by the sample's content digest and holds what is needed to
check it against that digest and to store it again: its kind, and for arrays
the dtype and shape, then the bytes. Nothing fetched is stored or returned
before it hashes to its name.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from ..errors import CorruptionError
from ..hashing import array_digest_prefix, blob_digest
from ..storage.base import Payload

__all__ = ["DATA_FOLDER", "decode_many", "decode_sample", "encode_rows", "encode_sample"]

DATA_FOLDER = "data"
_KINDS = ("ndarray", "str", "bytes")


def _array_head(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    name = dtype.str.encode()
    return struct.pack(f"<BB{len(name)}sB{len(shape)}Q", 0, len(name), name, len(shape), *shape)


def encode_sample(kind: str, payload: Payload) -> bytes:
    """The pack entry of one stored sample (``payload`` as the backend returns it)."""
    if kind == "ndarray":
        arr = np.asarray(payload)
        if not arr.flags.c_contiguous:  # (np.ascontiguousarray would make a 0-d array 1-d)
            arr = arr.copy(order="C")
        return _array_head(arr.dtype, arr.shape) + arr.tobytes()
    return bytes([_KINDS.index(kind)]) + bytes(payload)


def encode_rows(stacked: np.ndarray) -> list[bytes]:
    """The pack entries of equal-shape array samples stacked along the first axis."""
    head = _array_head(stacked.dtype, stacked.shape[1:])
    raw = np.ascontiguousarray(stacked).tobytes()
    step = len(raw) // len(stacked) if len(stacked) else 0
    return (
        [head + raw[i : i + step] for i in range(0, len(raw), step)]
        if step
        else [head for _ in range(len(stacked))]
    )


@lru_cache(maxsize=1024)
def _prefix(dtype: str, shape: tuple[int, ...]) -> hashlib.blake2b:
    return array_digest_prefix(np.dtype(dtype), shape)


def decode_sample(entry: bytes, digest: bytes, where: str) -> tuple[str, Payload]:
    """``(kind, payload)`` of an entry, once it hashes to ``digest``; else CorruptionError."""
    try:
        kind = _KINDS[entry[0]]
        if kind == "ndarray":
            n = entry[1]
            dtype = np.dtype(entry[2 : 2 + n].decode())
            ndim = entry[2 + n]
            shape = struct.unpack_from(f"<{ndim}Q", entry, 3 + n)
            body = memoryview(entry)[3 + n + 8 * ndim :]
            h = _prefix(dtype.str, shape).copy()
            h.update(body)
            ok = h.digest() == digest
            payload: Payload = np.frombuffer(body, dtype).reshape(shape) if ok else b""
        else:
            payload = bytes(entry[1:])
            ok = blob_digest(kind, payload) == digest
    except (IndexError, ValueError, TypeError, struct.error):
        ok = False
        kind = ""
        payload = b""
    if not ok:
        raise CorruptionError(
            f"sample {digest.hex()[:16]} in {where} does not hash to its digest; the remote is "
            "damaged: run `repo.verify_remote()` and push the data again from a complete copy",
            path=where,
        )
    return kind, payload


def decode_many(
    entries: Sequence[bytes | None], digests: Sequence[bytes], where: str
) -> list[tuple[str, Payload]]:
    """:func:`decode_sample` of each entry; a missing one raises CorruptionError."""
    out = []
    for entry, digest in zip(entries, digests, strict=True):
        if entry is None:
            raise CorruptionError(
                f"sample {digest.hex()[:16]} is missing from {where}, though history refers "
                "to it; push the data again from a complete copy",
                path=where,
            )
        out.append(decode_sample(entry, digest, where))
    return out
