"""Purge (SPEC §6, docs/purge.md) through the public API.

The central check is a byte scan: every sample is a distinctive random
pattern (``os.urandom``), and after a purge every file under the repository
folder is read and searched for it. Purged patterns must be in no file;
patterns that unpurged samples hold must still be found (the positive
control: it proves the scan would have seen the purged ones). A pattern is
searched as a handful of short windows (12 bytes, far too long to occur by
chance), so that bytes a compressor leaves in short literal runs (lzf) are
found as well: "gone" means no window of it is found anywhere, "present"
means at least one is.

Besides the bytes: reads in every commit (old checkouts, ``get_many``, the
column tables batch reads use, handles opened before the purge), key
listings, log, diff and commit ids unchanged, ``verify(full=True)``, writes
of purged content refused unless ``allow_purged=True`` (and the lift
recorded), ``remove_from_branches``, argument errors, and the error itself.

LMDB values (str and bytes columns) only disappear from ``data/lmdb/data.mdb``
once its free pages are scrubbed (``tensorcask/storage/lmdb_pages.py``); the
scans of those kinds fail until that module exists.
"""

from __future__ import annotations

import base64
import os
import pickle
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tensorcask as tc

WINDOW = 12  # bytes per searched window: 2**-60 or less to occur by chance
WINDOWS = 24  # windows per pattern (evenly spread over it)
WHO = "Ada <ada@example.org>"
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


# -- distinctive values, one kind per storage path --------------------------------------------


def _array(n: int) -> np.ndarray:
    return np.frombuffer(os.urandom(n), dtype=np.uint8).copy()


