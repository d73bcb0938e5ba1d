"""Column tables: every record of one committed column, resolved at once.

Reading a few samples goes key -> record tree -> content index -> location,
several microseconds of Python per key. Reading many samples of one committed
column resolves the whole column once instead: a :class:`ColumnTable` holds
its keys in order and, for columns stored in memmap segments, each record's
segment, row and checksum as numpy arrays. A batch read is then one
``searchsorted``, one fancy index and one checksum per row.

A table depends only on the column root (immutable) and on where its contents
are stored (``gc`` never moves live data), so it is valid for as long as the
commit exists. Tables are saved as a folder of ``.npy`` files per column root
and memory-mapped on load, so every loader worker opens them in milliseconds
and the operating system shares their pages.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .history.objects import ColumnSchema
from .history.tree import RecordTree
from .storage.base import Location
from .storage.content import ContentStore

__all__ = ["ColumnTable"]

_HEAD_BYTES = 22  # Location encoding: version u8, segment u32, offset u64, checksum u64, ndim u8
_INT_KEY_BYTES = 9
_ARRAYS = ("key_lengths", "keys", "digests", "location_lengths", "locations")


def _blob(items: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(b) for b in items), np.uint32, len(items))
    return np.frombuffer(b"".join(items), np.uint8), lengths


def _split(blob: np.ndarray, lengths: np.ndarray) -> list[bytes]:
    data = blob.tobytes()
    ends = np.cumsum(lengths, dtype=np.int64).tolist()
    starts = [0, *ends[:-1]]
    return [data[a:b] for a, b in zip(starts, ends, strict=True)]


class ColumnTable:
    """The records of one committed column, in key order, with their locations.

    Attributes
    ----------
    count:
        Number of records.
    int_keys:
        The keys as a sorted uint64 array when every key is an int, else None.
    segments, rows, checksums:
        Per-record memmap locations (None unless every record is a memmap row
        of the column's dtype and shape).
    """

    def __init__(self, arrays: dict[str, np.ndarray], schema: ColumnSchema) -> None:
        self._arrays = arrays
        self.schema = schema
        self.count = len(arrays["key_lengths"])
        self._raw_keys: list[bytes] | None = None
        self._positions: dict[bytes, int] | None = None
        self._locations: list[Location] | None = None
        self.int_keys = arrays["int_keys"] if "int_keys" in arrays else self._int_keys()
        loaded = "int_keys" in arrays  # a saved table carries its derived arrays
        self.segments: np.ndarray | None = None
        self.rows: np.ndarray | None = None
        self.checksums: np.ndarray | None = None
        if "segments" in arrays:  # derived arrays saved with the table
            self.segments, self.rows = arrays["segments"], arrays["rows"]
            self.checksums = arrays["checksums"]
        elif not loaded:
            self._parse_memmap()

    # -- construction ----------------------------------------------------

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
        found = store.lookup_raw([digests[i : i + 32] for i in range(0, len(digests), 32)])
        if any(raw is None for raw in found):
            return None
        keys, key_lengths = _blob(raw_keys)
        locations, location_lengths = _blob(found)  # type: ignore[arg-type]
        arrays = {
            "key_lengths": key_lengths,
            "keys": keys,
            "digests": np.frombuffer(digests, np.uint8),
            "location_lengths": location_lengths,
            "locations": locations,
        }
        table = cls(arrays, schema)
        table._raw_keys = raw_keys
        return table

    def save(self, folder: Path) -> None:
        """Write the table atomically as ``folder`` (a no-op if another process did)."""
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        arrays = {name: self._arrays[name] for name in _ARRAYS}
        derived = {
            "int_keys": self.int_keys,
            "segments": self.segments,
            "rows": self.rows,
            "checksums": self.checksums,
        }
        arrays.update({k: v for k, v in derived.items() if v is not None})
        for name, array in arrays.items():
            with open(tmp / f"{name}.npy", "wb") as f:
                np.save(f, np.ascontiguousarray(array))
                f.flush()
                os.fsync(f.fileno())
        try:
            os.rename(tmp, folder)
        except OSError:  # saved meanwhile by another process: the same bytes
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path, schema: ColumnSchema) -> ColumnTable:
        """Memory-map a table written by :meth:`save`."""
        arrays = {p.stem: np.load(p, mmap_mode="r") for p in folder.glob("*.npy")}
        missing = [name for name in _ARRAYS if name not in arrays]
        if missing:
            raise ValueError(f"column table {folder} lacks {missing[0]}.npy")
        if "int_keys" not in arrays:
            arrays["int_keys"] = None
        return cls(arrays, schema)

    # -- derived views -------------------------------------------------------

    def _int_keys(self) -> np.ndarray | None:
        lengths = self._arrays["key_lengths"]
        if not self.count or not (lengths == _INT_KEY_BYTES).all():
            return None
        keys = np.asarray(self._arrays["keys"]).reshape(self.count, _INT_KEY_BYTES)
        if (keys[:, 0] != 0).any():
            return None
        return np.ascontiguousarray(keys[:, 1:]).view(">u8").ravel().astype(np.uint64)

    def _parse_memmap(self) -> None:
        """Vectorised decoding when every location is a memmap row of one group."""
        lengths = self._arrays["location_lengths"]
        if not self.count or self.schema.backend != "memmap":
            return
        width = int(lengths[0])
        if not (lengths == width).all():
            return
        records = np.asarray(self._arrays["locations"]).reshape(self.count, width)
        tail = records[0, _HEAD_BYTES:].tobytes()
        if not tail.endswith(f"memmap\0{self.schema.dtype}".encode()):
            return
        if not (records[:, _HEAD_BYTES:] == records[0, _HEAD_BYTES:]).all():
            return
        head = (
            np.ascontiguousarray(records[:, :_HEAD_BYTES])
            .view(
                np.dtype(
                    [
                        ("v", "u1"),
                        ("segment", "<u4"),
                        ("offset", "<u8"),
                        ("checksum", "<u8"),
                        ("n", "u1"),
                    ]
                )
            )
            .ravel()
        )
        self.segments = head["segment"].astype(np.int64)
        self.rows = head["offset"].astype(np.intp)
        self.checksums = head["checksum"].astype(np.uint64)

    @property
    def raw_keys(self) -> list[bytes]:
        """Encoded keys in order (decoded from the arrays on first use)."""
        if self._raw_keys is None:
            self._raw_keys = _split(self._arrays["keys"], self._arrays["key_lengths"])
        return self._raw_keys

    # -- lookups -----------------------------------------------------------

    def key(self, i: int) -> bytes:
        """The encoded key of record ``i``."""
        if self.int_keys is not None:
            return b"\x00" + int(self.int_keys[i]).to_bytes(8, "big")
        return self.raw_keys[i]

    def position(self, raw_key: bytes) -> int:
        """Index of one key (-1 where absent): a scalar path without array work."""
        if self.int_keys is not None:
            if len(raw_key) != _INT_KEY_BYTES or raw_key[0] != 0:
                return -1
            value = np.uint64(int.from_bytes(raw_key[1:], "big"))
            i = int(self.int_keys.searchsorted(value))
            return i if i < self.count and self.int_keys[i] == value else -1
        return self._key_positions().get(raw_key, -1)

    def positions(self, raw_keys: Sequence[bytes]) -> np.ndarray:
        """Index of each key in the table (-1 where absent)."""
        if self.int_keys is not None and all(
            len(k) == _INT_KEY_BYTES and k[0] == 0 for k in raw_keys
        ):
            query = np.frombuffer(b"".join(k[1:] for k in raw_keys), ">u8").astype(np.uint64)
            return self.int_positions(query)
        positions = self._key_positions()
        return np.array([positions.get(k, -1) for k in raw_keys], dtype=np.intp)

    def _key_positions(self) -> dict[bytes, int]:
        if self._positions is None:
            self._positions = {k: i for i, k in enumerate(self.raw_keys)}
        return self._positions

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
        if self.segments is not None:
            assert self.rows is not None and self.checksums is not None
            shape = tuple(d for d in self.schema.shape or () if d is not None)
            return Location(
                "memmap",
                int(self.segments[i]),
                int(self.rows[i]),
                str(self.schema.dtype),
                shape,
                int(self.checksums[i]),
            )
        if self._locations is None:
            raw = _split(self._arrays["locations"], self._arrays["location_lengths"])
            self._locations = [Location.from_bytes(r) for r in raw]
        return self._locations[i]

    def read_stacked(self, store: ContentStore, records: np.ndarray) -> np.ndarray:
        """The rows of ``records`` as one fresh array, checksums verified.

        Only for tables whose records are memmap rows (``segments`` is set);
        a damaged row raises :class:`~tensorcask.errors.CorruptionError` with
        its file path (callers name the key).
        """
        assert self.segments is not None and self.rows is not None and self.checksums is not None
        shape = tuple(d for d in self.schema.shape or () if d is not None)
        backend = store.backend("memmap")
        return backend.read_rows(  # type: ignore[attr-defined]
            self.segments[records],
            self.rows[records],
            self.checksums[records],
            str(self.schema.dtype),
            shape,
        )

    def digest(self, i: int) -> bytes:
        """The content digest of record ``i``."""
        return bytes(self._arrays["digests"][i * 32 : (i + 1) * 32])
