"""Checkouts: a read-only view of one commit, or the one writer of a branch.

A :class:`ReadCheckout` is pinned to a commit id for its whole life: later
commits never change what it returns. A :class:`WriteCheckout` holds the
repository's writer lock, reads the staging area over its base commit, and
publishes commits. Using either after ``close()``, or a column taken from
it, raises :class:`~tensorcask.errors.CheckoutClosedError`.
"""

from __future__ import annotations

import atexit
import os
import sys
import warnings
import weakref
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any, NoReturn, cast

import numpy as np

from .columns import Column, ColumnContext, StagingSink
from .derived_tables import derive_table
from .errors import (
    CaskError,
    ConcurrentUpdateError,
    ReadOnlyError,
    RefNotFoundError,
    SchemaError,
)
from .hashing import canonical_dtype
from .history.diff import Diff, diff_columns
from .history.objects import ColumnRoot, ColumnSchema, CommitId
from .history.objectstore import WriteBatch
from .history.refs import HEADS
from .history.staging import DELETED, StagingState
from .history.tree import EMPTY_ROOT, Edit
from .ingest import PartWriter, SamplesPart, check_parts
from .keys import utf8, validate_name, validate_ref_name
from .parts import RepositoryParts
from .purge import lift, refuse
from .storage.base import Payload
from .storage.content import ContentStore
from .storage.index import Found
from .storage.lock import WriterLock
from .table_cache import TableCacheWarning

__all__ = ["Checkout", "Columns", "ReadCheckout", "WriteCheckout"]

_BACKENDS = ("memmap", "hdf5", "lmdb")
_COMPRESSIONS = (None, "gzip", "lzf", "zstd")


_DERIVE_RECORDS = 2_000_000
"""Above this many records, a commit derives a column's table only when it edits at
least 1% of them: the copy costs ~30 ms per million records."""
_LOCATED_LIMIT = 1 << 22
"""Contents whose locations a writer keeps for deriving tables at commit (the rest are
looked up)."""

MAX_SAMPLE_BYTES = 2**40
"""The largest sample an ndarray column may declare (1 TiB), by its shape or max_shape."""


def _dims(name: str, what: str, dims: Any, *, allow_none: bool) -> tuple[int | None, ...]:
    """``shape`` / ``max_shape`` as a tuple: ints >= 0 (and ``None`` where allowed)."""
    allowed = "ints >= 0 or None" if allow_none else "ints >= 0"
    if dims is None or isinstance(dims, int | np.integer):
        dims = (dims,)
    try:
        entries = tuple(dims)
    except TypeError:
        raise SchemaError(
            f"column {name!r}: {what} must be an int or a tuple of {allowed}, not "
            f"{type(dims).__name__} {dims!r}"
        ) from None
    for d in entries:
        if d is None and allow_none:
            continue
        if not isinstance(d, int | np.integer) or isinstance(d, bool | np.bool_):
            raise SchemaError(
                f"column {name!r}: {what} {entries} holds {d!r} of type {type(d).__name__}; "
                f"it must hold {allowed}"
            )
        if d < 0:
            raise SchemaError(
                f"column {name!r}: {what} {entries} holds the negative size {int(d)}; "
                f"it must hold {allowed}"
            )
    return tuple(None if d is None else int(d) for d in entries)


def _check_sample_size(
    name: str, shape: tuple[int | None, ...], bound: tuple[int, ...] | None, dtype: np.dtype
) -> None:
    """Refuse a shape (or max_shape) whose samples could not be stored at all."""
    dims = list(shape)
    if bound is not None:
        dims = [b if d is None else d for d, b in zip(shape, bound, strict=True)]
    size = dtype.itemsize
    for d in dims:
        size *= 1 if d is None else d
    if size > MAX_SAMPLE_BYTES:
        which = "max_shape" if bound is not None and None in shape else "shape"
        raise SchemaError(
            f"column {name!r}: a sample of {which} {tuple(dims)} and dtype {dtype} would take "
            f"{size} bytes; a sample may take at most {MAX_SAMPLE_BYTES} bytes (1 TiB). "
            "Split such data over several keys or columns"
        )


