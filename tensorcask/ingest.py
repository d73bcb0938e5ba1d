"""Parallel ingest: many processes store samples, the one writer publishes them.

The writer of a branch is one process (it holds the writer lock), but the
costly part of a write (validating, hashing, writing and fsyncing the
bytes) needs no lock. A :class:`PartWriter`, taken from a column of a write
checkout with :meth:`~tensorcask.columns.Column.part_writer`, is a small
picklable description of that column. Any process on a machine that sees
the repository's directory (a ``multiprocessing`` or
``concurrent.futures`` pool, Dask or Ray tasks) calls
:meth:`PartWriter.write` with a batch of keys and values: it validates and
hashes them, appends the contents the repository lacks to segment files of
its own (created exclusively, never shared with another process), fsyncs
them, and returns a :class:`SamplesPart`, the batch's keys, digests and new
index entries, without writing any metadata. The writer then hands the
parts to :meth:`~tensorcask.columns.Column.add_parts`, which checks them
(:func:`check_parts`) and stages them in one metadata transaction; the next
``commit()`` publishes them like any other write.

Crash safety follows from the order: bytes are durable before a part
exists, and nothing refers to them until the writer's transaction. A worker
or writer killed in between leaves segment files nothing refers to, which
``gc`` removes. Contents two workers stored at once are published once; the
other copy is garbage for ``gc``.
"""

from __future__ import annotations

import math
import os
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import CaskError, SchemaError
from .history.objects import ColumnSchema
from .keys import encode_keys
from .parts import RepositoryParts
from .purge import refuse
from .samples import prepare_batch
from .storage.base import BLOB, Location, group_locations
from .storage.content import ContentStore

__all__ = ["PartWriter", "SamplesPart", "check_parts"]


@dataclass(frozen=True, slots=True)
class SamplesPart:
    """Samples of one column stored by :meth:`PartWriter.write`, not staged yet.

    Small and picklable: it carries keys, digests and index entries, never
    sample bytes. Hand it to the column's
    :meth:`~tensorcask.columns.Column.add_parts` in the writer process.

    Attributes
    ----------
    repository:
        Identity of the repository it was written into.
    column, schema:
        The column it belongs to, and that column's schema when it was written.
    raw_keys, digests:
        The encoded keys and the content digest of each sample, in order.
    entries:
        ``(digest, encoded location)`` of the contents this part stored.
    allow_purged:
        Whether it was written with purged content allowed.
    """

    repository: tuple[int, int]
    column: str
    schema: dict[str, Any]
    raw_keys: list[bytes]
    digests: list[bytes]
    entries: list[tuple[bytes, bytes]]
    allow_purged: bool = False

    def __len__(self) -> int:
        return len(self.raw_keys)

    @property
    def stored(self) -> int:
        """How many contents this part stored (the rest were already there)."""
        return len(self.entries)


@dataclass(frozen=True, slots=True)
class PartWriter:
    """Stores samples of one column from any process; see the module notes.

    Picklable; each process opens the repository once, lazily. Take one
    from a write checkout's column with
    :meth:`~tensorcask.columns.Column.part_writer`.
    """

    path: str
    repository: tuple[int, int]
    column: str
    schema: dict[str, Any]
    allow_purged: bool = False

    def write(
        self, keys: Sequence[Any] | np.ndarray, values: np.ndarray | Sequence[Any]
    ) -> SamplesPart:
        """Validate, hash and durably store ``values[i]`` for ``keys[i]``.

        Takes what ``Column.update(keys, values)`` takes. Nothing is staged:
        pass the returned part to the column's ``add_parts``. Raises
        :class:`~tensorcask.errors.SchemaError` for a bad value and
        :class:`~tensorcask.errors.PurgedDataError` for purged content
        (unless the writer allows it), storing nothing.
        """
        keys = keys if isinstance(keys, np.ndarray) else list(keys)
        raw_keys = encode_keys(keys)
        schema = ColumnSchema.from_dict(self.schema)
        # Part writers run side by side (processes, threads): each hashes on its own
        # thread, as more hashing threads per writer only contend for the same cores.
        payloads, digests = prepare_batch(schema, values, len(raw_keys), self.column, threads=False)
        parts, store = _opened(self.path)
        if parts.db.identity != self.repository:
            raise CaskError(
                f"the repository at {self.path} was replaced after this part writer of column "
                f"{self.column!r} was made; take a new one from a write checkout"
            )
        with parts.db.read() as txn:
            tombstones = store.tombstones_in(txn)
            if tombstones.active and not self.allow_purged:
                refused = tombstones.refused(self.column, raw_keys, digests)
                if refused:
                    raise refuse(self.column, refused)
            missing = store.missing(txn, digests)
        entries = store.append(schema.backend, schema.compression, payloads, digests, missing)
        if schema.backend != "memmap":
            # An HDF5 file is complete only once closed. Memmap segments stay open for
            # this process's next part: rows are only appended, and a new file per part
            # would cost two more fsyncs (its directory, the high-water mark).
            store.seal()
        return SamplesPart(
            self.repository,
            self.column,
            self.schema,
            raw_keys,
            list(digests),
            entries,
            self.allow_purged,
        )


