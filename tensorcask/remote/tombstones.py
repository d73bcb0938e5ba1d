"""Purge records on a remote, and what a push, fetch or reader does with them.

Each purge operation (see :mod:`tensorcask.storage.tombstones`) is one
create-only object, ``tombstones/<id>.json``, named by the hash of its
content, so every copy of a repository names an operation alike and a record
is never written twice. A push first applies the remote's records this
repository lacks (removing the bytes they purge here), so that it never
uploads them again; a fetch applies them once it has stored the remote's
history, and downloads no sample a record purges. A push uploads the records
the remote lacks.
After a push uploaded what the remote lacked, the purged contents the remote
still holds are removed from its data packs (the packs holding them are
rewritten without them), unless samples in the remote's history that are not
purged hold them too.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..history.objects import ColumnSchema
from ..history.reach import reachable
from ..history.refs import HEADS, TAGS
from ..history.store import History
from ..history.tree import Node
from ..parts import RepositoryParts
from ..purge import apply_operations
from ..storage.tombstones import (
    Tombstones,
    build_tombstones,
    check_operation,
    load_tombstones,
    operations,
    rows_in,
)
from .remote import LayeredObjects, Remote

__all__ = [
    "TOMBSTONES_FOLDER",
    "apply_new",
    "combined",
    "purged_contents",
    "read_records",
    "remote_tombstones",
    "remove_purged",
    "restorable",
    "upload_records",
]

TOMBSTONES_FOLDER = "tombstones"


def read_records(remote: Remote) -> dict[str, dict[str, Any]]:
    """The remote's purge records by id, each checked against its name."""
    transport = remote.transport
    listing = transport.list_files(TOMBSTONES_FOLDER)
    names = sorted(n for n in listing if n.endswith(".json"))
    paths = [transport.path(f"{TOMBSTONES_FOLDER}/{n}") for n in names]
    out: dict[str, dict[str, Any]] = {}
    for name, path, raw in zip(
        names, paths, transport.cat_many(paths, [listing[n] for n in names]), strict=True
    ):
        try:
            document = json.loads(raw)
        except ValueError:
            document = None
        checked = check_operation(document, path)
        if checked["id"] != name[: -len(".json")]:
            check_operation(None, path)  # named for another record: damaged
        out[checked["id"]] = checked
    return out


def remote_tombstones(remote: Remote) -> Tombstones:
    """The tombstones a remote's records leave in force (for readers without a clone)."""
    records = read_records(remote)
    docs = sorted(records.values(), key=lambda d: (d.get("time", 0), d["id"]))
    return build_tombstones(len(docs), docs, set())


def apply_new(parts: RepositoryParts, records: dict[str, dict[str, Any]]) -> int:
    """Apply the records this repository lacks (removing the bytes they purge here); how
    many. The caller holds the writer lock, and has stored the history the records are
    about (so that what other samples hold is judged on all of it)."""
    with parts.db.read() as txn:
        ours = {op["id"] for op in operations(parts.db, txn)}
    new_here = [doc for i, doc in records.items() if i not in ours]
    if new_here:
        apply_operations(parts, new_here)
    return len(new_here)


def combined(parts: RepositoryParts, records: dict[str, dict[str, Any]]) -> Tombstones:
    """The tombstones of this repository's records and the remote's together."""
    with parts.db.read() as txn:
        ours = operations(parts.db, txn)
        gone = load_tombstones(parts.db, txn).gone
    known = {op["id"] for op in ours}
    theirs = sorted(
        (d for i, d in records.items() if i not in known), key=lambda d: (d.get("time", 0), d["id"])
    )
    return build_tombstones(len(ours) + len(theirs), [*ours, *theirs], set(gone))


