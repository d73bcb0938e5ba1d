"""Exports to ``.npz``, HDF5 and Zarr, read back with numpy, h5py and zarr-python alone,
and imported again."""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import tensorcask as tc
from tensorcask.interop import ExportResult, export, import_source, verify_export

zarr = pytest.importorskip("zarr")

CHECKSUMS = ".tensorcask-checksums.json"
N_IMAGES = 37
CAPTIONS = {"a": "first", "b": "", "c": "ünïcode " * 20}
BLOBS = {0: b"\x00\x01\x00", 5: b"", 9: b"\xff" * 300}


def _ragged(i: int) -> np.ndarray:
    return np.arange((i % 5 + 1) * 4, dtype=np.float32).reshape(-1, 4) + i


@pytest.fixture
def filled(repo: tc.Repository) -> tuple[tc.Repository, str, np.ndarray]:
    """A commit with fixed, variable, str and bytes columns, int and str keys."""
    images = np.random.default_rng(4).integers(0, 256, (N_IMAGES, 28, 28), dtype=np.uint8)
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("images", shape=(28, 28), dtype="uint8").update(
            np.arange(N_IMAGES), images
        )
        co.add_ndarray_column("labels", shape=(), dtype="int64").update(
            np.arange(N_IMAGES), np.arange(N_IMAGES) % 10
        )
        co.add_ndarray_column("rows", shape=(None, 4), dtype="float32").update(
            {f"r{i:02d}": _ragged(i) for i in range(12)}
        )
        co.add_str_column("captions").update(CAPTIONS)
        co.add_bytes_column("blobs").update(BLOBS)
        commit = co.commit("everything")
    return repo, commit, images


def _ragged_rows(values: Any, offsets: Any, shapes: Any) -> list[np.ndarray]:
    return [
        np.asarray(values[offsets[i] : offsets[i + 1]]).reshape(shapes[i])
        for i in range(len(shapes))
    ]


def test_npz_export_reads_with_numpy_alone(
    filled: tuple[tc.Repository, str, np.ndarray], tmp_path: Path
) -> None:
    repo, commit, images = filled

    res = export(repo, "main", tmp_path / "out.npz")

    assert isinstance(res, ExportResult)
    assert (res.format, res.commit, res.path) == ("npz", commit, str(tmp_path / "out.npz"))
    assert res.columns == {"blobs": 3, "captions": 3, "images": 37, "labels": 37, "rows": 12}
    assert res.samples == 92
    with np.load(tmp_path / "out.npz") as z:
        np.testing.assert_array_equal(z["images"], images)
        assert z["images.keys"].dtype == np.int64
        np.testing.assert_array_equal(z["images.keys"], np.arange(N_IMAGES))
        assert z["captions"].tolist() == list(CAPTIONS.values())
        assert z["captions.keys"].tolist() == list(CAPTIONS)
        blobs = z["blobs.values"]
        offsets = z["blobs.offsets"]
        assert [blobs[offsets[i] : offsets[i + 1]].tobytes() for i in range(3)] == list(
            BLOBS.values()
        )
        rows = _ragged_rows(z["rows.values"], z["rows.offsets"], z["rows.shapes"])
        for i, row in enumerate(rows):
            np.testing.assert_array_equal(row, _ragged(i))
        assert z["rows.keys"].tolist() == [f"r{i:02d}" for i in range(12)]


def test_hdf5_export_reads_with_h5py_alone(
    filled: tuple[tc.Repository, str, np.ndarray], tmp_path: Path
) -> None:
    repo, commit, images = filled

    res = export(repo, commit[:8], tmp_path / "out.h5", columns=["rows", "images", "blobs"])

    assert res.columns == {"rows": 12, "images": 37, "blobs": 3}
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert f.attrs["tensorcask_commit"] == commit
        assert sorted(f) == ["blobs", "blobs.keys", "images", "images.keys", "rows", "rows.keys"]
        assert f["images"].dtype == np.uint8 and f["images"].chunks is not None
        np.testing.assert_array_equal(f["images"][...], images)
        assert [bytes(v) for v in f["blobs"][...]] == list(BLOBS.values())
        group = f["rows"]
        assert group.attrs["tensorcask_layout"] == "ragged"
        assert group.attrs["tensorcask_shape"] == "[null, 4]"
        rows = _ragged_rows(group["values"], group["offsets"][...], group["shapes"][...])
        for i, row in enumerate(rows):
            np.testing.assert_array_equal(row, _ragged(i))
        assert f["rows.keys"].asstr()[...].tolist() == [f"r{i:02d}" for i in range(12)]


