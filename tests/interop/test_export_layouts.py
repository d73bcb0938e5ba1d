"""Exports that must read back exactly: awkward column names, recorded shapes,
empty columns, and clear refusals of what a format cannot hold."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

import tensorcask as tc
from tensorcask.interop import export, import_source

pytest.importorskip("zarr")

SUFFIXES = [".npz", ".h5", ".zarr"]


def _other(tmp_path: Path) -> tc.Repository:
    return tc.init(tmp_path / "other", user_name="Ada", user_email="ada@example.org")


def _same_columns(a: tc.Repository, b: tc.Repository) -> None:
    with a.checkout() as x, b.checkout() as y:
        assert sorted(x.columns) == sorted(y.columns)
        for name, col in x.columns.items():
            got = y[name]
            assert (got.kind, got.dtype, got.shape) == (col.kind, col.dtype, col.shape), name
            keys = col.keys()
            assert got.keys() == keys
            assert [got.digest(k) for k in keys] == [col.digest(k) for k in keys]


def test_npz_columns_named_like_ragged_members_read_back_as_written(
    repo: tc.Repository, tmp_path: Path
) -> None:
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("X.values", shape=(), dtype="float32").update(
            {0: np.float32(1.5), 1: np.float32(2.5)}
        )
        co.add_ndarray_column("X.offsets", shape=(), dtype="int64").update({0: 0, 1: 1, 2: 2})
        co.add_ndarray_column("Y.shapes", shape=(2,), dtype="int64").update({0: np.array([1, 2])})
        co.add_str_column("Z.values").update({"a": "x"})
        co.commit("awkward names")
    export(repo, "main", tmp_path / "out.npz")
    with np.load(tmp_path / "out.npz") as z:
        manifest = json.loads(str(z["__tensorcask__"]))
    assert [c["name"] for c in manifest["columns"]] == [
        "X.offsets",
        "X.values",
        "Y.shapes",
        "Z.values",
    ]
    assert manifest["columns"][2]["layout"] == "fixed" and manifest["columns"][2]["shape"] == [2]
    other = _other(tmp_path)

    import_source(other, tmp_path / "out.npz")

    _same_columns(repo, other)


def test_npz_names_that_would_collide_are_refused_naming_both(
    repo: tc.Repository, tmp_path: Path
) -> None:
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("X", shape=(None,), dtype="int16").update(
            {0: np.arange(3, dtype=np.int16)}
        )
        co.add_ndarray_column("X.values", shape=(), dtype="int16").update({0: np.int16(1)})
        co.add_ndarray_column("__tensorcask__", shape=(), dtype="int16").update({0: np.int16(1)})
        co.commit("clashing names")

    with pytest.raises(
        ValueError, match=r"columns 'X' and 'X.values' would both write .*'X.values'"
    ):
        export(repo, "main", tmp_path / "a.npz", ["X", "X.values"])
    with pytest.raises(ValueError, match=r"'__tensorcask__'.* manifest"):
        export(repo, "main", tmp_path / "b.npz", ["__tensorcask__"])
    export(repo, "main", tmp_path / "c.h5", ["X", "X.values"])  # no clash in HDF5: X is a group
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "repo"]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_variable_shape_column_keeps_its_shape(
    repo: tc.Repository, tmp_path: Path, suffix: str
) -> None:
    with repo.checkout(write=True) as co:
        # every sample happens to be (5, 7): the shape cannot be guessed from them
        co.add_ndarray_column("a", shape=(5, None), dtype="float32").update(
            {i: np.full((5, 7), i, np.float32) for i in range(3)}
        )
        co.add_ndarray_column("b", shape=(None, None), dtype="uint8").update(
            {i: np.zeros((2, i + 1), np.uint8) for i in range(3)}
        )
        co.commit("variable shapes")
    export(repo, "main", tmp_path / f"out{suffix}")
    other = _other(tmp_path)

    import_source(other, tmp_path / f"out{suffix}")

    _same_columns(repo, other)
    with other.checkout() as co:
        assert co["a"].shape == (5, None) and co["b"].shape == (None, None)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_empty_columns_of_every_layout_round_trip(
    repo: tc.Repository, tmp_path: Path, suffix: str
) -> None:
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("fixed", shape=(3,), dtype="float64")
        co.add_ndarray_column("ragged", shape=(None, 2), dtype="int32")
        co.add_str_column("text")
        co.add_bytes_column("blobs")
        co.add_ndarray_column("full", shape=(), dtype="int8").update({0: np.int8(1)})
        co.commit("empty columns")
    res = export(repo, "main", tmp_path / f"out{suffix}")
    assert res.columns == {"blobs": 0, "fixed": 0, "full": 1, "ragged": 0, "text": 0}
    other = _other(tmp_path)

    import_source(other, tmp_path / f"out{suffix}")

    with other.checkout() as co:
        assert sorted(co.columns) == ["blobs", "fixed", "full", "ragged", "text"]
        assert (co["fixed"].shape, co["ragged"].shape) == ((3,), (None, 2))
        assert (co["text"].kind, co["blobs"].kind) == ("str", "bytes")
        assert all(len(co[c]) == 0 for c in ("blobs", "fixed", "ragged", "text"))


def test_hdf5_refuses_a_str_with_nul_before_writing_anything(
    repo: tc.Repository, tmp_path: Path
) -> None:
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("first", shape=(), dtype="int8").update({0: np.int8(1)})
        co.add_str_column("text").update({"ok": "fine", "bad": "a\0b"})
        co.commit("nul")

    with pytest.raises(ValueError, match=r"str column 'text' .*'\\0' \(key 'bad'\).*\.zarr"):
        export(repo, "main", tmp_path / "out.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]
    export(repo, "main", tmp_path / "out.npz")  # a NUL inside a value is fine there
    export(repo, "main", tmp_path / "out.zarr")
    other = _other(tmp_path)
    import_source(other, tmp_path / "out.zarr")
    with other.checkout() as co:
        assert co["text"]["bad"] == "a\0b"


def test_npz_refusal_of_a_trailing_nul_names_the_key(repo: tc.Repository, tmp_path: Path) -> None:
    with repo.checkout(write=True) as co:
        co.add_str_column("text").update({"k1": "x", "k2": "ends\0"})
        co.commit("nul")

    with pytest.raises(ValueError, match=r"ending in '\\0' \(key 'k2'\).*\.zarr"):
        export(repo, "main", tmp_path / "out.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_hdf5_text_that_is_not_utf8_names_the_dataset_and_sample(
    repo: tc.Repository, tmp_path: Path
) -> None:
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        ds = f.create_dataset("names", shape=(3,), dtype=h5py.string_dtype("utf-8"))
        ds[0], ds[1], ds[2] = b"ok", b"fine", b"\xff\xfe"

    with pytest.raises(ValueError, match=r"dataset '/names' of .* not UTF-8 at sample 2"):
        import_source(repo, tmp_path / "bad.h5")
    assert repo.branches == {}
