"""The staging area: uncommitted changes of the one branch being written.

Staged changes are persistent: they survive closing the checkout and
crashes until committed or reset. At most one branch has staged changes at a
time (opening a writer on another branch is refused while they exist), so one
table suffices:

* ``staging`` table: ``<column>\\0<encoded key>`` -> digest, or ``b""`` for a
  staged deletion. LMDB keeps it sorted, so a column's edits come out in key
  order, ready for :meth:`~tensorcask.history.tree.RecordTree.update`.
* ``meta["staging"]``: ``{"branch", "base", "columns"}`` where ``columns``
  maps a column name to ``{"op": "add", "schema": ...}`` (created, or deleted
  and re-created) or ``{"op": "delete"}``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import lmdb

from ..errors import CorruptionError
from ..storage.db import MetaDB
from .tree import Edit

__all__ = ["DELETED", "Staging", "StagingState"]

DELETED = b""
_SEP = b"\0"


@dataclass
class StagingState:
    """Which branch is staged, on which base commit, and column operations."""

    branch: str
    base: str | None
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)


class Staging:
    """Access to the staging tables inside caller-provided transactions."""

    def __init__(self, db: MetaDB) -> None:
        self.db = db

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
        return self.db.cursor(txn, "staging").first()

    def put(
        self, txn: lmdb.Transaction, column: str, keys: Iterable[bytes], values: Iterable[bytes]
    ) -> None:
        """Stage ``key -> digest`` records (or ``DELETED``) for ``column``."""
        prefix = column.encode() + _SEP
        items = [(prefix + k, v) for k, v in zip(keys, values, strict=True)]
        self.db.cursor(txn, "staging").putmulti(items, dupdata=False, overwrite=True)

    def unstage(self, txn: lmdb.Transaction, column: str, key: bytes) -> None:
        """Forget the staged record of one key (a key that exists only staged)."""
        self.db.delete(txn, "staging", column.encode() + _SEP + key)

    def get(self, txn: lmdb.Transaction, column: str, key: bytes) -> bytes | None:
        """The staged value of one key: a digest, ``DELETED``, or None if not staged."""
        value = self.db.get(txn, "staging", column.encode() + _SEP + key)
        return None if value is None else self._checked(value)

    def edits(self, txn: lmdb.Transaction, column: str) -> list[Edit]:
        """The column's staged edits, sorted by key (deletions as None)."""
        prefix = column.encode() + _SEP
        n = len(prefix)
        cursor = self.db.cursor(txn, "staging")
        out: list[Edit] = []
        if cursor.set_range(prefix):
            for key, value in cast(Iterator[tuple[bytes, bytes]], cursor):
                if not key.startswith(prefix):
                    break
                out.append((bytes(key[n:]), bytes(value) or None))
        return out

    def all_edits(self, txn: lmdb.Transaction) -> dict[str, list[Edit]]:
        """Every column's staged edits, sorted by key (deletions as None)."""
        rows = cast(list[tuple[bytes, bytes]], list(self.db.cursor(txn, "staging").iternext()))
        out: dict[str, list[Edit]] = {}
        i = 0
        while i < len(rows):
            name = rows[i][0].split(_SEP, 1)[0]
            # a column's keys are contiguous: "name\0..." sorts below "name\1"
            j = bisect_left(rows, (name + b"\x01",), lo=i)
            n = len(name) + 1
            chunk = rows[i:j]
            if any(len(v) != 32 for _, v in chunk):  # deletions, or damage
                out[name.decode()] = [(k[n:], self._checked(v) or None) for k, v in chunk]
            else:
                out[name.decode()] = [(k[n:], v) for k, v in chunk]
            i = j
        return out

    def _checked(self, value: bytes) -> bytes:
        """A staged value: a 32-byte digest or ``DELETED`` (anything else is damage)."""
        if len(value) not in (0, 32):
            where = self.db.data_file
            raise CorruptionError(
                f"a staged record in {where} is damaged; reset the staging area "
                "(co.reset_staging_area()) and write the changes again",
                path=where,
            )
        return value

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
        return {bytes(v) for _, v in self.db.cursor(txn, "staging") if v}

    def clear(self, txn: lmdb.Transaction) -> None:
        """Drop everything staged."""
        self.db.drop(txn, "staging")
        self.db.delete(txn, "meta", b"staging")
