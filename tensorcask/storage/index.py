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

    b"TCIX0001" | count u64 | blob bytes u64
    prefixes  count x u64   first 8 digest bytes as a big-endian integer (sort key)
    digests   count x 32 bytes
    offsets   (count + 1) x u64 into the blob
    blob      concatenated encoded locations
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import cast

import lmdb
import numpy as np

from ..errors import CorruptionError
from .db import MetaDB

__all__ = ["FANOUT", "RECENT_LIMIT", "ContentIndex"]

RECENT_LIMIT = 1 << 16
FANOUT = 4
_MAGIC = b"TCIX0001"
_HEAD = struct.Struct("<8sQQ")


def _prefixes(digests: np.ndarray) -> np.ndarray:
    """Sort keys of an (n, 32) uint8 digest array."""
    return np.ascontiguousarray(digests[:, :8]).view(">u8").ravel().astype("<u8")


class Run:
    """One immutable, memory-mapped run file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # a plain ndarray view indexes faster than np.memmap and keeps the map alive
        raw = np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)
        magic, count, blob = _HEAD.unpack_from(raw[: _HEAD.size].tobytes())
        if magic != _MAGIC or raw.size != _HEAD.size + count * 48 + 8 + blob:
            raise CorruptionError(f"content index run {path} is damaged", path=str(path))
        pos = _HEAD.size
        self.count = count
        self.prefixes = raw[pos : pos + 8 * count].view("<u8")
        pos += 8 * count
        self.digests = raw[pos : pos + 32 * count].reshape(count, 32)
        pos += 32 * count
        self.offsets = raw[pos : pos + 8 * (count + 1)].view("<u8")
        self.blob = raw[pos + 8 * (count + 1) :]

    def location(self, i: int) -> bytes:
        """Encoded location of entry ``i``."""
        return self.blob[int(self.offsets[i]) : int(self.offsets[i + 1])].tobytes()

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

    def locations(self, indexes: np.ndarray) -> list[bytes]:
        """Encoded locations of many entries (vectorised when they are equally long)."""
        starts = self.offsets[indexes].astype(np.intp)
        lengths = self.offsets[indexes + 1].astype(np.intp) - starts
        if not len(indexes):
            return []
        width = int(lengths[0])
        if (lengths == width).all():
            gathered = self.blob[starts[:, None] + np.arange(width)].tobytes()
            return [gathered[i : i + width] for i in range(0, len(gathered), width)]
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
        """Every ``(digest, encoded location)``."""
        for i in range(self.count):
            yield self.digests[i].tobytes(), self.location(i)


def write_run(directory: Path, entries: Sequence[tuple[bytes, bytes]]) -> str:
    """Write sorted-or-not entries as a new run file (fsynced); return its name."""
    digests = np.frombuffer(b"".join(d for d, _ in entries), np.uint8).reshape(-1, 32)
    prefixes = _prefixes(digests)
    order = np.argsort(prefixes, kind="stable")
    locs = [entries[i][1] for i in order.tolist()]
    offsets = np.zeros(len(locs) + 1, "<u8")
    np.cumsum([len(b) for b in locs], out=offsets[1:])
    blob = b"".join(locs)
    name = f"{uuid.uuid4().hex}.run"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    with open(path, "xb") as f:
        f.write(_HEAD.pack(_MAGIC, len(locs), len(blob)))
        f.write(prefixes[order].tobytes())
        f.write(digests[order].tobytes())
        f.write(offsets.tobytes())
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return name


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

    # -- reading ---------------------------------------------------------

    def run_list(self, txn: lmdb.Transaction) -> list[dict[str, int | str]]:
        """The listed runs, youngest tier first: ``{"name", "tier", "count"}``."""
        raw = self.db.get(txn, "meta", b"runs") or b"[]"
        if raw != self._listing[0]:
            self._listing = (raw, json.loads(raw))
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
        """The listed runs of this snapshot, opened, youngest tier first."""
        raw = self.db.get(txn, "meta", b"runs") or b"[]"
        if raw != self._listed_runs[0]:
            self._listed_runs = (raw, [self._run(str(e["name"])) for e in json.loads(raw)])
        return self._listed_runs[1]

    def lookup(self, txn: lmdb.Transaction, digests: Sequence[bytes]) -> list[bytes | None]:
        """Encoded location of each digest (None where absent), in one snapshot."""
        table = self.db.tables["content"]
        if len(digests) == 1:  # the per-sample read path: no array work
            raw = txn.get(digests[0], db=table)
            if raw is not None:
                return [bytes(raw)]
            for run in self.runs(txn):
                i = run.find_one(digests[0])
                if i >= 0:
                    return [run.location(i)]
            return [None]
        cursor = txn.cursor(db=table)
        if len(digests) > int(txn.stat(table)["entries"]):
            recent = cast(dict[bytes, bytes], dict(cursor.iternext()))  # one scan beats probes
            found = {d: recent[d] for d in digests if d in recent}
        else:
            found = {bytes(k): bytes(v) for k, v in cursor.getmulti(digests)}
        rest = list(dict.fromkeys(d for d in digests if d not in found))
        runs = self.runs(txn)
        if rest and runs:
            queries = np.frombuffer(b"".join(rest), np.uint8).reshape(-1, 32)
            prefixes = _prefixes(queries)
            todo = np.arange(len(rest))
            for run in runs:
                where = run.find(queries[todo], prefixes[todo])
                hits = where >= 0
                for q, raw in zip(todo[hits].tolist(), run.locations(where[hits]), strict=True):
                    found[rest[q]] = raw
                todo = todo[~hits]
                if not todo.size:
                    break
        return [found.get(d) for d in digests]

    def items(self, txn: lmdb.Transaction) -> Iterator[tuple[bytes, bytes]]:
        """Every entry: recent ones, then each run's."""
        for k, v in txn.cursor(db=self.db.tables["content"]):
            yield bytes(k), bytes(v)
        for run in self.runs(txn):
            yield from run.items()

    # -- writing (writer lock held) ---------------------------------------

    def add(self, txn: lmdb.Transaction, entries: Sequence[tuple[bytes, bytes]]) -> None:
        """Publish new entries in the caller's transaction."""
        if entries:
            cursor = txn.cursor(db=self.db.tables["content"])
            cursor.putmulti(sorted(entries), overwrite=False)

    def needs_compaction(self, txn: lmdb.Transaction) -> bool:
        """Whether the recent table outgrew :data:`RECENT_LIMIT`."""
        return int(txn.stat(self.db.tables["content"])["entries"]) >= RECENT_LIMIT

    def compact(self) -> None:
        """Move the recent table into a run file, then merge full tiers."""
        with self.db.read() as txn:
            entries = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=self.db.tables["content"])]
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
        entries = [
            item
            for entry in members
            for item in self._run(str(entry["name"])).items()
            if keep is None or item[0] in keep
        ]
        dropped = sum(int(m["count"]) for m in members) - len(entries)
        name = write_run(self.directory, entries) if entries else None
        names = {str(m["name"]) for m in members}
        with self.db.write() as txn:
            runs = [r for r in self.run_list(txn) if r["name"] not in names]
            if name is not None:
                runs.insert(0, {"name": name, "tier": tier, "count": len(entries)})
                runs.sort(key=lambda r: int(r["tier"]))  # small, young tiers are searched first
            self.db.put_json(txn, "runs", runs)
        self._unlink(names)
        return dropped

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
