"""The reachability walk (tensorcask/history/reach.py) against a brute-force model.

Real repositories with random histories (commits, branches, merges; tiny pages
so record trees have several levels) are checked against a naive model that
walks every parent and every page of every tree:

* ``reachable`` with nothing excluded returns exactly what the model reaches;
* with ``excluding``, its commits are exactly the difference, its objects and
  digests lie between the difference and everything the starts reach;
* ``ancestry``, ``newest_first`` (and ``repo.log``) and ``merge_base`` agree
  with naive walks.

Then the cost promise, counted in objects loaded (not timed), and damage:
a missing object is reported where it is and the walk goes on.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import tensorcask as tc
import tensorcask.history.store as history_store
from tensorcask.history import tree as tree_module
from tensorcask.history.merge import merge_base
from tensorcask.history.objects import ColumnRoot, RecordRoot
from tensorcask.history.objectstore import Kind, ObjectStore, WriteBatch
from tensorcask.history.reach import ancestry, newest_first, reachable
from tensorcask.history.store import History
from tensorcask.history.tree import RecordTree

BRANCHES = ("main", "b1", "b2", "b3")
KEYS_PER_BRANCH = 60  # branch i edits keys [60 i, 60 (i + 1)): merges rarely conflict
COLUMNS = ("a", "b")


# -- the naive model -------------------------------------------------------------------------


@dataclass
class Reach:
    """What a set of commits reaches, found by brute force."""

    commits: set[str] = field(default_factory=set)
    objects: set[bytes] = field(default_factory=set)  # record roots, column roots, pages
    digests: set[bytes] = field(default_factory=set)
    pages: set[bytes] = field(default_factory=set)
    leaves: dict[bytes, set[str]] = field(default_factory=dict)  # leaf -> columns holding it


class Model:
    """Brute-force reachability over one history (per-commit results memoized)."""

    def __init__(self, history: History) -> None:
        self.history = history
        self.tree = RecordTree(history.load_object)  # its own cache: independent of the walk
        self._of_commit: dict[str, Reach] = {}

    def parents(self, commit: str) -> tuple[str, ...]:
        return self.history.commit(commit).parents

    def commits(self, starts: Iterable[str], avoid: Iterable[str] = ()) -> set[str]:
        """``starts`` and their ancestors, never stepping onto a commit in ``avoid``."""
        avoided = set(avoid)
        seen: set[str] = set()
        todo = [s for s in starts if s not in avoided]
        while todo:
            commit = todo.pop()
            if commit not in seen:
                seen.add(commit)
                todo.extend(p for p in self.parents(commit) if p not in avoided)
        return seen

    def one(self, commit: str) -> Reach:
        """The objects and digests of one commit (its parents not included)."""
        found = self._of_commit.get(commit)
        if found is not None:
            return found
        history = self.history
        found = Reach(commits={commit})
        records = history.commit(commit).records
        found.objects.add(records)
        for name, root_hash in RecordRoot.from_bytes(history.load_object(records)).columns:
            found.objects.add(root_hash)
            root = ColumnRoot.from_bytes(history.load_object(root_hash))
            for page in self.tree.pages(root.tree):
                found.pages.add(page.hash)
                if page.level == 0:
                    found.leaves.setdefault(page.hash, set()).add(name)
                    found.digests.update(page.values())
        found.objects |= found.pages
        self._of_commit[commit] = found
        return found

    def reach(self, starts: Iterable[str]) -> Reach:
        out = Reach()
        for commit in self.commits(starts):
            one = self.one(commit)
            out.commits.add(commit)
            out.objects |= one.objects
            out.digests |= one.digests
            out.pages |= one.pages
            for leaf, names in one.leaves.items():
                out.leaves.setdefault(leaf, set()).update(names)
        return out

    def newest_first(self, start: str) -> list[str]:
        """Time descending, the larger id first among equal times."""
        times = {c: self.history.commit(c).time_us for c in self.commits([start])}
        return sorted(times, key=lambda c: (times[c], c), reverse=True)


def history_of(repo: tc.Repository) -> History:
    return repo._parts.history


# -- building random repositories ------------------------------------------------------------


class Clock:
    """Stands in for ``time`` in the history store: ``step_us`` between commits.

    With a step of 0 every commit time comes from its parents (parent + 1 us),
    so commits on different branches often share a time: the tie-break is tested.
    """

    def __init__(self, step_us: int) -> None:
        self.us = 1_700_000_000_000_000
        self.step = step_us

    def time_ns(self) -> int:
        self.us += self.step
        return self.us * 1000


def value(column: str, key: int, v: int) -> np.int64:
    # disjoint values per column: each column's digests are its own
    return np.int64(v + COLUMNS.index(column) * 1_000_000)


@dataclass
class Built:
    repo: tc.Repository
    history: History
    commits: list[str]  # every commit, in the order made


def build(data: st.DataObject, path: Path) -> Built:
    """A repository with a random history of commits, branches and merges."""
    repo = tc.init(path, user_name="Ada", user_email="ada@example.org")
    columns = COLUMNS[: data.draw(st.integers(1, 2), label="columns")]
    size = data.draw(st.integers(0, len(BRANCHES) * KEYS_PER_BRANCH), label="initial records")
    keys = np.arange(size)
    with repo.checkout(write=True) as co:
        for name in columns:
            col = co.add_ndarray_column(name, (), "int64")
            # column a: unique values; column b: few values (digests shared across pages)
            col.update(keys, np.array([value(name, k, k if name == "a" else k % 7) for k in keys]))
        commits = [co.commit("root")]
    branches = ["main"]
    for _ in range(data.draw(st.integers(2, 10), label="steps")):
        step = data.draw(st.sampled_from(["commit", "branch", "merge", "merge"]), label="step")
        if step == "merge" and len(branches) == 1:
            step = "branch"  # nothing to merge yet: make something to merge
        if step == "branch" and len(branches) < len(BRANCHES):
            name = BRANCHES[len(branches)]
            repo.create_branch(name, base=data.draw(st.sampled_from(commits), label="base"))
            branches.append(name)
            commits.append(commit_random(data, repo, name, columns))  # its own commit
        elif step == "merge":
            source, into = data.draw(st.permutations(branches), label="merge")[:2]
            if data.draw(st.booleans(), label="diverge first"):  # a true merge, no fast-forward
                commits.extend(commit_random(data, repo, b, columns) for b in (source, into))
            if data.draw(st.booleans(), label="an older commit"):  # criss-crosses come of these
                source = data.draw(st.sampled_from([c.id for c in repo.log(source)]))
            try:
                head = repo.merge(source, into=into)
            except tc.MergeConflictError:
                event("merge: conflict")
                continue  # nothing written
            event("merge: new" if head not in commits else "merge: existing")
            if head not in commits:
                commits.append(head)
        else:
            branch = data.draw(st.sampled_from(branches), label="branch")
            commits.append(commit_random(data, repo, branch, columns))
    history = history_of(repo)
    merges = sum(len(history.commit(c).parents) > 1 for c in commits)
    event(f"{len(branches)} branches, {'some' if merges else 'no'} merge commits")
    return Built(repo, history, commits)


def commit_random(
    data: st.DataObject, repo: tc.Repository, branch: str, columns: Sequence[str]
) -> str:
    """Random puts and deletes in the key range that ``branch`` owns."""
    lo = BRANCHES.index(branch) * KEYS_PER_BRANCH
    owned = st.integers(lo, lo + KEYS_PER_BRANCH - 1)
    with repo.checkout(write=True, branch=branch) as co:
        for i, name in enumerate(columns):
            puts = data.draw(
                st.dictionaries(owned, st.integers(0, 1000), min_size=int(i == 0), max_size=12),
                label=f"puts {name}",
            )
            deletes = data.draw(st.lists(owned, max_size=4, unique=True), label=f"deletes {name}")
            col = co[name]
            for key, v in puts.items():
                col[key] = value(name, key, v)
            for key in deletes:
                if key not in puts and key in col:
                    del col[key]
        return co.commit(f"on {branch}")


class Repo:
    """A random repository in a temporary directory, with tiny pages and a set clock."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def __enter__(self) -> Built:
        self.patch = pytest.MonkeyPatch()
        self.patch.setattr(tree_module, "_MASK", self.data.draw(st.sampled_from([7, 31])))
        step = self.data.draw(st.sampled_from([0, 1, 1000]), label="clock step")
        self.patch.setattr(history_store, "time", Clock(step))
        self.tmp = tempfile.TemporaryDirectory()
        try:
            self.built = build(self.data, Path(self.tmp.name) / "repo")
        except BaseException:
            self._cleanup()
            raise
        return self.built

    def _cleanup(self) -> None:
        self.patch.undo()
        self.tmp.cleanup()

    def __exit__(self, *exc: object) -> None:
        self.built.repo.close()
        self._cleanup()


