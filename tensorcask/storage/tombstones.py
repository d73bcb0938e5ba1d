"""Tombstones: which samples and contents were purged, kept outside history.

A purge never rewrites history (commit ids, record trees and ``verify`` stay
as they are); it records *tombstones* next to it, in the ``meta`` table of
the metadata environment, and removes the bytes. Two kinds:

* a **key tombstone** ``(column, key, digest)``: the sample a key held, in
  every commit that holds that key with that content. Other keys holding the
  same content stay readable, and a later write of other content to the key
  is a new sample;
* a **content tombstone** ``digest``: that content, under any key.

What is stored (each document sealed, see :meth:`MetaDB.put_json`):

* ``purge/<n>``: one document per operation, in order: a purge of keys, a
  purge of contents, or an ``allow`` that lifts tombstones because their
  content was stored again with ``allow_purged=True``. Who, when and why are
  part of each; nothing is ever removed, so the list is the audit trail.
* ``purge_gone``: digests whose bytes a purge removed and nothing stored
  again. Their index entries may remain; the store treats them as absent
  when deciding what to store.
* ``purge_pending``: the locations a purge still has to overwrite (its
  journal: written in the transaction that records the tombstones, cleared
  once the bytes are gone, finished by the next purge or ``gc`` after a crash).
* ``purge_generation``: bumped by every change, so readers notice one.

:class:`Tombstones` is the decoded, in-memory view every read checks.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, cast

import lmdb
import numpy as np

from ..errors import CorruptionError, PurgedDataError
from ..keys import Key, decode_key
from .db import MetaDB

__all__ = [
    "GENERATION",
    "Keys",
    "Tombstone",
    "Tombstones",
    "add_pending",
    "build_tombstones",
    "bump",
    "check_operation",
    "clear_pending",
    "default_who",
    "generation",
    "load_tombstones",
    "new_operation",
    "now_iso",
    "operations",
    "pending",
    "purged_error",
    "record_operation",
    "rows_in",
    "update_gone",
]

Keys = Sequence[bytes] | Callable[[], Sequence[bytes]] | None
"""The encoded keys of a read: a sequence, a function giving it (called only when
a key tombstone needs it), or None (content tombstones only)."""

GENERATION = "purge_generation"
GONE = "purge_gone"
PENDING = "purge_pending"
_OPERATION = "purge/"


@dataclass(frozen=True)
class Tombstone:
    """One purged sample (``kind="key"``) or content (``kind="content"``).

    Attributes
    ----------
    kind:
        ``"key"``: the sample ``column``/``key`` with content ``digest``, in
        every commit; ``"content"``: content ``digest`` under any key.
    digest:
        Hex content digest.
    column, key:
        The purged sample (None for a content tombstone).
    reason, who, when:
        Why, by whom and when (ISO 8601, UTC) it was purged.
    lifted:
        None while in force; else who lifted it and when, by storing the
        content again with ``allow_purged=True``.
    """

    kind: str
    digest: str
    column: str | None
    key: Key | None
    reason: str
    who: str
    when: str
    lifted: str | None = None


def now_iso() -> str:
    """The current time as ISO 8601 in UTC, to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_who(name: str | None, email: str | None) -> str:
    """Who acts: ``name <email>`` as configured, else the login name."""
    if not name:
        try:
            name = getpass.getuser()
        except (OSError, KeyError):
            name = "unknown"
    return f"{name} <{email}>" if email else name


