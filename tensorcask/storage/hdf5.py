"""Variable-shape and compressed arrays in chunked HDF5 files.

Each writer keeps one active file per dtype, ``root/{segment:08d}.h5``, holding
one resizable 1-D dataset ``"data"``. A payload is stored flattened;
``Location.offset`` is its first element and the location keeps the shape.
Byte strings go to the ``uint8`` file of the writer. Files are written in
SWMR mode, so readers (in any process) open them while they grow and refresh
their view of the dataset when asked for elements past its known end.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np
import xxhash

from tensorcask.errors import CaskError, CorruptionError, ReadOnlyError
from tensorcask.storage.base import BLOB, Backend, Location, Payload, fsync_path
from tensorcask.storage.memmap import SegmentFiles

__all__ = ["HDF5Backend"]

COMPRESSIONS = (None, "gzip", "lzf", "zstd")
_ZSTD_FILTER = 32015  # the registered HDF5 filter id of Zstandard (hdf5plugin)


def _filter_options(compression: str | None) -> dict[str, Any]:
    """``create_dataset`` options of a compression name."""
    if compression == "zstd":
        _register_plugins()
        return dict(_zstd())
    return {"compression": compression}


def _zstd() -> Any:
    import hdf5plugin  # 0.25 s to import: only for zstd columns

    return hdf5plugin.Zstd()


def _register_plugins() -> None:
    """Make the filters of hdf5plugin (zstd) known to this process's HDF5."""
    if not h5py.h5z.filter_avail(_ZSTD_FILTER):
        import hdf5plugin  # noqa: F401 -- registers its filters on import


def _ensure_filters(data: h5py.Dataset, path: Path) -> None:
    """Load the filter plugins a dataset needs before its chunks are read."""
    plist = data.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code == _ZSTD_FILTER and not h5py.h5z.filter_avail(code):
            try:
                _register_plugins()
            except ImportError:
                raise CaskError(
                    f"{path} is compressed with zstd, which needs the hdf5plugin package: "
                    "pip install hdf5plugin"
                ) from None


@dataclass(slots=True)
class _Open:
    """One open segment file: its dataset and how many elements we know of."""

    number: int
    file: h5py.File
    data: h5py.Dataset
    length: int