SLOW = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def some_commits(data: st.DataObject, commits: list[str], label: str, min_size: int = 1):
    return data.draw(
        st.lists(st.sampled_from(commits), min_size=min_size, max_size=2, unique=True), label=label
    )


# -- reachable against the model -------------------------------------------------------------


def check_walk(history: History, model: Model, froms: list[str], excluding: list[str]) -> None:
    want = model.reach(froms)
    gone = model.reach(excluding)
    leaves: list[tuple[str, bytes]] = []
    progress: list[int] = []
    got = reachable(
        history,
        froms,
        excluding,
        on_leaf=lambda name, schema, page: leaves.append((name, page.hash)),
        progress=lambda what, n: progress.append(n),
    )
    assert len(got.commits) == len(set(got.commits)), "a commit listed twice"
    assert set(got.commits) == want.commits - gone.commits  # commit sets are exact
    if not excluding:
        assert got.objects == want.objects
        assert got.digests == want.digests
        assert got.pages == len(want.pages)
    else:
        assert want.objects - gone.objects <= got.objects <= want.objects
        assert want.digests - gone.digests <= got.digests <= want.digests
        assert got.pages == len(got.objects & want.pages)
    # each newly reached leaf visited once, through a column that holds it
    assert len(leaves) == len({h for _, h in leaves})
    assert {h for _, h in leaves} == got.objects & set(want.leaves)
    assert all(name in want.leaves[h] for name, h in leaves)
    assert progress == sorted(progress)
    assert progress[-1:] == ([got.pages] if progress else [])
    without = reachable(history, froms, excluding, digests=False)
    assert (set(without.commits), without.objects, without.digests) == (
        set(got.commits),
        got.objects,
        set(),
    )


