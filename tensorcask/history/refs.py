"""Refs: branch and tag names pointing at commits, moved by compare-and-swap.

Stored in the ``refs`` table as ``heads/<branch>`` and ``tags/<tag>`` ->
20-byte commit id, plus ``HEAD`` -> ``heads/<current branch>``. Every move is
:meth:`Refs.set_if_equals`, the primitive remotes reuse: it succeeds only if
the ref still holds the value the caller last saw. LMDB serialises write
transactions across processes, so the check and the write are atomic.

A new name must pass :func:`~tensorcask.keys.validate_ref_name` and
:meth:`Refs.check_new`: a branch and a tag never share a name, and, as in
git, ``a`` and ``a/b`` cannot both exist as branches (or as tags). Names
made before these rules stay readable and writable.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import lmdb

from ..errors import CaskError, CorruptionError
from ..keys import validate_ref_name
from ..storage.db import MetaDB
from .objects import CommitId

__all__ = ["HEADS", "TAGS", "Refs"]

HEADS = "heads/"
TAGS = "tags/"
_HEAD = b"HEAD"


def _raw(name: str) -> bytes:
    # surrogatepass: a name no valid ref can have simply matches nothing
    return name.encode("utf-8", "surrogatepass")


class Refs:
    """Branches, tags and the current branch of one repository."""

    def __init__(self, db: MetaDB) -> None:
        self.db = db

    def get(self, txn: lmdb.Transaction, name: str) -> CommitId | None:
        """The commit a full ref name (``heads/main``) points at, or None."""
        raw = self.db.get(txn, "refs", _raw(name))
        if raw is None:
            return None
        if len(raw) != 20:
            where = self.db.data_file
            raise CorruptionError(
                f"ref {name!r} in {where} is damaged (it holds {len(raw)} bytes, not a 20-byte "
                "commit id); restore the repository from a clone or backup",
                path=where,
            )
        return CommitId(raw.hex())

    def set_if_equals(
        self, txn: lmdb.Transaction, name: str, old: str | None, new: str | None
    ) -> bool:
        """Move ``name`` from ``old`` to ``new`` (None: absent) if it still holds ``old``."""
        if self.get(txn, name) != old:
            return False
        if new is None:
            self.db.delete(txn, "refs", _raw(name))
        else:
            self.db.put(txn, "refs", _raw(name), bytes.fromhex(new))
        return True

    def listing(self, txn: lmdb.Transaction, prefix: str) -> dict[str, CommitId]:
        """Every ref under ``prefix``, without the prefix."""
        out: dict[str, CommitId] = {}
        raw_prefix = _raw(prefix)
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

    def check_new(self, txn: lmdb.Transaction, prefix: str, name: str) -> None:
        """Refuse ``name`` as a new branch (``prefix`` :data:`HEADS`) or tag (:data:`TAGS`).

        Raises ``TypeError`` / ``ValueError`` for a malformed name (see
        :func:`~tensorcask.keys.validate_ref_name`) and
        :class:`~tensorcask.errors.CaskError` when it clashes with an existing
        ref: a tag of that name (for a branch) or a branch (for a tag), or a
        ref of the same kind that is a folder of it (``a`` for ``a/b``) or
        lies in it (``a/b`` for ``a``). Whether ``name`` itself exists is the
        caller's check.
        """
        kind, other, other_kind = (
            ("branch", TAGS, "tag") if prefix == HEADS else ("tag", HEADS, "branch")
        )
        kinds = "branches" if kind == "branch" else "tags"
        validate_ref_name(name, f"{kind} name")
        if self.get(txn, other + name) is not None:
            raise CaskError(
                f"{kind} name {name!r} is already taken by a {other_kind}; a branch and a tag may "
                "not share a name (one would hide the other): choose another name"
            )
        parts = name.split("/")
        for end in range(1, len(parts)):
            parent = "/".join(parts[:end])
            if self.get(txn, prefix + parent) is not None:
                raise CaskError(
                    f"cannot create {kind} {name!r}: {kind} {parent!r} exists, and a name cannot "
                    f"be both a {kind} and a folder of {kinds} (as in git); choose another name "
                    f"or delete {parent!r} first"
                )
        inside = sorted(self.listing(txn, prefix + name + "/"))
        if inside:
            raise CaskError(
                f"cannot create {kind} {name!r}: {kind} {name + '/' + inside[0]!r} exists, and a "
                f"name cannot be both a {kind} and a folder of {kinds} (as in git); choose "
                "another name"
            )

    def set_current_branch(self, txn: lmdb.Transaction, branch: str) -> None:
        """Make ``branch`` the default for later write checkouts.

        A branch that does not exist yet (it is made by the first commit) must
        pass :meth:`check_new`.
        """
        if self.get(txn, HEADS + branch) is None:
            self.check_new(txn, HEADS, branch)
        self.db.put(txn, "refs", _HEAD, _raw(HEADS + branch))