class HDF5Backend(Backend):
    """Backend for ndarrays of any shape (and bytes) in chunked HDF5 datasets.

    Parameters
    ----------
    root:
        Directory of the ``.h5`` segment files (created if missing when writable).
    writable:
        Whether this instance may append.
    compression:
        ``None``, ``"gzip"`` or ``"lzf"``: the filter of the datasets this
        instance creates. Readers need not know it.
    """

    name: ClassVar[str] = "hdf5"
    segment_bytes: int = 1 << 30
    """A file takes no more payloads once it holds this many bytes."""
    chunk_bytes: int = 256 << 10
    """Approximate size of one dataset chunk."""

    def __init__(self, root: Path, *, writable: bool, compression: str | None = None) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"unknown compression {compression!r}; use one of {COMPRESSIONS}")
        super().__init__(root, writable=writable)
        self.compression = compression
        self._files = SegmentFiles(self.root, ".h5")
        self._active: dict[str, _Open] = {}  # storage dtype -> file being written
        self._readers: dict[int, _Open] = {}
        self._readers_lock = threading.Lock()
        self._decoders: dict[int, _ChunkDecoder | None] = {}  # segment -> its filters' undoer
        self._decoders_lock = threading.Lock()
        self._unsynced: set[int] = set()
        self._closed = False
        if writable:
            self.root.mkdir(parents=True, exist_ok=True)

    # -- writing ---------------------------------------------------------

    def append(self, values: Sequence[Payload]) -> list[Location]:
        """Append payloads; those of one dtype are written with one dataset write."""
        self._check_open()
        if not self.writable:
            raise ReadOnlyError(
                f"hdf5 backend {self.root} is read-only; open it writable to append"
            )
        flats: list[np.ndarray] = []
        described: list[tuple[str, tuple[int, ...], int]] = []
        groups: dict[str, list[int]] = {}
        for index, value in enumerate(values):
            if isinstance(value, bytes | bytearray):
                flat = np.frombuffer(value, np.uint8)
                described.append((BLOB, (len(value),), xxhash.xxh3_64_intdigest(value)))
            else:
                array = np.asarray(value)
                if not array.flags.c_contiguous:
                    array = array.copy()
                if array.dtype.hasobject:
                    raise TypeError(
                        f"cannot store an array of dtype {array.dtype}: it holds objects"
                    )
                flat = array.reshape(-1)
                described.append(
                    (array.dtype.str, array.shape, xxhash.xxh3_64_intdigest(array.data))
                )
            flats.append(flat)
            groups.setdefault(flat.dtype.str, []).append(index)
        placed: dict[int, Location] = {}
        for storage_dtype, indices in groups.items():
            segment = self._writer(storage_dtype)
            sizes = [flats[i].size for i in indices]
            starts = accumulate(sizes[:-1], initial=segment.length)
            total = sum(sizes)
            if total:
                data = np.concatenate([flats[i] for i in indices])
                segment.data.resize((segment.length + total,))
                segment.data[segment.length :] = data
                segment.length += total
                self._unsynced.add(segment.number)
            for index, start in zip(indices, starts, strict=True):
                dtype, shape, checksum = described[index]
                placed[index] = Location(self.name, segment.number, start, dtype, shape, checksum)
            if segment.length * segment.data.dtype.itemsize >= self.segment_bytes:
                self._retire(storage_dtype)
        return [placed[index] for index in range(len(flats))]

    def _writer(self, storage_dtype: str) -> _Open:
        segment = self._active.get(storage_dtype)
        if segment is not None:
            return segment
        number, fd = self._files.create()
        os.close(fd)
        path = self._files.path(number)
        file = None
        try:
            # The empty file is ours alone (created with O_EXCL): truncating
            # it into an HDF5 file races with no one.
            file = h5py.File(path, "w", libver="latest")
            dtype = np.dtype(storage_dtype)
            data = file.create_dataset(
                "data",
                shape=(0,),
                maxshape=(None,),
                dtype=dtype,
                chunks=(max(1, self.chunk_bytes // dtype.itemsize),),
                **_filter_options(self.compression),
            )
            file.swmr_mode = True
        except BaseException:
            if file is not None:
                file.close()
            path.unlink(missing_ok=True)
            raise
        segment = self._active[storage_dtype] = _Open(number, file, data, 0)
        return segment

    def _retire(self, storage_dtype: str) -> None:
        self._active.pop(storage_dtype).file.close()

    def sync(self) -> None:
        """Flush and fsync every file written since the last sync."""
        self._check_open()
        active = {segment.number: segment for segment in self._active.values()}
        for number in sorted(self._unsynced):
            segment = active.get(number)
            if segment is None:
                self._files.fsync(number)
            else:
                segment.file.flush()
                os.fsync(segment.file.id.get_vfd_handle())
            self._unsynced.discard(number)

    def seal(self) -> None:
        """Close the active files; later appends create new ones."""
        for storage_dtype in list(self._active):
            self._retire(storage_dtype)

    def close(self) -> None:
        """Seal and close every reader handle. Idempotent."""
        self.seal()
        for reader in self._readers.values():
            reader.file.close()
        self._readers.clear()
        with self._decoders_lock:
            for decoder in self._decoders.values():
                if decoder is not None:
                    decoder.close()
            self._decoders.clear()
        self._closed = True

    # -- reading ---------------------------------------------------------

    def read(self, location: Location) -> Payload:
        """Read one payload into owned memory, checksum verified."""
        return self.read_many([location])[0]

    def read_many(self, locations: Sequence[Location]) -> list[Payload]:
        """Read payloads, one dataset read per run of nearby payloads in a file."""
        self._check_open()
        by_segment: dict[int, list[int]] = {}
        for index, location in enumerate(locations):
            by_segment.setdefault(location.segment, []).append(index)
        placed: dict[int, Payload] = {}
        for segment, indices in by_segment.items():
            spans = sorted(
                (locations[i].offset, locations[i].offset + _element_count(locations[i]), i)
                for i in indices
            )
            opened = self._dataset(segment, max(stop for _, stop, _ in spans))
            # Payloads less than a chunk apart share one read (and decompression).
            gap = opened.data.chunks[0]
            runs: list[tuple[int, int, list[int]]] = []
            for start, stop, index in spans:
                if runs and start <= runs[-1][1] + gap:
                    first, last, members = runs[-1]
                    runs[-1] = (first, max(last, stop), members)
                    members.append(index)
                else:
                    runs.append((start, stop, [index]))
            for first, last, members in runs:
                block = self._read_block(opened, locations[members[0]], first, last)
                for index in members:
                    placed[index] = self._extract(locations[index], block, first)
        return [placed[index] for index in range(len(locations))]

    def _read_block(self, opened: _Open, location: Location, start: int, stop: int) -> np.ndarray:
        try:
            block: np.ndarray = opened.data[start:stop]
        except OSError as error:  # e.g. a damaged compressed chunk
            path = self.path_of(location)
            raise CorruptionError(f"cannot read {path}: {error}", path=path) from error
        return block

    def _extract(self, location: Location, block: np.ndarray, first: int) -> Payload:
        start = location.offset - first
        piece = block[start : start + _element_count(location)]
        if location.dtype == BLOB:
            data = piece.tobytes()
            self.verify(location, data)
            return data
        out = np.empty(location.shape, location.dtype)
        out.reshape(-1)[...] = piece
        self.verify(location, out)
        return out

    def read_durable(self, location: Location) -> Payload:
        """Read one payload from the bytes on disk now, checksum verified.

        The HDF5 library shares one open file, with its caches, among all the
        handles of a process, so :meth:`read` may serve bytes it read before
        the file changed. Here the open handle only says where the payload's
        chunks lie (metadata, which does not change); their bytes are read
        with ``os.pread`` from a newly opened descriptor and, in a filtered
        dataset, decompressed by a private in-memory copy of the dataset.
        """
        self._check_open()
        opened = self._dataset(location.segment, location.offset + _element_count(location))
        if any(active is opened for active in self._active.values()):
            # Our own writer may still cache chunks: put them in the file first.
            opened.file.flush()
            return self._read_durable(opened, location)
        try:
            return self._read_durable(opened, location)
        except CorruptionError as damage:
            if self._replaced(opened):
                # A scrub (gc, purge) by another handle of this process rewrote the
                # file since we opened it: our chunk map is the old file's.
                with self._readers_lock:
                    if self._readers.get(location.segment) is opened:
                        self._forget(location.segment)
                fresh = self._dataset(location.segment, location.offset + _element_count(location))
                return self._read_durable(fresh, location)
            # A writer elsewhere may have moved a chunk (a compressed chunk
            # that grew): look its place up afresh before calling it damaged.
            try:
                opened.data.refresh()
            except OSError:
                raise damage from None
            opened.length = opened.data.shape[0]
            return self._read_durable(opened, location)

    def _replaced(self, opened: _Open) -> bool:
        """Whether the file at ``opened``'s path is no longer the one it has open."""
        try:
            held = os.fstat(opened.file.id.get_vfd_handle()).st_ino
            return held != os.stat(self._files.path(opened.number)).st_ino
        except (OSError, ValueError, RuntimeError):
            return False  # cannot tell: treated as not replaced

    def _read_durable(self, opened: _Open, location: Location) -> Payload:
        path = self._files.path(location.segment)
        data = opened.data
        (chunk,) = data.chunks
        itemsize = data.dtype.itemsize
        start = location.offset
        stop = start + _element_count(location)
        pieces: list[np.ndarray] = []
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise CorruptionError(
                f"segment file {path} is missing: it was removed or never written", path=str(path)
            ) from None
        try:
            with self._decoders_lock:
                if location.segment not in self._decoders:
                    if len(self._decoders) >= _DECODERS_KEPT:  # drop the oldest
                        oldest = self._decoders.pop(next(iter(self._decoders)))
                        if oldest is not None:
                            oldest.close()
                    filtered = data.id.get_create_plist().get_nfilters() > 0
                    self._decoders[location.segment] = _ChunkDecoder(data) if filtered else None
                decoder = self._decoders[location.segment]
                for first in range(start - start % chunk, stop, chunk):
                    low, high = max(start, first) - first, min(stop, first + chunk) - first
                    try:
                        info = data.id.get_chunk_info_by_coord((first,))
                    except (OSError, RuntimeError, ValueError) as error:  # a damaged chunk index
                        raise CorruptionError(
                            f"cannot read {path}: {error}", path=str(path)
                        ) from error
                    if info.byte_offset is None:
                        raise CorruptionError(
                            f"{path} has no chunk at element {first}: the file is damaged",
                            path=str(path),
                        )
                    if decoder is None:  # stored as is: read just the payload's bytes
                        size, position = (high - low) * itemsize, info.byte_offset + low * itemsize
                        pieces.append(np.frombuffer(_pread(fd, size, position, path), np.uint8))
                    else:
                        raw = _pread(fd, info.size, info.byte_offset, path)
                        decoded = decoder.decode(raw, info.filter_mask, path)
                        pieces.append(decoded[low * itemsize : high * itemsize])
        finally:
            os.close(fd)
        block = np.concatenate(pieces) if pieces else np.empty(0, np.uint8)
        if location.dtype == BLOB:
            payload = block.tobytes()
            self.verify(location, payload)
            return payload
        out = block.view(location.dtype).reshape(location.shape).copy()
        self.verify(location, out)
        return out

    def _dataset(self, segment: int, need: int) -> _Open:
        """The open dataset of ``segment``, refreshed until it holds ``need`` elements."""
        for active in self._active.values():
            if active.number == segment:
                opened = active
                break
        else:
            with self._readers_lock:  # reader threads share this instance
                opened = self._readers.get(segment) or self._open_reader(segment)
            if opened.length < need:
                opened.data.refresh()
                opened.length = opened.data.shape[0]
        if opened.length < need:
            path = self._files.path(segment)
            raise CorruptionError(
                f"{path} holds {opened.length} elements but element {need - 1} was asked for: "
                "the file is truncated",
                path=str(path),
            )
        return opened

    def _open_reader(self, segment: int) -> _Open:
        path = self._files.path(segment)
        try:
            file = _open_swmr_reader(path)
        except FileNotFoundError:
            raise CorruptionError(
                f"segment file {path} is missing: it was removed or never written", path=str(path)
            ) from None
        except OSError as error:
            raise CorruptionError(f"cannot open {path}: {error}", path=str(path)) from error
        try:
            data = file["data"]
        except KeyError:
            file.close()
            raise CorruptionError(f"{path} has no dataset 'data'", path=str(path)) from None
        try:
            _ensure_filters(data, path)
        except BaseException:
            file.close()
            raise
        opened = self._readers[segment] = _Open(segment, file, data, data.shape[0])
        return opened

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"hdf5 backend {self.root} is closed")

    # -- segments --------------------------------------------------------

    def path_of(self, location: Location) -> str:
        """Path of the ``.h5`` file holding ``location``."""
        return str(self._files.path(location.segment))

    def segments(self) -> list[int]:
        """Numbers of the ``.h5`` files in ``root``."""
        return self._files.numbers()

    def scrub(self, locations: Sequence[Location]) -> int:
        """Rewrite each segment file holding ``locations`` with their elements zeroed.

        HDF5 does not reuse or clear the space of a rewritten chunk (a
        compressed chunk that changes size moves), so overwriting in place
        could leave the old bytes in the file: the file is copied instead,
        chunk by chunk, with every element at the same offset, and renamed
        over the old one. Other payloads keep their locations.
        """
        self._check_open()
        if not self.writable:
            raise ReadOnlyError(f"hdf5 backend {self.root} is read-only; cannot scrub")
        by_segment: dict[int, list[tuple[int, int]]] = {}
        for loc in locations:
            count = _element_count(loc)
            if count:
                by_segment.setdefault(loc.segment, []).append((loc.offset, count))
        for stray in self.root.glob("*.h5.scrub"):  # a copy a crash left behind
            stray.unlink(missing_ok=True)
        done = 0
        for segment, spans in sorted(by_segment.items()):
            path = self._files.path(segment)
            if not path.exists():
                continue
            self._forget(segment)
            done += _rewrite_zeroed(path, sorted(spans))
        return done

    def _forget(self, segment: int) -> None:
        """Close this instance's handles on ``segment``."""
        for storage_dtype, active in list(self._active.items()):
            if active.number == segment:
                self._retire(storage_dtype)
        reader = self._readers.pop(segment, None)
        if reader is not None:
            reader.file.close()
        with self._decoders_lock:
            decoder = self._decoders.pop(segment, None)
        if decoder is not None:
            decoder.close()

    def remove_segment(self, segment: int) -> None:
        """Delete a segment file, closing this instance's handles on it first."""
        self._check_open()
        if not self.writable:
            raise ReadOnlyError(f"hdf5 backend {self.root} is read-only; cannot remove segments")
        self._forget(segment)
        self._unsynced.discard(segment)
        self._files.path(segment).unlink(missing_ok=True)


_COPY_ELEMENTS = 1 << 24


def _rewrite_zeroed(path: Path, spans: list[tuple[int, int]]) -> int:
    """Copy ``path`` with the elements of ``spans`` (start, count) zeroed, then
    rename the copy over it; return the bytes zeroed (0: nothing to zero)."""
    with _open_swmr_reader(path) as source:
        data = source["data"]
        _ensure_filters(data, path)
        length = int(data.shape[0])
        spans = [(a, min(n, length - a)) for a, n in spans if a < length]
        if not spans or not any(np.any(data[a : a + n]) for a, n in spans):
            return 0
        tmp = path.with_name(path.name + ".scrub")
        try:
            with h5py.File(tmp, "w", libver="latest") as target:
                copy = target.create_dataset(
                    "data",
                    shape=(length,),
                    maxshape=(None,),
                    dtype=data.dtype,
                    chunks=data.chunks,
                    dcpl=data.id.get_create_plist(),  # the same filters, plugins included
                )
                step = max(1, _COPY_ELEMENTS // data.chunks[0]) * data.chunks[0]
                for start in range(0, length, step):
                    stop = min(length, start + step)
                    block = data[start:stop]
                    for a, n in spans:
                        lo, hi = max(a, start), min(a + n, stop)
                        if lo < hi:
                            block[lo - start : hi - start] = 0
                    copy[start:stop] = block
            fsync_path(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        zeroed = sum(n for _, n in spans) * data.dtype.itemsize
    fsync_path(path.parent)
    return zeroed


def _element_count(location: Location) -> int:
    return location.shape[0] if location.dtype == BLOB else math.prod(location.shape)


def _pread(fd: int, size: int, position: int, path: Path) -> bytes:
    """Exactly ``size`` bytes of a file from ``position``."""
    data = os.pread(fd, size, position)
    while len(data) < size:
        more = os.pread(fd, size - len(data), position + len(data))
        if not more:
            raise CorruptionError(
                f"{path} ends at byte {position + len(data)}, inside stored data: "
                "the file is truncated",
                path=str(path),
            )
        data += more
    return data


_decoder_names = itertools.count()

_DECODERS_KEPT = 4
"""Segments whose chunk decoders an instance keeps (each holds a few chunks)."""


class _ChunkDecoder:
    """Undoes the filters (gzip, lzf, ...) of one dataset's stored chunks.

    It holds a one-chunk dataset with the same type and creation properties
    in a private in-memory file: a raw chunk is written into it as stored and
    read back through HDF5's own filter pipeline. Nothing is cached but the
    last chunk decoded, reused only for identical raw bytes.
    """

    def __init__(self, data: h5py.Dataset) -> None:
        name = f"tensorcask-decoder-{os.getpid()}-{next(_decoder_names)}"
        self._file = h5py.File(name, "w", driver="core", backing_store=False)
        self._access = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
        self._access.set_chunk_cache(0, 0, 1.0)  # no chunk cache: every read decodes
        self._type = data.id.get_type()
        self._chunk = h5py.h5d.create(
            self._file.id,
            b"chunk",
            self._type,
            h5py.h5s.create_simple(data.chunks),
            dcpl=data.id.get_create_plist(),
            dapl=self._access,
        )
        self._nbytes = data.chunks[0] * data.dtype.itemsize
        self._last: tuple[int, bytes, np.ndarray] | None = None

    def decode(self, raw: bytes, filter_mask: int, path: Path) -> np.ndarray:
        """The chunk stored as ``raw`` (with ``filter_mask``), as bytes."""
        if self._last is not None and self._last[:2] == (filter_mask, raw):
            return self._last[2]
        self._last = None
        out = np.empty(self._nbytes, np.uint8)
        try:
            self._chunk.write_direct_chunk((0,), raw, filter_mask)
            # An open dataset may read a chunk just written directly with a
            # stale filter mask (HDF5 1.14), failing on chunks stored
            # unfiltered: reopen it.
            self._chunk.close()
            self._chunk = h5py.h5d.open(self._file.id, b"chunk", dapl=self._access)
            # Read in the stored type itself: the bytes as stored, unconverted.
            self._chunk.read(h5py.h5s.ALL, h5py.h5s.ALL, out, mtype=self._type)
        except OSError as error:  # the filter failed: damaged compressed data
            raise CorruptionError(
                f"cannot decode a chunk of {path}: {error}", path=str(path)
            ) from error
        self._last = (filter_mask, raw, out)
        return out

    def close(self) -> None:
        """Release the in-memory file."""
        self._chunk.close()
        self._file.close()


_READ_ATTEMPTS = 8
"""Metadata read attempts of an SWMR reader. HDF5 retries a metadata block that
fails its checksum (a writer may be flushing it) 100 times by default, with
growing sleeps: a damaged file would hang its reader for minutes. A few
attempts ride out a concurrent flush; damage then fails fast."""

_reader_fapl: Any = None


def _swmr_fapl() -> Any:
    """A file-access property list for SWMR readers with few read attempts, or
    None where the HDF5 library's setter cannot be reached."""
    global _reader_fapl
    if _reader_fapl is None:
        _reader_fapl = False
        setter = _hdf5_function("H5Pset_metadata_read_attempts")
        if setter is not None:
            fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
            fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
            setter.argtypes = [ctypes.c_int64, ctypes.c_uint]
            setter.restype = ctypes.c_int
            if setter(fapl.id, _READ_ATTEMPTS) >= 0:
                _reader_fapl = fapl
    return _reader_fapl or None


def _hdf5_function(name: str) -> Any:
    """A function of the HDF5 library h5py loaded (found through /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as maps:
            found = re.findall(r"(/\S*libhdf5[-_.][^/\s]*\.so[^/\s]*)", maps.read())
        library = next(p for p in sorted(set(found)) if "_hl" not in p.rsplit("/", 1)[-1])
        return getattr(ctypes.CDLL(library), name)
    except (OSError, StopIteration, AttributeError):
        return None


def _open_swmr_reader(path: Path) -> h5py.File:
    """Open ``path`` for SWMR reading, failing fast on damaged metadata."""
    fapl = _swmr_fapl()
    if fapl is None:
        return h5py.File(path, "r", libver="latest", swmr=True)
    if not path.exists():
        raise FileNotFoundError(str(path))
    flags = h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ
    return h5py.File(h5py.h5f.open(os.fsencode(path), flags, fapl=fapl))
