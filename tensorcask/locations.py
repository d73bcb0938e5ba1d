"""Column tables: every record of one committed column, resolved at once.

Reading a few samples goes key -> record tree -> content index -> location,
several microseconds of Python per key. Reading many samples of one committed
column resolves the whole column once instead: a :class:`ColumnTable` holds
its keys in order and, for columns stored in memmap segments, each record's
segment, row and checksum as numpy arrays. A batch read is then one
``searchsorted``, one fancy index and one checksum per row.

A table depends only on the column's record-tree root (immutable) and on
where its contents are stored (which ``gc`` never changes for live data), so
it stays valid for as long as the commit exists.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .history.objects import ColumnSchema
from .history.tree import RecordTree
from .storage.base import Location
from .storage.content import ContentStore

__all__ = ["ColumnTable"]

_HEAD_BYTES = 22  # Location encoding: version u8, segment u32, offset u64, checksum u64, ndim u8
_INT_KEY_BYTES = 9


class ColumnTable:
    """The records of one committed column, in key order, with their locations.

    Attributes
    ----------
    count:
        Number of records.
    int_keys:
        The keys as a sorted uint64 array when every key is an int, else None.
    segments, rows, checksums:
        Per-record memmap locations (None unless every record lives in one
        memmap dtype/shape group).
    locations:
        Per-record :class:`Location` objects for other backends (else None).
    """

    def __init__(
        self,
        raw_keys: list[bytes],
        digests: bytes,
        raw_locations: list[bytes],
        schema: ColumnSchema,
    ) -> None:
        self.count = len(raw_keys)
        self.raw_keys = raw_keys
        self.digests = digests
        self.schema = schema
        self.int_keys: np.ndarray | None = None
        if all(len(k) == _INT_KEY_BYTES and k[0] == 0 for k in raw_keys):
            joined = b"".join(k[1:] for k in raw_keys)
            self.int_keys = np.frombuffer(joined, ">u8").astype(np.uint64)
        self._positions: dict[bytes, int] | None = None
        self.segments: np.ndarray | None = None
        self.rows: np.ndarray | None = None
        self.checksums: np.ndarray | None = None
        self.locations: list[Location] | None = None
        if not self._parse_memmap(raw_locations):
            self.locations = [Location.from_bytes(raw) for raw in raw_locations]

    def _parse_memmap(self, raw_locations: list[bytes]) -> bool:
        """Vectorised decoding when every location is a memmap row of one group."""
        if not raw_locations or self.schema.backend != "memmap":
            return False
        first = raw_locations[0]
        tail = first[_HEAD_BYTES:]
        if not tail.endswith(f"memmap\0{self.schema.dtype}".encode()):
            return False
        width = len(first)
        if any(len(raw) != width for raw in raw_locations):
            return False
        layout = np.dtype(
            [
                ("version", "u1"),
                ("segment", "<u4"),
                ("offset", "<u8"),
                ("checksum", "<u8"),
                ("ndim", "u1"),
                ("tail", f"V{width - _HEAD_BYTES}"),
            ]
        )
        table = np.frombuffer(b"".join(raw_locations), layout)
        if not (table["tail"] == table["tail"][0]).all():
            return False
        self.segments = table["segment"].astype(np.int64)
        self.rows = table["offset"].astype(np.intp)
        self.checksums = table["checksum"].copy()
        return True

    @classmethod
    def build(
        cls, tree: RecordTree, root: bytes, store: ContentStore, schema: ColumnSchema
    ) -> ColumnTable | None:
        """Resolve a column; None if some content is not in the index (the
        per-key path then raises a precise error)."""
        raw_keys: list[bytes] = []
        blobs: list[bytes] = []
        for leaf in tree.leaves(root):
            raw_keys.extend(leaf.keys)
            blobs.append(leaf.vals)
        digests = b"".join(blobs)
        raw_locations = store.lookup_raw([digests[i : i + 32] for i in range(0, len(digests), 32)])
        if any(raw is None for raw in raw_locations):
            return None
        return cls(raw_keys, digests, raw_locations, schema)  # type: ignore[arg-type]

    def positions(self, raw_keys: Sequence[bytes]) -> np.ndarray:
        """Index of each key in the table (-1 where absent)."""
        if self.int_keys is not None and all(
            len(k) == _INT_KEY_BYTES and k[0] == 0 for k in raw_keys
        ):
            query = np.frombuffer(b"".join(k[1:] for k in raw_keys), ">u8").astype(np.uint64)
            return self.int_positions(query)
        positions = self._positions
        if positions is None:
            positions = self._positions = {k: i for i, k in enumerate(self.raw_keys)}
        return np.array([positions.get(k, -1) for k in raw_keys], dtype=np.intp)

    def position(self, raw_key: bytes) -> int:
        """Index of one key (-1 where absent): a scalar path without array work."""
        if self.int_keys is not None:
            if len(raw_key) != _INT_KEY_BYTES or raw_key[0] != 0:
                return -1
            value = np.uint64(int.from_bytes(raw_key[1:], "big"))
            i = int(self.int_keys.searchsorted(value))
            return i if i < self.count and self.int_keys[i] == value else -1
        positions = self._positions
        if positions is None:
            positions = self._positions = {k: i for i, k in enumerate(self.raw_keys)}
        return positions.get(raw_key, -1)

    def int_positions(self, query: np.ndarray) -> np.ndarray:
        """Index of each int key (uint64 array) in the table (-1 where absent)."""
        keys = self.int_keys
        if keys is None or not len(keys):
            return np.full(len(query), -1, np.intp)
        found = np.searchsorted(keys, query)
        clipped = np.minimum(found, len(keys) - 1)
        return np.where(keys[clipped] == query, clipped, -1).astype(np.intp)

    def location(self, i: int) -> Location:
        """The location of record ``i``."""
        if self.locations is not None:
            return self.locations[i]
        assert self.segments is not None and self.rows is not None and self.checksums is not None
        shape = tuple(d for d in self.schema.shape or () if d is not None)
        return Location(
            "memmap",
            int(self.segments[i]),
            int(self.rows[i]),
            str(self.schema.dtype),
            shape,
            int(self.checksums[i]),
        )

    def digest(self, i: int) -> bytes:
        """The content digest of record ``i``."""
        return self.digests[i * 32 : (i + 1) * 32]
