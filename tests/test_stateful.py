"""A Hypothesis state machine: one repository against a pure-Python model.

The model is two dicts per state (an int64 (3,) column "arr" and a str column
"txt"): the staged view of the write checkout, its base commit, and a
snapshot for every commit made. Rules write (single, batched, buffered),
delete, commit, reset, and close and reopen the writer; the checks compare
the write checkout with the staged view after every step, and any recorded
commit, read through a read checkout, with its snapshot.

Commit and "nothing to commit" (SPEC §2 leaves the edge open, git refuses an
empty commit): with no write or deletion since the last commit or reset the
library must refuse; with a staged view that differs from the base it must
commit. When writes happened but the view equals the base again (a value
rewritten as it was, a key added then deleted) either answer is accepted,
and a commit made then must hold exactly the base contents.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import tensorcask as tc

# A small pool so that writes, overwrites and deletions collide; 1 and "1"
# are different keys.
KEYS: list[Any] = [0, 1, 2, 10, 255, 2**40, "0", "1", "a", "b", "zz"]
COLUMNS = ("arr", "txt")

keys = st.sampled_from(KEYS)
arrays = st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), min_size=3, max_size=3).map(
    lambda xs: np.array(xs, dtype=np.int64)
)
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
columns = st.sampled_from(COLUMNS)

View = dict[str, dict[Any, Any]]


def key_order(key: Any) -> tuple[bool, Any]:
    return (isinstance(key, str), key)


def copy_view(view: View) -> View:
    return {name: dict(samples) for name, samples in view.items()}


def same_value(got: Any, want: Any) -> bool:
    if isinstance(want, np.ndarray):
        return (
            isinstance(got, np.ndarray)
            and got.dtype == np.int64
            and got.shape == (3,)
            and got.tobytes() == want.tobytes()
        )
    return type(got) is str and got == want


def views_equal(a: View, b: View) -> bool:
    for name in COLUMNS:
        if a[name].keys() != b[name].keys():
            return False
        if not all(same_value(a[name][k], v) for k, v in b[name].items()):
            return False
    return True


def assert_checkout_matches(co: Any, view: View, what: str) -> None:
    assert sorted(co.columns) == sorted(COLUMNS), f"{what}: columns {sorted(co.columns)}"
    for name in COLUMNS:
        col = co[name]
        expected = view[name]
        want_keys = sorted(expected, key=key_order)
        got_keys = col.keys()
        assert got_keys == want_keys, f"{what}: {name}.keys() is {got_keys}, expected {want_keys}"
        assert list(col) == want_keys, f"{what}: iter({name})"
        assert len(col) == len(expected), f"{what}: len({name}) is {len(col)}"
        for key in KEYS:
            assert (key in col) == (key in expected), f"{what}: {key!r} in {name}"
        for key in want_keys:
            got = col[key]
            assert same_value(got, expected[key]), (
                f"{what}: {name}[{key!r}] is {got!r}, expected {expected[key]!r}"
            )
        if want_keys:
            batch = col.get_many(want_keys)
            if name == "arr":
                assert batch.shape == (len(want_keys), 3) and batch.dtype == np.int64
                want = np.stack([expected[k] for k in want_keys])
                assert batch.tobytes() == want.tobytes(), f"{what}: {name}.get_many"
            else:
                assert batch == [expected[k] for k in want_keys], f"{what}: {name}.get_many"


class RepositoryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="tc-stateful-"))
        self.repo = tc.init(self.tmp / "repo", user_name="Ada", user_email="ada@example.org")
        self.co: Any = self.repo.checkout(write=True)
        self.co.add_ndarray_column("arr", shape=(3,), dtype="int64")
        self.co.add_str_column("txt")
        first = self.co.commit("columns")
        empty: View = {name: {} for name in COLUMNS}
        self.snapshots: dict[str, View] = {first: copy_view(empty)}
        self.order: list[str] = [first]
        self.base: View = copy_view(empty)
        self.staged: View = copy_view(empty)
        self.touched = False  # any write or deletion since the last commit or reset

    def teardown(self) -> None:
        try:
            self.co.close()
            self.repo.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _value(self, column: str, data: st.DataObject) -> Any:
        return data.draw(arrays if column == "arr" else texts)

    # -- writes ----------------------------------------------------------

    @rule(column=columns, key=keys, data=st.data())
    def write_one(self, column: str, key: Any, data: st.DataObject) -> None:
        value = self._value(column, data)
        self.co[column][key] = value
        self.staged[column][key] = value
        self.touched = True

    @rule(
        column=columns,
        batch_keys=st.lists(keys, min_size=1, max_size=6, unique=True),
        as_mapping=st.booleans(),
        data=st.data(),
    )
    def write_batch(
        self, column: str, batch_keys: list[Any], as_mapping: bool, data: st.DataObject
    ) -> None:
        values = [self._value(column, data) for _ in batch_keys]
        col = self.co[column]
        if as_mapping:
            col.update(dict(zip(batch_keys, values, strict=True)))
        elif column == "arr":
            col.update(batch_keys, np.stack(values))
        else:
            col.update(batch_keys, values)
        self.staged[column].update(zip(batch_keys, values, strict=True))
        self.touched = True

    @rule(
        column=columns,
        items=st.lists(keys, min_size=1, max_size=5),
        data=st.data(),
    )
    def write_buffered(self, column: str, items: list[Any], data: st.DataObject) -> None:
        """Single writes inside ``with column:`` (buffered, flushed at exit); repeats allowed."""
        col = self.co[column]
        with col:
            for key in items:
                value = self._value(column, data)
                col[key] = value
                self.staged[column][key] = value
        self.touched = True

    @rule(column=columns, key=keys)
    def delete(self, column: str, key: Any) -> None:
        col = self.co[column]
        if key in self.staged[column]:
            del col[key]
            del self.staged[column][key]
            self.touched = True
        else:
            with pytest.raises(KeyError):
                del col[key]

    # -- commit, reset, reopen -------------------------------------------

    @rule()
    def commit(self) -> None:
        message = f"commit {len(self.order)}"
        differs = not views_equal(self.staged, self.base)
        if not self.touched:
            with pytest.raises(tc.CaskError, match="nothing to commit"):
                self.co.commit(message)
            return
        try:
            cid = self.co.commit(message)
        except tc.CaskError as err:
            if differs or "nothing to commit" not in str(err):
                raise
            self.touched = False  # the library found no staged edit: accepted
            return
        assert isinstance(cid, str) and len(cid) == 40, cid
        assert cid not in self.snapshots, f"commit id {cid} reused"
        log = self.repo.log(limit=2)
        assert log[0].id == cid and log[0].message == message
        assert tuple(log[0].parents) == (self.order[-1],)
        self.snapshots[cid] = copy_view(self.staged)
        self.order.append(cid)
        self.base = copy_view(self.staged)
        self.touched = False

    @rule()
    def reset(self) -> None:
        self.co.reset_staging_area()
        self.staged = copy_view(self.base)
        self.touched = False

    @rule(reopen_repository=st.booleans())
    def reopen_writer(self, reopen_repository: bool) -> None:
        """Staged changes survive closing the writer (and the repository object)."""
        self.co.close()
        with pytest.raises(tc.CheckoutClosedError):
            self.co["arr"].keys()
        if reopen_repository:
            self.repo.close()
            self.repo = tc.Repository(self.tmp / "repo")
        self.co = self.repo.checkout(write=True)

    # -- checks ----------------------------------------------------------

    @precondition(lambda self: len(self.order) > 0)
    @rule(data=st.data())
    def check_recorded_commit(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(self.order), label="commit")
        with self.repo.checkout(commit=cid) as rc:
            assert rc.commit_id == cid
            assert_checkout_matches(rc, self.snapshots[cid], f"commit {cid}")
        assert [c.id for c in self.repo.log()] == self.order[::-1]

    @invariant()
    def writer_shows_staged_view(self) -> None:
        assert_checkout_matches(self.co, self.staged, "write checkout")


RepositoryMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRepositoryMachine = RepositoryMachine.TestCase
