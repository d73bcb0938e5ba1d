"""Refs: branch and tag names pointing at commits, moved by compare-and-swap.

Stored in the ``refs`` table as ``heads/<branch>`` and ``tags/<tag>`` ->
20-byte commit id, plus ``HEAD`` -> ``heads/<current branch>``. Every move is
:meth:`Refs.set_if_equals`, the primitive remotes reuse: it succeeds only if
the ref still holds the value the caller last saw. LMDB serialises write
transactions across processes, so the check and the write are atomic.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import lmdb

from ..keys import validate_name
from ..storage.db import MetaDB
from .objects import CommitId

__all__ = ["HEADS", "TAGS", "Refs"]

HEADS = "heads/"
TAGS = "tags/"
_HEAD = b"HEAD"


class Refs:
    """Branches, tags and the current branch of one repository."""

    def __init__(self, db: MetaDB) -> None:
        self.db = db

    def get(self, txn: lmdb.Transaction, name: str) -> CommitId | None:
        """The commit a full ref name (``heads/main``) points at, or None."""
        raw = self.db.get(txn, "refs", name.encode())
        return None if raw is None else CommitId(raw.hex())

    def set_if_equals(
        self, txn: lmdb.Transaction, name: str, old: str | None, new: str | None
    ) -> bool:
        """Move ``name`` from ``old`` to ``new`` (None: absent) if it still holds ``old``."""
        if self.get(txn, name) != old:
            return False
        if new is None:
            self.db.delete(txn, "refs", name.encode())
        else:
            self.db.put(txn, "refs", name.encode(), bytes.fromhex(new))
        return True

    def listing(self, txn: lmdb.Transaction, prefix: str) -> dict[str, CommitId]:
        """Every ref under ``prefix``, without the prefix."""
        out: dict[str, CommitId] = {}
        raw_prefix = prefix.encode()
        cursor = self.db.cursor(txn, "refs")
        if cursor.set_range(raw_prefix):
            for key, value in cast(Iterator[tuple[bytes, bytes]], cursor):
                if not key.startswith(raw_prefix):
                    break
                out[key[len(raw_prefix) :].decode()] = CommitId(bytes(value).hex())
        return out

    def current_branch(self, txn: lmdb.Transaction) -> str:
        """The branch write checkouts use by default."""
        raw = self.db.get(txn, "refs", _HEAD)
        return "main" if raw is None else raw.decode()[len(HEADS) :]

    def set_current_branch(self, txn: lmdb.Transaction, branch: str) -> None:
        """Make ``branch`` the default for later write checkouts."""
        validate_name(branch, "branch name")
        self.db.put(txn, "refs", _HEAD, (HEADS + branch).encode())