@SLOW
@given(st.data())
def test_reachable_matches_brute_force(data: st.DataObject) -> None:
    with Repo(data) as built:
        history, model = built.history, Model(built.history)
        heads = list(built.repo.branches.values())
        check_walk(history, model, heads, [])  # everything, exactly
        check_walk(history, model, built.commits, [])
        for i in range(3):
            froms = some_commits(data, built.commits, f"from {i}")
            excluding = some_commits(data, built.commits, f"excluding {i}", min_size=0)
            check_walk(history, model, froms, excluding)
        a, b = (data.draw(st.sampled_from(built.commits), label=s) for s in "AB")
        check_walk(history, model, [a], [b])
        check_walk(history, model, [a], [a])  # nothing new
        check_walk(history, model, [a], [built.commits[0]])  # all but the root commit


# -- ancestry, newest_first, log, merge_base ---------------------------------------------------


@SLOW
@given(st.data())
def test_ancestry_log_and_merge_base_match_brute_force(data: st.DataObject) -> None:
    with Repo(data) as built:
        history, model, repo = built.history, Model(built.history), built.repo
        for i in range(3):
            a, b = (data.draw(st.sampled_from(built.commits), label=f"{s}{i}") for s in "AB")
            starts = some_commits(data, built.commits, f"starts {i}")

            got = ancestry(history, starts)
            assert len(got) == len(set(got))
            assert set(got) == model.commits(starts)
            stopped = ancestry(history, [a], stop={b})  # neither returned nor walked past
            assert len(stopped) == len(set(stopped))
            assert set(stopped) == model.commits([a], avoid={b})
            closed = ancestry(history, [a], stop=model.commits([b]))
            assert set(closed) == model.commits([a]) - model.commits([b])

            order = model.newest_first(a)
            assert [c.id for c in newest_first(history, a)] == order
            limit = data.draw(st.integers(0, len(order) + 1), label=f"limit {i}")
            assert [c.id for c in newest_first(history, a, limit)] == order[:limit]
            assert [c.id for c in repo.log(a)] == order
            assert [c.id for c in repo.log(a, limit=limit)] == order[:limit]

            base = merge_base(history, a, b)
            common = model.commits([a]) & model.commits([b])
            assert common  # every commit descends from the root commit
            best = {
                c
                for c in common
                if not any(c in model.commits(model.parents(d)) for d in common - {c})
            }
            assert base in best  # no other common ancestor descends from it
            assert base == min(best)  # the same choice on every replica
            assert merge_base(history, b, a) == base
            event(f"best common ancestors: {min(len(best), 3)}")
        for branch, head in repo.branches.items():
            assert [c.id for c in repo.log(branch)] == model.newest_first(head)


