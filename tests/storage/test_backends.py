"""The four storage backends: the shared conformance suite, then what is particular to each."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import h5py
import lmdb
import numpy as np
import pytest

from tensorcask.errors import CorruptionError, ReadOnlyError
from tensorcask.storage.backends import BACKENDS, open_backend
from tensorcask.storage.base import Backend, Location, Payload
from tensorcask.storage.hdf5 import HDF5Backend
from tensorcask.storage.lmdb_backend import LMDBBackend
from tensorcask.storage.memmap import MemmapBackend
from tensorcask.storage.memory import MemoryBackend, MemoryStore

from .conformance import BackendConformance, files_under, same, sample


def flip_byte(path: str | Path, position: int) -> None:
    """Invert the bits of the byte at ``position`` of a file."""
    with open(path, "r+b") as file:
        file.seek(position)
        byte = file.read(1)
        file.seek(position)
        file.write(bytes([byte[0] ^ 0xFF]))


class TestMemoryBackend(BackendConformance):
    on_disk = False

    def make_backend(self, tmp_path: Path, writable: bool = True) -> Backend:
        stores: dict[Path, MemoryStore] = self.__dict__.setdefault("_stores", {})
        store = stores.setdefault(tmp_path, {})
        return MemoryBackend(tmp_path / "store", writable=writable, store=store)

    def corrupt(self, backend: Backend, location: Location) -> None:
        assert isinstance(backend, MemoryBackend)
        rows = backend.store[location.segment]
        data = bytearray(rows[location.offset])
        data[len(data) // 2] ^= 0xFF
        rows[location.offset] = bytes(data)

    def test_instances_have_private_stores_by_default(self, tmp_path: Path) -> None:
        one = MemoryBackend(tmp_path, writable=True)
        location = one.append([np.arange(3)])[0]
        assert MemoryBackend(tmp_path, writable=False).segments() == []
        assert same(one.read(location), np.arange(3))


class TestMemmapBackend(BackendConformance):
    supports_blobs = False

    def make_backend(self, tmp_path: Path, writable: bool = True) -> Backend:
        return MemmapBackend(tmp_path / "store", writable=writable)

    def corrupt(self, backend: Backend, location: Location) -> None:
        row_bytes = np.dtype(location.dtype).itemsize * math.prod(location.shape)
        flip_byte(backend.path_of(location), location.offset * row_bytes + row_bytes // 2)

    def test_reader_remaps_a_segment_that_grew(self, tmp_path: Path) -> None:
        writer = self.make_backend(tmp_path)
        batch = sample("uint8", (40, 28, 28))
        early = writer.append_stacked(batch[:10])
        reader = self.make_backend(tmp_path, writable=False)
        assert same(reader.read(early[9]), batch[9])  # maps 10 rows
        late = writer.append_stacked(batch[10:])
        assert {loc.segment for loc in early + late} == {early[0].segment}
        assert same(reader.read(late[-1]), batch[-1])
        picks = [39, 0, 25, 9, 10, 39]
        everything = early + late
        assert same(reader.read_stacked([everything[i] for i in picks]), batch[picks])

    def test_append_stacked_writes_a_batch_at_once(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        backend = self.make_backend(tmp_path)
        calls: list[int] = []
        real_write = os.write

        def counting_write(fd: int, data: bytes) -> int:
            calls.append(len(data))
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", counting_write)
        batch = sample("uint8", (1000, 28, 28))
        locations = backend.append_stacked(batch)
        assert calls == [batch.nbytes]
        assert [loc.offset for loc in locations] == list(range(1000))
        assert same(backend.read_stacked(locations[::-1]), batch[::-1])

    def test_segments_roll_over_at_the_size_limit(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        assert isinstance(backend, MemmapBackend)
        row_bytes = 28 * 28
        backend.segment_bytes = 3 * row_bytes
        batch = sample("uint8", (10, 28, 28))
        locations = backend.append_stacked(batch[:4]) + backend.append_stacked(batch[4:])
        segments = backend.segments()
        assert len(segments) == 4
        sizes = [os.path.getsize(backend.path_of(loc)) for loc in locations]
        assert max(sizes) == 3 * row_bytes
        assert same(backend.read_stacked(locations), batch)

    def test_rows_of_one_kind_share_a_file(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        a = backend.append([np.zeros((2, 2)), np.zeros(3, np.int8), np.ones((2, 2))])
        assert a[0].segment == a[2].segment != a[1].segment
        assert (a[0].offset, a[2].offset, a[1].offset) == (0, 1, 0)
        assert os.path.getsize(backend.path_of(a[0])) == 2 * 4 * 8

    def test_zero_size_rows_need_no_file(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        locations = backend.append_stacked(np.zeros((5, 3, 0), np.float32))
        locations += backend.append([np.zeros((0,), np.int64)])
        assert backend.segments() == []
        assert same(backend.read(locations[0]), np.zeros((3, 0), np.float32))
        assert same(backend.read_stacked(locations[:5]), np.zeros((5, 3, 0), np.float32))
        assert same(backend.read_many(locations)[-1], np.zeros((0,), np.int64))

    def test_truncated_segment_is_corruption(self, tmp_path: Path) -> None:
        writer = self.make_backend(tmp_path)
        locations = writer.append_stacked(sample("float64", (10, 4)))
        writer.close()
        path = writer.path_of(locations[0])
        os.truncate(path, 5 * 4 * 8)
        reader = self.make_backend(tmp_path, writable=False)
        assert same(reader.read(locations[4]), sample("float64", (10, 4))[4])
        with pytest.raises(CorruptionError, match="truncated") as caught:
            reader.read_stacked(locations)
        assert caught.value.path == path

    def test_missing_segment_file_is_corruption(self, tmp_path: Path) -> None:
        reader = self.make_backend(tmp_path, writable=False)
        location = Location("memmap", 7, 0, "<f8", (2,), 0)
        with pytest.raises(CorruptionError, match="missing") as caught:
            reader.read(location)
        assert caught.value.path == str(tmp_path / "store" / "00000007.seg")
        assert not (tmp_path / "store").exists()

    def test_bytes_are_refused(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        with pytest.raises(TypeError):
            backend.append([np.zeros(2), b"abc"])
        with pytest.raises(TypeError):
            backend.append([np.array([object()])])


class TestHDF5Backend(BackendConformance):
    compression: str | None = None

    def make_backend(self, tmp_path: Path, writable: bool = True) -> Backend:
        return HDF5Backend(tmp_path / "store", writable=writable, compression=self.compression)

    def corrupt(self, backend: Backend, location: Location) -> None:
        path = backend.path_of(location)
        with h5py.File(path, "r") as file:
            data = file["data"]
            (chunk,) = data.chunks
            info = data.id.get_chunk_info_by_coord((location.offset // chunk * chunk,))
            if data.compression is None:
                position = info.byte_offset + (location.offset % chunk) * data.dtype.itemsize
            else:
                position = info.byte_offset + info.size // 2
        flip_byte(path, position)

    def test_files_hold_one_chunked_dataset_per_dtype(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        locations = backend.append([np.zeros((3, 4), np.float32), np.ones(7), b"abc"])
        locations += backend.append([np.arange(5, dtype=np.float32)])
        backend.sync()
        assert locations[0].segment == locations[3].segment
        assert len({loc.segment for loc in locations}) == 3
        assert [loc.offset for loc in locations] == [0, 0, 0, 12]
        with h5py.File(backend.path_of(locations[0]), "r", swmr=True) as file:
            assert list(file) == ["data"]
            data = file["data"]
            assert data.shape == (17,) and data.maxshape == (None,)
            assert data.chunks == (HDF5Backend.chunk_bytes // 4,)
            plist = data.id.get_create_plist()
            filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
            expected = {None: [], "gzip": [h5py.h5z.FILTER_DEFLATE], "zstd": [32015]}
            assert filters == expected[self.compression]

    def test_reads_coalesce_nearby_payloads(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        values = [sample("int64", (n,), n) for n in range(40)]
        locations = backend.append(values)
        order = np.random.default_rng(5).permutation(40)
        got = backend.read_many([locations[i] for i in order])
        assert all(same(g, values[i]) for g, i in zip(got, order, strict=True))

    def test_unknown_compression_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="compression"):
            HDF5Backend(tmp_path, writable=True, compression="brotli")

    def test_lzf_round_trip(self, tmp_path: Path) -> None:
        backend = HDF5Backend(tmp_path / "lzf", writable=True, compression="lzf")
        values: list[Payload] = [sample("float32", (30, 30), 1), sample("bool", (3, 5), 2), b"lzf"]
        locations = backend.append(values)
        backend.sync()
        reader = HDF5Backend(tmp_path / "lzf", writable=False)
        assert all(map(same, reader.read_many(locations), values))
        reader.close()
        backend.close()


class TestHDF5GzipBackend(TestHDF5Backend):
    compression = "gzip"


class TestHDF5ZstdBackend(TestHDF5Backend):
    compression = "zstd"


class TestLMDBBackend(BackendConformance):
    def make_backend(self, tmp_path: Path, writable: bool = True) -> Backend:
        return LMDBBackend(tmp_path / "store", writable=writable)

    def corrupt(self, backend: Backend, location: Location) -> None:
        env = lmdb.open(str(backend.root), max_dbs=2)
        try:
            db = env.open_db(b"data", create=False)
            key = struct.pack(">IQ", location.segment, location.offset)
            with env.begin(write=True, db=db) as txn:
                stored = txn.get(key)
                assert stored is not None
                value = bytearray(stored)
                value[len(value) // 2] ^= 0xFF
                txn.put(key, bytes(value))
        finally:
            env.close()

    def test_reader_before_the_environment_exists(self, tmp_path: Path) -> None:
        reader = self.make_backend(tmp_path, writable=False)
        location = Location("lmdb", 1, 0, "blob", (3,), 0)
        with pytest.raises(CorruptionError) as caught:
            reader.read(location)
        assert caught.value.path == str(tmp_path / "store" / "data.mdb")
        with pytest.raises(ReadOnlyError):
            reader.append([b"abc"])
        assert files_under(tmp_path) == set()
        # Once a writer has created the environment, the same reader works.
        writer = self.make_backend(tmp_path)
        location = writer.append([b"abc"])[0]
        assert reader.read(location) == b"abc"
        reader.close()
        writer.close()

    def test_writer_joining_a_reader_in_one_process(self, tmp_path: Path) -> None:
        first = self.make_backend(tmp_path)
        old = first.append([b"old"])[0]
        first.close()
        reader = self.make_backend(tmp_path, writable=False)
        assert reader.read(old) == b"old"
        writer = self.make_backend(tmp_path)
        new = writer.append([np.arange(4, dtype=np.int16)])[0]
        assert same(reader.read(new), np.arange(4, dtype=np.int16))
        assert reader.read(old) == b"old"
        writer.close()
        assert reader.read(old) == b"old"
        reader.close()

    def test_segment_numbers_are_never_reused(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        numbers = []
        for _ in range(3):
            numbers.append(backend.append([b"x"])[0].segment)
            backend.remove_segment(numbers[-1])
        backend.close()
        numbers.append(self.make_backend(tmp_path).append([b"y"])[0].segment)
        assert numbers == sorted(set(numbers))


# -- the registry -------------------------------------------------------------


def test_registry_names_every_backend(tmp_path: Path) -> None:
    assert set(BACKENDS) == {"memory", "memmap", "hdf5", "lmdb"}
    for name, backend in BACKENDS.items():
        assert backend.name == name
    opened = open_backend("hdf5", tmp_path / "h", writable=True, compression="gzip")
    assert isinstance(opened, HDF5Backend) and opened.compression == "gzip"
    opened.close()
    with pytest.raises(ValueError, match="unknown storage backend"):
        open_backend("zarr", tmp_path, writable=True)


# -- writers in other processes -------------------------------------------------

CHILD = """
import json, sys
from pathlib import Path
import numpy as np
from tensorcask.storage.backends import open_backend