class Columns(MutableMapping[str, "Column"]):
    """The columns of a checkout, by name (``del`` stages a column deletion)."""

    def __init__(self, checkout: Checkout) -> None:
        self._co = checkout

    def __getitem__(self, name: str) -> Column:
        return self._co[name]

    def __setitem__(self, name: str, value: Column) -> None:
        raise TypeError(
            "create columns with add_ndarray_column / add_str_column / add_bytes_column"
        )

    def __delitem__(self, name: str) -> None:
        if not isinstance(self._co, WriteCheckout):
            self._co._check_open()
            raise ReadOnlyError(f"cannot delete column {name!r} through a read-only checkout")
        self._co.delete_column(name)

    def __iter__(self) -> Iterator[str]:
        self._co._check_open()
        return iter(sorted(self._co._columns))

    def __len__(self) -> int:
        self._co._check_open()
        return len(self._co._columns)

    def __repr__(self) -> str:
        return f"<Columns {sorted(self._co._columns)}>"


class Checkout:
    """What both kinds of checkout share."""

    writable = False

    def __init__(
        self,
        parts: RepositoryParts,
        commit: CommitId | None,
        store: ContentStore,
        sink: StagingSink | None = None,
        columns: dict[str, Column] | None = None,
    ) -> None:
        self._parts = parts
        self._db = parts.db
        self._history = parts.history
        self._staging = parts.staging
        self._store = store
        self._context = ColumnContext(parts, store, sink)
        self.commit_id = commit
        # ``columns``: a dict the caller shares (a writer's staging sink checks it)
        self._columns: dict[str, Column] = {} if columns is None else columns
        self._columns.update(
            (name, Column(self._context, name, root.schema, root.tree, root.count))
            for name, root in self._history.columns(commit).items()
        )

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._context.closed

    def _check_open(self) -> None:
        self._context.check_open()

    @property
    def columns(self) -> Columns:
        """The checkout's columns, by name."""
        self._check_open()
        return Columns(self)

    def __getitem__(self, name: str) -> Column:
        self._check_open()
        try:
            return self._columns[name]
        except KeyError:
            known = ", ".join(sorted(self._columns)) or "none"
            raise KeyError(f"no column {name!r} in this checkout (columns: {known})") from None

    def __contains__(self, name: object) -> bool:
        self._check_open()
        return name in self._columns

    def close(self) -> None:
        """Release the checkout. Idempotent."""
        self._context.closed = True

    def __enter__(self) -> Checkout:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ReadCheckout(Checkout):
    """A read-only view of one commit.

    The write methods of :class:`WriteCheckout` (``commit``, ``add_*_column``,
    ``delete_column``, ``reset_staging_area``) and writes through its columns
    raise :class:`~tensorcask.errors.ReadOnlyError`.

    Attributes
    ----------
    commit_id:
        The full id of the commit it is pinned to (None for an empty history).
    """

    def __init__(self, parts: RepositoryParts, commit: CommitId | None) -> None:
        super().__init__(parts, commit, parts.store)

    def __enter__(self) -> ReadCheckout:
        self._check_open()
        return self

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"commit={self.commit_id}"
        return f"<ReadCheckout {state} columns={sorted(self._columns)}>"

    # -- writes: refused -------------------------------------------------

    def _refuse(self, action: str) -> NoReturn:
        self._check_open()
        pinned = self.commit_id[:12] if self.commit_id else "an empty history"
        raise ReadOnlyError(
            f"cannot {action} through a read-only checkout (pinned to {pinned}); "
            "open a write checkout with repo.checkout(write=True) to change a branch"
        )

    def add_ndarray_column(self, name: str, *args: object, **kwargs: object) -> NoReturn:
        """Refused: raises :class:`~tensorcask.errors.ReadOnlyError`."""
        self._refuse(f"add column {name!r}")

    def add_str_column(self, name: str) -> NoReturn:
        """Refused: raises :class:`~tensorcask.errors.ReadOnlyError`."""
        self._refuse(f"add column {name!r}")

    def add_bytes_column(self, name: str) -> NoReturn:
        """Refused: raises :class:`~tensorcask.errors.ReadOnlyError`."""
        self._refuse(f"add column {name!r}")

    def delete_column(self, name: str) -> NoReturn:
        """Refused: raises :class:`~tensorcask.errors.ReadOnlyError`."""
        self._refuse(f"delete column {name!r}")

    def commit(self, message: str) -> NoReturn:
        """Refused: raises :class:`~tensorcask.errors.ReadOnlyError`."""
        self._refuse("commit")

    def reset_staging_area(self) -> NoReturn:
        """Refused: raises :class:`~tensorcask.errors.ReadOnlyError`."""
        self._refuse("reset the staging area")


