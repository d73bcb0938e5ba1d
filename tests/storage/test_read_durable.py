"""``Backend.read_durable``: the bytes on disk now, whatever this process cached.

HDF5 shares an open file, with its chunk cache, among all the handles of a
process, so a plain ``read`` after a byte of the file changed may still serve
the old value. ``read_durable`` (what ``verify(full=True)`` uses) must not.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from tensorcask.errors import CorruptionError
from tensorcask.storage.base import Backend, Location, Payload
from tensorcask.storage.hdf5 import HDF5Backend
from tensorcask.storage.lmdb_backend import LMDBBackend
from tensorcask.storage.memmap import MemmapBackend
from tensorcask.storage.memory import MemoryBackend, MemoryStore

from .conformance import same, sample

KINDS = ["memmap", "hdf5", "hdf5-gzip", "hdf5-lzf", "hdf5-zstd", "lmdb", "memory"]
HDF5_KINDS = ["hdf5", "hdf5-gzip", "hdf5-lzf", "hdf5-zstd"]
CHUNK_BYTES = 1024
"""Chunk size of the HDF5 datasets here: payloads span several chunks."""


def make(
    kind: str, root: Path, *, writable: bool = True, store: MemoryStore | None = None
) -> Backend:
    """A backend of ``kind`` on ``root``."""
    if kind == "memmap":
        return MemmapBackend(root, writable=writable)
    if kind == "lmdb":
        return LMDBBackend(root, writable=writable)
    if kind == "memory":
        return MemoryBackend(root, writable=writable, store=store)
    compression = kind.partition("-")[2] or None
    backend = HDF5Backend(root, writable=writable, compression=compression)
    backend.chunk_bytes = CHUNK_BYTES
    return backend


def compressible(size: int, seed: int) -> np.ndarray:
    """Random uint8 values below 8: they compress, and a window of them is unique."""
    return np.random.default_rng(seed).integers(0, 8, size, dtype=np.uint8)


def payloads(kind: str) -> list[Payload]:
    """Payloads of many dtypes and shapes, blobs where the backend takes them."""
    values: list[Payload] = [
        compressible(4 * CHUNK_BYTES + 100, 1),  # spans five chunks
        sample("float64", (7, 9), 2),
        sample("bool", (33,), 3),
        sample("complex64", (4, 4), 4),
        sample("int32", (), 5),
        sample("float32", (3, 0), 6),
        sample("int64", (0,), 7),
        # incompressible: lzf gives up and HDF5 stores such chunks unfiltered
        sample("uint8", (3 * CHUNK_BYTES,), 8),
    ]
    if kind != "memmap":
        values += [b"", b"x", bytes(compressible(2 * CHUNK_BYTES + 7, 9))]
    return values


def flip_byte(path: str | Path, position: int) -> None:
    """Invert the bits of the byte at ``position`` of a file."""
    with open(path, "r+b") as file:
        file.seek(position)
        byte = file.read(1)
        file.seek(position)
        file.write(bytes([byte[0] ^ 0xFF]))


def stored_position(kind: str, path: str, location: Location, value: np.ndarray) -> int:
    """Position in ``path`` of a byte that, flipped, damages the payload at ``location``."""
    if kind in ("hdf5-gzip", "hdf5-lzf", "hdf5-zstd"):
        with h5py.File(path, "r", swmr=True) as file:
            data = file["data"]
            (chunk,) = data.chunks
            info = data.id.get_chunk_info_by_coord((location.offset // chunk * chunk + chunk,))
            assert info.filter_mask == 0 and info.size < CHUNK_BYTES  # really compressed
            return int(info.byte_offset) + info.size // 2
    window = value.tobytes()[CHUNK_BYTES + 10 : CHUNK_BYTES + 74]
    content = Path(path).read_bytes()
    found = content.find(window)
    assert found >= 0 and content.find(window, found + 1) < 0
    return found + 20


@pytest.mark.parametrize("kind", KINDS)
def test_read_durable_returns_what_read_returns(tmp_path: Path, kind: str) -> None:
    store: MemoryStore = {}
    writer = make(kind, tmp_path / "store", store=store)
    values = payloads(kind)
    locations = writer.append(values)
    writer.sync()
    # from the writer itself, with its segments still open for appending
    for location, value in zip(locations, values, strict=True):
        got = writer.read_durable(location)
        assert same(got, value)
        assert same(got, writer.read(location))
        if isinstance(got, np.ndarray):
            assert got.flags.owndata and got.flags.writeable
    writer.close()
    reader = make(kind, tmp_path / "store", writable=False, store=store)
    assert all(same(reader.read_durable(loc), v) for loc, v in zip(locations, values, strict=True))
    # read again in another order: nothing stale comes back from reuse
    assert all(same(reader.read_durable(locations[i]), values[i]) for i in (2, 0, 0, 7, 1, 7, 6))
    reader.close()


@pytest.mark.parametrize("kind", KINDS)
def test_read_durable_sees_damage_done_after_a_read(tmp_path: Path, kind: str) -> None:
    store: MemoryStore = {}
    writer = make(kind, tmp_path / "store", store=store)
    values = payloads(kind)
    locations = writer.append(values)
    writer.sync()
    writer.close()
    location, value = locations[0], values[0]
    assert isinstance(value, np.ndarray)
    path = writer.path_of(location)
    position = None if kind == "memory" else stored_position(kind, path, location, value)
    reader = make(kind, tmp_path / "store", writable=False, store=store)
    assert same(reader.read(location), value)  # now cached, wherever this process caches
    assert same(reader.read_durable(location), value)
    if position is None:
        data = bytearray(store[location.segment][location.offset])
        data[CHUNK_BYTES] ^= 0xFF
        store[location.segment][location.offset] = bytes(data)
    else:
        flip_byte(path, position)
    if kind in HDF5_KINDS:
        # Why read_durable exists: plain reads, even by a new instance, still
        # get the chunks HDF5 cached for this process before the damage.
        assert same(reader.read(location), value)
        assert same(make(kind, tmp_path / "store", writable=False).read(location), value)
    with pytest.raises(CorruptionError) as caught:
        reader.read_durable(location)
    assert caught.value.path == path
    # the payloads in other chunks are intact
    assert same(reader.read_durable(locations[1]), values[1])
    reader.close()


@pytest.mark.parametrize("kind", HDF5_KINDS)
def test_read_durable_by_the_writer_of_an_open_segment(tmp_path: Path, kind: str) -> None:
    writer = make(kind, tmp_path / "store")
    value = compressible(4 * CHUNK_BYTES, 1)
    (location,) = writer.append([value])
    writer.sync()
    assert same(writer.read(location), value)
    path = writer.path_of(location)
    flip_byte(path, stored_position(kind, path, location, value))
    with pytest.raises(CorruptionError) as caught:
        writer.read_durable(location)
    assert caught.value.path == path
    # appended but not synced: the writer's cached chunks reach the file first
    more = compressible(3 * CHUNK_BYTES, 2)
    (later,) = writer.append([more])
    assert same(writer.read_durable(later), more)
    writer.close()


@pytest.mark.parametrize("kind", HDF5_KINDS)
def test_read_durable_of_a_removed_file(tmp_path: Path, kind: str) -> None:
    writer = make(kind, tmp_path / "store")
    (location,) = writer.append([compressible(100, 1)])
    writer.sync()
    writer.close()
    reader = make(kind, tmp_path / "store", writable=False)
    reader.read_durable(location)
    path = reader.path_of(location)
    Path(path).unlink()
    with pytest.raises(CorruptionError, match="missing") as caught:
        reader.read_durable(location)
    assert caught.value.path == path
    reader.close()
