"""Column tables: every record of one committed column, resolved at once.

Reading a few samples goes key -> record tree -> content index -> location,
several microseconds of Python per key. Reading many samples of one committed
column resolves the whole column once instead: a :class:`ColumnTable` holds
its keys in order, each record's content digest and, for columns stored in
memmap segments, each record's segment, row and checksum as numpy arrays. A
batch read is then one ``searchsorted``, one fancy index and one checksum per
row.

A table depends only on the column root (immutable) and on where its contents
are stored (``gc`` never moves live data), so it is valid for as long as the
commit exists. :mod:`tensorcask.table_cache` saves tables checksummed, shares
their unchanged pieces between commits and memory-maps them on load.

A record whose content-index entry is damaged or missing does not stop the
column: the table marks that record, and reading it raises
:class:`~tensorcask.errors.CorruptionError` while every other record reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import cast, overload

import numpy as np

from .errors import CaskError, CorruptionError
from .history.objects import ColumnRoot, ColumnSchema
from .history.tree import RecordTree
from .storage.base import Location, Payload, TableRows
from .storage.content import ContentStore
from .table_cache import CACHE_FORMAT, TableCache

__all__ = ["ColumnTable", "ColumnTables", "KeyedTable", "Lookup", "key_arrays", "parse_memmap"]

TABLES_IN_MEMORY = 16
_EAGER = ("int_keys", "segments", "rows", "checksums")  # what every batch read touches

_HEAD_BYTES = 22  # Location encoding: version u8, segment u32, offset u64, checksum u64, ndim u8
_INT_KEY_BYTES = 9
_HEAD_DTYPE = np.dtype(
    [("v", "u1"), ("segment", "<u4"), ("offset", "<u8"), ("checksum", "<u8"), ("n", "u1")]
)

Lookup = Callable[[list[bytes]], list[bytes | CorruptionError | None]]
"""Digests -> encoded locations (an error for a damaged index entry, None if absent)."""


def _blob(items: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(b) for b in items), np.uint32, len(items))
    return np.frombuffer(b"".join(items), np.uint8), lengths


def _split(blob: np.ndarray, lengths: np.ndarray) -> list[bytes]:
    data = blob.tobytes()
    ends = np.cumsum(lengths, dtype=np.int64).tolist()
    starts = [0, *ends[:-1]] if ends else []
    return [data[a:b] for a, b in zip(starts, ends, strict=True)]


class KeyedTable:
    """Records of one committed column in key order: their keys and content digests.

    What every table of a column shares, wherever its bytes are read from: a
    local :class:`ColumnTable`, or a streaming table of a remote.

    Attributes
    ----------
    count:
        Number of records.
    int_keys:
        The keys as a sorted uint64 array when every key is an int, else None.
    """

    def __init__(
        self, arrays: Mapping[str, np.ndarray], count: int, raw_keys: list[bytes] | None = None
    ) -> None:
        self._arrays = arrays
        self.count = count
        self.int_keys: np.ndarray | None = arrays.get("int_keys")
        self._raw_keys = raw_keys
        self._positions: dict[bytes, int] | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        """What the table is made of (for the table cache)."""
        return dict(self._arrays)

    @property
    def raw_keys(self) -> list[bytes]:
        """Encoded keys in order (decoded from the arrays on first use)."""
        if self._raw_keys is None:
            if self.int_keys is not None:
                packed = self.int_keys.astype(">u8").tobytes()
                self._raw_keys = [b"\x00" + packed[i : i + 8] for i in range(0, len(packed), 8)]
            else:
                self._raw_keys = _split(self._arrays["keys"], self._arrays["key_lengths"])
        return self._raw_keys

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

    @property
    def digests(self) -> np.ndarray:
        """Every record's content digest, as an ``(n, 32)`` uint8 array."""
        return self._arrays["digests"]

    def digest(self, i: int) -> bytes:
        """The content digest of record ``i``."""
        return self.digests[i].tobytes()


def key_arrays(raw_keys: list[bytes]) -> dict[str, np.ndarray]:
    """The arrays that hold ``raw_keys`` in a table: ``int_keys``, else ``keys`` + lengths."""
    int_keys = _int_keys(raw_keys)
    if int_keys is not None:
        return {"int_keys": int_keys}
    keys, lengths = _blob(raw_keys)
    return {"keys": keys, "key_lengths": lengths}


