"""History: refs, diff and merge through the public API (SPEC §2, history/merge.py rules).

The merge rules under test are those documented in ``tensorcask/history/merge.py``:
the merge base comes from the commit graph (the smallest id among the best
common ancestors), identical changes on both sides merge cleanly, and every
other change made on both sides is a conflict, reported all at once, with
nothing written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tensorcask as tc
import tensorcask.history.store as history_store

BASE: dict[str, dict[Any, Any]] = {
    "x": {0: 0, 1: 1, 2: 2, "a": 10, "1": 11},
    "s": {0: "zero", "k": "kay", "m": "em"},
}

Op = Callable[[tc.WriteCheckout], None]


# -- helpers ---------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.item() if value.shape == () else value.tolist()
    return value


def snapshot(repo: tc.Repository, ref: str) -> dict[str, dict[Any, Any]]:
    """Every column of commit ``ref`` as ``{column: {key: plain value}}``."""
    with repo.checkout(commit=ref) as co:
        return {name: {k: _plain(v) for k, v in co[name].items()} for name in co.columns}


def dtypes(repo: tc.Repository, ref: str) -> dict[str, Any]:
    with repo.checkout(commit=ref) as co:
        return {name: (co[name].kind, co[name].dtype) for name in co.columns}


def write_value(col: tc.Column, key: Any, value: Any) -> None:
    col[key] = np.asarray(value, dtype=col.dtype) if col.kind == "ndarray" else value


def put(column: str, values: dict[Any, Any]) -> Op:
    def op(co: tc.WriteCheckout) -> None:
        for key, value in values.items():
            write_value(co[column], key, value)

    return op


def drop(column: str, *keys: Any) -> Op:
    def op(co: tc.WriteCheckout) -> None:
        for key in keys:
            del co[column][key]

    return op


def drop_column(column: str) -> Op:
    def op(co: tc.WriteCheckout) -> None:
        co.delete_column(column)

    return op


def add_column(column: str, dtype: str | None, values: dict[Any, Any]) -> Op:
    """Create ``column`` (``dtype`` None: a str column) holding ``values``."""

    def op(co: tc.WriteCheckout) -> None:
        col = (
            co.add_str_column(column) if dtype is None else co.add_ndarray_column(column, (), dtype)
        )
        for key, value in values.items():
            write_value(col, key, value)

    return op


def recreate(column: str, dtype: str | None, values: dict[Any, Any]) -> Op:
    """Delete ``column`` and add it again with another schema."""
    first, second = drop_column(column), add_column(column, dtype, values)

    def op(co: tc.WriteCheckout) -> None:
        first(co)
        second(co)

    return op


def commit_on(repo: tc.Repository, branch: str, *ops: Op, message: str = "change") -> str:
    with repo.checkout(write=True, branch=branch) as co:
        for op in ops:
            op(co)
        return co.commit(message)


def make_base(repo: tc.Repository) -> str:
    """``main`` with the int64 scalar column x and the str column s of BASE."""
    return commit_on(
        repo,
        "main",
        add_column("x", "int64", BASE["x"]),
        add_column("s", None, BASE["s"]),
        message="base",
    )


def fork(repo: tc.Repository, ours: list[Op], theirs: list[Op]) -> tuple[str, str, str]:
    """Base commit on main, ``dev`` from it; ``ours`` committed on main, ``theirs`` on dev."""
    base = make_base(repo)
    repo.create_branch("dev", base=base)
    main_head = commit_on(repo, "main", *ours, message="ours") if ours else base
    dev_head = commit_on(repo, "dev", *theirs, message="theirs") if theirs else base
    return base, main_head, dev_head


def all_commits(repo: tc.Repository) -> set[str]:
    """Every commit the repository can resolve, found by trying every 4-hex-digit prefix."""
    found: set[str] = set()

    def visit(prefix: str) -> None:
        try:
            found.add(repo.resolve(prefix))
        except tc.AmbiguousRefError:
            for digit in "0123456789abcdef":
                visit(prefix + digit)
        except tc.RefNotFoundError:
            pass

    for n in range(16**4):
        visit(f"{n:04x}")
    return found


def history_state(repo: tc.Repository) -> tuple[Any, ...]:
    """What a failed operation must leave untouched (cheap: without all_commits)."""
    return (
        repo.branches,
        repo.tags,
        repo.current_branch,
        {branch: [c.id for c in repo.log(branch)] for branch in repo.branches},
        [c.id for c in repo.log()],
    )


def conflict_set(err: tc.MergeConflictError) -> set[tuple[str, Any, str]]:
    return {(c.column, c.key, c.kind) for c in err.conflicts}


class Clock:
    """A settable stand-in for ``time`` in tensorcask.history.store."""

    def __init__(self, start_s: float = 1_600_000_000) -> None:
        self.ns = int(start_s * 1e9)

    def set(self, seconds: float) -> None:
        self.ns = int(seconds * 1e9)

    def time_ns(self) -> int:
        self.ns += 1_000_000_000
        return self.ns


def use_clock(monkeypatch: pytest.MonkeyPatch, clock: Clock | None = None) -> Clock:
    clock = clock or Clock()
    monkeypatch.setattr(history_store, "time", clock)
    return clock


# -- refs ------------------------------------------------------------------------------------


def test_create_branch_from_branch_tag_id_and_prefix(repo):
    first = make_base(repo)
    second = commit_on(repo, "main", put("x", {5: 5}))
    repo.create_tag("v1", first)
    assert repo.create_branch("from-branch", base="main") == second
    assert repo.create_branch("from-default") == second
    assert repo.create_branch("from-tag", base="v1") == first
    assert repo.create_branch("from-id", base=first) == first
    assert repo.create_branch("from-prefix", base=first[:6]) == first
    assert repo.create_branch("from-upper-prefix", base=second[:9].upper()) == second
    assert repo.create_branch("from-other-branch", base="from-tag") == first
    assert repo.branches == {
        "main": second,
        "from-branch": second,
        "from-default": second,
        "from-tag": first,
        "from-id": first,
        "from-prefix": first,
        "from-upper-prefix": second,
        "from-other-branch": first,
    }
    with pytest.raises(tc.RefNotFoundError):
        repo.create_branch("bad", base="no-such-ref")
    with pytest.raises(tc.CaskError, match="from-tag"):
        repo.create_branch("from-tag", base=second)
    assert repo.branches["from-tag"] == first
    assert "bad" not in repo.branches


def test_write_checkouts_on_any_branch(repo):
    base = make_base(repo)
    repo.create_branch("dev")
    repo.create_branch("exp")
    heads: dict[str, list[str]] = {"main": [base], "dev": [base], "exp": [base]}
    for i, branch in enumerate(["dev", "exp", "main", "dev"]):
        with repo.checkout(write=True, branch=branch) as co:
            assert co.branch == branch
            assert co.commit_id == repo.branches[branch]
            co["x"][f"{branch}{i}"] = np.int64(i)
            heads[branch].insert(0, co.commit(f"{branch} {i}"))
        assert repo.current_branch == branch
        assert repo.branches[branch] == heads[branch][0]
    with repo.checkout(write=True) as co:  # the current branch: dev
        assert co.branch == "dev"
    assert snapshot(repo, "dev")["x"] == {**BASE["x"], "dev0": 0, "dev3": 3}
    assert snapshot(repo, "exp")["x"] == {**BASE["x"], "exp1": 1}
    assert snapshot(repo, "main")["x"] == {**BASE["x"], "main2": 2}
    for branch, ids in heads.items():
        assert [c.id for c in repo.log(branch)] == ids
    with pytest.raises(tc.CaskError, match="nope"):
        repo.checkout(write=True, branch="nope")
    assert "nope" not in repo.branches


def test_delete_unmerged_branch_needs_force(repo):
    base = make_base(repo)
    repo.create_branch("at-base")
    repo.create_branch("feature")
    repo.create_branch("doomed")
    feature = commit_on(repo, "feature", put("x", {7: 7}))
    doomed = commit_on(repo, "doomed", put("x", {8: 8}))
    commit_on(repo, "main", put("x", {9: 9}))  # makes main current again
    assert repo.delete_branch("at-base") == base  # reachable from main: nothing lost
    with pytest.raises(tc.CaskError, match="feature"):
        repo.delete_branch("feature")
    assert repo.branches["feature"] == feature
    repo.merge("feature", into="main")
    assert repo.delete_branch("feature") == feature  # merged now
    with pytest.raises(tc.CaskError, match="force"):
        repo.delete_branch("doomed")
    assert repo.delete_branch("doomed", force=True) == doomed
    assert set(repo.branches) == {"main"}
    with pytest.raises(tc.RefNotFoundError):
        repo.delete_branch("doomed")
    assert snapshot(repo, doomed)["x"][8] == 8  # the commit itself stays readable by id


def test_deleting_the_current_branch_is_refused(repo):
    make_base(repo)
    repo.create_branch("dev")
    head = commit_on(repo, "dev", put("x", {3: 3}))
    assert repo.current_branch == "dev"
    for force in (False, True):
        with pytest.raises(tc.CaskError, match="dev"):
            repo.delete_branch("dev", force=force)
    assert repo.branches["dev"] == head
    with repo.checkout(write=True, branch="main"):
        pass
    assert repo.delete_branch("dev", force=True) == head


def test_tags_are_immutable(repo):
    first = make_base(repo)
    second = commit_on(repo, "main", put("x", {5: 5}))
    assert repo.create_tag("v1", first[:8]) == first
    assert repo.create_tag("v2", "main") == second
    with pytest.raises(tc.CaskError, match="v1"):
        repo.create_tag("v1", second)
    with pytest.raises(tc.CaskError, match="v1"):
        repo.create_tag("v1", first)  # even to the same commit: a tag is created once
    third = commit_on(repo, "main", put("x", {6: 6}))
    repo.merge(third, into="main")
    assert repo.tags == {"v1": first, "v2": second}
    assert repo.resolve("v2") == second
    assert snapshot(repo, "v2")["x"] == {**BASE["x"], 5: 5}
    with pytest.raises(tc.RefNotFoundError):
        repo.create_tag("v3", "no-such-ref")
    assert "v3" not in repo.tags


def test_resolve_branches_tags_ids_and_prefixes(repo):
    first = make_base(repo)
    second = commit_on(repo, "main", put("x", {5: 5}))
    repo.create_branch("dev", base=first)
    repo.create_tag("t", second)
    assert repo.resolve("main") == second
    assert repo.resolve("dev") == first
    assert repo.resolve("t") == second
    for cid in (first, second):
        assert repo.resolve(cid) == cid
        assert repo.resolve(cid.upper()) == cid
        for n in (4, 7, 20, 39):
            assert repo.resolve(cid[:n]) == cid
            assert repo.resolve(cid[:n].upper()) == cid
    for bad in ("nope", "0" * 40, first[:3], "", "ghij", first + "0"):
        with pytest.raises(tc.RefNotFoundError) as info:
            repo.resolve(bad)
        assert isinstance(info.value, KeyError)
    # a name that looks like a commit prefix is refused: it would hide the commit
    with pytest.raises(ValueError, match="hex digits"):
        repo.create_branch(second[:6], base=first)
    assert repo.resolve(second[:6]) == second


def test_ambiguous_prefix(repo, monkeypatch):
    use_clock(monkeypatch)
    seen: dict[str, str] = {}
    pair = None
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("n", (), "int64")
        for i in range(4000):
            col[0] = np.int64(i)
            cid = co.commit(f"commit {i}")
            if cid[:4] in seen:
                pair = (seen[cid[:4]], cid)
                break
            seen[cid[:4]] = cid
    assert pair is not None
    a, b = pair
    common = next(i for i in range(40) if a[i] != b[i])
    with pytest.raises(tc.AmbiguousRefError) as info:
        repo.resolve(a[:common])
    assert isinstance(info.value, KeyError)
    assert a[:common] in str(info.value)
    for ref_user in (repo.create_branch, repo.create_tag):
        with pytest.raises(tc.AmbiguousRefError):
            ref_user("x", a[:4])
    with pytest.raises(tc.AmbiguousRefError):
        repo.merge(a[:4], into="main")
    assert repo.resolve(a[: common + 1]) == a
    assert repo.resolve(b[: common + 1]) == b


def test_read_checkout_stays_pinned_through_commits_and_merges(repo):
    base = make_base(repo)
    repo.create_branch("dev")
    repo.create_branch("ff")
    pinned = repo.checkout(commit=base[:8])
    pinned_branch = repo.checkout(branch="dev")
    try:
        commit_on(repo, "main", put("x", {1: 100}), drop("s", "k"))
        commit_on(repo, "dev", put("x", {2: 200}), drop("s", "m"))
        commit_on(repo, "ff", put("x", {"new": 1}), add_column("z", "float32", {0: 1.5}))
        repo.merge("dev", into="main")
        repo.merge("main", into="ff")
        commit_on(repo, "ff", recreate("x", None, {0: "now a str"}))
        repo.merge("ff", into="main")  # fast-forward
        repo.merge("main", into="dev")  # fast-forward
        for co in (pinned, pinned_branch):
            assert co.commit_id == base
            assert sorted(co.columns) == ["s", "x"]
            assert co["x"].dtype == np.dtype("int64")
            assert {k: _plain(v) for k, v in co["x"].items()} == BASE["x"]
            assert {k: _plain(v) for k, v in co["s"].items()} == BASE["s"]
            assert co["x"].get_many([0, 1, 2]).tolist() == [0, 1, 2]
            assert len(co["s"]) == len(BASE["s"])
    finally:
        pinned.close()
        pinned_branch.close()
    assert snapshot(repo, "main") == {"x": {0: "now a str"}, "s": {0: "zero"}, "z": {0: 1.5}}


# -- diff ------------------------------------------------------------------------------------


def test_diff_reports_added_removed_and_changed_keys_per_column(repo):
    a = make_base(repo)
    b = commit_on(
        repo,
        "main",
        put("x", {5: 50, 1: 100, "1": 11}),  # "1" rewritten with its old value: no change
        drop("x", 2),
        put("s", {"k": "changed", "new": "n"}),
        drop("s", 0, "m"),
    )
    d = repo.diff(a, b)
    assert isinstance(d, tc.Diff)
    assert d
    assert set(d.columns) == {"x", "s"}
    assert all(isinstance(c, tc.ColumnDiff) for c in d.columns.values())
    assert d.columns["x"].added == {5}
    assert d.columns["x"].removed == {2}
    assert d.columns["x"].changed == {1}
    assert d.columns["s"].added == {"new"}
    assert d.columns["s"].removed == {0, "m"}
    assert d.columns["s"].changed == {"k"}
    assert d.added_columns == set() and d.removed_columns == set() and d.schema_changed == set()
    # any refs: branch, tag, prefix
    repo.create_tag("before", a)
    assert repo.diff("before", "main") == d
    assert repo.diff(a[:5], b[:5]) == d
    with pytest.raises(tc.RefNotFoundError):
        repo.diff("before", "no-such-ref")


def test_diff_added_and_removed_columns(repo):
    a = make_base(repo)
    b = commit_on(repo, "main", drop_column("s"), add_column("new", None, {1: "one", "two": "2"}))
    d = repo.diff(a, b)
    assert d.added_columns == {"new"}
    assert d.removed_columns == {"s"}
    assert d.schema_changed == set()
    assert d.columns["new"].added == {1, "two"}
    assert not d.columns["new"].removed and not d.columns["new"].changed
    assert d.columns["s"].removed == set(BASE["s"])
    assert not d.columns["s"].added and not d.columns["s"].changed
    assert "x" not in d.columns
    empty = commit_on(repo, "main", add_column("empty", "int8", {}))
    d2 = repo.diff(b, empty)
    assert d2.added_columns == {"empty"}
    assert d2  # an added column is a change even without samples


def test_diff_schema_change(repo):
    a = make_base(repo)
    b = commit_on(repo, "main", recreate("x", "float64", {0: 0.0, 1: 1.5, "new": 2.0}))
    assert dtypes(repo, b)["x"] == ("ndarray", np.dtype("float64"))
    d = repo.diff(a, b)
    assert d.schema_changed == {"x"}
    assert d.added_columns == set() and d.removed_columns == set()
    assert "s" not in d.columns
    # records under a new dtype have new digests: every key still there changed
    assert d.columns["x"].added == {"new"}
    assert d.columns["x"].removed == {2, "a", "1"}
    assert d.columns["x"].changed == {0, 1}
    c = commit_on(repo, "main", recreate("x", None, {0: "str now"}))
    assert repo.diff(b, c).schema_changed == {"x"}
    assert repo.diff(a, c).schema_changed == {"x"}


def test_recreating_an_identical_column_is_no_change(repo):
    a = make_base(repo)
    b = commit_on(repo, "main", recreate("x", "int64", BASE["x"]))
    assert b != a
    assert not repo.diff(a, b)


def test_empty_diff_is_falsy(repo):
    a = make_base(repo)
    repo.create_tag("t", a)
    for left, right in [(a, a), ("main", "t"), (a[:4], "main")]:
        d = repo.diff(left, right)
        assert not d
        assert d.columns == {}
        assert not (d.added_columns or d.removed_columns or d.schema_changed)
    assert not tc.ColumnDiff()
    # a commit that changes nothing visible (a key written back with its old value)
    b = commit_on(repo, "main", put("x", {0: 0}))
    assert not repo.diff(a, b)


def test_diff_directions_are_mirror_images(repo):
    a = make_base(repo)
    commit_on(repo, "main", add_column("y", "int32", {1: 1}), add_column("gone", None, {"g": "g"}))
    b0 = repo.resolve("main")
    b = commit_on(
        repo,
        "main",
        put("x", {5: 5, 1: -1}),
        drop("x", 0),
        recreate("s", "int16", {"k": 3}),
        drop_column("gone"),
        add_column("z", None, {"z": "z"}),
    )
    for left, right in [(a, b), (b0, b), (a, b0)]:
        fwd, back = repo.diff(left, right), repo.diff(right, left)
        assert fwd and back
        assert fwd.added_columns == back.removed_columns
        assert fwd.removed_columns == back.added_columns
        assert fwd.schema_changed == back.schema_changed
        assert set(fwd.columns) == set(back.columns)
        for name, change in fwd.columns.items():
            assert change.added == back.columns[name].removed, name
            assert change.removed == back.columns[name].added, name
            assert change.changed == back.columns[name].changed, name
    d = repo.diff(b0, b)
    assert d.added_columns == {"z"} and d.removed_columns == {"gone"} and d.schema_changed == {"s"}
    assert d.columns["x"] == tc.ColumnDiff(frozenset({5}), frozenset({0}), frozenset({1}))


def test_checkout_diff_shows_staged_changes(repo):
    base = make_base(repo)
    with repo.checkout(write=True) as co:
        assert not co.diff()
        co["x"][5] = np.int64(50)
        co["x"][1] = np.int64(100)
        co["x"][0] = np.int64(0)  # written back unchanged
        co["x"]["tmp"] = np.int64(1)
        del co["x"]["tmp"]  # added then deleted: no change
        del co["x"][2]
        co.delete_column("s")
        co.add_str_column("t")["t"] = "tee"
        d = co.diff()
        assert d.columns["x"] == tc.ColumnDiff(frozenset({5}), frozenset({2}), frozenset({1}))
        assert d.added_columns == {"t"} and d.columns["t"].added == {"t"}
        assert d.removed_columns == {"s"} and d.columns["s"].removed == set(BASE["s"])
        assert d.schema_changed == set()
        # buffered writes inside `with col:` are part of the diff, inside the block too
        col = co["x"]
        with col:
            col[6] = np.int64(60)
            col["a"] = np.int64(-10)
            inside = co.diff()
            assert inside.columns["x"].added == {5, 6}
            assert inside.columns["x"].changed == {1, "a"}
        after = co.diff()
        assert after.columns["x"] == inside.columns["x"]
        cid = co.commit("staged")
        assert not co.diff()
        assert repo.diff(base, cid) == after
        co["x"][7] = np.int64(7)
        assert co.diff().columns["x"].added == {7}
        co.reset_staging_area()
        assert not co.diff()
    # staged changes survive closing the checkout, and so does their diff
    with repo.checkout(write=True) as co:
        co["x"][8] = np.int64(8)
    with repo.checkout(write=True) as co:
        assert co.diff().columns == {"x": tc.ColumnDiff(added=frozenset({8}))}


def test_checkout_diff_of_schema_change(repo):
    make_base(repo)
    with repo.checkout(write=True) as co:
        recreate("x", "uint8", {0: 0, 9: 9})(co)
        d = co.diff()
    assert d.schema_changed == {"x"}
    assert d.added_columns == set() and d.removed_columns == set()
    assert d.columns["x"].added == {9}


def test_diff_of_a_large_column_reports_exactly_the_changed_key(repo):
    n = 20_000
    keys = np.arange(n)
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("big", (), "int64").update(keys, keys * 3)
        co.add_str_column("names").update({i: f"n{i}" for i in range(0, n, 7)})
        a = co.commit("big")
        co["big"][12_345] = np.int64(-1)
        b = co.commit("one change")
        co["big"]["extra"] = np.int64(1)
        del co["big"][0]
        co["names"][7] = "seven"
        staged = co.diff()
    d = repo.diff(a, b)
    assert d.columns == {"big": tc.ColumnDiff(changed=frozenset({12_345}))}
    assert not (d.added_columns or d.removed_columns or d.schema_changed)
    assert repo.diff(b, a) == d
    assert staged.columns == {
        "big": tc.ColumnDiff(frozenset({"extra"}), frozenset({0}), frozenset()),
        "names": tc.ColumnDiff(changed=frozenset({7})),
    }


# -- merge: fast-forward, no-op, clean three-way ----------------------------------------------


def test_fast_forward_makes_no_commit(repo):
    base = make_base(repo)
    repo.create_branch("dev")
    d1 = commit_on(repo, "dev", put("x", {5: 5}))
    d2 = commit_on(repo, "dev", drop("x", 0))
    with repo.checkout(write=True, branch="main"):
        pass
    known = all_commits(repo)
    assert repo.merge("dev") == d2
    assert repo.branches == {"main": d2, "dev": d2}
    assert [c.id for c in repo.log("main")] == [d2, d1, base]
    assert all_commits(repo) == known
    # the writer of main now starts from the new head
    with repo.checkout(write=True) as co:
        assert co.commit_id == d2
        assert set(co["x"].keys()) == set(BASE["x"]) - {0} | {5}
        co["x"][6] = np.int64(6)
        after = co.commit("on top")
    assert repo.log()[0].parents == (d2,)
    assert repo.log()[0].id == after


def test_fast_forward_to_a_commit_id_or_tag(repo):
    base = make_base(repo)
    repo.create_branch("dev")
    d1 = commit_on(repo, "dev", put("x", {5: 5}))
    d2 = commit_on(repo, "dev", put("x", {6: 6}))
    repo.create_tag("t1", d1)
    assert repo.merge("t1", into="main") == d1
    assert repo.branches["main"] == d1
    assert repo.merge(d2[:10], into="main") == d2
    assert repo.branches == {"main": d2, "dev": d2}
    assert repo.log("main")[-1].id == base


def test_merging_an_already_merged_source_is_a_no_op(repo):
    base = make_base(repo)
    repo.create_branch("old")
    head = commit_on(repo, "main", put("x", {5: 5}))
    known = all_commits(repo)
    before = history_state(repo)
    assert repo.merge("old", into="main") == head  # an ancestor
    assert repo.merge(base, into="main") == head
    assert repo.merge("main", into="main") == head  # itself
    assert history_state(repo) == before
    assert all_commits(repo) == known


def test_three_way_merge_unions_disjoint_changes(repo):
    base, ours, theirs = fork(
        repo,
        [put("x", {1: 100, 5: 50}), drop("s", "k"), add_column("ours", None, {"o": "o"})],
        [
            put("x", {2: 200, "new": 7}),
            drop("x", "a"),
            put("s", {"m": "EM", 9: "nine"}),
            add_column("theirs", "float32", {0: 0.5}),
        ],
    )
    known = all_commits(repo)
    merged = repo.merge("dev", into="main", message="merge dev")
    assert merged not in (base, ours, theirs)
    assert repo.branches == {"main": merged, "dev": theirs}
    head = repo.log("main", limit=1)[0]
    assert head.id == merged
    assert head.parents == (ours, theirs)
    assert head.message == "merge dev"
    assert all_commits(repo) == known | {merged}
    assert snapshot(repo, merged) == {
        "x": {0: 0, 1: 100, 2: 200, "1": 11, 5: 50, "new": 7},
        "s": {0: "zero", "m": "EM", 9: "nine"},
        "ours": {"o": "o"},
        "theirs": {0: 0.5},
    }
    assert dtypes(repo, merged) == {
        "x": ("ndarray", np.dtype("int64")),
        "s": ("str", None),
        "ours": ("str", None),
        "theirs": ("ndarray", np.dtype("float32")),
    }
    with repo.checkout(commit=merged) as co:
        assert co["x"].keys() == [0, 1, 2, 5, "1", "new"]
        assert len(co["x"]) == 6
        assert co["x"].get_many([0, 1, 2, 5]).tolist() == [0, 100, 200, 50]
    # merging again is a no-op, in either direction it converges
    assert repo.merge("dev", into="main") == merged
    assert repo.merge("main", into="dev") == merged  # fast-forward
    assert repo.branches == {"main": merged, "dev": merged}


def test_merge_default_message_and_into(repo):
    fork(repo, [put("x", {5: 5})], [put("x", {6: 6})])
    merged = repo.merge("dev")
    assert repo.branches["main"] == merged
    message = repo.log("main", limit=1)[0].message
    assert "dev" in message and "main" in message


def test_merge_into_other_branch(repo):
    _, ours, theirs = fork(repo, [put("x", {5: 5})], [put("x", {6: 6})])
    merged = repo.merge("main", into="dev")
    assert repo.branches == {"main": ours, "dev": merged}
    assert repo.log("dev", limit=1)[0].parents == (theirs, ours)
    assert snapshot(repo, merged)["x"] == {**BASE["x"], 5: 5, 6: 6}


def test_same_schema_change_on_both_sides_merges_the_new_records(repo):
    """Both sides re-created x as float64: the old int64 records are no common ground."""
    fork(
        repo,
        [recreate("x", "float64", {0: 0.5, 1: 1.0, "both": 2.0})],
        [recreate("x", "float64", {1: 1.0, 2: 2.5, "both": 2.0})],
    )
    merged = repo.merge("dev", into="main")
    assert snapshot(repo, merged)["x"] == {0: 0.5, 1: 1.0, 2: 2.5, "both": 2.0}
    assert dtypes(repo, merged)["x"] == ("ndarray", np.dtype("float64"))
    commit_on(repo, "main", put("x", {"k": 1.0}))
    commit_on(repo, "dev", put("x", {"k": 2.0}))
    with pytest.raises(tc.MergeConflictError) as info:
        repo.merge("dev", into="main")
    assert conflict_set(info.value) == {("x", "k", "both_added")}


IDENTICAL_CASES: dict[str, tuple[list[Op], list[Op]]] = {
    "same key added with the same value": ([put("x", {5: 5})], [put("x", {5: 5})]),
    "same key changed the same way": ([put("x", {1: 9})], [put("x", {1: 9})]),
    "same key deleted": ([drop("x", 1)], [drop("x", 1)]),
    "same column deleted": ([drop_column("s")], [drop_column("s")]),
    "same column added": (
        [add_column("y", "int8", {1: 1})],
        [add_column("y", "int8", {1: 1})],
    ),
    "same schema change": (
        [recreate("x", "float64", {0: 0.5})],
        [recreate("x", "float64", {0: 0.5})],
    ),
    "same changes plus disjoint ones": (
        [put("x", {1: 9, 5: 5}), drop("s", "k"), put("s", {"o": "o"})],
        [put("x", {1: 9, 6: 6}), drop("s", "k"), put("s", {"t": "t"})],
    ),
}


@pytest.mark.parametrize("case", sorted(IDENTICAL_CASES))
def test_identical_changes_on_both_sides_are_not_conflicts(repo, case):
    ours_ops, theirs_ops = IDENTICAL_CASES[case]
    _, ours, theirs = fork(repo, ours_ops, theirs_ops)
    merged = repo.merge("dev", into="main")
    assert repo.log("main", limit=1)[0].parents == (ours, theirs)
    expected = snapshot(repo, ours)
    for name, samples in snapshot(repo, theirs).items():
        expected.setdefault(name, {}).update(samples)
    assert snapshot(repo, merged) == expected
    assert dtypes(repo, merged) == {**dtypes(repo, ours), **dtypes(repo, theirs)}


ONE_SIDED_CASES: dict[str, list[Op]] = {
    "key deleted": [drop("x", 1)],
    "key changed": [put("x", {1: 7})],
    "column deleted": [drop_column("s")],
    "schema changed": [recreate("x", "int32", {0: 3})],
    "column added": [add_column("y", None, {"y": "y"})],
}


@pytest.mark.parametrize("side", ["ours", "theirs"])
@pytest.mark.parametrize("case", sorted(ONE_SIDED_CASES))
def test_changes_on_one_side_only_are_taken(repo, case, side):
    ops = ONE_SIDED_CASES[case]
    column, key, value = ("s", "e", "e") if case == "schema changed" else ("x", "e", 1)
    unrelated = put(column, {key: value})  # a disjoint change on the other side
    if side == "ours":
        _, changed, _ = fork(repo, ops, [unrelated])
    else:
        _, _, changed = fork(repo, [unrelated], ops)
    merged = repo.merge("dev", into="main")
    expected = snapshot(repo, changed)
    expected[column][key] = value
    assert snapshot(repo, merged) == expected
    assert dtypes(repo, merged) == dtypes(repo, changed)


# -- merge: conflicts ----------------------------------------------------------------------------

CONFLICT_CASES: dict[str, tuple[list[Op], list[Op], set[tuple[str, Any, str]]]] = {
    "both added different values": (
        [put("x", {5: 50})],
        [put("x", {5: 51})],
        {("x", 5, "both_added")},
    ),
    "both added a str key": (
        [put("s", {"new": "a"})],
        [put("s", {"new": "b"})],
        {("s", "new", "both_added")},
    ),
    "both changed differently": (
        [put("x", {1: 100})],
        [put("x", {1: 101})],
        {("x", 1, "both_changed")},
    ),
    "int key 1 and str key '1' are distinct": (
        [put("x", {1: 100, "1": 12})],
        [put("x", {"1": 13})],
        {("x", "1", "both_changed")},
    ),
    "changed ours, deleted theirs": (
        [put("s", {"k": "K"})],
        [drop("s", "k")],
        {("s", "k", "changed_deleted")},
    ),
    "deleted ours, changed theirs": (
        [drop("x", 0)],
        [put("x", {0: -1})],
        {("x", 0, "changed_deleted")},
    ),
    "schema changed ours, records changed theirs": (
        [recreate("x", "float64", {0: 0.0})],
        [put("x", {1: 101})],
        {("x", None, "schema_changed")},
    ),
    "records changed ours, schema changed theirs": (
        [drop("x", 2)],
        [recreate("x", None, {0: "zero"})],
        {("x", None, "schema_changed")},
    ),
    "schema changed differently on both sides": (
        [recreate("x", "float64", {0: 0.0})],
        [recreate("x", "int32", {0: 0})],
        {("x", None, "schema_changed")},
    ),
    "column added on both sides with different schemas": (
        [add_column("y", "int8", {0: 0})],
        [add_column("y", None, {0: "0"})],
        {("y", None, "schema_changed")},
    ),
    "column added on both sides, same schema, different values": (
        [add_column("y", "int8", {0: 0, 1: 1})],
        [add_column("y", "int8", {0: 5, 1: 1})],
        {("y", 0, "both_added")},
    ),
    "column deleted ours, key changed theirs": (
        [drop_column("s")],
        [put("s", {"k": "K"})],
        {("s", None, "column_deleted")},
    ),
    "key changed ours, column deleted theirs": (
        [put("x", {1: 100})],
        [drop_column("x")],
        {("x", None, "column_deleted")},
    ),
    # REGRESSION: the predecessor silently dropped (or resurrected) these samples
    "column deleted ours, samples added theirs": (
        [drop_column("s")],
        [put("s", {"added": "on dev"})],
        {("s", None, "column_deleted")},
    ),
    "samples added ours, column deleted theirs": (
        [put("x", {99: 99})],
        [drop_column("x")],
        {("x", None, "column_deleted")},
    ),
    "column deleted ours, key deleted theirs": (
        [drop_column("s")],
        [drop("s", 0)],
        {("s", None, "column_deleted")},
    ),
    "column deleted ours, schema changed theirs": (
        [drop_column("x")],
        [recreate("x", None, {0: "zero"})],
        {("x", None, "column_deleted")},
    ),
}


@pytest.mark.parametrize("direction", ["dev into main", "main into dev"])
@pytest.mark.parametrize("case", sorted(CONFLICT_CASES))
def test_each_conflict_kind_is_raised_and_reported(repo, case, direction):
    ours_ops, theirs_ops, expected = CONFLICT_CASES[case]
    _, main_head, dev_head = fork(repo, ours_ops, theirs_ops)
    source, into = ("dev", "main") if direction == "dev into main" else ("main", "dev")
    before = history_state(repo)
    with pytest.raises(tc.MergeConflictError) as info:
        repo.merge(source, into=into)
    err = info.value
    assert isinstance(err, tc.CaskError)
    assert conflict_set(err) == expected
    assert len(err.conflicts) == len(expected)
    assert all(isinstance(c, tc.Conflict) for c in err.conflicts)
    for conflict in err.conflicts:
        assert conflict.column in str(err)
        if conflict.key is not None:
            assert repr(conflict.key) in str(err)
        if conflict.kind == "column_deleted":  # exactly one side lacks the column
            assert (conflict.ours is None) != (conflict.theirs is None)
    assert history_state(repo) == before
    assert repo.branches == {"main": main_head, "dev": dev_head}


def test_conflicts_report_digests_of_each_side(repo):
    base, ours, theirs = fork(
        repo,
        [put("x", {1: 100, 5: 50}), drop("x", 2)],
        [put("x", {1: 101, 5: 51, 2: 22})],
    )
    with pytest.raises(tc.MergeConflictError) as info:
        repo.merge("dev", into="main")

    def digest(ref: str, key: Any) -> str | None:
        with repo.checkout(commit=ref) as co:
            return co["x"].digest(key) if key in co["x"] else None

    by_key = {c.key: c for c in info.value.conflicts}
    assert set(by_key) == {1, 2, 5}
    for key, conflict in by_key.items():
        assert conflict.column == "x"
        assert (conflict.base, conflict.ours, conflict.theirs) == (
            digest(base, key),
            digest(ours, key),
            digest(theirs, key),
        ), key
    assert by_key[5].base is None and by_key[2].ours is None
    assert (by_key[1].kind, by_key[2].kind, by_key[5].kind) == (
        "both_changed",
        "changed_deleted",
        "both_added",
    )


def test_all_conflicts_are_reported_at_once(repo):
    base = commit_on(
        repo,
        "main",
        add_column("x", "int64", BASE["x"]),
        add_column("s", None, BASE["s"]),
        add_column("y", "int64", {0: 0}),
        add_column("z", None, {"z": "z"}),
        message="base",
    )
    repo.create_branch("dev")
    ours = commit_on(
        repo,
        "main",
        put("x", {1: 100, 5: 50, "1": 111, "a": 1000, "ours": 1}),
        drop("x", 2),
        put("s", {"k": "K-main", "m": "same"}),
        drop_column("y"),
        recreate("z", "int64", {0: 0}),
    )
    theirs = commit_on(
        repo,
        "dev",
        put("x", {1: 101, 5: 51, "1": 112, 2: 22, "theirs": 2}),
        put("s", {"k": "K-dev", "m": "same"}),
        put("y", {9: 9}),
        put("z", {"q": "new"}),
    )
    known = all_commits(repo)
    before = history_state(repo)
    with pytest.raises(tc.MergeConflictError) as info:
        repo.merge("dev", into="main")
    assert conflict_set(info.value) == {
        ("x", 1, "both_changed"),
        ("x", "1", "both_changed"),
        ("x", 5, "both_added"),
        ("x", 2, "changed_deleted"),
        ("s", "k", "both_changed"),
        ("y", None, "column_deleted"),
        ("z", None, "schema_changed"),
    }
    assert len(info.value.conflicts) == 7
    assert "7" in str(info.value)
    assert history_state(repo) == before
    assert all_commits(repo) == known
    assert repo.branches == {"main": ours, "dev": theirs}
    assert snapshot(repo, base)["x"] == BASE["x"]


def test_nothing_is_written_on_conflict_and_merge_works_once_resolved(repo):
    _, ours, theirs = fork(
        repo,
        [put("x", {1: 100, 5: 5})],
        [put("x", {1: 101, 6: 6})],
    )
    repo.create_tag("keep", ours)
    known = all_commits(repo)
    before = history_state(repo)
    for _ in range(2):
        with pytest.raises(tc.MergeConflictError):
            repo.merge("dev", into="main")
        with pytest.raises(tc.MergeConflictError):
            repo.merge("main", into="dev")
    assert history_state(repo) == before
    assert all_commits(repo) == known
    assert snapshot(repo, "main")["x"] == {**BASE["x"], 1: 100, 5: 5}
    assert snapshot(repo, "dev")["x"] == {**BASE["x"], 1: 101, 6: 6}
    # the next commit holds only its own change (nothing of the failed merge leaks in)
    fixed = commit_on(repo, "main", put("x", {1: 101}), message="resolve")
    assert repo.diff(ours, fixed).columns == {"x": tc.ColumnDiff(changed=frozenset({1}))}
    assert repo.log("main")[0].parents == (ours,)
    merged = repo.merge("dev", into="main")
    assert repo.log("main", limit=1)[0].parents == (fixed, theirs)
    assert snapshot(repo, merged)["x"] == {**BASE["x"], 1: 101, 5: 5, 6: 6}
    assert all_commits(repo) == known | {fixed, merged}


@pytest.mark.parametrize("fast_forward", [True, False])
def test_merge_into_a_branch_with_staged_changes_is_refused(repo, fast_forward):
    make_base(repo)
    repo.create_branch("dev")
    commit_on(repo, "dev", put("x", {6: 6}))
    if not fast_forward:
        commit_on(repo, "main", put("x", {5: 5}))
    with repo.checkout(write=True, branch="main") as co:
        co["x"][7] = np.int64(7)
    known = all_commits(repo)
    before = history_state(repo)
    with pytest.raises(tc.CaskError, match="staged") as info:
        repo.merge("dev", into="main")
    assert not isinstance(info.value, tc.MergeConflictError)
    assert "main" in str(info.value)
    assert history_state(repo) == before
    assert all_commits(repo) == known
    assert repo.staged_branch == "main"
    with repo.checkout(write=True) as co:  # the staged change is still there
        assert co.diff().columns == {"x": tc.ColumnDiff(added=frozenset({7}))}
        co.reset_staging_area()
    merged = repo.merge("dev", into="main")
    assert snapshot(repo, merged)["x"][6] == 6


def test_merge_into_another_branch_keeps_staged_changes(repo):
    make_base(repo)
    repo.create_branch("dev")
    main_head = commit_on(repo, "main", put("x", {5: 5}))
    commit_on(repo, "dev", put("x", {6: 6}))
    with repo.checkout(write=True, branch="main") as co:
        co["x"][7] = np.int64(7)
    merged = repo.merge("main", into="dev")
    assert repo.branches == {"main": main_head, "dev": merged}
    with repo.checkout(write=True) as co:
        assert co.branch == "main"
        assert co.commit_id == main_head
        assert co.diff().columns == {"x": tc.ColumnDiff(added=frozenset({7}))}


def test_merge_while_a_writer_is_open_raises_writer_lock_error(repo):
    fork(repo, [put("x", {5: 5})], [put("x", {6: 6})])
    known = all_commits(repo)
    before = history_state(repo)
    with repo.checkout(write=True, branch="dev"):
        with pytest.raises(tc.WriterLockError) as info:
            repo.merge("dev", into="main")
        assert isinstance(info.value, PermissionError)
        with pytest.raises(tc.WriterLockError):
            repo.merge("main", into="dev")
    assert history_state(repo) == before
    assert all_commits(repo) == known
    repo.merge("dev", into="main")  # fine once the writer is closed


def test_merge_unknown_refs(repo):
    make_base(repo)
    before = history_state(repo)
    with pytest.raises(tc.RefNotFoundError):
        repo.merge("no-such-ref", into="main")
    with pytest.raises(tc.RefNotFoundError):
        repo.merge("main", into="no-such-branch")
    assert "no-such-branch" not in repo.branches
    assert history_state(repo) == before


# -- merge: criss-cross and the merge base -------------------------------------------------------


def _criss_cross(path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    use_clock(monkeypatch)
    with tc.init(path, user_name="Ada", user_email="ada@example.org") as repo:
        base = make_base(repo)
        repo.create_branch("dev")
        m1 = commit_on(repo, "main", put("x", {1: 100}), put("s", {"main": "m1"}))
        d1 = commit_on(repo, "dev", put("x", {2: 200}), put("s", {"dev": "d1"}))
        x_dev = repo.merge(m1, into="dev")  # dev takes main's m1 ...
        x_main = repo.merge(d1, into="main")  # ... and main takes dev's d1: criss-cross
        assert repo.log("dev", limit=1)[0].parents == (d1, m1)
        assert repo.log("main", limit=1)[0].parents == (m1, d1)
        m2 = commit_on(repo, "main", put("x", {0: -1}), drop("s", "m"))
        d2 = commit_on(repo, "dev", put("s", {"k": "from dev"}), put("x", {"a": 11}))
        final = repo.merge("dev", into="main")
        assert repo.log("main", limit=1)[0].parents == (m2, d2)
        back = repo.merge("main", into="dev")  # fast-forward
        assert back == final
        return {
            "ids": [base, m1, d1, x_dev, x_main, m2, d2, final],
            "final": final,
            "data": snapshot(repo, final),
            "log": [(c.id, c.parents, c.time) for c in repo.log("main")],
            "branches": repo.branches,
        }


def test_criss_cross_merge_is_deterministic(tmp_path, monkeypatch):
    one = _criss_cross(tmp_path / "one", monkeypatch)
    two = _criss_cross(tmp_path / "two", monkeypatch)
    assert one == two
    assert len(set(one["ids"])) == len(one["ids"])
    assert one["data"] == {
        "x": {0: -1, 1: 100, 2: 200, "a": 11, "1": 11},
        "s": {0: "zero", "k": "from dev", "main": "m1", "dev": "d1"},
    }


def test_criss_cross_conflicts_are_reported_the_same_everywhere(tmp_path, monkeypatch):
    results = []
    for name in ("one", "two"):
        use_clock(monkeypatch)
        with tc.init(tmp_path / name, user_name="Ada", user_email="ada@example.org") as repo:
            make_base(repo)
            repo.create_branch("dev")
            m1 = commit_on(repo, "main", put("x", {1: 100}))
            d1 = commit_on(repo, "dev", put("x", {2: 200}))
            repo.merge(m1, into="dev")
            repo.merge(d1, into="main")
            commit_on(repo, "main", put("x", {5: 5, 1: 1000}))
            commit_on(repo, "dev", put("x", {5: 6, 2: 2000}))
            before = history_state(repo)
            with pytest.raises(tc.MergeConflictError) as info:
                repo.merge("dev", into="main")
            assert history_state(repo) == before
            found = conflict_set(info.value)
            # the base is one of m1 / d1 (the smallest id): key 1 or key 2 conflicts with it
            assert ("x", 5, "both_added") in found
            assert len(found) == 2
            results.append((before, found, [str(c) for c in info.value.conflicts]))
    assert results[0] == results[1]


def test_merge_base_comes_from_the_graph_not_timestamps(repo, monkeypatch):
    """The true base T is older by the (skewed) clock than the root R it descends from.

    History (raw clock times in brackets)::

        R [3e9] -- T [1e9] -- M1 [0.5e9]        main
                    \\
                     D1 [4e9]                   dev

    With T as the base the merge is clean: k=3 (main's change after T), p stays
    deleted (main deleted it after T added it). Taking R (or anything but T) as
    the base would report k as changed on both sides or bring p back.
    """
    clock = use_clock(monkeypatch)
    clock.set(3_000_000_000)
    r = commit_on(
        repo,
        "main",
        add_column("x", "int64", {"k": 1, "q": 5}),
        add_column("s", None, {}),
        message="R",
    )
    clock.set(1_000_000_000)
    t = commit_on(repo, "main", put("x", {"k": 2, "p": 9}), message="T")
    repo.create_branch("dev")
    clock.set(4_000_000_000)
    d1 = commit_on(repo, "dev", put("x", {"j": 5}), put("s", {"d": "dev"}), message="D1")
    clock.set(500_000_000)
    m1 = commit_on(repo, "main", put("x", {"k": 3}), drop("x", "p"), message="M1")
    clock.set(2_000_000_000)
    expected = {"x": {"k": 3, "q": 5, "j": 5}, "s": {"d": "dev"}}
    merged = repo.merge("dev", into="main")
    assert repo.log("main", limit=1)[0].parents == (m1, d1)
    assert snapshot(repo, merged) == expected
    # the other direction, from a fresh branch at dev's head
    repo.create_branch("dev2", base=d1)
    other = repo.merge(m1, into="dev2")
    assert snapshot(repo, other) == expected
    assert {c.id for c in repo.log(merged)} == {r, t, d1, m1, merged}


# -- regressions -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 3, 5000])
def test_deleting_every_sample_of_a_column(repo, size):
    """A column emptied by deletions commits, diffs and merges like any other change."""
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("x", (), "int64").update(np.arange(size), np.arange(size))
        co.add_str_column("s")["k"] = "kept"
        full = co.commit("full")
        for key in range(size):
            del co["x"][key]
        assert co.diff().columns == {"x": tc.ColumnDiff(removed=frozenset(range(size)))}
        emptied = co.commit("emptied")
        assert len(co["x"]) == 0 and co["x"].keys() == []
    assert snapshot(repo, emptied) == {"x": {}, "s": {"k": "kept"}}
    assert repo.diff(full, emptied).columns == {"x": tc.ColumnDiff(removed=frozenset(range(size)))}
    assert repo.diff(emptied, full).columns == {"x": tc.ColumnDiff(added=frozenset(range(size)))}


def test_merge_that_empties_a_column(repo):
    base = commit_on(repo, "main", add_column("x", "int64", {1: 1, 2: 2}), message="base")
    repo.create_branch("dev")
    commit_on(repo, "main", drop("x", 1))
    commit_on(repo, "dev", drop("x", 2))
    merged = repo.merge("dev", into="main")  # each side deleted the other's remaining key
    assert snapshot(repo, merged) == {"x": {}}
    assert repo.diff(base, merged).columns == {"x": tc.ColumnDiff(removed=frozenset({1, 2}))}


def test_equal_int64_and_longlong_arrays_share_one_digest(repo):
    value = [[1, -2], [3, 2**40]]
    with repo.checkout(write=True) as co:
        a = co.add_ndarray_column("a", (2, 2), "int64")
        b = co.add_ndarray_column("b", (2, 2), np.longlong)
        assert a.dtype == b.dtype == np.dtype("int64")
        a["int64"] = np.array(value, dtype=np.int64)
        a["longlong"] = np.array(value, dtype=np.longlong)
        a["big-endian"] = np.array(value, dtype=">i8")
        b["int64"] = np.array(value, dtype=np.int64)
        b["longlong"] = np.array(value, dtype=np.longlong)
        staged = {a.digest(k) for k in a} | {b.digest(k) for k in b}
        assert len(staged) == 1
        a[0] = np.array(value, dtype=np.int64)
        first = co.commit("int64")
        a[0] = np.array(value, dtype=np.longlong)  # the same content again
        assert not co.diff()
        with co["a"] as col:
            col[1] = np.longlong(7) * np.ones((2, 2), dtype=np.longlong)
            col[2] = np.full((2, 2), 7, dtype=np.int64)
        assert col.digest(1) == col.digest(2)
        second = co.commit("sevens")
    with repo.checkout(commit=first) as rc:
        assert {rc[n].digest(k) for n in ("a", "b") for k in rc[n]} == staged
    assert repo.diff(first, second).columns == {"a": tc.ColumnDiff(added=frozenset({1, 2}))}


def test_int64_and_longlong_writes_on_two_branches_merge_cleanly(repo):
    make_base(repo)
    repo.create_branch("dev")
    with repo.checkout(write=True, branch="main") as co:
        co["x"][1] = np.array(100, dtype=np.longlong)
        ours = co.commit("longlong")
    with repo.checkout(write=True, branch="dev") as co:
        co["x"][1] = np.array(100, dtype=np.int64)
        theirs = co.commit("int64")
    assert not repo.diff(ours, theirs)
    merged = repo.merge("dev", into="main")
    assert snapshot(repo, merged)["x"][1] == 100


def test_bool_keys_are_rejected(repo):
    make_base(repo)
    with repo.checkout(write=True) as co:
        col = co["x"]
        value = np.int64(1)
        for key in (True, False, np.bool_(True)):
            with pytest.raises(TypeError):
                col[key] = value
            with pytest.raises(TypeError):
                col.update({key: value})
            with pytest.raises(TypeError):
                col.update([key], np.array([1], dtype=np.int64))
            with pytest.raises(TypeError):
                col.update([0, key], np.array([1, 2], dtype=np.int64))
            with pytest.raises(TypeError):
                _ = col[key]
            with pytest.raises(TypeError):
                del col[key]
            with pytest.raises(TypeError):
                col.digest(key)
            with pytest.raises(TypeError):
                co["s"][key] = "text"
            assert key not in col
        with pytest.raises(TypeError):
            col.update(np.array([True, False]), np.array([1, 2], dtype=np.int64))
        with col, pytest.raises(TypeError):
            col[True] = value
        assert not co.diff()  # nothing of the rejected batches was staged
        assert col[0] == 0 and col[1] == 1


def test_log_over_merges_lists_each_commit_once_newest_first(repo, monkeypatch):
    clock = use_clock(monkeypatch)
    base = make_base(repo)
    repo.create_branch("dev")
    repo.create_branch("side")
    m1 = commit_on(repo, "main", put("x", {1: 100}))
    d1 = commit_on(repo, "dev", put("x", {2: 200}))
    s1 = commit_on(repo, "side", put("s", {"side": "s"}))
    x1 = repo.merge(m1, into="dev")
    clock.set(1_500_000_000)  # a clock that stepped back
    x2 = repo.merge(d1, into="main")
    x3 = repo.merge("side", into="main")
    m2 = commit_on(repo, "main", put("x", {3: 3}))
    d2 = commit_on(repo, "dev", put("x", {4: 4}))
    final = repo.merge("dev", into="main")
    everything = {base, m1, d1, s1, x1, x2, x3, m2, d2, final}
    assert len(everything) == 10
    log = repo.log("main")
    ids = [c.id for c in log]
    assert len(ids) == len(set(ids)) == 10
    assert set(ids) == everything
    assert ids[0] == final and ids[-1] == base
    times = [c.time for c in log]
    assert times == sorted(times, reverse=True)
    position = {cid: i for i, cid in enumerate(ids)}
    for c in log:
        for parent in c.parents:
            assert position[parent] > position[c.id], "a commit is listed after its parent"
    assert [c.id for c in repo.log("main", limit=3)] == ids[:3]
    assert [c.id for c in repo.log(final[:8])] == ids
    dev_ids = [c.id for c in repo.log("dev")]
    assert len(dev_ids) == len(set(dev_ids))
    assert set(dev_ids) == {base, m1, d1, x1, d2}
    assert repo.log(x2)[0].id == x2
    assert {c.id for c in repo.log(x2)} == {base, m1, d1, x2}
