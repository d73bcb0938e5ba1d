"""A loader source over a remote: some columns of one commit, read without a clone.

:class:`StreamSource` is to a remote URL what
:class:`~tensorcask.loaders.core.RepoSource` is to a local path, with the
same surface (``commit``, ``columns``, ``index``, ``roots``, ``read``), so
the torch and tf.data loaders take either. It resolves the commit once, at
construction; opens the commit's tables
(:mod:`tensorcask.streaming.table`); and reads samples piece by piece
through a cache (:mod:`tensorcask.streaming.fetch`, :mod:`tensorcask.streaming.cache`).

It pickles as its arguments, the commit id and the column roots (plus the
tables themselves when there is no cache folder to load them from), and
opens its own connection lazily in each process that reads, so it is safe
with DataLoader workers under fork and spawn.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..errors import CorruptionError, RemoteError, sample_error
from ..history.objects import ColumnRoot, CommitId
from ..keys import Key, decode_key
from ..layout import FORMAT_FILE
from ..locations import RecordDigests, RecordKeys
from ..parts import tree_bytes
from ..remote.remote import Remote
from ..remote.samples import array_head, check_entries, entry_value
from ..remote.tombstones import read_records
from ..samples import Value, from_payload
from ..storage.tombstones import build_tombstones
from ..streaming.cache import (
    DEFAULT_DISK_LIMIT,
    DEFAULT_MEMORY_LIMIT,
    DiskCache,
    MemoryCache,
    PieceCache,
)
from ..streaming.fetch import Piece, PieceFetcher, Wanted
from ..streaming.gather import distinct, gather_rows
from ..streaming.pieces import check_piece
from ..streaming.table import (
    StreamTable,
    default_commit,
    missing_error,
    open_commit,
    stream_tables,
    table_from_arrays,
)
from ..table_cache import TableCache
from .core import SampleIndex, selection
from .plan import checked_int

__all__ = ["StreamSource", "WarmResult"]

_TABLES_SHARE = 8  # a cache folder gives 1/8 of its bound to tables, the rest to pieces
PREFETCH_BYTES = 8 << 20  # what the iterable dataset fetches ahead of its reads, about
_MIN_WINDOW = 256  # ... but at least this many samples
_MAX_WINDOW = 16384  # ... and at most this many
_HOT_PIECES = 4096  # pieces a process holds in hand at most ...
_HOT_BYTES = 256 << 20  # ... and bytes of them (also at most the cache's bound)


def _local_repository(url: str) -> str | None:
    """The path of the local repository a ``file://`` URL names, if it names one."""
    if not url.startswith("file://"):
        return None
    path = Path(url.removeprefix("file://"))
    return str(path) if (path / FORMAT_FILE).is_file() else None


@dataclass(frozen=True)
class WarmResult:
    """What :meth:`StreamSource.warm` did (and so
    :func:`~tensorcask.loaders.sources.warm_cache`).

    Attributes
    ----------
    commit:
        The full id of the commit whose samples were cached.
    samples:
        Samples whose pieces are now cached (unless the bound is smaller than the data).
    requests, bytes:
        Ranged reads issued and bytes downloaded (0 when all was cached already).
    cached, limit:
        Bytes the cache holds now (pieces and tables), and its bound.
    """

    commit: str
    samples: int
    requests: int
    bytes: int
    cached: int
    limit: int


_OPENING = threading.Lock()  # tf.data reads from several threads at once


def _fresh_lock_after_fork() -> None:
    global _OPENING  # a lock held by another thread at the fork would never be released
    _OPENING = threading.Lock()


os.register_at_fork(after_in_child=_fresh_lock_after_fork)


class _Opened:
    """What one process holds open: the remote, the caches and the fetcher."""

    def __init__(self, source: StreamSource) -> None:
        self.pid = os.getpid()
        self.remote = Remote("", source.url, source.storage_options)
        limit = source.cache_limit_bytes
        self.tables: TableCache | None = None
        self.pieces: PieceCache
        if source.cache_dir is None:
            self.pieces = MemoryCache(limit)
        else:
            share = limit // _TABLES_SHARE
            self.tables = TableCache(source.cache_dir / "tables", writable=True, limit=share)
            self.pieces = DiskCache(source.cache_dir / "samples", limit - share)
        self.fetcher = PieceFetcher(self.remote.data, self.pieces)
        # Pieces in hand, per column by piece number: a batch whose pieces are all here
        # asks neither the cache nor the fetcher. Bounded; emptied when full.
        self.hot: list[dict[int, memoryview]] = [{} for _ in source.columns]
        self._hot_count = 0
        self._hot_bytes = 0
        self._hot_limit = min(limit, _HOT_BYTES)

    def keep(self, pieces: dict[tuple[int, int], Piece]) -> None:
        """Hold sound pieces for the next batches."""
        for (c, p), piece in pieces.items():
            if piece.damaged is not None:
                continue
            size = len(piece.data)
            if self._hot_count >= _HOT_PIECES or self._hot_bytes + size > self._hot_limit:
                for hot in self.hot:
                    hot.clear()
                self._hot_count = self._hot_bytes = 0
            self.hot[c][p] = piece.data
            self._hot_count += 1
            self._hot_bytes += size


