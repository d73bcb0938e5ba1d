"""The exception tree's behaviour beyond its classes (see also test_repository)."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import tensorcask as tc
import tensorcask.repository as repository_module
from tensorcask import layout
from tensorcask.loaders.core import RepoSource


def test_corruption_error_rebuilt_from_its_message_names_column_key_and_path() -> None:
    original = tc.CorruptionError(
        "column 'cap tions', key 'k\\'1': stored bytes in /r/data/lmdb fail their checksum",
        column="cap tions",
        key="k'1",
        path="/r/data/lmdb",
    )
    # what DataLoader does with an error raised in a worker: a new one from the text
    rebuilt = tc.CorruptionError(f"Caught CorruptionError in worker 0.\nOriginal {original}")
    assert (rebuilt.column, rebuilt.key, rebuilt.path) == ("cap tions", "k'1", "/r/data/lmdb")
    int_key = tc.CorruptionError("column 'images', key 13 of commit ab: stored bytes in /x fail")
    assert (int_key.column, int_key.key, int_key.path) == ("images", 13, "/x")
    plain = tc.CorruptionError("repository /r failed verification")
    assert (plain.column, plain.key, plain.path) == (None, None, None)


def test_corruption_error_pickles_with_its_fields() -> None:
    error = tc.CorruptionError("column 'x', key 1: bad", column="x", key=1, path="/p")
    again = pickle.loads(pickle.dumps(error))
    assert (again.column, again.key, str(again)) == ("x", 1, "column 'x', key 1: bad")


class _Damage(tc.CorruptionError):
    """A subclass whose constructor takes other arguments than its message."""

    def __init__(self, column: str, key: int) -> None:
        super().__init__(f"sample {key} is damaged", column=column, key=key, path="/r/data")


def test_corruption_error_unpickles_without_rebuilding_from_its_message() -> None:
    # pickling goes through __reduce__: no __init__ call, no message parsing,
    # so a subclass with its own constructor arguments round-trips too
    error = _Damage("images", 7)
    for again in (pickle.loads(pickle.dumps(error)), copy.deepcopy(error)):
        assert type(again) is _Damage
        assert (again.column, again.key, again.path) == ("images", 7, "/r/data")
        assert again.args == ("sample 7 is damaged",)
    # fields the message does not name survive, and the message does not override them
    named = tc.CorruptionError("column 'a', key 1: bytes in /elsewhere fail", column="b", key=(2,))
    again = pickle.loads(pickle.dumps(named))
    assert (again.column, again.key, again.path) == ("b", (2,), None)
    # a note added on the way (as DataLoader and pytest do) survives too
    error.add_note("seen in worker 3")
    assert pickle.loads(pickle.dumps(error)).__notes__ == ["seen in worker 3"]


def _labels(repo: tc.Repository, values: dict[int, int], message: str = "c") -> str:
    with repo.checkout(write=True) as co:
        column = co["labels"] if "labels" in co else co.add_ndarray_column("labels", (), "int64")
        for key, value in values.items():
            column[key] = np.int64(value)
        return co.commit(message)


def test_merge_conflict_error_pickles_with_its_conflicts(repo: tc.Repository) -> None:
    _labels(repo, {0: 0})
    repo.create_branch("dev")
    _labels(repo, {0: 1}, "main side")
    with repo.checkout(write=True, branch="dev") as co:
        co["labels"][0] = np.int64(2)
        co.commit("dev side")
    with pytest.raises(tc.MergeConflictError) as info:
        repo.merge("dev", into="main")
    assert info.value.conflicts
    again = pickle.loads(pickle.dumps(info.value))
    assert again.conflicts == info.value.conflicts
    assert all(isinstance(c, tc.Conflict) for c in again.conflicts)
    assert str(again) == str(info.value)


# -- writes through a read checkout: ReadOnlyError, not AttributeError ----------------------

READ_CHECKOUT_WRITES: dict[str, Callable[[tc.ReadCheckout], object]] = {
    "commit": lambda co: co.commit("nope"),
    "add_ndarray_column": lambda co: co.add_ndarray_column("x", (2,), "float32"),
    "add_str_column": lambda co: co.add_str_column("x"),
    "add_bytes_column": lambda co: co.add_bytes_column("x"),
    "delete_column": lambda co: co.delete_column("labels"),
    "reset_staging_area": lambda co: co.reset_staging_area(),
}


@pytest.mark.parametrize("name", sorted(READ_CHECKOUT_WRITES))
def test_write_methods_of_a_read_checkout_raise_read_only(repo: tc.Repository, name: str) -> None:
    write = READ_CHECKOUT_WRITES[name]
    head = _labels(repo, {0: 1})
    with repo.checkout() as co:
        with pytest.raises(tc.ReadOnlyError, match="read-only checkout") as info:
            write(co)
        assert isinstance(info.value, PermissionError)
        assert head[:12] in str(info.value)  # which commit it is pinned to
        assert "repo.checkout(write=True)" in str(info.value)  # and what to do
        assert sorted(co.columns) == ["labels"] and int(co["labels"][0]) == 1
    assert repo.staged_branch is None
    assert [c.id for c in repo.log()] == [head]
    # an empty history too; a closed checkout says it is closed
    empty = tc.init(repo.path.parent / "empty", user_name="Ada", user_email="ada@example.org")
    with empty, empty.checkout() as co, pytest.raises(tc.ReadOnlyError, match="empty history"):
        write(co)
    co = repo.checkout()
    co.close()
    with pytest.raises(tc.CheckoutClosedError):
        write(co)


# -- refs: missing ones, and ones that moved under a writer ------------------------------------


def test_write_checkout_of_a_missing_branch_raises_ref_not_found(repo: tc.Repository) -> None:
    _labels(repo, {0: 1})
    with pytest.raises(tc.RefNotFoundError, match="'nope' does not exist") as info:
        repo.checkout(write=True, branch="nope")
    assert isinstance(info.value, KeyError)
    assert "repo.create_branch('nope')" in str(info.value)
    assert repo.current_branch == "main"


def test_dataset_of_a_branch_without_commits_raises_ref_not_found(repo: tc.Repository) -> None:
    with pytest.raises(tc.RefNotFoundError, match=r"'main' .* has no commits yet") as info:
        RepoSource(repo, ["labels"])
    assert "commit=" in str(info.value)


def test_writer_whose_staging_area_was_taken_over_raises_concurrent_update(
    repo: tc.Repository,
) -> None:
    _labels(repo, {0: 1})
    repo.create_branch("dev")
    stale = repo.checkout(write=True)  # main, nothing staged
    try:
        repo.force_release_writer_lock()
        with repo.checkout(write=True, branch="dev") as other:  # the staging area is dev's now
            with pytest.raises(tc.ConcurrentUpdateError, match="staging area changed"):
                stale.add_str_column("s")
            with pytest.raises(tc.ConcurrentUpdateError, match="open a new one"):
                stale.delete_column("labels")
            assert other.diff().columns == {}  # the stale writer staged nothing
    finally:
        stale.close()


def test_staged_changes_on_a_base_the_branch_left_raise_concurrent_update(
    repo: tc.Repository,
) -> None:
    first = _labels(repo, {0: 1})
    second = _labels(repo, {0: 2})
    with repo.checkout(write=True) as co:
        co["labels"][1] = np.int64(3)  # staged on `second`
    # No public call moves a branch under staged changes (commits and merges keep
    # them in step); an older version or a restored backup can: move it directly.
    assert repo._parts.refs.set_if_equals("heads/main", second, first)
    with pytest.raises(tc.ConcurrentUpdateError, match="now points at " + first):
        repo.checkout(write=True)


def test_branch_moved_while_being_deleted_raises_concurrent_update(
    repo: tc.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    _labels(repo, {0: 1})
    repo.create_branch("dev")
    real = repository_module.ancestors

    def commit_to_dev_meanwhile(history: Any, start: str) -> set[str]:
        # another process commits to dev while delete_branch checks it is merged
        monkeypatch.setattr(repository_module, "ancestors", real)
        with repo.checkout(write=True, branch="dev") as co:
            co["labels"][1] = np.int64(2)
            co.commit("meanwhile")
        return real(history, start)

    monkeypatch.setattr(repository_module, "ancestors", commit_to_dev_meanwhile)
    with pytest.raises(tc.ConcurrentUpdateError, match="'dev' moved while being deleted"):
        repo.delete_branch("dev")  # merged into main: checked by walking main
    assert repo.log("dev")[0].message == "meanwhile"  # nothing was deleted


# -- a duplicate column is a SchemaError (still a ValueError) ------------------------------


def test_adding_an_existing_column_raises_schema_error(repo: tc.Repository) -> None:
    with repo.checkout(write=True) as co:
        co.add_str_column("s")["k"] = "v"
        for add in (co.add_str_column, co.add_bytes_column):
            with pytest.raises(tc.SchemaError, match="'s' already exists") as info:
                add("s")
            assert isinstance(info.value, ValueError)
            assert "co.delete_column('s')" in str(info.value)
        assert co["s"]["k"] == "v"


# -- the on-disk names, defined once in tensorcask.layout ----------------------------------


def test_layout_names_are_the_files_a_repository_has(repo: tc.Repository) -> None:
    # these names are the repository format: renaming one orphans existing repositories
    assert (layout.FORMAT_FILE, layout.META_DIR, layout.DATA_DIR, layout.INDEX_DIR) == (
        "TENSORCASK",
        "meta",
        "data",
        "index",
    )
    assert (layout.CACHE_DIR, layout.WRITER_LOCK_FILE) == ("cache", "writer.lock")
    _labels(repo, {i: i for i in range(4)})
    names = {p.name for p in repo.path.iterdir()}
    made = {layout.FORMAT_FILE, layout.META_DIR, layout.DATA_DIR, layout.WRITER_LOCK_FILE}
    assert made <= names <= made | {layout.INDEX_DIR, layout.CACHE_DIR}  # those two on demand
    meta = repo.path / layout.META_DIR
    assert (meta / layout.LMDB_DATA_FILE).is_file() and (meta / layout.LMDB_LOCK_FILE).is_file()
    assert (repo.path / layout.FORMAT_FILE).read_text().startswith("tensorcask repository\n")
