"""Columns: named, typed collections of samples inside a checkout.

A :class:`Column` taken from a read checkout reads one commit's records; one
taken from a write checkout reads the staging area over its base commit and
also writes. Writes are validated in full before anything is stored, then
stored in two steps (data appended and fsynced, then one metadata
transaction publishes content index and staged records), so a crash never
leaves a record pointing at missing bytes.

Single-sample writes (``col[k] = v``) are buffered and sent to the staging
area as one batch every :data:`BUFFER_SAMPLES` samples (or
:data:`BUFFER_BYTES`), at ``flush()``, ``commit()``, ``close()``, at the
end of a ``with column:`` block, and
before any operation that needs the staged state (``len``, ``keys``,
``get_many``, a deletion, a diff). Reading a buffered key returns the
buffered value. A crash loses only writes not flushed yet; never a commit,
and never anything flushed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, cast

import numpy as np

from .errors import CheckoutClosedError, CorruptionError, ReadOnlyError, sample_error
from .hashing import Digest
from .history.objects import ColumnRoot, ColumnSchema
from .history.staging import DELETED
from .ingest import PartWriter, SamplesPart
from .keys import Key, decode_key, encode_key, encode_keys
from .locations import ColumnTable
from .parts import RepositoryParts
from .samples import Value, from_payload, prepare_batch, prepare_one
from .storage.base import Location, Payload
from .storage.content import ContentStore

__all__ = ["BUFFER_BYTES", "BUFFER_SAMPLES", "Column", "ColumnContext", "StagingSink"]

BUFFER_SAMPLES = 8192
BUFFER_BYTES = 64 << 20
"""Buffered single writes are also staged once they hold this many bytes."""
_TABLE_MIN_READS = 4096
_TABLE_SHARE = 16  # resolve a whole column once 1/16 of its size has been read
_SINGLE_READ_WEIGHT = 8  # single reads resolve the column only after half of it was read


class StagingSink(Protocol):
    """Where the columns of a write checkout send their writes."""

    def write(
        self,
        column: Column,
        raw_keys: list[bytes],
        payloads: np.ndarray | list[Payload],
        digests: list[Any],
        *,
        allow_purged: bool = False,
    ) -> None:
        """Store samples and stage their records, durably.

        Purged content is refused (:class:`~tensorcask.errors.PurgedDataError`)
        unless ``allow_purged`` (or the checkout allows it).
        """

    def check_live(self) -> None:
        """Raise if the checkout may no longer write (its repository was removed, or its
        writer lock was force-released)."""

    def check_allowed(self, column: Column, raw_keys: list[bytes], digests: list[Any]) -> None:
        """Raise :class:`~tensorcask.errors.PurgedDataError` now for purged content
        that a later :meth:`write` of these buffered samples would refuse."""

    def delete(self, column: Column, raw_key: bytes, *, staged_only: bool) -> None:
        """Stage the deletion of one key (``staged_only``: it exists only staged)."""

    def check_column(self, column: Column) -> None:
        """Raise KeyError if ``column`` is no longer the checkout's column of its name."""

    def part_writer(self, column: Column, *, allow_purged: bool = False) -> PartWriter:
        """A picklable writer of ``column``'s samples for other processes."""

    def add_parts(self, column: Column, parts: Sequence[SamplesPart]) -> None:
        """Check parts other processes stored and stage them, in one transaction."""


class ColumnContext:
    """What the columns of one checkout share: the repository's parts, the
    checkout's content store, its staging sink (None: read-only), and
    whether it is closed."""

    __slots__ = ("closed", "parts", "sink", "store")

    def __init__(
        self, parts: RepositoryParts, store: ContentStore, sink: StagingSink | None
    ) -> None:
        self.parts = parts
        self.store = store
        self.sink = sink
        self.closed = False

    @property
    def writable(self) -> bool:
        """Whether the columns may write."""
        return self.sink is not None

    def check_open(self) -> None:
        """Raise CheckoutClosedError once the checkout is closed."""
        if self.closed:
            raise CheckoutClosedError(
                "this checkout is closed; open a new one with repo.checkout()"
            )