backend = open_backend(sys.argv[1], Path(sys.argv[2]), writable=True, **json.loads(sys.argv[3]))
for line in sys.stdin:
    command, _, argument = line.strip().partition(" ")
    if command == "append":
        batch = np.random.default_rng(int(argument)).random((8, 5, 5))
        locations = backend.append(list(batch))
        backend.sync()
        print(" ".join(location.to_bytes().hex() for location in locations), flush=True)
    elif command == "spin":
        print("spinning", flush=True)
        rng = np.random.default_rng(0)
        while True:
            backend.append(list(rng.random((64, 5, 5))))
"""

DISK_BACKENDS = [
    pytest.param("memmap", {}, id="memmap"),
    pytest.param("hdf5", {}, id="hdf5"),
    pytest.param("hdf5", {"compression": "gzip"}, id="hdf5-gzip"),
    pytest.param("hdf5", {"compression": "zstd"}, id="hdf5-zstd"),
    pytest.param("lmdb", {}, id="lmdb"),
]


def start_writer(name: str, root: Path, options: dict[str, str]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, name, str(root), json.dumps(options)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def ask(child: subprocess.Popen[str], command: str) -> str:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(command + "\n")
    child.stdin.flush()
    answer = child.stdout.readline()
    assert answer, f"the writer process died (exit status {child.poll()})"
    return answer.strip()


def batch_of(answer: str) -> list[Location]:
    return [Location.from_bytes(bytes.fromhex(word)) for word in answer.split()]


def check(reader: Backend, locations: list[Location], seed: int) -> None:
    expected = np.random.default_rng(seed).random((8, 5, 5))
    assert all(map(same, reader.read_many(locations), expected))
    assert same(reader.read(locations[3]), expected[3])


@pytest.mark.parametrize(("name", "options"), DISK_BACKENDS)
def test_reader_follows_a_live_writer_process(
    tmp_path: Path, name: str, options: dict[str, str]
) -> None:
    root = tmp_path / name
    child = start_writer(name, root, options)
    try:
        first = batch_of(ask(child, "append 1"))
        reader = open_backend(name, root, writable=False)
        check(reader, first, 1)
        second = batch_of(ask(child, "append 2"))
        check(reader, second, 2)
        check(reader, first, 1)
        reader.close()
    finally:
        assert child.stdin is not None
        child.stdin.close()
        assert child.wait(timeout=60) == 0


@pytest.mark.parametrize(("name", "options"), DISK_BACKENDS)
def test_writer_killed_mid_append_leaves_synced_data_readable(
    tmp_path: Path, name: str, options: dict[str, str]
) -> None:
    root = tmp_path / name
    child = start_writer(name, root, options)
    try:
        synced = batch_of(ask(child, "append 7"))
        assert ask(child, "spin") == "spinning"
        time.sleep(0.3)
    finally:
        child.kill()
        child.wait(timeout=60)
    reader = open_backend(name, root, writable=False)
    check(reader, synced, 7)
    reader.close()
    writer = open_backend(name, root, writable=True, **options)
    after = writer.append([np.arange(10.0)])[0]
    assert after.segment not in {location.segment for location in synced}
    writer.sync()
    check(writer, synced, 7)
    assert same(writer.read(after), np.arange(10.0))
    writer.close()


@pytest.mark.parametrize("name", ["memmap", "lmdb"])
def test_forked_child_writes_its_own_segment(tmp_path: Path, name: str) -> None:
    backend = open_backend(name, tmp_path / name, writable=True)
    parent = backend.append([np.arange(6.0)])[0]
    backend.sync()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        status = 1
        try:
            assert same(backend.read(parent), np.arange(6.0))
            child = backend.append([np.arange(6.0) * 2])[0]
            backend.sync()
            os.write(write_end, child.to_bytes())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    assert os.waitpid(pid, 0)[1] == 0
    child = Location.from_bytes(answer)
    assert child.segment != parent.segment
    later = backend.append([np.arange(6.0) * 3])[0]
    assert later.segment == parent.segment
    assert same(backend.read(child), np.arange(6.0) * 2)
    assert all(map(same, backend.read_many([parent, later]), [np.arange(6.0), np.arange(6.0) * 3]))
    backend.close()


def test_segment_numbers_are_never_reused_after_removal(tmp_path: Path) -> None:
    root = tmp_path / "memmap"
    first = MemmapBackend(root, writable=True)
    loc = first.append_stacked(np.zeros((2, 3), np.uint8))[0]
    first.close()
    remover = MemmapBackend(root, writable=True)
    remover.remove_segment(loc.segment)
    remover.close()
    second = MemmapBackend(root, writable=True)
    again = second.append_stacked(np.ones((2, 3), np.uint8))[0]
    second.close()
    assert again.segment > loc.segment
