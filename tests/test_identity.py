"""One repository object per on-disk identity: a repository removed and re-created
at the same path is opened afresh, and handles to the removed one fail clearly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tensorcask as tc
from tensorcask.errors import CaskError, CorruptionError
from tensorcask.storage.db import MetaDB
from tensorcask.storage.lmdb_backend import LMDBBackend

STALE = "was removed or replaced after it was opened"


def _commit_x(repo: tc.Repository, value: int, message: str) -> str:
    with repo.checkout(write=True) as co:
        if "x" not in co:
            co.add_ndarray_column("x", shape=(3,), dtype="int64")
        co["x"].update([0, 1], np.full((2, 3), value, dtype="int64"))
        return co.commit(message)


def _in_subprocess(path: Path) -> dict[str, object]:
    script = (
        "import json, sys\n"
        "import tensorcask as tc\n"
        "repo = tc.Repository(sys.argv[1])\n"
        "co = repo.checkout()\n"
        "print(json.dumps({'branches': repo.branches, 'log': [c.id for c in repo.log()],\n"
        "                  'x': co['x'][1].tolist(), 'columns': sorted(co.columns)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_recreated_repository_is_opened_afresh(tmp_path: Path) -> None:
    """The issue's notebook workflow: open, commit, rmtree, init at the same path."""
    path = tmp_path / "repo"
    old = tc.init(path, user_name="Ada", user_email="ada@example.org")
    _commit_x(old, 1, "old")
    shutil.rmtree(path)

    new = tc.init(path, user_name="Ada", user_email="ada@example.org")
    assert new.branches == {}
    assert new.log() == []
    with new.checkout() as co:
        assert list(co.columns) == []
    commit = _commit_x(new, 2, "new")
    assert [c.message for c in new.log()] == ["new"]
    new.close()  # the old handle stays open, as in a notebook

    seen = _in_subprocess(path)
    assert seen == {"branches": {"main": commit}, "log": [commit], "x": [2, 2, 2], "columns": ["x"]}
    old.close()


def test_handle_to_a_removed_repository_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    old = tc.init(path, user_name="Ada", user_email="ada@example.org")
    first = _commit_x(old, 1, "old")
    writer = old.checkout(write=True)  # opened before the removal
    pinned = old.checkout(commit=first)
    shutil.rmtree(path)
    new = tc.init(path, user_name="Ada", user_email="ada@example.org")

    calls = {
        "checkout": lambda: old.checkout(),
        "checkout write": lambda: old.checkout(write=True),
        "resolve": lambda: old.resolve(first),
        "log": lambda: old.log(),
        "diff": lambda: old.diff(first, first),
        "branches": lambda: old.branches,
        "current_branch": lambda: old.current_branch,
        "create_branch": lambda: old.create_branch("b", first),
        "create_tag": lambda: old.create_tag("t", first),
        "merge": lambda: old.merge(first),
        "verify": lambda: old.verify(),
        "gc": lambda: old.gc(),
    }
    for name, call in calls.items():
        with pytest.raises(CaskError, match=STALE) as info:
            call()
        assert str(path) in str(info.value), name

    # The writer opened before the removal publishes nothing, anywhere.
    with pytest.raises(CaskError, match=STALE):
        writer["x"][5] = np.zeros(3, dtype="int64")
    with pytest.raises(CaskError, match=STALE):
        writer["x"].update([6], np.zeros((1, 3), dtype="int64"))
    with pytest.raises(CaskError, match=STALE):
        writer.delete_column("x")
    with pytest.raises(CaskError, match=STALE):
        writer.commit("lost")
    writer.close()
    assert not (path / "data" / "memmap").exists()  # no segment of the old writer landed here

    # A pinned read of data it never opened says what happened, not "damaged".
    _commit_x(new, 7, "new")
    with pytest.raises(CaskError, match=STALE) as info:
        pinned["x"][0]
    assert not isinstance(info.value, CorruptionError)
    pinned.close()

    assert [c.message for c in new.log()] == ["new"]
    new.close()
    old.close()


def test_removed_repository_fails_clearly_without_recreation(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    repo = tc.init(path, user_name="Ada", user_email="ada@example.org")
    _commit_x(repo, 1, "c")
    shutil.rmtree(path)
    with pytest.raises(CaskError, match=STALE):
        repo.log()
    with pytest.raises(CaskError, match=STALE):
        repo.checkout(write=True)
    repo.close()


def test_metadata_handles_share_one_environment_per_file(tmp_path: Path) -> None:
    meta = tmp_path / "meta"
    first = MetaDB(meta, create=True)
    second = MetaDB(meta)
    assert second.env is first.env
    shutil.rmtree(meta)
    fresh = MetaDB(meta, create=True)
    assert fresh.env is not first.env
    assert fresh.identity != first.identity
    with fresh.write() as txn:
        fresh.put_json(txn, "config", {"new": True})
    with pytest.raises(CaskError, match=STALE):
        first.write()
    for db in (first, second, fresh):
        db.close()
    reopened = MetaDB(meta)
    with reopened.read() as txn:
        assert reopened.get_json(txn, "config") == {"new": True}
    reopened.close()


def test_lmdb_backend_of_a_recreated_directory_is_opened_afresh(tmp_path: Path) -> None:
    root = tmp_path / "lmdb"
    old = LMDBBackend(root, writable=True)
    (old_loc,) = old.append([b"old value"])
    shutil.rmtree(root)
    new = LMDBBackend(root, writable=True)
    (new_loc,) = new.append([b"new value"])
    assert (new_loc.segment, new_loc.offset) == (old_loc.segment, old_loc.offset)
    assert new.read(new_loc) == b"new value"
    assert old.read(old_loc) == b"old value"  # the old handle keeps its own (deleted) file
    new.close()
    old.close()
    # What the new instance wrote is in the files now at the path.
    reader = LMDBBackend(root, writable=False)
    assert reader.read(new_loc) == b"new value"
    reader.close()
    assert os.path.exists(root / "data.mdb")


def test_recreated_repository_reads_its_own_lmdb_and_hdf5_samples(tmp_path: Path) -> None:
    path = tmp_path / "repo"

    def build(tag: str) -> tuple[tc.Repository, str]:
        repo = tc.init(path, user_name="Ada", user_email="ada@example.org")
        with repo.checkout(write=True) as co:
            co.add_str_column("s").update({0: f"{tag}-0", 1: f"{tag}-1"})
            co.add_ndarray_column("v", shape=(None,), dtype="float32").update(
                {0: np.full(2, len(tag), "float32")}
            )
            commit = co.commit(tag)
        return repo, commit

    old, _ = build("old")
    with old.checkout() as co:  # the old reader store opens its lmdb and hdf5 files
        assert co["s"][1] == "old-1"
        assert co["v"][0].tolist() == [3.0, 3.0]
    shutil.rmtree(path)
    new, commit = build("newer")
    with new.checkout() as co:
        assert co["s"][1] == "newer-1"
        assert co["v"][0].tolist() == [5.0, 5.0]
    new.close()
    script = (
        "import sys, tensorcask as tc\n"
        "co = tc.Repository(sys.argv[1]).checkout()\n"
        "print(co.commit_id, co['s'][0], co['v'][0].tolist())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [commit, "newer-0", "[5.0,", "5.0]"]
    old.close()
