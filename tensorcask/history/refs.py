"""Refs: branch and tag names pointing at commits, moved by compare-and-swap.

A :class:`RefsContainer` maps full ref names, ``heads/<branch>`` and
``tags/<tag>``, to commit ids. Every move is :meth:`RefsContainer.set_if_equals`:
it succeeds only if the ref still holds the value the caller last saw, so two
writers racing for one ref never both win. The local repository keeps its
refs in LMDB (:class:`LMDBRefs`, which also records the current branch); a
remote keeps them in object storage; tests use :class:`MemoryRefs`.
``tests/history/conformance.py`` holds the rules every container must pass.

A new name must pass :func:`~tensorcask.keys.validate_ref_name` and
:meth:`RefsContainer.check_new`: a branch and a tag never share a name, and,
as in git, ``a`` and ``a/b`` cannot both exist as branches (or as tags).
Names made before these rules stay readable and writable.
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import cast

from ..errors import CaskError, CorruptionError
from ..keys import validate_ref_name
from ..storage.db import MetaDB
from .objects import CommitId

__all__ = ["HEADS", "REMOTES", "TAGS", "LMDBRefs", "MemoryRefs", "RefsContainer"]

HEADS = "heads/"
TAGS = "tags/"
REMOTES = "remotes/"
"""Where a repository remembers a remote's branches: ``remotes/<remote>/<branch>``."""
_HEAD = b"HEAD"
_COMMIT_ID = re.compile(r"[0-9a-fA-F]{40}")


def _raw(name: str) -> bytes:
    # surrogatepass: a name no valid ref can have simply matches nothing
    return name.encode("utf-8", "surrogatepass")


class RefsContainer(ABC):
    """Full ref names -> commit ids.

    Attributes
    ----------
    location:
        Where the refs live (a file or a URL), for error messages.
    """

    location: str

    @staticmethod
    def commit_value(value: str | None, what: str) -> str | None:
        """``value`` as a lower-case 40-hex commit id (None stays None), or ValueError."""
        if value is None:
            return None
        if not isinstance(value, str) or _COMMIT_ID.fullmatch(value) is None:
            raise ValueError(f"{what} must be a 40-hex-digit commit id or None, not {value!r}")
        return value.lower()

    @abstractmethod
    def get(self, name: str) -> CommitId | None:
        """The commit a full ref name (``heads/main``) points at, or None."""

    @abstractmethod
    def set_if_equals(self, name: str, old: str | None, new: str | None) -> bool:
        """Move ``name`` from ``old`` to ``new`` (None: absent) if it still holds ``old``.

        Atomic: of several callers that saw the same ``old``, one wins and
        the others get False. ``old`` and ``new`` are 40-hex commit ids (any
        case) or None; anything else raises ``ValueError``.
        """

    @abstractmethod
    def delete(self, name: str) -> bool:
        """Remove ``name`` whatever it holds; True if it existed."""

    @abstractmethod
    def listing(self, prefix: str = "") -> dict[str, CommitId]:
        """Every ref under ``prefix``, without the prefix."""

    def check_new(self, prefix: str, name: str) -> None:
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
        if self.get(other + name) is not None:
            raise CaskError(
                f"{kind} name {name!r} is already taken by a {other_kind}; a branch and a tag may "
                "not share a name (one would hide the other): choose another name"
            )
        parts = name.split("/")
        for end in range(1, len(parts)):
            parent = "/".join(parts[:end])
            if self.get(prefix + parent) is not None:
                raise CaskError(
                    f"cannot create {kind} {name!r}: {kind} {parent!r} exists, and a name cannot "
                    f"be both a {kind} and a folder of {kinds} (as in git); choose another name "
                    f"or delete {parent!r} first"
                )
        inside = sorted(self.listing(prefix + name + "/"))
        if inside:
            raise CaskError(
                f"cannot create {kind} {name!r}: {kind} {name + '/' + inside[0]!r} exists, and a "
                f"name cannot be both a {kind} and a folder of {kinds} (as in git); choose "
                "another name"
            )


