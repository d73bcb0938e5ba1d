"""The content index: digest -> encoded location, log-structured.

Digests are uniformly random, so inserting them into one large B-tree
dirties pages all over it on every batch: the cost of a write would grow
with the repository. Instead the index is two-tiered, like an LSM tree:

* the ``content`` LMDB table holds recent entries; it is kept below
  :data:`RECENT_LIMIT` entries, so a batch of inserts touches a bounded
  number of pages;
* when it fills up, the writer compacts it into an immutable *run file*:
  entries sorted by digest, memory-mapped by readers and searched with
  vectorised ``searchsorted``. Runs of the same tier are merged once
  :data:`FANOUT` of them exist, so lookups visit O(log n) runs.

Run files are written and fsynced before the metadata transaction that lists
them (``meta["runs"]``) commits, and removed only after the transaction that
unlists them, so a crash leaves at worst an unlisted file that ``gc``
deletes. A reader resolves recent entries and the run list in one snapshot.

Run file layout (little-endian)::

    b"TCIX0002" | count u64 | blob bytes u64 | body check u64 | blob check u64 | header check u64
    prefixes  count x u64   first 8 digest bytes as a big-endian integer (sort key)
    digests   count x 32 bytes
    offsets   (count + 1) x u64 into the blob
    blob      concatenated sealed entries

Nothing read from the index is decoded unchecked. Every entry, in the recent
table and in runs, is *sealed*: the encoded location with its version byte
set to 2 and a 4-byte check over the digest and the entry appended, so a
damaged entry is a :class:`~tensorcask.errors.CorruptionError` naming the file
it is in, confined to that one digest. A run's header carries its own check;
the body check (over prefixes, digests and offsets) is verified when a
committed digest cannot be found and by ``verify``, to tell a damaged run from
missing content. Large lookups (resolving a whole column) check a run's body
and blob once, wholesale, instead of each entry; where that fails they fall
back to checking each entry, so damage stays confined to its entries. Runs
of the first layout (``TCIX0001``) and unsealed entries (version 1) written
before sealing are still read; an unsealed entry is
accepted only if it decodes to a known backend and re-encodes to the same
bytes. Merging rewrites both in the current form.
"""

from __future__ import annotations

import contextlib
import os
import struct
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import cast

import lmdb
import numpy as np
from xxhash import xxh3_64_digest, xxh3_64_intdigest

from ..errors import CorruptionError
from .base import Location
from .db import MetaDB

__all__ = ["BULK_ENTRIES", "FANOUT", "RECENT_LIMIT", "ContentIndex", "Found", "seal", "unseal"]

RECENT_LIMIT = 1 << 16
FANOUT = 4
BULK_ENTRIES = 4096
"""A batch of at least this many new entries is published as a run file of its own."""
_MAGIC_V1 = b"TCIX0001"
_MAGIC = b"TCIX0002"
_HEAD_V1 = struct.Struct("<8sQQ")
_HEAD = struct.Struct("<8sQQQQQ")
_BULK = 1024  # lookups at least this large check a run's entries wholesale
_SEALED = 2
_SEALED_BYTE = bytes((_SEALED,))
_CHECK_BYTES = 4

Found = bytes | CorruptionError | None
"""A lookup result: an encoded location, the error of a damaged entry, or None (absent)."""


def seal(digest: bytes, location: bytes) -> bytes:
    """The stored form of an index entry: version 2 and a check over digest and entry."""
    body = _SEALED_BYTE + location[1:]
    return body + xxh3_64_digest(digest + body)[:_CHECK_BYTES]


def unseal(digest: bytes, value: bytes, where: str) -> bytes | CorruptionError:
    """The encoded location of a stored entry, or the error naming its damage."""
    if len(value) > _CHECK_BYTES + 1 and value[0] == _SEALED:
        body = value[:-_CHECK_BYTES]
        if xxh3_64_digest(digest + body)[:_CHECK_BYTES] == value[-_CHECK_BYTES:]:
            return b"\x01" + body[1:]
    elif value[:1] == b"\x01" and _plausible_legacy(value):
        return value
    return damaged_entry(digest, where)