_REPOSITORIES: dict[tuple[str, int], RepositoryParts] = {}
_STORES: dict[tuple[str, int, int], ContentStore] = {}
_OPENED_LOCK = threading.Lock()


def _opened(path: str) -> tuple[RepositoryParts, ContentStore]:
    """This process's handles on the repository at ``path``, opened once, and this
    thread's content store (a store appends from one thread at a time)."""
    pid = os.getpid()  # a forked child opens its own
    with _OPENED_LOCK:
        parts = _REPOSITORIES.get((path, pid))
        if parts is None:
            parts = _REPOSITORIES[(path, pid)] = RepositoryParts(path)
        store = _STORES.get((path, pid, threading.get_ident()))
        if store is None:
            store = _STORES[(path, pid, threading.get_ident())] = parts.writable_store()
        return parts, store


def check_parts(
    parts: Sequence[SamplesPart],
    *,
    repository: tuple[int, int],
    column: str,
    schema: ColumnSchema,
    store: ContentStore,
) -> None:
    """Refuse parts that do not belong to this column of this repository, or whose
    files are missing or shorter than their entries say (a part is checked before
    anything of it is staged)."""
    wanted = schema.to_dict()
    sizes: dict[int, int] = {}  # memmap segment -> bytes the parts need
    for part in parts:
        if not isinstance(part, SamplesPart):
            raise TypeError(
                f"add_parts() takes the SamplesPart objects PartWriter.write returns, "
                f"not {type(part).__name__}"
            )
        if part.repository != repository:
            raise CaskError(
                f"a part for column {part.column!r} was written into another repository "
                "(or one since replaced at this path); write it again with a part writer "
                "of this checkout"
            )
        if part.column != column:
            raise SchemaError(
                f"a part of column {part.column!r} cannot be added to column {column!r}"
            )
        if part.schema != wanted:
            raise SchemaError(
                f"a part of column {column!r} was written for schema {part.schema}, but the "
                f"column's schema is now {wanted}; write it again with a new part writer"
            )
        if not (len(part.raw_keys) == len(part.digests) >= len(part.entries)):
            raise CaskError(f"a part of column {column!r} is malformed (counts differ)")
        if any(len(digest) != 32 for digest, _ in part.entries):
            raise CaskError(f"a part of column {column!r} holds a malformed digest")
        try:
            groups = group_locations([raw for _, raw in part.entries])
        except (ValueError, struct.error) as exc:
            raise CaskError(f"a part of column {column!r} holds a malformed location") from exc
        for group in groups:
            if group.backend != schema.backend:
                raise CaskError(f"a part of column {column!r} holds a foreign location")
            if group.backend != "memmap":
                continue  # the other backends check their bounds on every read
            row = np.dtype(group.dtype).itemsize * math.prod(group.shape)
            if row == 0:
                continue  # rows of no bytes live in no file
            for segment in np.unique(group.segments).tolist():
                last = int(group.offsets[group.segments == segment].max())
                sizes.setdefault(segment, 0)
                sizes[segment] = max(sizes[segment], (last + 1) * row)
    for segment, needed in sizes.items():
        loc = Location(schema.backend, segment, 0, BLOB, (0,), 0)
        path = store.path_of(loc)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            size = -1
        if size < needed:
            raise CaskError(
                f"a part of column {column!r} refers to bytes missing from {path}; "
                "write the part again"
            )
