"""The behaviour every storage backend shares, as one inheritable test class.

A backend's test class subclasses :class:`BackendConformance` and provides
:meth:`~BackendConformance.make_backend` and :meth:`~BackendConformance.corrupt`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tensorcask.errors import CorruptionError, ReadOnlyError
from tensorcask.storage.base import BLOB, Backend, Location, Payload

DTYPES = ["uint8", "int64", "float32", "float64", "bool", "complex64"]
SHAPES = [(), (28, 28), (0,), (3, 0), (5,)]
BLOBS = [b"", b"x", bytes(range(256)) * 9]


def sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A reproducible array of ``dtype`` and ``shape`` with varied values."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * np.dtype(dtype).itemsize, dtype=np.uint8)
    array = raw.view(dtype).reshape(shape) if dtype != "bool" else (raw % 2 == 1).reshape(shape)
    return np.ascontiguousarray(array)


def same(got: Payload, want: Payload) -> bool:
    """Bitwise equality of payloads (NaNs included), with matching types."""
    if isinstance(want, bytes):
        return type(got) is bytes and got == want
    return (
        isinstance(got, np.ndarray)
        and got.dtype == want.dtype
        and got.shape == want.shape
        and got.tobytes() == want.tobytes()
    )


def as_payload(value: object) -> Payload:
    """``value`` as a read returns it: bytes, or an ndarray (0-d for scalars)."""
    return value if isinstance(value, bytes) else np.asarray(value)


def owns(array: np.ndarray) -> bool:
    """Whether ``array`` owns writable memory that nothing else refers to."""
    return (array.flags.owndata or array.base is None) and array.flags.writeable


def files_under(path: Path) -> set[str]:
    """Every file and directory below ``path`` (empty if it is absent)."""
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.exists() else set()


class BackendConformance:
    """Tests every backend must pass. Subclass it as ``Test<Name>Backend``."""

    supports_blobs: bool = True
    """Whether the backend stores byte strings (memmap stores arrays only)."""
    on_disk: bool = True
    """Whether ``path_of`` names a real file."""

    # -- hooks -----------------------------------------------------------

    def make_backend(self, tmp_path: Path, writable: bool = True) -> Backend:
        """A backend instance on the store at ``tmp_path`` (same store every call)."""
        raise NotImplementedError

    def corrupt(self, backend: Backend, location: Location) -> None:
        """Flip one stored byte of the (non-empty) payload at ``location``.

        ``backend`` is closed when this is called.
        """
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------

    def payloads(self) -> list[Payload]:
        """One array of every test dtype and shape, then blobs if supported."""
        kinds = [(dtype, shape) for dtype in DTYPES for shape in SHAPES]
        values: list[Payload] = [sample(*kind, seed) for seed, kind in enumerate(kinds)]
        if self.supports_blobs:
            values += BLOBS
        return values

    # -- round trips -----------------------------------------------------

    @pytest.mark.parametrize("shape", SHAPES, ids=str)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_array_round_trip(self, tmp_path: Path, dtype: str, shape: tuple[int, ...]) -> None:
        backend = self.make_backend(tmp_path)
        values = [sample(dtype, shape, seed) for seed in range(3)]
        locations = backend.append(values)
        assert len(locations) == 3
        for location, value in zip(locations, values, strict=True):
            assert location.backend == backend.name
            assert (location.dtype, location.shape) == (value.dtype.str, value.shape)
            assert location.checksum == xxhash.xxh3_64_intdigest(value.tobytes())
            assert same(backend.read(location), value)
        assert all(map(same, backend.read_many(locations), values))
        assert same(backend.read_stacked(locations), np.stack(values))
        backend.close()

    def test_blob_round_trip(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        if not self.supports_blobs:
            with pytest.raises(TypeError):
                backend.append([b"abc"])
            return
        locations = backend.append(BLOBS)
        for location, blob in zip(locations, BLOBS, strict=True):
            assert (location.dtype, location.shape) == (BLOB, (len(blob),))
            assert same(backend.read(location), blob)
        assert all(map(same, backend.read_many(locations), BLOBS))

    def test_append_stacked(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        batch = sample("float32", (50, 4, 3))
        locations = backend.append_stacked(batch)
        assert [loc.shape for loc in locations] == [(4, 3)] * 50
        assert same(backend.read_stacked(locations), batch)
        assert same(backend.read(locations[17]), batch[17])

    def test_order_across_segments_with_repeats(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        batches = [sample("int64", (20, 6), seed) for seed in range(3)]
        locations: list[Location] = []
        for batch in batches:
            locations += backend.append_stacked(batch)
            backend.seal()
        assert len({loc.segment for loc in locations}) == 3
        everything = np.concatenate(batches)
        picks = np.random.default_rng(1).integers(0, len(locations), 200)
        chosen = [locations[i] for i in picks]
        assert same(backend.read_stacked(chosen), everything[picks])
        got = backend.read_many(chosen)
        assert all(same(g, everything[i]) for g, i in zip(got, picks, strict=True))

    def test_read_many_mixed_payloads(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        values = self.payloads()
        locations = backend.append(values[::2])
        backend.seal()
        locations += backend.append(values[1::2])
        values = values[::2] + values[1::2]
        order = list(range(len(values))) * 2
        np.random.default_rng(2).shuffle(order)
        got = backend.read_many([locations[i] for i in order])
        assert all(same(g, values[i]) for g, i in zip(got, order, strict=True))

    def test_read_stacked_rejects_mixed_shapes(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        locations = backend.append([np.zeros(3), np.zeros(4)])
        with pytest.raises(ValueError):
            backend.read_stacked(locations)

    def test_reads_return_owned_copies(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        values = [sample("float64", (4, 4), seed) for seed in range(4)] + [np.float64(2.5)]
        locations = backend.append([np.asarray(v) for v in values])
        backend.sync()
        arrays = [backend.read(locations[0]), *backend.read_many(locations)]
        stacked = backend.read_stacked(locations[:4])
        for array in [*arrays, stacked]:
            assert isinstance(array, np.ndarray) and owns(array)
            array[...] = -1
        for location, value in zip(locations, values, strict=True):
            assert same(backend.read(location), np.asarray(value))

    def test_location_bytes_round_trip(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        for location in backend.append(self.payloads()):
            assert Location.from_bytes(location.to_bytes()) == location

    # -- corruption ------------------------------------------------------

    def test_flipped_byte_raises_corruption_error(self, tmp_path: Path) -> None:
        writer = self.make_backend(tmp_path)
        damaged, *_ = writer.append([sample("uint8", (64, 64), 1), sample("uint8", (64, 64), 2)])
        writer.seal()
        intact = writer.append([sample("uint8", (64, 64), 3)])[0]
        writer.seal()
        extra = writer.append([b"payload" * 50])[0] if self.supports_blobs else None
        writer.sync()
        writer.close()
        self.corrupt(writer, damaged)
        if extra is not None:
            self.corrupt(writer, extra)
        reader = self.make_backend(tmp_path, writable=False)
        for read in (
            lambda: reader.read(damaged),
            lambda: reader.read_many([intact, damaged]),
            lambda: reader.read_stacked([intact, damaged]),
        ):
            with pytest.raises(CorruptionError) as caught:
                read()
            assert caught.value.path == reader.path_of(damaged)
            assert not self.on_disk or Path(caught.value.path).is_file()
        assert same(reader.read(intact), sample("uint8", (64, 64), 3))
        if extra is not None:
            with pytest.raises(CorruptionError):
                reader.read(extra)
        reader.close()

    # -- segments and lifecycle ------------------------------------------

    def test_seal_starts_a_new_segment(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        first = backend.append([np.arange(5)])[0]
        again = backend.append([np.arange(5) + 1])[0]
        assert again.segment == first.segment
        backend.seal()
        later = backend.append([np.arange(5) + 2])[0]
        assert later.segment != first.segment
        assert {first.segment, later.segment} <= set(backend.segments())
        assert same(backend.read(first), np.arange(5))
        assert same(backend.read(later), np.arange(5) + 2)

    def test_two_writers_never_share_a_segment(self, tmp_path: Path) -> None:
        one, two = self.make_backend(tmp_path), self.make_backend(tmp_path)
        a = one.append([np.arange(3)])[0]
        b = two.append([np.arange(3) * 2])[0]
        c = one.append([np.arange(3) * 3])[0]
        assert a.segment != b.segment
        expected = [np.arange(3), np.arange(3) * 2, np.arange(3) * 3]
        for backend in (one, two):
            assert all(map(same, backend.read_many([a, b, c]), expected))
        one.close()
        two.close()

    def test_reader_opened_after_sync_reads_everything(self, tmp_path: Path) -> None:
        writer = self.make_backend(tmp_path)
        values = self.payloads()
        locations = writer.append(values)
        writer.sync()
        reader = self.make_backend(tmp_path, writable=False)
        assert all(map(same, reader.read_many(locations), values))
        # The writer goes on in the segments the reader has already opened.
        more = [sample("float64", (28, 28), seed) for seed in range(10, 15)]
        more_locations = writer.append(more)
        writer.sync()
        assert all(map(same, reader.read_many(more_locations), more))
        assert same(reader.read(more_locations[-1]), more[-1])
        reader.close()
        writer.close()

    def test_read_only_instance_refuses_writes_and_creates_nothing(self, tmp_path: Path) -> None:
        before = files_under(tmp_path)
        reader = self.make_backend(tmp_path, writable=False)
        with pytest.raises(ReadOnlyError):
            reader.append([np.arange(3)])
        with pytest.raises(ReadOnlyError):
            reader.remove_segment(1)
        assert reader.segments() == []
        reader.sync()
        reader.seal()
        reader.close()
        assert files_under(tmp_path) == before

        writer = self.make_backend(tmp_path)
        location = writer.append([np.arange(3)])[0]
        writer.sync()
        writer.close()
        before = files_under(tmp_path)
        reader = self.make_backend(tmp_path, writable=False)
        assert same(reader.read(location), np.arange(3))
        with pytest.raises(ReadOnlyError):
            reader.append([np.arange(3)])
        with pytest.raises(ReadOnlyError):
            reader.append_stacked(np.zeros((2, 3)))
        reader.close()
        assert files_under(tmp_path) == before

    def test_segments_and_remove_segment(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        assert backend.segments() == []
        kept = backend.append([np.arange(4)])[0]
        backend.seal()
        doomed = backend.append([np.arange(4) * 7])[0]
        assert backend.segments() == sorted({kept.segment, doomed.segment})
        backend.remove_segment(doomed.segment)
        assert backend.segments() == [kept.segment]
        with pytest.raises(CorruptionError):
            backend.read(doomed)
        backend.sync()
        reader = self.make_backend(tmp_path, writable=False)
        with pytest.raises(CorruptionError):
            reader.read(doomed)
        assert same(reader.read(kept), np.arange(4))
        # The next append must not reuse the removed segment's number or bytes.
        fresh = backend.append([np.arange(4) * 9])[0]
        assert fresh.segment != kept.segment
        assert same(backend.read(fresh), np.arange(4) * 9)
        reader.close()
        backend.close()

    def test_close_is_idempotent_and_final(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        location = backend.append([np.arange(3)])[0]
        backend.sync()
        backend.close()
        backend.close()
        with pytest.raises(ValueError):
            backend.read(location)
        with pytest.raises(ValueError):
            backend.append([np.arange(3)])

    def test_reopen_after_close(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        values = self.payloads()
        locations = backend.append(values)
        backend.sync()
        backend.close()
        reopened = self.make_backend(tmp_path)
        assert all(map(same, reopened.read_many(locations), values))
        newer = reopened.append([np.arange(6)])[0]
        assert newer.segment not in {loc.segment for loc in locations}
        reopened.sync()
        reopened.close()
        reader = self.make_backend(tmp_path, writable=False)
        assert same(reader.read(newer), np.arange(6))
        assert all(map(same, reader.read_many(locations), values))
        reader.close()

    # -- the model -------------------------------------------------------

    @settings(
        max_examples=30,
        deadline=None,
        # Every backend's subclass runs this one method: that is the point.
        suppress_health_check=[HealthCheck.differing_executors, HealthCheck.too_slow],
    )
    @given(data=st.data())
    def test_matches_a_dict_model(self, data: st.DataObject) -> None:
        arrays = hnp.arrays(
            dtype=st.sampled_from(DTYPES),
            shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
        )
        payload = st.one_of(arrays, st.binary(max_size=64)) if self.supports_blobs else arrays
        batches = hnp.arrays(
            dtype=st.sampled_from(DTYPES),
            shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4),
        )
        operation = st.one_of(
            st.tuples(st.just("append"), st.lists(payload, max_size=6)),
            st.tuples(st.just("stacked"), batches),
            st.tuples(st.just("seal"), st.none()),
            st.tuples(st.just("reopen"), st.none()),
            st.tuples(st.just("read"), st.integers(0, 2**32)),
        )
        with tempfile.TemporaryDirectory() as directory:
            root = Path(directory)
            backend = self.make_backend(root)
            model: list[tuple[Location, Payload]] = []
            steps: list[tuple[str, Any]] = data.draw(st.lists(operation, max_size=12))
            for kind, argument in steps:
                if kind == "append":
                    model += zip(backend.append(argument), argument, strict=True)
                elif kind == "stacked":
                    model += zip(backend.append_stacked(argument), list(argument), strict=True)
                elif kind == "seal":
                    backend.seal()
                elif kind == "reopen":
                    backend.sync()
                    backend.close()
                    backend = self.make_backend(root)
                elif model:
                    location, value = model[argument % len(model)]
                    assert same(backend.read(location), as_payload(value))
            backend.sync()
            reader = self.make_backend(root, writable=False)
            expected = [as_payload(value) for _, value in model]
            for instance in (backend, reader):
                got = instance.read_many([location for location, _ in model])
                assert all(map(same, got, expected))
            groups: dict[tuple[str, tuple[int, ...]], list[int]] = {}
            for index, (location, _) in enumerate(model):
                if location.dtype != BLOB:
                    groups.setdefault((location.dtype, location.shape), []).append(index)
            for indices in groups.values():
                stacked = reader.read_stacked([model[i][0] for i in indices])
                assert same(stacked, np.stack([expected[i] for i in indices]))
            reader.close()
            backend.close()
