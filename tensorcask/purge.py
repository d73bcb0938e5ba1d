"""Purge: tombstone samples or contents in every commit and remove their bytes.

History is left as it is (commit ids, record trees, ``log``, ``diff`` and
``verify`` do not change); what changes is recorded next to it (see
:mod:`tensorcask.storage.tombstones`) and every read checks it. The order
of a purge is what makes a crash harmless:

1. under the writer lock, find what to purge: the contents the keys hold in
   every stored commit (and in the staging area), and which of them no
   other sample holds;
2. one metadata transaction records the tombstones, the digests whose bytes
   go, and the locations still to overwrite (the journal);
3. the backends overwrite those bytes in place or rewrite the files that
   hold them (:meth:`Backend.scrub`), and fsync;
4. a last transaction clears the journal.

A crash before 2 leaves the old state; after it, reads already refuse the
purged samples and the next purge or ``gc`` finishes 3 and 4
(:func:`finish_pending`). Other samples are never moved or rewritten with
other bytes, so none can be lost.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import CaskError, ConcurrentUpdateError, PurgedDataError, RefNotFoundError
from .history.objects import ColumnRoot, ColumnSchema
from .history.objectstore import WriteBatch
from .history.reach import reachable
from .history.refs import HEADS
from .history.staging import DELETED
from .history.tree import Node
from .keys import Key, decode_key, encode_keys
from .parts import RepositoryParts
from .storage import tombstones as stones
from .storage.base import Location
from .storage.content import ContentStore
from .storage.tombstones import (
    Tombstone,
    load_tombstones,
    new_operation,
    operations,
    record_operation,
)

__all__ = [
    "PurgeMethods",
    "PurgeReport",
    "apply_operations",
    "finish_pending",
    "lift",
    "purge_content",
    "purge_keys",
    "refuse",
]

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass
class PurgeReport:
    """What a purge did.

    Attributes
    ----------
    tombstones:
        New tombstones (one per purged sample or content).
    already:
        Samples or contents that were purged before (nothing more to do).
    removed:
        Contents whose bytes were removed from the repository.
    kept:
        Contents kept because samples that were not purged hold them too.
    bytes_removed:
        Bytes overwritten on disk (scrubbed payloads).
    branches:
        Branch -> new commit, where the purged keys were also deleted
        (``remove_from_branches``).
    """

    tombstones: int = 0
    already: int = 0
    removed: int = 0
    kept: int = 0
    bytes_removed: int = 0
    branches: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        text = (
            f"purged {self.tombstones} sample(s) or content(s)"
            + (f" ({self.already} purged before)" if self.already else "")
            + f"; removed {self.removed} content(s), {self.bytes_removed} bytes overwritten"
        )
        if self.kept:
            text += f"; {self.kept} content(s) kept: samples that were not purged hold them"
        for branch, commit in sorted(self.branches.items()):
            text += f"\ndeleted the purged keys on branch {branch!r}: commit {commit[:12]}"
        return text


def _reason(reason: object) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("a purge needs a reason (reason='...'): it is kept in the tombstones")
    return reason.strip()


def purge_keys(
    parts: RepositoryParts,
    column: str,
    keys: Sequence[Key] | np.ndarray,
    *,
    reason: str,
    who: str,
    author: tuple[str, str],
    remove_from_branches: Sequence[str] = (),
) -> PurgeReport:
    """Tombstone the samples of ``keys`` in ``column`` in every commit; remove their bytes.

    The caller holds the writer lock. See :meth:`Repository.purge`.
    """
    reason = _reason(reason)
    if isinstance(keys, str | bytes | int):
        raise TypeError("purge() takes a list of keys, not one key: purge(column, [key], ...)")
    raw_keys = list(dict.fromkeys(encode_keys(keys)))
    if not raw_keys:
        raise ValueError("purge() needs at least one key")
    branches = _checked_branches(parts, remove_from_branches)
    with _Purger(parts) as purger:
        if column not in purger.roots() and not _staged_in(parts, column):
            raise KeyError(f"column {column!r} is in no commit of {parts.path}; nothing was purged")
        held = purger.holders(column, raw_keys)
        missing = [decode_key(r) for r in raw_keys if not held.get(r)]
        if missing:
            shown = ", ".join(repr(k) for k in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise KeyError(
                f"column {column!r} has no key {shown} in any commit or in the staging area; "
                "nothing was purged"
            )
        pairs = sorted((raw, d) for raw, ds in held.items() for d in ds)
        tombstones = purger.tombstones()
        fresh = [(raw, d) for raw, d in pairs if tombstones.by_key(column, raw, d) is None]
        purger.report.already = len(pairs) - len(fresh)
        if fresh:
            purger.apply(
                new_operation("purge", column=column, entries=fresh, reason=reason, who=who)
            )
        for branch in branches:
            commit = _delete_keys(parts, branch, column, raw_keys, reason, author)
            if commit is not None:
                purger.report.branches[branch] = commit
    return purger.report


def purge_content(
    parts: RepositoryParts,
    digests: Sequence[str | bytes],
    *,
    reason: str,
    who: str,
) -> PurgeReport:
    """Tombstone contents wherever they appear, and remove their bytes.

    The caller holds the writer lock. See :meth:`Repository.purge_content`.
    """
    reason = _reason(reason)
    wanted = list(dict.fromkeys(_digest(d) for d in digests))
    if not wanted:
        raise ValueError("purge_content() needs at least one digest")
    with _Purger(parts) as purger:
        tombstones = purger.tombstones()
        fresh = [(None, d) for d in wanted if d not in tombstones.content]
        purger.report.already = len(wanted) - len(fresh)
        if fresh:
            purger.apply(
                new_operation("purge_content", column=None, entries=fresh, reason=reason, who=who)
            )
    return purger.report


def apply_operations(parts: RepositoryParts, documents: Iterable[dict[str, Any]]) -> PurgeReport:
    """Record operations that came from elsewhere (a remote) and remove what they purge here.

    Documents already recorded (by ``id``) are skipped. The caller holds the
    writer lock.
    """
    ordered = sorted(documents, key=lambda d: (d.get("time", 0), d["id"]))
    with _Purger(parts) as purger:
        with parts.db.read() as txn:
            ours = operations(parts.db, txn)
        # Only what is still purged once every record is in: an allow in a later record
        # keeps the bytes an earlier one would remove.
        purger.final = stones.build_tombstones(0, [*ours, *ordered], set())
        for document in ordered:
            purger.apply(document)
    return purger.report


class _Purger:
    """One purge under the writer lock: finds holders, records, overwrites.

    Used as a context manager: on entry it finishes a purge a crash
    interrupted; on exit it closes its store and has the repository's read
    store forget what the purge changed.
    """

    def __init__(self, parts: RepositoryParts) -> None:
        self.parts = parts
        self.store = parts.writable_store()
        self.report = PurgeReport()
        self._commits: list[str] | None = None
        self._roots: dict[str, dict[bytes, ColumnRoot]] | None = None
        self.final: stones.Tombstones | None = None  # tombstones once every record applies

    def __enter__(self) -> _Purger:
        self.report.bytes_removed += finish_pending(self.parts, self.store)
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.close()
        self.parts.store.purges_changed()

    def commits(self) -> list[str]:
        """Every stored commit (unreachable ones too: they can still be read by id)."""
        if self._commits is None:
            self._commits = sorted(name.hex() for name in self.parts.objects.names("commit"))
        return self._commits

    def roots(self) -> dict[str, dict[bytes, ColumnRoot]]:
        """Column name -> its distinct roots across every stored commit."""
        if self._roots is None:
            self._roots = {}
            for commit in self.commits():
                for name, root in self.parts.history.columns(commit).items():
                    self._roots.setdefault(name, {}).setdefault(root.tree, root)
        return self._roots

    def holders(self, column: str, raw_keys: list[bytes]) -> dict[bytes, set[bytes]]:
        """Key -> the contents it holds in ``column`` in any commit or the staging area."""
        held: dict[bytes, set[bytes]] = {}
        for root in self.roots().get(column, {}).values():
            found = self.parts.history.tree.get_many(root.tree, raw_keys)
            for raw, digest in zip(raw_keys, found, strict=True):
                if digest is not None:
                    held.setdefault(raw, set()).add(digest)
        with self.parts.db.read() as txn:
            for raw in raw_keys:
                staged = self.parts.staging.get(txn, column, raw)
                if staged is not None and staged != DELETED:
                    held.setdefault(raw, set()).add(staged)
        return held

    def tombstones(self) -> stones.Tombstones:
        """The tombstones recorded so far."""
        with self.parts.db.read() as txn:
            return load_tombstones(self.parts.db, txn)

    def apply(self, document: dict[str, Any]) -> None:
        """Record one operation and remove the bytes it purges that nothing else holds."""
        parts, report = self.parts, self.report
        with parts.db.read() as txn:
            tombstones = load_tombstones(parts.db, txn)
            known = {op["id"] for op in operations(parts.db, txn)}
        if document["id"] in known:
            return
        column = document.get("column")
        entries = [
            (None if k is None else bytes.fromhex(k), bytes.fromhex(d))
            for k, d in document["entries"]
        ]
        remove: list[bytes] = []
        final = self.final
        if document["op"] == "purge_content":
            new = [d for _, d in entries if d not in tombstones.content]
            remove = sorted({d for d in new if d not in tombstones.gone})
            if final is not None:
                remove = [d for d in remove if d in final.content]
        elif document["op"] == "purge":
            assert column is not None
            pairs = {(k, d) for k, d in entries if k is not None}
            new = [d for k, d in pairs if tombstones.by_key(column, k, d) is None]
            candidates = set(new) - tombstones.gone - set(tombstones.content)
            if final is not None:
                candidates = {d for k, d in pairs if final.by_key(column, k, d)} & candidates
            held = self._held_elsewhere(column, pairs, candidates, tombstones)
            remove = sorted(candidates - held)
            report.kept += len(candidates & held)
        else:  # "allow": tombstones lifted elsewhere
            new = []
        report.tombstones += len(new)
        report.already += len(entries) - len(new) if document["op"] != "allow" else 0
        located = self.store.locate_many(remove) if remove else []
        report.removed += sum(loc is not None for loc in located)  # held here, so overwritten
        with parts.db.write() as txn:
            record_operation(
                parts.db,
                txn,
                document,
                gone=remove,
                pending=[loc.to_bytes() for loc in located if loc is not None],
            )
        report.bytes_removed += finish_pending(parts, self.store)

    def _held_elsewhere(
        self,
        column: str,
        pairs: set[tuple[bytes, bytes]],
        candidates: set[bytes],
        tombstones: stones.Tombstones,
    ) -> set[bytes]:
        """Which ``candidates`` samples other than the purged ``pairs`` hold.

        The same keys in other columns are looked up; then every distinct
        record page of the stored history is read once (as ``gc`` does) and
        its digests tested as one array; then the staging area.
        """
        if not candidates:
            return set()
        raw_keys = sorted({k for k, _ in pairs})
        held: set[bytes] = set()
        for name in self.roots():
            if name != column:
                for raw, digests in self.holders(name, raw_keys).items():
                    held |= {
                        d
                        for d in digests & candidates
                        if tombstones.find(name, raw, d) is None  # not purged before
                    }
        wanted = np.frombuffer(b"".join(sorted(candidates)), np.uint8).reshape(-1, 32)

        def leaf(name: str, schema: ColumnSchema, page: Node) -> None:
            digests = np.frombuffer(page.vals, np.uint8).reshape(-1, 32)
            for i in np.flatnonzero(stones.rows_in(digests, wanted)).tolist():
                digest = digests[i].tobytes()
                raw = page.keys[i]
                if name == column and (raw, digest) in pairs:
                    continue
                if tombstones.find(name, raw, digest) is not None:
                    continue  # purged before: no longer a reader of this content
                held.add(digest)

        reachable(self.parts.history, self.commits(), digests=False, on_leaf=leaf)
        with self.parts.db.read() as txn:
            for name, edits in self.parts.staging.all_edits(txn).items():
                for raw, digest in edits:
                    if digest not in candidates or (name == column and (raw, digest) in pairs):
                        continue
                    if tombstones.find(name, raw, digest) is None:
                        held.add(digest)
        return held


def _digest(value: str | bytes) -> bytes:
    if isinstance(value, bytes) and len(value) == 32:
        return value
    text = value.decode() if isinstance(value, bytes) else value
    if not isinstance(text, str) or not _HEX_DIGEST.fullmatch(text.lower()):
        raise ValueError(
            f"{value!r} is not a content digest: pass the 64 hex digits column.digest(key) returns"
        )
    return bytes.fromhex(text)


def finish_pending(parts: RepositoryParts, store: ContentStore) -> int:
    """Steps 3 and 4: overwrite what the journal lists, then clear it; return bytes.

    The caller holds the writer lock.
    """
    with parts.db.read() as txn:
        todo = stones.pending(parts.db, txn)
    done = store.scrub([Location.from_bytes(raw) for raw in todo])
    if todo:
        with parts.db.write() as txn:
            stones.clear_pending(parts.db, txn, todo)
        parts.tables.forget()
    return done


def _staged_in(parts: RepositoryParts, column: str) -> bool:
    with parts.db.read() as txn:
        return bool(parts.staging.edits(txn, column))


def _checked_branches(parts: RepositoryParts, branches: Sequence[str]) -> list[str]:
    """``remove_from_branches``, checked before anything is purged."""
    if isinstance(branches, str):
        branches = [branches]
    out = list(dict.fromkeys(branches))
    with parts.db.read() as txn:
        state = parts.staging.state(txn)
        dirty = state is not None and parts.staging.has_changes(txn)
    for branch in out:
        if parts.head(branch) is None:
            raise RefNotFoundError(f"no branch {branch!r} to remove the purged keys from")
        if dirty and state is not None and state.branch == branch:
            raise CaskError(
                f"branch {branch!r} has staged changes; commit or reset them before purging "
                "with remove_from_branches (nothing was purged)"
            )
    return out


def _delete_keys(
    parts: RepositoryParts,
    branch: str,
    column: str,
    raw_keys: list[bytes],
    reason: str,
    author: tuple[str, str],
) -> str | None:
    """Commit the deletion of ``raw_keys`` from ``column`` on ``branch`` (None: none there)."""
    history = parts.history
    head = parts.head(branch)
    assert head is not None
    columns = history.columns(head)
    root = columns.get(column)
    if root is None:
        return None
    found = history.tree.get_many(root.tree, raw_keys)
    present = [r for r, d in zip(raw_keys, found, strict=True) if d is not None]
    if not present:
        return None
    batch = WriteBatch()
    tree = history.tree.with_batch(batch).update(root.tree, [(r, None) for r in sorted(present)])
    columns[column] = ColumnRoot(root.schema, tree, root.count - len(present))
    commit = history.new_commit(
        batch,
        parents=(head,),
        columns=columns,
        author=author[0],
        email=author[1],
        message=f"Purge {len(present)} key(s) of column {column} ({reason})",
    )
    with parts.db.write() as txn:
        history.objects.write(batch)
        if not parts.refs.set_if_equals(HEADS + branch, head, commit.id):
            raise ConcurrentUpdateError(f"branch {branch!r} moved during the purge; purge again")
        state = parts.staging.state(txn)
        if state is not None and state.branch == branch:
            state.base = commit.id
            parts.staging.save_state(txn, state)
    return commit.id


def lift(
    parts: RepositoryParts,
    column: str,
    refused: list[tuple[Tombstone, bytes | None]],
    who: str,
) -> None:
    """Record that stored content lifts the tombstones ``refused`` (``allow_purged``)."""
    entries = [(raw, bytes.fromhex(stone.digest)) for stone, raw in refused]
    document = new_operation(
        "allow",
        column=column,
        entries=entries,
        reason="stored again with allow_purged=True",
        who=who,
    )
    with parts.db.write() as txn:
        record_operation(parts.db, txn, document)


def refuse(column: str, refused: list[tuple[Tombstone, bytes | None]]) -> PurgedDataError:
    """The error for a write of purged content without ``allow_purged``."""
    stone, raw = refused[0]
    what = (
        f"content {stone.digest[:16]} was purged"
        if raw is None
        else f"key {decode_key(raw)!r} was purged with this content"
    )
    return PurgedDataError(
        f"column {column!r}: {what} on {stone.when} by {stone.who} ({stone.reason}); nothing "
        "was written. Pass allow_purged=True to store it again (this is recorded in "
        "repo.tombstones())",
        column=column,
        key=None if raw is None else decode_key(raw),
        digest=stone.digest,
        reason=stone.reason,
    )


class PurgeMethods:
    """Purge (SPEC §6): purge, purge_content, tombstones; mixed into ``Repository``."""

    _parts: RepositoryParts

    def purge(
        self,
        column: str,
        keys: Sequence[Key] | np.ndarray,
        *,
        reason: str,
        remove_from_branches: Sequence[str] = (),
    ) -> PurgeReport:
        """Purge the samples of ``keys`` in ``column`` from every commit.

        Tombstones each ``(column, key, content)`` that any stored commit
        (or the staging area) holds, and removes the bytes of that content
        from every file of the repository, unless samples that are not purged
        hold the same content: those stay readable through them. History is
        not rewritten: commit ids, ``log``, ``diff`` and ``verify`` are
        unchanged, and key listings still show the keys; reading a purged
        sample in any commit raises :class:`~tensorcask.errors.PurgedDataError`
        with ``reason``. ``remove_from_branches`` also commits the deletion
        of the keys on those branches, so that new work does not meet them.

        Takes the writer lock; records who, when and why
        (:meth:`tombstones`). Raises ``KeyError`` (and purges nothing) when a
        key is in no commit of the column.
        """
        parts = self._parts
        parts.require_writable("purge")
        lock = parts.writer_lock()
        lock.acquire("purge")
        try:
            config = parts.config()
            return purge_keys(
                parts,
                column,
                keys,
                reason=reason,
                who=parts.who(),
                author=(config.get("user_name", ""), config.get("user_email", "")),
                remove_from_branches=remove_from_branches,
            )
        finally:
            lock.release()

    def purge_content(self, digests: Sequence[str], *, reason: str) -> PurgeReport:
        """Purge contents (hex digests, as ``column.digest(key)`` gives) wherever they appear.

        Every sample holding one of them, in any commit and under any key,
        raises :class:`~tensorcask.errors.PurgedDataError` from now on, its
        bytes are removed, and storing the content again is refused unless
        ``allow_purged=True`` (on ``update`` or the write checkout). A digest
        the repository never held is tombstoned all the same, so it can never
        be added by mistake.
        """
        parts = self._parts
        parts.require_writable("purge")
        lock = parts.writer_lock()
        lock.acquire("purge")
        try:
            return purge_content(parts, digests, reason=reason, who=parts.who())
        finally:
            lock.release()

    def tombstones(self) -> list[Tombstone]:
        """Every tombstone, in purge order, lifted ones included (the audit trail)."""
        parts = self._parts
        parts.check_alive()
        with parts.db.read() as txn:
            return list(load_tombstones(parts.db, txn).listing)