class Tombstones:
    """The tombstones in force and the removed digests of one snapshot.

    ``content``: digest -> tombstone; ``keys``: column -> encoded key ->
    digest -> tombstone; ``gone``: digests whose bytes were removed.
    """

    def __init__(
        self,
        generation: int,
        listing: list[Tombstone],
        raw_keys: list[bytes | None],
        gone: set[bytes],
    ) -> None:
        self.generation = generation
        self.listing = listing
        self.gone = frozenset(gone)
        self.content: dict[bytes, Tombstone] = {}
        self.keys: dict[str, dict[bytes, dict[bytes, Tombstone]]] = {}
        for stone, raw in zip(listing, raw_keys, strict=True):
            if stone.lifted is not None:
                continue
            digest = bytes.fromhex(stone.digest)
            if stone.kind == "content":
                self.content[digest] = stone
            elif stone.column is not None and raw is not None:
                self.keys.setdefault(stone.column, {}).setdefault(raw, {})[digest] = stone
        self.active = bool(self.content or self.keys)
        # The same as digest arrays, to test a table's batch of records at once.
        self._content_rows = _rows(self.content)
        self._key_rows = {
            column: _rows({d for stones in by_key.values() for d in stones})
            for column, by_key in self.keys.items()
        }

    # -- reads -----------------------------------------------------------

    def find(self, column: str | None, raw_key: bytes | None, digest: bytes) -> Tombstone | None:
        """The tombstone that forbids reading this sample, if any."""
        stone = self.content.get(digest)
        if stone is None and column is not None and raw_key is not None:
            stone = self.keys.get(column, {}).get(raw_key, {}).get(digest)
        return stone

    def by_key(self, column: str, raw_key: bytes, digest: bytes) -> Tombstone | None:
        """The key tombstone of this sample, if any (content tombstones aside)."""
        return self.keys.get(column, {}).get(raw_key, {}).get(digest)

    def check(
        self,
        digests: Sequence[bytes],
        column: str | None = None,
        keys: Keys = None,
    ) -> None:
        """Raise :class:`PurgedDataError` for the first purged sample of a read.

        Without ``column`` and ``keys`` only content tombstones apply.
        """
        by_key = self.keys.get(column) if column is not None and keys is not None else None
        if not self.content and by_key is None:
            return
        rows = getattr(digests, "rows", None)
        at: Iterable[int]
        if rows is not None:  # a table's records: test the batch at once, then the hits
            batch = rows()
            hit = rows_in(batch, self._content_rows)
            if by_key is not None:
                hit |= rows_in(batch, self._key_rows[str(column)])
            if not hit.any():
                return
            at = np.flatnonzero(hit).tolist()
        else:
            at = range(len(digests))
        raw_keys = keys() if callable(keys) else keys
        for i in at:
            digest = digests[i]
            stone = self.content.get(digest)
            if stone is None and by_key is not None:
                assert raw_keys is not None
                stone = by_key.get(raw_keys[i], {}).get(digest)
            if stone is not None:
                raw = raw_keys[i] if raw_keys is not None else None
                raise purged_error(stone, column, None if raw is None else decode_key(raw))

    def purged_rows(
        self,
        column: str,
        digests: np.ndarray,
        positions: Callable[[list[bytes]], np.ndarray],
    ) -> np.ndarray:
        """Which records of a column table are purged: a bool mask.

        ``digests``: the records' digests as an ``(n, 32)`` uint8 array;
        ``positions``: the table's record index of each encoded key (-1: absent).
        """
        mask = np.zeros(len(digests), bool)
        if self.content:
            mask |= rows_in(digests, self._content_rows)
        by_key = self.keys.get(column, {})
        if by_key:
            raws = list(by_key)
            for raw, i in zip(raws, positions(raws).tolist(), strict=True):
                if i >= 0 and digests[i].tobytes() in by_key[raw]:
                    mask[i] = True
        return mask

    def refused(
        self, column: str, raw_keys: Sequence[bytes], digests: Sequence[bytes]
    ) -> list[tuple[Tombstone, bytes | None]]:
        """The tombstones a write of these samples would store content against.

        Each is returned with the encoded key it concerns (None: content).
        """
        out: list[tuple[Tombstone, bytes | None]] = []
        by_key = self.keys.get(column, {})
        for raw, digest in zip(raw_keys, digests, strict=True):
            stone = self.content.get(digest)
            if stone is not None:
                out.append((stone, None))
            stone = by_key.get(raw, {}).get(digest)
            if stone is not None:
                out.append((stone, raw))
        return out


