"""Reading and writing history: commits, record roots, column roots, pages.

:class:`History` composes the object tables, the record trees and the refs
into the operations the repository needs: resolve a ref, load the columns of
a commit, walk the log, and publish a commit.
"""

from __future__ import annotations

import re
import time

from ..errors import AmbiguousRefError, CorruptionError, RefNotFoundError
from ..hashing import object_hash
from .objects import ColumnRoot, Commit, CommitId, RecordRoot, commit_id_of
from .objectstore import ObjectStore, WriteBatch
from .refs import HEADS, REMOTES, TAGS, RefsContainer
from .tree import RecordTree

__all__ = ["History"]

_HEX = re.compile(r"[0-9a-fA-F]{4,40}")


class History:
    """The commit graph and record trees of one repository.

    Parameters
    ----------
    objects:
        Where commits and the other history objects live.
    refs:
        Where branches and tags live.
    """

    def __init__(self, objects: ObjectStore, refs: RefsContainer) -> None:
        self.objects = objects
        self.refs = refs
        self.tree = RecordTree(self.load_object, load_many=self.load_objects)
        self._commits: dict[str, Commit] = {}

    def load_object(self, key: bytes) -> bytes:
        """A stored history object (not a commit), checked against its hash."""
        return self._checked(key, self.objects.get(key))

    def load_objects(self, keys: list[bytes]) -> list[bytes]:
        """Several stored history objects, each checked against its hash."""
        found = self.objects.get_many(keys)
        return [self._checked(key, data) for key, data in zip(keys, found, strict=True)]

    def _checked(self, key: bytes, data: bytes | None) -> bytes:
        """An object's bytes, once they hash to its name (nothing is decoded unchecked)."""
        where = self.objects.location
        if data is None:
            raise CorruptionError(
                f"history object {key.hex()} is missing from {where}; the repository is "
                "damaged: run `tensorcask verify` and restore from a clone",
                path=where,
            )
        if object_hash(data) != key:
            raise CorruptionError(
                f"history object {key.hex()} in {where} fails its hash; the repository is "
                "damaged: run `tensorcask verify` and restore from a clone",
                path=where,
            )
        return data

    # -- objects ---------------------------------------------------------

    def commit(self, commit_id: str) -> Commit:
        """The commit with full id ``commit_id``."""
        commit = self._commits.get(commit_id)
        if commit is None:
            where = self.objects.location
            data = self.objects.get(bytes.fromhex(commit_id))
            if data is None:
                raise RefNotFoundError(f"commit {commit_id} does not exist in {where}")
            if commit_id_of(data) != commit_id:  # checked before anything is decoded
                raise CorruptionError(
                    f"commit {commit_id} in {where} does not hash to its id; the repository "
                    "is damaged: run `tensorcask verify` and restore from a clone",
                    path=where,
                )
            commit = Commit.from_bytes(data)
            self._commits[commit_id] = commit
        return commit

    def columns(self, commit_id: str | None) -> dict[str, ColumnRoot]:
        """Column roots of a commit (``None``: the empty history)."""
        if commit_id is None:
            return {}
        records = RecordRoot.from_bytes(self.load_object(self.commit(commit_id).records))
        names = [name for name, _ in records.columns]
        data = self.load_objects([root for _, root in records.columns])
        return {name: ColumnRoot.from_bytes(d) for name, d in zip(names, data, strict=True)}

    # -- refs ------------------------------------------------------------

    def resolve(self, ref: str) -> CommitId:
        """Full commit id of a full id, branch, tag, remote branch (``origin/main``) or
        unique prefix (>= 4 hex), in that order.

        A full 40-hex id of an existing commit always names that commit, so
        no branch or tag can hide it (names that look like ids are refused
        when refs are created; this keeps older repositories safe too). Then
        a branch, then a tag, then a unique prefix of 4 or more hex digits
        (case-insensitive).
        """
        if not isinstance(ref, str) or not ref:
            raise RefNotFoundError(f"ref {ref!r} must be a non-empty string")
        is_hex = _HEX.fullmatch(ref) is not None
        if is_hex and len(ref) == 40:
            full = ref.lower()
            if self.objects.has(bytes.fromhex(full)):
                return CommitId(full)
        for name in (HEADS + ref, TAGS + ref, REMOTES + ref):
            found = self.refs.get(name)
            if found is not None:
                return found
        if is_hex:
            prefix = ref.lower()
            matches = self._commits_with_prefix(prefix)
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                shown = ", ".join(m[:12] for m in matches[:5])
                raise AmbiguousRefError(
                    f"commit prefix {ref!r} matches {len(matches)} commits ({shown}); "
                    "give more digits"
                )
        raise RefNotFoundError(
            f"no branch, tag or commit named {ref!r}; see `tensorcask log` and `tensorcask branch`"
        )

    def _commits_with_prefix(self, prefix: str) -> list[CommitId]:
        whole = bytes.fromhex(prefix[: len(prefix) - len(prefix) % 2])
        return [
            CommitId(h)
            for h in (n.hex() for n in self.objects.names("commit", whole))
            if h.startswith(prefix)
        ]

    # -- writing ---------------------------------------------------------

    def new_commit(
        self,
        batch: WriteBatch,
        *,
        parents: tuple[str, ...],
        columns: dict[str, ColumnRoot],
        author: str,
        email: str,
        message: str,
    ) -> Commit:
        """Add the column roots, the record root and a new commit to ``batch``.

        The record pages of ``columns`` are in ``batch`` already (the record
        trees put them there); the caller stores the batch
        (:meth:`ObjectStore.write`) and then moves a ref to the commit.
        """
        names = []
        for name, root in sorted(columns.items()):
            root_hash = root.hash
            batch.put(root_hash, root.to_bytes())
            names.append((name, root_hash))
        records = RecordRoot(tuple(names))
        batch.put(records.hash, records.to_bytes())
        now = time.time_ns() // 1000
        if parents:  # keep commit times monotonic along history even if clocks step back
            now = max(now, max(self.commit(p).time_us for p in parents) + 1)
        commit = Commit(parents, author, email, now, message, records.hash)
        batch.put(bytes.fromhex(commit.id), commit.to_bytes())
        return commit
