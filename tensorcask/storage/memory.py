"""An in-memory backend: the reference model and a fast test fixture.

Payloads live as immutable ``bytes`` in plain dicts (segment -> offset ->
bytes). Several instances may share one store dict, which then plays the part
of a directory on disk. The byte encoding used here (raw C-order array bytes;
dtype and shape travel in the :class:`~tensorcask.storage.base.Location`) is
shared with the LMDB backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import xxhash

from tensorcask.errors import CorruptionError, ReadOnlyError
from tensorcask.storage.base import BLOB, Backend, Location, Payload

__all__ = ["MemoryBackend", "MemoryStore", "payload_bytes", "payload_from_bytes"]

MemoryStore = dict[int, dict[int, bytes]]
"""Segment number -> offset -> payload bytes."""


def payload_bytes(value: Payload) -> tuple[str, tuple[int, ...], bytes]:
    """Split a payload into ``(dtype, shape, raw bytes)`` as a location records them.

    Parameters
    ----------
    value:
        An ndarray (stored as its C-order bytes) or a byte string.

    Returns
    -------
    tuple
        ``Location.dtype``, ``Location.shape`` and the bytes to store.

    Raises
    ------
    TypeError
        For arrays of Python objects, which have no byte representation.
    """
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
        return BLOB, (len(data),), data
    array = np.asarray(value)
    if array.dtype.hasobject:
        raise TypeError(f"cannot store an array of dtype {array.dtype}: it holds Python objects")
    return array.dtype.str, array.shape, array.tobytes()


def payload_from_bytes(location: Location, data: bytes | memoryview) -> Payload:
    """Rebuild the payload stored as ``data`` at ``location``, in owned memory.

    The inverse of :func:`payload_bytes`; check ``data`` first with
    :meth:`~tensorcask.storage.base.Backend.verify`.
    """
    if location.dtype == BLOB:
        return bytes(data)
    return np.frombuffer(data, dtype=location.dtype).reshape(location.shape).copy()


class MemoryBackend(Backend):
    """Backend keeping every payload in a dict.

    Parameters
    ----------
    root:
        Ignored apart from error messages; may be any path.
    writable:
        Whether this instance may append.
    store:
        The dict to keep segments in. Instances given the same dict see each
        other's payloads, like instances opened on one directory. A fresh,
        private dict when omitted.
    """

    name: ClassVar[str] = "memory"

    def __init__(self, root: Path, *, writable: bool, store: MemoryStore | None = None) -> None:
        super().__init__(root, writable=writable)
        self.store: MemoryStore = {} if store is None else store
        self._active: int | None = None
        self._closed = False

    def append(self, values: Sequence[Payload]) -> list[Location]:
        """Append payloads to this instance's active segment."""
        self._check_open()
        if not self.writable:
            raise ReadOnlyError(
                f"memory backend {self.root} is read-only; open it writable to append"
            )
        encoded = [payload_bytes(value) for value in values]
        if not encoded:
            return []
        if self._active is None or self._active not in self.store:
            # Taking the number and registering it in one step keeps two
            # instances sharing a store from ever writing to one segment.
            self._active = max(self.store, default=0) + 1
            self.store[self._active] = {}
        rows = self.store[self._active]
        locations = []
        for dtype, shape, data in encoded:
            offset = len(rows)
            rows[offset] = data
            checksum = xxhash.xxh3_64_intdigest(data)
            locations.append(Location(self.name, self._active, offset, dtype, shape, checksum))
        return locations

    def read(self, location: Location) -> Payload:
        """Read one payload, checksum verified."""
        self._check_open()
        try:
            data = self.store[location.segment][location.offset]
        except KeyError:
            raise CorruptionError(
                f"no payload at {self.path_of(location)} offset {location.offset}: "
                "its segment was removed or never written",
                path=self.path_of(location),
            ) from None
        self.verify(location, data)
        return payload_from_bytes(location, data)

    def sync(self) -> None:
        """Nothing to do: memory is as durable as it gets."""
        self._check_open()

    def seal(self) -> None:
        """Make the next append start a new segment."""
        self._active = None

    def close(self) -> None:
        """Seal and forget the store; the store itself is left untouched."""
        self.seal()
        self._closed = True

    def path_of(self, location: Location) -> str:
        """A pseudo-path ``memory:<root>/<segment>`` for messages."""
        return f"memory:{self.root}/{location.segment:08d}"

    def segments(self) -> list[int]:
        """Numbers of the segments in the store."""
        return sorted(self.store)

    def remove_segment(self, segment: int) -> None:
        """Drop a segment from the store."""
        self._check_open()
        if not self.writable:
            raise ReadOnlyError(f"memory backend {self.root} is read-only; cannot remove segments")
        self.store.pop(segment, None)

    def scrub(self, locations: Sequence[Location]) -> int:
        """Replace the payloads of ``locations`` with zeros of the same length."""
        self._check_open()
        if not self.writable:
            raise ReadOnlyError(f"memory backend {self.root} is read-only; cannot scrub")
        done = 0
        for loc in locations:
            rows = self.store.get(loc.segment, {})
            data = rows.get(loc.offset)
            if data is not None and any(data):
                rows[loc.offset] = bytes(len(data))
                done += len(data)
        return done

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"memory backend {self.root} is closed")
