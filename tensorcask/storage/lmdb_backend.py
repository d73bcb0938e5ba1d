"""Byte strings and tiny arrays as values in one LMDB environment.

The environment lives at ``root``. Its ``data`` database maps a 12-byte key,
segment (4 bytes) then offset (8 bytes), both big-endian so a segment's keys
are one contiguous range, to the raw payload bytes. Its ``meta`` database holds
the counter from which every writable instance takes a fresh segment number.

LMDB forbids opening one environment twice in a process, so instances on the
same environment share one handle per process (a forked child opens its own).
The handles are keyed by the identity (device, inode) of ``data.mdb``, not by
its path, so the environment of a repository removed and re-created at the
same path is opened afresh, never served from the old one's deleted file.

A read-only instance opens the environment with ``readonly=True``, and with
``lock=False`` when ``lock.mdb`` cannot be written (a read-only mount, another
user's repository): it then does not coordinate with a concurrent writer.
"""

from __future__ import annotations

import os
import struct
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import lmdb
import xxhash

from tensorcask.errors import CaskError, CorruptionError, ReadOnlyError
from tensorcask.layout import LMDB_DATA_FILE
from tensorcask.storage.base import Backend, Location, Payload
from tensorcask.storage.db import Identity, check_meta_pages, identity_of, lock_writable
from tensorcask.storage.lmdb_pages import scrub_free_pages
from tensorcask.storage.memory import payload_bytes, payload_from_bytes

__all__ = ["LMDBBackend"]

_SEGMENT = struct.Struct(">I")
_KEY = struct.Struct(">IQ")
_COUNTER = b"next_segment"
_MAP_SIZE = 1 << 40  # address space only: the file grows as data does


@dataclass(slots=True)
class _Env:
    """An environment handle shared by the instances of one process."""

    env: Any
    data: Any
    meta: Any
    readonly: bool
    identity: Identity
    pid: int = field(default_factory=os.getpid)
    users: int = 0


_ENVS: dict[tuple[int, int, int], _Env] = {}
# Re-entrant: a backend dropped while the lock is held (the garbage collector runs
# finalizers on any allocation) releases its environment on the same thread.
_ENVS_LOCK = threading.RLock()


def _open_lmdb(root: Path, readonly: bool) -> Any:
    options: dict[str, Any] = {"subdir": True, "map_size": _MAP_SIZE, "max_dbs": 2, "sync": False}
    if not readonly:
        return lmdb.open(str(root), create=True, **options)
    lock = lock_writable(root)
    try:
        return lmdb.open(str(root), readonly=True, create=False, lock=lock, **options)
    except lmdb.ReadonlyError:
        if not lock:
            raise
    # lock.mdb looked writable but is not (NFS root squash, ACLs): go without.
    return lmdb.open(str(root), readonly=True, create=False, lock=False, **options)


def _open_env(root: Path, readonly: bool, expected: Identity | None) -> _Env:
    check_meta_pages(root / LMDB_DATA_FILE)  # before LMDB trusts them
    env = _open_lmdb(root, readonly)
    try:
        identity = identity_of(root)
        if identity is None or (expected is not None and identity != expected):
            raise CaskError(
                f"the LMDB environment {root} was removed or replaced while it was being "
                "opened; open the repository again"
            )
        data = env.open_db(b"data", create=not readonly)
        meta = env.open_db(b"meta", create=not readonly)
    except BaseException:
        env.close()
        raise
    return _Env(env, data, meta, readonly, identity)


