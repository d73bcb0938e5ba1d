"""Reading and writing history: commits, record roots, column roots, pages.

:class:`History` composes the object tables, the record trees and the refs
into the operations the repository needs: resolve a ref, load the columns of
a commit, walk the log, and publish a commit.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import lmdb

from ..errors import AmbiguousRefError, CorruptionError, RefNotFoundError
from ..hashing import object_hash
from ..storage.db import MetaDB
from .objects import ColumnRoot, Commit, CommitId, RecordRoot, commit_id_of
from .refs import HEADS, TAGS, Refs
from .tree import RecordTree

__all__ = ["History"]

_HEX = re.compile(r"[0-9a-fA-F]{4,40}")


class History:
    """The commit graph and record trees of one repository."""

    def __init__(self, db: MetaDB) -> None:
        self.db = db
        self.refs = Refs(db)
        self.tree = RecordTree(self._load_object, load_many=self._load_objects)
        self._commits: dict[str, Commit] = {}

    def _load_object(self, key: bytes) -> bytes:
        with self.db.read() as txn:
            data = self.db.get(txn, "objects", key)
        return self._checked(key, data)

    def _load_objects(self, keys: list[bytes]) -> list[bytes]:
        with self.db.read() as txn:
            found = [self.db.get(txn, "objects", key) for key in keys]
        return [self._checked(key, data) for key, data in zip(keys, found, strict=True)]

    def _checked(self, key: bytes, data: bytes | None) -> bytes:
        """An object's bytes, once they hash to its name (nothing is decoded unchecked)."""
        where = self.db.data_file
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
            with self.db.read() as txn:
                data = self.db.get(txn, "commits", bytes.fromhex(commit_id))
            if data is None:
                raise RefNotFoundError(
                    f"commit {commit_id} does not exist in {self.db.path.parent}"
                )
            if commit_id_of(data) != commit_id:  # checked before anything is decoded
                raise CorruptionError(
                    f"commit {commit_id} in {self.db.data_file} does not hash to its id; "
                    f"the repository at {self.db.path.parent} is damaged",
                    path=self.db.data_file,
                )
            commit = Commit.from_bytes(data)
            self._commits[commit_id] = commit
        return commit

    def columns(self, commit_id: str | None) -> dict[str, ColumnRoot]:
        """Column roots of a commit (``None``: the empty history)."""
        if commit_id is None:
            return {}
        records = RecordRoot.from_bytes(self._load_object(self.commit(commit_id).records))
        return {
            name: ColumnRoot.from_bytes(self._load_object(root)) for name, root in records.columns
        }

    # -- refs ------------------------------------------------------------

    def resolve(self, ref: str) -> CommitId:
        """Full commit id of a full id, branch, tag or unique prefix (>= 4 hex), in that order.

        A full 40-hex id of an existing commit always names that commit, so
        no branch or tag can hide it (names that look like ids are refused
        when refs are created; this keeps older repositories safe too). Then
        a branch, then a tag, then a unique prefix of 4 or more hex digits
        (case-insensitive).
        """
        if not isinstance(ref, str) or not ref:
            raise RefNotFoundError(f"ref {ref!r} must be a non-empty string")
        with self.db.read() as txn:
            is_hex = _HEX.fullmatch(ref) is not None
            if is_hex and len(ref) == 40:
                full = ref.lower()
                if self.db.get(txn, "commits", bytes.fromhex(full)) is not None:
                    return CommitId(full)
            for name in (HEADS + ref, TAGS + ref):
                found = self.refs.get(txn, name)
                if found is not None:
                    return found
            if is_hex:
                prefix = ref.lower()
                matches = self._commits_with_prefix(txn, prefix)
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

    def _commits_with_prefix(self, txn: lmdb.Transaction, prefix: str) -> list[CommitId]:
        low = bytes.fromhex(prefix + "0" * (len(prefix) % 2))
        cursor = self.db.cursor(txn, "commits")
        out: list[CommitId] = []
        if cursor.set_range(low):
            for key in cursor.iternext(keys=True, values=False):
                hexed = bytes(key).hex()
                if not hexed.startswith(prefix):
                    break
                out.append(CommitId(hexed))
        return out

    def log(self, start: str | None, limit: int | None = None) -> Iterator[Commit]:
        """Commits reachable from ``start``, newest first, each once."""
        if start is None:
            return
        seen = {start}
        frontier = [start]
        emitted = 0
        while frontier and (limit is None or emitted < limit):
            # newest first by commit time; ties broken by id for determinism
            frontier.sort(key=lambda c: (self.commit(c).time_us, c))
            current = frontier.pop()
            yield self.commit(current)
            emitted += 1
            for parent in self.commit(current).parents:
                if parent not in seen:
                    seen.add(parent)
                    frontier.append(parent)

    # -- writing ---------------------------------------------------------

    def new_commit(
        self,
        txn: lmdb.Transaction,
        *,
        parents: tuple[str, ...],
        columns: dict[str, ColumnRoot],
        author: str,
        email: str,
        message: str,
    ) -> Commit:
        """Store the pending pages, column roots, record root and commit in ``txn``."""
        for key, data in self.tree.pending.items():
            self.db.put(txn, "objects", key, data)
        self.tree.pending.clear()
        names = []
        for name, root in sorted(columns.items()):
            data = root.to_bytes()
            root_hash = root.hash
            self.db.put(txn, "objects", root_hash, data)
            names.append((name, root_hash))
        records = RecordRoot(tuple(names))
        self.db.put(txn, "objects", records.hash, records.to_bytes())
        now = time.time_ns() // 1000
        if parents:  # keep commit times monotonic along history even if clocks step back
            now = max(now, max(self.commit(p).time_us for p in parents) + 1)
        commit = Commit(parents, author, email, now, message, records.hash)
        data = commit.to_bytes()
        self.db.put(txn, "commits", bytes.fromhex(commit.id), data)
        return commit
