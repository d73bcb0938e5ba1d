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
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from ..errors import CorruptionError
from ..hashing import array_digest_prefix, blob_digest
from ..storage.base import Payload

__all__ = [
    "DATA_FOLDER",
    "Decoded",
    "decode_batch",
    "decode_sample",
    "encode_rows",
    "encode_sample",
]

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
        raise _mismatch(digest, where)
    return kind, payload


def _mismatch(digest: bytes, where: str) -> CorruptionError:
    return CorruptionError(
        f"sample {digest.hex()[:16]} in {where} does not hash to its digest; the remote is "
        "damaged: run `repo.verify_remote()` and push the data again from a complete copy",
        path=where,
    )


@dataclass
class Decoded:
    """Checked samples of one batch: arrays stacked by dtype and shape, the rest one by one.

    Attributes
    ----------
    stacked:
        ``(positions in the batch, stacked array)`` per dtype and shape.
    single:
        ``(position, kind, payload)`` of every other sample.
    """

    stacked: list[tuple[list[int], np.ndarray]] = field(default_factory=list)
    single: list[tuple[int, str, Payload]] = field(default_factory=list)


def decode_batch(entries: Sequence[bytes | None], digests: Sequence[bytes], where: str) -> Decoded:
    """Check each entry against its digest (CorruptionError naming ``where`` if one fails or
    is missing) and decode them, arrays of one dtype and shape into one stacked array."""
    heads: dict[bytes, tuple[np.dtype, tuple[int, ...], Any, int]] = {}
    bodies: dict[bytes, tuple[list[int], list[memoryview]]] = {}
    out = Decoded()
    for i, (entry, digest) in enumerate(zip(entries, digests, strict=True)):
        if entry is None:
            raise CorruptionError(
                f"sample {digest.hex()[:16]} is missing from {where}, though history refers "
                "to it; push the data again from a complete copy",
                path=where,
            )
        if not entry or entry[0] != 0:
            out.single.append((i, *decode_sample(entry, digest, where)))
            continue
        try:
            n = entry[1]
            size = 3 + n + 8 * entry[2 + n]
        except IndexError:
            size = len(entry) + 1
        head = entry[:size]
        info = heads.get(head)
        if info is None:
            _, payload = decode_sample(entry, digest, where)  # checks it, or raises
            arr = np.asarray(payload)
            h = _prefix(arr.dtype.str, arr.shape)
            info = heads[head] = (arr.dtype, arr.shape, h, arr.nbytes)
        dtype, shape, prefix, nbytes = info
        body = memoryview(entry)[size:]
        h = prefix.copy()
        h.update(body)
        if len(body) != nbytes or h.digest() != digest:
            raise _mismatch(digest, where)
        positions, views = bodies.setdefault(head, ([], []))
        positions.append(i)
        views.append(body)
    for head, (positions, views) in bodies.items():
        dtype, shape, _, _ = heads[head]
        stacked = np.frombuffer(b"".join(views), dtype).reshape((len(positions), *shape))
        out.stacked.append((positions, stacked))
    return out