def _acquire(root: Path, readonly: bool) -> _Env:
    pid = os.getpid()
    with _ENVS_LOCK:
        for inherited in [other for other in _ENVS if other[0] != pid]:
            # Handles a forked child inherited are unusable here, and py-lmdb
            # refuses to reopen their files while they are open. Closing them
            # is safe: no transaction outlives a call, and the parent's fcntl
            # locks were not inherited.
            _ENVS.pop(inherited).env.close()
        identity = identity_of(root)
        shared = None if identity is None else _ENVS.get((pid, *identity))
        if shared is None:
            shared = _open_env(root, readonly, identity)
            _ENVS[(pid, *shared.identity)] = shared
            shared.users += 1
        else:
            shared.users += 1  # first: a finalizer run below must not close it
            if shared.readonly and not readonly:
                # A writer joins readers of this process: swap in a writable handle
                # under them (they take it afresh for every transaction).
                shared.env.close()
                try:
                    fresh = _open_env(root, False, shared.identity)
                except BaseException:
                    shared.users -= 1
                    raise
                shared.env, shared.data, shared.meta = fresh.env, fresh.data, fresh.meta
                shared.readonly = False
        return shared


def _release(shared: _Env) -> None:
    with _ENVS_LOCK:
        shared.users -= 1
        if shared.users == 0 and shared.pid == os.getpid():
            shared.env.close()
            key = (shared.pid, *shared.identity)
            if _ENVS.get(key) is shared:
                del _ENVS[key]


