"""The staging area: uncommitted changes of the one branch being written.

Staged changes are persistent: they survive closing the checkout and
crashes until committed or reset. At most one branch has staged changes at a
time (opening a writer on another branch is refused while they exist), so one
table suffices.

Record edits are stored as *runs*, one per write (a batch of any size is one
LMDB value, not one entry per record), in the ``staging`` table under
``<column>\\0\\xff<sequence u64 BE><check u64 LE>``. A run holds its keys in
order, a state per key (set, deleted, or unstaged: back to the base commit)
and the digests, checked by an xxh3 over the value::

    b"TCSR" | count u32 | key width u16 | keys (count x width, zero-padded) |
    key lengths (count x u16) | states (count x u8) | digests (count x 32) | check u64

Later runs win. Runs are merged (youngest first, LSM-style) once a column has
more than :data:`MAX_RUNS`, so a lookup visits a bounded number of them, and
the cost of a record is amortised O(log n) rewrites. Repositories written
before runs hold one entry per record, ``<column>\\0<encoded key>`` -> digest
(``b""`` for a deletion): they are read as the oldest run of their column.
Encoded keys start with ``\\x00`` or ``\\x01``, never ``\\xff``.

``meta["staging"]`` holds ``{"branch", "base", "columns"}`` where ``columns``
maps a column name to ``{"op": "add", "schema": ...}`` (created, or deleted
and re-created) or ``{"op": "delete"}``; ``meta["staging_sequence"]`` numbers
the runs.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import lmdb
import numpy as np
from xxhash import xxh3_64_intdigest

from ..errors import CorruptionError
from ..storage.db import MetaDB
from .tree import Edit

__all__ = ["DELETED", "MAX_RUNS", "Staging", "StagingState"]

DELETED = b""
MAX_RUNS = 8
"""A column's runs are merged down to fewer once it has more than this many."""

_SEP = b"\0"
_RUN_TAG = b"\xff"
_MAGIC = b"TCSR"
_HEAD = struct.Struct("<4sIH")
_SET, _DELETED, _UNSTAGED = 0, 1, 2
_SEQUENCE = b"staging_sequence"
_CACHED_RUNS = 512


@dataclass
class StagingState:
    """Which branch is staged, on which base commit, and column operations."""

    branch: str
    base: str | None
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)


