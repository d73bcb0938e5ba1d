"""The log-structured content index: compaction, tier merges, gc, crash leftovers."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

import tensorcask as tc
from tensorcask.parts import RepositoryParts
from tensorcask.storage import index as index_module
from tensorcask.storage.base import Location


@pytest.fixture
def tiny_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "RECENT_LIMIT", 8)
    monkeypatch.setattr(index_module, "FANOUT", 2)


def _runs(repo_path: Path) -> list[Path]:
    return sorted((repo_path / "index").glob("*.run"))


def test_compaction_and_merges_keep_every_sample_readable(tmp_path: Path, tiny_index: None) -> None:
    repo = tc.init(tmp_path / "r", user_name="Ada", user_email="ada@example.org")
    rng = np.random.default_rng(3)
    data = rng.integers(0, 1 << 30, (300, 4)).astype(np.int64)
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("x", shape=(4,), dtype="int64")
        for start in range(0, 300, 7):  # many small batches: many compactions
            stop = min(start + 7, 300)
            col.update(np.arange(start, stop), data[start:stop])
        col.update([0, 1], data[[5, 6]])  # duplicates of content already in runs
        cid = co.commit("many batches")
    runs = _runs(repo.path)
    assert 1 <= len(runs) < 10, "tiers should have merged runs"
    with repo.checkout(commit=cid) as rc:
        got = rc["x"].get_many(list(range(300)))
        expected = data.copy()
        expected[[0, 1]] = data[[5, 6]]
        assert np.array_equal(got, expected)
        assert np.array_equal(rc["x"][150], data[150])
        assert rc["x"].digest(0) == rc["x"].digest(5)
    assert repo.verify(full=True).ok
    repo.close()


def test_gc_rewrites_runs_without_dead_entries(tmp_path: Path, tiny_index: None) -> None:
    repo = tc.init(tmp_path / "r", user_name="Ada", user_email="ada@example.org")
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("x", shape=(), dtype="int64")
        col.update(np.arange(40), np.arange(40, dtype=np.int64))
        keep = co.commit("keep")
        col.update(np.arange(40, 80), np.arange(1000, 1040, dtype=np.int64))
        co.reset_staging_area()  # 40 staged samples become garbage
    report = repo.gc()
    assert report.samples == 40
    with repo.checkout(commit=keep) as rc:
        assert np.array_equal(rc["x"].get_many(list(range(40))), np.arange(40))
    assert repo.verify(full=True).ok
    repo.close()


def test_unlisted_run_left_by_a_crash_is_removed_by_gc(tmp_path: Path) -> None:
    repo = tc.init(tmp_path / "r", user_name="Ada", user_email="ada@example.org")
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("x", shape=(), dtype="int64").update([1], np.array([1]))
        co.commit("one")
    orphan = index_module.write_run(repo.path / "index", [(b"\x01" * 32, b"junk")])
    assert (repo.path / "index" / orphan).exists()
    repo.gc()
    assert not (repo.path / "index" / orphan).exists()
    assert repo.verify(full=True).ok
    repo.close()


def test_damaged_run_file_raises_corruption_error(tmp_path: Path, tiny_index: None) -> None:
    repo = tc.init(tmp_path / "r", user_name="Ada", user_email="ada@example.org")
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("x", shape=(), dtype="int64").update(np.arange(20), np.arange(20))
        cid = co.commit("c")
    run = _runs(repo.path)[0]
    with open(run, "r+b") as f:
        f.truncate(run.stat().st_size - 3)
    shutil.rmtree(repo.path / "cache")  # the column table the commit derived: look keys up
    repo.close()
    repo = tc.Repository(tmp_path / "r")
    with repo.checkout(commit=cid) as rc, pytest.raises(tc.CorruptionError, match="run"):
        rc["x"].get_many(list(range(20)))
    repo.close()


# -- large batches as run files of their own --------------------------------------------


@pytest.fixture
def small_bulk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "BULK_ENTRIES", 16)
    monkeypatch.setattr(index_module, "FANOUT", 2)


def _loc(i: int, shape: tuple[int, ...] = (4,)) -> bytes:
    return Location("memmap", 1, i, "<i8", shape, i * 7 + 1).to_bytes()


def _digest(i: int) -> bytes:
    return hashlib.blake2b(str(i).encode(), digest_size=32).digest()


def test_large_batches_become_runs_and_merges_keep_every_sample(
    tmp_path: Path, small_bulk: None
) -> None:
    """Bulk runs, small batches through the recent table, two location widths (two
    shapes) and tier merges: every sample reads back, and no entry is lost."""
    repo = tc.init(tmp_path / "r", user_name="Ada", user_email="ada@example.org")
    rng = np.random.default_rng(5)
    wide = rng.integers(0, 1 << 30, (400, 2, 3)).astype(np.int64)
    narrow = rng.integers(0, 1 << 30, (400,)).astype(np.int64)
    with repo.checkout(write=True) as co:
        a = co.add_ndarray_column("a", shape=(2, 3), dtype="int64")
        b = co.add_ndarray_column("b", shape=(), dtype="int64")
        for start in range(0, 400, 40):
            a.update(np.arange(start, start + 40), wide[start : start + 40])  # bulk
            for k in range(start, start + 40, 8):  # small: the recent table
                b.update(np.arange(k, k + 8), narrow[k : k + 8])
        cid = co.commit("mixed")
    assert len(_runs(repo.path)) < 10, "tiers should have merged the bulk runs"
    with repo.checkout(commit=cid) as rc:
        assert np.array_equal(rc["a"].get_many(list(range(400))), wide)
        assert np.array_equal(rc["b"].get_many(list(range(400))), narrow)
    assert repo.verify(full=True).ok


def test_merged_runs_keep_the_youngest_entry_of_a_digest(tmp_path: Path) -> None:
    older = [(_digest(i), _loc(i)) for i in range(0, 60)]
    younger = [(_digest(i), _loc(1000 + i)) for i in range(40, 100)]  # 40..59 again
    odd = [(_digest(i), _loc(2000 + i, (3, 3))) for i in range(90, 130)]  # another width
    runs = [
        index_module.Run(tmp_path / index_module.write_run(tmp_path, e))
        for e in (odd, younger, older)
    ]
    merged = index_module._merged_arrays(runs)  # youngest first
    assert merged is not None
    name = index_module._write_run_file(tmp_path, *merged)
    run = index_module.Run(tmp_path / name)
    assert run.check() is None and run.check_order() is None and run.entries_sound()
    got = {run.digests[i].tobytes(): run.location(i) for i in range(run.count)}
    expected = {**dict(older), **dict(younger), **dict(odd)}
    assert got == expected


def test_a_bulk_run_is_not_shadowed_by_a_recent_entry(tmp_path: Path, small_bulk: None) -> None:
    tc.init(tmp_path / "r", user_name="Ada", user_email="ada@example.org").close()
    parts = RepositoryParts(tmp_path / "r")
    index, db = parts.store.index, parts.db
    with db.write() as txn:
        index.add(txn, [(_digest(1), _loc(1))])  # a stale entry in the recent table
    batch = [(_digest(i), _loc(500 + i)) for i in range(32)]
    with db.write() as txn:
        index.add(txn, batch)
    with db.read() as txn:
        assert index.lookup(txn, [d for d, _ in batch]) == [loc for _, loc in batch]
        assert index.lookup(txn, [_digest(1)]) == [_loc(501)]
    parts.close()
