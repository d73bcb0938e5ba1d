"""Imports of Zarr stores written by zarr-python: v3 and v2, local and through fsspec."""

from __future__ import annotations

import sys
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

import tensorcask as tc
from tensorcask.interop import MissingDependencyError, arrays, export, import_source

zarr = pytest.importorskip("zarr")


def _memory_url(name: str) -> str:
    return f"memory://{uuid.uuid4().hex}/{name}"


def test_zarr_v3_group_with_nested_groups_strings_bytes_and_shards(
    repo: tc.Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(arrays, "BATCH_BYTES", 20 * 28 * 28)  # several shards a block
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (70, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 70).astype(np.int64)
    names = np.array([f"n{i}é" for i in range(70)], dtype=object)
    blobs = np.array([bytes([i]) * (i % 3) for i in range(70)], dtype=object)
    root = zarr.open_group(tmp_path / "set.zarr", mode="w", zarr_format=3)
    root.create_array(
        "train/images", shape=images.shape, dtype="uint8", chunks=(4, 28, 28), shards=(8, 28, 28)
    )[:] = images
    root.create_array("train/labels", shape=(70,), dtype="int64", chunks=(16,))[:] = labels
    root.create_array("names", shape=(70,), dtype=str, chunks=(32,))[:] = names
    with warnings.catch_warnings():  # zarr: no v3 specification of variable-length bytes yet
        warnings.simplefilter("ignore", zarr.errors.UnstableSpecificationWarning)
        raw = root.create_array(
            "raw", shape=(70,), dtype=zarr.dtype.VariableLengthBytes(), chunks=(32,)
        )
    raw[:] = blobs

    res = import_source(repo, tmp_path / "set.zarr")

    assert res.columns == {"names": 70, "raw": 70, "train.images": 70, "train.labels": 70}
    keys = list(range(70))
    with repo.checkout() as co:
        np.testing.assert_array_equal(co["train.images"].get_many(keys), images)
        np.testing.assert_array_equal(co["train.labels"].get_many(keys), labels)
        assert co["names"].get_many(keys) == names.tolist()
        assert co["raw"].kind == "bytes" and co["raw"].get_many(keys) == blobs.tolist()
    assert not import_source(repo, tmp_path / "set.zarr").committed


def test_zarr_v2_store_and_one_array_with_keys(repo: tc.Repository, tmp_path: Path) -> None:
    root = zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2)
    x = np.arange(30, dtype=">f8").reshape(10, 3)
    root.create_array("x", shape=x.shape, dtype=x.dtype, chunks=(3, 3))[:] = x
    root.create_array("ids", shape=(10,), dtype=str, chunks=(10,))[:] = np.array(
        [f"s{i}" for i in range(10)], dtype=object
    )
    root.create_array("y", shape=(4,), dtype="i4", chunks=(4,))[:] = np.arange(4)
    assert (tmp_path / "v2.zarr" / ".zgroup").exists()

    res = import_source(repo, tmp_path / "v2.zarr", dataset="x", keys="ids", column="features")

    assert res.columns == {"features": 10}
    with repo.checkout() as co:
        assert co["features"].dtype == np.dtype("<f8")
        assert co["features"].keys() == sorted(f"s{i}" for i in range(10))
        np.testing.assert_array_equal(co["features"]["s7"], x[7])


def test_zarr_store_through_fsspec_memory_url(repo: tc.Repository) -> None:
    url = _memory_url("store.zarr")
    root = zarr.open_group(url, mode="w", zarr_format=3)
    root.create_array("a", shape=(25, 2), dtype="uint16", chunks=(10, 2))[:] = np.arange(
        50
    ).reshape(25, 2)

    res = import_source(repo, url, storage_options={})

    assert res.source == url and res.columns == {"a": 25}
    assert repo.log()[0].message == f"import {url}"
    with repo.checkout() as co:
        np.testing.assert_array_equal(co["a"][24], [48, 49])


def test_a_store_that_is_one_array_is_named_after_the_store(
    repo: tc.Repository, tmp_path: Path
) -> None:
    arr = zarr.create_array(tmp_path / "embeddings.zarr", shape=(6, 4), dtype="f4", chunks=(2, 4))
    arr[:] = np.ones((6, 4), dtype="f4")

    import_source(repo, tmp_path / "embeddings.zarr")

    with repo.checkout() as co:
        assert list(co.columns) == ["embeddings"] and len(co["embeddings"]) == 6


def test_missing_zarr_store_and_scalar_array(repo: tc.Repository, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no Zarr group or array"):
        import_source(repo, _memory_url("absent.zarr"))
    root = zarr.open_group(tmp_path / "s.zarr", mode="w")
    root.create_array("scalar", shape=(), dtype="i4")
    with pytest.raises(ValueError, match=r"array 'scalar' of .* is a scalar"):
        import_source(repo, tmp_path / "s.zarr")
    assert repo.branches == {} and repo.staged_branch is None


def test_without_zarr_the_error_says_how_to_install_it(
    repo: tc.Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "s.zarr").mkdir()
    (tmp_path / "s.zarr" / "zarr.json").write_text("{}")
    np.save(tmp_path / "x.npy", np.arange(3))
    import_source(repo, tmp_path / "x.npy")
    monkeypatch.setitem(sys.modules, "zarr", None)  # as if not installed

    with pytest.raises(MissingDependencyError, match=r"pip install 'tensorcask\[zarr\]'"):
        import_source(repo, tmp_path / "s.zarr")
    with pytest.raises(ImportError, match=r"tensorcask\[zarr\]"):
        export(repo, "main", tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()
