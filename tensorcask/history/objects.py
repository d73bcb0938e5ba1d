"""Immutable history objects: column schemas, column roots, record roots, commits.

Each object has an explicit, versioned ``to_bytes`` encoding; its hash is
the blake2b hash of those bytes. A commit id is the 20-byte blake2b hash of
the commit's bytes, which cover the parents, author, email, time, message and
the record root (itself a hash over every column's schema and record tree),
so two repositories that replay the same commits compute the same ids.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NewType

import numpy as np

from ..hashing import object_hash

__all__ = [
    "ColumnRoot",
    "ColumnSchema",
    "Commit",
    "CommitId",
    "CommitInfo",
    "RecordRoot",
    "commit_id_of",
]

CommitId = NewType("CommitId", str)
"""A full commit id: 40 lowercase hex digits."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ColumnSchema:
    """What a column holds and where its bytes are stored.

    ``shape`` uses ``None`` for variable dimensions; ``max_shape`` bounds
    them (``None``: unbounded). ``dtype`` is the canonical little-endian
    dtype string of ndarray columns (``None`` for str/bytes).
    """

    kind: str
    dtype: str | None = None
    shape: tuple[int | None, ...] | None = None
    max_shape: tuple[int, ...] | None = None
    backend: str = "lmdb"
    compression: str | None = None

    @property
    def fixed(self) -> bool:
        """Whether every sample has the same shape."""
        return self.shape is not None and None not in self.shape

    @property
    def np_dtype(self) -> np.dtype:
        """The numpy dtype of an ndarray column."""
        assert self.dtype is not None
        return np.dtype(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "kind": self.kind,
            "dtype": self.dtype,
            "shape": None if self.shape is None else list(self.shape),
            "max_shape": None if self.max_shape is None else list(self.max_shape),
            "backend": self.backend,
            "compression": self.compression,
        }

    def to_bytes(self) -> bytes:
        """Canonical encoding (sorted-key JSON)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ColumnSchema:
        """Inverse of :meth:`to_dict`."""
        return cls(
            kind=d["kind"],
            dtype=d["dtype"],
            shape=None if d["shape"] is None else tuple(d["shape"]),
            max_shape=None if d["max_shape"] is None else tuple(d["max_shape"]),
            backend=d["backend"],
            compression=d["compression"],
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ColumnSchema:
        """Inverse of :meth:`to_bytes`."""
        return cls.from_dict(json.loads(data))


_COLROOT = struct.Struct("<4s32sQI")


@dataclass(frozen=True, slots=True)
class ColumnRoot:
    """A column at one commit: its schema, record-tree root and count."""

    schema: ColumnSchema
    tree: bytes
    count: int

    def to_bytes(self) -> bytes:
        """Canonical encoding."""
        schema = self.schema.to_bytes()
        return _COLROOT.pack(b"TCC1", self.tree, self.count, len(schema)) + schema

    @classmethod
    def from_bytes(cls, data: bytes) -> ColumnRoot:
        """Inverse of :meth:`to_bytes`."""
        magic, tree, count, n = _COLROOT.unpack_from(data)
        if magic != b"TCC1":
            raise ValueError("not a column root")
        schema = ColumnSchema.from_bytes(data[_COLROOT.size : _COLROOT.size + n])
        return cls(schema, tree, count)

    @property
    def hash(self) -> bytes:
        """Object hash of this column root."""
        return object_hash(self.to_bytes())


@dataclass(frozen=True, slots=True)
class RecordRoot:
    """The Merkle root of all records: sorted ``(column name, column root hash)``."""

    columns: tuple[tuple[str, bytes], ...]

    def to_bytes(self) -> bytes:
        """Canonical encoding."""
        parts = [b"TCR1", struct.pack("<I", len(self.columns))]
        for name, root in sorted(self.columns):
            raw = name.encode()
            parts += [struct.pack("<H", len(raw)), raw, root]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> RecordRoot:
        """Inverse of :meth:`to_bytes`."""
        if data[:4] != b"TCR1":
            raise ValueError("not a record root")
        (n,) = struct.unpack_from("<I", data, 4)
        pos, cols = 8, []
        for _ in range(n):
            (ln,) = struct.unpack_from("<H", data, pos)
            name = data[pos + 2 : pos + 2 + ln].decode()
            pos += 2 + ln
            cols.append((name, data[pos : pos + 32]))
            pos += 32
        return cls(tuple(cols))

    @property
    def hash(self) -> bytes:
        """Object hash (the records' Merkle root)."""
        return object_hash(self.to_bytes())


@dataclass(frozen=True, slots=True)
class Commit:
    """A commit: parents, who, when (microseconds since the epoch, UTC), what."""

    parents: tuple[str, ...]
    author: str
    email: str
    time_us: int
    message: str
    records: bytes

    def to_bytes(self) -> bytes:
        """Canonical encoding (the commit id hashes exactly these bytes)."""
        doc = {
            "author": self.author,
            "email": self.email,
            "message": self.message,
            "parents": list(self.parents),
            "records": self.records.hex(),
            "time_us": self.time_us,
            "v": 1,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Commit:
        """Inverse of :meth:`to_bytes`."""
        doc = json.loads(data)
        if doc.get("v") != 1:
            raise ValueError("unknown commit encoding")
        return cls(
            tuple(doc["parents"]),
            doc["author"],
            doc["email"],
            doc["time_us"],
            doc["message"],
            bytes.fromhex(doc["records"]),
        )

    @property
    def id(self) -> CommitId:
        """The full commit id."""
        return commit_id_of(self.to_bytes())


def commit_id_of(data: bytes) -> CommitId:
    """Commit id (40 hex digits) of encoded commit bytes."""
    return CommitId(hashlib.blake2b(data, digest_size=20).hexdigest())


@dataclass(frozen=True, slots=True)
class CommitInfo:
    """A commit as ``repo.log()`` reports it."""

    id: CommitId
    parents: tuple[CommitId, ...]
    author: str
    email: str
    time: datetime
    message: str

    @classmethod
    def of(cls, commit: Commit) -> CommitInfo:
        """Describe ``commit``."""
        return cls(
            commit.id,
            tuple(CommitId(p) for p in commit.parents),
            commit.author,
            commit.email,
            _EPOCH + timedelta(microseconds=commit.time_us),
            commit.message,
        )