class LMDBBackend(Backend):
    """Backend for byte strings and tiny arrays in an LMDB environment.

    Parameters
    ----------
    root:
        The environment directory (created if missing when writable).
    writable:
        Whether this instance may append. A read-only instance opens the
        environment read-only, lazily, on first use.
    """

    name: ClassVar[str] = "lmdb"

    def __init__(self, root: Path, *, writable: bool) -> None:
        super().__init__(root, writable=writable)
        self._shared: _Env | None = None
        self._segment: int | None = None
        self._next_offset = 0
        self._closed = False
        if writable:
            self.root.mkdir(parents=True, exist_ok=True)
            self._handle()

    def _handle(self) -> _Env:
        if self._closed:
            raise ValueError(f"lmdb backend {self.root} is closed")
        shared = self._shared
        if shared is not None and shared.pid == os.getpid():
            return shared
        if shared is not None:
            # A forked child: LMDB handles must not cross fork, and the
            # parent goes on writing its segment, so take a new one.
            self._shared = None
            self.seal()
        path = str(self.root / LMDB_DATA_FILE)
        if not self.writable and not os.path.exists(path):
            raise CorruptionError(f"no LMDB environment at {self.root}", path=path)
        try:
            shared = self._shared = _acquire(self.root, readonly=not self.writable)
        except lmdb.Error as error:
            message = f"cannot open LMDB environment {path}: {error}"
            raise CorruptionError(message, path=path) from error
        # Dropped without close(), this instance still gives its share back.
        self._release = weakref.finalize(self, _release, shared)
        return shared

    def append(self, values: Sequence[Payload]) -> list[Location]:
        """Append payloads in one write transaction."""
        if not self.writable:
            raise ReadOnlyError(
                f"lmdb backend {self.root} is read-only; open it writable to append"
            )
        shared = self._handle()
        encoded = [payload_bytes(value) for value in values]
        if not encoded:
            return []
        with shared.env.begin(write=True) as txn:
            segment = self._segment
            if segment is None:
                counter = txn.get(_COUNTER, db=shared.meta)
                segment = 1 if counter is None else int.from_bytes(counter, "big")
                txn.put(_COUNTER, (segment + 1).to_bytes(8, "big"), db=shared.meta)
                offset = 0
            else:
                offset = self._next_offset
            items = [
                (_KEY.pack(segment, offset + i), data) for i, (_, _, data) in enumerate(encoded)
            ]
            txn.cursor(db=shared.data).putmulti(items)
        # Only a committed transaction moves this instance on.
        self._segment, self._next_offset = segment, offset + len(encoded)
        return [
            Location(self.name, segment, offset + i, dtype, shape, xxhash.xxh3_64_intdigest(data))
            for i, (dtype, shape, data) in enumerate(encoded)
        ]

    def read(self, location: Location) -> Payload:
        """Read one payload, checksum verified."""
        return self.read_many([location])[0]

    def read_many(self, locations: Sequence[Location]) -> list[Payload]:
        """Read payloads in one read transaction."""
        shared = self._handle()
        with shared.env.begin(db=shared.data, buffers=True) as txn:
            return [
                self._decode(location, txn.get(_KEY.pack(location.segment, location.offset)))
                for location in locations
            ]

    def _decode(self, location: Location, data: memoryview | None) -> Payload:
        if data is None:
            path = self.path_of(location)
            raise CorruptionError(
                f"no payload for segment {location.segment} offset {location.offset} in {path}: "
                "its segment was removed or never written",
                path=path,
            )
        self.verify(location, data)
        return payload_from_bytes(location, data)

    def sync(self) -> None:
        """Flush the environment to disk."""
        if self.writable:
            self._handle().env.sync(True)

    def seal(self) -> None:
        """Make the next append take a new segment number."""
        self._segment = None

    def close(self) -> None:
        """Release this instance's share of the environment. Idempotent."""
        self.seal()
        if self._shared is not None:
            self._release()
            self._shared = None
        self._closed = True

    def path_of(self, location: Location) -> str:
        """Path of the environment's data file."""
        return str(self.root / LMDB_DATA_FILE)

    def segments(self) -> list[int]:
        """Numbers of the segments holding at least one payload."""
        if not self.writable and not (self.root / LMDB_DATA_FILE).exists():
            return []
        shared = self._handle()
        numbers: list[int] = []
        with shared.env.begin(db=shared.data) as txn:
            cursor = txn.cursor()
            found = cursor.first()
            while found:
                (number,) = _SEGMENT.unpack_from(cursor.key())
                numbers.append(number)
                found = number < 0xFFFFFFFF and cursor.set_range(_SEGMENT.pack(number + 1))
        return numbers

    def scrub(self, locations: Sequence[Location]) -> int:
        """Delete the payloads of ``locations`` and zero the pages that held them.

        LMDB copies a page on write and keeps the old copy, bytes and all, on
        its free list until it is reused; deleting a value from a page may
        also leave its bytes in the page's unused gap. So each value is first
        overwritten with zeros, then deleted, and once that commits the free
        pages no reader can see are zeroed (:func:`scrub_free_pages`).
        """
        if not self.writable:
            raise ReadOnlyError(f"lmdb backend {self.root} is read-only; cannot scrub")
        shared = self._handle()
        done = 0
        with shared.env.begin(write=True, db=shared.data) as txn:
            for loc in locations:
                key = _KEY.pack(loc.segment, loc.offset)
                old = txn.get(key)
                if old is not None:
                    txn.put(key, bytes(len(old)))
                    txn.delete(key)
                    done += len(old)
        shared.env.sync(True)
        scrub_free_pages(shared.env)
        return done

    def remove_segment(self, segment: int) -> None:
        """Delete every payload of a segment; see :meth:`remove_segments`."""
        self.remove_segments([segment])

    def remove_segments(self, segments: Sequence[int]) -> None:
        """Delete every payload of ``segments`` in one write transaction, zeroing each
        first and then the free pages (as :meth:`scrub` does): the bytes of content
        ``gc`` drops must not stay in the file, where a later purge of that content
        could no longer find them."""
        if not self.writable:
            raise ReadOnlyError(f"lmdb backend {self.root} is read-only; cannot remove segments")
        if not segments:
            return
        shared = self._handle()
        with shared.env.begin(write=True, db=shared.data) as txn:
            cursor = txn.cursor()
            for segment in segments:
                prefix = _SEGMENT.pack(segment)
                found = cursor.set_range(prefix)
                while found and cursor.key()[:4] == prefix:
                    cursor.put(cursor.key(), bytes(len(cursor.value())))
                    found = cursor.delete()
        shared.env.sync(True)
        scrub_free_pages(shared.env)
        if self._segment in segments:
            self.seal()
