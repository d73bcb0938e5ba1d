"""History objects on a remote: an :class:`~tensorcask.history.objectstore.ObjectStore` over packs.

Each :meth:`RemoteObjectStore.write` stores its batch as one pack in the
remote's ``objects/`` folder; the pack's index appears last, so a batch is
visible whole or not at all. Objects are returned as stored: ``History``
checks each against its name before decoding it, as it does locally.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Iterator, Sequence

from ..history.objectstore import (
    COMMIT_NAME_BYTES,
    OBJECT_NAME_BYTES,
    Kind,
    ObjectStore,
    WriteBatch,
    kind_of,
)
from .packset import PackSet
from .transport import Transport

__all__ = ["OBJECTS_FOLDER", "RemoteObjectStore"]

OBJECTS_FOLDER = "objects"
_LENGTH: dict[Kind, int] = {"commit": COMMIT_NAME_BYTES, "object": OBJECT_NAME_BYTES}


class RemoteObjectStore(ObjectStore):
    """The history objects of one remote (commits and the objects they reach), in packs."""

    def __init__(self, transport: Transport) -> None:
        self.packs = PackSet(transport, OBJECTS_FOLDER, read_ahead=True)
        self.location = transport.path(OBJECTS_FOLDER)
        self._commits: dict[bytes, bytes | None] = {}
        self._commit_units: set[str] = set()
        self._lock = threading.Lock()

    def get_many(self, names: Sequence[bytes]) -> list[bytes | None]:
        wanted = [bytes(n) for n in names]
        commits = [kind_of(n) == "commit" for n in wanted]
        if not any(commits):
            return self.packs.get_many(wanted)
        # Walks ask for commits one at a time: read all of them once instead (they are
        # small and contiguous in each pack), then again only for packs new since.
        missing = [n for n, c in zip(wanted, commits, strict=True) if c and n not in self._commits]
        if missing:
            self._load_commits(missing)
        out = self.packs.get_many([n for n, c in zip(wanted, commits, strict=True) if not c])
        others = iter(out)
        return [
            self._commits.get(n) if c else next(others)
            for n, c in zip(wanted, commits, strict=True)
        ]

    def _load_commits(self, wanted: list[bytes]) -> None:
        """Read the commits of every index not read yet, listing again (once) while some
        of ``wanted`` are still missing."""
        for attempt in range(2):
            if attempt:
                self.packs.refresh()
            with self._lock:
                skip = set(self._commit_units)
            found = self.packs.retrying(
                functools.partial(self.packs.entries_of_length, COMMIT_NAME_BYTES, skip=skip)
            )
            with self._lock:
                for unit, entries in found.items():
                    self._commits.update(entries)
                    self._commit_units.add(unit)
                if all(n in self._commits for n in wanted):
                    return

    def has_many(self, names: Sequence[bytes]) -> list[bool]:
        wanted = [bytes(n) for n in names]
        for n in wanted:
            kind_of(n)
        return self.packs.has_many(wanted)

    def write(self, batch: WriteBatch) -> None:
        self.packs.write(list(batch.items()))

    def names(self, kind: Kind, prefix: bytes = b"") -> Iterator[bytes]:
        return self.packs.names(_LENGTH[kind], bytes(prefix))

    def delete_many(self, names: Iterable[bytes]) -> int:
        wanted = [bytes(n) for n in names]
        for n in wanted:
            kind_of(n)
        with self._lock:
            for n in wanted:
                self._commits.pop(n, None)
            # Packs are named by content: one written anew after this delete may bear the
            # name of a pack read before, so read every pack's commits again when asked.
            self._commit_units.clear()
        return self.packs.delete_many(wanted)