class ColumnTable(KeyedTable):
    """The records of one committed column, in key order, with their locations.

    Attributes
    ----------
    segments, rows, checksums:
        Per-record memmap locations (None unless every record is a memmap row
        of the column's dtype and shape).
    damaged:
        Records whose location could not be resolved, with the error reading
        them raises (None when every record resolved: the table may be saved).
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        schema: ColumnSchema,
        count: int,
        damaged: dict[int, CaskError] | None = None,
        raw_keys: list[bytes] | None = None,
    ) -> None:
        super().__init__(arrays, count, raw_keys)
        self.schema = schema
        self.damaged = damaged or None
        self.segments: np.ndarray | None = arrays.get("segments")
        self.rows: np.ndarray | None = arrays.get("rows")
        self.checksums: np.ndarray | None = arrays.get("checksums")
        self._locations: list[Location] | None = None

    # -- construction ----------------------------------------------------

    @classmethod
    def build(
        cls,
        tree: RecordTree,
        root: bytes,
        lookup: Lookup,
        schema: ColumnSchema,
        absent: Callable[[bytes], CaskError] | None = None,
    ) -> ColumnTable:
        """Resolve a column from its record tree and the content index.

        ``absent(digest)`` makes the error of a record whose content is not
        there (default: the repository is damaged).
        """
        raw_keys: list[bytes] = []
        blobs: list[bytes] = []
        for leaf in tree.leaves(root):
            raw_keys.extend(leaf.keys)
            blobs.append(leaf.vals)
        digests = b"".join(blobs)
        wanted = [digests[i : i + 32] for i in range(0, len(digests), 32)]
        found = lookup(wanted)
        damaged: dict[int, CaskError] = {}
        good = next((raw for raw in found if isinstance(raw, bytes)), None)
        resolved: list[bytes] = []
        for i, raw in enumerate(found):
            if isinstance(raw, bytes):
                resolved.append(raw)
                continue
            damaged[i] = raw if raw is not None else (absent or _missing)(wanted[i])
            resolved.append(good or b"")  # a placeholder that is never read
        arrays: dict[str, np.ndarray] = {
            "digests": np.frombuffer(digests, np.uint8).reshape(-1, 32)
        }
        arrays.update(key_arrays(raw_keys))
        memmap = parse_memmap(resolved, schema) if good is not None else None
        if memmap is not None:
            arrays.update(memmap)
        else:
            arrays["locations"], arrays["location_lengths"] = _blob(resolved)
        return cls(arrays, schema, len(raw_keys), damaged, raw_keys)

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], schema: ColumnSchema, count: int
    ) -> ColumnTable:
        """A table of ``count`` records from saved arrays (checked by the cache)."""
        keys_ok = "int_keys" in arrays or ("keys" in arrays and "key_lengths" in arrays)
        locations_ok = all(k in arrays for k in ("segments", "rows", "checksums")) or (
            "locations" in arrays and "location_lengths" in arrays
        )
        if "digests" not in arrays or not keys_ok or not locations_ok:
            raise ValueError("a saved column table lacks some of its arrays")
        return cls(arrays, schema, count)

    # -- lookups -----------------------------------------------------------

    def location(self, i: int) -> Location:
        """The location of record ``i`` (CorruptionError if it could not be resolved)."""
        if self.damaged is not None and i in self.damaged:
            raise self.damaged[i].again()
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
            self._locations = [
                Location.from_bytes(r)
                if self.damaged is None or n not in self.damaged
                else _PLACEHOLDER
                for n, r in enumerate(raw)
            ]
        return self._locations[i]

    def check_records(self, records: np.ndarray) -> None:
        """Raise the error of the first record in ``records`` that could not be resolved."""
        if self.damaged is not None:
            bad = np.isin(records, np.fromiter(self.damaged, np.intp, len(self.damaged)))
            if bad.any():
                raise self.damaged[int(records[int(np.flatnonzero(bad)[0])])].again()

    def read(
        self, store: ContentStore, records: np.ndarray, column: str | None = None
    ) -> np.ndarray | list[Payload]:
        """The samples of ``records``, through the store's one read path.

        One fresh stacked array when the records are memmap rows
        (``segments`` is set), else a list of payloads. A damaged record
        raises :class:`~tensorcask.errors.CorruptionError` with its file path
        (callers name the key); a purged one raises
        :class:`~tensorcask.errors.PurgedDataError` naming ``column`` and the key.
        """
        digests = RecordDigests(self.digests, records)
        keys = lambda: RecordKeys(self, records)  # noqa: E731 -- built only if a tombstone asks
        if self.damaged is not None:  # purged says more than "not here"; fetch checks the rest
            store.check_purged(digests, column, keys)
        self.check_records(records)
        if self.segments is None:
            locations = [self.location(int(r)) for r in records]
            return store.fetch(digests, locations, column=column, keys=keys)
        assert self.rows is not None and self.checksums is not None
        shape = tuple(d for d in self.schema.shape or () if d is not None)
        rows = TableRows(
            self.segments[records],
            self.rows[records],
            self.checksums[records],
            str(self.schema.dtype),
            shape,
        )
        return store.fetch(digests, rows, column=column, keys=keys)

    def read_one(self, store: ContentStore, i: int, column: str | None = None) -> Payload:
        """The sample of record ``i``, through the store's one read path."""
        digests, keys = [self.digest(i)], lambda: [self.key(i)]
        if self.damaged is not None:
            store.check_purged(digests, column, keys)
        fetched = store.fetch(digests, [self.location(i)], column=column, keys=keys)
        return cast(list[Payload], fetched)[0]