def _plausible_legacy(value: bytes) -> bool:
    from .backends import BACKENDS  # the registry imports every backend: only needed here

    try:
        loc = Location.from_bytes(value)
    except (ValueError, struct.error, UnicodeDecodeError):
        return False
    return loc.backend in BACKENDS and loc.to_bytes() == value


def damaged_entry(digest: bytes, where: str) -> CorruptionError:
    """The error for an index entry that fails its check."""
    return CorruptionError(
        f"the content index entry of content {digest.hex()[:16]} in {where} fails its "
        "checksum; the index is damaged: restore the repository from a clone or backup",
        path=where,
    )


def _prefixes(digests: np.ndarray) -> np.ndarray:
    """Sort keys of an (n, 32) uint8 digest array."""
    return np.ascontiguousarray(digests[:, :8]).view(">u8").ravel().astype("<u8")


class Run:
    """One immutable, memory-mapped run file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        # a plain ndarray view indexes faster than np.memmap and keeps the map alive
        raw = np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)
        self._raw = raw
        head = raw[: _HEAD.size].tobytes()
        self._body_check: int | None = None
        if head[:8] == _MAGIC and len(head) == _HEAD.size:
            _, count, blob, body_check, blob_check, head_check = _HEAD.unpack(head)
            if xxh3_64_intdigest(head[:40]) != head_check:
                raise self.damaged("its header fails its checksum")
            self._body_check = body_check
            pos = _HEAD.size
        elif head[:8] == _MAGIC_V1 and len(head) >= _HEAD_V1.size:
            _, count, blob = _HEAD_V1.unpack_from(head)
            pos = _HEAD_V1.size
        else:
            raise self.damaged("it does not start like a run file")
        if raw.size != pos + count * 48 + 8 + blob:
            raise self.damaged("its size does not match its header")
        self._body = (pos, pos + count * 48 + 8)  # prefixes, digests, offsets
        self._checked = self._body_check is None
        self._blob_check: int | None = blob_check if self._body_check is not None else None
        self._blob_sound: bool | None = None
        self.count = count
        self.prefixes = raw[pos : pos + 8 * count].view("<u8")
        pos += 8 * count
        self.digests = raw[pos : pos + 32 * count].reshape(count, 32)
        pos += 32 * count
        self.offsets = raw[pos : pos + 8 * (count + 1)].view("<u8")
        self.blob = raw[pos + 8 * (count + 1) :]

    def damaged(self, why: str) -> CorruptionError:
        """The error naming this run file as damaged."""
        return CorruptionError(
            f"content index run {self.where} is damaged ({why}); restore the repository "
            "from a clone or backup",
            path=self.where,
        )

    def check(self) -> CorruptionError | None:
        """Verify the body check (prefixes, digests, offsets) once; the error if it fails."""
        if not self._checked:
            start, end = self._body
            if xxh3_64_intdigest(self._raw[start:end].data) != self._body_check:
                return self.damaged("its digests or offsets fail their checksum")
            self._checked = True
        return None

    def entries_sound(self) -> bool:
        """Whether the whole blob of sealed entries matches its check (computed once).

        Large lookups then take entries without checking each: the run's body
        and blob checks cover them all. False for runs of the first layout.
        """
        if self._blob_sound is None:
            self._blob_sound = (
                self._blob_check is not None
                and self.check() is None
                and xxh3_64_intdigest(self.blob.data) == self._blob_check
            )
        return self._blob_sound

    def blob_matches(self) -> bool:
        """Whether the blob of sealed entries matches its check, computed now (for
        ``verify``); False for runs of the first layout, which carry none."""
        return self._blob_check is not None and (
            xxh3_64_intdigest(self.blob.data) == self._blob_check
        )

    def check_order(self) -> CorruptionError | None:
        """Whether the sort keys are sorted and agree with the digests (legacy runs
        carry no body check; this catches most damage to them)."""
        if self.count and (
            (self.prefixes[1:] < self.prefixes[:-1]).any()
            or not np.array_equal(self.prefixes, _prefixes(self.digests))
            or (self.offsets[1:] < self.offsets[:-1]).any()
            or int(self.offsets[-1]) != len(self.blob)
        ):
            return self.damaged("its sort keys, digests or offsets disagree")
        return None

    def location(self, i: int) -> bytes | CorruptionError:
        """Encoded location of entry ``i`` (checked), or the error naming its damage."""
        raw = self.blob[int(self.offsets[i]) : int(self.offsets[i + 1])].tobytes()
        return unseal(self.digests[i].tobytes(), raw, self.where)

    def find(self, queries: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
        """Entry index of each query digest, or -1."""
        count = self.count
        if count == 0:
            return np.full(len(queries), -1, np.int64)
        pos = np.searchsorted(self.prefixes, prefixes)
        inside = pos < count
        clipped = np.minimum(pos, count - 1)
        hit = inside & (self.prefixes[clipped] == prefixes)
        hit &= (self.digests[clipped] == queries).all(axis=1)
        out = np.where(hit, clipped, -1)
        # equal 8-byte prefixes of different digests: scan the (tiny) run of equals
        for q in np.flatnonzero(inside & ~hit & (self.prefixes[clipped] == prefixes)):
            p = int(pos[q])
            while p < count and self.prefixes[p] == prefixes[q]:
                if (self.digests[p] == queries[q]).all():
                    out[q] = p
                    break
                p += 1
        return out

    def locations(self, indexes: np.ndarray) -> list[bytes | CorruptionError]:
        """Checked locations of many entries (gathered at once when equally long)."""
        if not len(indexes):
            return []
        starts = self.offsets[indexes].astype(np.int64)
        ends = self.offsets[indexes + 1].astype(np.int64)
        lengths = ends - starts
        width = int(lengths[0])
        if (lengths == width).all() and width > 0 and int(ends.max()) <= len(self.blob):
            matrix = self.blob[starts[:, None] + np.arange(width)]
            if (
                len(indexes) >= _BULK
                and width > _CHECK_BYTES + 1
                and (matrix[:, 0] == _SEALED).all()
                and self.entries_sound()
            ):
                matrix[:, 0] = 1  # unsealed form: version 1, check dropped
                plain = matrix[:, : width - _CHECK_BYTES].tobytes()
                size = width - _CHECK_BYTES
                return [plain[i : i + size] for i in range(0, len(plain), size)]
            gathered = matrix.tobytes()
            digests = self.digests[indexes].tobytes()
            where = self.where
            return [
                unseal(
                    digests[i * 32 : i * 32 + 32], gathered[i * width : i * width + width], where
                )
                for i in range(len(indexes))
            ]
        return [self.location(int(i)) for i in indexes]

    def find_one(self, digest: bytes) -> int:
        """Entry index of one digest, or -1 (no per-call numpy array work)."""
        prefix = np.uint64(int.from_bytes(digest[:8], "big"))  # a Python int would cast the array
        p = int(self.prefixes.searchsorted(prefix))
        while p < self.count and self.prefixes[p] == prefix:
            if self.digests[p].tobytes() == digest:
                return p
            p += 1
        return -1

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(digest, stored entry)`` as stored (for merging runs)."""
        damage = self.check()
        if damage is not None:
            raise damage
        for i in range(self.count):
            yield (
                self.digests[i].tobytes(),
                self.blob[int(self.offsets[i]) : int(self.offsets[i + 1])].tobytes(),
            )