class Column:
    """A column of one checkout: mapping-like access to its samples.

    Attributes
    ----------
    name:
        The column's name.
    kind:
        ``"ndarray"``, ``"str"`` or ``"bytes"``.
    """

    def __init__(
        self, context: ColumnContext, name: str, schema: ColumnSchema, tree: bytes, count: int
    ) -> None:
        self._co = context
        self.name = name
        self.schema = schema
        self._tree = tree  # record-tree root of the base commit (EMPTY_ROOT if new)
        self._base_count = count
        self._len: int | None = None if context.writable else count
        self._buffer: dict[bytes, tuple[Payload, Digest]] = {}
        self._buffered_bytes = 0
        self._depth = 0
        self._reads = 0  # keys read so far: resolving the whole column pays off past a share
        self._table: ColumnTable | None = None

    # -- description -----------------------------------------------------

    @property
    def kind(self) -> str:
        """``"ndarray"``, ``"str"`` or ``"bytes"``."""
        return self.schema.kind

    @property
    def dtype(self) -> np.dtype | None:
        """numpy dtype of an ndarray column (None for str/bytes)."""
        return None if self.schema.dtype is None else np.dtype(self.schema.dtype)

    @property
    def shape(self) -> tuple[int | None, ...] | None:
        """Sample shape; ``None`` marks a variable dimension (None for str/bytes)."""
        return self.schema.shape

    @property
    def max_shape(self) -> tuple[int, ...] | None:
        """Upper bound of each dimension (None when unbounded or not an ndarray)."""
        if self.schema.fixed:
            return tuple(d for d in self.schema.shape or () if d is not None)
        return self.schema.max_shape

    @property
    def _writer(self) -> StagingSink:
        return cast(StagingSink, self._co.sink)

    @property
    def writable(self) -> bool:
        """Whether this column belongs to a write checkout."""
        return self._co.writable

    def __repr__(self) -> str:
        if self._co.closed:
            return f"<Column {self.name!r} (checkout closed)>"
        detail = f"dtype={self.schema.dtype}, shape={self.shape}" if self.kind == "ndarray" else ""
        return f"<Column {self.name!r} kind={self.kind} {detail} len={len(self)}>".replace(
            "  ", " "
        )

    # -- record lookup ---------------------------------------------------

    def _digest_of(self, raw_key: bytes) -> bytes | None:
        co = self._co
        if co.writable:
            held = self._buffer.get(raw_key)
            if held is not None:
                return held[1]
            with co.parts.db.read() as txn:
                staged = co.parts.staging.get(txn, self.name, raw_key)
            if staged is not None:
                return None if staged == DELETED else staged
        return co.parts.history.tree.get(self._tree, raw_key)

    def _column_table(self, reads: int) -> ColumnTable | None:
        """The resolved table of a committed column, once enough keys were read."""
        table = self._table
        if table is not None and table.damaged is not None:
            # Records it could not resolve may have been repaired or fetched since
            # (fetch_data): the repository's tables are rebuilt then, so ask again.
            root = ColumnRoot(self.schema, self._tree, self._base_count)
            self._table = self._co.parts.column_table(root)
        if self._table is not None or self._co.writable or not self._base_count:
            return self._table
        if not self._reads:  # first read: a table saved by the commit, or by an earlier reader
            root = ColumnRoot(self.schema, self._tree, self._base_count)
            self._table = self._co.parts.tables.cached(root)
            if self._table is not None:
                return self._table
        self._reads += reads
        threshold = max(_TABLE_MIN_READS, self._base_count // _TABLE_SHARE)
        if self._reads < _SINGLE_READ_WEIGHT * threshold:
            return None
        root = ColumnRoot(self.schema, self._tree, self._base_count)
        self._table = self._co.parts.column_table(root)
        return self._table

    def _digests_of(self, raw_keys: list[bytes]) -> list[bytes | None]:
        co = self._co
        tree = co.parts.history.tree
        if not co.writable:
            return tree.get_many(self._tree, raw_keys)
        self.flush()
        with co.parts.db.read() as txn:
            staged = co.parts.staging.get_many(txn, self.name, raw_keys)
        rest = [k for k, s in zip(raw_keys, staged, strict=True) if s is None]
        base = iter(tree.get_many(self._tree, rest) if rest else [])
        return [next(base) if s is None else None if s == DELETED else s for s in staged]

    def _location(self, digest: bytes, key: object) -> Location:
        try:
            loc = self._co.store.locate(digest)
        except CorruptionError as exc:
            raise sample_error(exc, self.name, key) from exc
        if loc is None:
            raise self._co.store.absent(digest, self.name, key)
        return loc

    def _read(self, digest: bytes, loc: Location, key: object) -> Payload:
        try:
            keys = lambda: [encode_key(key)]  # noqa: E731 -- built only if a tombstone asks
            fetched = self._co.store.fetch([digest], [loc], column=self.name, keys=keys)
            return cast(list[Payload], fetched)[0]
        except CorruptionError as exc:
            raise sample_error(exc, self.name, key) from exc

    def _read_record(self, table: ColumnTable, i: int, key: object) -> Payload:
        try:
            return table.read_one(self._co.store, i, self.name)
        except CorruptionError as exc:
            raise sample_error(exc, self.name, key) from exc

    # -- reading ---------------------------------------------------------

    def __getitem__(self, key: Key) -> Value:
        self._co.check_open()
        raw_key = encode_key(key)
        held = self._buffer.get(raw_key) if self._buffer else None
        if held is not None:
            payload = held[0]
            if isinstance(payload, np.ndarray):
                payload = payload.copy()  # reads never alias what is buffered
            return from_payload(self.schema, payload)
        table = self._column_table(1)  # one key weighs 1/8 of a batch key
        if table is not None:
            i = table.position(raw_key)
            if i < 0:
                raise KeyError(f"key {key!r} is not in column {self.name!r}")
            return from_payload(self.schema, self._read_record(table, i, key))
        digest = self._digest_of(raw_key)
        if digest is None:
            raise KeyError(f"key {key!r} is not in column {self.name!r}")
        return from_payload(self.schema, self._read(digest, self._location(digest, key), key))

    def get(self, key: Key, default: Any = None) -> Any:
        """The sample stored under ``key``, or ``default``."""
        try:
            return self[key]
        except KeyError:
            return default

    def get_many(self, keys: Sequence[Key] | np.ndarray) -> np.ndarray | list[Value]:
        """Several samples at once.

        Returns one stacked array for fixed-shape ndarray columns, else a list.
        """
        self._co.check_open()
        key_list = keys.tolist() if isinstance(keys, np.ndarray) else list(keys)
        raw = encode_keys(key_list)
        table = self._column_table(_SINGLE_READ_WEIGHT * len(raw))
        if table is not None and table.segments is not None and raw:
            return self._get_many_from_table(table, key_list, raw)
        found = self._digests_of(raw)
        digests: list[bytes] = []
        for key, digest in zip(key_list, found, strict=True):
            if digest is None:
                raise KeyError(f"key {key!r} is not in column {self.name!r}")
            digests.append(digest)
        try:
            located = self._co.store.locate_many(digests)
        except CorruptionError:
            for d, k in zip(digests, key_list, strict=True):
                self._location(d, k)  # name the key whose entry is damaged
            raise
        locs: list[Location] = []
        for key, digest, loc in zip(key_list, digests, located, strict=True):
            if loc is None:
                raise self._co.store.absent(digest, self.name, key)
            locs.append(loc)
        stack = self.schema.kind == "ndarray" and self.schema.fixed
        if stack and not locs:
            shape = tuple(d for d in self.schema.shape or () if d is not None)
            return np.empty((0, *shape), dtype=self.schema.np_dtype)
        try:
            payloads = self._co.store.fetch(digests, locs, stack=stack, column=self.name, keys=raw)
        except CorruptionError:
            for key, digest, loc in zip(key_list, digests, locs, strict=True):
                self._read(digest, loc, key)  # name the damaged key
            raise
        if stack:
            return cast(np.ndarray, payloads)
        return [from_payload(self.schema, p) for p in payloads]

    def _get_many_from_table(
        self, table: ColumnTable, key_list: list[Any], raw: list[bytes]
    ) -> np.ndarray:
        positions = table.positions(raw)
        if (positions < 0).any():
            missing = key_list[int(np.flatnonzero(positions < 0)[0])]
            raise KeyError(f"key {missing!r} is not in column {self.name!r}")
        try:
            return cast(np.ndarray, table.read(self._co.store, positions, self.name))
        except CorruptionError:
            for key, i in zip(key_list, positions.tolist(), strict=True):
                self._read_record(table, i, key)  # name the damaged key
            raise

    def digest(self, key: Key) -> str:
        """Hex content digest of the sample under ``key``."""
        self._co.check_open()
        digest = self._digest_of(encode_key(key))
        if digest is None:
            raise KeyError(f"key {key!r} is not in column {self.name!r}")
        return digest.hex()

    def digests(self, keys: Sequence[Key] | np.ndarray) -> list[str | None]:
        """Hex content digests of the samples under ``keys``, None for a key the column
        does not hold (on a write checkout: staged changes included).

        One lookup for the whole batch; what :meth:`digest` gives key by key.
        """
        self._co.check_open()
        raw = encode_keys(keys.tolist() if isinstance(keys, np.ndarray) else list(keys))
        return [None if d is None else d.hex() for d in self._digests_of(raw)]

    def __contains__(self, key: object) -> bool:
        self._co.check_open()
        try:
            raw = encode_key(key)
        except (TypeError, ValueError):
            return False
        return self._digest_of(raw) is not None

    def _raw_keys(self) -> list[bytes]:
        co = self._co
        base = [k for leaf in co.parts.history.tree.leaves(self._tree) for k in leaf.keys]
        if not co.writable:
            return base
        self.flush()
        with co.parts.db.read() as txn:
            edits = co.parts.staging.edits(txn, self.name)
        if not edits:
            return base
        deleted = {k for k, v in edits if v is None}
        present = set(base)
        added = [k for k, v in edits if v is not None and k not in present]
        keep = [k for k in base if k not in deleted]
        return sorted(keep + added) if added else keep

    def keys(self) -> list[Key]:
        """Every key, in sorted order (ints before strs)."""
        self._co.check_open()
        return [decode_key(k) for k in self._raw_keys()]

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys())

    def values(self) -> Iterator[Value]:
        """Every sample, in key order."""
        for key in self.keys():
            yield self[key]

    def items(self) -> Iterator[tuple[Key, Value]]:
        """``(key, sample)`` pairs, in key order."""
        for key in self.keys():
            yield key, self[key]

    def __len__(self) -> int:
        self._co.check_open()
        if self._len is None:
            self.flush()
            co = self._co
            with co.parts.db.read() as txn:
                edits = co.parts.staging.edits(txn, self.name)
            n = self._base_count
            in_base = co.parts.history.tree.get_many(self._tree, [k for k, _ in edits])
            for (_, value), base in zip(edits, in_base, strict=True):
                if value is None and base is not None:
                    n -= 1
                elif value is not None and base is None:
                    n += 1
            self._len = n
        return self._len

    # -- writing ---------------------------------------------------------

    def _check_writable(self) -> None:
        self._co.check_open()
        if not self._co.writable:
            raise ReadOnlyError(
                f"column {self.name!r} belongs to a read-only checkout; "
                "open one with repo.checkout(write=True) to change it"
            )
        self._writer.check_column(self)

    def __setitem__(self, key: Key, value: Any) -> None:
        self._check_writable()
        raw_key = encode_key(key)
        payload, digest = prepare_one(self.schema, value, self.name, key)
        if isinstance(payload, np.ndarray):
            payload = payload.copy()  # the caller may change its array after this call
        if not self._buffer:
            self._writer.check_live()  # a stale writer learns at once, not at the flush
            self._buffered_bytes = 0
        self._writer.check_allowed(self, [raw_key], [digest])
        self._buffer[raw_key] = (payload, digest)
        self._buffered_bytes += len(payload) if isinstance(payload, bytes) else payload.nbytes
        self._len = None
        if len(self._buffer) >= BUFFER_SAMPLES or self._buffered_bytes >= BUFFER_BYTES:
            self.flush()

    def update(
        self,
        data: Mapping[Key, Any] | Sequence[Key] | np.ndarray,
        values: Any = None,
        *,
        allow_purged: bool = False,
    ) -> None:
        """Write many samples: ``update(mapping)`` or ``update(keys, batch)``.

        ``update(keys, batch)`` with a stacked array (leading axis = samples)
        is the fast path for fixed-shape columns. Every value is validated
        before anything is written.

        Content that was purged (``repo.purge_content``, or a key purged with
        the same content) raises :class:`~tensorcask.errors.PurgedDataError`
        and nothing is written, unless ``allow_purged=True``: then it is
        stored again and its tombstone lifted, which ``repo.tombstones()``
        records.
        """
        self._check_writable()
        if values is None:
            if not isinstance(data, Mapping):
                raise TypeError("update() takes a mapping, or keys and a batch of values")
            keys: list[Any] | np.ndarray = list(data.keys())
            batch: Any = list(data.values())
        else:
            keys = data if isinstance(data, np.ndarray) else list(data)
            batch = values
        raw_keys = encode_keys(keys)
        if not raw_keys:
            return
        payloads, digests = prepare_batch(self.schema, batch, len(raw_keys), self.name)
        self.flush()
        self._writer.write(self, raw_keys, payloads, digests, allow_purged=allow_purged)
        self._len = None

    def part_writer(self, *, allow_purged: bool = False) -> PartWriter:
        """A picklable writer that stores samples of this column from other processes.

        For parallel ingest: worker processes (a ``multiprocessing`` pool, Dask
        or Ray tasks) call ``writer.write(keys, values)``, which validates,
        hashes and durably stores the samples and returns a small
        :class:`~tensorcask.ingest.SamplesPart`; this process stages the parts
        with :meth:`add_parts`, and ``commit()`` publishes them::

            writer = images.part_writer()
            with ProcessPoolExecutor() as pool:
                parts = list(pool.map(writer.write, key_chunks, value_chunks))
            images.add_parts(parts)
            co.commit("parallel ingest")

        The writer stays valid while this column's schema is unchanged.
        """
        self._check_writable()
        return self._writer.part_writer(self, allow_purged=allow_purged)

    def add_parts(self, parts: Sequence[SamplesPart]) -> None:
        """Stage samples that :meth:`part_writer` writers stored, in one transaction.

        Parts are checked first (this repository, this column and schema, their
        files present); a bad part stages nothing. Later parts win over earlier
        ones (and over earlier writes) for the same key, as with :meth:`update`.
        """
        self._check_writable()
        parts = list(parts)
        if not parts:
            return
        self.flush()
        self._writer.add_parts(self, parts)
        self._len = None

    def __delitem__(self, key: Key) -> None:
        self._check_writable()
        raw_key = encode_key(key)
        self.flush()
        co = self._co
        in_base = co.parts.history.tree.get(self._tree, raw_key) is not None
        with co.parts.db.read() as txn:
            staged = co.parts.staging.get(txn, self.name, raw_key)
        if staged == DELETED or (staged is None and not in_base):
            raise KeyError(f"key {key!r} is not in column {self.name!r}")
        self._writer.delete(self, raw_key, staged_only=not in_base)
        self._len = None

    def __enter__(self) -> Column:
        self._check_writable()
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and not self._co.closed:
            self.flush()

    @property
    def pending(self) -> int:
        """Single-sample writes buffered in this process, not staged yet."""
        return len(self._buffer)

    def flush(self) -> None:
        """Stage the buffered single-sample writes now, durably.

        Until then they live only in this process (see the module notes); a
        failed flush keeps them buffered.
        """
        buffered = self._buffer
        if not buffered:
            return
        raw_keys = list(buffered)
        payloads = [p for p, _ in buffered.values()]
        digests = [d for _, d in buffered.values()]
        if self.schema.kind == "ndarray" and self.schema.fixed:
            stacked: np.ndarray | list[Payload] = np.stack(payloads)
        else:
            stacked = payloads
        self._writer.write(self, raw_keys, stacked, digests)
        buffered.clear()
        self._len = None

    def rebase(self, tree: bytes, count: int) -> None:
        """Point at a new base, dropping buffered writes (the checkout calls it
        after a commit or a reset of the staging area)."""
        self._buffer.clear()
        self._tree = tree
        self._base_count = count
        self._len = None
