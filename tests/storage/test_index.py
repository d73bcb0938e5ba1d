"""The log-structured content index: compaction, tier merges, gc, crash leftovers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import tensorcask as tc
from tensorcask.storage import index as index_module


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
