"""The framework-free core of the loaders: which samples, in which order, read in batches.

:class:`RepoSource` is what a dataset object carries into DataLoader workers:
the repository path, the pinned commit id, the column names, the optional
key list and whether the repository was opened read-only. It pickles as
exactly those values and opens the repository lazily in the process that
reads (again after a fork), so no handle ever crosses a process boundary. A
repository this process cannot write opens read-only by itself.

Its :class:`SampleIndex` fixes the samples of an epoch: by default the keys
present in every named column, in sorted order, and for each column the
position of each sample's record in that column's resolved
:class:`~tensorcask.locations.ColumnTable`. Column tables are saved per column
root, so a worker opening a 1M-sample commit memory-maps a few arrays instead
of walking record trees.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from functools import reduce
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from ..errors import CorruptionError, RefNotFoundError, sample_error
from ..history.objects import ColumnRoot, CommitId
from ..keys import Key, decode_key, encode_keys
from ..locations import ColumnTable, KeyedTable
from ..parts import RepositoryParts
from ..repository import Repository
from ..samples import Value, from_payload
from ..storage.content import ContentStore
from ..storage.tombstones import Tombstones

__all__ = ["RepoSource", "SampleIndex", "selection"]


TableT = TypeVar("TableT", bound=KeyedTable)


def selection(
    columns: Sequence[str], keys: Sequence[Key] | np.ndarray | None
) -> tuple[list[str], list[Key] | None]:
    """A source's column names and keys as plain lists, checked (what every source takes)."""
    if isinstance(columns, str):
        raise TypeError("columns must be a list of column names, not one str")
    if not columns:
        raise ValueError("name at least one column")
    if keys is None:
        return list(columns), None
    return list(columns), keys.tolist() if isinstance(keys, np.ndarray) else list(keys)