class _StagingWriter:
    """The staging sink a write checkout hands its columns (see :class:`StagingSink`):
    stores samples, then publishes their index entries and staged records."""

    def __init__(
        self,
        parts: RepositoryParts,
        store: ContentStore,
        lock: WriterLock,
        columns: dict[str, Column],
        *,
        allow_purged: bool = False,
    ) -> None:
        self.parts = parts
        self.store = store
        self.lock = lock
        self.columns = columns  # the checkout's own dict, updated in place
        self.allow_purged = allow_purged
        self.located: dict[bytes, bytes] = {}  # contents stored since the last commit

    def lookup(self, digests: list[bytes]) -> list[Found]:
        """Encoded locations of contents: the ones this writer stored, then the index's."""
        located = self.located
        out: list[Found] = [located.get(d) for d in digests]
        rest = [i for i, raw in enumerate(out) if raw is None]
        if rest:
            for i, raw in zip(rest, self.store.lookup_raw([digests[i] for i in rest]), strict=True):
                out[i] = raw
        return out

    def write(
        self,
        column: Column,
        raw_keys: list[bytes],
        payloads: np.ndarray | list[Payload],
        digests: list[Any],
        *,
        allow_purged: bool = False,
    ) -> None:
        db, store = self.parts.db, self.store
        db.check_identity()  # never write payloads for a removed repository
        self.lock.check_owned()
        with db.read() as txn:
            tombstones = store.tombstones_in(txn)
            refused = []
            if tombstones.active:
                refused = tombstones.refused(column.name, raw_keys, digests)
            if refused and not (allow_purged or self.allow_purged):
                raise refuse(column.name, refused)
            missing = store.missing(txn, digests)
        restored = [d for d in dict.fromkeys(digests) if d in tombstones.gone]
        schema = column.schema
        entries = store.append(schema.backend, schema.compression, payloads, digests, missing)
        if schema.backend == "memmap" and len(self.located) + len(entries) <= _LOCATED_LIMIT:
            self.located.update(entries)  # for derived tables (beyond: the commit looks up)
        with db.write() as txn:
            store.publish(txn, entries)
            self.parts.staging.put(txn, column.name, raw_keys, digests)
            if refused:
                lift(self.parts, column.name, refused, self.parts.who())
        if refused or restored:
            self.parts.store.purges_changed()
        store.maintain()

    def check_live(self) -> None:
        self.parts.db.check_identity()
        self.lock.check_owned()

    def part_writer(self, column: Column, *, allow_purged: bool = False) -> PartWriter:
        return PartWriter(
            str(self.parts.path),
            self.parts.db.identity,
            column.name,
            column.schema.to_dict(),
            allow_purged or self.allow_purged,
        )

    def add_parts(self, column: Column, parts: Sequence[SamplesPart]) -> None:
        db, store = self.parts.db, self.store
        self.check_live()
        check_parts(
            parts,
            repository=db.identity,
            column=column.name,
            schema=column.schema,
            store=store,
        )
        raw_keys = [k for part in parts for k in part.raw_keys]
        digests = [d for part in parts for d in part.digests]
        entries = [e for part in parts for e in part.entries]
        allowed = self.allow_purged or all(part.allow_purged for part in parts)
        with db.write() as txn:
            # The workers checked tombstones when they wrote; this repeats it under
            # the writer lock, as write() does.
            tombstones = store.tombstones_in(txn)
            refused = []
            if tombstones.active:
                refused = tombstones.refused(column.name, raw_keys, digests)
            if refused and not allowed:
                raise refuse(column.name, refused)
            # Contents stored twice (by two workers, or already by this writer) are
            # published once; the other copy is left to gc.
            new = [entries[i] for i in store.missing(txn, [d for d, _ in entries])]
            store.publish(txn, new)
            self.parts.staging.put(txn, column.name, raw_keys, digests)
            if refused:
                lift(self.parts, column.name, refused, self.parts.who())
        if refused or any(d in tombstones.gone for d, _ in new):
            self.parts.store.purges_changed()
        if column.schema.backend == "memmap" and len(self.located) + len(new) <= _LOCATED_LIMIT:
            self.located.update(new)
        store.maintain()

    def check_allowed(self, column: Column, raw_keys: list[bytes], digests: list[Any]) -> None:
        if self.allow_purged:
            return
        tombstones = self.store.tombstones()  # purges wait for the writer lock we hold
        if tombstones.active:
            refused = tombstones.refused(column.name, raw_keys, digests)
            if refused:
                raise refuse(column.name, refused)

    def delete(self, column: Column, raw_key: bytes, *, staged_only: bool) -> None:
        self.lock.check_owned()
        staging = self.parts.staging
        with self.parts.db.write() as txn:
            if staged_only:
                staging.unstage(txn, column.name, raw_key)
            else:
                staging.put(txn, column.name, [raw_key], [DELETED])

    def check_column(self, column: Column) -> None:
        if self.columns.get(column.name) is not column:
            raise KeyError(
                f"column {column.name!r} was deleted or replaced in this checkout; "
                f"use co[{column.name!r}] to get the current one"
            )