class MemoryRefs(RefsContainer):
    """Refs in a dict: a twin of the real containers for tests. Thread-safe."""

    def __init__(self, location: str = "memory") -> None:
        self.location = location
        self._refs: dict[str, CommitId] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> CommitId | None:
        with self._lock:
            return self._refs.get(name)

    def set_if_equals(self, name: str, old: str | None, new: str | None) -> bool:
        old = self.commit_value(old, "old")
        new = self.commit_value(new, "new")
        with self._lock:
            if self._refs.get(name) != old:
                return False
            if new is None:
                self._refs.pop(name, None)
            else:
                self._refs[name] = CommitId(new)
            return True

    def delete(self, name: str) -> bool:
        with self._lock:
            return self._refs.pop(name, None) is not None

    def listing(self, prefix: str = "") -> dict[str, CommitId]:
        with self._lock:
            return {
                n[len(prefix) :]: c for n, c in sorted(self._refs.items()) if n.startswith(prefix)
            }


class LMDBRefs(RefsContainer):
    """The local repository's refs: the ``refs`` table, plus the current branch.

    Stored as ``heads/<branch>`` and ``tags/<tag>`` -> 20-byte commit id, and
    ``HEAD`` -> ``heads/<current branch>``. LMDB serialises write
    transactions across processes, so a check and its write are atomic; a
    move joins a write transaction this thread has open (see
    :meth:`~tensorcask.storage.db.MetaDB.write`).
    """

    def __init__(self, db: MetaDB) -> None:
        self.db = db
        self.location = db.data_file

    def get(self, name: str) -> CommitId | None:
        with self.db.read() as txn:
            raw = self.db.get(txn, "refs", _raw(name))
        if raw is None:
            return None
        if len(raw) != 20:
            where = self.location
            raise CorruptionError(
                f"ref {name!r} in {where} is damaged (it holds {len(raw)} bytes, not a 20-byte "
                "commit id); restore the repository from a clone or backup",
                path=where,
            )
        return CommitId(raw.hex())

    def set_if_equals(self, name: str, old: str | None, new: str | None) -> bool:
        old = self.commit_value(old, "old")
        new = self.commit_value(new, "new")
        if _raw(name) == _HEAD:
            raise ValueError("HEAD is not a ref that holds a commit; use set_current_branch()")
        with self.db.write() as txn:
            if self.get(name) != old:
                return False
            if new is None:
                self.db.delete(txn, "refs", _raw(name))
            else:
                self.db.put(txn, "refs", _raw(name), bytes.fromhex(new))
        return True

    def delete(self, name: str) -> bool:
        with self.db.write() as txn:
            return self.db.delete(txn, "refs", _raw(name))

    def listing(self, prefix: str = "") -> dict[str, CommitId]:
        out: dict[str, CommitId] = {}
        raw_prefix = _raw(prefix)
        with self.db.read() as txn:
            cursor = self.db.cursor(txn, "refs")
            if cursor.set_range(raw_prefix):
                for key, value in cast(Iterator[tuple[bytes, bytes]], cursor):
                    if not key.startswith(raw_prefix):
                        break
                    if key == _HEAD:
                        continue
                    out[key[len(raw_prefix) :].decode()] = CommitId(bytes(value).hex())
        return out

    def current_branch(self) -> str:
        """The branch write checkouts use by default."""
        with self.db.read() as txn:
            raw = self.db.get(txn, "refs", _HEAD)
        return "main" if raw is None else raw.decode()[len(HEADS) :]

    def set_current_branch(self, branch: str) -> None:
        """Make ``branch`` the default for later write checkouts.

        A branch that does not exist yet (it is made by the first commit) must
        pass :meth:`check_new`.
        """
        with self.db.write() as txn:
            if self.get(HEADS + branch) is None:
                self.check_new(HEADS, branch)
            self.db.put(txn, "refs", _HEAD, _raw(HEADS + branch))
