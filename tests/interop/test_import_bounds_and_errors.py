"""Bounded reads of awkward inputs (Fortran order, chunks larger than a block) and
errors that name the input and the remedy."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

import tensorcask as tc
from tensorcask.interop import MissingDependencyError, arrays, export, import_source
from tensorcask.interop.hdf5_io import open_hdf5
from tensorcask.interop.numpy_io import open_npz
from tensorcask.interop.source import Source

zarr = pytest.importorskip("zarr")


def _batch_lengths(src: Source) -> list[int]:
    try:
        return [len(b.values) for b in src.batches()]
    finally:
        src.close()


def test_a_fortran_order_npz_member_is_read_in_blocks(
    repo: tc.Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(arrays, "BATCH_BYTES", 10 * 6 * 8)  # ten rows a block
    x = np.asfortranarray(np.arange(600, dtype=np.float64).reshape(100, 6))
    np.savez(tmp_path / "f.npz", x=x)

    assert max(_batch_lengths(open_npz(tmp_path / "f.npz"))) == 10
    import_source(repo, tmp_path / "f.npz")
    with repo.checkout() as co:
        np.testing.assert_array_equal(co["x"].get_many(list(range(100))), x)


def test_blocks_are_smaller_than_a_chunk_that_exceeds_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(arrays, "BATCH_BYTES", 10 * 10 * 8)  # ten rows; a chunk holds 100
    assert arrays.rows_per_block(80, chunk_rows=100) == 10
    assert arrays.rows_per_block(80, chunk_rows=4) == 8  # whole chunks when they fit
    data = np.arange(3000, dtype=np.float64).reshape(300, 10)
    with h5py.File(tmp_path / "big.h5", "w") as f:
        f.create_dataset("x", data=data, chunks=(100, 10))
    root = zarr.open_group(tmp_path / "big.zarr", mode="w")
    root.create_array("x", shape=data.shape, dtype=data.dtype, chunks=(100, 10))[:] = data
    from tensorcask.interop.zarr_io import open_zarr

    assert max(_batch_lengths(open_hdf5(tmp_path / "big.h5"))) == 10
    assert max(_batch_lengths(open_zarr(tmp_path / "big.zarr"))) == 10


def test_a_scalar_npz_member_suggests_dataset(repo: tc.Repository, tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", x=np.arange(3), scale=np.float64(2.0))

    with pytest.raises(ValueError, match=r"'scale' .* is a scalar .*--dataset NAME"):
        import_source(repo, tmp_path / "s.npz")
    import_source(repo, tmp_path / "s.npz", dataset="x")


def test_a_broken_zarr_json_names_the_store(repo: tc.Repository, tmp_path: Path) -> None:
    store = tmp_path / "b.zarr"
    store.mkdir()
    meta = {"zarr_format": 3, "node_type": "array", "shape": [3]}  # no data_type
    (store / "zarr.json").write_text(json.dumps(meta))

    with pytest.raises(ValueError, match=r"b\.zarr is not a readable Zarr store \(KeyError"):
        import_source(repo, store)
    (store / "zarr.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"b\.zarr is not a readable Zarr store"):
        import_source(repo, store)


def test_a_url_without_its_fsspec_package_names_the_package(
    repo: tc.Repository, tmp_path: Path
) -> None:
    pytest.importorskip("fsspec")
    try:
        import gcsfs  # noqa: F401

        pytest.skip("gcsfs is installed")
    except ImportError:
        pass
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("x", shape=(), dtype="int64").update({0: np.int64(1)})
        co.commit("one")

    with pytest.raises(MissingDependencyError, match=r"gcs:// URLs need the 'gcsfs' package"):
        import_source(repo, "gcs://bucket/x.zarr")
    with pytest.raises(MissingDependencyError, match=r"pip install gcsfs"):
        export(repo, "main", "gcs://bucket/out.zarr")


def test_a_connection_failure_is_a_remote_error_naming_the_url(
    repo: tc.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    botocore = pytest.importorskip("botocore.exceptions")

    def unreachable(*args: object, **kwargs: object) -> None:
        raise botocore.EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b/x.zarr")

    monkeypatch.setattr(zarr, "open", unreachable)

    with pytest.raises(tc.RemoteError, match=r"s3://b/x\.zarr could not be reached: Endpoint"):
        import_source(repo, "s3://b/x.zarr", storage_options={"anon": True})