def write_run(directory: Path, entries: Sequence[tuple[bytes, bytes]]) -> str:
    """Write stored entries (sorted or not) as a new run file (fsynced); return its name.

    Unsealed entries (as encoded locations come, and as older repositories
    stored them) are sealed on the way.
    """
    digests = np.frombuffer(b"".join([d for d, _ in entries]), np.uint8).reshape(-1, 32)
    prefixes = _prefixes(digests)
    order = np.argsort(prefixes, kind="stable")
    values = [entries[i][1] for i in order.tolist()]
    ordered = digests[order]
    width = len(values[0]) if values else 0
    if width > 1 and all(len(v) == width and v[:1] == b"\x01" for v in values):
        # The usual case, one column's new contents: seal them as one matrix.
        bodies = np.frombuffer(b"".join(values), np.uint8).reshape(len(values), width).copy()
        bodies[:, 0] = _SEALED
        keyed = np.concatenate([ordered, bodies], axis=1).tobytes()
        step = 32 + width
        checks = b"".join(
            [xxh3_64_digest(keyed[i : i + step])[:_CHECK_BYTES] for i in range(0, len(keyed), step)]
        )
        sealed = np.concatenate(
            [bodies, np.frombuffer(checks, np.uint8).reshape(len(values), _CHECK_BYTES)], axis=1
        )
        offsets = np.arange(len(values) + 1, dtype="<u8") * (width + _CHECK_BYTES)
        return _write_run_file(directory, prefixes[order], ordered, offsets, sealed.tobytes())
    locs = [
        value if value[:1] != b"\x01" else seal(digest, value)
        for digest, value in zip((entries[i][0] for i in order.tolist()), values, strict=True)
    ]
    offsets = np.zeros(len(locs) + 1, "<u8")
    np.cumsum([len(b) for b in locs], out=offsets[1:])
    return _write_run_file(directory, prefixes[order], ordered, offsets, b"".join(locs))