def test_merge_base_of_a_criss_cross_is_the_smallest_best_ancestor(tmp_path: Path) -> None:
    repo, (x, a1, b1, m1) = fork_and_merge(tmp_path)  # m1 = merge of b1 into main (after a1)
    with repo:
        m2 = repo.merge(a1, into="dev")  # and a1 into dev: a criss-cross
        assert repo.branches == {"main": m1, "dev": m2}
        history = history_of(repo)
        assert history.commit(m2).parents == (b1, a1)
        model = Model(history)
        assert model.commits([m1]) & model.commits([m2]) == {x, a1, b1}
        # a1 and b1 are both best common ancestors; x is an ancestor of both
        assert merge_base(history, m1, m2) == merge_base(history, m2, m1) == min(a1, b1)
        assert merge_base(history, m1, x) == x
        assert merge_base(history, a1, b1) == x
        merged = repo.merge("dev", into="main")
        assert set(ancestry(history, [merged])) == {x, a1, b1, m1, m2, merged}
        assert [c.id for c in repo.log("main")] == Model(history).newest_first(merged)


def fork_and_merge(tmp_path: Path) -> tuple[tc.Repository, tuple[str, str, str, str]]:
    """x on main; p1 on main and p2 on dev, both from x; m merges dev into main."""
    repo = tc.init(tmp_path / "repo", user_name="Ada", user_email="ada@example.org")
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("a", (), "int64").update(range(5), np.arange(5))
        x = co.commit("x")
    repo.create_branch("dev", base=x)
    with repo.checkout(write=True, branch="main") as co:
        co["a"][1] = np.int64(100)
        p1 = co.commit("p1")
    with repo.checkout(write=True, branch="dev") as co:
        co["a"][2] = np.int64(200)
        p2 = co.commit("p2")
    m = repo.merge("dev", into="main")
    return repo, (x, p1, p2, m)


def test_ancestry_and_reachable_list_each_commit_before_its_parents(tmp_path: Path) -> None:
    repo, (_, _, _, m) = fork_and_merge(tmp_path)
    with repo:
        history = history_of(repo)
        for order in (ancestry(history, [m]), reachable(history, [m]).commits):
            position = {c: i for i, c in enumerate(order)}
            for c in order:
                for parent in history.commit(c).parents:
                    assert position[c] < position[parent], "a commit listed after its parent"


# -- cost: objects loaded, not seconds -------------------------------------------------------


class CountingStore(ObjectStore):
    """Another store's objects; remembers every name read."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.location = inner.location
        self.loaded: list[bytes] = []

    def get_many(self, names: Sequence[bytes]) -> list[bytes | None]:
        self.loaded.extend(bytes(n) for n in names)
        return self.inner.get_many(names)

    def has_many(self, names: Sequence[bytes]) -> list[bool]:
        return self.inner.has_many(names)

    def write(self, batch: WriteBatch) -> None:
        self.inner.write(batch)

    def names(self, kind: Kind, prefix: bytes = b""):
        return self.inner.names(kind, prefix)

    def delete_many(self, names: Iterable[bytes]) -> int:
        return self.inner.delete_many(names)


def counted(repo: tc.Repository) -> tuple[History, CountingStore]:
    """A fresh history (no cached commits or pages) over the repository's objects, counted."""
    inner = history_of(repo)
    store = CountingStore(inner.objects)
    return History(store, inner.refs), store


