"""Read and write checkouts: commits, pinning, staging, locking (SPEC §2)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tensorcask as tc

HEX40 = re.compile(r"[0-9a-f]{40}")


def _commit_labels(repo: tc.Repository, values: dict, message: str = "labels") -> str:
    """Write ``values`` into the int64 scalar column ``labels`` and commit."""
    with repo.checkout(write=True) as co:
        col = co["labels"] if "labels" in co else co.add_ndarray_column("labels", (), "int64")
        col.update({k: np.int64(v) for k, v in values.items()})
        return co.commit(message)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- committing and reading back --------------------------------------------------------------


def test_commit_returns_full_hex_id(repo, mnist_like):
    images, labels = mnist_like
    with repo.checkout(write=True) as co:
        assert isinstance(co, tc.WriteCheckout)
        co.add_ndarray_column("images", shape=(28, 28), dtype="uint8").update(
            range(len(images)), images
        )
        co.add_ndarray_column("labels", shape=(), dtype="int64").update(range(len(labels)), labels)
        cid = co.commit("first")
    assert isinstance(cid, str)
    assert HEX40.fullmatch(cid)
    assert repo.branches == {"main": cid}
    with repo.checkout(commit=cid) as co:
        assert isinstance(co, tc.ReadCheckout)
        assert co.commit_id == cid
        np.testing.assert_array_equal(co["images"].get_many(range(len(images))), images)
        np.testing.assert_array_equal(co["labels"].get_many(range(len(labels))), labels)


def test_read_checkout_by_full_id_prefix_and_branch(repo):
    first = _commit_labels(repo, {0: 10}, "first")
    second = _commit_labels(repo, {1: 11}, "second")
    assert first != second
    refs = [first, first[:4], first[:4].upper(), first[:11], first.upper()]
    for ref in refs:
        with repo.checkout(commit=ref) as co:
            assert co.commit_id == first, ref
            assert co["labels"].keys() == [0]
    with repo.checkout(commit="main") as co:
        assert co.commit_id == second
    with repo.checkout(branch="main") as co:
        assert co.commit_id == second
        assert co["labels"].keys() == [0, 1]
    with repo.checkout() as co:  # the current branch's head
        assert co.commit_id == second
    with pytest.raises(tc.RefNotFoundError):
        repo.checkout(commit=first[:3])  # too short to be a prefix
    with pytest.raises(tc.RefNotFoundError):
        repo.checkout(branch="nope")
    with pytest.raises(KeyError):
        repo.checkout(commit="0" * 40)


def test_read_checkout_stays_pinned_after_later_commits(repo):
    first = _commit_labels(repo, {0: 0, 1: 1, 2: 2}, "first")
    pinned = repo.checkout(commit=first)
    by_branch = repo.checkout(branch="main")
    try:
        with repo.checkout(write=True) as co:
            col = co["labels"]
            col[0] = np.int64(100)
            del col[1]
            col[3] = np.int64(3)
            co.add_str_column("notes")["n"] = "later"
            co.commit("second")
            col[2] = np.int64(200)
            co.commit("third")
        for rc in (pinned, by_branch):
            assert rc.commit_id == first
            labels = rc["labels"]
            assert labels.keys() == [0, 1, 2]
            assert len(labels) == 3
            assert [int(labels[k]) for k in (0, 1, 2)] == [0, 1, 2]
            assert "notes" not in rc.columns
        with repo.checkout() as head:
            assert head["labels"].keys() == [0, 2, 3]
            assert int(head["labels"][0]) == 100
            assert int(head["labels"][2]) == 200
    finally:
        pinned.close()
        by_branch.close()


def test_read_checkouts_never_see_staged_data(repo):
    base = _commit_labels(repo, {0: 0}, "base")
    with repo.checkout(write=True) as co:
        co["labels"][0] = np.int64(99)
        co["labels"][5] = np.int64(5)
        co.add_str_column("staged_only")["k"] = "v"
        with repo.checkout() as rc:
            assert rc.commit_id == base
            assert rc["labels"].keys() == [0]
            assert int(rc["labels"][0]) == 0
            assert 5 not in rc["labels"]
            assert "staged_only" not in rc.columns
        # the writer sees its own staged data
        assert int(co["labels"][0]) == 99
        assert co["labels"].keys() == [0, 5]
    # staged (uncommitted) changes remain invisible after the writer closes
    with repo.checkout(branch="main") as rc:
        assert rc.commit_id == base
        assert rc["labels"].keys() == [0]
        assert "staged_only" not in rc


def test_read_checkout_of_empty_repository_sees_no_staged_columns(repo):
    with repo.checkout(write=True) as co:
        co.add_str_column("s")["a"] = "staged"
        with repo.checkout() as rc:
            assert len(rc.columns) == 0
            with pytest.raises(KeyError):
                rc["s"]


def test_many_read_checkouts_while_a_writer_works(repo):
    commits = [_commit_labels(repo, {0: 0}, "c0")]
    readers = []
    try:
        with repo.checkout(write=True) as co:
            for i in range(1, 6):
                readers.append((commits[-1], repo.checkout(commit=commits[-1])))
                readers.append((commits[-1], repo.checkout()))
                co["labels"][i] = np.int64(i)
                commits.append(co.commit(f"c{i}"))
                for pinned, rc in readers:
                    assert rc.commit_id == pinned
                    n = commits.index(pinned) + 1
                    assert rc["labels"].keys() == list(range(n))
        assert len(readers) == 10
        for pinned, rc in readers:
            n = commits.index(pinned) + 1
            np.testing.assert_array_equal(rc["labels"].get_many(range(n)), np.arange(n))
    finally:
        for _, rc in readers:
            rc.close()


# -- closed checkouts and read-only access --------------------------------------------------


def test_closed_read_checkout_raises(repo):
    _commit_labels(repo, {0: 1}, "c")
    co = repo.checkout()
    col = co["labels"]
    co.close()
    co.close()  # idempotent
    with pytest.raises(tc.CheckoutClosedError):
        co["labels"]
    with pytest.raises(tc.CheckoutClosedError):
        list(co.columns)
    with pytest.raises(tc.CheckoutClosedError):
        col[0]
    with pytest.raises(tc.CheckoutClosedError):
        len(col)
    with pytest.raises(tc.CheckoutClosedError):
        col.keys()
    with pytest.raises(tc.CheckoutClosedError):
        col.get_many([0])
    with pytest.raises(tc.CheckoutClosedError):
        col.digest(0)
    with pytest.raises(tc.CheckoutClosedError):
        0 in col  # noqa: B015
    with pytest.raises(tc.CheckoutClosedError), co:
        pass


def test_closed_write_checkout_raises(repo):
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("labels", shape=(), dtype="int64")
        col[0] = np.int64(1)
    # `with` closed it
    with pytest.raises(tc.CheckoutClosedError):
        col[1] = np.int64(2)
    with pytest.raises(tc.CheckoutClosedError):
        col.update({1: np.int64(2)})
    with pytest.raises(tc.CheckoutClosedError):
        del col[0]
    with pytest.raises(tc.CheckoutClosedError):
        col[0]
    with pytest.raises(tc.CheckoutClosedError):
        co.commit("too late")
    with pytest.raises(tc.CheckoutClosedError):
        co.add_str_column("late")
    with pytest.raises(tc.CheckoutClosedError):
        co["labels"]
    # closing released the writer lock and kept the staged write
    with repo.checkout(write=True) as co2:
        assert co2["labels"].keys() == [0]


def test_writing_through_read_checkout_raises_read_only(repo):
    _commit_labels(repo, {0: 1}, "c")
    with repo.checkout() as co:
        col = co["labels"]
        with pytest.raises(tc.ReadOnlyError) as info:
            col[1] = np.int64(2)
        assert isinstance(info.value, PermissionError)
        with pytest.raises(tc.ReadOnlyError):
            col.update({1: np.int64(2)})
        with pytest.raises(tc.ReadOnlyError):
            col.update([1], np.array([2], np.int64))
        with pytest.raises(tc.ReadOnlyError):
            del col[0]
        with pytest.raises(tc.ReadOnlyError):
            del co.columns["labels"]
        with pytest.raises(PermissionError):
            col[0] = np.int64(5)
        assert col.keys() == [0]
        assert int(col[0]) == 1
    with repo.checkout() as co:
        assert co["labels"].keys() == [0]
        assert "labels" in co.columns


# -- the writer lock ---------------------------------------------------------------------


def test_second_write_checkout_raises_writer_lock_error(repo):
    with repo.checkout(write=True) as co:
        with pytest.raises(tc.WriterLockError) as info:
            repo.checkout(write=True)
        assert isinstance(info.value, PermissionError)
        assert str(os.getpid()) in str(info.value)
        # the first writer keeps working
        co.add_str_column("s")["a"] = "x"
        co.commit("still the writer")
        # another Repository object on the same path is refused as well
        with tc.Repository(repo.path) as other, pytest.raises(tc.WriterLockError):
            other.checkout(write=True)
    with repo.checkout(write=True) as co:  # released on close
        assert co["s"]["a"] == "x"


HOLD_WRITER = """
import sys
import tensorcask as tc