def upload_records(parts: RepositoryParts, remote: Remote, theirs: set[str]) -> int:
    """Send the remote the purge records it lacks (create-only); how many."""
    with parts.db.read() as txn:
        ours = operations(parts.db, txn)
    sent = 0
    for doc in ours:
        if doc["id"] not in theirs:
            path = remote.transport.path(f"{TOMBSTONES_FOLDER}/{doc['id']}.json")
            sent += remote.transport.create(path, json.dumps(doc, sort_keys=True).encode())
    return sent


def purged_contents(parts: RepositoryParts) -> set[bytes]:
    """Contents never to upload: removed here by a purge, or purged by content."""
    with parts.db.read() as txn:
        tombstones = load_tombstones(parts.db, txn)
    return set(tombstones.gone) | set(tombstones.content)


def restorable(parts: RepositoryParts) -> list[bytes]:
    """Contents a purge named that are stored here and readable again: a sample that is
    not purged holds them, or their tombstone was lifted. A remote's purge may have
    removed them, and the history walk of a push (which skips what the remote's refs
    reach) would not send them again."""
    with parts.db.read() as txn:
        tombstones = load_tombstones(parts.db, txn)
    named = {bytes.fromhex(t.digest) for t in tombstones.listing}
    named -= tombstones.gone | set(tombstones.content)
    if not named:
        return []
    chosen = sorted(named)
    found = parts.store.lookup_raw(chosen)
    return [d for d, raw in zip(chosen, found, strict=True) if isinstance(raw, bytes)]


def remove_purged(parts: RepositoryParts, remote: Remote) -> int:
    """Remove from the remote's data packs the purged contents it still holds; how many.

    Contents purged by content go wherever they are; contents of purged keys
    stay while a sample of the remote's history that is not purged holds
    them (the history is walked only when the remote holds such content).
    """
    with parts.db.read() as txn:
        tombstones = load_tombstones(parts.db, txn)
    candidates = sorted(tombstones.gone | set(tombstones.content))
    if not candidates:
        return 0
    remote.data.refresh()
    there = remote.data.locate(candidates).found()
    present = [d for d, h in zip(candidates, there.tolist(), strict=True) if h]
    shared = [d for d in present if d not in tombstones.content]
    doomed = set(present) - _held_on_remote(parts, remote, shared, tombstones)
    if not doomed:
        return 0
    return remote.data.remove_entries(sorted(doomed))


def _held_on_remote(
    parts: RepositoryParts, remote: Remote, candidates: list[bytes], tombstones: Tombstones
) -> set[bytes]:
    """Which ``candidates`` a sample of the remote's history holds that is not purged."""
    if not candidates:
        return set()
    listing, _ = remote.refs.scan()
    starts = sorted({c for n, c in listing.items() if n.startswith((HEADS, TAGS))})
    history = History(LayeredObjects(parts.objects, remote.objects), remote.refs)
    wanted = np.frombuffer(b"".join(candidates), np.uint8).reshape(-1, 32)
    chosen = set(candidates)
    held: set[bytes] = set()
    purged_keys: set[bytes] = set()

    def leaf(column: str, schema: ColumnSchema, page: Node) -> None:
        digests = np.frombuffer(page.vals, np.uint8).reshape(-1, 32)
        for i in np.flatnonzero(rows_in(digests, wanted)).tolist():
            digest = digests[i].tobytes()
            if tombstones.find(column, page.keys[i], digest) is None:
                held.add(digest)
            else:
                purged_keys.add(page.keys[i])

    walk = reachable(history, starts, digests=False, on_leaf=leaf)
    # A page two columns share is visited once, under one name: look the purged
    # keys up in every column, so a column holding the same record keeps it.
    keys = sorted(purged_keys)
    seen: set[tuple[str, bytes]] = set()
    for commit in walk.commits if keys and len(held) < len(candidates) else []:
        for column, root in history.columns(commit).items():
            if (column, root.tree) in seen:
                continue
            seen.add((column, root.tree))
            for raw, digest in zip(keys, history.tree.get_many(root.tree, keys), strict=True):
                if digest in chosen and tombstones.find(column, raw, digest) is None:
                    held.add(digest)
    return held