def test_zarr_export_reads_with_zarr_alone_and_carries_a_checksum_tree(
    filled: tuple[tc.Repository, str, np.ndarray], tmp_path: Path
) -> None:
    repo, commit, images = filled
    dest = tmp_path / "out.zarr"

    export(repo, "main", dest)

    root = zarr.open_group(dest, mode="r")
    assert root.attrs["tensorcask_commit"] == commit
    np.testing.assert_array_equal(root["images"][...], images)
    np.testing.assert_array_equal(root["labels"][...], np.arange(N_IMAGES) % 10)
    assert root["captions"][...].tolist() == list(CAPTIONS.values())
    assert root["captions.keys"][...].tolist() == list(CAPTIONS)
    assert root["blobs"][...].tolist() == list(BLOBS.values())
    rows = root["rows"]
    assert rows.attrs["tensorcask_layout"] == "ragged"
    for i, row in enumerate(
        _ragged_rows(rows["values"], rows["offsets"][...], rows["shapes"][...])
    ):
        np.testing.assert_array_equal(row, _ragged(i))

    check = verify_export(dest)
    assert check.ok and check.root == check.expected_root and not check.differing
    chunk = next(p for p in (dest / "images").rglob("*") if p.is_file() and p.name != "zarr.json")
    data = chunk.read_bytes()
    chunk.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    damaged = verify_export(dest)
    assert not damaged.ok
    assert damaged.differing == [chunk.relative_to(dest).as_posix()]


@pytest.mark.parametrize("suffix", [".npz", ".h5", ".zarr"])
def test_an_export_imports_back_to_the_same_columns(
    filled: tuple[tc.Repository, str, np.ndarray], tmp_path: Path, suffix: str
) -> None:
    repo, commit, _ = filled
    export(repo, "main", tmp_path / f"out{suffix}")
    other = tc.init(tmp_path / "other", user_name="Ada", user_email="ada@example.org")

    import_source(other, tmp_path / f"out{suffix}")

    with repo.checkout(commit=commit) as a, other.checkout() as b:
        assert sorted(a.columns) == sorted(b.columns)
        for name, col in a.columns.items():
            got = b[name]
            assert (got.kind, got.dtype, got.shape) == (col.kind, col.dtype, col.shape)
            keys = col.keys()
            assert got.keys() == keys
            assert [got.digest(k) for k in keys] == [col.digest(k) for k in keys]
    # ... and into the repository it came from, it adds nothing
    assert not import_source(repo, tmp_path / f"out{suffix}").committed


def test_export_to_a_memory_url_and_verify_it(
    filled: tuple[tc.Repository, str, np.ndarray],
) -> None:
    repo, _, images = filled
    url = f"memory://{uuid.uuid4().hex}/out.zarr"

    export(repo, "main", url, ["images"], storage_options={})

    np.testing.assert_array_equal(zarr.open_group(url, mode="r")["images"][...], images)
    assert verify_export(url, storage_options={}).ok


def test_existing_destinations_are_kept_unless_overwrite(
    filled: tuple[tc.Repository, str, np.ndarray], tmp_path: Path
) -> None:
    repo, _, _ = filled
    for name in ("out.npz", "out.h5", "out.zarr"):
        export(repo, "main", tmp_path / name, ["labels"])
        with pytest.raises(FileExistsError, match=r"already exists; pass overwrite=True"):
            export(repo, "main", tmp_path / name, ["images"])
        export(repo, "main", tmp_path / name, ["images"], overwrite=True)
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert sorted(f) == ["images", "images.keys"]
    with warnings.catch_warnings():  # zarr lists the checksum manifest as a foreign object
        warnings.simplefilter("ignore", UserWarning)
        names = sorted(zarr.open_group(tmp_path / "out.zarr", mode="r"))
    assert names == ["images", "images.keys"]
    assert verify_export(tmp_path / "out.zarr").ok
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(CHECKSUMS))
    assert left == ["out.h5", "out.npz", "out.zarr", "repo"]  # no partials


def test_refusals_write_nothing(
    filled: tuple[tc.Repository, str, np.ndarray], tmp_path: Path
) -> None:
    repo, _, _ = filled
    with repo.checkout(write=True) as co:
        co["labels"]["seven"] = np.int64(7)  # int and str keys in one column
        co["captions"]["nul"] = "ends in\0"
        co.commit("mixed keys")

    with pytest.raises(ValueError, match=r"column 'labels' has both int keys \(37\) and str"):
        export(repo, "main", tmp_path / "a.h5")
    with pytest.raises(ValueError, match=r"ending in '\\0'"):
        export(repo, "main", tmp_path / "b.npz", ["captions"])
    with pytest.raises(ValueError, match=r"suffix '\.csv'"):
        export(repo, "main", tmp_path / "c.csv")
    with pytest.raises(KeyError, match="no column 'nope'"):
        export(repo, "main", tmp_path / "d.zarr", ["nope"])
    with pytest.raises(tc.RefNotFoundError):
        export(repo, "no-such-branch", tmp_path / "e.zarr")
    with pytest.raises(FileNotFoundError, match="no folder"):
        export(repo, "main", tmp_path / "missing" / "f.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no partial files


def test_an_empty_commit_column_and_a_path_repository(tmp_path: Path) -> None:
    repo = tc.init(tmp_path / "r", user_name="Ada", user_email="ada@example.org")
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("empty", shape=(3,), dtype="float64")
        co.commit("empty column")
    repo.close()

    for name in ("e.npz", "e.h5", "e.zarr"):
        res = export(tmp_path / "r", "main", tmp_path / name)
        assert res.columns == {"empty": 0}
    assert np.load(tmp_path / "e.npz")["empty"].shape == (0, 3)
    with h5py.File(tmp_path / "e.h5", "r") as f:
        assert f["empty"].shape == (0, 3)
    assert zarr.open_group(tmp_path / "e.zarr", mode="r")["empty"].shape == (0, 3)