class WriteCheckout(Checkout):
    """The single writer of one branch.

    Attributes
    ----------
    branch:
        The branch commits go to.
    commit_id:
        The base commit of the staging area (the branch head).
    """

    writable = True

    def __init__(self, parts: RepositoryParts, branch: str, *, allow_purged: bool = False) -> None:
        if not isinstance(branch, str):
            raise TypeError(f"branch name must be a str, not {type(branch).__name__}")
        parts.require_writable("open a write checkout")
        if parts.head(branch) is None:  # a new branch; an existing one keeps any old name
            validate_ref_name(branch, "branch name")
        self.branch = branch
        self._pid = os.getpid()  # a forked copy never flushes its parent's buffered writes
        self._lock: WriterLock = parts.writer_lock()
        self._lock.acquire(f"write checkout of branch {branch!r}")
        try:
            state = self._open_staging(parts, branch)
            store = parts.writable_store()
            base = CommitId(state.base) if state.base else None
            columns: dict[str, Column] = {}
            sink = _StagingWriter(parts, store, self._lock, columns, allow_purged=allow_purged)
            super().__init__(parts, base, store, sink, columns)
            self._apply_staged_columns(state)
        except BaseException:
            self._lock.release()
            raise
        _track(self)

    @staticmethod
    def _open_staging(parts: RepositoryParts, branch: str) -> StagingState:
        staging, refs = parts.staging, parts.refs
        with parts.db.write() as txn:
            head = refs.get(HEADS + branch)
            if head is None:
                refs.check_new(HEADS, branch)
            if head is None and refs.listing(HEADS):
                raise RefNotFoundError(
                    f"branch {branch!r} does not exist; create it first with "
                    f"repo.create_branch({branch!r}) (or `tensorcask branch {branch}`)"
                )
            state = staging.state(txn)
            if state is not None and staging.has_changes(txn):
                if state.branch != branch:
                    raise CaskError(
                        f"branch {state.branch!r} has uncommitted staged changes; commit or reset "
                        f"them in a write checkout of {state.branch!r} before writing to {branch!r}"
                    )
                if state.base != head:
                    raise ConcurrentUpdateError(
                        f"staged changes of branch {branch!r} were made on commit {state.base} "
                        f"but the branch now points at {head}; reset the staging area"
                    )
            else:
                state = StagingState(branch, head, {})
                staging.save_state(txn, state)
            refs.set_current_branch(branch)
        return state

    def _apply_staged_columns(self, state: StagingState) -> None:
        for name, op in state.columns.items():
            if op["op"] == "delete":
                self._columns.pop(name, None)
            else:
                schema = ColumnSchema.from_dict(op["schema"])
                self._columns[name] = Column(self._context, name, schema, EMPTY_ROOT, 0)

    def __enter__(self) -> WriteCheckout:
        self._check_open()
        return self

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"branch={self.branch!r} base={self.commit_id}"
        return f"<WriteCheckout {state} columns={sorted(self._columns)}>"

    # -- columns ---------------------------------------------------------

    def add_ndarray_column(
        self,
        name: str,
        shape: Sequence[int | None] | int,
        dtype: Any,
        *,
        max_shape: Sequence[int] | None = None,
        backend: str | None = None,
        compression: str | None = None,
    ) -> Column:
        """Create a column of numpy arrays.

        Parameters
        ----------
        name:
            Column name (1-255 UTF-8 bytes, no ``/`` or control characters).
        shape:
            Sample shape; ``None`` marks a variable dimension, ``()`` scalars.
        dtype:
            Any numpy dtype of booleans or numbers.
        max_shape:
            Upper bound per dimension for variable-shape columns.
        backend:
            ``"memmap"`` (default for fixed shapes), ``"hdf5"`` (default for
            variable shapes and compression) or ``"lmdb"``.
        compression:
            ``"zstd"`` (Zstandard, through the hdf5plugin package), ``"gzip"`` or
            ``"lzf"``, stored in HDF5: less disk, slower reads (every read still
            returns a verified copy).
        """
        shape_t = _dims(name, "shape", shape, allow_none=True)
        try:
            np_dtype = canonical_dtype(np.dtype(dtype))
        except TypeError as exc:
            raise SchemaError(f"column {name!r}: {dtype!r} is not a numpy dtype") from exc
        if np_dtype.kind not in "biufc" or np_dtype.hasobject:
            raise SchemaError(
                f"column {name!r}: dtype {np_dtype} is not supported; use bool or numeric dtypes "
                "(store text in add_str_column, raw bytes in add_bytes_column)"
            )
        bound: tuple[int, ...] | None = None
        if max_shape is not None:
            bound = cast(tuple[int, ...], _dims(name, "max_shape", max_shape, allow_none=False))
            if len(bound) != len(shape_t):
                raise SchemaError(
                    f"column {name!r}: max_shape {bound} must have the column's rank {len(shape_t)}"
                )
            for fixed, limit in zip(shape_t, bound, strict=True):
                if fixed is not None and fixed != limit:
                    raise SchemaError(
                        f"column {name!r}: max_shape {bound} disagrees with fixed shape {shape_t}"
                    )
        _check_sample_size(name, shape_t, bound, np_dtype)
        if compression not in _COMPRESSIONS:
            raise SchemaError(f"column {name!r}: compression must be one of {_COMPRESSIONS}")
        fixed = None not in shape_t
        if backend is None:
            backend = "memmap" if fixed and compression is None else "hdf5"
        if backend not in _BACKENDS:
            raise SchemaError(f"column {name!r}: backend must be one of {_BACKENDS}")
        if backend == "memmap" and not fixed:
            raise SchemaError(f"column {name!r}: the memmap backend needs a fixed shape")
        if compression is not None and backend != "hdf5":
            raise SchemaError(f"column {name!r}: compression needs the hdf5 backend")
        schema = ColumnSchema("ndarray", np_dtype.str, shape_t, bound, backend, compression)
        return self._add_column(name, schema)

    def add_str_column(self, name: str) -> Column:
        """Create a column of Python ``str`` values."""
        return self._add_column(name, ColumnSchema("str"))

    def add_bytes_column(self, name: str) -> Column:
        """Create a column of Python ``bytes`` values."""
        return self._add_column(name, ColumnSchema("bytes"))

    def _add_column(self, name: str, schema: ColumnSchema) -> Column:
        self._check_open()
        validate_name(name)
        if name in self._columns:
            raise SchemaError(
                f"column {name!r} already exists; delete it first with co.delete_column({name!r})"
            )
        with self._db.write() as txn:
            state = self._state(txn)
            self._staging.drop_column(txn, name)
            state.columns[name] = {"op": "add", "schema": schema.to_dict()}
            self._staging.save_state(txn, state)
        column = Column(self._context, name, schema, EMPTY_ROOT, 0)
        self._columns[name] = column
        return column

    def delete_column(self, name: str) -> None:
        """Remove column ``name`` (and all its samples) in the next commit."""
        self._check_open()
        if name not in self._columns:
            raise KeyError(f"no column {name!r} in this checkout")
        with self._db.write() as txn:
            state = self._state(txn)
            self._staging.drop_column(txn, name)
            in_base = name in self._history.columns(self.commit_id)
            if in_base:
                state.columns[name] = {"op": "delete"}
            else:
                state.columns.pop(name, None)
            self._staging.save_state(txn, state)
        self._columns.pop(name).rebase(EMPTY_ROOT, 0)  # drops its buffered writes

    def _state(self, txn: Any) -> StagingState:
        state = self._staging.state(txn)
        if state is None or state.branch != self.branch:
            raise ConcurrentUpdateError(
                "the staging area changed under this checkout (another writer used it); "
                "close this checkout and open a new one"
            )
        return state

    def flush(self) -> None:
        """Stage every column's buffered single-sample writes now, durably.

        ``commit()`` and ``close()`` flush too; until a flush, ``col[k] = v``
        writes live only in this process.
        """
        self._check_open()
        self._flush_all()

    def _flush_all(self) -> None:
        for column in self._columns.values():
            column.flush()

    # -- commit / reset --------------------------------------------------

    def commit(self, message: str) -> CommitId:
        """Record the staged changes as a new commit on :attr:`branch`.

        Returns the new commit's full id. Atomic: after a crash the commit is
        either wholly there or wholly absent.
        """
        self._check_open()
        if not isinstance(message, str):
            raise TypeError(f"the commit message must be a str, not {type(message).__name__}")
        utf8(message, "commit message")
        self._flush_all()
        self._db.check_identity()
        self._lock.check_owned()
        batch = WriteBatch()
        roots, edits = self._staged_roots(batch, require_changes=True)
        history = self._history
        config = self._parts.config()
        commit = history.new_commit(
            batch,
            parents=(self.commit_id,) if self.commit_id else (),
            columns=roots,
            author=config["user_name"],
            email=config["user_email"],
            message=message,
        )
        with self._db.write() as txn:  # objects, ref and staging: one transaction
            history.objects.write(batch)
            if not history.refs.set_if_equals(HEADS + self.branch, self.commit_id, commit.id):
                raise ConcurrentUpdateError(
                    f"branch {self.branch!r} moved while this checkout was writing; "
                    "reset the staging area and reapply the changes"
                )
            self._staging.clear(txn)
            self._staging.save_state(txn, StagingState(self.branch, commit.id, {}))
        parents = history.columns(self.commit_id) if self.commit_id else {}
        self.commit_id = commit.id
        self._reload_columns(roots)
        self._derive_tables(parents, roots, edits)
        return commit.id

    def _derive_tables(
        self,
        parents: Mapping[str, ColumnRoot],
        roots: Mapping[str, ColumnRoot],
        edits: Mapping[str, list[Edit]],
    ) -> None:
        """Save the column tables of a new commit, derived from its parent's
        (:mod:`~tensorcask.derived_tables`): its first reader then maps them."""
        tables = self._parts.tables
        writer = cast(_StagingWriter, self._context.sink)
        try:
            # Tables are named by purge generation: a purge another handle made since
            # this process last looked must not go unseen (we hold the writer lock).
            self._parts.store.tombstones(fresh=True)
            for name, column_edits in edits.items():
                root = roots.get(name)
                if root is None or not column_edits:
                    continue
                parent = parents.get(name)
                base = None
                if parent is not None and parent.schema == root.schema and parent.count:
                    # (a column deleted and re-created, or empty: every record is an edit)
                    if parent.count > max(_DERIVE_RECORDS, 100 * len(column_edits)):
                        continue  # copying a huge table for a small change: built when read
                    base = tables.cached(parent, in_use=False)
                    if base is None or base.damaged:
                        continue  # no sound parent table at hand: built when first read
                table = derive_table(base, column_edits, writer.lookup, root.schema, root.count)
                if table is not None:
                    tables.put(root, table)
        except (CaskError, OSError) as exc:
            warnings.warn(
                f"the column tables of commit {self.commit_id} were not saved ({exc}); "
                "they are built when first read",
                TableCacheWarning,
                stacklevel=3,
            )
        finally:
            writer.located.clear()

    def _staged_roots(
        self, batch: WriteBatch, *, require_changes: bool
    ) -> tuple[dict[str, ColumnRoot], dict[str, list[Edit]]]:
        """The column roots a commit of the staged changes would record, and the
        record edits of each column.

        New record pages go into ``batch``; only a commit stores them.
        """
        history = self._history
        tree = history.tree.with_batch(batch)
        with self._db.read() as txn:
            state = self._state(txn)
            edits = self._staging.all_edits(txn)
        if require_changes and not edits and not state.columns:
            raise CaskError(f"nothing to commit on branch {self.branch!r}: no staged changes")
        roots = dict(history.columns(self.commit_id))
        for name, op in state.columns.items():
            if op["op"] == "delete":
                roots.pop(name, None)
            else:
                roots[name] = ColumnRoot(ColumnSchema.from_dict(op["schema"]), EMPTY_ROOT, 0)
        for name, column_edits in edits.items():
            if name not in roots:
                continue  # edits of a column deleted afterwards
            old = roots[name]
            new_root = tree.update(old.tree, column_edits)
            roots[name] = ColumnRoot(old.schema, new_root, tree.count(new_root))
        return roots, edits

    def diff(self) -> Diff:
        """Staged changes against the base commit (flushes buffered writes)."""
        self._check_open()
        self._flush_all()
        batch = WriteBatch()  # pages of the staged trees, read by the diff, never stored
        staged, _ = self._staged_roots(batch, require_changes=False)
        return diff_columns(
            self._history.tree.with_batch(batch), self._history.columns(self.commit_id), staged
        )

    def _reload_columns(self, roots: dict[str, ColumnRoot]) -> None:
        fresh: dict[str, Column] = {}
        for name, root in roots.items():
            column = self._columns.get(name)
            if column is not None and column.schema == root.schema:
                column.rebase(root.tree, root.count)
                fresh[name] = column
            else:
                fresh[name] = Column(self._context, name, root.schema, root.tree, root.count)
        self._columns.clear()  # in place: the staging writer shares this dict
        self._columns.update(fresh)

    def reset_staging_area(self) -> None:
        """Drop every staged change; the checkout returns to its base commit."""
        self._check_open()
        for column in self._columns.values():
            column.rebase(EMPTY_ROOT, 0)  # drops its buffered writes
        with self._db.write() as txn:
            self._staging.clear(txn)
            self._staging.save_state(txn, StagingState(self.branch, self.commit_id, {}))
        self._reload_columns(self._history.columns(self.commit_id))

    def close(self) -> None:
        """Flush buffered writes, seal segments and release the writer lock.

        In a forked copy of the process that opened it, nothing is flushed:
        the buffered writes belong to the parent.
        """
        if self.closed:
            return
        try:
            if self._lock.held and self._pid == os.getpid():
                self._flush_all()
        finally:
            self._context.closed = True
            self._store.close()
            self._lock.release()

    def __del__(self) -> None:
        if not getattr(self, "closed", True) and getattr(self, "_lock", None) is not None:
            if self._pid == os.getpid() and not sys.is_finalizing():
                _close_unclosed(self)  # dropped without close(): still stages its writes
                return
            try:
                dropped = sum(column.pending for column in self._columns.values())
                if dropped:  # a forked copy, or interpreter teardown: never lost silently
                    warnings.warn(
                        f"a write checkout of branch {self.branch!r} was dropped without "
                        f"close(): {dropped} buffered writes were not staged; call "
                        "co.flush(), co.commit() or co.close() (or use `with`)",
                        ResourceWarning,
                        stacklevel=2,
                    )
                self._store.close()
                self._lock.release()
            except Exception:
                pass