class _Run:
    """The decoded edits of one run (or of a column's legacy entries), sorted by key."""

    __slots__ = ("digests", "keys", "lengths", "states")

    def __init__(
        self, keys: np.ndarray, lengths: np.ndarray, states: np.ndarray, digests: np.ndarray
    ) -> None:
        self.keys = keys  # "S<width>": zero padding keeps byte order (keys hold no NUL after
        # their first 9 bytes, and int keys are all 9 bytes long)
        self.lengths = lengths
        self.states = states
        self.digests = digests

    def __len__(self) -> int:
        return len(self.states)

    @classmethod
    def of(cls, keys: list[bytes], states: np.ndarray, digests: np.ndarray) -> _Run:
        """A run of these edits (in write order: a repeated key keeps its last edit)."""
        width = max(map(len, keys))
        packed = np.array(keys, dtype=f"S{width}")
        lengths = np.fromiter(map(len, keys), np.uint16, len(keys))
        return _newest(cls(packed, lengths, states, digests))

    def find(self, raw_key: bytes) -> int:
        """Index of ``raw_key``, or -1."""
        keys = self.keys
        if len(raw_key) > keys.dtype.itemsize:
            return -1
        i = int(keys.searchsorted(np.bytes_(raw_key)))
        found = (
            i < len(keys)
            and int(self.lengths[i]) == len(raw_key)
            and keys[i : i + 1].tobytes()[: len(raw_key)] == raw_key  # numpy drops trailing NULs
        )
        return i if found else -1

    def raw_keys(self) -> list[bytes]:
        """The encoded keys, in order."""
        width = self.keys.dtype.itemsize
        flat = self.keys.tobytes()
        if (self.lengths == width).all():
            return [flat[i : i + width] for i in range(0, len(flat), width)]
        return [flat[i * width : i * width + n] for i, n in enumerate(self.lengths.tolist())]

    def edits(self) -> list[Edit]:
        """The run's edits, sorted by key (deletions as None; unstaged keys left out)."""
        keys = self.raw_keys()
        flat = self.digests.tobytes()
        states = self.states
        if not states.any():
            return [(k, flat[32 * i : 32 * i + 32]) for i, k in enumerate(keys)]
        out: list[Edit] = []
        for i, (key, state) in enumerate(zip(keys, states.tolist(), strict=True)):
            if state == _SET:
                out.append((key, flat[32 * i : 32 * i + 32]))
            elif state == _DELETED:
                out.append((key, None))
        return out

    def encode(self) -> bytes:
        """The stored form (see the module notes)."""
        body = b"".join(
            (
                _HEAD.pack(_MAGIC, len(self), self.keys.dtype.itemsize),
                self.keys.tobytes(),
                self.lengths.astype("<u2").tobytes(),
                self.states.astype(np.uint8).tobytes(),
                np.ascontiguousarray(self.digests).tobytes(),
            )
        )
        return body + xxh3_64_intdigest(body).to_bytes(8, "little")

    @classmethod
    def decode(cls, value: bytes, where: str) -> _Run:
        """Inverse of :meth:`encode`; a damaged run raises CorruptionError."""
        body, check = value[:-8], value[-8:]
        if len(value) < _HEAD.size + 8 or xxh3_64_intdigest(body).to_bytes(8, "little") != check:
            raise _damaged(where)
        magic, count, width = _HEAD.unpack_from(body)
        if magic != _MAGIC or len(body) != _HEAD.size + count * (width + 2 + 1 + 32):
            raise _damaged(where)
        at = _HEAD.size
        keys = np.frombuffer(body, f"S{width}", count, at) if width else np.empty(0, "S1")
        at += count * width
        lengths = np.frombuffer(body, "<u2", count, at)
        at += 2 * count
        states = np.frombuffer(body, np.uint8, count, at)
        at += count
        digests = np.frombuffer(body, np.uint8, 32 * count, at).reshape(count, 32)
        return cls(keys, lengths, states, digests)


def _newest(run: _Run) -> _Run:
    """``run`` sorted by key, keeping the last edit of each key (stable order = age)."""
    n = len(run)
    if n < 2:
        return run
    order = np.argsort(run.keys, kind="stable")
    keys = run.keys[order]
    last = np.ones(n, bool)
    last[:-1] = keys[1:] != keys[:-1]
    chosen = order[last]
    return _Run(keys[last], run.lengths[chosen], run.states[chosen], run.digests[chosen])


def _merge(runs: list[_Run], *, oldest: bool) -> _Run:
    """One run equal to ``runs`` (oldest first) applied in order; ``oldest``: nothing
    older lies below, so unstaged keys can be left out."""
    width = max(r.keys.dtype.itemsize for r in runs)
    merged = _newest(
        _Run(
            np.concatenate([r.keys.astype(f"S{width}") for r in runs]),
            np.concatenate([r.lengths for r in runs]),
            np.concatenate([r.states for r in runs]),
            np.concatenate([r.digests for r in runs]),
        )
    )
    if oldest and (merged.states == _UNSTAGED).any():
        keep = merged.states != _UNSTAGED
        merged = _Run(
            merged.keys[keep], merged.lengths[keep], merged.states[keep], merged.digests[keep]
        )
    return merged


def _damaged(where: str) -> CorruptionError:
    return CorruptionError(
        f"a staged record in {where} is damaged; reset the staging area "
        "(co.reset_staging_area()) and write the changes again",
        path=where,
    )


