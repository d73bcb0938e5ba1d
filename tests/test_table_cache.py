"""The column-table cache: checked on load, shared between commits, bounded."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import tensorcask as tc
from tensorcask import table_cache
from tensorcask.loaders.core import RepoSource
from tensorcask.table_cache import TableCacheWarning

N = 40 * 4096 // 8 + 100  # every array spans dozens of pieces


def _cache_bytes(path: Path) -> int:
    pieces = path / "cache" / "pieces"
    return sum(p.stat().st_size for p in pieces.rglob("*") if p.is_file())


def _manifests(path: Path) -> list[Path]:
    return sorted((path / "cache" / "tables").glob("*.json"))


@pytest.fixture
def grown(tmp_path: Path) -> tuple[tc.Repository, list[str]]:
    """A label column of N records, then 12 commits appending 50 records each."""
    repo = tc.init(tmp_path / "r", user_name="Ada", user_email="ada@example.org")
    commits = []
    with repo.checkout(write=True) as co:
        labels = co.add_ndarray_column("labels", shape=(), dtype="int64")
        labels.update(np.arange(N), np.arange(N, dtype=np.int64) * 3)
        commits.append(co.commit("base"))
        for round_ in range(12):
            start = N + 50 * round_
            labels.update(np.arange(start, start + 50), np.arange(50, dtype=np.int64))
            commits.append(co.commit(f"append {round_}"))
    shutil.rmtree(repo.path / "cache")  # the tables commits derived: these tests build their own
    return repo, commits


def test_tables_in_use_are_not_evicted(grown: tuple[tc.Repository, list[str]]) -> None:
    repo, commits = grown
    repo.table_cache_limit = 0
    for commit in commits[:4]:
        RepoSource(repo, ["labels"], commit=commit)
    assert len(_manifests(repo.path)) == 4  # all opened within HOT_S: kept over the limit
    repo.close()


def test_tables_derived_by_commits_are_evicted_before_tables_in_use(tmp_path: Path) -> None:
    repo = tc.init(tmp_path / "r", user_name="Ada", user_email="ada@example.org")
    with repo.checkout(write=True) as co:
        labels = co.add_ndarray_column("labels", shape=(), dtype="int64")
        labels.update(np.arange(N), np.arange(N, dtype=np.int64))
        first = co.commit("base")
        (derived,) = _manifests(repo.path)  # saved by the commit, before any read
        RepoSource(repo, ["labels"], commit=first)  # now in use (and not rebuilt)
        assert _manifests(repo.path) == [derived]
        repo.table_cache_limit = 0
        for round_ in range(3):
            labels[round_] = np.int64(-1)
            co.commit(f"change {round_}")
    kept = _manifests(repo.path)
    # the table in use stays; of the three derived since, only the newest (just saved)
    assert len(kept) == 2 and derived in kept
    repo.close()


def test_tables_of_related_commits_share_unchanged_pieces(
    grown: tuple[tc.Repository, list[str]],
) -> None:
    repo, commits = grown
    RepoSource(repo, ["labels"], commit=commits[0])
    one_table = _cache_bytes(repo.path)
    assert one_table > 5 * table_cache.piece_bytes(8 * N)  # several arrays of many pieces
    for commit in commits[1:]:
        source = RepoSource(repo, ["labels"], commit=commit)
        assert len(source) == len(repo.checkout(commit=commit)["labels"])
    assert len(_manifests(repo.path)) == len(commits)
    # each appended commit adds only the pieces that changed, not a whole table
    assert _cache_bytes(repo.path) < 1.5 * one_table
    last = RepoSource(repo, ["labels"], commit=commits[-1]).read(np.array([0, N + 599]))
    assert last[0].tolist() == [0, 49]
    repo.close()


def test_cache_stays_within_its_limit(
    grown: tuple[tc.Repository, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, commits = grown
    monkeypatch.setattr(table_cache, "HOT_S", 0.0)  # no table counts as in use
    RepoSource(repo, ["labels"], commit=commits[0])
    one_table = _cache_bytes(repo.path)
    repo.table_cache_limit = one_table  # room for about one table
    assert repo.table_cache_limit == one_table
    for commit in commits[::-1]:
        RepoSource(repo, ["labels"], commit=commit)
        assert _cache_bytes(repo.path) <= 2 * one_table
    repo.table_cache_limit = None
    assert repo.table_cache_limit >= 256 << 20
    with pytest.raises(ValueError, match="table_cache_limit"):
        repo.table_cache_limit = -1
    repo.close()


def _damage_every_manifest(path: Path, edit: str) -> None:
    for manifest in _manifests(path):
        if edit == "flip":
            data = bytearray(manifest.read_bytes())
            data[len(data) // 2] ^= 0x10
            manifest.write_bytes(bytes(data))
        elif edit == "stale":
            doc = json.loads(manifest.read_text())
            doc["format"] = 1
            manifest.write_text(json.dumps(doc))
        else:
            doc = json.loads(manifest.read_text())
            piece = doc["arrays"]["int_keys"]["pieces"][0]
            target = path / "cache" / "pieces" / piece[:2] / piece[2:]
            data = bytearray(target.read_bytes())
            data[100] ^= 0x01  # one key now names another record
            target.write_bytes(bytes(data))


@pytest.mark.parametrize("edit", ["flip", "stale", "piece"])
def test_damaged_or_stale_tables_are_rebuilt_never_read(
    grown: tuple[tc.Repository, list[str]], edit: str
) -> None:
    repo, commits = grown
    RepoSource(repo, ["labels"], commit=commits[0])
    repo.close()
    _damage_every_manifest(repo.path, edit)
    again = tc.Repository(repo.path)
    with pytest.warns(TableCacheWarning, match="rebuilding"):
        source = RepoSource(again, ["labels"], commit=commits[0])
    assert source.read(np.arange(0, N, 997))[0].tolist() == [3 * k for k in range(0, N, 997)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt table was saved sound
        fresh = tc.Repository(repo.path)
        RepoSource(fresh, ["labels"], commit=commits[0])
        assert fresh.verify(full=True).ok
        fresh.close()
    again.close()


def test_verify_reports_a_damaged_cache_and_removes_it(
    grown: tuple[tc.Repository, list[str]],
) -> None:
    repo, commits = grown
    RepoSource(repo, ["labels"], commit=commits[0])
    _damage_every_manifest(repo.path, "piece")
    report = repo.verify(full=True, raise_on_error=False)
    assert not report.ok
    assert any("cached column table" in p for p in report.problems), report.problems
    assert repo.verify(full=True).ok  # removed: the next read rebuilds it
    repo.close()


def test_gc_keeps_tables_of_live_commits_only(grown: tuple[tc.Repository, list[str]]) -> None:
    repo, commits = grown
    repo.create_branch("old", base=commits[0])
    RepoSource(repo, ["labels"], commit="old")
    RepoSource(repo, ["labels"], commit=commits[-1])
    assert len(_manifests(repo.path)) == 2
    repo.delete_branch("old", force=True)
    repo.gc()  # commits[0] is still reachable from main: both stay
    assert len(_manifests(repo.path)) == 2
    repo.close()