class _OfRecords(Sequence[bytes]):
    """A value per record of some records, made only when asked for."""

    __slots__ = ("_records",)

    def __init__(self, records: np.ndarray) -> None:
        self._records = records

    def _one(self, record: int) -> bytes:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._records)

    @overload
    def __getitem__(self, i: int) -> bytes: ...

    @overload
    def __getitem__(self, i: slice) -> list[bytes]: ...

    def __getitem__(self, i: int | slice) -> bytes | list[bytes]:
        if isinstance(i, slice):
            return [self._one(r) for r in self._records[i].tolist()]
        return self._one(int(self._records[i]))


class RecordKeys(_OfRecords):
    """The encoded keys of some records of a table, read only when asked for
    (a read names them only when one is purged)."""

    __slots__ = ("_table",)

    def __init__(self, table: KeyedTable, records: np.ndarray) -> None:
        super().__init__(records)
        self._table = table

    def _one(self, record: int) -> bytes:
        return self._table.key(record)


class RecordDigests(_OfRecords):
    """The content digests of some records of a table, read only when asked for.

    Batch reads pass them to the store's read path, which needs them only
    when a check looks at them; selecting them up front would cost a batch
    read of small samples more than the read itself.
    """

    __slots__ = ("_digests",)

    def __init__(self, digests: np.ndarray, records: np.ndarray) -> None:
        super().__init__(records)
        self._digests = digests

    def _one(self, record: int) -> bytes:
        return bytes(self._digests[record].tobytes())

    def rows(self) -> np.ndarray:
        """The digests as an ``(n, 32)`` uint8 array (checks test a batch at once)."""
        return self._digests[self._records]


