"""Object stores: where history objects live, behind one interface.

History is made of immutable, content-addressed objects: commits, named by
their 20-byte id, and record pages, column roots and record roots, named by
their 32-byte hash. An :class:`ObjectStore` keeps them by name. The local
repository keeps them in its LMDB environment (:class:`LMDBObjectStore`); a
remote keeps them in object storage; tests use :class:`MemoryObjectStore`.
``tests/history/conformance.py`` holds the rules every store must pass.

New objects are gathered in a :class:`WriteBatch` (the record trees write
their new pages into it, a commit adds its roots and itself) and stored
together by :meth:`ObjectStore.write`. Nothing is visible through the store
before that; a batch that is dropped (a merge with conflicts) leaves no
trace.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

from ..storage.db import MetaDB

__all__ = [
    "COMMIT_NAME_BYTES",
    "OBJECT_NAME_BYTES",
    "Kind",
    "LMDBObjectStore",
    "MemoryObjectStore",
    "ObjectStore",
    "WriteBatch",
    "kind_of",
]

COMMIT_NAME_BYTES = 20
OBJECT_NAME_BYTES = 32

Kind = Literal["commit", "object"]
"""Commits (20-byte names) and every other history object (32-byte names)."""


def kind_of(name: bytes) -> Kind:
    """Which kind of object ``name`` names (by its length)."""
    if len(name) == COMMIT_NAME_BYTES:
        return "commit"
    if len(name) == OBJECT_NAME_BYTES:
        return "object"
    raise ValueError(
        f"{bytes(name).hex()!r} is not an object name: names are {COMMIT_NAME_BYTES} bytes "
        f"(commits) or {OBJECT_NAME_BYTES} bytes (other objects), not {len(name)}"
    )


def _checked_name(name: bytes) -> bytes:
    kind_of(name)
    return bytes(name)


class WriteBatch:
    """New objects waiting to be stored together.

    Readers that build on a batch (a record tree updated twice before a
    commit) see its objects through :meth:`get`.
    """

    __slots__ = ("_objects",)

    def __init__(self) -> None:
        self._objects: dict[bytes, bytes] = {}

    def put(self, name: bytes, data: bytes) -> None:
        """Add one object (adding it twice is harmless: names are content hashes)."""
        kind_of(name)
        self._objects[name] = data

    def get(self, name: bytes) -> bytes | None:
        """An object added to this batch, or None."""
        return self._objects.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._objects

    def __len__(self) -> int:
        return len(self._objects)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """``(name, data)`` of every object added, in the order added."""
        return iter(list(self._objects.items()))

    def nbytes(self) -> int:
        """Bytes of object data in the batch."""
        return sum(len(d) for d in self._objects.values())


class ObjectStore(ABC):
    """Immutable history objects by name.

    Attributes
    ----------
    location:
        Where the objects live (a file or a URL), for error messages.
    """

    location: str

    @abstractmethod
    def get_many(self, names: Sequence[bytes]) -> list[bytes | None]:
        """The stored bytes of each name (None where absent), in order.

        Stores return what they hold; callers check objects against their
        names before decoding them (see :class:`~tensorcask.history.store.History`).
        """

    def get(self, name: bytes) -> bytes | None:
        """The stored bytes of one object, or None."""
        return self.get_many([name])[0]

    @abstractmethod
    def has_many(self, names: Sequence[bytes]) -> list[bool]:
        """Whether each name is stored, in order."""

    def has(self, name: bytes) -> bool:
        """Whether ``name`` is stored."""
        return self.has_many([name])[0]

    @abstractmethod
    def write(self, batch: WriteBatch) -> None:
        """Store every object of ``batch``; on a local store, all or nothing."""

    def put(self, name: bytes, data: bytes) -> None:
        """Store one object."""
        batch = WriteBatch()
        batch.put(name, data)
        self.write(batch)

    @abstractmethod
    def names(self, kind: Kind, prefix: bytes = b"") -> Iterator[bytes]:
        """Names of the stored objects of ``kind`` that start with ``prefix``, in byte order."""

    @abstractmethod
    def delete_many(self, names: Iterable[bytes]) -> int:
        """Remove objects (garbage collection); returns how many existed."""


class MemoryObjectStore(ObjectStore):
    """Objects in a dict: a twin of the real stores for tests. Thread-safe."""

    def __init__(self, location: str = "memory") -> None:
        self.location = location
        self._objects: dict[bytes, bytes] = {}
        self._lock = threading.Lock()

    def get_many(self, names: Sequence[bytes]) -> list[bytes | None]:
        wanted = [_checked_name(n) for n in names]
        with self._lock:
            return [self._objects.get(n) for n in wanted]

    def has_many(self, names: Sequence[bytes]) -> list[bool]:
        wanted = [_checked_name(n) for n in names]
        with self._lock:
            return [n in self._objects for n in wanted]

    def write(self, batch: WriteBatch) -> None:
        with self._lock:
            self._objects.update(batch.items())

    def names(self, kind: Kind, prefix: bytes = b"") -> Iterator[bytes]:
        with self._lock:
            chosen = sorted(n for n in self._objects if kind_of(n) == kind and n.startswith(prefix))
        return iter(chosen)

    def delete_many(self, names: Iterable[bytes]) -> int:
        wanted = [_checked_name(n) for n in names]
        with self._lock:
            return sum(self._objects.pop(n, None) is not None for n in wanted)


_TABLES: dict[Kind, str] = {"commit": "commits", "object": "objects"}


class LMDBObjectStore(ObjectStore):
    """The local repository's objects: the ``commits`` and ``objects`` tables.

    :meth:`write` joins a write transaction this thread has open on the same
    environment, so a commit's objects, its ref move and the cleared staging
    area are one atomic transaction.
    """

    def __init__(self, db: MetaDB) -> None:
        self.db = db
        self.location = db.data_file

    def get_many(self, names: Sequence[bytes]) -> list[bytes | None]:
        db = self.db
        with db.read() as txn:
            return [db.get(txn, _TABLES[kind_of(n)], n) for n in names]

    def has_many(self, names: Sequence[bytes]) -> list[bool]:
        db = self.db
        with db.read() as txn:
            return [db.has(txn, _TABLES[kind_of(n)], n) for n in names]

    def write(self, batch: WriteBatch) -> None:
        db = self.db
        with db.write() as txn:
            for name, data in batch.items():
                db.put(txn, _TABLES[kind_of(name)], name, data)

    def names(self, kind: Kind, prefix: bytes = b"") -> Iterator[bytes]:
        # Collected under one snapshot, so that callers may write while iterating.
        db = self.db
        found: list[bytes] = []
        with db.read() as txn:
            cursor = db.cursor(txn, _TABLES[kind])
            if cursor.set_range(prefix):
                for key in cursor.iternext(keys=True, values=False):
                    if not bytes(key).startswith(prefix):
                        break
                    found.append(bytes(key))
        return iter(found)

    def delete_many(self, names: Iterable[bytes]) -> int:
        db = self.db
        with db.write() as txn:
            return sum(db.delete(txn, _TABLES[kind_of(n)], bytes(n)) for n in names)