def purged_error(stone: Tombstone, column: str | None, key: object) -> PurgedDataError:
    """The error for a read of a purged sample, naming it and the purge."""
    what = (
        f"column {column!r}, key {key!r}: this sample"
        if column is not None
        else f"content {stone.digest[:16]}"
    )
    kind = "its content was purged" if stone.kind == "content" else "it was purged"
    return PurgedDataError(
        f"{what}: {kind} on {stone.when} by {stone.who} ({stone.reason}); its bytes are gone "
        "from this repository. Build loaders with skip_purged=True to leave purged samples out",
        column=column,
        key=key,
        digest=stone.digest,
        reason=stone.reason,
    )


def _rows(digests: Iterable[bytes]) -> np.ndarray:
    """Digests as an ``(n, 32)`` uint8 array."""
    return np.frombuffer(b"".join(sorted(digests)), np.uint8).reshape(-1, 32)


def rows_in(rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Which rows of an ``(n, 32)`` uint8 array appear in ``wanted``.

    Tested on the first 8 bytes as integers (digests are uniformly random, so
    that settles almost every row), then the few candidates in full.
    """
    if not len(rows) or not len(wanted):
        return np.zeros(len(rows), bool)
    hit = np.isin(_heads(rows), _heads(wanted))
    if hit.any():
        at = np.flatnonzero(hit)
        as_void = np.dtype((np.void, 32))
        full = np.ascontiguousarray(rows[at]).view(as_void).ravel()
        hit[at] = np.isin(full, np.ascontiguousarray(wanted).view(as_void).ravel())
    return hit


def _heads(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows[:, :8]).view("<u8").ravel()


# -- storage --------------------------------------------------------------


def generation(db: MetaDB, txn: lmdb.Transaction) -> int:
    """The purge generation of a snapshot (0: never purged)."""
    value = db.get_json(txn, GENERATION)
    return int(value) if isinstance(value, int) else 0


def operations(db: MetaDB, txn: lmdb.Transaction) -> list[dict[str, Any]]:
    """Every operation document of a snapshot, in the order they were recorded."""
    prefix = _OPERATION.encode()
    out = []
    cursor = db.cursor(txn, "meta")
    if cursor.set_range(prefix):
        for raw_key, raw in cursor:
            key = bytes(raw_key)
            if not key.startswith(prefix):
                break
            out.append(db.decode_json(bytes(raw), key.decode()))
    return out


def load_tombstones(db: MetaDB, txn: lmdb.Transaction) -> Tombstones:
    """Every tombstone of a snapshot, lifted ones included, in purge order."""
    gen = generation(db, txn)
    if not gen:
        return Tombstones(0, [], [], set())
    gone = {bytes.fromhex(d) for d in db.get_json(txn, GONE) or []}
    return build_tombstones(gen, operations(db, txn), gone)


def build_tombstones(gen: int, docs: Iterable[dict[str, Any]], gone: set[bytes]) -> Tombstones:
    """The tombstones that operation documents (in order) leave in force."""
    listing: list[Tombstone] = []
    raws: list[bytes | None] = []
    at: dict[tuple[str | None, bytes | None, str], int] = {}
    for op in docs:
        column = op.get("column")
        if op["op"] == "allow":
            lifted = f"{op['who']} at {op['at']}"
            for raw_hex, digest in op["entries"]:
                raw = None if raw_hex is None else bytes.fromhex(raw_hex)
                i = at.get((column if raw is not None else None, raw, digest))
                if i is not None:
                    listing[i] = replace(listing[i], lifted=lifted)
            continue
        kind = "content" if op["op"] == "purge_content" else "key"
        for raw_hex, digest in op["entries"]:
            raw = None if raw_hex is None else bytes.fromhex(raw_hex)
            where = (column if raw is not None else None, raw, digest)
            if where in at and listing[at[where]].lifted is None:
                continue  # purged again (elsewhere, or before this clone knew): one tombstone
            key = None if raw is None else decode_key(raw)
            stone = Tombstone(kind, digest, column, key, op["reason"], op["who"], op["at"])
            at[where] = len(listing)
            listing.append(stone)
            raws.append(raw)
    return Tombstones(gen, listing, raws, gone)


def new_operation(
    op: str,
    *,
    column: str | None,
    entries: Iterable[tuple[bytes | None, bytes]],
    reason: str,
    who: str,
) -> dict[str, Any]:
    """A new operation document (``purge``, ``purge_content`` or ``allow``), named by
    the hash of its content (``id``), the same in every copy of the repository."""
    document: dict[str, Any] = {
        "op": op,
        "column": column,
        "entries": [[None if k is None else k.hex(), d.hex()] for k, d in entries],
        "reason": reason,
        "who": who,
        "at": now_iso(),
        "time": time.time(),
    }
    document["id"] = operation_id(document)
    return document


def operation_id(document: dict[str, Any]) -> str:
    """The name of an operation document: blake2b-256 of its canonical JSON, less ``id``."""
    body = {k: v for k, v in document.items() if k != "id"}
    return hashlib.blake2b(json.dumps(body, sort_keys=True).encode(), digest_size=32).hexdigest()


def check_operation(document: Any, where: str) -> dict[str, Any]:
    """An operation document read from elsewhere, checked: well formed, and named by its hash."""
    try:
        ok = (
            isinstance(document, dict)
            and document["op"] in ("purge", "purge_content", "allow")
            and operation_id(document) == document["id"]
            and all(
                (k is None or bytes.fromhex(k)) is not None and len(bytes.fromhex(d)) == 32
                for k, d in document["entries"]
            )
            and isinstance(document["reason"], str)
            and isinstance(document["who"], str)
            and isinstance(document["at"], str)
        )
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise CorruptionError(
            f"the purge record {where} is malformed or does not match its name; "
            "it was damaged: restore it from a copy",
            path=where,
        )
    return cast(dict[str, Any], document)


def record_operation(
    db: MetaDB,
    txn: lmdb.Transaction,
    document: dict[str, Any],
    *,
    gone: Iterable[bytes] = (),
    pending: Iterable[bytes] = (),
) -> None:
    """Append one operation document in ``txn`` (nothing if its ``id`` is recorded).

    ``gone``: digests whose bytes are being removed; ``pending``: encoded
    locations still to overwrite.
    """
    if document["id"] in {op["id"] for op in operations(db, txn)}:
        return
    gen = generation(db, txn) + 1
    db.put_json(txn, f"{_OPERATION}{gen:010d}", document)
    update_gone(db, txn, add=gone, remove=())
    add_pending(db, txn, pending)
    db.put_json(txn, GENERATION, gen)


def update_gone(
    db: MetaDB, txn: lmdb.Transaction, *, add: Iterable[bytes], remove: Iterable[bytes]
) -> bool:
    """Add and remove removed digests; True if the set changed."""
    current = set(db.get_json(txn, GONE) or [])
    changed = current | {d.hex() for d in add}
    changed -= {d.hex() for d in remove}
    if changed == current:
        return False
    db.put_json(txn, GONE, sorted(changed))
    return True


def bump(db: MetaDB, txn: lmdb.Transaction) -> None:
    """Tell readers something about purges changed."""
    db.put_json(txn, GENERATION, generation(db, txn) + 1)


def pending(db: MetaDB, txn: lmdb.Transaction) -> list[bytes]:
    """The encoded locations a purge has yet to overwrite."""
    return [bytes.fromhex(x) for x in db.get_json(txn, PENDING) or []]


def add_pending(db: MetaDB, txn: lmdb.Transaction, locations: Iterable[bytes]) -> None:
    """Journal locations to overwrite (kept until :func:`clear_pending`)."""
    new = [x.hex() for x in locations]
    if new:
        current = db.get_json(txn, PENDING) or []
        db.put_json(txn, PENDING, list(dict.fromkeys([*current, *new])))


def clear_pending(db: MetaDB, txn: lmdb.Transaction, done: Iterable[bytes]) -> None:
    """Drop overwritten locations from the journal."""
    finished = {x.hex() for x in done}
    left = [x for x in db.get_json(txn, PENDING) or [] if x not in finished]
    if left:
        db.put_json(txn, PENDING, left)
    else:
        db.delete(txn, "meta", PENDING.encode())