class SampleIndex(Generic[TableT]):
    """The samples of one (commit, columns, keys) selection.

    Attributes
    ----------
    positions:
        Per column, the record index of every sample in that column's table,
        or None when sample ``i`` is record ``i`` (columns with equal key
        sets, the common case: no array per sample at all).
    """

    def __init__(
        self,
        names: Sequence[str],
        tables: Sequence[TableT],
        keys: Sequence[Key] | np.ndarray | None = None,
        *,
        warn: bool = False,
    ) -> None:
        self.names = list(names)
        self.tables = list(tables)
        self.positions: list[np.ndarray | None]
        self._count = self.tables[0].count
        if keys is not None:
            self.positions = self._chosen(keys)
        elif all(t.int_keys is not None for t in self.tables):
            int_keys = [t.int_keys for t in self.tables if t.int_keys is not None]
            first = int_keys[0]
            if all(len(k) == len(first) and np.array_equal(k, first) for k in int_keys[1:]):
                self.positions = [None] * len(int_keys)
            else:  # table keys are sorted and unique
                common = reduce(lambda a, b: np.intersect1d(a, b, assume_unique=True), int_keys)
                self.positions = [t.int_positions(common) for t in self.tables]
        else:
            shared = set(self.tables[0].raw_keys).intersection(
                *(t.raw_keys for t in self.tables[1:])
            )
            ordered = sorted(shared)
            self.positions = [t.positions(ordered) for t in self.tables]
        if warn and keys is None:
            self._warn_left_out()

    def leave_out(self, samples: np.ndarray) -> None:
        """Drop the samples at indices ``samples``; the others keep their order."""
        if len(samples):
            keep = np.ones(len(self), bool)
            keep[samples] = False
            kept = np.flatnonzero(keep)
            self.positions = [kept if p is None else p[keep] for p in self.positions]

    def purged(self, tombstones: Tombstones) -> np.ndarray:
        """The samples (indices) that a column of which is purged, in order."""
        hit = np.zeros(len(self), bool)
        for name, table, at in zip(self.names, self.tables, self.positions, strict=True):
            rows = tombstones.purged_rows(name, table.digests, table.positions)
            hit |= rows if at is None else rows[at]
        return np.flatnonzero(hit)

    def _warn_left_out(self) -> None:
        """Warn, naming each column, when samples of some columns are left out (the
        columns hold different keys): never silently fewer samples."""
        n = len(self)
        left = [(name, t.count - n) for name, t in zip(self.names, self.tables, strict=True)]
        if any(count for _, count in left):
            counts = ", ".join(f"{count} of column {name!r}" for name, count in left if count)
            warnings.warn(
                f"the columns hold different keys: the dataset has the {n} keys present in "
                f"every column, leaving out {counts}; pass keys= to choose them",
                UserWarning,
                stacklevel=_outside_the_package(),
            )

    def _chosen(self, keys: Sequence[Key] | np.ndarray) -> list[np.ndarray | None]:
        raw = encode_keys(keys)
        positions: list[np.ndarray | None] = []
        for name, table in zip(self.names, self.tables, strict=True):
            found = table.positions(raw)
            if (found < 0).any():
                missing = decode_key(raw[int(np.flatnonzero(found < 0)[0])])
                raise KeyError(f"key {missing!r} of keys= is not in column {name!r}")
            positions.append(found)
        return positions

    def __len__(self) -> int:
        first = self.positions[0]
        return self._count if first is None else len(first)

    def records(self, indices: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """Per column, the records of the samples at ``indices`` (IndexError if one is out
        of range)."""
        at = np.asarray(indices, dtype=np.intp).reshape(-1)
        if at.size and (int(at.min()) < 0 or int(at.max()) >= len(self)):
            bad = int(at.min()) if int(at.min()) < 0 else int(at.max())
            raise IndexError(f"sample index {bad} is out of range for {len(self)} samples")
        return [at if p is None else p[at] for p in self.positions]

    def key(self, i: int) -> Key:
        """The key of sample ``i``."""
        first = self.positions[0]
        return decode_key(self.tables[0].key(i if first is None else int(first[i])))


def _outside_the_package() -> int:
    """The ``stacklevel`` of the first frame outside tensorcask (the user's call)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


class RepoSource:
    """A picklable, lazily opened view of some columns of one commit.

    Parameters
    ----------
    repo:
        A repository path or an open :class:`~tensorcask.Repository`.
    columns:
        Column names, in the order samples yield them.
    commit:
        Any ref; resolved once, here, to a full commit id. Default: the
        current branch's head now.
    keys:
        Restrict and order the samples (default: keys present in every
        column, sorted).
    skip_purged:
        Leave out samples purged from the repository (a column of which is
        purged), instead of raising :class:`~tensorcask.errors.PurgedDataError`
        when one is read. Which samples are left out is decided here, once,
        and travels with the source to every worker and rank, so all of them
        see the same samples in the same order.
    """

    def __init__(
        self,
        repo: str | os.PathLike[str] | Repository,
        columns: Sequence[str],
        commit: str | None = None,
        keys: Sequence[Key] | np.ndarray | None = None,
        *,
        skip_purged: bool = False,
    ) -> None:
        self.columns, self.keys = selection(columns, keys)
        self.skip_purged = skip_purged
        self.skipped: np.ndarray | None = None
        opened = repo if isinstance(repo, Repository) else Repository(repo)
        self.path = opened.path
        self.read_only = opened.read_only
        if commit is None:
            head = opened.branches.get(opened.current_branch)
            if head is None:
                raise RefNotFoundError(
                    f"branch {opened.current_branch!r} of {self.path} has no commits yet; "
                    "commit samples first, or pass commit= to read another ref"
                )
            self.commit: CommitId = head
        else:
            self.commit = opened.resolve(commit)
        self._opened: (
            tuple[int, RepositoryParts, SampleIndex[ColumnTable], list[ColumnRoot]] | None
        ) = None
        self._attach(RepositoryParts(self.path, read_only=self.read_only), warn=True)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "columns": self.columns,
            "commit": self.commit,
            "keys": self.keys,
            "read_only": self.read_only,
            "skip_purged": self.skip_purged,
            "skipped": self.skipped,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = Path(state["path"])
        self.columns = state["columns"]
        self.commit = state["commit"]
        self.keys = state["keys"]
        self.read_only = bool(state.get("read_only", False))
        self.skip_purged = bool(state.get("skip_purged", False))
        self.skipped = state.get("skipped")
        self._opened = None

    def _attach(self, parts: RepositoryParts, *, warn: bool = False) -> None:
        roots = parts.history.columns(self.commit)
        missing = [c for c in self.columns if c not in roots]
        if missing:
            raise KeyError(
                f"commit {self.commit[:12]} has no column {missing[0]!r} (columns: "
                f"{', '.join(sorted(roots)) or 'none'})"
            )
        chosen = [roots[c] for c in self.columns]
        tables = [parts.column_table(root) for root in chosen]
        index = SampleIndex(self.columns, tables, self.keys, warn=warn)
        if self.skip_purged and self.skipped is None:
            self.skipped = index.purged(parts.store.tombstones(fresh=True))
        if self.skipped is not None:
            index.leave_out(self.skipped)
        self._opened = (os.getpid(), parts, index, chosen)

    def _state(self) -> tuple[RepositoryParts, SampleIndex[ColumnTable], list[ColumnRoot]]:
        opened = self._opened
        if opened is None or opened[0] != os.getpid():  # new process: open our own handles
            self._attach(RepositoryParts(self.path, read_only=self.read_only))
            opened = self._opened
        assert opened is not None
        return opened[1], opened[2], opened[3]

    @property
    def index(self) -> SampleIndex[ColumnTable]:
        """The sample index (opened in this process on first use)."""
        return self._state()[1]

    @property
    def roots(self) -> list[ColumnRoot]:
        """The column roots of the named columns, in order (opened on first use)."""
        return self._state()[2]

    def __len__(self) -> int:
        return len(self.index)

    #: Samples to fetch ahead of reads: none, local reads are not worth starting early
    #: (streaming sources fetch the pieces of the next samples in the background).
    prefetch_window = 0

    def prefetch(self, indices: Sequence[int] | np.ndarray) -> None:
        """Nothing to do (see :attr:`prefetch_window`)."""

    def read(self, indices: Sequence[int] | np.ndarray) -> list[np.ndarray | list[Value]]:
        """The samples at ``indices``: one stacked array per fixed-shape memmap
        column, a list of values for the others, in column order."""
        parts, index, roots = self._state()
        out: list[np.ndarray | list[Value]] = []
        for name, table, records, root in zip(
            index.names, index.tables, index.records(indices), roots, strict=True
        ):
            out.append(self._read_column(parts, name, table, records, root))
        return out

    def _read_column(
        self,
        parts: RepositoryParts,
        name: str,
        table: ColumnTable,
        records: np.ndarray,
        root: ColumnRoot,
    ) -> np.ndarray | list[Value]:
        store = parts.store
        try:
            payloads = table.read(store, records, name)
        except CorruptionError as exc:
            parts.check_alive()  # a repository removed under us is not "damaged"
            raise self._damaged(store, name, table, records, exc) from exc
        if isinstance(payloads, np.ndarray):
            return payloads
        return [from_payload(root.schema, p) for p in payloads]

    def _damaged(
        self,
        store: ContentStore,
        name: str,
        table: ColumnTable,
        records: np.ndarray,
        exc: CorruptionError,
    ) -> CorruptionError:
        """Find the damaged sample of a failed batch read and name it."""
        for r in records.tolist():
            try:
                table.read_one(store, r, name)
            except CorruptionError as bad:
                return sample_error(bad, name, decode_key(table.key(r)), self.commit)
        return exc