class StreamSource:
    """Some columns of one commit of a remote, read by ranged reads through a cache.

    Parameters
    ----------
    url:
        The remote's URL (any fsspec URL: ``s3://bucket/prefix``, ``file:///path``).
    columns:
        Column names, in the order samples yield them.
    commit:
        Any ref of the remote; resolved once, here, to a full commit id.
        Default: the remote's ``main`` branch now.
    keys:
        Restrict and order the samples (default: keys present in every
        column, sorted).
    storage_options:
        Passed to fsspec (``endpoint_url``, credentials, ...).
    cache_dir:
        A folder for checked pieces and tables, shared by every process that
        names it; None keeps pieces in each process's memory.
    cache_limit_bytes:
        The cache's bound (default 16 GiB on disk, 512 MiB in memory).
    skip_purged:
        Leave out samples the remote's purge records name, instead of raising
        :class:`~tensorcask.errors.PurgedDataError` when one is read (decided
        here, once, for every worker and rank).
    """

    def __init__(
        self,
        url: str,
        columns: Sequence[str],
        commit: str | None = None,
        keys: Sequence[Key] | np.ndarray | None = None,
        *,
        storage_options: dict[str, Any] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_limit_bytes: int | None = None,
        skip_purged: bool = False,
    ) -> None:
        self.columns, self.keys = selection(columns, keys)
        self.skip_purged = skip_purged
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        default = DEFAULT_MEMORY_LIMIT if cache_dir is None else DEFAULT_DISK_LIMIT
        self.cache_limit_bytes = (
            default
            if cache_limit_bytes is None
            else checked_int(cache_limit_bytes, "cache_limit_bytes", 1)
        )
        opened = _Opened(self)
        try:
            opened.remote.require()
        except RemoteError:
            local = _local_repository(url)
            if local is None:
                raise
            raise RemoteError(
                f"{url} is a local repository, not a remote: pass its path ({local}) to read it "
                "directly, or push it to a remote and stream from that"
            ) from None
        ref = commit if commit is not None else default_commit(opened.remote)
        self.commit: CommitId
        self.commit, found = open_commit(opened.remote, ref)
        missing = [c for c in self.columns if c not in found]
        if missing:
            raise KeyError(
                f"commit {self.commit[:12]} of {url} has no column {missing[0]!r} (columns: "
                f"{', '.join(sorted(found)) or 'none'})"
            )
        self._roots = [found[c] for c in self.columns]
        self._opened: _Opened | None = opened
        records = read_records(opened.remote)
        self._purges = sorted(records.values(), key=lambda d: (d.get("time", 0), d["id"]))
        self._tombstones = build_tombstones(len(self._purges), self._purges, set())
        self._tables = self._open_tables(opened)
        self._index = SampleIndex(self.columns, self._tables, self.keys, warn=True)
        self.skipped: np.ndarray | None = None
        if skip_purged and self._tombstones.active:
            self.skipped = self._index.purged(self._tombstones)
            self._index.leave_out(self.skipped)
        if records:
            opened.remote.data.refresh()
            packs = {p for index in opened.remote.data.indexes() for p, _ in index.packs}
            opened.pieces.retain_packs(packs, self._purge_mark)
        self._window: int | None = None

    @property
    def _purge_mark(self) -> str:
        """A name for the remote's purge records ("" when it has none)."""
        if not self._purges:
            return ""
        ids = "".join(sorted(d["id"] for d in self._purges)).encode()
        return "-purged-" + hashlib.blake2b(ids, digest_size=8).hexdigest()

    def _open_tables(self, opened: _Opened) -> list[StreamTable]:
        def purged(c: int, table: StreamTable) -> np.ndarray:
            return self._tombstones.purged_rows(self.columns[c], table.digests, table.positions)

        return stream_tables(opened.remote, self._roots, opened.tables, self._purge_mark, purged)

    @property
    def path(self) -> str:
        """The remote's URL (what ``repr`` of a dataset shows)."""
        return self.url

    def __getstate__(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "storage_options": self.storage_options,
            "cache_dir": None if self.cache_dir is None else str(self.cache_dir),
            "cache_limit_bytes": self.cache_limit_bytes,
            "columns": self.columns,
            "commit": self.commit,
            "keys": self.keys,
            "roots": self._roots,
            "purges": self._purges,
            "skip_purged": self.skip_purged,
            "skipped": self.skipped,
            # without a cache folder to load them from, the tables travel along
            "tables": None if self.cache_dir is not None else [t.arrays() for t in self._tables],
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url = state["url"]
        self.storage_options = state["storage_options"]
        self.cache_dir = None if state["cache_dir"] is None else Path(state["cache_dir"])
        self.cache_limit_bytes = state["cache_limit_bytes"]
        self.columns = state["columns"]
        self.commit = state["commit"]
        self.keys = state["keys"]
        self._roots = state["roots"]
        self._purges = state["purges"]
        self._tombstones = build_tombstones(len(self._purges), self._purges, set())
        self.skip_purged = state["skip_purged"]
        self.skipped = state["skipped"]
        self._opened = None
        arrays = state["tables"]
        if arrays is None:
            self._tables = self._open_tables(self._state())
        else:
            self._tables = [
                table_from_arrays(a, r) for a, r in zip(arrays, self._roots, strict=True)
            ]
        self._index = SampleIndex(self.columns, self._tables, self.keys)
        if self.skipped is not None:
            self._index.leave_out(self.skipped)
        self._window = None

    def _state(self) -> _Opened:
        opened = self._opened
        if opened is not None and opened.pid == os.getpid():
            return opened
        with _OPENING:  # a new process (or a fresh copy): its own connection, opened once
            opened = self._opened
            if opened is None or opened.pid != os.getpid():
                opened = self._opened = _Opened(self)
            return opened

    @property
    def index(self) -> SampleIndex[StreamTable]:
        """The sample index."""
        return self._index

    @property
    def roots(self) -> list[ColumnRoot]:
        """The column roots of the named columns, in order."""
        return list(self._roots)

    @property
    def tables(self) -> list[StreamTable]:
        """The streaming tables of the named columns, in order."""
        return list(self._tables)

    @property
    def fetcher(self) -> PieceFetcher:
        """This process's piece fetcher (its cache, its request count)."""
        return self._state().fetcher

    def __len__(self) -> int:
        return len(self._index)

    # -- reading ---------------------------------------------------------

    def _pieces(self, c: int, records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The distinct pieces of some records of column ``c`` and, per record, which one
        (CorruptionError naming the key of a record the remote has no bytes for)."""
        table = self._tables[c]
        missing = table.missing(records)
        if missing is not None:
            key = decode_key(table.key(missing))
            raise missing_error(self.url, self.columns[c], key, self.commit)
        return distinct(table.pieces.record_piece[records])

    def _wanted(self, c: int, piece: int) -> Wanted:
        table = self._tables[c]
        pm = table.pieces
        return Wanted(
            pm.name(piece),
            pm.pack(piece),
            int(pm.piece_start[piece]),
            int(pm.piece_end[piece]),
            functools.partial(self._check, table, piece),
        )

    def _wanted_for(
        self, records: list[np.ndarray], hot: list[dict[int, memoryview]]
    ) -> list[Wanted]:
        """The pieces of ``records`` (per column) that are not in ``hot``."""
        return [
            self._wanted(c, p)
            for c, recs in enumerate(records)
            for p in self._pieces(c, recs)[0].tolist()
            if p not in hot[c]
        ]

    def _check(self, table: StreamTable, piece: int, data: bytes) -> None:
        check_piece(data, table.pieces, piece, self._where(table, piece))

    def _where(self, table: StreamTable, piece: int) -> str:
        return f"{self.url} data pack {table.pieces.pack(piece)}"

    @property
    def prefetch_window(self) -> int:
        """Samples to fetch ahead of reads: about :data:`PREFETCH_BYTES` of them."""
        if self._window is None:
            per_sample = sum(
                float(np.mean(t.pieces.record_size)) if t.count else 0.0 for t in self._tables
            )
            window = int(PREFETCH_BYTES // max(per_sample, 1.0))
            self._window = min(max(window, _MIN_WINDOW), _MAX_WINDOW)
        return self._window

    def prefetch(self, indices: Sequence[int] | np.ndarray) -> None:
        """Start fetching the pieces of ``indices`` in the background (for later reads)."""
        state = self._state()
        if not state.fetcher.worth_prefetching():
            return
        try:
            wanted = self._wanted_for(self._index.records(indices), state.hot)
        except (IndexError, CorruptionError):
            return  # the read itself will say so
        if wanted:
            state.fetcher.prefetch(wanted)

    def read(self, indices: Sequence[int] | np.ndarray) -> list[np.ndarray | list[Value]]:
        """The samples at ``indices``: one stacked array per fixed-shape column, a list of
        values for the others, in column order."""
        records = self._index.records(indices)
        state = self._state()
        if self._tombstones.active:
            for c, recs in enumerate(records):
                table = self._tables[c]
                digests = RecordDigests(table.digests, recs)
                self._tombstones.check(digests, self.columns[c], RecordKeys(table, recs))
        plans = [self._pieces(c, recs) for c, recs in enumerate(records)]
        columns: list[list[memoryview | None]] = []
        wanted: dict[tuple[int, int], tuple[int, Wanted]] = {}
        for c, (uniq, _) in enumerate(plans):
            hot = state.hot[c]  # views taken now: keep() below may empty it
            numbers = uniq.tolist()
            try:
                views: list[memoryview | None] = [hot[p] for p in numbers]
            except KeyError:
                views = [hot.get(p) for p in numbers]
                for g, (p, view) in enumerate(zip(numbers, views, strict=True)):
                    if view is None:
                        wanted[c, p] = (g, self._wanted(c, p))
            columns.append(views)
        damaged: dict[tuple[int, int], Piece] = {}
        if wanted:
            got = state.fetcher.get([w for _, w in wanted.values()])
            fetched = {key: got[w.name] for key, (_, w) in wanted.items()}
            state.keep(fetched)
            for (c, p), (g, _) in wanted.items():
                piece = fetched[c, p]
                columns[c][g] = piece.data
                if piece.damaged is not None:
                    damaged[c, g] = piece
        return [
            self._column(c, recs, columns[c], inverse, damaged)
            for c, (recs, (_, inverse)) in enumerate(zip(records, plans, strict=True))
        ]

    def _column(
        self,
        c: int,
        records: np.ndarray,
        pieces: list[memoryview | None],
        inverse: np.ndarray,
        damaged: dict[tuple[int, int], Piece],
    ) -> np.ndarray | list[Value]:
        for (column, g), piece in damaged.items():
            if column == c:
                for record in records[inverse == g].tolist():
                    self._check_alone(c, record, piece)
        views = cast(list[memoryview], pieces)  # every piece is in hand by now
        table = self._tables[c]
        pm = table.pieces
        rel = pm.record_rel[records]
        sizes = pm.record_size[records]
        schema = table.schema
        if schema.kind == "ndarray" and schema.fixed:
            dtype = schema.np_dtype
            shape = tuple(int(d) for d in schema.shape or () if d is not None)
            body = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
            rows = gather_rows(views, inverse, rel, sizes, array_head(dtype, shape), body)
            if rows is not None:
                return rows.view(dtype).reshape((len(records), *shape))
        out: list[Value] = []
        for g, start, size in zip(inverse.tolist(), rel.tolist(), sizes.tolist(), strict=True):
            _, payload = entry_value(views[g][start : start + size])
            out.append(from_payload(schema, payload))
        return out

    def _check_alone(self, c: int, record: int, piece: Piece) -> None:
        """Check one record of a piece that failed its check (CorruptionError naming the
        column and key if it is the damaged one)."""
        table = self._tables[c]
        pm = table.pieces
        p = int(pm.record_piece[record])
        names, rel, sizes = pm.entries(p)
        at = int(np.searchsorted(rel, pm.record_rel[record]))
        start, size = int(rel[at]), int(sizes[at])
        try:
            check_entries(
                [piece.data[start : start + size]], [names[at].tobytes()], self._where(table, p)
            )
        except CorruptionError as exc:
            key = decode_key(table.key(record))
            raise sample_error(exc, self.columns[c], key, self.commit) from exc

    def warm(
        self, progress: Callable[[int, int], None] | None = None, batch: int = 4096
    ) -> WarmResult:
        """Fetch every sample's pieces into the cache (without decoding them).

        ``progress(done, total)`` is called after each batch of samples.
        """
        state = self._state()
        fetcher = state.fetcher
        requests, fetched = fetcher.requests, fetcher.bytes
        n = len(self)
        purged = [self._purged(c) for c in range(len(self.columns))]
        for low in range(0, n, batch):
            records = self._index.records(np.arange(low, min(low + batch, n)))
            records = [r[~purged[c][r]] for c, r in enumerate(records)]
            got = fetcher.get(self._wanted_for(records, [{} for _ in records]))
            if any(p.damaged is not None for p in got.values()):
                self.read(np.arange(low, min(low + batch, n)))  # raises, naming the sample
            if progress is not None:
                progress(min(low + batch, n), n)
        return WarmResult(
            commit=self.commit,
            samples=n,
            requests=fetcher.requests - requests,
            bytes=fetcher.bytes - fetched,
            cached=state.pieces.usage() if self.cache_dir is None else tree_bytes(self.cache_dir),
            limit=self.cache_limit_bytes,
        )

    def _purged(self, c: int) -> np.ndarray:
        """Which records of column ``c`` are purged (a bool mask over its table)."""
        table = self._tables[c]
        return self._tombstones.purged_rows(self.columns[c], table.digests, table.positions)

    def close(self) -> None:
        """Stop this process's background prefetching."""
        if self._opened is not None and self._opened.pid == os.getpid():
            self._opened.fetcher.close()