def _text(n: int) -> str:
    """Random base32 text (A-Z, 2-7): never part of a hex digest or a JSON key."""
    return base64.b32encode(os.urandom(n * 5 // 8 + 5)).decode()[:n]


@dataclass(frozen=True)
class Kind:
    """One way samples are stored: how to make the column and a distinctive value."""

    name: str
    backend_dir: str  # the folder under data/ that must hold its bytes
    add: Callable[[tc.WriteCheckout, str], tc.Column]
    value: Callable[[], Any]


KINDS = {
    k.name: k
    for k in [
        Kind(
            "fixed-memmap",
            "memmap",
            lambda co, name: co.add_ndarray_column(name, shape=(256,), dtype="uint8"),
            lambda: _array(256),
        ),
        Kind(
            "var-hdf5",
            "hdf5",
            lambda co, name: co.add_ndarray_column(name, shape=(None,), dtype="uint8"),
            lambda: _array(int(np.random.default_rng().integers(200, 400))),
        ),
        Kind(
            # 96 KiB random samples fill whole 256 KiB chunks with incompressible bytes,
            # which deflate stores as they are: the positive control can see them.
            "gzip-hdf5",
            "hdf5",
            lambda co, name: co.add_ndarray_column(
                name, shape=(None,), dtype="uint8", compression="gzip"
            ),
            lambda: _array(96 << 10),
        ),
        Kind(
            "zstd-hdf5",
            "hdf5",
            lambda co, name: co.add_ndarray_column(
                name, shape=(None,), dtype="uint8", compression="zstd"
            ),
            lambda: _array(96 << 10),  # incompressible: zstd keeps such blocks as they are
        ),
        Kind(
            "lzf-hdf5",
            "hdf5",
            lambda co, name: co.add_ndarray_column(
                name, shape=(None,), dtype="uint8", compression="lzf"
            ),
            lambda: _array(4096),
        ),
        Kind("str-lmdb", "lmdb", lambda co, name: co.add_str_column(name), lambda: _text(48)),
        Kind(
            "str-large-lmdb",
            "lmdb",
            lambda co, name: co.add_str_column(name),
            lambda: _text(12 << 10),
        ),
        Kind(
            "bytes-small-lmdb",
            "lmdb",
            lambda co, name: co.add_bytes_column(name),
            lambda: os.urandom(64),
        ),
        Kind(
            "bytes-large-lmdb",
            "lmdb",
            lambda co, name: co.add_bytes_column(name),
            lambda: os.urandom(12 << 10),  # > 8 KiB: LMDB overflow pages
        ),
    ]
}


def raw_bytes(value: Any) -> bytes:
    """The bytes a backend stores for ``value``."""
    if isinstance(value, np.ndarray):
        return value.tobytes()
    if isinstance(value, str):
        return value.encode()
    return bytes(value)


def same(got: Any, want: Any) -> bool:
    """``got`` is exactly ``want`` (type, dtype, shape and bytes)."""
    if isinstance(want, np.ndarray):
        return (
            isinstance(got, np.ndarray)
            and got.dtype == want.dtype
            and got.shape == want.shape
            and got.tobytes() == want.tobytes()
        )
    return type(got) is type(want) and got == want


# -- the byte scan ------------------------------------------------------------------------------


def windows(pattern: bytes) -> list[bytes]:
    """Up to WINDOWS windows of WINDOW bytes spread evenly over ``pattern``."""
    if len(pattern) <= WINDOW:
        return [pattern]
    last = len(pattern) - WINDOW
    starts = sorted({round(i * last / (WINDOWS - 1)) for i in range(WINDOWS)})
    return [pattern[s : s + WINDOW] for s in starts]


def read_all(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (os.walk), relative path -> its bytes."""
    out: dict[str, bytes] = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def where(files: dict[str, bytes], value: Any) -> list[str]:
    """The files holding any window of ``value``'s bytes."""
    needles = windows(raw_bytes(value))
    return sorted(name for name, data in files.items() if any(n in data for n in needles))


class Scanner:
    """Scans a repository folder; records purged patterns found (asserted at the end,
    so that one test reports every stage and label that leaks) and fails at once when
    a pattern that must be there is not (the scan would prove nothing)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.leaks: list[str] = []

    def check(self, stage: str, gone: dict[str, Any], present: dict[str, Any]) -> None:
        files = read_all(self.root)
        assert files, f"{stage}: nothing to scan under {self.root}"
        for label, value in present.items():
            assert where(files, value), (
                f"{stage}: positive control failed: the bytes of unpurged {label!r} are in "
                f"no file under {self.root}"
            )
        for label, value in gone.items():
            found = where(files, value)
            if found:
                self.leaks.append(f"{stage}: purged {label!r} still in {found}")

    def assert_clean(self) -> None:
        assert not self.leaks, "purged bytes left on disk:\n" + "\n".join(self.leaks)


def assert_purged(col: tc.Column, key: Any, reason: str | None = None) -> tc.PurgedDataError:
    with pytest.raises(tc.PurgedDataError) as info:
        col[key]
    err = info.value
    assert err.column == col.name
    assert err.key == key
    if reason is not None:
        assert err.reason == reason
    return err


def new_repo(path: Path) -> tc.Repository:
    return tc.init(path, user_name="Ada", user_email="ada@example.org")


# -- 1. byte-pattern scans, every storage kind -------------------------------------------------


@pytest.mark.parametrize("kind_name", list(KINDS))
def test_purged_bytes_leave_every_file(tmp_path, kind_name):
    kind = KINDS[kind_name]
    root = tmp_path / "repo"
    repo = new_repo(root)
    labels = [
        "old",  # only in the first commit (deleted in the second)
        "head",  # in every commit of main
        "dev",  # only on branch dev
        "staged",  # staged on main, not committed when purged
        "keep_a",
        "keep_b",
        "keep_dev",
        "keep_staged",
        "late",  # purged by the second purge
    ]
    v = {label: kind.value() for label in labels}
    scan = Scanner(root)

    with repo.checkout(write=True) as co:
        col = kind.add(co, "c")
        for label in ("old", "head", "keep_a", "late"):
            col[label] = v[label]
        c1 = co.commit("first")
    repo.create_branch("dev", c1)
    with repo.checkout(write=True) as co:
        del co["c"]["old"]
        co["c"]["keep_b"] = v["keep_b"]
        c2 = co.commit("second: old deleted")
    with repo.checkout(write=True, branch="dev") as co:
        co["c"]["dev"] = v["dev"]
        co["c"]["keep_dev"] = v["keep_dev"]
        d1 = co.commit("dev work")
    co = repo.checkout(write=True, branch="main")
    co["c"]["staged"] = v["staged"]
    co["c"]["keep_staged"] = v["keep_staged"]
    co.close()  # the staging area persists; the purge needs the writer lock

    files = read_all(root)
    for label in labels:  # each value reached its backend, and the scan sees it
        assert any(
            name.startswith(os.path.join("data", kind.backend_dir))
            for name in where(files, v[label])
        ), f"{label!r} is not in data/{kind.backend_dir}/ before the purge"
    scan.check("before the purge", gone={}, present=v)
    log_before = {b: repo.log(b) for b in ("main", "dev")}
    branches_before = repo.branches

    purged = ["old", "head", "dev", "staged"]
    report = repo.purge("c", purged, reason="GDPR erasure 1")
    assert isinstance(report, tc.PurgeReport)
    assert (report.tombstones, report.already, report.removed, report.kept) == (4, 0, 4, 0)
    assert report.bytes_removed >= sum(len(raw_bytes(v[k])) for k in purged)
    assert report.branches == {}
    kept = {k: v[k] for k in labels if k not in purged}
    scan.check("after the purge", gone={k: v[k] for k in purged}, present=kept)

    # Reads: every commit refuses the purged samples and serves the others.
    with repo.checkout(commit=c1) as co:
        for k in ("old", "head"):
            assert_purged(co["c"], k, "GDPR erasure 1")
        assert same(co["c"]["keep_a"], v["keep_a"])
        assert same(co["c"]["late"], v["late"])
        assert "old" in co["c"] and "old" in list(co["c"])
    with repo.checkout(commit=c2) as co:
        assert_purged(co["c"], "head")
        assert "old" not in co["c"]
        assert same(co["c"]["keep_b"], v["keep_b"])
    with repo.checkout(commit=d1) as co:
        assert_purged(co["c"], "dev")
        assert same(co["c"]["keep_dev"], v["keep_dev"])
    with repo.checkout(write=True, branch="main") as co:
        assert_purged(co["c"], "staged")  # a staged record: purged as well
        assert same(co["c"]["keep_staged"], v["keep_staged"])
        assert sorted(co["c"].keys()) == sorted(
            ["head", "keep_a", "keep_b", "late", "staged", "keep_staged"]
        )
        c3 = co.commit("commit what was staged")
    with repo.checkout(commit=c3) as co:
        assert_purged(co["c"], "staged")
        assert_purged(co["c"], "head")
        assert same(co["c"]["keep_staged"], v["keep_staged"])
    assert repo.log("dev") == log_before["dev"]
    assert repo.log("main")[1:] == log_before["main"]
    assert repo.branches["dev"] == branches_before["dev"]
    scan.check("after committing", gone={k: v[k] for k in purged}, present=kept)

    # gc keeps the purged bytes out (and keeps the others).
    repo.gc()
    scan.check("after gc", gone={k: v[k] for k in purged}, present=kept)
    with repo.checkout(commit=c1) as co:
        assert_purged(co["c"], "head")
        assert same(co["c"]["keep_a"], v["keep_a"])

    # A second purge, with keys purged before: only the new one counts.
    report = repo.purge("c", ["late", "head", "old"], reason="GDPR erasure 2")
    assert (report.tombstones, report.already, report.removed) == (1, 2, 1)
    purged.append("late")
    kept = {k: v[k] for k in labels if k not in purged}
    scan.check("after a second purge", gone={k: v[k] for k in purged}, present=kept)
    with repo.checkout(commit=c1) as co:
        assert_purged(co["c"], "late", "GDPR erasure 2")
        assert_purged(co["c"], "head", "GDPR erasure 1")
    verified = repo.verify(full=True)
    assert verified.ok, verified.problems
    assert verified.purged > 0
    repo.gc()
    scan.check("after a second gc", gone={k: v[k] for k in purged}, present=kept)

    # A fresh handle sees the same (tombstones are stored, not held in memory).
    repo.close()
    again = tc.Repository(root)
    with again.checkout(commit=c1) as co:
        assert_purged(co["c"], "old", "GDPR erasure 1")
        assert same(co["c"]["keep_a"], v["keep_a"])
    assert len(again.tombstones()) == 5
    scan.assert_clean()


def test_every_backend_in_one_repository(tmp_path):
    """All kinds side by side: a purge in one column leaves the others' bytes alone."""
    root = tmp_path / "repo"
    repo = new_repo(root)
    values: dict[str, dict[str, Any]] = {}
    with repo.checkout(write=True) as co:
        for kind in KINDS.values():
            col = kind.add(co, kind.name)
            values[kind.name] = {k: kind.value() for k in ("gone", "kept")}
            col.update(values[kind.name])
        co.commit("everything")
    scan = Scanner(root)
    flat = {f"{c}/{k}": val for c, kv in values.items() for k, val in kv.items()}
    scan.check("before", gone={}, present=flat)
    for kind in KINDS.values():
        repo.purge(kind.name, ["gone"], reason="erasure")
    scan.check(
        "after purging every column's 'gone'",
        gone={f"{c}/gone": kv["gone"] for c, kv in values.items()},
        present={f"{c}/kept": kv["kept"] for c, kv in values.items()},
    )
    with repo.checkout() as co:
        for kind in KINDS.values():
            assert_purged(co[kind.name], "gone")
            assert same(co[kind.name]["kept"], values[kind.name]["kept"])
    assert repo.verify(full=True).purged == len(KINDS)
    scan.assert_clean()


# -- 2. shared content -------------------------------------------------------------------------


@pytest.mark.parametrize("kind_name", list(KINDS))
def test_shared_content_survives_a_key_purge_until_purged_as_content(tmp_path, kind_name):
    kind = KINDS[kind_name]
    root = tmp_path / "repo"
    repo = new_repo(root)
    shared, other = kind.value(), kind.value()
    with repo.checkout(write=True) as co:
        a, b = kind.add(co, "a"), kind.add(co, "b")  # two columns, one schema
        a.update({"k1": shared, "k2": shared, "other": other})
        b["k1"] = shared
        c1 = co.commit("shared content")
        digest = a.digest("k1")
        assert a.digest("k2") == b.digest("k1") == digest
    scan = Scanner(root)

    report = repo.purge("a", ["k1"], reason="one user's request")
    assert (report.tombstones, report.removed, report.kept) == (1, 0, 1)
    with repo.checkout(commit=c1) as co:
        err = assert_purged(co["a"], "k1", "one user's request")
        assert err.digest == digest
        assert same(co["a"]["k2"], shared)
        assert same(co["b"]["k1"], shared)
        assert co["a"].digest("k1") == digest  # the record is unchanged
        with pytest.raises(tc.PurgedDataError):
            co["a"].get_many(["k2", "k1"])
        got = co["a"].get_many(["k2", "other"])
        assert same(got[0], shared) and same(got[1], other)
    scan.check("after the key purge", gone={}, present={"shared": shared, "other": other})

    report = repo.purge_content([digest], reason="DMCA notice")
    assert (report.tombstones, report.removed) == (1, 1)
    with repo.checkout(commit=c1) as co:
        assert_purged(co["a"], "k1")  # key and content tombstone: either reason
        assert_purged(co["a"], "k2", "DMCA notice")
        assert_purged(co["b"], "k1", "DMCA notice")
        assert same(co["a"]["other"], other)
    scan.check("after the content purge", gone={"shared": shared}, present={"other": other})
    stones = repo.tombstones()
    assert [(s.kind, s.column, s.key, s.digest, s.reason) for s in stones] == [
        ("key", "a", "k1", digest, "one user's request"),
        ("content", None, None, digest, "DMCA notice"),
    ]
    verified = repo.verify(full=True)
    assert verified.ok and verified.purged >= 3
    scan.assert_clean()


@pytest.mark.parametrize("kind_name", ["fixed-memmap", "str-lmdb"])
def test_shared_content_goes_when_its_last_holder_is_purged(tmp_path, kind_name):
    """Kept bytes (other holders) go once every holder, staged ones included, is purged."""
    kind = KINDS[kind_name]
    root = tmp_path / "repo"
    repo = new_repo(root)
    shared, other = kind.value(), kind.value()
    with repo.checkout(write=True) as co:
        a, b = kind.add(co, "a"), kind.add(co, "b")
        a.update({1: shared, 2: shared, 3: other})
        b[5] = shared  # another key: see the bug tests below for the same key
        co.commit("one")
    co = repo.checkout(write=True)
    co["a"][9] = shared  # staged only
    co.close()
    scan = Scanner(root)

    assert repo.purge("a", [1, 2], reason="r1").kept == 1
    scan.check("a/1, a/2 purged", gone={}, present={"shared": shared})
    assert repo.purge("b", [5], reason="r2").kept == 1  # a/9 (staged) still holds it
    scan.check("b/5 purged", gone={}, present={"shared": shared})
    with repo.checkout(write=True) as co:
        assert same(co["a"][9], shared)
    report = repo.purge("a", [9], reason="r3")
    assert (report.tombstones, report.removed, report.kept) == (1, 1, 0)
    scan.check("every holder purged", gone={"shared": shared}, present={"other": other})
    with repo.checkout() as co:
        for col, key in (("a", 1), ("a", 2), ("b", 5)):
            assert_purged(co[col], key)
    assert repo.verify(full=True).ok
    scan.assert_clean()


def test_content_shared_across_backends(tmp_path):
    """A (32,) uint8 array has one digest in a memmap and an hdf5 column: stored once,
    readable through either column until every holder is purged."""
    root = tmp_path / "repo"
    repo = new_repo(root)
    x, y = _array(32), _array(32)
    with repo.checkout(write=True) as co:
        fix = co.add_ndarray_column("fix", shape=(32,), dtype="uint8")
        var = co.add_ndarray_column("var", shape=(None,), dtype="uint8")
        fix.update({0: x, 1: y})
        var.update({5: x, 6: y})
        assert fix.digest(0) == var.digest(5)
        co.commit("both")
    scan = Scanner(root)
    assert repo.purge("fix", [0], reason="r").kept == 1
    assert repo.purge("var", [6], reason="r").kept == 1
    with repo.checkout() as co:
        assert_purged(co["fix"], 0)
        assert same(co["var"][5], x)
        assert_purged(co["var"], 6)
        assert same(co["fix"][1], y)
    scan.check("crossed purges", gone={}, present={"x": x, "y": y})
    assert repo.purge("var", [5], reason="r").removed == 1
    assert repo.purge("fix", [1], reason="r").removed == 1
    scan.check("both holders purged", gone={"x": x, "y": y}, present={})
    assert repo.verify(full=True).ok
    scan.assert_clean()


# Regression: the samples under the same keys in other columns counted as holders of
# the purged content without checking whether they were purged themselves, so purging
# a/0 and then b/0 (same content) kept the bytes for good (docs/purge.md: no file holds
# purged bytes unless an unpurged sample holds the same content).
def test_same_key_in_another_column_purged_before_does_not_keep_the_bytes(tmp_path):
    root = tmp_path / "repo"
    repo = new_repo(root)
    x, other = _array(64), _array(64)
    with repo.checkout(write=True) as co:
        for name in ("a", "b"):
            co.add_ndarray_column(name, shape=(64,), dtype="uint8").update({0: x, 1: other})
        co.commit("same content under key 0 in two columns")
    scan = Scanner(root)
    assert repo.purge("a", [0], reason="r").kept == 1  # b/0 holds it: kept, rightly
    scan.check("a/0 purged", gone={}, present={"x": x})
    report = repo.purge("b", [0], reason="r")  # its last holder
    with repo.checkout() as co:
        assert_purged(co["a"], 0)
        assert_purged(co["b"], 0)
    scan.check("a/0 and b/0 purged", gone={"x": x}, present={"other": other})
    scan.assert_clean()  # x is in no file
    assert (report.removed, report.kept) == (1, 0)


# Regression: a staged sample counted as a holder of the purged content even when its
# key was purged itself.
def test_staged_holder_purged_before_does_not_keep_the_bytes(tmp_path):
    root = tmp_path / "repo"
    repo = new_repo(root)
    x, other = _array(64), _array(64)
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("a", shape=(64,), dtype="uint8").update({1: x, 2: other})
        co.commit("x under key 1")
    co = repo.checkout(write=True)
    co["a"][9] = x  # the same content, staged under key 9
    co.close()
    scan = Scanner(root)
    assert repo.purge("a", [9], reason="r").kept == 1  # a/1 holds it: kept, rightly
    report = repo.purge("a", [1], reason="r")  # its last holder
    with repo.checkout(write=True) as co:
        assert_purged(co["a"], 9)
        assert_purged(co["a"], 1)
    scan.check("a/9 and a/1 purged", gone={"x": x}, present={"other": other})
    scan.assert_clean()  # x is in no file
    assert (report.removed, report.kept) == (1, 0)


def test_purge_in_a_column_that_only_old_commits_or_staging_hold(tmp_path):
    root = tmp_path / "repo"
    repo = new_repo(root)
    old, staged, keep = _array(32), _array(32), _array(32)
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("gone", shape=(32,), dtype="uint8").update({0: old, 1: keep})
        c1 = co.commit("a column deleted below")
    with repo.checkout(write=True) as co:
        co.delete_column("gone")
        co.commit("column deleted")
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("new", shape=(32,), dtype="uint8")["s"] = staged
    assert repo.purge("gone", [0], reason="r").removed == 1
    assert repo.purge("new", ["s"], reason="r").removed == 1  # a staged column only
    with repo.checkout(commit=c1) as co:
        assert_purged(co["gone"], 0)
        assert same(co["gone"][1], keep)
    with repo.checkout(write=True) as co:
        assert_purged(co["new"], "s")
    scan = Scanner(root)
    scan.check(
        "old and staged columns", gone={"old": old, "staged": staged}, present={"keep": keep}
    )
    scan.assert_clean()


# -- 3. reads in every commit; history unchanged -----------------------------------------------

N_TABLE = 4200  # get_many of >= 4096 keys reads through the column table


def test_reads_in_every_commit_and_history_unchanged(tmp_path):
    root = tmp_path / "repo"
    repo = new_repo(root)
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (N_TABLE, 16), dtype=np.uint8)
    texts = {k: _text(40) for k in range(20)}
    first7 = images[7].copy()
    with repo.checkout(write=True) as co:
        img = co.add_ndarray_column("img", shape=(16,), dtype="uint8")
        txt = co.add_str_column("txt")
        img.update(np.arange(N_TABLE), images)
        txt.update(texts)
        c1 = co.commit("c1")
    second7 = _array(16)
    with repo.checkout(write=True) as co:
        co["img"][7] = second7  # key 7 holds another content in c2
        co["img"][N_TABLE] = _array(16)
        c2 = co.commit("c2")
    repo.create_branch("dev", c1)
    with repo.checkout(write=True, branch="dev") as co:
        co["txt"]["dev-only"] = _text(40)
        d1 = co.commit("d1")
    with repo.checkout(write=True, branch="main") as co:
        del co["img"][7]
        c3 = co.commit("c3: key 7 deleted")
    commits = [c1, c2, d1, c3]

    # Warm the column tables (and their on-disk cache) before the purge.
    with repo.checkout(commit=c1) as co:
        assert same(co["img"].get_many(list(range(N_TABLE))), images)
    before = {
        "log_main": repo.log("main"),
        "log_dev": repo.log("dev"),
        "branches": repo.branches,
        "diff": repo.diff(c1, c3),
        "diff_dev": repo.diff(c1, d1),
        "resolved": [repo.resolve(c[:8]) for c in commits],
        "keys": {},
    }
    for c in commits:
        with repo.checkout(commit=c) as co:
            before["keys"][c] = {n: (co[n].keys(), len(co[n])) for n in ("img", "txt")}
    early = tc.Repository(root)  # opened before the purge, with reads in flight
    early_co = early.checkout(commit=c1)
    assert same(early_co["img"][7], first7)

    report = repo.purge("img", [7], reason="takedown 42")
    assert (report.tombstones, report.removed) == (2, 2)  # both contents key 7 ever held
    report = repo.purge("txt", np.array([3]), reason="takedown 43")  # numpy keys are fine
    assert report.tombstones == 1

    for c in (c1, c2, d1):
        with repo.checkout(commit=c) as co:
            assert_purged(co["img"], 7, "takedown 42")
            assert_purged(co["txt"], 3, "takedown 43")
            assert 7 in co["img"] and 3 in co["txt"]
            assert (co["img"].keys(), len(co["img"])) == before["keys"][c]["img"]
            assert (co["txt"].keys(), len(co["txt"])) == before["keys"][c]["txt"]
            assert same(co["img"][8], images[8])
            assert same(co["txt"][4], texts[4])
            with pytest.raises(tc.PurgedDataError) as info:
                co["img"].get_many([6, 7, 8])
            assert (info.value.column, info.value.key) == ("img", 7)
            with pytest.raises(tc.PurgedDataError):
                co["txt"].get_many([2, 3])
            assert co["txt"].get_many([2, 4]) == [texts[2], texts[4]]
            assert same(co["img"].get(6), images[6])
            with pytest.raises(tc.PurgedDataError):
                co["img"].get(7)  # get() answers missing keys, not purged ones
            with pytest.raises(tc.PurgedDataError):
                dict(co["txt"].items())
    with repo.checkout(commit=c3) as co:  # key 7 is not in c3: nothing to refuse
        assert 7 not in co["img"]
        assert same(co["img"][6], images[6])

    # The column-table path (>= 4096 keys per get_many), cached before the purge.
    for c in (c1, c2):
        with repo.checkout(commit=c) as co:
            everything = list(co["img"].keys())
            with pytest.raises(tc.PurgedDataError) as info:
                co["img"].get_many(everything)
            assert (info.value.column, info.value.key) == ("img", 7)
            rest = [k for k in everything if k != 7]
            got = co["img"].get_many(rest)
            assert got.shape == (len(rest), 16)
            assert same(got[: N_TABLE - 1], np.delete(images, 7, axis=0))
            assert_purged(co["img"], 7)  # single reads once the table is resolved
            assert same(co["img"][8], images[8])
    assert (root / "cache").is_dir() and any((root / "cache").rglob("*.json"))

    # A content purge through the table path names the key that holds it.
    with repo.checkout(commit=c1) as co:
        digest100 = co["img"].digest(100)
    assert repo.purge_content([digest100], reason="takedown 44").removed == 1
    with repo.checkout(commit=c2) as co:
        rest = [k for k in co["img"] if k != 7]
        with pytest.raises(tc.PurgedDataError) as info:
            co["img"].get_many(rest)
        assert (info.value.key, info.value.reason) == (100, "takedown 44")
        assert_purged(co["img"], 100, "takedown 44")

    # A handle opened before the purge refuses too (at the latest after half a second).
    time.sleep(0.6)
    with pytest.raises(tc.PurgedDataError):
        early_co["img"][7]
    with pytest.raises(tc.PurgedDataError):
        early.checkout(commit=c2)["img"][7]
    assert same(early_co["img"][8], images[8])
    early_co.close()
    early.close()

    assert repo.log("main") == before["log_main"]
    assert repo.log("dev") == before["log_dev"]
    assert repo.branches == before["branches"]
    assert repo.diff(c1, c3) == before["diff"]
    assert repo.diff(c1, d1) == before["diff_dev"]
    assert [repo.resolve(c[:8]) for c in commits] == before["resolved"]
    verified = repo.verify(full=True)
    assert verified.ok, verified.problems
    assert verified.purged > 0
    assert "purged" in str(verified)
    scan = Scanner(root)
    scan.check(
        "after purging img/7 and txt/3",
        gone={"first7": first7, "second7": second7, "img100": images[100], "txt3": texts[3]},
        present={"img8": images[8], "txt4": texts[4]},
    )
    scan.assert_clean()


def test_unreachable_commit_is_purged_too(tmp_path):
    """A commit no branch reaches can still be read by id: it is purged as well."""
    root = tmp_path / "repo"
    repo = new_repo(root)
    secret = _array(64)
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("x", shape=(64,), dtype="uint8")[0] = _array(64)
        co.commit("base")
    repo.create_branch("tmp")
    with repo.checkout(write=True, branch="tmp") as co:
        co["x"][1] = secret
        lost = co.commit("secret, on a branch deleted below")
    repo.checkout(write=True, branch="main").close()
    repo.delete_branch("tmp", force=True)
    assert lost not in repo.branches.values()
    report = repo.purge("x", [1], reason="r")
    assert (report.tombstones, report.removed) == (1, 1)
    with repo.checkout(commit=lost) as co:
        assert_purged(co["x"], 1)
    scan = Scanner(root)
    scan.check("unreachable commit", gone={"secret": secret}, present={})
    scan.assert_clean()


# -- 4. later writes ---------------------------------------------------------------------------


def test_new_content_under_a_purged_key_reads_fine(tmp_path):
    repo = new_repo(tmp_path / "repo")
    old, new = _text(40), _text(40)
    with repo.checkout(write=True) as co:
        co.add_str_column("t")["k"] = old
        c1 = co.commit("old")
    repo.purge("t", ["k"], reason="erasure")
    with repo.checkout(write=True) as co:
        co["t"]["k"] = new
        assert co["t"]["k"] == new
        c2 = co.commit("new")
    with repo.checkout(commit=c2) as co:
        assert co["t"]["k"] == new
    with repo.checkout(commit=c1) as co:
        assert_purged(co["t"], "k")
    scan = Scanner(tmp_path / "repo")
    scan.check("new content", gone={"old": old}, present={"new": new})
    scan.assert_clean()


@pytest.mark.parametrize("kind_name", ["fixed-memmap", "var-hdf5", "str-lmdb", "bytes-large-lmdb"])
def test_rewriting_purged_content_is_refused_unless_allowed(tmp_path, kind_name):
    kind = KINDS[kind_name]
    root = tmp_path / "repo"
    repo = new_repo(root)
    secret, other, fresh = kind.value(), kind.value(), kind.value()
    with repo.checkout(write=True) as co:
        kind.add(co, "c").update({"k": secret, "o": other})
        c1 = co.commit("one")
    repo.purge("c", ["k"], reason="erasure")
    scan = Scanner(root)
    scan.check("purged", gone={"secret": secret}, present={"other": other})

    with repo.checkout(write=True) as co:
        col = co["c"]
        col["n"] = fresh  # something staged already
        keys_before, diff_before = col.keys(), co.diff()
        with pytest.raises(tc.PurgedDataError) as info:
            col["k"] = secret
        err = info.value
        assert (err.column, err.key, err.reason) == ("c", "k", "erasure")
        assert "allow_purged" in str(err)
        with pytest.raises(tc.PurgedDataError):
            col.update({"k": secret})
        with pytest.raises(tc.PurgedDataError):
            col.update({"z": fresh, "k": secret})  # one refused sample refuses the batch
        with pytest.raises(tc.PurgedDataError), col:  # buffered writes: refused at once
            col["k"] = secret
        if kind.name == "fixed-memmap":  # the stacked fast path
            with pytest.raises(tc.PurgedDataError):
                col.update(["w", "k"], np.stack([other, secret]))
        assert col.keys() == keys_before
        assert co.diff() == diff_before
        assert "z" not in col
        assert_purged(col, "k")  # still the purged committed sample
    scan.check("refused writes", gone={"secret": secret}, present={"other": other})
    assert all(s.lifted is None for s in repo.tombstones())

    # A key purge does not tombstone the content: another key may store it.
    with repo.checkout(write=True) as co:
        co["c"]["elsewhere"] = secret
        assert same(co["c"]["elsewhere"], secret)
        co.reset_staging_area()
    assert all(s.lifted is None for s in repo.tombstones())
    with repo.checkout(commit=c1) as co:
        assert_purged(co["c"], "k")

    # allow_purged=True stores it again and lifts the tombstone.
    with repo.checkout(write=True) as co:
        co["c"].update({"k": secret}, allow_purged=True)
        assert same(co["c"]["k"], secret)
        c2 = co.commit("restored")
    (stone,) = repo.tombstones()
    assert stone.kind == "key" and stone.lifted is not None and WHO in stone.lifted
    with repo.checkout(commit=c1) as co:
        assert same(co["c"]["k"], secret)  # lifted: the old commit reads again
    with repo.checkout(commit=c2) as co:
        assert same(co["c"]["k"], secret)
    scan.check("restored", gone={}, present={"secret": secret, "other": other})
    assert repo.verify(full=True).ok


def test_allow_purged_on_the_checkout(tmp_path):
    repo = new_repo(tmp_path / "repo")
    secret = os.urandom(100)
    with repo.checkout(write=True) as co:
        co.add_bytes_column("b")["k"] = secret
        c1 = co.commit("one")
    repo.purge("b", ["k"], reason="erasure")
    with repo.checkout(write=True, allow_purged=True) as co:
        co["b"]["k"] = secret  # plain __setitem__, allowed by the checkout
        co.commit("again")
    (stone,) = repo.tombstones()
    assert stone.lifted is not None
    with repo.checkout(commit=c1) as co:
        assert co["b"]["k"] == secret
    with pytest.raises(ValueError):
        repo.checkout(allow_purged=True)  # only write checkouts write


def test_purge_content_then_allow_purged_restores_every_commit(tmp_path):
    root = tmp_path / "repo"
    repo = new_repo(root)
    secret, other = _array(128), _array(128)
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("x", shape=(128,), dtype="uint8")
        col.update({1: secret, 2: secret, 3: other})
        digest = col.digest(1)
        c1 = co.commit("one")
    with repo.checkout(write=True, branch="main") as co:
        del co["x"][2]
        c2 = co.commit("two")
    report = repo.purge_content([digest], reason="DMCA")
    assert (report.tombstones, report.removed) == (1, 1)
    scan = Scanner(root)
    scan.check("content purged", gone={"secret": secret}, present={"other": other})
    with repo.checkout(write=True) as co:
        with pytest.raises(tc.PurgedDataError) as info:
            co["x"][99] = secret  # any key: the content itself is refused
        assert info.value.digest == digest and info.value.reason == "DMCA"
        assert 99 not in co["x"]
    scan.check("refused", gone={"secret": secret}, present={"other": other})
    repo.gc()  # drops what it can of the purged content (index entries)

    with repo.checkout(write=True) as co:
        co["x"].update({99: secret}, allow_purged=True)
        co.commit("stored again")
    (stone,) = repo.tombstones()
    assert (stone.kind, stone.digest, stone.column, stone.key) == ("content", digest, None, None)
    assert stone.lifted is not None
    scan.check("stored again", gone={}, present={"secret": secret, "other": other})
    with repo.checkout(commit=c1) as co:
        assert same(co["x"][1], secret) and same(co["x"][2], secret)
    with repo.checkout(commit=c2) as co:
        assert same(co["x"][1], secret)
    assert repo.verify(full=True).ok

    # Purged again after the lift: a new tombstone, the bytes go again.
    report = repo.purge_content([digest], reason="DMCA again")
    assert (report.tombstones, report.already) == (1, 0)
    assert [s.lifted is None for s in repo.tombstones()] == [False, True]
    with repo.checkout(commit=c1) as co:
        assert_purged(co["x"], 1, "DMCA again")
    scan.check("purged again", gone={"secret": secret}, present={"other": other})
    scan.assert_clean()


def test_purge_content_of_a_digest_never_stored_blocks_it(tmp_path):
    repo = new_repo(tmp_path / "repo")
    blocked = _text(30)
    with repo.checkout(write=True) as co:
        co.add_str_column("t")["first"] = _text(30)
        co.commit("a column")
    with repo.checkout(write=True) as co:
        co["t"]["probe"] = blocked
        digest = co["t"].digest("probe")
        co.reset_staging_area()
    repo.gc()
    report = repo.purge_content([digest.upper()], reason="blocklist")
    assert report.tombstones == 1
    with repo.checkout(write=True) as co:
        with pytest.raises(tc.PurgedDataError):
            co["t"]["x"] = blocked
        co["t"]["y"] = _text(30)
        co.commit("other text is fine")


@pytest.mark.parametrize("kind_name", ["str-lmdb", "bytes-large-lmdb"])
def test_lmdb_bytes_go_once_a_reader_that_saw_them_is_closed(tmp_path, kind_name):
    """A reader open during the purge may pin LMDB pages that held the value; once it
    is closed, the next gc (or purge) zeroes them."""
    kind = KINDS[kind_name]
    root = tmp_path / "repo"
    repo = new_repo(root)
    secret, keep = kind.value(), kind.value()
    with repo.checkout(write=True) as co:
        kind.add(co, "c").update({"s": secret, "k": keep})
        co.commit("one")
    reader = tc.Repository(root)
    rco = reader.checkout()
    assert same(rco["c"]["s"], secret)
    repo.purge("c", ["s"], reason="r")
    time.sleep(0.6)
    assert_purged(rco["c"], "s")
    assert same(rco["c"]["k"], keep)
    rco.close()
    reader.close()
    repo.gc()
    scan = Scanner(root)
    scan.check("reader closed, gc", gone={"secret": secret}, present={"keep": keep})
    scan.assert_clean()


# -- 5. remove_from_branches -------------------------------------------------------------------


def _two_branches(repo: tc.Repository) -> dict[str, Any]:
    with repo.checkout(write=True) as co:
        col = co.add_bytes_column("b")
        col.update({k: os.urandom(50) for k in ("a", "b", "c", "d")})
        c1 = co.commit("one")
    repo.create_branch("dev", c1)
    repo.create_branch("plain", c1)
    with repo.checkout(write=True, branch="dev") as co:
        co["b"]["e"] = os.urandom(50)
        d1 = co.commit("dev")
    repo.checkout(write=True, branch="main").close()
    return {"c1": c1, "d1": d1}


def test_remove_from_branches_commits_the_deletion(tmp_path):
    repo = new_repo(tmp_path / "repo")
    ids = _two_branches(repo)
    report = repo.purge("b", ["a", "b"], reason="GDPR 7", remove_from_branches=["main", "dev"])
    assert report.tombstones == 2
    assert set(report.branches) == {"main", "dev"}
    assert repo.branches["main"] == report.branches["main"] != ids["c1"]
    assert repo.branches["dev"] == report.branches["dev"] != ids["d1"]
    assert repo.branches["plain"] == ids["c1"]
    assert repo.log("main")[0].parents == (ids["c1"],)
    assert repo.log("dev")[0].parents == (ids["d1"],)
    assert "GDPR 7" in repo.log("main")[0].message
    assert repo.diff(ids["c1"], "main").columns["b"].removed == frozenset({"a", "b"})
    for branch, n in (("main", 2), ("dev", 3)):
        with repo.checkout(branch=branch) as co:
            assert "a" not in co["b"] and "b" not in co["b"]
            assert len(co["b"]) == n
            assert co["b"]["c"] is not None
    for ref in (ids["c1"], ids["d1"], "plain"):
        with repo.checkout(commit=ref) as co:
            assert_purged(co["b"], "a", "GDPR 7")
            assert_purged(co["b"], "b")
    # the write checkout of main starts from the new head
    with repo.checkout(write=True) as co:
        assert co.commit_id == report.branches["main"]
        assert "a" not in co["b"]
    assert repo.verify(full=True).ok
    assert "deleted the purged keys on branch 'main'" in str(report)


def test_remove_from_branches_skips_a_branch_without_the_keys(tmp_path):
    repo = new_repo(tmp_path / "repo")
    ids = _two_branches(repo)
    report = repo.purge("b", ["e"], reason="r", remove_from_branches=["main", "dev"])
    assert set(report.branches) == {"dev"}  # main never held "e": no commit there
    assert repo.branches["main"] == ids["c1"]
    report = repo.purge("b", ["e"], reason="r", remove_from_branches="dev")  # a str is a branch
    assert report.branches == {} and report.already == 1


def test_remove_from_branches_refused_with_staged_changes(tmp_path):
    repo = new_repo(tmp_path / "repo")
    ids = _two_branches(repo)
    with repo.checkout(write=True, branch="main") as co:
        co["b"]["new"] = os.urandom(50)  # staged, not committed
    with pytest.raises(tc.CaskError, match="staged"):
        repo.purge("b", ["a"], reason="r", remove_from_branches=["dev", "main"])
    assert repo.tombstones() == []
    assert repo.branches["main"] == ids["c1"] and repo.branches["dev"] == ids["d1"]
    with repo.checkout(commit=ids["c1"]) as co:
        assert co["b"]["a"] is not None
    with repo.checkout(write=True, branch="main") as co:
        assert "new" in co["b"]  # the staging area is untouched
    # Staged changes of main do not stop a removal from dev only.
    report = repo.purge("b", ["a"], reason="r", remove_from_branches=["dev"])
    assert set(report.branches) == {"dev"} and repo.branches["main"] == ids["c1"]


def test_remove_from_a_missing_branch_purges_nothing(tmp_path):
    repo = new_repo(tmp_path / "repo")
    ids = _two_branches(repo)
    with pytest.raises(tc.RefNotFoundError):
        repo.purge("b", ["a"], reason="r", remove_from_branches=["main", "nope"])
    assert repo.tombstones() == []
    assert repo.branches["main"] == ids["c1"]
    with repo.checkout(commit=ids["c1"]) as co:
        assert co["b"]["a"] is not None


# -- 6. errors ---------------------------------------------------------------------------------


def _one_column(repo: tc.Repository) -> str:
    with repo.checkout(write=True) as co:
        col = co.add_str_column("t")
        col.update({"a": _text(20), "b": _text(20)})
        digest = col.digest("a")
        co.commit("one")
    return digest


def _unpurged(repo: tc.Repository) -> None:
    assert repo.tombstones() == []
    with repo.checkout() as co:
        assert co["t"]["a"] and co["t"]["b"]


def test_reason_is_required(repo):
    digest = _one_column(repo)
    with pytest.raises(TypeError):
        repo.purge("t", ["a"])  # keyword-only and required
    with pytest.raises(TypeError):
        repo.purge_content([digest])
    for reason in ("", "   ", None, 5):
        with pytest.raises(ValueError, match="reason"):
            repo.purge("t", ["a"], reason=reason)
        with pytest.raises(ValueError, match="reason"):
            repo.purge_content([digest], reason=reason)
    _unpurged(repo)


def test_unknown_column_or_key_purges_nothing(repo):
    _one_column(repo)
    with pytest.raises(KeyError, match="nope"):
        repo.purge("nope", ["a"], reason="r")
    with pytest.raises(KeyError, match="zz"):
        repo.purge("t", ["zz"], reason="r")
    with pytest.raises(KeyError, match="zz"):
        repo.purge("t", ["a", "zz", "b"], reason="r")  # one unknown key: none purged
    with pytest.raises(KeyError):
        repo.purge("t", [0], reason="r")  # 0 and "0" differ
    _unpurged(repo)


def test_bad_key_arguments(repo):
    _one_column(repo)
    with pytest.raises(TypeError):
        repo.purge("t", "a", reason="r")  # one key, not a list
    with pytest.raises(ValueError):
        repo.purge("t", [], reason="r")
    _unpurged(repo)


@pytest.mark.parametrize(
    "bad",
    ["", "xyz", "ab" * 31, "ab" * 33, "g" * 64, " " + "ab" * 32, 5, None, b"short"],
    ids=repr,
)
def test_invalid_digests_are_refused(repo, bad):
    digest = _one_column(repo)
    with pytest.raises(ValueError):
        repo.purge_content([digest, bad], reason="r")
    _unpurged(repo)


def test_empty_digest_list_is_refused(repo):
    _one_column(repo)
    with pytest.raises(ValueError):
        repo.purge_content([], reason="r")
    _unpurged(repo)


def test_read_only_repository_refuses(tmp_path):
    root = tmp_path / "repo"
    repo = new_repo(root)
    digest = _one_column(repo)
    repo.close()
    ro = tc.Repository(root, read_only=True)
    assert ro.read_only
    with pytest.raises(tc.ReadOnlyError):
        ro.purge("t", ["a"], reason="r")
    with pytest.raises(tc.ReadOnlyError):
        ro.purge_content([digest], reason="r")
    assert ro.tombstones() == []
    ro.close()
    _unpurged(tc.Repository(root))


def test_writer_lock_held_refuses(tmp_path):
    root = tmp_path / "repo"
    repo = new_repo(root)
    digest = _one_column(repo)
    co = repo.checkout(write=True)
    try:
        with pytest.raises(tc.WriterLockError):
            repo.purge("t", ["a"], reason="r")
        with pytest.raises(tc.WriterLockError):
            repo.purge_content([digest], reason="r")
        other = tc.Repository(root)
        with pytest.raises(tc.WriterLockError):
            other.purge("t", ["a"], reason="r")
        other.close()
        assert co["t"]["a"]  # the writer carries on
    finally:
        co.close()
    _unpurged(repo)
    assert repo.purge("t", ["a"], reason="r").tombstones == 1  # the lock was released


def test_purging_twice_is_idempotent(repo):
    digest = _one_column(repo)
    first = repo.purge("t", ["a"], reason="r")
    assert (first.tombstones, first.already) == (1, 0)
    again = repo.purge("t", ["a"], reason="another reason")
    assert (again.tombstones, again.already, again.removed, again.bytes_removed) == (0, 1, 0, 0)
    assert len(repo.tombstones()) == 1 and repo.tombstones()[0].reason == "r"
    c1 = repo.purge_content([digest], reason="c")
    c2 = repo.purge_content([digest, digest.upper()], reason="c")
    assert (c1.tombstones, c2.tombstones, c2.already) == (1, 0, 1)
    assert [s.kind for s in repo.tombstones()] == ["key", "content"]
    assert "purged before" in str(again)


# -- 7. the error and the audit trail -----------------------------------------------------------


def test_purged_data_error_names_the_sample_and_pickles(repo):
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("img", shape=(4,), dtype="uint8").update({"user-17": _array(4)})
        digest = co["img"].digest("user-17")
        co.commit("one")
    repo.purge("img", ["user-17"], reason="GDPR erasure, ticket 4711")
    with repo.checkout() as co:
        err = assert_purged(co["img"], "user-17", "GDPR erasure, ticket 4711")
    assert isinstance(err, tc.CaskError)
    text = str(err)
    assert "'img'" in text and "'user-17'" in text and "GDPR erasure, ticket 4711" in text
    assert err.digest == digest
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is tc.PurgedDataError
    assert (back.column, back.key, back.digest, back.reason) == (
        "img",
        "user-17",
        digest,
        "GDPR erasure, ticket 4711",
    )
    assert str(back) == text
    rebuilt = tc.PurgedDataError(text)  # from its message alone (torch workers do this)
    assert (rebuilt.column, rebuilt.key) == ("img", "user-17")


def test_int_key_survives_in_the_error(repo):
    with repo.checkout(write=True) as co:
        co.add_str_column("t").update({12: "x" * 40, "12": "y" * 40})
        co.commit("one")
    repo.purge("t", [12], reason="r")
    with repo.checkout() as co:
        err = assert_purged(co["t"], 12)
        assert type(err.key) is int
        assert co["t"]["12"] == "y" * 40  # "12" is another key
        back = pickle.loads(pickle.dumps(err))
        assert back.key == 12 and type(back.key) is int


def test_tombstones_record_who_when_why(repo):
    digest = _one_column(repo)
    assert repo.tombstones() == []
    repo.purge("t", ["b", "a"], reason="request 1")
    repo.purge_content([digest], reason="request 2")
    stones = repo.tombstones()
    assert all(isinstance(s, tc.Tombstone) for s in stones)
    assert [(s.kind, s.column, s.key, s.reason) for s in stones] == [
        ("key", "t", "a", "request 1"),
        ("key", "t", "b", "request 1"),
        ("content", None, None, "request 2"),
    ]
    assert stones[0].digest == stones[2].digest == digest
    for s in stones:
        assert s.who == WHO
        assert ISO.fullmatch(s.when)
        assert s.lifted is None
        assert re.fullmatch(r"[0-9a-f]{64}", s.digest)


# -- 8. idempotent scrubbing -------------------------------------------------------------------


def test_overlapping_purges_gc_and_verify(tmp_path):
    root = tmp_path / "repo"
    repo = new_repo(root)
    v = {k: _array(64) for k in range(6)}
    s = {k: _text(40) for k in range(6)}
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("x", shape=(64,), dtype="uint8").update(v)
        co.add_str_column("s").update(s)
        c1 = co.commit("one")
    scan = Scanner(root)

    r1 = repo.purge("x", [0, 1, 2], reason="a")
    r2 = repo.purge("x", [1, 2, 3], reason="b")
    r3 = repo.purge("x", [0, 1, 2, 3], reason="c")
    assert [(r.tombstones, r.already) for r in (r1, r2, r3)] == [(3, 0), (1, 2), (0, 4)]
    assert r2.removed == 1 and r3.removed == 0
    repo.purge("s", [0, 1], reason="a")
    repo.purge("s", [1, 2], reason="b")
    repo.purge_content([repo.checkout(commit=c1)["s"].digest(2)], reason="c")
    gone = {f"x{k}": v[k] for k in range(4)} | {f"s{k}": s[k] for k in range(3)}
    present = {f"x{k}": v[k] for k in (4, 5)} | {f"s{k}": s[k] for k in (3, 4, 5)}
    scan.check("overlapping purges", gone=gone, present=present)
    repo.gc()
    repo.gc()
    scan.check("gc twice", gone=gone, present=present)
    verified = repo.verify(full=True)
    assert verified.ok, verified.problems
    assert verified.purged == 7
    with repo.checkout(commit=c1) as co:
        assert_purged(co["x"], 3, "b")
        assert_purged(co["s"], 2)
        assert same(co["x"][4], v[4])
        assert co["s"][5] == s[5]
    assert len(repo.tombstones()) == 4 + 3 + 1
    scan.assert_clean()


# -- gc and scrubs seen by other handles ------------------------------------------------


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and needle in p.read_bytes()
    )


def test_content_gc_drops_from_lmdb_is_not_left_in_the_file(tmp_path: Path) -> None:
    """A str staged, reset and collected: gc removes its (dead) LMDB segment, and its
    bytes must not stay in free pages, where a later purge of it could not find them."""
    repo = tc.init(tmp_path / "r", user_name="Ada", user_email="ada@example.org")
    text = "a caption nobody may keep: qwxzqwxzqwxzqwxz"
    with repo.checkout(write=True) as co:
        co.add_str_column("txt")
        co.commit("schema")
    with repo.checkout(write=True) as co:
        co["txt"][0] = text
        co.flush()
        assert _files_holding(repo.path / "data", text.encode())  # it was stored
        co.reset_staging_area()
    assert repo.gc().segments >= 1
    assert _files_holding(repo.path, text.encode()) == []


def test_verify_after_gc_rewrote_an_hdf5_file_in_the_same_process(tmp_path: Path) -> None:
    """gc zeroes a dropped payload by rewriting its HDF5 file; a full verify through the
    same repository object (whose read handle has the old file open) still passes."""
    rng = np.random.default_rng(1)
    kept, dropped = (rng.integers(0, 256, 32, dtype=np.uint8) for _ in range(2))
    repo = tc.init(tmp_path / "r", user_name="Ada", user_email="ada@example.org")
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("var", shape=(None,), dtype="uint8")
        co.commit("schema")
    with repo.checkout(write=True) as co:
        co["var"].update({0: dropped, 7: kept})
        co["var"][0] = kept
        co.commit("both keys hold the same content")
    assert repo.verify(full=True).ok  # opens the file for reading
    assert repo.gc().samples == 1  # rewrites it with `dropped` zeroed
    assert repo.verify(full=True).ok
    with repo.checkout() as rc:
        assert np.array_equal(rc["var"][0], kept) and np.array_equal(rc["var"][7], kept)
