"""A Hypothesis state machine: branches, commits and merges against a pure-Python model.

The model keeps, per branch, its head commit id, and per commit a snapshot
``{column: {key: value}}`` and its parents; commit ids come from the library.
Columns are an int64 scalar column "x" and a str column "s"; keys come from a
small pool of ints and strs (``1`` and ``"1"`` are different keys) and values
from small pools, so that both sides of a merge touch the same keys, often in
the same way.

A merge is predicted from the model alone, with the rules documented in
``tensorcask/history/merge.py``: already merged when the source is an
ancestor of the target, a fast-forward when the target is an ancestor of the
source, else a three-way merge against the best common ancestor with the
smallest id, where a key changed on both sides in different ways is a
conflict (``both_added``, ``both_changed`` or ``changed_deleted``). Expected
conflicts must raise MergeConflictError with exactly that set and write
nothing; otherwise the merge commit must hold the predicted snapshot.

Commit times come from a deterministic clock (patched into
``tensorcask.history.store``), so ids, and with them the merge base of a
criss-cross history, are the same on every replay. Besides single writes,
deletions, commits and merges, composite rules commit on two branches and
merge them (sometimes both ways, making criss-cross histories), so that most
examples reach real three-way merges.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import tensorcask as tc
import tensorcask.history.store as history_store

KEYS: list[Any] = [0, 1, 2, "0", "1", "a"]
COLUMNS = ("x", "s")
BRANCHES = ["main", "b1", "b2", "b3"]

keys = st.sampled_from(KEYS)
columns = st.sampled_from(COLUMNS)
VALUES = {"x": st.integers(min_value=-1, max_value=2), "s": st.sampled_from(["p", "q", "r"])}

Snapshot = dict[str, dict[Any, Any]]


def key_order(key: Any) -> tuple[bool, Any]:
    return (isinstance(key, str), key)


def copy_snapshot(snap: Snapshot) -> Snapshot:
    return {name: dict(samples) for name, samples in snap.items()}


def read_checkout(co: Any) -> Snapshot:
    """What a checkout holds, as plain Python values (checking types on the way)."""
    out: Snapshot = {}
    assert sorted(co.columns) == sorted(COLUMNS)
    for name in COLUMNS:
        col = co[name]
        samples = {}
        for key in col:
            value = col[key]
            if name == "x":
                assert isinstance(value, np.ndarray) and value.dtype == np.int64, value
                assert value.shape == ()
                samples[key] = int(value)
            else:
                assert type(value) is str, value
                samples[key] = value
        assert col.keys() == sorted(samples, key=key_order)
        out[name] = samples
    return out


def three_way(base: Snapshot, ours: Snapshot, theirs: Snapshot) -> tuple[Snapshot, set]:
    """The merged snapshot and the set of (column, key, kind) conflicts."""
    merged: Snapshot = {}
    conflicts: set[tuple[str, Any, str]] = set()
    for name in COLUMNS:
        b, o, t = base[name], ours[name], theirs[name]
        result: dict[Any, Any] = {}
        for key in set(b) | set(o) | set(t):
            bv, ov, tv = b.get(key), o.get(key), t.get(key)
            if ov == tv or tv == bv:
                value = ov
            elif ov == bv:
                value = tv
            else:
                if bv is None:
                    kind = "both_added"
                elif ov is None or tv is None:
                    kind = "changed_deleted"
                else:
                    kind = "both_changed"
                conflicts.add((name, key, kind))
                continue
            if value is not None:
                result[key] = value
        merged[name] = result
    return merged, conflicts


class HistoryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # A deterministic clock makes commit ids, and so the merge base among several
        # best common ancestors (the smallest id), the same on every replay.
        clock = itertools.count(1_700_000_000_000_000_000, 1_000_000_000)
        self._real_time = history_store.time
        history_store.time = types.SimpleNamespace(time_ns=lambda: next(clock))
        self.tmp = Path(tempfile.mkdtemp(prefix="tc-history-"))
        self.repo = tc.init(self.tmp / "repo", user_name="Ada", user_email="ada@example.org")
        self.co: Any = self.repo.checkout(write=True)
        self.co.add_ndarray_column("x", shape=(), dtype="int64")
        self.co.add_str_column("s")
        first = self.co.commit("columns")
        empty: Snapshot = {name: {} for name in COLUMNS}
        self.snapshots: dict[str, Snapshot] = {first: copy_snapshot(empty)}
        self.parents: dict[str, tuple[str, ...]] = {first: ()}
        self.order: list[str] = [first]
        self.heads: dict[str, str] = {"main": first}
        self.branch = "main"  # the write checkout's branch
        self.base: Snapshot = copy_snapshot(empty)
        self.staged: Snapshot = copy_snapshot(empty)
        self.touched = False  # any write or deletion since the last commit or reset
        self.rotation = 0
        self.counter = 0

    def teardown(self) -> None:
        event(f"commits made: {min(len(self.order) // 5 * 5, 20)}+")
        try:
            self.co.close()
            self.repo.close()
        finally:
            history_store.time = self._real_time
            shutil.rmtree(self.tmp, ignore_errors=True)

    @initialize(
        x=st.dictionaries(keys, VALUES["x"], max_size=4),
        s=st.dictionaries(keys, VALUES["s"], max_size=4),
    )
    def first_samples(self, x: dict[Any, int], s: dict[Any, str]) -> None:
        """Start from some samples, so that changes and deletions can conflict early."""
        for key, value in x.items():
            self.write_value("x", key, value)
        for key, value in s.items():
            self.write_value("s", key, value)
        if self.touched:
            self._commit()
        self.repo.create_branch("b1")
        self.heads["b1"] = self.heads["main"]

    # -- the model's graph ------------------------------------------------

    def ancestors(self, start: str) -> set[str]:
        seen = {start}
        stack = [start]
        while stack:
            for parent in self.parents[stack.pop()]:
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return seen

    def best_common_ancestors(self, a: str, b: str) -> set[str]:
        """Common ancestors that are not ancestors of another common ancestor."""
        common = self.ancestors(a) & self.ancestors(b)
        shadowed: set[str] = set()
        for c in common:
            shadowed |= self.ancestors(c) - {c}
        return common - shadowed

    def merge_base(self, a: str, b: str) -> str:
        return min(self.best_common_ancestors(a, b))  # the documented tie-break

    def _criss_cross(self, a: str, b: str) -> bool:
        return len(self.best_common_ancestors(a, b)) > 1

    def _message(self, what: str) -> str:
        self.counter += 1
        return f"{what} {self.counter}"

    def _reopen_writer(self) -> None:
        self.co.close()
        self.co = self.repo.checkout(write=True, branch=self.branch)
        assert self.co.commit_id == self.heads[self.branch]

    def _record(self, cid: str, snap: Snapshot, parents: tuple[str, ...]) -> None:
        assert isinstance(cid, str) and len(cid) == 40, cid
        assert cid not in self.snapshots, f"commit id {cid} reused"
        self.snapshots[cid] = copy_snapshot(snap)
        self.parents[cid] = parents
        self.order.append(cid)

    # -- writes ----------------------------------------------------------

    def write_value(self, column: str, key: Any, value: Any) -> None:
        self.co[column][key] = np.int64(value) if column == "x" else value
        self.staged[column][key] = value
        self.touched = True

    @rule(column=columns, key=keys, data=st.data())
    def write(self, column: str, key: Any, data: st.DataObject) -> None:
        self.write_value(column, key, data.draw(VALUES[column], label="value"))

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

    # -- commit, reset ----------------------------------------------------

    def _commit(self) -> None:
        message = self._message("commit")
        if not self.touched:
            with pytest.raises(tc.CaskError, match="nothing to commit"):
                self.co.commit(message)
            return
        try:
            cid = self.co.commit(message)
        except tc.CaskError as err:
            # accepted only when the staged view equals the base again
            if self.staged != self.base or "nothing to commit" not in str(err):
                raise
            self.touched = False
            return
        head = self.heads[self.branch]
        log = self.repo.log(self.branch, limit=1)
        assert log[0].id == cid and log[0].message == message
        assert log[0].parents == (head,)
        self._record(cid, self.staged, (head,))
        self.heads[self.branch] = cid
        self.base = copy_snapshot(self.staged)
        self.touched = False

    def _reset(self) -> None:
        self.co.reset_staging_area()
        self.staged = copy_snapshot(self.base)
        self.touched = False

    def _settle(self, data: st.DataObject) -> None:
        """Commit or reset whatever is staged."""
        if data.draw(st.booleans(), label="commit (else reset)"):
            self._commit()
        else:
            self._reset()

    @rule()
    def commit(self) -> None:
        self._commit()

    @rule()
    def reset(self) -> None:
        self._reset()

    # -- branches -----------------------------------------------------------

    @rule(name=st.sampled_from(BRANCHES), data=st.data())
    def create_branch(self, name: str, data: st.DataObject) -> None:
        source = data.draw(st.sampled_from(sorted(self.heads)), label="from")
        how = data.draw(st.sampled_from(["branch", "id", "prefix"]), label="base as")
        head = self.heads[source]
        ref = {"branch": source, "id": head, "prefix": head[:10]}[how]
        if name in self.heads:
            with pytest.raises(tc.CaskError, match=name):
                self.repo.create_branch(name, base=ref)
            return
        assert self.repo.create_branch(name, base=ref) == head
        self.heads[name] = head

    def _switch(self, target: str, data: st.DataObject) -> None:
        if target != self.branch and self.staged != self.base:
            # staged changes belong to their branch: a writer elsewhere is refused
            self.co.close()
            with pytest.raises(tc.CaskError, match="staged"):
                self.repo.checkout(write=True, branch=target)
            self.co = self.repo.checkout(write=True, branch=self.branch)
            assert read_checkout(self.co) == self.staged
        if target != self.branch and self.touched:
            self._settle(data)
        self.co.close()
        self.co = self.repo.checkout(write=True, branch=target)
        assert self.repo.current_branch == target
        if target != self.branch:
            self.branch = target
            self.base = copy_snapshot(self.snapshots[self.heads[target]])
            self.staged = copy_snapshot(self.base)
        assert self.co.commit_id == self.heads[target]

    @rule(data=st.data())
    def switch_branch(self, data: st.DataObject) -> None:
        self._switch(data.draw(st.sampled_from(sorted(self.heads)), label="target"), data)

    @rule(data=st.data())
    def work_on_a_branch(self, data: st.DataObject) -> None:
        """Switch to a branch, write or delete a few samples and commit: branches diverge."""
        self._work(data.draw(st.sampled_from(sorted(self.heads)), label="target"), data)

    @rule(data=st.data())
    def work_on_two_branches_and_merge(self, data: st.DataObject) -> None:
        """A commit on each of two branches, then a merge of one into the other."""
        names = sorted(self.heads)
        source = data.draw(st.sampled_from(names), label="source")
        into = data.draw(st.sampled_from([n for n in names if n != source]), label="into")
        self._work(source, data)
        self._work(into, data)
        old_into = self.heads[into]
        self._merge(source, into, data)
        if data.draw(st.booleans(), label="criss-cross"):
            # and the other way, from the head ``into`` had before: a criss-cross
            self._merge(None, source, data, commit=old_into)

    def _work(self, target: str, data: st.DataObject) -> None:
        self._switch(target, data)
        for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="edits")):
            column, key = data.draw(columns, label="column"), data.draw(keys, label="key")
            if key in self.staged[column] and data.draw(st.booleans(), label="delete"):
                self.delete(column, key)
            else:
                self.write(column, key, data)
        self._commit()

    # -- merge ------------------------------------------------------------

    def diverged(self) -> list[tuple[str, str]]:
        """(source, into) pairs that need a three-way merge."""
        names = sorted(self.heads)
        return [
            (a, b)
            for a in names
            for b in names
            if self.heads[a] not in self.ancestors(self.heads[b])
            and self.heads[b] not in self.ancestors(self.heads[a])
        ]

    @rule(data=st.data())
    def merge(self, data: st.DataObject) -> None:
        names = sorted(self.heads)
        pairs = [(a, b) for a in names for b in names]
        self._merge(*data.draw(st.sampled_from(pairs), label="source, into"), data)

    @precondition(lambda self: bool(self.diverged()))
    @rule(data=st.data())
    def merge_diverged(self, data: st.DataObject) -> None:
        self._merge(*data.draw(st.sampled_from(self.diverged()), label="source, into"), data)

    def _merge(
        self, source: str | None, into: str, data: st.DataObject, commit: str | None = None
    ) -> None:
        """Merge branch ``source`` (or the commit ``commit``) into branch ``into``."""
        by_name = commit is None and data.draw(st.booleans(), label="source by name")
        if into == self.branch and self.touched:
            self._settle(data)
        ours = self.heads[into]
        theirs = commit if commit is not None else self.heads[str(source)]
        source_ref = str(source) if by_name else theirs
        message = self._message("merge") if data.draw(st.booleans(), label="message") else None
        self.co.close()  # a merge takes the writer lock
        before = self.repo.branches
        if theirs in self.ancestors(ours):
            event("merge: already merged")
            assert self.repo.merge(source_ref, into=into, message=message) == ours
            assert self.repo.branches == before
        elif ours in self.ancestors(theirs):
            event("merge: fast-forward")
            assert self.repo.merge(source_ref, into=into, message=message) == theirs
            self.heads[into] = theirs
        else:
            base = self.merge_base(ours, theirs)
            merged, conflicts = three_way(
                self.snapshots[base], self.snapshots[ours], self.snapshots[theirs]
            )
            event("merge: criss-cross" if self._criss_cross(ours, theirs) else "merge: three-way")
            if conflicts:
                event("merge: conflicts")
                event(f"merge: conflict kinds {sorted({kind for _, _, kind in conflicts})}")
                with pytest.raises(tc.MergeConflictError) as info:
                    self.repo.merge(source_ref, into=into, message=message)
                got = {(c.column, c.key, c.kind) for c in info.value.conflicts}
                assert got == conflicts, f"base {base[:8]}: got {got}, expected {conflicts}"
                assert len(info.value.conflicts) == len(conflicts)
                assert self.repo.branches == before
            else:
                cid = self.repo.merge(source_ref, into=into, message=message)
                head = self.repo.log(into, limit=1)[0]
                assert head.id == cid
                assert head.parents == (ours, theirs)
                if message is not None:
                    assert head.message == message
                self._record(cid, merged, (ours, theirs))
                self.heads[into] = cid
                with self.repo.checkout(commit=cid) as rc:
                    assert read_checkout(rc) == merged, f"merge with base {base[:8]}"
        assert self.repo.branches == self.heads
        if into == self.branch:
            self.base = copy_snapshot(self.snapshots[self.heads[into]])
            self.staged = copy_snapshot(self.base)
        self._reopen_writer()

    # -- checks ----------------------------------------------------------

    @rule(data=st.data())
    def check_random_commit(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(self.order), label="commit")
        with self.repo.checkout(commit=cid) as rc:
            assert rc.commit_id == cid
            assert read_checkout(rc) == self.snapshots[cid], f"commit {cid}"
        log = self.repo.log(cid)
        ids = [c.id for c in log]
        assert len(ids) == len(set(ids)), "a commit listed twice"
        assert set(ids) == self.ancestors(cid)
        assert all(c.parents == self.parents[c.id] for c in log)

    @invariant()
    def branches_match_the_model(self) -> None:
        assert self.repo.branches == self.heads
        assert self.repo.current_branch == self.branch

    @invariant()
    def a_recorded_commit_reads_back(self) -> None:
        """Each step checks the next recorded commit in turn, through a read checkout."""
        cid = self.order[self.rotation % len(self.order)]
        self.rotation += 1
        with self.repo.checkout(commit=cid) as rc:
            assert read_checkout(rc) == self.snapshots[cid], f"commit {cid}"

    @invariant()
    def writer_shows_staged_view(self) -> None:
        assert self.co.branch == self.branch
        assert read_checkout(self.co) == self.staged


HistoryMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
TestHistoryMachine = HistoryMachine.TestCase
