"""Fixed-shape arrays as raw rows in memory-mapped segment files.

A segment file ``root/{segment:08d}.seg`` holds rows of exactly one dtype and
shape, back to back, with no header: dtype and shape travel in every
:class:`~tensorcask.storage.base.Location`, whose ``offset`` is the row index.
A writer keeps one active segment per (dtype, shape) and appends with plain
``os.write`` calls, so readers in any process see the rows at once; readers map
each segment read-only and remap when asked for a row past the mapped end.

Rows of zero bytes (shape ``(0,)``, ``(3, 0)``, ...) need no file at all: they
are all recorded in segment 0, which is never allocated to a file.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import ClassVar

import numpy as np
import xxhash

from tensorcask.errors import CorruptionError, ReadOnlyError
from tensorcask.storage.base import BLOB, Backend, Location, Payload, encode_rows

__all__ = ["MemmapBackend", "SegmentFiles"]

_EMPTY_SEGMENT = 0
_EMPTY_CHECKSUM = xxhash.xxh3_64_intdigest(b"")


_HIGH_WATER = "HIGHWATER"


class SegmentFiles:
    """The numbered files ``root/{number:08d}{suffix}`` of one backend.

    Parameters
    ----------
    root:
        Directory holding the files.
    suffix:
        File name suffix, e.g. ``".seg"``.
    """

    def __init__(self, root: Path, suffix: str) -> None:
        self.root = root
        self.suffix = suffix
        self._pattern = re.compile(r"[0-9]{8}" + re.escape(suffix))
        self._next: int | None = None

    def path(self, number: int) -> Path:
        """Path of segment ``number``."""
        return self.root / f"{number:08d}{self.suffix}"

    def numbers(self) -> list[int]:
        """Sorted numbers of the segment files present."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(int(name[:8]) for name in names if self._pattern.fullmatch(name))

    def create(self) -> tuple[int, int]:
        """Create the next free segment file, exclusively.

        Returns
        -------
        tuple
            The new segment number and a write-only descriptor of its empty file.
        """
        if self._next is None:
            self._next = max(*self.numbers(), self._high_water(), _EMPTY_SEGMENT) + 1
        while True:
            number = self._next
            self._next += 1
            try:
                # O_EXCL: a number another writer took meanwhile fails here,
                # so two writers never share a file.
                fd = os.open(self.path(number), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            self._raise_high_water(number)
            directory = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            return number, fd

    # Numbers are never reused, even after gc removed the newest segment: a
    # location cached by another process must never name a different file.
    def _high_water(self) -> int:
        try:
            return int((self.root / _HIGH_WATER).read_text())
        except (FileNotFoundError, ValueError):
            return _EMPTY_SEGMENT

    def _raise_high_water(self, number: int) -> None:
        if number <= self._high_water():
            return
        # Several processes create segments at once (parallel ingest): the read and
        # the raise are one step under a file lock, so the mark never goes down.
        lock = os.open(self.root / f"{_HIGH_WATER}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if number <= self._high_water():
                return
            tmp = self.root / f"{_HIGH_WATER}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(tmp, "w") as f:
                f.write(str(number))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.root / _HIGH_WATER)
        finally:
            os.close(lock)  # releases the lock

    def fsync(self, number: int) -> None:
        """Flush a segment file that is no longer held open to disk."""
        try:
            fd = os.open(self.path(number), os.O_RDONLY)
        except FileNotFoundError:
            return  # removed since: nothing left to make durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass(slots=True)
class _Active:
    number: int
    fd: int
    rows: int = 0


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _write_at(fd: int, data: bytes, position: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, position)
        view, position = view[written:], position + written


class MemmapBackend(Backend):
    """Backend for fixed-shape ndarrays in raw, memory-mapped segment files.

    Parameters
    ----------
    root:
        Directory of the segment files (created if missing when writable).
    writable:
        Whether this instance may append.
    """

    name: ClassVar[str] = "memmap"
    segment_bytes: int = 1 << 30
    """A segment takes no more rows once it holds this many bytes."""

    def __init__(self, root: Path, *, writable: bool) -> None:
        super().__init__(root, writable=writable)
        self._files = SegmentFiles(self.root, ".seg")
        self._active: dict[tuple[str, tuple[int, ...]], _Active] = {}
        self._unsynced: set[int] = set()
        self._maps: dict[int, np.ndarray] = {}
        self._fds: dict[int, int] = {}  # kept open to check the size of mapped files
        self._maps_lock = threading.RLock()
        self._closed = False
        self._pid = os.getpid()
        if writable:
            self.root.mkdir(parents=True, exist_ok=True)

    # -- writing ---------------------------------------------------------

    def append(self, values: Sequence[Payload]) -> list[Location]:
        """Append arrays; arrays of one dtype and shape are written together.

        Raises
        ------
        TypeError
            For byte strings, which this backend does not store.
        """
        groups: dict[tuple[str, tuple[int, ...]], list[int]] = {}
        arrays = []
        for index, value in enumerate(values):
            if isinstance(value, bytes | bytearray):
                raise TypeError("the memmap backend stores arrays only; use lmdb for bytes")
            array = np.asarray(value)
            arrays.append(array)
            groups.setdefault((array.dtype.str, array.shape), []).append(index)
        placed: dict[int, Location] = {}
        for indices in groups.values():
            batch = np.stack([arrays[i] for i in indices])
            placed.update(zip(indices, self.append_stacked(batch), strict=True))
        return [placed[index] for index in range(len(arrays))]

    def append_stacked(self, batch: np.ndarray) -> list[Location]:
        """Append every row of ``batch`` with one write per segment touched."""
        dtype, shape, runs = self._append_rows(batch)
        locations: list[Location] = []
        for number, first, checksums in runs:
            rows = range(first, first + len(checksums))  # one row each for empty rows
            locations += map(
                Location,
                repeat(self.name),
                repeat(number),
                rows,
                repeat(dtype),
                repeat(shape),
                checksums,
            )
        return locations

    def append_encoded(self, batch: np.ndarray) -> list[bytes]:
        """:meth:`append_stacked`, encoding the locations of a segment's rows at once."""
        dtype, shape, runs = self._append_rows(batch)
        encoded: list[bytes] = []
        for number, first, checksums in runs:
            offsets = np.arange(first, first + len(checksums), dtype=np.uint64)
            encoded += encode_rows(
                self.name, number, offsets, np.array(checksums, np.uint64), dtype, shape
            )
        return encoded

    def _append_rows(
        self, batch: np.ndarray
    ) -> tuple[str, tuple[int, ...], list[tuple[int, int, list[int]]]]:
        """Write the rows; return their dtype, shape and ``(segment, first row,
        checksums)`` per segment touched."""
        self._check_open()
        if not self.writable:
            raise ReadOnlyError(
                f"memmap backend {self.root} is read-only; open it writable to append"
            )
        if np.ndim(batch) == 0:
            raise ValueError("append_stacked needs a batch with a leading sample axis")
        batch = np.ascontiguousarray(batch)
        if batch.dtype.hasobject:
            raise TypeError(
                f"cannot store an array of dtype {batch.dtype}: it holds Python objects"
            )
        count = len(batch)
        dtype, shape = batch.dtype.str, batch.shape[1:]
        row_bytes = batch.itemsize * math.prod(shape)
        if row_bytes == 0:  # every empty row has the same location: row 0 of no file
            return dtype, shape, [(_EMPTY_SEGMENT, 0, [_EMPTY_CHECKSUM])] * count
        data = batch.reshape(-1).view(np.uint8).data
        hash_row = xxhash.xxh3_64_intdigest
        runs: list[tuple[int, int, list[int]]] = []
        done = 0
        while done < count:
            segment = self._segment_for((dtype, shape), row_bytes)
            room = max(1, (self.segment_bytes - segment.rows * row_bytes) // row_bytes)
            take = min(count - done, room)
            chunk = data[done * row_bytes : (done + take) * row_bytes]
            try:
                _write_all(segment.fd, chunk)
            except BaseException:
                # A partly written row would shift every later row: retire the file.
                self._retire((dtype, shape))
                raise
            self._unsynced.add(segment.number)
            checksums = [
                hash_row(chunk[i : i + row_bytes]) for i in range(0, len(chunk), row_bytes)
            ]
            runs.append((segment.number, segment.rows, checksums))
            segment.rows += take
            done += take
        return dtype, shape, runs

    def _segment_for(self, key: tuple[str, tuple[int, ...]], row_bytes: int) -> _Active:
        if self._pid != os.getpid():
            # A forked child shares the parent's descriptors and file offsets:
            # let the parent keep its segments and start new ones here.
            self._pid = os.getpid()
            self.seal()
            self._unsynced.clear()
        segment = self._active.get(key)
        if (
            segment is not None
            and segment.rows
            and (segment.rows + 1) * row_bytes > self.segment_bytes
        ):
            self._retire(key)
            segment = None
        if segment is None:
            number, fd = self._files.create()
            segment = self._active[key] = _Active(number, fd)
        return segment

    def _retire(self, key: tuple[str, tuple[int, ...]]) -> None:
        os.close(self._active.pop(key).fd)

    def sync(self) -> None:
        """fsync every segment written since the last sync."""
        self._check_open()
        open_fds = {segment.number: segment.fd for segment in self._active.values()}
        for number in sorted(self._unsynced):
            fd = open_fds.get(number)
            if fd is None:
                self._files.fsync(number)
            else:
                os.fsync(fd)
            self._unsynced.discard(number)

    def seal(self) -> None:
        """Close the active segments; later appends create new files."""
        for key in list(self._active):
            self._retire(key)

    def close(self) -> None:
        """Seal and drop every mapping. Idempotent."""
        self.seal()
        for segment in list(self._maps):
            self._unmap(segment)
        self._closed = True

    # -- reading ---------------------------------------------------------

    def read(self, location: Location) -> np.ndarray:
        """Read one row into a fresh array, checksum verified."""
        self._check_readable(location)
        if math.prod(location.shape) == 0:
            out = np.empty(location.shape, location.dtype)
        else:
            rows = self._rows(location.segment, location.dtype, location.shape, location.offset + 1)
            out = np.array(rows[location.offset])
        self.verify(location, out)
        return out

    def read_many(self, locations: Sequence[Location]) -> list[Payload]:
        """Read rows, batching those of one dtype and shape through :meth:`read_stacked`."""
        groups: dict[tuple[str, tuple[int, ...]], list[int]] = {}
        for index, location in enumerate(locations):
            groups.setdefault((location.dtype, location.shape), []).append(index)
        placed: dict[int, Payload] = {}
        for indices in groups.values():
            stacked = self.read_stacked([locations[i] for i in indices])
            # np.array copies each row into memory of its own (0-d for scalar rows).
            placed.update(zip(indices, map(np.array, stacked), strict=True))
        return [placed[index] for index in range(len(locations))]

    def read_stacked(self, locations: Sequence[Location]) -> np.ndarray:
        """Gather equal-shape rows into one fresh array, in the order given.

        Rows are gathered with one fancy index per segment, then every row's
        checksum is verified.

        Raises
        ------
        ValueError
            If ``locations`` is empty or mixes dtypes or shapes.
        """
        if not locations:
            raise ValueError("read_stacked needs at least one location")
        count = len(locations)
        # One pass over the locations: touching each (scattered) object once
        # is most of the cost of a small random batch.
        fields = [
            (loc.segment, loc.offset, loc.checksum, loc.dtype, loc.shape) for loc in locations
        ]
        segments, offsets, expected, dtypes, shapes = zip(*fields, strict=True)
        dtype, shape = dtypes[0], shapes[0]
        if dtypes.count(dtype) != count or shapes.count(shape) != count:
            raise ValueError("read_stacked needs locations of one dtype and shape; use read_many")
        self._check_readable(locations[0])
        out, bad = self._gather(
            np.array(segments, np.int64), np.array(offsets, np.intp), list(expected), dtype, shape
        )
        if bad >= 0:
            self.verify(locations[bad], out[bad : bad + 1])
        return out

    def read_rows(
        self,
        segments: np.ndarray,
        rows: np.ndarray,
        checksums: np.ndarray,
        dtype: str,
        shape: tuple[int, ...],
    ) -> np.ndarray:
        """Like :meth:`read_stacked`, from arrays instead of location objects.

        The fast path of readers that keep a column's locations as arrays.
        """
        self._check_open()
        out, bad = self._gather(segments, rows, checksums.tolist(), dtype, shape)
        if bad >= 0:
            loc = Location(
                self.name, int(segments[bad]), int(rows[bad]), dtype, shape, int(checksums[bad])
            )
            self.verify(loc, out[bad : bad + 1])
        return out

    def _gather(
        self,
        segments: np.ndarray,
        rows_at: np.ndarray,
        expected: list[int],
        dtype: str,
        shape: tuple[int, ...],
    ) -> tuple[np.ndarray, int]:
        """Rows into a fresh array; returns it and the first bad row (or -1)."""
        count = len(rows_at)
        out = np.empty((count, *shape), dtype)
        if count == 0:
            return out, -1
        row_bytes = out.nbytes // count
        if row_bytes == 0:
            got = [_EMPTY_CHECKSUM] * count
        else:
            first = int(segments[0])
            if (segments == first).all():
                rows = self._rows(first, dtype, shape, int(rows_at.max()) + 1)
                np.take(rows, rows_at, axis=0, out=out, mode="clip")
            else:
                for segment in np.unique(segments).tolist():
                    where = np.flatnonzero(segments == segment)
                    wanted = rows_at[where]
                    rows = self._rows(segment, dtype, shape, int(wanted.max()) + 1)
                    out[where] = rows[wanted]
            flat = out.reshape(-1).view(np.uint8).data
            hash_row = xxhash.xxh3_64_intdigest
            got = [hash_row(flat[i : i + row_bytes]) for i in range(0, len(flat), row_bytes)]
        if got == expected:
            return out, -1
        return out, next(
            i for i, pair in enumerate(zip(got, expected, strict=True)) if pair[0] != pair[1]
        )

    def _rows(self, segment: int, dtype: str, shape: tuple[int, ...], need: int) -> np.ndarray:
        """The mapped rows of ``segment``, remapped when shorter than ``need``.

        Thread-safe: tf.data and torch threads read through one instance.
        """
        with self._maps_lock:
            return self._rows_locked(segment, dtype, shape, need)

    def _rows_locked(
        self, segment: int, dtype: str, shape: tuple[int, ...], need: int
    ) -> np.ndarray:
        rows = self._maps.get(segment)
        if (
            rows is not None
            and len(rows) >= need
            and rows.dtype.str == dtype
            and rows.shape[1:] == shape
        ):
            # Touching a mapped page past the end of a file that shrank kills the
            # process with SIGBUS; one fstat turns such damage into an error.
            if os.fstat(self._fds[segment]).st_size >= rows.nbytes:
                return rows
            self._unmap(segment)
        path = self._files.path(segment)
        row_bytes = np.dtype(dtype).itemsize * math.prod(shape)
        try:
            count = path.stat().st_size // row_bytes
        except FileNotFoundError:
            raise CorruptionError(
                f"segment file {path} is missing: it was removed or never written", path=str(path)
            ) from None
        if count < need:
            raise CorruptionError(
                f"{path} holds {count} rows of {dtype}{list(shape)} but row {need - 1} was "
                "asked for: the file is truncated",
                path=str(path),
            )
        mapped = np.memmap(path, dtype=dtype, mode="r", shape=(count, *shape))
        # A plain ndarray view indexes faster than np.memmap and keeps the map alive.
        rows = self._maps[segment] = mapped.view(np.ndarray)
        self._unmap_fd(segment)
        self._fds[segment] = os.open(path, os.O_RDONLY)
        return rows

    def _check_readable(self, location: Location) -> None:
        self._check_open()
        if location.dtype == BLOB:
            raise TypeError(
                f"the memmap backend stores no bytes payloads; {location} is not its own"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"memmap backend {self.root} is closed")

    # -- segments --------------------------------------------------------

    def _unmap(self, segment: int) -> None:
        with self._maps_lock:
            self._maps.pop(segment, None)
            self._unmap_fd(segment)

    def _unmap_fd(self, segment: int) -> None:
        fd = self._fds.pop(segment, None)
        if fd is not None:
            os.close(fd)

    def path_of(self, location: Location) -> str:
        """Path of the segment file holding ``location``."""
        return str(self._files.path(location.segment))

    def segments(self) -> list[int]:
        """Numbers of the segment files in ``root``."""
        return self._files.numbers()

    def scrub(self, locations: Sequence[Location]) -> int:
        """Overwrite the rows of ``locations`` with zeros, in place, and fsync.

        Rows are fixed-size and never move, so the other rows of a segment
        stay where their locations say.
        """
        self._check_open()
        if not self.writable:
            raise ReadOnlyError(f"memmap backend {self.root} is read-only; cannot scrub")
        by_segment: dict[int, list[Location]] = {}
        for loc in locations:
            if loc.segment != _EMPTY_SEGMENT:
                by_segment.setdefault(loc.segment, []).append(loc)
        done = 0
        for segment, locs in sorted(by_segment.items()):
            try:
                fd = os.open(self._files.path(segment), os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                size = os.fstat(fd).st_size
                for loc in locs:
                    row_bytes = np.dtype(loc.dtype).itemsize * math.prod(loc.shape)
                    start = loc.offset * row_bytes
                    if start + row_bytes <= size:
                        _write_at(fd, bytes(row_bytes), start)
                        done += row_bytes
                os.fsync(fd)
            finally:
                os.close(fd)
        return done

    def remove_segment(self, segment: int) -> None:
        """Delete a segment file (closing it first if this instance writes it)."""
        self._check_open()
        if not self.writable:
            raise ReadOnlyError(f"memmap backend {self.root} is read-only; cannot remove segments")
        for key, active in list(self._active.items()):
            if active.number == segment:
                self._retire(key)
        self._unmap(segment)
        self._unsynced.discard(segment)
        self._files.path(segment).unlink(missing_ok=True)
