"""The backend seam: where sample bytes live on disk.

A backend appends sample payloads (numpy arrays or byte strings) to segment
files it owns and hands back a :class:`Location` for each one. It knows
nothing of keys, digests, columns or commits; the content store above it maps
digests to locations.

Rules every backend follows (``tests/storage/conformance.py`` checks them):

* Appends go to segments created by this backend instance; a segment is
  never reopened for writing once sealed (or once its writer went away).
* Nothing appended is durable until :meth:`Backend.sync` returns.
* Every read verifies the xxh3 checksum recorded in the location and raises
  :class:`~tensorcask.errors.CorruptionError` (with ``path`` set) on mismatch.
* Every read returns an object that owns its memory: writing to it never
  changes stored data.
"""

from __future__ import annotations

import os
import struct
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np
import xxhash

from tensorcask.errors import CorruptionError

__all__ = [
    "BLOB",
    "Backend",
    "Location",
    "LocationGroup",
    "Payload",
    "TableRows",
    "encode_rows",
    "fsync_path",
    "group_locations",
]

Payload = np.ndarray | bytes
"""What a backend stores: an ndarray, or a byte string (``dtype == BLOB``)."""

BLOB = "blob"
"""``Location.dtype`` of byte-string payloads."""

_HEAD = struct.Struct("<BIQQB")  # version, segment, offset, checksum, ndim


@dataclass(frozen=True, slots=True)
class Location:
    """Where one payload is stored, and how to check it.

    Attributes
    ----------
    backend:
        Registry name of the backend that stored it (``"memmap"``, ...).
    segment:
        Segment (file) number inside that backend.
    offset:
        Backend-specific position inside the segment (row, element or id).
    dtype:
        Canonical numpy dtype string of an ndarray payload, or :data:`BLOB`.
    shape:
        Shape of an ndarray payload; ``(nbytes,)`` for a blob.
    checksum:
        xxh3-64 of the payload's stored bytes.
    """

    backend: str
    segment: int
    offset: int
    dtype: str
    shape: tuple[int, ...]
    checksum: int

    def to_bytes(self) -> bytes:
        """Stable binary encoding (stored in the content index)."""
        head = _HEAD.pack(1, self.segment, self.offset, self.checksum, len(self.shape))
        return head + _tail(self.backend, self.dtype, self.shape)

    @classmethod
    def from_bytes(cls, data: bytes) -> Location:
        """Inverse of :meth:`to_bytes`."""
        version, segment, offset, checksum, ndim = _HEAD.unpack_from(data)
        if version != 1:
            raise ValueError(f"unknown location encoding version {version}")
        shape, backend, dtype = _untail(bytes(data[_HEAD.size :]), ndim)
        return cls(backend, segment, offset, dtype, shape, checksum)


@dataclass(frozen=True, slots=True)
class TableRows:
    """Memmap rows of equal dtype and shape, as arrays (from a column table).

    Attributes
    ----------
    segments, rows, checksums:
        Segment number, row and xxh3-64 checksum of each sample, in order.
    dtype, shape:
        The samples' canonical dtype string and shape.
    """

    segments: np.ndarray
    rows: np.ndarray
    checksums: np.ndarray
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LocationGroup:
    """Encoded locations that share a backend, dtype and shape, decoded as arrays.

    Attributes
    ----------
    backend, dtype, shape:
        What the group shares.
    members:
        Positions of the group's locations in the input of :func:`group_locations`.
    segments, offsets, checksums:
        Per member, as in :class:`Location`.
    """

    backend: str
    dtype: str
    shape: tuple[int, ...]
    members: np.ndarray
    segments: np.ndarray
    offsets: np.ndarray
    checksums: np.ndarray

    def location(self, i: int) -> Location:
        """The :class:`Location` of member ``i`` (a position in this group)."""
        return Location(
            self.backend,
            int(self.segments[i]),
            int(self.offsets[i]),
            self.dtype,
            self.shape,
            int(self.checksums[i]),
        )


_HEAD_ARRAY = np.dtype(
    [("version", "u1"), ("segment", "<u4"), ("offset", "<u8"), ("checksum", "<u8"), ("ndim", "u1")]
)