repo = tc.Repository(sys.argv[1])
co = repo.checkout(write=True)
print("ready", flush=True)
sys.stdin.readline()
co.close()
repo.close()
"""


def test_writer_lock_across_processes_names_holder_pid(repo):
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITER, str(repo.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(tc.WriterLockError) as info:
            repo.checkout(write=True)
        assert str(child.pid) in str(info.value)
        assert socket.gethostname() in str(info.value)
        assert isinstance(info.value, PermissionError)
    finally:
        child.stdin.write("done\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == 0
    with repo.checkout(write=True) as co:
        co.add_str_column("s")["k"] = "mine now"
        assert HEX40.fullmatch(co.commit("after the child"))


def test_lock_of_a_dead_holder_is_taken_over_with_a_warning(repo):
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITER, str(repo.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        child.stdin.close()
        child.stdout.close()
    with pytest.warns(RuntimeWarning, match=str(child.pid)):
        co = repo.checkout(write=True)
    with co:
        co.add_str_column("s")["k"] = "after takeover"
        assert HEX40.fullmatch(co.commit("after takeover"))


def test_force_release_writer_lock(repo):
    stale = repo.checkout(write=True)
    try:
        stale.add_str_column("s")["a"] = "from the stale writer"
        stale.flush()  # staged, durably
        holder = repo.force_release_writer_lock()
        assert holder is not None
        assert holder.get("pid") == os.getpid()
        with repo.checkout(write=True) as fresh:
            assert fresh["s"]["a"] == "from the stale writer"  # staged data is kept
            fresh["s"]["b"] = "new writer"
            # the old holder can no longer publish
            with pytest.raises(tc.WriterLockError):
                stale.commit("stale commit")
            with pytest.raises(tc.WriterLockError):
                stale["s"]["c"] = "stale write"  # the first write of a batch checks
            assert "c" not in stale["s"]
            cid = fresh.commit("fresh commit")
    finally:
        stale.close()
    assert repo.resolve("main") == cid
    with repo.checkout() as co:
        assert co["s"].keys() == ["a", "b"]


def test_force_release_without_holder(repo):
    repo.force_release_writer_lock()  # nothing held: harmless
    with repo.checkout(write=True) as co:
        co.add_str_column("s")["a"] = "x"
        co.commit("ok")


# -- staging ---------------------------------------------------------------------------


def test_staged_changes_survive_closing_the_writer(repo):
    base = _commit_labels(repo, {0: 0, 1: 1}, "base")
    with repo.checkout(write=True) as co:
        co["labels"][2] = np.int64(2)
        del co["labels"][0]
        co.add_str_column("notes")["n"] = "staged note"
    with repo.checkout(write=True) as co:
        assert co.commit_id == base
        assert co["labels"].keys() == [1, 2]
        assert len(co["labels"]) == 2
        assert co["notes"]["n"] == "staged note"
        cid = co.commit("staged across sessions")
    with repo.checkout(commit=cid) as rc:
        assert rc["labels"].keys() == [1, 2]
        assert rc["notes"]["n"] == "staged note"
    with tc.Repository(repo.path) as reopened, reopened.checkout() as rc:
        assert rc.commit_id == cid


def test_staged_changes_survive_reopening_the_repository(repo):
    _commit_labels(repo, {0: 0}, "base")
    with repo.checkout(write=True) as co:
        co["labels"][7] = np.int64(7)
    path = repo.path
    repo.close()
    with tc.Repository(path) as again, again.checkout(write=True) as co:
        assert co["labels"].keys() == [0, 7]
        assert int(co["labels"][7]) == 7


def test_reset_staging_area_drops_staged_changes(repo):
    base = _commit_labels(repo, {0: 0, 1: 1}, "base")
    with repo.checkout(write=True) as co:
        co["labels"][0] = np.int64(50)
        co["labels"][9] = np.int64(9)
        del co["labels"][1]
        co.add_str_column("notes")["n"] = "x"
    with repo.checkout(write=True) as co:
        co.reset_staging_area()
        assert co.commit_id == base
        assert co["labels"].keys() == [0, 1]
        assert int(co["labels"][0]) == 0
        assert len(co["labels"]) == 2
        assert "notes" not in co.columns
        with pytest.raises(tc.CaskError, match="nothing to commit"):
            co.commit("empty")
    with repo.checkout(write=True) as co:  # the reset is persistent
        assert co["labels"].keys() == [0, 1]
        assert "notes" not in co


def test_reset_staging_area_restores_deleted_column(repo):
    _commit_labels(repo, {0: 0}, "base")
    with repo.checkout(write=True) as co:
        co.delete_column("labels")
        assert "labels" not in co.columns
        co.reset_staging_area()
        assert "labels" in co.columns
        assert int(co["labels"][0]) == 0


def test_writer_on_other_branch_refused_while_staged_changes_exist(repo):
    _commit_labels(repo, {0: 0}, "base")
    repo.create_branch("dev")
    with repo.checkout(write=True) as co:
        co["labels"][1] = np.int64(1)
    with pytest.raises(tc.CaskError) as info:
        repo.checkout(write=True, branch="dev")
    message = str(info.value)
    assert "main" in message
    assert "dev" in message
    assert repo.current_branch == "main"
    # the refused attempt left the lock free and the staged change in place
    with repo.checkout(write=True) as co:
        assert co.branch == "main"
        assert co["labels"].keys() == [0, 1]
        co.reset_staging_area()
    with repo.checkout(write=True, branch="dev") as co:
        assert co.branch == "dev"
        assert co["labels"].keys() == [0]


def test_writer_on_other_branch_allowed_after_commit(repo):
    _commit_labels(repo, {0: 0}, "base")
    repo.create_branch("dev")
    with repo.checkout(write=True) as co:
        co["labels"][1] = np.int64(1)
        co.commit("main moves")
    with repo.checkout(write=True, branch="dev") as co:
        assert co["labels"].keys() == [0]


def test_write_checkout_commits_many_times(repo):
    ids = []
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("labels", shape=(), dtype="int64")
        for i in range(5):
            col[i] = np.int64(i * i)
            ids.append(co.commit(f"commit {i}"))
            assert co.commit_id == ids[-1]
            assert repo.resolve("main") == ids[-1]
    assert len(set(ids)) == 5
    log = repo.log()
    assert [c.id for c in log] == ids[::-1]
    assert [c.parents for c in log] == [(ids[i - 1],) for i in range(4, 0, -1)] + [()]
    for i, cid in enumerate(ids):
        with repo.checkout(commit=cid) as rc:
            assert rc["labels"].keys() == list(range(i + 1))
            assert int(rc["labels"][i]) == i * i


def test_write_checkout_on_branch_makes_it_current(repo):
    base = _commit_labels(repo, {0: 0}, "base")
    assert repo.current_branch == "main"
    repo.create_branch("dev")
    assert repo.current_branch == "main"
    with repo.checkout(write=True, branch="dev") as co:
        assert co.branch == "dev"
        co["labels"][1] = np.int64(1)
        dev_head = co.commit("on dev")
    assert repo.current_branch == "dev"
    assert repo.branches == {"main": base, "dev": dev_head}
    with repo.checkout(write=True) as co:  # the default is now dev
        assert co.branch == "dev"
        assert co.commit_id == dev_head
    with repo.checkout() as rc:  # and reads default to dev's head
        assert rc.commit_id == dev_head
    with repo.checkout(write=True, branch="main") as co:
        assert co.commit_id == base
    assert repo.current_branch == "main"


def test_write_checkout_of_missing_branch_is_refused(repo):
    _commit_labels(repo, {0: 0}, "base")
    with pytest.raises((tc.CaskError, KeyError), match="nope"):
        repo.checkout(write=True, branch="nope")
    assert repo.current_branch == "main"
    assert set(repo.branches) == {"main"}


def test_new_repository_defaults_to_main(repo):
    assert repo.current_branch == "main"
    with repo.checkout(write=True) as co:
        assert co.branch == "main"
        assert co.commit_id is None
        co.add_str_column("s")["k"] = "v"
        cid = co.commit("root")
    assert repo.branches == {"main": cid}
    assert repo.log()[0].parents == ()


def test_nothing_to_commit_raises(repo):
    with repo.checkout(write=True) as co:
        with pytest.raises(tc.CaskError, match="nothing to commit"):
            co.commit("empty repo")
        co.add_str_column("s")["k"] = "v"
        cid = co.commit("one")
        with pytest.raises(tc.CaskError, match="nothing to commit"):
            co.commit("no changes since")
        assert co.commit_id == cid
    assert [c.id for c in repo.log()] == [cid]


def test_deleted_column_gone_from_next_commit_only(repo, mnist_like):
    images, labels = mnist_like
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("images", (28, 28), "uint8").update(range(8), images[:8])
        co.add_ndarray_column("labels", (), "int64").update(range(8), labels[:8])
        old = co.commit("both")
        del co.columns["images"]
        new = co.commit("drop images")
        assert sorted(co.columns) == ["labels"]
    with repo.checkout(commit=new) as rc:
        assert sorted(rc.columns) == ["labels"]
        with pytest.raises(KeyError):
            rc["images"]
    with repo.checkout(commit=old) as rc:
        assert sorted(rc.columns) == ["images", "labels"]
        np.testing.assert_array_equal(rc["images"].get_many(range(8)), images[:8])
    assert repo.verify(full=True).ok


def test_same_array_under_many_keys_is_stored_once(repo):
    rng = np.random.default_rng(7)
    value = rng.random((64, 64), dtype=np.float32)  # 16 KiB
    data_dir = repo.path / "data"
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("v", shape=(64, 64), dtype="float32")
        col["first"] = value
        co.commit("one copy")
    before = _dir_size(data_dir)
    usage_before = repo.disk_usage()
    with repo.checkout(write=True) as co:
        col = co["v"]
        col.update(range(500), np.broadcast_to(value, (500, 64, 64)))
        with col:
            for i in range(500, 1000):
                col[i] = value.copy()
        other = co.add_ndarray_column("w", shape=(64, 64), dtype="float32")
        other.update({"x": value, "y": value.astype(">f4")})
        cid = co.commit("1000 more keys")
    grown = _dir_size(data_dir) - before
    assert grown < value.nbytes, f"data grew by {grown} bytes for content already stored"
    # metadata for 1000 keys is small: far below 1000 copies of 16 KiB
    assert repo.disk_usage() - usage_before < 100 * value.nbytes
    with repo.checkout(commit=cid) as rc:
        assert len(rc["v"]) == 1001
        digests = {rc["v"].digest(k) for k in (0, 500, 999, "first")}
        digests.add(rc["w"].digest("y"))
        assert len(digests) == 1
        np.testing.assert_array_equal(rc["v"][999], value)