RECORDS = 20_000
CHANGED = [5, 9_000, 17_321]


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory: pytest.TempPathFactory):
    """``old``: 20,000 records in one column; ``new``: 3 of them changed."""
    path = tmp_path_factory.mktemp("big") / "repo"
    repo = tc.init(path, user_name="Ada", user_email="ada@example.org")
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("x", (), "int64").update(np.arange(RECORDS), np.arange(RECORDS))
        old = co.commit("20,000 records")
    with repo.checkout(write=True) as co:
        co["x"].update(CHANGED, -np.arange(1, len(CHANGED) + 1, dtype=np.int64))
        new = co.commit("3 changed")
        fresh = {bytes.fromhex(co["x"].digest(k)) for k in CHANGED}
    try:
        yield repo, old, new, fresh
    finally:
        repo.close()


def test_cost_follows_the_difference_not_the_repository(big_repo) -> None:
    repo, old, new, fresh = big_repo
    model = Model(history_of(repo))
    everything = model.reach([new])
    root = history_of(repo).columns(new)["x"].tree
    depth = history_of(repo).tree.node(root).level + 1
    leaves_per_tree = len(model.one(new).leaves)
    assert leaves_per_tree > 20  # the tree is big enough for the counts below to mean much

    history, store = counted(repo)
    inc = reachable(history, [new], excluding=[old])
    loaded_inc = len(store.loaded)
    assert inc.commits == [new]
    assert fresh <= inc.digests
    assert len(inc.digests) <= 2 * 512
    assert inc.pages <= len(CHANGED) * depth
    assert loaded_inc < 50
    assert loaded_inc <= 6 + 4 * len(CHANGED) * depth  # commits, roots, changed paths x 2 sides

    history, store = counted(repo)
    assert reachable(history, [new], excluding=[old], digests=False).commits == [new]
    assert len(store.loaded) <= loaded_inc

    history, store = counted(repo)
    full = reachable(history, [new])
    assert full.pages == len(everything.pages)
    assert len(full.digests) == RECORDS + len(CHANGED)
    assert set(store.loaded) >= model.one(new).pages  # every page read, once at least
    assert len(set(store.loaded)) > 2 * loaded_inc
    assert full.objects == everything.objects


def test_cost_of_deleting_a_column_does_not_depend_on_its_size(big_repo) -> None:
    """Nothing new is reached: the deleted column's pages are not worth reading."""
    repo, _, new, _ = big_repo
    repo.create_branch("dropped", base=new)
    with repo.checkout(write=True, branch="dropped") as co:
        co.delete_column("x")
        co.add_ndarray_column("y", (), "int64")[0] = np.int64(1)
        dropped = co.commit("drop x")
    history, store = counted(repo)
    got = reachable(history, [dropped], excluding=[new])
    assert got.commits == [dropped]
    assert len(store.loaded) < 20


def test_cost_does_not_depend_on_unchanged_columns(tmp_path: Path) -> None:
    repo = tc.init(tmp_path / "repo", user_name="Ada", user_email="ada@example.org")
    with repo:
        keys = np.arange(RECORDS)
        with repo.checkout(write=True) as co:
            co.add_ndarray_column("x", (), "int64").update(keys, keys)
            co.add_ndarray_column("same", (), "int64").update(keys, keys + 1_000_000)
            old = co.commit("two columns")
        with repo.checkout(write=True) as co:
            co["x"].update(CHANGED, -np.arange(1, len(CHANGED) + 1, dtype=np.int64))
            new = co.commit("3 changed in x")
        same = column_objects(Model(history_of(repo)), new, "same")[2]
        history, store = counted(repo)
        inc = reachable(history, [new], excluding=[old])
        assert inc.commits == [new]
        assert not inc.objects & same
        assert not set(store.loaded) & same  # pages of the unchanged column: never read
        assert len(store.loaded) < 50


# -- damage ----------------------------------------------------------------------------------