def group_locations(raws: Sequence[bytes]) -> list[LocationGroup]:
    """Decode many encoded locations (:meth:`Location.to_bytes`) at once, grouped alike.

    Locations of equal-shape samples differ only in their head, so each
    group's heads decode as one array instead of one object per sample.
    """
    size = _HEAD.size
    lengths = np.fromiter(map(len, raws), np.int64, len(raws))
    groups: list[tuple[bytes, np.ndarray, np.ndarray]] = []  # tail, members, heads
    for length in np.unique(lengths).tolist():
        members = np.flatnonzero(lengths == length)
        if length <= size:
            raise ValueError("a location encoding too short to decode")
        joined = b"".join([raws[i] for i in members.tolist()])
        matrix = np.frombuffer(joined, np.uint8).reshape(len(members), length)
        tails = matrix[:, size:]
        if (tails == tails[0]).all():  # the usual case: one column's equal-shape samples
            kinds, inverse = tails[:1], np.zeros(len(members), np.int64)
        else:
            kinds, inverse = np.unique(tails, axis=0, return_inverse=True)
            inverse = inverse.reshape(-1)
        for kind in range(len(kinds)):
            chosen = np.flatnonzero(inverse == kind) if len(kinds) > 1 else slice(None)
            heads = np.ascontiguousarray(matrix[chosen, :size]).view(_HEAD_ARRAY).reshape(-1)
            groups.append((kinds[kind].tobytes(), members[chosen], heads))
    groups.sort(key=lambda g: int(g[1][0]))  # in order of first appearance
    out = []
    for tail, members, heads in groups:
        if np.any(heads["version"] != 1):
            raise ValueError("unknown location encoding version")
        shape, backend, dtype = _untail(tail, int(heads["ndim"][0]))
        out.append(
            LocationGroup(
                backend,
                dtype,
                shape,
                members.astype(np.int64),
                heads["segment"].astype(np.int64),
                heads["offset"].astype(np.int64),
                heads["checksum"].astype(np.uint64),
            )
        )
    return out


def encode_rows(
    backend: str,
    segment: int,
    offsets: np.ndarray,
    checksums: np.ndarray,
    dtype: str,
    shape: tuple[int, ...],
) -> list[bytes]:
    """Encoded locations (:meth:`Location.to_bytes`) of rows of one segment, at once."""
    heads = np.empty(len(offsets), _HEAD_ARRAY)
    heads["version"] = 1
    heads["segment"] = segment
    heads["offset"] = offsets
    heads["checksum"] = checksums
    heads["ndim"] = len(shape)
    tail = _tail(backend, dtype, shape)
    width = _HEAD.size + len(tail)
    records = np.empty((len(offsets), width), np.uint8)
    records[:, : _HEAD.size] = heads.view(np.uint8).reshape(len(offsets), _HEAD.size)
    records[:, _HEAD.size :] = np.frombuffer(tail, np.uint8)
    flat = records.tobytes()
    return [flat[i : i + width] for i in range(0, len(flat), width)]