class Staging:
    """Access to the staging tables inside caller-provided transactions."""

    def __init__(self, db: MetaDB) -> None:
        self.db = db
        self._runs: dict[bytes, _Run] = {}  # decoded runs by their (unique, checked) LMDB key

    def state(self, txn: lmdb.Transaction) -> StagingState | None:
        """The current staging state, or None if nothing is staged."""
        doc = self.db.get_json(txn, "staging")
        if doc is None:
            return None
        return StagingState(doc["branch"], doc["base"], doc["columns"])

    def save_state(self, txn: lmdb.Transaction, state: StagingState) -> None:
        """Persist ``state``."""
        self.db.put_json(
            txn, "staging", {"branch": state.branch, "base": state.base, "columns": state.columns}
        )

    def has_changes(self, txn: lmdb.Transaction) -> bool:
        """Whether any record or column operation is staged."""
        state = self.state(txn)
        if state is not None and state.columns:
            return True
        if not self.db.cursor(txn, "staging").first():
            return False
        try:
            for name in self.columns(txn):
                _, runs, legacy = self._column_runs(txn, name)
                if any((run.states == _UNSTAGED).any() for run in runs):
                    if self.edits(txn, name):  # some edits are taken back: merge to know
                        return True
                elif runs or legacy is not None:
                    return True  # nothing is taken back: any edit is a change
        except CorruptionError:
            return True  # damaged: changes we cannot read; a writer may still reset them
        return False

    # -- writing ---------------------------------------------------------

    def put(
        self, txn: lmdb.Transaction, column: str, keys: Iterable[bytes], values: Iterable[bytes]
    ) -> None:
        """Stage ``key -> digest`` records (or ``DELETED``) for ``column``."""
        keys = list(keys)
        if not keys:
            return
        values = list(values)
        joined = b"".join(values)  # each value is a digest or DELETED
        if len(joined) == 32 * len(values):
            states = np.zeros(len(keys), np.uint8)
            digests = np.frombuffer(joined, np.uint8).reshape(-1, 32)
        else:
            states = np.array([_SET if v else _DELETED for v in values], np.uint8)
            digests = np.frombuffer(b"".join(v or bytes(32) for v in values), np.uint8).reshape(
                -1, 32
            )
        self._add(txn, column, _Run.of(keys, states, digests))

    def unstage(self, txn: lmdb.Transaction, column: str, key: bytes) -> None:
        """Forget the staged record of one key (a key that exists only staged)."""
        self._add(
            txn,
            column,
            _Run.of([key], np.array([_UNSTAGED], np.uint8), np.zeros((1, 32), np.uint8)),
        )

    def _add(self, txn: lmdb.Transaction, column: str, run: _Run) -> None:
        raw = self.db.get(txn, "meta", _SEQUENCE)
        sequence = 0 if raw is None else int.from_bytes(raw, "big") + 1
        self.db.put(txn, "meta", _SEQUENCE, sequence.to_bytes(8, "big"))
        value = run.encode()
        key = _run_prefix(column) + sequence.to_bytes(8, "big") + value[-8:]
        self.db.put(txn, "staging", key, value)
        self._remember(key, run)
        names, runs, legacy = self._column_runs(txn, column)
        if len(runs) > MAX_RUNS:
            self._compact(txn, names, runs, oldest=not legacy)

    def _compact(
        self, txn: lmdb.Transaction, names: list[bytes], runs: list[_Run], *, oldest: bool
    ) -> None:
        """Merge the youngest runs whose sizes are alike (LSM tiers) into one."""
        start = len(runs) - 1
        total = len(runs[start])
        while start > 0 and (len(runs[start - 1]) <= 2 * total or len(runs) - start < 2):
            start -= 1
            total += len(runs[start])
        merged = _merge(runs[start:], oldest=oldest and start == 0)
        for name in names[start:]:
            self.db.delete(txn, "staging", name)
            self._runs.pop(name, None)
        if len(merged):
            value = merged.encode()
            key = names[-1][:-8] + value[-8:]  # the youngest's place in the order
            self.db.put(txn, "staging", key, value)
            self._remember(key, merged)

    # -- reading ---------------------------------------------------------

    def _remember(self, key: bytes, run: _Run) -> None:
        if len(self._runs) >= _CACHED_RUNS:
            self._runs.clear()
        self._runs[key] = run

    def _column_runs(
        self, txn: lmdb.Transaction, column: str
    ) -> tuple[list[bytes], list[_Run], _Run | None]:
        """A column's run keys and runs (oldest first), and its legacy entries as a run."""
        prefix = _run_prefix(column)
        cursor = self.db.cursor(txn, "staging")
        names: list[bytes] = []
        if cursor.set_range(prefix):
            for key in cursor.iternext(keys=True, values=False):
                name = bytes(key)
                if not name.startswith(prefix):
                    break
                names.append(name)
        runs = []
        for name in names:
            run = self._runs.get(name)
            if run is None:
                value = self.db.get(txn, "staging", name)
                run = _Run.decode(value or b"", self.db.data_file)
                self._remember(name, run)
            runs.append(run)
        return names, runs, self._legacy(txn, column)

    def _legacy(self, txn: lmdb.Transaction, column: str) -> _Run | None:
        """A column's entries in the per-record layout of earlier versions, if any."""
        prefix = column.encode() + _SEP
        cursor = self.db.cursor(txn, "staging")
        if not cursor.set_range(prefix):
            return None
        rows = []
        for key, value in cast(Iterator[tuple[bytes, bytes]], cursor):
            if not key.startswith(prefix) or key[len(prefix) : len(prefix) + 1] == _RUN_TAG:
                break
            if len(value) not in (0, 32):
                raise _damaged(self.db.data_file)
            rows.append((bytes(key[len(prefix) :]), bytes(value)))
        if not rows:
            return None
        states = np.array([_SET if v else _DELETED for _, v in rows], np.uint8)
        digests = np.frombuffer(b"".join(v or bytes(32) for _, v in rows), np.uint8)
        return _Run.of([k for k, _ in rows], states, digests.reshape(-1, 32))

    def get(self, txn: lmdb.Transaction, column: str, key: bytes) -> bytes | None:
        """The staged value of one key: a digest, ``DELETED``, or None if not staged."""
        return self.get_many(txn, column, [key])[0]

    def get_many(
        self, txn: lmdb.Transaction, column: str, keys: Iterable[bytes]
    ) -> list[bytes | None]:
        """:meth:`get` of several keys (the column's runs are found once)."""
        _, runs, legacy = self._column_runs(txn, column)
        if legacy is not None:
            runs = [legacy, *runs]
        newest_first = runs[::-1]
        out: list[bytes | None] = []
        for key in keys:
            value = None
            for run in newest_first:
                i = run.find(key)
                if i >= 0:
                    state = int(run.states[i])
                    if state == _SET:
                        value = run.digests[i].tobytes()
                    elif state == _DELETED:
                        value = DELETED
                    break
            out.append(value)
        return out

    def edits(self, txn: lmdb.Transaction, column: str) -> list[Edit]:
        """The column's staged edits, sorted by key (deletions as None)."""
        _, runs, legacy = self._column_runs(txn, column)
        if legacy is not None:
            runs = [legacy, *runs]
        if not runs:
            return []
        return (runs[0] if len(runs) == 1 else _merge(runs, oldest=True)).edits()

    def columns(self, txn: lmdb.Transaction) -> list[str]:
        """The names of the columns with staged record edits."""
        cursor = self.db.cursor(txn, "staging")
        names: list[str] = []
        if not cursor.first():
            return names
        while True:
            name = bytes(cursor.key()).split(_SEP, 1)[0]
            names.append(name.decode())
            if not cursor.set_range(name + b"\x01"):  # past every "name\0..." key
                return names

    def all_edits(self, txn: lmdb.Transaction) -> dict[str, list[Edit]]:
        """Every column's staged edits, sorted by key (deletions as None)."""
        out = {}
        for name in self.columns(txn):
            edits = self.edits(txn, name)
            if edits:
                out[name] = edits
        return out

    def drop_column(self, txn: lmdb.Transaction, column: str) -> None:
        """Forget every staged record edit of ``column``."""
        prefix = column.encode() + _SEP
        cursor = self.db.cursor(txn, "staging")
        if cursor.set_range(prefix):
            while bytes(cursor.key()).startswith(prefix):
                if not cursor.delete():
                    break

    def digests(self, txn: lmdb.Transaction) -> set[bytes]:
        """The content digests of every staged record (what ``gc`` must keep)."""
        out: set[bytes] = set()
        for name in self.columns(txn):
            _, runs, legacy = self._column_runs(txn, name)
            for run in [legacy, *runs] if legacy is not None else runs:
                chosen = run.digests[run.states == _SET]
                flat = chosen.tobytes()
                out.update(flat[i : i + 32] for i in range(0, len(flat), 32))
        return out

    def clear(self, txn: lmdb.Transaction) -> None:
        """Drop everything staged."""
        self.db.drop(txn, "staging")
        self.db.delete(txn, "meta", b"staging")


def _run_prefix(column: str) -> bytes:
    return column.encode() + _SEP + _RUN_TAG
