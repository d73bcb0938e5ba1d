"""Reads through resolved column tables give exactly what the per-key path gives."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import tensorcask as tc
from tensorcask import columns as columns_module
from tensorcask.table_cache import TableCacheWarning


@pytest.fixture
def eager_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(columns_module, "_TABLE_MIN_READS", 1)
    monkeypatch.setattr(columns_module, "_TABLE_SHARE", 1 << 30)


def _repo(tmp_path: Path) -> tuple[tc.Repository, str, np.ndarray]:
    repo = tc.init(tmp_path / "r", user_name="Ada", user_email="ada@example.org")
    images = np.random.default_rng(7).integers(0, 256, (300, 4, 4), dtype=np.uint8)
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("images", shape=(4, 4), dtype="uint8")
        col.update(np.arange(0, 600, 2), images)  # even keys only
        named = co.add_ndarray_column("named", shape=(2,), dtype="float32")
        named.update({f"k{i:03d}": np.full(2, i, np.float32) for i in range(50)})
        text = co.add_str_column("text")
        text.update({i: f"t{i}" for i in range(40)})
        varying = co.add_ndarray_column("varying", shape=(None,), dtype="int16")
        varying.update({i: np.arange(i, dtype=np.int16) for i in range(30)})
        cid = co.commit("data")
    return repo, cid, images


def test_table_reads_match_per_key_reads(tmp_path: Path, eager_tables: None) -> None:
    repo, cid, images = _repo(tmp_path)
    with repo.checkout(commit=cid) as rc:
        col = rc["images"]
        keys = [598, 0, 2, 2, 400]
        assert np.array_equal(col.get_many(keys), images[[299, 0, 1, 1, 200]])
        assert col._table is not None and col._table.segments is not None  # the fast path ran
        assert np.array_equal(col.get_many(np.array(keys)), images[[299, 0, 1, 1, 200]])
        assert np.array_equal(col[400], images[200])
        with pytest.raises(KeyError, match="3"):
            col.get_many([0, 3])
        with pytest.raises(KeyError):
            col[1]
        assert np.array_equal(rc["named"].get_many(["k007", "k000"])[:, 0], [7, 0])
        assert rc["named"]["k049"][1] == 49
        assert rc["text"].get_many([3, 1]) == ["t3", "t1"]
        assert rc["text"][39] == "t39"
        assert [len(v) for v in rc["varying"].get_many([5, 0, 29])] == [5, 0, 29]
        assert np.array_equal(rc["varying"][7], np.arange(7, dtype=np.int16))
        out = col.get_many([10, 12])
        out[:] = 0  # reads own their memory
        assert np.array_equal(col.get_many([10, 12]), images[[5, 6]])
    repo.close()


def test_table_read_of_a_damaged_row_names_the_key(tmp_path: Path, eager_tables: None) -> None:
    repo, cid, images = _repo(tmp_path)
    with repo.checkout(commit=cid) as rc:
        col = rc["images"]
        col.get_many([0])  # build the table
        loc = col._table.location(100)  # type: ignore[union-attr]
        path = Path(repo._parts.store.path_of(loc))
    with open(path, "r+b") as f:
        f.seek(loc.offset * 16 + 3)
        byte = f.read(1)
        f.seek(loc.offset * 16 + 3)
        f.write(bytes([byte[0] ^ 0xFF]))
    repo.close()
    repo = tc.Repository(tmp_path / "r")
    with repo.checkout(commit=cid) as rc:
        col = rc["images"]
        assert np.array_equal(col.get_many([0, 2]), images[[0, 1]])
        with pytest.raises(tc.CorruptionError) as err:
            col.get_many([0, 200, 2])
        assert err.value.key == 200 and err.value.column == "images"
        with pytest.raises(tc.CorruptionError):
            col[200]
    repo.close()


def test_tables_are_built_only_after_enough_reads(tmp_path: Path) -> None:
    repo, cid, _ = _repo(tmp_path)
    shutil.rmtree(repo.path / "cache")  # the table its commit derived
    repo.close()
    repo = tc.Repository(tmp_path / "r")
    with repo.checkout(commit=cid) as rc:
        col = rc["images"]
        col.get_many([0, 2])
        assert col._table is None  # a few reads resolve keys one by one
    repo.close()


def test_a_table_at_hand_serves_the_first_read(tmp_path: Path) -> None:
    repo, cid, images = _repo(tmp_path)
    repo.close()
    repo = tc.Repository(tmp_path / "r")  # a fresh handle: the table its commit saved
    with repo.checkout(commit=cid) as rc:
        col = rc["images"]
        assert np.array_equal(col[2], images[1])
        assert col._table is not None
    repo.close()


def test_tables_persist_per_column_root_and_gc_drops_dead_ones(
    tmp_path: Path, eager_tables: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, cid, images = _repo(tmp_path)
    with repo.checkout(commit=cid) as rc:
        rc["images"].get_many([0])
    folders = list((repo.path / "cache" / "tables").iterdir())
    assert len(folders) == 1
    repo.close()

    from tensorcask.locations import ColumnTable

    def no_build(*args: object) -> None:
        raise AssertionError("the saved table should have been loaded")

    monkeypatch.setattr(ColumnTable, "build", classmethod(no_build))
    repo = tc.Repository(tmp_path / "r")
    with repo.checkout(commit=cid) as rc:
        assert np.array_equal(rc["images"].get_many([2, 0]), images[[1, 0]])
    repo.close()
    monkeypatch.undo()
    monkeypatch.setattr(columns_module, "_TABLE_MIN_READS", 1)
    monkeypatch.setattr(columns_module, "_TABLE_SHARE", 1 << 30)

    manifest = json.loads(folders[0].read_text())
    piece = manifest["arrays"]["rows"]["pieces"][0]
    damaged = repo.path / "cache" / "pieces" / piece[:2] / piece[2:]
    damaged.write_bytes(b"garbage")  # a damaged cache is rebuilt, with a warning
    repo = tc.Repository(tmp_path / "r")
    with repo.checkout(commit=cid) as rc, pytest.warns(TableCacheWarning, match="checksum|size"):
        assert np.array_equal(rc["images"].get_many([4]), images[[2]])
    repo.create_branch("side", base=cid)
    with repo.checkout(write=True, branch="side") as co:
        co["images"][1000] = images[0]  # a new column root, only on "side"
        side = co.commit("side change")
    with repo.checkout(commit=side) as rc:
        rc["images"].get_many([1000])
    tables = repo.path / "cache" / "tables"
    assert len(list(tables.iterdir())) == 2
    repo.gc()
    assert len(list(tables.iterdir())) == 2  # both column roots are reachable
    with repo.checkout(write=True, branch="main"):
        pass  # "side" must not be the current branch to be deleted
    repo.delete_branch("side", force=True)
    repo.gc()
    assert [p.name for p in tables.iterdir()] == [folders[0].name]
    repo.close()
