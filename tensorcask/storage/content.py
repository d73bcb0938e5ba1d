"""The content store: digest -> location, and the backends behind it.

Sample bytes are stored once per distinct digest. Writing is split in two so
that the caller controls the crash order: :meth:`ContentStore.append` puts new
payloads into backend segments and fsyncs them, returning index entries; the
caller then publishes those entries together with the records that use them
in one metadata transaction. A crash in between leaves only unreferenced
bytes, which ``gc`` reclaims.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import lmdb
import numpy as np

from ..errors import CaskError, CorruptionError, DataNotLocalError, ReadOnlyError
from ..hashing import Digest
from ..keys import encode_key
from ..layout import INDEX_DIR
from .backends import open_backend
from .base import Backend, Location, Payload, TableRows
from .db import MetaDB
from .index import ContentIndex, Found
from .tombstones import (
    Keys,
    Tombstones,
    bump,
    generation,
    load_tombstones,
    purged_error,
    update_gone,
)

__all__ = ["ContentStore"]

_CACHE_LIMIT = 1 << 20
_RELOOK = 0.5
"""Seconds between looks for another process's purges (see :meth:`ContentStore.tombstones`)."""


class ContentStore:
    """Content-addressed sample storage for one repository.

    Parameters
    ----------
    data_dir:
        The repository's ``data/`` directory; each backend owns a subfolder.
    db:
        The metadata database holding the ``content`` table.
    writable:
        Whether this store may append (only a write checkout's store is).

    Attributes
    ----------
    partial_remote:
        In a partial clone, the remote that holds the samples not fetched
        yet (see :meth:`absent`); None in a complete repository.
    """

    partial_remote: str | None = None

    def __init__(self, data_dir: Path, db: MetaDB, *, writable: bool) -> None:
        self.data_dir = Path(data_dir)
        self.db = db
        self.writable = writable
        self._backends: dict[tuple[str, str | None], Backend] = {}
        self._owner: dict[tuple[str, int], Backend] = {}
        self._locations: dict[bytes, Location] = {}
        self.index = ContentIndex(db, self.data_dir.parent / INDEX_DIR)
        self._tombstones: Tombstones | None = None
        self._tombstones_checked = 0.0

    def tombstones(self, *, fresh: bool = False) -> Tombstones:
        """The tombstones in force (see :mod:`~tensorcask.storage.tombstones`).

        Loaded once, then looked at again for a purge by another process at
        most every half second (``fresh``: now): a read started after a purge
        committed plus that delay never returns purged bytes, and one that
        meets bytes a purge overwrote sooner says so (see :meth:`fetch`).
        """
        known = self._tombstones
        now = time.monotonic()
        if known is None or fresh or now - self._tombstones_checked > _RELOOK:
            with self.db.read() as txn:
                known = self.tombstones_in(txn)
            self._tombstones_checked = now
        return known

    def check_purged(self, digests: Sequence[bytes], column: str | None, keys: Keys) -> None:
        """Raise :class:`~tensorcask.errors.PurgedDataError` if a read of these samples
        meets a tombstone (what :meth:`fetch` does first)."""
        tombstones = self._tombstones
        if tombstones is None or time.monotonic() - self._tombstones_checked > _RELOOK:
            tombstones = self.tombstones()
        if tombstones.active:
            tombstones.check(digests, column, keys)

    def purges_changed(self) -> None:
        """Forget what a purge in this process may have changed: locations, tombstones
        and backend handles (whose caches may hold purged bytes)."""
        self.forget_all()
        self.close()
        self.tombstones(fresh=True)

    def tombstones_in(self, txn: lmdb.Transaction) -> Tombstones:
        """The tombstones of the snapshot ``txn`` reads."""
        known = self._tombstones
        if known is None or generation(self.db, txn) != known.generation:
            if known is not None:
                self._locations.clear()  # purged content stored again moved
            known = self._tombstones = load_tombstones(self.db, txn)
        return known

    def backend(self, name: str, compression: str | None = None) -> Backend:
        """The backend instance for ``name`` (and compression), opened lazily."""
        key = (name, compression)
        backend = self._backends.get(key)
        if backend is None:
            # Never open the files of a repository re-created at our path.
            self.db.check_identity()
            options = {"compression": compression} if compression else {}
            backend = open_backend(name, self.data_dir / name, writable=self.writable, **options)
            self._backends[key] = backend
        return backend

    # -- writing ---------------------------------------------------------

    def missing(self, txn: lmdb.Transaction, digests: Sequence[bytes]) -> list[int]:
        """Indexes of the first occurrence of each digest not stored yet.

        A digest whose index entry is damaged counts as missing: storing it
        again repairs the entry.
        """
        unique = list(dict.fromkeys(digests))
        found = self.index.lookup(txn, unique)
        stored = {d for d, loc in zip(unique, found, strict=True) if isinstance(loc, bytes)}
        stored.difference_update(self.tombstones_in(txn).gone)  # a purge overwrote their bytes
        first: dict[bytes, int] = {}
        for i, digest in enumerate(digests):
            if digest not in stored:
                first.setdefault(digest, i)
        return list(first.values())

    def append(
        self,
        backend: str,
        compression: str | None,
        payloads: np.ndarray | Sequence[Payload],
        digests: Sequence[bytes],
        indexes: Sequence[int],
    ) -> list[tuple[bytes, bytes]]:
        """Store ``payloads[i]`` for each ``i`` in ``indexes``, durably.

        Returns the ``(digest, encoded location)`` index entries for the
        caller to publish.
        """
        if not self.writable:
            raise ReadOnlyError("this content store is read-only")
        if not indexes:
            return []
        store = self.backend(backend, compression)
        if isinstance(payloads, np.ndarray) and compression is None:
            # Read back through self.backend(backend): no owner to remember.
            chosen = payloads if len(indexes) == len(payloads) else payloads[np.asarray(indexes)]
            encoded = store.append_encoded(np.ascontiguousarray(chosen))
            store.sync()
            return list(zip([digests[i] for i in indexes], encoded, strict=True))
        if isinstance(payloads, np.ndarray):
            chosen = payloads if len(indexes) == len(payloads) else payloads[np.asarray(indexes)]
            locations = store.append_stacked(np.ascontiguousarray(chosen))
        else:
            locations = store.append([payloads[i] for i in indexes])
        store.sync()
        for segment in {loc.segment for loc in locations}:
            self._owner[(store.name, segment)] = store
        return [(digests[i], loc.to_bytes()) for i, loc in zip(indexes, locations, strict=True)]

    def publish(self, txn: lmdb.Transaction, entries: Sequence[tuple[bytes, bytes]]) -> None:
        """Write index entries (inside the caller's publishing transaction).

        Content a purge had removed is no longer counted as removed once
        stored again.
        """
        self.index.add(txn, entries)
        gone = self.tombstones_in(txn).gone
        back = [digest for digest, _ in entries if digest in gone] if gone else []
        if back and update_gone(self.db, txn, add=(), remove=back):
            bump(self.db, txn)

    def maintain(self) -> None:
        """Compact the content index when its recent table is full or a tier of its
        runs is (writer only)."""
        with self.db.read() as txn:
            due = self.index.needs_compaction(txn)
            recent = self.index.recent_full(txn)
        if due:
            self.index.compact(recent=recent)

    # -- reading ---------------------------------------------------------

    def locate(self, digest: bytes) -> Location | None:
        """Where ``digest`` is stored, or None if it is not.

        Raises :class:`~tensorcask.errors.CorruptionError` naming the index
        file when the entry is damaged, or when the digest is absent and a
        run of the index is damaged (which may be why).
        """
        loc = self._locations.get(digest)
        if loc is not None:
            return loc
        with self.db.read() as txn:  # the per-sample read path: no list work
            raw = self.index.lookup(txn, (digest,))[0]
            if isinstance(raw, bytes):
                return self._remember(digest, raw)
            damage = raw if raw is not None else self.index.damaged_run(txn)
        if damage is not None:
            raise damage
        return None

    def locate_many(self, digests: Sequence[bytes]) -> list[Location | None]:
        """Locations of several digests (one snapshot for the uncached ones); see :meth:`locate`."""
        cache = self._locations
        out = [cache.get(d) for d in digests]
        todo = [d for d, loc in zip(digests, out, strict=True) if loc is None]
        if todo:
            found = self.lookup_raw(todo)
            absent = False
            for digest, raw in zip(todo, found, strict=True):
                if isinstance(raw, CorruptionError):
                    raise raw
                if raw is None:
                    absent = True
                else:
                    self._remember(digest, raw)
            if absent:
                with self.db.read() as txn:
                    damage = self.index.damaged_run(txn)
                if damage is not None:
                    raise damage
            out = [cache.get(d) for d in digests]
        return out

    def lookup_raw(self, digests: Sequence[bytes]) -> list[Found]:
        """Checked, encoded locations of many digests in one snapshot (for bulk
        readers): each an encoded location, the error of a damaged entry, or None."""
        with self.db.read() as txn:
            return self.index.lookup(txn, digests)

    def _remember(self, digest: bytes, raw: bytes) -> Location:
        if len(self._locations) >= _CACHE_LIMIT:
            self._locations.clear()
        loc = self._locations[digest] = Location.from_bytes(raw)
        return loc

    def absent(self, digest: bytes, column: str | None = None, key: object = None) -> CaskError:
        """The error for content a record refers to and this store lacks.

        :class:`~tensorcask.errors.PurgedDataError` when the record was
        purged (a clone never stores purged bytes);
        :class:`~tensorcask.errors.DataNotLocalError` naming the remote in a
        partial clone (the data was never fetched), else the
        :class:`~tensorcask.errors.CorruptionError` of a damaged repository.
        """
        if column is not None:
            stone = self.tombstones(fresh=True).find(column, encode_key(key), digest)
            if stone is not None:
                return purged_error(stone, column, key)
        if self.partial_remote is None:
            return missing_location_error(column, key, Digest(digest), self.db.path)
        where = "" if column is None else f"column {column!r}, key {key!r}: "
        return DataNotLocalError(
            f"{where}content {digest.hex()[:16]} is not local: this is a partial clone and its "
            f"data has not been fetched; fetch it from remote {self.partial_remote!r} with "
            f"repo.fetch_data({self.partial_remote!r}, <ref>, columns=[...]) or "
            f"`tensorcask fetch {self.partial_remote} --data <ref>`"
        )

    def fetch(
        self,
        digests: Sequence[bytes],
        where: Sequence[Location] | TableRows,
        *,
        stack: bool = False,
        durable: bool = False,
        column: str | None = None,
        keys: Keys = None,
    ) -> np.ndarray | list[Payload]:
        """The one read path: the stored samples of ``digests``, checksums verified.

        Every read of sample bytes, whatever asked for it (a key, ``get_many``,
        a column table, a loader, ``verify``), comes through here with the
        content digests it is about to return, before any byte is read:
        checks on what may be read at all (purged content) belong at the top
        of this method and nowhere else.

        Parameters
        ----------
        digests:
            The content digest of each sample, in order (a lazy sequence is
            fine: it is only looked at when a check needs it).
        where:
            Where each sample's bytes are: locations from the content index,
            or memmap rows taken from a column table.
        stack:
            Return one stacked array (equal-shape array samples) instead of a list.
        durable:
            Read what is on disk now, bypassing caches this process keeps
            (``verify`` uses it); never stacked.
        column, keys:
            The column and encoded keys of the samples, where the caller
            reads records (a lazy sequence, or a function returning them,
            is fine): key tombstones apply only to reads that name them.

        Returns
        -------
        One array that owns its memory (``stack``, or ``where`` given as
        rows), else a list of payloads (arrays or bytes) that own theirs.

        Raises
        ------
        CorruptionError
            With ``path`` set, when stored bytes fail their checksum.
        PurgedDataError
            Naming the sample and the reason, when a sample was purged.
        """
        self.check_purged(digests, column, keys)
        try:
            if isinstance(where, TableRows):
                return self.backend("memmap").read_rows(
                    where.segments, where.rows, where.checksums, where.dtype, where.shape
                )
            if durable:
                return [self._reader(loc).read_durable(loc) for loc in where]
            if stack:
                return self._read_stacked(where)
            first = where[0] if len(where) > 1 else None
            if (
                first is not None
                and not self._owner
                and all(loc.backend == first.backend for loc in where)
            ):  # one call: the backend reads nearby payloads (one HDF5 chunk) together
                return self.backend(first.backend).read_many(where)
            return [self._reader(loc).read(loc) for loc in where]
        except CorruptionError:
            self.db.check_identity()  # a removed repository: say so, not "damaged"
            self.tombstones(fresh=True).check(digests, column, keys)  # overwritten by a purge
            raise

    def scrub(self, locations: Sequence[Location]) -> int:
        """Overwrite the stored bytes of ``locations`` (a purge); return bytes overwritten.

        Every other sample keeps its location and bytes. Writable stores only
        (the caller holds the writer lock).
        """
        if not self.writable:
            raise ReadOnlyError("this content store is read-only")
        groups: dict[str, list[Location]] = {}
        for loc in locations:
            groups.setdefault(loc.backend, []).append(loc)
        done = 0
        for name, locs in sorted(groups.items()):
            if (self.data_dir / name).is_dir():
                done += self.backend(name).scrub(locs)
        return done

    def _reader(self, loc: Location) -> Backend:
        owner = self._owner.get((loc.backend, loc.segment))
        return owner if owner is not None else self.backend(loc.backend)

    def _read_stacked(self, locs: Sequence[Location]) -> np.ndarray:
        first = locs[0]
        if all(loc.backend == first.backend for loc in locs) and not self._owner:
            return self.backend(first.backend).read_stacked(locs)
        return np.stack([np.asarray(self._reader(loc).read(loc)) for loc in locs])

    def path_of(self, loc: Location) -> str:
        """Full path of the file holding ``loc``."""
        return self._reader(loc).path_of(loc)

    def forget_all(self) -> None:
        """Drop cached locations and run maps (after gc rewrote the index)."""
        self._locations.clear()
        self.index.forget_runs()

    def sync(self) -> None:
        """fsync every backend written through this store."""
        for backend in self._backends.values():
            if backend.writable:
                backend.sync()

    def seal(self) -> None:
        """Close the files being appended to; later appends start new ones."""
        for backend in self._backends.values():
            if backend.writable:
                backend.seal()

    def close(self) -> None:
        """Seal and close every backend. Idempotent."""
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()
        self._owner.clear()

    def all_backends(self) -> list[Backend]:
        """Every backend that has a folder on disk (for gc and verify)."""
        out = []
        for path in sorted(self.data_dir.iterdir()) if self.data_dir.exists() else []:
            if path.is_dir():
                out.append(self.backend(path.name))
        return out


def missing_location_error(
    column: str | None, key: object, digest: Digest, path: Path
) -> CorruptionError:
    """The error for a record whose content is not in the index."""
    where = "" if column is None else f"column {column!r}, key {key!r}: "
    return CorruptionError(
        f"{where}content {digest.hex()[:16]} is not in the content "
        f"index of {path}; the repository is damaged: run `tensorcask verify --full`",
        column=column,
        key=key,
        path=str(path),
    )
