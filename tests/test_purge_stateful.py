"""A Hypothesis state machine: purge (SPEC §6, docs/purge.md) against a pure-Python model.

The repository has three columns, one per storage backend: "fix", a (32,)
uint8 column (memmap); "var", a variable-shape uint8 column (HDF5); "txt", a
str column (LMDB). Keys are the ints 0..7 and every value comes from a small
pool of labelled, distinctive random contents, so the same content under
other keys, in other commits and in other columns (a (32,) array has one
digest in "fix" and "var") is the common case, not the exception.

The model is a list of commits (column -> key -> label), the staged view of
the writer, the tombstone listing (kind, column, key, label, lifted) in the
order purges and lifts made it, and the labels whose bytes must be gone.
Rules write (single, batched, refused or allowed again), delete, commit,
reset, purge keys (optionally deleting them on "main" too), purge contents
(held ones or never-held ones), gc and reopen the repository; each opens the
write checkout it needs and closes it, since a purge takes the writer lock.

After every step, over every recorded commit (and the staged view): each
key reads back its value unless a tombstone in force covers it, and then
raises ``PurgedDataError`` naming column, key and a reason in force;
``get_many`` agrees (raises if any key is purged); keys and digests are
unchanged by purges; the same reads through resolved column tables;
``verify(full=True)`` passes; ``repo.tombstones()`` is the model's listing;
and a scan of every file of the repository finds no byte pattern of a
content that was purged and held by no unpurged sample when it was purged
(and not stored again since), and finds every content an unpurged sample
holds. Bytes a purge kept because an unpurged sample held them are not
required to disappear when that sample later does (a reset, an overwrite):
docs/purge.md promises removal when the purge returns.

Until ``tensorcask/storage/lmdb_pages.py`` exists (LMDB free-page
scrubbing), str patterns left in ``data/lmdb/`` only are tolerated and
reported as a warning ("pending lmdb_pages"); once it exists they fail.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import tensorcask as tc
import tensorcask.columns as tc_columns
from tensorcask.hashing import array_digest_prefix, blob_digest

# -- the content pool: labelled, distinctive, shared ---------------------------------

_rng = np.random.default_rng(20260601)
LETTERS = np.array(list("ghijklmnopqrstuvwxyz"))  # no hex digit: never part of a digest


def _array(n: int) -> np.ndarray:
    return _rng.integers(0, 256, n, dtype=np.uint8)


VALUES: dict[str, Any] = {f"a{i}": _array(32) for i in range(4)}  # "fix" and "var"
VALUES.update({f"b{i}": _array(40) for i in range(2)})  # "var" only
VALUES.update({f"s{i}": "".join(_rng.choice(LETTERS, 36)) for i in range(4)})  # "txt"

POOLS = {
    "fix": [f"a{i}" for i in range(4)],
    "var": [f"a{i}" for i in range(4)] + ["b0", "b1"],
    "txt": [f"s{i}" for i in range(4)],
}
COLUMNS = tuple(POOLS)
KEYS = list(range(8))
ALL_LABELS = sorted(VALUES)


def _pattern(label: str) -> bytes:
    value = VALUES[label]
    return value.encode() if isinstance(value, str) else value.tobytes()


def _digest(label: str) -> str:
    value = VALUES[label]
    if isinstance(value, str):
        return blob_digest("str", value.encode()).hex()
    h = array_digest_prefix(value.dtype, value.shape)
    h.update(value.tobytes())
    return h.hexdigest()


PATTERNS = {label: _pattern(label) for label in VALUES}
DIGESTS = {label: _digest(label) for label in VALUES}
LABEL_OF = {d: label for label, d in DIGESTS.items()}
assert len(set(DIGESTS.values())) == len(DIGESTS)

LMDB_PAGES = importlib.util.find_spec("tensorcask.storage.lmdb_pages") is not None

View = dict[str, dict[int, str]]  # column -> key -> label


def copy_view(view: View) -> View:
    return {c: dict(samples) for c, samples in view.items()}


def same_value(got: Any, label: str) -> bool:
    want = VALUES[label]
    if isinstance(want, str):
        return type(got) is str and got == want
    return (
        isinstance(got, np.ndarray)
        and got.dtype == np.uint8
        and got.shape == want.shape
        and got.tobytes() == want.tobytes()
    )


@contextlib.contextmanager
def column_tables() -> Iterator[None]:
    """Make read checkouts resolve a column's table at the first read (the batch path
    loaders use) instead of after thousands of reads."""
    old = tc_columns._TABLE_MIN_READS, tc_columns._TABLE_SHARE
    tc_columns._TABLE_MIN_READS, tc_columns._TABLE_SHARE = 0, 1 << 30
    try:
        yield
    finally:
        tc_columns._TABLE_MIN_READS, tc_columns._TABLE_SHARE = old


class Stone:
    """One tombstone of the model."""

    def __init__(self, kind: str, column: str | None, key: int | None, label: str, reason: str):
        self.kind, self.column, self.key, self.label, self.reason = kind, column, key, label, reason
        self.lifted = False

    def row(self) -> tuple[Any, ...]:
        return (self.kind, self.column, self.key, DIGESTS[self.label], self.lifted)


class PurgeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="tc-purge-stateful-"))
        self.path = self.tmp / "repo"
        self.repo = tc.init(self.path, user_name="Ada", user_email="ada@example.org")
        with self.repo.checkout(write=True) as co:
            co.add_ndarray_column("fix", shape=(32,), dtype="uint8")
            co.add_ndarray_column("var", shape=(None,), dtype="uint8", max_shape=(64,))
            co.add_str_column("txt")
            first = co.commit("columns")
        empty: View = {c: {} for c in COLUMNS}
        self.commits: list[tuple[str, View]] = [(first, copy_view(empty))]
        self.staged: View = copy_view(empty)
        self.stones: list[Stone] = []
        self.gone: set[str] = set()  # labels whose bytes must be in no file
        self.ops = 0
        self.lmdb_pending: set[str] = set()

    def teardown(self) -> None:
        try:
            self.repo.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if self.lmdb_pending:
            warnings.warn(
                "pending lmdb_pages: bytes of purged str contents "
                f"{sorted(self.lmdb_pending)} still in data/lmdb/ (free pages not scrubbed)",
                stacklevel=1,
            )

    # -- the model's questions -------------------------------------------

    def content_stone(self, label: str) -> Stone | None:
        for s in self.stones:
            if s.kind == "content" and s.label == label and not s.lifted:
                return s
        return None

    def key_stone(self, column: str, key: int, label: str) -> Stone | None:
        for s in self.stones:
            if (s.kind, s.column, s.key, s.label) == ("key", column, key, label) and not s.lifted:
                return s
        return None

    def covering(self, column: str, key: int, label: str) -> list[Stone]:
        return [
            s
            for s in (self.content_stone(label), self.key_stone(column, key, label))
            if s is not None
        ]

    def purged(self, column: str, key: int, label: str) -> bool:
        return bool(self.covering(column, key, label))

    def views(self) -> list[View]:
        return [view for _, view in self.commits] + [self.staged]

    def samples(self) -> set[tuple[str, int, str]]:
        return {
            (c, k, lab) for view in self.views() for c, kv in view.items() for k, lab in kv.items()
        }

    def held_unpurged(self) -> set[str]:
        return {lab for c, k, lab in self.samples() if not self.purged(c, k, lab)}

    def held_keys(self, column: str) -> list[int]:
        return sorted({k for view in self.views() for k in view[column]})

    @property
    def last(self) -> View:
        return self.commits[-1][1]

    def reason(self) -> str:
        self.ops += 1
        return f"erasure request {self.ops}"

    # -- writes ----------------------------------------------------------

    @initialize(data=st.data(), commits=st.integers(1, 2))
    def fill(self, data: st.DataObject, commits: int) -> None:
        """One or two commits of every column, so that purges meet shared history at once."""
        for n in range(commits):
            with self.repo.checkout(write=True) as co:
                for column in COLUMNS:
                    fill = data.draw(
                        st.dictionaries(
                            st.sampled_from(KEYS), st.sampled_from(POOLS[column]), max_size=6
                        ),
                        label=f"{column} in commit {n + 1}",
                    )
                    if fill:
                        co[column].update({k: VALUES[lab] for k, lab in fill.items()})
                        self.staged[column].update(fill)
                if self.staged == self.last:
                    continue
                cid = co.commit(f"fill {n + 1}")
            self.commits.append((cid, copy_view(self.staged)))

    @rule(
        column=st.sampled_from(COLUMNS),
        how=st.sampled_from(["setitem", "update", "update_map", "update_allow", "checkout_allow"]),
        data=st.data(),
    )
    def write(self, column: str, how: str, data: st.DataObject) -> None:
        n = 1 if how == "setitem" else 3
        keys = data.draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=n, unique=True))
        labels = [data.draw(st.sampled_from(POOLS[column]), label="content") for _ in keys]
        refused = [
            s for k, lab in zip(keys, labels, strict=True) for s in self.covering(column, k, lab)
        ]
        allow = how in ("update_allow", "checkout_allow")
        values = [VALUES[lab] for lab in labels]
        with self.repo.checkout(write=True, allow_purged=how == "checkout_allow") as co:
            col = co[column]

            def do() -> None:
                if how == "setitem" or (how == "checkout_allow" and len(keys) == 1):
                    col[keys[0]] = values[0]
                elif how == "update_map" or column == "var":
                    col.update(
                        dict(zip(keys, values, strict=True)), allow_purged=how == "update_allow"
                    )
                elif column == "fix":
                    col.update(keys, np.stack(values), allow_purged=how == "update_allow")
                else:
                    col.update(keys, values, allow_purged=how == "update_allow")

            if refused and not allow:
                with pytest.raises(tc.PurgedDataError) as info:
                    do()
                assert info.value.column == column, str(info.value)
                return
            do()
        for s in refused:
            s.lifted = True
        for k, lab in zip(keys, labels, strict=True):
            self.staged[column][k] = lab
            self.gone.discard(lab)  # stored again

    @rule(column=st.sampled_from(COLUMNS), key=st.sampled_from(KEYS))
    def delete(self, column: str, key: int) -> None:
        with self.repo.checkout(write=True) as co:
            if key in self.staged[column]:
                del co[column][key]
                del self.staged[column][key]
            else:
                with pytest.raises(KeyError):
                    del co[column][key]

    @rule()
    def commit(self) -> None:
        with self.repo.checkout(write=True) as co:
            if self.staged == self.last:
                try:
                    cid = co.commit(f"commit {len(self.commits)}")
                except tc.CaskError as err:  # staged edits that changed nothing: either way
                    assert "nothing to commit" in str(err), err
                    return
            else:
                cid = co.commit(f"commit {len(self.commits)}")
        assert cid not in dict(self.commits)
        self.commits.append((cid, copy_view(self.staged)))

    @rule()
    def reset(self) -> None:
        with self.repo.checkout(write=True) as co:
            co.reset_staging_area()
        self.staged = copy_view(self.last)

    # -- purges ----------------------------------------------------------

    @precondition(lambda self: any(self.held_keys(c) for c in COLUMNS))
    @rule(data=st.data(), remove_from_main=st.booleans())
    def purge_keys(self, data: st.DataObject, remove_from_main: bool) -> None:
        column = data.draw(st.sampled_from([c for c in COLUMNS if self.held_keys(c)]))
        keys = data.draw(
            st.lists(st.sampled_from(self.held_keys(column)), min_size=1, max_size=3, unique=True)
        )
        reason = self.reason()
        branches = ["main"] if remove_from_main else []
        if remove_from_main and self.staged != self.last:
            with pytest.raises(tc.CaskError, match="staged changes"):
                self.repo.purge(column, keys, reason=reason, remove_from_branches=branches)
            return
        pairs = sorted(
            {(k, view[column][k]) for view in self.views() for k in keys if k in view[column]}
        )
        fresh = [(k, lab) for k, lab in pairs if self.key_stone(column, k, lab) is None]
        try:
            report = self.repo.purge(column, keys, reason=reason, remove_from_branches=branches)
        except tc.CaskError as err:  # staged edits that change nothing still count as staged
            assert remove_from_main and "staged changes" in str(err), err
            return
        assert report.tombstones == len(fresh), (report, pairs, fresh)
        assert report.already == len(pairs) - len(fresh), (report, pairs, fresh)
        for k, lab in fresh:
            self.stones.append(Stone("key", column, k, lab, reason))
        held = self.held_unpurged()
        candidates = {lab for _, lab in fresh} - self.gone
        candidates -= {lab for lab in candidates if self.content_stone(lab) is not None}
        assert report.kept == len(candidates & held), (report, candidates, held)
        self.gone |= candidates - held
        removed_keys = [k for k in keys if k in self.last[column]]
        if remove_from_main and removed_keys:
            cid = report.branches["main"]
            view = copy_view(self.last)
            for k in removed_keys:
                del view[column][k]
            self.commits.append((cid, view))
            self.staged = copy_view(view)
        else:
            assert not report.branches, report

    @precondition(lambda self: any(len(self.held_keys(c)) < len(KEYS) for c in COLUMNS))
    @rule(data=st.data())
    def purge_missing_key(self, data: st.DataObject) -> None:
        """A key no commit and no staged write holds: KeyError, nothing purged."""
        choices = [(c, k) for c in COLUMNS for k in KEYS if k not in self.held_keys(c)]
        column, key = data.draw(st.sampled_from(choices))
        held = self.held_keys(column)
        with pytest.raises(KeyError):
            self.repo.purge(column, [key, *held[:1]], reason=self.reason())

    @rule(labels=st.lists(st.sampled_from(ALL_LABELS), min_size=1, max_size=2, unique=True))
    def purge_content(self, labels: list[str]) -> None:
        reason = self.reason()
        fresh = [lab for lab in labels if self.content_stone(lab) is None]
        report = self.repo.purge_content([DIGESTS[lab] for lab in labels], reason=reason)
        assert report.tombstones == len(fresh), report
        assert report.already == len(labels) - len(fresh), report
        for lab in fresh:
            self.stones.append(Stone("content", None, None, lab, reason))
        self.gone |= set(fresh)

    # -- maintenance -----------------------------------------------------

    @rule()
    def gc(self) -> None:
        self.repo.gc()

    @rule()
    def reopen(self) -> None:
        self.repo.close()
        self.repo = tc.Repository(self.path)

    # -- checks ----------------------------------------------------------

    def check_view(self, co: Any, view: View, what: str) -> None:
        for column in COLUMNS:
            col = co[column]
            want = view[column]
            keys = sorted(want)
            assert col.keys() == keys, f"{what}: {column}.keys() {col.keys()} != {keys}"
            for k in keys:
                label = want[k]
                assert col.digest(k) == DIGESTS[label], f"{what}: {column}.digest({k})"
                stones = self.covering(column, k, label)
                if stones:
                    with pytest.raises(tc.PurgedDataError) as info:
                        col[k]
                    err = info.value
                    assert (err.column, err.key) == (column, k), f"{what}: {column}[{k}]: {err}"
                    assert err.reason in {s.reason for s in stones}, f"{what}: {err.reason}"
                else:
                    got = col[k]
                    assert same_value(got, label), f"{what}: {column}[{k}] != {label}"
            if not keys:
                continue
            if any(self.purged(column, k, want[k]) for k in keys):
                with pytest.raises(tc.PurgedDataError):
                    col.get_many(keys)
            else:
                got = col.get_many(keys)
                rows = list(got) if isinstance(got, np.ndarray) else got
                bad = [k for k, g in zip(keys, rows, strict=True) if not same_value(g, want[k])]
                assert not bad, f"{what}: {column}.get_many wrong at {bad}"

    @invariant()
    def reads_follow_the_model(self) -> None:
        for n, (cid, view) in enumerate(self.commits):
            with self.repo.checkout(commit=cid) as rc:
                self.check_view(rc, view, f"commit {n}")
            with column_tables(), self.repo.checkout(commit=cid) as rc:
                self.check_view(rc, view, f"commit {n} (column tables)")
        with self.repo.checkout(write=True) as co:
            self.check_view(co, self.staged, "write checkout")

    @invariant()
    def verify_passes(self) -> None:
        report = self.repo.verify(full=True, raise_on_error=False)
        assert report.ok, str(report)

    @invariant()
    def tombstones_match(self) -> None:
        got = Counter(
            (t.kind, t.column, t.key, t.digest, t.lifted is not None)
            for t in self.repo.tombstones()
        )
        want = Counter(s.row() for s in self.stones)
        assert got == want, f"tombstones: extra {got - want}, missing {want - got}"

    @invariant()
    def bytes_on_disk(self) -> None:
        files: dict[str, bytes] = {}
        for dirpath, _, names in os.walk(self.path):
            for name in names:
                p = Path(dirpath, name)
                files[p.relative_to(self.path).as_posix()] = p.read_bytes()
        held = self.held_unpurged()
        assert not held & self.gone, (held, self.gone)
        for label in sorted(self.gone):
            where = [n for n, data in files.items() if PATTERNS[label] in data]
            if (
                where
                and not LMDB_PAGES
                and label.startswith("s")
                and all(n.startswith("data/lmdb/") for n in where)
            ):
                self.lmdb_pending.add(label)
                continue
            assert not where, f"purged content {label} still in {where}"
        for label in sorted(held):
            assert any(PATTERNS[label] in data for data in files.values()), (
                f"content {label}, held by an unpurged sample, is in no file"
            )


PurgeMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPurgeMachine = PurgeMachine.TestCase


# -- minimal reproductions of what the machine found -----------------------------------


def _files_holding(root: Path, pattern: bytes) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and pattern in p.read_bytes()
    )


def test_batch_read_after_purged_content_is_stored_again(tmp_path: Path) -> None:
    """A content purged, read in a batch (which resolves and caches the column table),
    then stored again with ``allow_purged=True``: the tombstone is lifted, single reads
    return it, but batch reads (and single reads once the checkout uses the table) go to
    the location the purge overwrote, in memory and after reopening (``cache/``)."""
    n = 4096  # get_many of a whole column this size resolves its table
    rows = np.random.default_rng(1).integers(0, 256, (n, 16), dtype=np.uint8)
    repo = tc.init(tmp_path / "repo", user_name="Ada", user_email="ada@example.org")
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("img", shape=(16,), dtype="uint8").update(range(n), rows)
        c1 = co.commit("one")
        digest = co["img"].digest(1)
    repo.purge_content([digest], reason="DMCA")
    with repo.checkout(commit=c1) as rc, pytest.raises(tc.PurgedDataError):
        rc["img"].get_many(range(n))
    with repo.checkout(write=True) as co:
        co["img"].update({n: rows[1]}, allow_purged=True)  # stored again: lifted
    with repo.checkout(commit=c1) as rc:
        assert rc["img"][1].tobytes() == rows[1].tobytes()  # no table yet: fine
    with repo.checkout(commit=c1) as rc:
        assert rc["img"].get_many(range(n)).tobytes() == rows.tobytes()  # was a CorruptionError
    repo.close()
    repo = tc.Repository(tmp_path / "repo")
    with repo.checkout(commit=c1) as rc:
        assert rc["img"].get_many(range(n)).tobytes() == rows.tobytes()
    repo.close()


def test_purge_content_after_gc_leaves_no_bytes(tmp_path: Path) -> None:
    """Content written and overwritten before a commit is garbage; ``gc`` drops its index
    entry but keeps its segment (another sample lives there), so a later
    ``purge_content`` of it finds nothing to overwrite and its bytes stay on disk."""
    root = tmp_path / "repo"
    secret, other = np.random.default_rng(2).integers(0, 256, (2, 64), dtype=np.uint8)
    repo = tc.init(root, user_name="Ada", user_email="ada@example.org")
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("a", shape=(64,), dtype="uint8")
        col[0] = secret  # added by mistake
        digest = col.digest(0)
        col[0] = other  # and replaced before the commit
        co.commit("one")
    repo.gc()
    repo.purge_content([digest], reason="leaked secret")
    assert _files_holding(root, other.tobytes())  # the scan sees stored bytes
    assert _files_holding(root, secret.tobytes()) == []  # data/memmap/00000001.seg
    repo.close()
