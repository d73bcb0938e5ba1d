"""Sample bytes on a remote: self-describing entries in the packs of ``data/``.

An entry is named by the sample's content digest and holds what is needed to
check it against that digest and to store it again: its kind, and for arrays
the dtype and shape, then the bytes. Nothing fetched is stored or returned
before it hashes to its name.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Sequence
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
    "array_head",
    "blob_kind",
    "check_entries",
    "decode_batch",
    "decode_sample",
    "encode_rows",
    "encode_sample",
    "entry_value",
]

DATA_FOLDER = "data"
_KINDS = ("ndarray", "str", "bytes")


def array_head(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The head of every entry of an array of ``dtype`` and ``shape``."""
    name = dtype.str.encode()
    return struct.pack(f"<BB{len(name)}sB{len(shape)}Q", 0, len(name), name, len(shape), *shape)


def encode_sample(kind: str, payload: Payload) -> bytes:
    """The pack entry of one stored sample (``payload`` as the backend returns it)."""
    if kind == "ndarray":
        arr = np.asarray(payload)
        if not arr.flags.c_contiguous:  # (np.ascontiguousarray would make a 0-d array 1-d)
            arr = arr.copy(order="C")
        return array_head(arr.dtype, arr.shape) + arr.tobytes()
    return bytes([_KINDS.index(kind)]) + bytes(payload)


def blob_kind(digest: bytes, payload: bytes) -> str:
    """Whether a stored byte string is a ``"str"`` or a ``"bytes"`` sample: the kind its
    digest was made with (for a sample no column names)."""
    return "str" if blob_digest("str", payload) == digest else "bytes"


def encode_rows(stacked: np.ndarray) -> list[bytes]:
    """The pack entries of equal-shape array samples stacked along the first axis."""
    head = array_head(stacked.dtype, stacked.shape[1:])
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


def entry_value(entry: bytes | memoryview) -> tuple[str, Payload]:
    """``(kind, payload)`` of an entry already checked (ValueError if it is malformed)."""
    try:
        kind = _KINDS[entry[0]]
        if kind != "ndarray":
            return kind, bytes(entry[1:])
        n = entry[1]
        dtype = np.dtype(bytes(entry[2 : 2 + n]).decode())
        ndim = entry[2 + n]
        shape = struct.unpack_from(f"<{ndim}Q", entry, 3 + n)
        return kind, np.frombuffer(entry, dtype, offset=3 + n + 8 * ndim).reshape(shape)
    except (IndexError, ValueError, TypeError, struct.error) as exc:
        raise ValueError(f"malformed sample entry: {exc}") from None


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


def _checked(
    entries: Sequence[bytes | memoryview | None], digests: Sequence[bytes], where: str
) -> Iterator[tuple[int, bytes, memoryview] | tuple[int, str, Payload]]:
    """Check each entry against its digest, yielding ``(i, array head, body)`` for arrays
    and ``(i, kind, payload)`` for the rest (CorruptionError naming ``where`` if one fails
    or is missing)."""
    heads: dict[bytes, tuple[Any, int]] = {}
    for i, (entry, digest) in enumerate(zip(entries, digests, strict=True)):
        if entry is None:
            raise CorruptionError(
                f"sample {digest.hex()[:16]} is missing from {where}, though history refers "
                "to it; push the data again from a complete copy",
                path=where,
            )
        if not len(entry) or entry[0] != 0:
            yield (i, *decode_sample(bytes(entry), digest, where))
            continue
        try:
            n = entry[1]
            size = 3 + n + 8 * entry[2 + n]
        except IndexError:
            size = len(entry) + 1
        head = bytes(entry[:size])
        info = heads.get(head)
        if info is None:
            _, payload = decode_sample(bytes(entry), digest, where)  # checks it, or raises
            arr = np.asarray(payload)
            info = heads[head] = (_prefix(arr.dtype.str, arr.shape), arr.nbytes)
        prefix, nbytes = info
        body = memoryview(entry)[size:]
        h = prefix.copy()
        h.update(body)
        if len(body) != nbytes or h.digest() != digest:
            raise _mismatch(digest, where)
        yield i, head, body


@lru_cache(maxsize=1024)
def _head_info(head: bytes) -> tuple[np.dtype, tuple[int, ...]]:
    """Dtype and shape of a checked array entry's head."""
    n = head[1]
    return np.dtype(head[2 : 2 + n].decode()), struct.unpack_from(f"<{head[2 + n]}Q", head, 3 + n)


def check_entries(
    entries: Sequence[bytes | memoryview | None], digests: Sequence[bytes], where: str
) -> None:
    """Check each entry against its digest (CorruptionError naming ``where`` if one fails
    or is missing)."""
    for _ in _checked(entries, digests, where):
        pass


def decode_batch(entries: Sequence[bytes | None], digests: Sequence[bytes], where: str) -> Decoded:
    """Check each entry against its digest (CorruptionError naming ``where`` if one fails or
    is missing) and decode them, arrays of one dtype and shape into one stacked array."""
    out = Decoded()
    bodies: dict[bytes, tuple[list[int], list[memoryview]]] = {}
    for i, head_or_kind, body in _checked(entries, digests, where):
        if isinstance(head_or_kind, str):
            assert not isinstance(body, memoryview)
            out.single.append((i, head_or_kind, body))
            continue
        positions, views = bodies.setdefault(head_or_kind, ([], []))
        positions.append(i)
        views.append(body)  # type: ignore[arg-type]
    for head, (positions, views) in bodies.items():
        dtype, shape = _head_info(head)
        stacked = np.frombuffer(b"".join(views), dtype).reshape((len(positions), *shape))
        out.stacked.append((positions, stacked))
    return out