@pytest.fixture
def two_columns(tmp_path: Path):
    """Columns a and b (3,000 records each, ~6 pages); then a commit changing b only.

    Every object of column a is shared by both commits.
    """
    repo = tc.init(tmp_path / "repo", user_name="Ada", user_email="ada@example.org")
    keys = np.arange(3_000)
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("a", (), "int64").update(keys, keys)
        co.add_ndarray_column("b", (), "int64").update(keys, keys + 1_000_000)
        first = co.commit("a and b")
    with repo.checkout(write=True) as co:
        co["b"].update([1, 2_000], np.array([-1, -2], dtype=np.int64))
        second = co.commit("b changed")
    try:
        yield repo, first, second
    finally:
        repo.close()


def column_objects(model: Model, commit: str, name: str) -> tuple[bytes, ColumnRoot, set[bytes]]:
    """Hash and root of a column of ``commit``, and every page of its tree."""
    history = model.history
    records = RecordRoot.from_bytes(history.load_object(history.commit(commit).records))
    root_hash = dict(records.columns)[name]
    root = ColumnRoot.from_bytes(history.load_object(root_hash))
    return root_hash, root, {p.hash for p in model.tree.pages(root.tree)}


@pytest.mark.parametrize("lost", ["leaf", "top page", "column root"])
def test_damage_is_reported_where_it_is_and_the_walk_goes_on(two_columns, lost: str) -> None:
    repo, first, second = two_columns
    history = history_of(repo)
    model = Model(history)
    want = model.reach([second])
    a_hash, a_root, a_pages = column_objects(model, second, "a")
    a_leaves = {h for h in a_pages if h in want.leaves}
    assert len(a_leaves) > 2 and a_hash == column_objects(model, first, "a")[0]
    b_objects = model.reach([first, second]).objects - a_pages - {a_hash}
    b_objects -= {history.commit(c).records for c in (first, second)}
    b_digests = want.digests - {d for h in a_leaves for d in model.tree.node(h).values()}

    if lost == "leaf":
        victim = sorted(a_leaves)[1]
        unreached = {victim}
        where = "a record page of column 'a'"
    elif lost == "top page":
        victim = a_root.tree
        assert model.tree.node(victim).level > 0
        unreached = a_pages
        where = "a record page of column 'a'"
    else:
        victim = a_hash
        unreached = a_pages | {a_hash}
        where = "column 'a' of commit "
    lost_digests = {d for h in unreached & a_leaves for d in model.tree.node(h).values()}
    assert history.objects.delete_many([victim]) == 1

    problems: list[tuple[str, Exception]] = []
    got = reachable(history, [second], on_damage=lambda w, e: problems.append((w, e)))
    assert len(problems) == 1, problems  # reached through both commits, reported once
    assert problems[0][0].startswith(where)
    assert isinstance(problems[0][1], tc.CorruptionError)
    assert set(got.commits) == {first, second}
    assert want.objects - unreached <= got.objects <= want.objects
    assert b_objects <= got.objects  # the other column was walked all the same
    assert b_digests <= got.digests
    assert got.digests == want.digests - lost_digests

    with pytest.raises(tc.CorruptionError):
        reachable(history, [second])
    with pytest.raises(tc.CorruptionError):
        reachable(history, [second], digests=False)


def test_a_missing_parent_commit_is_reported_and_the_rest_walked(two_columns) -> None:
    repo, first, second = two_columns
    model = Model(history_of(repo))
    want = model.one(second)
    inner = history_of(repo)
    assert inner.objects.delete_many([bytes.fromhex(first)]) == 1
    history = History(inner.objects, inner.refs)  # no commit cached

    problems: list[tuple[str, Exception]] = []
    got = reachable(history, [second], on_damage=lambda w, e: problems.append((w, e)))
    assert [w for w, _ in problems] == [f"commit {first}"]
    assert isinstance(problems[0][1], tc.CaskError)
    assert got.commits == [second]
    assert (got.objects, got.digests) == (want.objects, want.digests)
    assert ancestry(history, [second], on_damage=lambda w, e: None) == [second]
    with pytest.raises(tc.CaskError):
        reachable(history, [second])