def fsync_path(path: Path | str) -> None:
    """fsync a file or a directory by its path (a directory: to make a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@lru_cache(maxsize=4096)
def _tail(backend: str, dtype: str, shape: tuple[int, ...]) -> bytes:
    # rows of one batch share everything but segment, offset and checksum
    return struct.pack(f"<{len(shape)}Q", *shape) + f"{backend}\0{dtype}".encode()


@lru_cache(maxsize=4096)
def _untail(tail: bytes, ndim: int) -> tuple[tuple[int, ...], str, str]:
    shape = struct.unpack_from(f"<{ndim}Q", tail)
    backend, dtype = tail[8 * ndim :].decode().split("\0")
    return tuple(shape), backend, dtype


class Backend(ABC):
    """Append-only store of payloads in segments.

    Parameters
    ----------
    root:
        Directory the backend owns (created if missing when writable).
    writable:
        Whether this instance may append. Read-only instances never create,
        modify or remove files.
    """

    name: ClassVar[str]

    def __init__(self, root: Path, *, writable: bool) -> None:
        self.root = Path(root)
        self.writable = writable

    @abstractmethod
    def append(self, values: Sequence[Payload]) -> list[Location]:
        """Append payloads; return one location each, in order.

        Not durable until :meth:`sync`. Arrays must be C-contiguous with a
        canonical (native little-endian) dtype; the caller normalises them.
        """

    def append_stacked(self, batch: np.ndarray) -> list[Location]:
        """Append each row of ``batch`` (leading axis = samples)."""
        return self.append(list(batch))

    def append_encoded(self, batch: np.ndarray) -> list[bytes]:
        """:meth:`append_stacked`, returning encoded locations (:meth:`Location.to_bytes`).

        Backends that store rows side by side encode a batch at once instead
        of one object per row.
        """
        return [loc.to_bytes() for loc in self.append_stacked(batch)]

    def verify(self, location: Location, data: Payload | memoryview) -> None:
        """Check stored bytes against ``location.checksum``.

        Parameters
        ----------
        location:
            Where ``data`` was read from.
        data:
            The C-contiguous bytes about to be returned; check the caller's
            own copy, so that what was verified is what the caller gets.

        Raises
        ------
        CorruptionError
            If the xxh3 checksum differs; ``path`` names the damaged file.
        """
        buffer = data.data if isinstance(data, np.ndarray) else data
        if xxhash.xxh3_64_intdigest(buffer) != location.checksum:
            path = self.path_of(location)
            raise CorruptionError(
                f"checksum mismatch in {path} (segment {location.segment}, "
                f"offset {location.offset}): the stored bytes are damaged; "
                "restore them from a clone or remote",
                path=path,
            )

    @abstractmethod
    def read(self, location: Location) -> Payload:
        """Read one payload, checksum verified, into memory it owns."""

    def read_many(self, locations: Sequence[Location]) -> list[Payload]:
        """Read several payloads (backends override to batch by segment)."""
        return [self.read(loc) for loc in locations]

    def read_stacked(self, locations: Sequence[Location]) -> np.ndarray:
        """Read equal-shape array payloads into one stacked, owned array."""
        return np.stack([np.asarray(v) for v in self.read_many(locations)])

    def read_rows(
        self,
        segments: np.ndarray,
        rows: np.ndarray,
        checksums: np.ndarray,
        dtype: str,
        shape: tuple[int, ...],
    ) -> np.ndarray:
        """Like :meth:`read_stacked`, with locations given as arrays.

        The batch read of readers that keep a column's locations as arrays;
        backends with a vectorised gather override it.
        """
        locations = [
            Location(self.name, int(seg), int(row), dtype, shape, int(check))
            for seg, row, check in zip(segments, rows, checksums, strict=True)
        ]
        if not locations:
            return np.empty((0, *shape), dtype)
        return self.read_stacked(locations)

    def read_durable(self, location: Location) -> Payload:
        """Read one payload as the bytes stored on disk are now, checksum verified.

        Bypasses any cache this process keeps, so that damage done to a file
        after this process read it is still found: what ``verify(full=True)``
        uses. Returns what :meth:`read` returns.

        Raises
        ------
        CorruptionError
            If the stored bytes are damaged or missing; ``path`` names the file.
        """
        # Reads through the OS page cache (memmap, lmdb) or of memory always
        # see the current bytes; backends with their own caches override this.
        return self.read(location)

    @abstractmethod
    def sync(self) -> None:
        """Make everything appended so far durable (fsync)."""

    @abstractmethod
    def seal(self) -> None:
        """Stop appending to the current segments; later appends open new ones."""

    @abstractmethod
    def close(self) -> None:
        """Seal (when writable) and release every handle. Idempotent."""

    @abstractmethod
    def path_of(self, location: Location) -> str:
        """Full path of the file holding ``location`` (for error messages)."""

    @abstractmethod
    def segments(self) -> list[int]:
        """Numbers of every segment present on disk."""

    @abstractmethod
    def remove_segment(self, segment: int) -> None:
        """Delete a whole segment (garbage collection of unreferenced data), so that no
        file of this backend keeps its payloads' bytes."""

    def remove_segments(self, segments: Sequence[int]) -> None:
        """:meth:`remove_segment` for each of ``segments`` (a backend that clears freed
        space after a removal does it once for all of them)."""
        for segment in segments:
            self.remove_segment(segment)

    @abstractmethod
    def scrub(self, locations: Sequence[Location]) -> int:
        """Overwrite the stored bytes of ``locations`` so no file of this backend keeps them.

        The purge of samples: every other payload keeps its location and
        bytes. Durable when it returns. Idempotent: a location scrubbed
        before, or in a segment that is gone, is skipped. A read of a
        scrubbed location fails its checksum. Writable instances only.

        Returns
        -------
        int
            The number of payload bytes overwritten.
        """