_OPEN_WRITERS: weakref.WeakSet[WriteCheckout] = weakref.WeakSet()


def _close_unclosed(checkout: WriteCheckout) -> None:
    """Close a checkout nobody closed (staging its buffered writes), or say why its
    writes could not be staged."""
    try:
        checkout.close()
    except Exception as exc:
        warnings.warn(
            f"a write checkout of branch {checkout.branch!r} was not closed, and staging its "
            f"buffered writes failed: {exc}",
            UserWarning,
            stacklevel=2,
        )


def _close_open_writers() -> None:
    """At interpreter exit, stage the buffered writes of checkouts left open (a forked
    copy's close() flushes nothing)."""
    for checkout in list(_OPEN_WRITERS):
        if not checkout.closed:
            _close_unclosed(checkout)


def _track(checkout: WriteCheckout) -> None:
    """Remember an open write checkout for :func:`_close_open_writers`.

    The exit hook is registered at the first checkout, after the hooks that
    release the repository's files (``weakref.finalize`` registers its own
    at the first handle): exit hooks run last-registered first, so the
    checkouts are closed while their files are still open.
    """
    global _EXIT_HOOKED
    if not _EXIT_HOOKED:
        atexit.register(_close_open_writers)
        _EXIT_HOOKED = True
    _OPEN_WRITERS.add(checkout)


_EXIT_HOOKED = False