class ColumnTables:
    """The column tables of one repository: from memory, else the disk cache, else built.

    Parameters
    ----------
    tree:
        The repository's record trees.
    store:
        The content store whose index resolves digests (and reads rows).
    cache:
        The on-disk table cache.
    """

    def __init__(self, tree: RecordTree, store: ContentStore, cache: TableCache) -> None:
        self.tree = tree
        self.store = store
        self.cache = cache
        self._memory: dict[tuple[bytes, int], ColumnTable] = {}

    def get(self, root: ColumnRoot) -> ColumnTable:
        """The table of a committed column root: in memory, in the disk cache, else built
        (and saved).

        Tables are known by root and purge generation: content a purge had
        removed and that is stored again has moved, so tables from before
        that are not used after it.
        """
        generation = self.store.tombstones().generation  # once: a build may take seconds
        table = self.cached(root, generation)
        if table is None:
            table = self._build(root)
            if table.damaged is None:  # a table with unresolved records is never saved
                self.cache.save(*self._naming(root, generation), table.arrays())
            self._remember(root.hash, generation, table)
        return table

    def cached(
        self, root: ColumnRoot, generation: int | None = None, *, in_use: bool = True
    ) -> ColumnTable | None:
        """The table of ``root`` if it is in memory or in the disk cache (never built),
        at the purge ``generation`` (default: the current one). ``in_use=False``: a
        commit deriving from it, which does not make it recently used."""
        if generation is None:
            generation = self.store.tombstones().generation
        table = self._memory.get((root.hash, generation))
        if table is not None:
            return table
        name, stamp = self._naming(root, generation)
        arrays = self.cache.load(
            name, stamp, eager=_EAGER, rebuild=lambda: self._sound(root), in_use=in_use
        )
        if arrays is None:
            return None
        try:
            table = ColumnTable.from_arrays(arrays, root.schema, root.count)
        except ValueError:
            self.cache.forget(name)
            return None
        self._remember(root.hash, generation, table)
        return table

    def put(self, root: ColumnRoot, table: ColumnTable) -> None:
        """Save ``table`` as the table of ``root`` (one derived by its writer).

        Not kept in memory: its arrays are private copies, while a table
        loaded from the cache is mapped (the next commit maps it back).
        """
        generation = self.store.tombstones().generation
        self.cache.save(*self._naming(root, generation), table.arrays(), in_use=False)

    def _naming(self, root: ColumnRoot, generation: int) -> tuple[str, dict[str, int | str]]:
        """The cache name and stamp of ``root``'s table at a purge generation."""
        name = self.cache_name(root.hash, generation)
        return name, {"format": CACHE_FORMAT, "root": name, "count": root.count}

    def _remember(self, root_hash: bytes, generation: int, table: ColumnTable) -> None:
        if len(self._memory) >= TABLES_IN_MEMORY:
            self._memory.pop(next(iter(self._memory)))
        self._memory[(root_hash, generation)] = table

    @staticmethod
    def cache_name(root_hash: bytes, generation: int) -> str:
        """The name a column root's table is saved under at a purge generation."""
        return root_hash.hex() + (f"-{generation}" if generation else "")

    def _build(self, root: ColumnRoot) -> ColumnTable:
        return ColumnTable.build(
            self.tree, root.tree, self.store.lookup_raw, root.schema, self.store.absent
        )

    def _sound(self, root: ColumnRoot) -> dict[str, np.ndarray] | None:
        """A fresh build's arrays, or None when some record could not be resolved."""
        table = self._build(root)
        return table.arrays() if table.damaged is None else None

    def forget(self) -> None:
        """Drop the tables held in memory (after gc or a repair)."""
        self._memory.clear()


_PLACEHOLDER = Location("memory", 0, 0, "blob", (0,), 0)


def _missing(digest: bytes) -> CorruptionError:
    return CorruptionError(
        f"content {digest.hex()[:16]} is not in the content index; the repository is damaged "
        "(run `tensorcask verify --full`)"
    )


def _int_keys(raw_keys: list[bytes]) -> np.ndarray | None:
    """The keys as a uint64 array when every key is an int."""
    if not raw_keys or any(len(k) != _INT_KEY_BYTES or k[0] != 0 for k in raw_keys):
        return None
    packed = np.frombuffer(b"".join(raw_keys), np.uint8).reshape(-1, _INT_KEY_BYTES)
    return np.ascontiguousarray(packed[:, 1:]).view(">u8").ravel().astype(np.uint64)


def parse_memmap(resolved: list[bytes], schema: ColumnSchema) -> dict[str, np.ndarray] | None:
    """Vectorised decoding when every location is a memmap row of the column's group."""
    if not resolved or schema.backend != "memmap":
        return None
    width = len(resolved[0])
    if len(set(map(len, resolved))) != 1:
        return None
    records = np.frombuffer(b"".join(resolved), np.uint8).reshape(len(resolved), width)
    tail = records[0, _HEAD_BYTES:].tobytes()
    if not tail.endswith(f"memmap\0{schema.dtype}".encode()):
        return None
    if not (records[:, _HEAD_BYTES:] == records[0, _HEAD_BYTES:]).all():
        return None
    head = np.ascontiguousarray(records[:, :_HEAD_BYTES]).view(_HEAD_DTYPE).ravel()
    return {
        "segments": head["segment"].astype(np.int64),
        "rows": head["offset"].astype(np.intp),
        "checksums": head["checksum"].astype(np.uint64),
    }
