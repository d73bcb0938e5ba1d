"""Content digests and object hashes.

A sample's digest is blake2b-256 over a canonical encoding: a format tag, the
kind, the dtype by its canonical little-endian string (never ``dtype.num``,
which differs between equal dtypes and platforms), the shape, then the bytes
in C order. Equal content has an equal digest on every platform, so ``int64``
and ``longlong`` arrays, or a big-endian copy of a little-endian array,
deduplicate to one stored sample.
"""

from __future__ import annotations

import hashlib
import struct
from typing import NewType

import numpy as np

__all__ = [
    "Digest",
    "array_digest_prefix",
    "blob_digest",
    "canonical_array",
    "canonical_dtype",
    "object_hash",
]

Digest = NewType("Digest", bytes)
"""A 32-byte raw content digest."""

DIGEST_SIZE = 32
_FORMAT = b"tensorcask-sample-v1\0"


def canonical_dtype(dtype: np.dtype) -> np.dtype:
    """The little-endian form of ``dtype`` (byte order is not content)."""
    if dtype.byteorder == ">" or (dtype.byteorder == "=" and not np.little_endian):
        return dtype.newbyteorder("<")
    return dtype


def canonical_array(value: np.ndarray) -> np.ndarray:
    """A C-contiguous, little-endian view or copy of ``value``."""
    dtype = canonical_dtype(value.dtype)
    if dtype != value.dtype or dtype.byteorder == ">":
        value = value.astype(dtype)
    # np.ascontiguousarray would turn a 0-d array into shape (1,)
    return value if value.flags.c_contiguous else value.copy(order="C")


def array_digest_prefix(dtype: np.dtype, shape: tuple[int, ...]) -> hashlib.blake2b:
    """A blake2b state primed with the header of arrays of this dtype/shape.

    Hashing a batch of equal-shape rows copies this state once per row
    instead of re-encoding the header.
    """
    head = _FORMAT + b"ndarray\0" + canonical_dtype(dtype).str.encode() + b"\0"
    head += struct.pack(f"<B{len(shape)}Q", len(shape), *shape)
    return hashlib.blake2b(head, digest_size=DIGEST_SIZE)


def blob_digest(kind: str, data: bytes) -> Digest:
    """Digest of a ``str`` (UTF-8 encoded) or ``bytes`` sample."""
    h = hashlib.blake2b(_FORMAT + kind.encode() + b"\0", digest_size=DIGEST_SIZE)
    h.update(data)
    return Digest(h.digest())


def object_hash(data: bytes) -> bytes:
    """Hash of a history object (record-tree page, column root, commit)."""
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()