def _write_run_file(
    directory: Path, prefixes: np.ndarray, digests: np.ndarray, offsets: np.ndarray, blob: bytes
) -> str:
    """Write a run file of entries already sorted and sealed (fsynced); return its name."""
    body = prefixes.astype("<u8").tobytes() + digests.tobytes() + offsets.astype("<u8").tobytes()
    head = struct.pack(
        "<8sQQQQ",
        _MAGIC,
        len(digests),
        len(blob),
        xxh3_64_intdigest(body),
        xxh3_64_intdigest(blob),
    )
    name = f"{uuid.uuid4().hex}.run"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    with open(path, "xb") as f:
        f.write(head + xxh3_64_intdigest(head).to_bytes(8, "little"))
        f.write(body)
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return name


def _merged_arrays(
    runs: list[Run],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bytes] | None:
    """Sort keys, digests, offsets and blob of ``runs`` (youngest first) merged into one
    run, the youngest entry of a digest winning; None where a run's entries are not
    covered by its blob check (then each entry is checked on its own)."""
    if not all(run.entries_sound() for run in runs):
        return None
    digests = np.concatenate([run.digests for run in runs])
    n = len(digests)
    if n == 0:
        return None
    # Sort stably, so that of equal digests the youngest comes first: by sort key
    # (the first 8 bytes), and by the whole digest only if two different digests
    # share a sort key (which practically never happens).
    prefixes = np.concatenate([run.prefixes for run in runs])
    order = np.argsort(prefixes, kind="stable")
    ordered = digests[order]
    first = np.ones(n, bool)
    first[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    same_key = prefixes[order][1:] == prefixes[order][:-1]
    if (same_key & first[1:]).any():
        words = np.ascontiguousarray(digests).view(">u8").reshape(n, 4).astype(np.uint64)
        order = np.lexsort((words[:, 3], words[:, 2], words[:, 1], words[:, 0]))
        ordered = digests[order]
        first[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    chosen = order[first]
    everything = np.concatenate([run.blob for run in runs])
    lengths = np.concatenate([np.diff(run.offsets.astype(np.int64)) for run in runs])
    width = int(lengths[0])
    if width and (lengths == width).all():  # equal entries: the blobs are one matrix
        blob = everything.reshape(-1, width)[chosen].tobytes()
        offsets = np.arange(len(chosen) + 1, dtype=np.int64) * width
    else:
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[chosen]
        lengths = lengths[chosen]
        offsets = np.zeros(len(chosen) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # Byte i of the merged blob is everything[i + start - offset] of its entry.
        kind = np.int32 if len(everything) < 2**31 else np.int64  # half the index traffic
        shift = (starts - offsets[:-1]).astype(kind)
        gather = np.arange(int(offsets[-1]), dtype=kind) + np.repeat(shift, lengths)
        blob = everything[gather].tobytes()
    merged = digests[chosen]
    return _prefixes(merged), merged, offsets, blob


class ContentIndex:
    """Digest -> encoded location over the recent table and the run files.

    Parameters
    ----------
    db:
        The metadata database (``content`` table and ``meta["runs"]``).
    directory:
        Folder of the run files.
    """

    def __init__(self, db: MetaDB, directory: Path) -> None:
        self.db = db
        self.directory = Path(directory)
        self._runs: dict[str, Run] = {}
        self._listing: tuple[bytes, list[dict[str, int | str]]] = (b"", [])
        self._listed_runs: tuple[bytes, list[Run]] = (b"", [])
        self._run_errors: list[CorruptionError] = []

    # -- reading ---------------------------------------------------------

    def run_list(self, txn: lmdb.Transaction) -> list[dict[str, int | str]]:
        """The listed runs, youngest tier first: ``{"name", "tier", "count"}``."""
        raw = self.db.get(txn, "meta", b"runs") or b"[]"
        if raw != self._listing[0]:
            self._listing = (raw, self.db.decode_json(raw, "runs"))
        return list(self._listing[1])

    def _run(self, name: str) -> Run:
        run = self._runs.get(name)
        if run is None:
            run = self._runs[name] = Run(self.directory / name)
        return run

    def forget_runs(self) -> None:
        """Drop cached run maps (they are re-opened on demand)."""
        self._runs.clear()
        self._listed_runs = (b"", [])

    def runs(self, txn: lmdb.Transaction) -> list[Run]:
        """The listed runs of this snapshot, opened (a damaged one raises)."""
        runs, broken = self._opened_runs(txn)
        if broken:
            raise broken[0].again()
        return runs

    def _opened_runs(self, txn: lmdb.Transaction) -> tuple[list[Run], list[CorruptionError]]:
        """The listed runs that open, and the errors of those that do not."""
        raw = self.db.get(txn, "meta", b"runs") or b"[]"
        if raw != self._listed_runs[0]:
            runs, errors = [], []
            for entry in self.db.decode_json(raw, "runs"):
                try:
                    runs.append(self._run(str(entry["name"])))
                except (CorruptionError, OSError, ValueError) as exc:
                    errors.append(_run_error(self.directory / str(entry["name"]), exc))
            self._listed_runs = (raw, runs)
            self._run_errors = errors
        return self._listed_runs[1], self._run_errors

    def lookup(self, txn: lmdb.Transaction, digests: Sequence[bytes]) -> list[Found]:
        """Checked location of each digest, in one snapshot.

        Each result is the encoded location, a
        :class:`~tensorcask.errors.CorruptionError` naming the damaged entry
        (or, for a digest found nowhere while some run cannot be opened, that
        run), or None where the digest is absent.
        """
        table = self.db.tables["content"]
        runs, broken = self._opened_runs(txn)
        if len(digests) == 1:  # the per-sample read path: no array work
            digest = digests[0]
            raw = txn.get(digest, db=table)
            if raw is not None:
                return [unseal(digest, bytes(raw), self.recent_where)]
            for run in runs:
                i = run.find_one(digest)
                if i >= 0:
                    return [run.location(i)]
            return [broken[0].again() if broken else None]
        cursor = txn.cursor(db=table)
        if len(digests) > int(txn.stat(table)["entries"]):
            recent = cast(dict[bytes, bytes], dict(cursor.iternext()))  # one scan beats probes
            stored = {d: recent[d] for d in digests if d in recent}
        else:
            stored = {bytes(k): bytes(v) for k, v in cursor.getmulti(digests)}
        where = self.recent_where
        found: dict[bytes, Found] = {d: unseal(d, v, where) for d, v in stored.items()}
        rest = list(dict.fromkeys(d for d in digests if d not in found))
        if rest and runs:
            queries = np.frombuffer(b"".join(rest), np.uint8).reshape(-1, 32)
            prefixes = _prefixes(queries)
            todo = np.arange(len(rest))
            for run in runs:
                at = run.find(queries[todo], prefixes[todo])
                hits = at >= 0
                for q, value in zip(todo[hits].tolist(), run.locations(at[hits]), strict=True):
                    found[rest[q]] = value
                todo = todo[~hits]
                if not todo.size:
                    break
        if broken:
            return [found.get(d) or broken[0].again() for d in digests]
        return [found.get(d) for d in digests]

    @property
    def recent_where(self) -> str:
        """The file holding the recent table (for error messages)."""
        return self.db.data_file

    def damaged_run(self, txn: lmdb.Transaction) -> CorruptionError | None:
        """The first listed run that is damaged, if any (explains a missing digest)."""
        runs, broken = self._opened_runs(txn)
        if broken:
            return broken[0].again()
        for run in runs:
            damage = run.check()
            if damage is not None:
                return damage
        return None

    def check(self, txn: lmdb.Transaction) -> list[CorruptionError]:
        """Every damaged entry and run file of this snapshot (for ``verify``)."""
        problems: list[CorruptionError] = []
        where = self.recent_where
        for digest, value in txn.cursor(db=self.db.tables["content"]):
            found = unseal(bytes(digest), bytes(value), where)
            if isinstance(found, CorruptionError):
                problems.append(found)
        runs, broken = self._opened_runs(txn)
        problems.extend(broken)
        for run in runs:
            damage = run.check() or run.check_order()
            if damage is not None:
                problems.append(damage)
                continue
            if run.blob_matches():
                continue  # the blob check covers every sealed entry: none is damaged
            problems.extend(
                found
                for found in run.locations(np.arange(run.count))
                if not isinstance(found, bytes)
            )
        return problems

    def items(self, txn: lmdb.Transaction) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(digest, encoded location)``: recent ones, then each run's.

        Raises :class:`~tensorcask.errors.CorruptionError` at the first
        damaged entry or run (``gc`` must not guess what a damaged entry held).
        """
        where = self.recent_where
        for k, v in txn.cursor(db=self.db.tables["content"]):
            yield bytes(k), _checked(unseal(bytes(k), bytes(v), where))
        for run in self.runs(txn):
            for digest, value in run.items():
                yield digest, _checked(unseal(digest, value, run.where))

    # -- writing (writer lock held) ---------------------------------------

    def add(self, txn: lmdb.Transaction, entries: Sequence[tuple[bytes, bytes]]) -> None:
        """Publish new ``(digest, encoded location)`` entries in the caller's transaction.

        An entry replaces a damaged one of the same digest in the recent
        table; one in a run is shadowed, since the recent table is searched first.
        """
        if len(entries) >= BULK_ENTRIES:
            self._add_run(txn, entries)
        elif entries:
            digests = np.frombuffer(b"".join([d for d, _ in entries]), np.uint8).reshape(-1, 32)
            order = np.argsort(_prefixes(digests), kind="stable").tolist()  # B-tree order
            items = [(d, seal(d, loc)) for d, loc in entries]
            cursor = txn.cursor(db=self.db.tables["content"])
            cursor.putmulti([items[i] for i in order], overwrite=True)

    def _add_run(self, txn: lmdb.Transaction, entries: Sequence[tuple[bytes, bytes]]) -> None:
        """Publish a large batch as a run file of its own, listed in the caller's
        transaction: no entry of it passes through the recent table.

        The file is fsynced before the listing commits; if the transaction does
        not commit, the unlisted file is removed by the next compaction or ``gc``.
        """
        table = self.db.tables["content"]
        # A recent entry of the same digest (a damaged one being replaced) would
        # shadow the run's, since the recent table is searched first.
        recent = int(txn.stat(table)["entries"])
        if recent:
            cursor = txn.cursor(db=table)
            if recent < len(entries):
                batch = {d for d, _ in entries}
                stale = [bytes(k) for k in cursor.iternext(values=False) if bytes(k) in batch]
            else:
                stale = [bytes(k) for k, _ in cursor.getmulti([d for d, _ in entries])]
            for digest in stale:
                txn.delete(digest, db=table)
        name = write_run(self.directory, entries)
        runs = self.run_list(txn)
        runs.insert(0, {"name": name, "tier": 0, "count": len(entries)})
        self.db.put_json(txn, "runs", runs)

    def recent_full(self, txn: lmdb.Transaction) -> bool:
        """Whether the recent table outgrew :data:`RECENT_LIMIT`."""
        return int(txn.stat(self.db.tables["content"])["entries"]) >= RECENT_LIMIT

    def needs_compaction(self, txn: lmdb.Transaction) -> bool:
        """Whether the recent table outgrew :data:`RECENT_LIMIT`, or a tier of runs
        holds :data:`FANOUT` of them."""
        if self.recent_full(txn):
            return True
        tiers: dict[int, int] = {}
        for entry in self.run_list(txn):
            tiers[int(entry["tier"])] = tiers.get(int(entry["tier"]), 0) + 1
        return any(count >= FANOUT for count in tiers.values())

    def compact(self, *, recent: bool = True) -> None:
        """Move the recent table into a run file (unless ``recent`` is False), then
        merge full tiers."""
        entries = []
        if recent:
            with self.db.read() as txn:
                table = self.db.tables["content"]
                entries = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=table)]
        if entries:
            name = write_run(self.directory, entries)
            with self.db.write() as txn:
                runs = self.run_list(txn)
                runs.insert(0, {"name": name, "tier": 0, "count": len(entries)})
                self.db.put_json(txn, "runs", runs)
                self.db.drop(txn, "content")
        while self._merge_one_tier():
            pass

    def _merge_one_tier(self) -> bool:
        with self.db.read() as txn:
            runs = self.run_list(txn)
        tiers: dict[int, list[dict[str, int | str]]] = {}
        for entry in runs:
            tiers.setdefault(int(entry["tier"]), []).append(entry)
        full = next((t for t, members in sorted(tiers.items()) if len(members) >= FANOUT), None)
        if full is None:
            return False
        members = tiers[full][-FANOUT:]  # the oldest of that tier
        self._replace(members, tier=full + 1, keep=None)
        return True

    def _replace(
        self,
        members: list[dict[str, int | str]],
        *,
        tier: int,
        keep: set[bytes] | None,
    ) -> int:
        """Rewrite ``members`` as one run (dropping digests not in ``keep``)."""
        merged = None
        if keep is None:
            merged = _merged_arrays([self._run(str(entry["name"])) for entry in members])
        if merged is not None:
            name: str | None = _write_run_file(self.directory, *merged)
            return self._list_replacing(members, name, tier, len(merged[1]))
        chosen: dict[bytes, bytes] = {}
        for entry in members:  # youngest first: the first valid entry of a digest wins
            run = self._run(str(entry["name"]))
            for digest, value in run.items():
                if keep is not None and digest not in keep:
                    continue
                if digest not in chosen or isinstance(
                    unseal(digest, chosen[digest], ""), Exception
                ):
                    chosen[digest] = value
        entries = list(chosen.items())
        name = write_run(self.directory, entries) if entries else None
        return self._list_replacing(members, name, tier, len(entries))

    def _list_replacing(
        self, members: list[dict[str, int | str]], name: str | None, tier: int, count: int
    ) -> int:
        """List run ``name`` (``count`` entries) in place of ``members``, then remove
        their files; return how many entries were dropped."""
        names = {str(m["name"]) for m in members}
        with self.db.write() as txn:
            runs = [r for r in self.run_list(txn) if r["name"] not in names]
            if name is not None:
                runs.insert(0, {"name": name, "tier": tier, "count": count})
                runs.sort(key=lambda r: int(r["tier"]))  # small, young tiers are searched first
            self.db.put_json(txn, "runs", runs)
        self._unlink(names)
        return sum(int(m["count"]) for m in members) - count

    def retain(self, live: set[bytes]) -> int:
        """Drop every entry whose digest is not in ``live``; return how many."""
        removed = 0
        with self.db.write() as txn:
            cursor = txn.cursor(db=self.db.tables["content"])
            dead = [
                bytes(k) for k in cursor.iternext(keys=True, values=False) if bytes(k) not in live
            ]
            for key in dead:
                txn.delete(key, db=self.db.tables["content"])
            removed += len(dead)
            runs = self.run_list(txn)
        for entry in runs:
            run = self._run(str(entry["name"]))
            if any(run.digests[i].tobytes() not in live for i in range(run.count)):
                removed += self._replace([entry], tier=int(entry["tier"]), keep=live)
        self.remove_unlisted()
        return removed

    def remove_unlisted(self) -> None:
        """Delete run files no listing names (left by a crash)."""
        if not self.directory.exists():
            return
        with self.db.read() as txn:
            listed = {str(r["name"]) for r in self.run_list(txn)}
        self._unlink({p.name for p in self.directory.glob("*.run")} - listed)

    def _unlink(self, names: Iterable[str]) -> None:
        for name in names:
            self._runs.pop(name, None)
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()


def _run_error(path: Path, exc: Exception) -> CorruptionError:
    if isinstance(exc, CorruptionError):
        return exc
    return CorruptionError(
        f"content index run {path} cannot be read ({exc}); restore the repository from a "
        "clone or backup",
        path=str(path),
    )


def _checked(found: bytes | CorruptionError) -> bytes:
    if isinstance(found, CorruptionError):
        raise found
    return found
