"""Repository operations: init, refs, log, summary, verify, gc, identity (SPEC §2, §7)."""

from __future__ import annotations

import builtins
import itertools
import re
import subprocess
import sys
import types
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

import tensorcask as tc
import tensorcask.history.store as history_store


def _commit_labels(repo: tc.Repository, values: dict, message: str = "labels") -> str:
    with repo.checkout(write=True) as co:
        col = co["labels"] if "labels" in co else co.add_ndarray_column("labels", (), "int64")
        col.update({k: np.int64(v) for k, v in values.items()})
        return co.commit(message)


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def _flip_byte_in(path: Path, needle: bytes) -> int:
    """Flip one byte inside every occurrence of ``needle`` in ``path``; returns the count."""
    data = bytearray(path.read_bytes())
    count = 0
    start = data.find(needle)
    while start != -1:
        data[start + len(needle) // 2] ^= 0xFF
        count += 1
        start = data.find(needle, start + len(needle))
    path.write_bytes(bytes(data))
    return count


# -- init / open -------------------------------------------------------------------------


def test_init_creates_an_empty_repository(tmp_path):
    path = tmp_path / "new" / "nested"
    with tc.init(path, user_name="Ada", user_email="ada@example.org") as repo:
        assert isinstance(repo, tc.Repository)
        assert Path(repo.path) == path.absolute()
        assert repo.branches == {}
        assert repo.tags == {}
        assert repo.log() == []
        assert repo.current_branch == "main"
    with tc.Repository(path) as again:
        assert again.branches == {}


def test_init_in_existing_empty_directory(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    with tc.init(path, user_name="Ada", user_email="ada@example.org") as repo:
        assert repo.branches == {}


def test_init_refuses_non_empty_directory(tmp_path):
    path = tmp_path / "busy"
    path.mkdir()
    (path / "somebody-elses-file.txt").write_text("keep me")
    with pytest.raises(tc.CaskError, match="busy"):
        tc.init(path, user_name="Ada", user_email="ada@example.org")
    assert (path / "somebody-elses-file.txt").read_text() == "keep me"
    with pytest.raises(tc.RepositoryNotFoundError):
        tc.Repository(path)


def test_init_existing_repository_needs_exist_ok(repo):
    cid = _commit_labels(repo, {0: 1})
    with pytest.raises(tc.CaskError):
        tc.init(repo.path, user_name="Ada", user_email="ada@example.org")
    with tc.init(repo.path, exist_ok=True) as again:
        assert again.resolve("main") == cid
        with again.checkout() as co:
            assert int(co["labels"][0]) == 1


@pytest.mark.parametrize("kind", ["missing", "empty", "file"])
def test_opening_a_non_repository(tmp_path, kind):
    path = tmp_path / "not-a-repo"
    if kind == "empty":
        path.mkdir()
    elif kind == "file":
        path.write_text("hello")
    with pytest.raises(tc.RepositoryNotFoundError) as info:
        tc.Repository(path)
    assert isinstance(info.value, FileNotFoundError)
    assert "not-a-repo" in str(info.value)


# -- log ---------------------------------------------------------------------------------


def test_log_fields_order_and_limit(repo):
    before = datetime.now(UTC)
    first = _commit_labels(repo, {0: 0}, "first commit")
    second = _commit_labels(repo, {1: 1}, "second commit\n\nwith a body")
    third = _commit_labels(repo, {2: 2}, "third")
    after = datetime.now(UTC)
    log = repo.log()
    assert [c.id for c in log] == [third, second, first]
    assert all(isinstance(c, tc.CommitInfo) for c in log)
    assert [c.parents for c in log] == [(second,), (first,), ()]
    assert [c.message for c in log] == ["third", "second commit\n\nwith a body", "first commit"]
    for c in log:
        assert c.author == "Ada"
        assert c.email == "ada@example.org"
        assert isinstance(c.time, datetime)
        assert c.time.tzinfo is not None
        assert c.time.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=5) <= c.time <= after + timedelta(seconds=5)
    assert log[0].time >= log[1].time >= log[2].time
    assert [c.id for c in repo.log(limit=2)] == [third, second]
    assert [c.id for c in repo.log(limit=1)] == [third]
    assert [c.id for c in repo.log(second)] == [second, first]
    assert [c.id for c in repo.log(first[:6], limit=5)] == [first]
    with pytest.raises(tc.RefNotFoundError):
        repo.log("no-such-branch")


def test_log_follows_branches(repo):
    base = _commit_labels(repo, {0: 0}, "base")
    repo.create_branch("dev")
    main_head = _commit_labels(repo, {1: 1}, "on main")
    with repo.checkout(write=True, branch="dev") as co:
        co["labels"][2] = np.int64(2)
        dev_head = co.commit("on dev")
    assert [c.id for c in repo.log("dev")] == [dev_head, base]
    assert [c.id for c in repo.log("main")] == [main_head, base]
    assert [c.id for c in repo.log()] == [dev_head, base]  # current branch is dev


# -- resolve -------------------------------------------------------------------------------


def test_resolve_branches_tags_ids_and_prefixes(repo):
    first = _commit_labels(repo, {0: 0}, "first")
    second = _commit_labels(repo, {1: 1}, "second")
    repo.create_tag("v1", first)
    assert repo.resolve("main") == second
    assert repo.resolve("v1") == first
    assert repo.resolve(first) == first
    assert repo.resolve(first.upper()) == first
    for n in (4, 5, 7, 12, 39):
        assert repo.resolve(first[:n]) == first
        assert repo.resolve(first[:n].upper()) == first
        assert repo.resolve(second[:n]) == second


@pytest.mark.parametrize(
    "ref", ["nope", "0000000000000000000000000000000000000000", "abc", "xyz1", ""]
)
def test_resolve_unknown_raises_ref_not_found(repo, ref):
    cid = _commit_labels(repo, {0: 0})
    if cid.startswith(ref) and ref:
        pytest.skip("the random id happens to match")
    with pytest.raises(tc.RefNotFoundError) as info:
        repo.resolve(ref)
    assert isinstance(info.value, KeyError)


def test_resolve_three_hex_digits_is_not_a_prefix(repo):
    cid = _commit_labels(repo, {0: 0})
    with pytest.raises(tc.RefNotFoundError):
        repo.resolve(cid[:3])


def test_resolve_ambiguous_prefix(repo, monkeypatch):
    clock = itertools.count(1_700_000_000_000_000_000, 1_000_000_000)
    monkeypatch.setattr(history_store, "time", types.SimpleNamespace(time_ns=lambda: next(clock)))
    seen: dict[str, str] = {}
    pair = None
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("n", shape=(), dtype="int32")
        for i in range(3000):
            col[0] = np.int32(i)
            cid = co.commit(f"commit {i}")
            if cid[:4] in seen:
                pair = (seen[cid[:4]], cid)
                break
            seen[cid[:4]] = cid
    assert pair is not None, "no two of 3000 commit ids share 4 hex digits"
    a, b = pair
    common = next(i for i in range(40) if a[i] != b[i])
    assert common >= 4
    with pytest.raises(tc.AmbiguousRefError) as info:
        repo.resolve(a[:4])
    assert isinstance(info.value, KeyError)
    assert a[:4] in str(info.value)
    with pytest.raises(tc.AmbiguousRefError):
        repo.resolve(a[:common].upper())
    with pytest.raises(tc.AmbiguousRefError):
        repo.checkout(commit=a[:4])
    assert repo.resolve(a[: common + 1]) == a
    assert repo.resolve(b[: common + 1]) == b


# -- branches and tags -----------------------------------------------------------------------


def test_create_and_list_branches(repo):
    first = _commit_labels(repo, {0: 0}, "first")
    second = _commit_labels(repo, {1: 1}, "second")
    assert repo.create_branch("dev") == second
    assert repo.create_branch("old", base=first[:8]) == first
    repo.create_tag("t", first)
    assert repo.create_branch("from-tag", base="t") == first
    assert repo.branches == {"main": second, "dev": second, "old": first, "from-tag": first}
    assert isinstance(repo.branches, dict)
    with pytest.raises(tc.CaskError, match="dev"):
        repo.create_branch("dev", base=first)
    assert repo.branches["dev"] == second
    with pytest.raises(tc.RefNotFoundError):
        repo.create_branch("bad-base", base="nope")
    with pytest.raises(ValueError):
        repo.create_branch("a..b")
    assert "bad-base" not in repo.branches


def test_delete_branches(repo):
    base = _commit_labels(repo, {0: 0}, "base")
    repo.create_branch("merged")  # at main's head: nothing would be lost
    repo.create_branch("feature")
    with repo.checkout(write=True, branch="feature") as co:
        co["labels"][1] = np.int64(1)
        feature_head = co.commit("feature work")
    with repo.checkout(write=True, branch="main"):
        pass  # make main current again
    assert repo.delete_branch("merged") == base
    assert "merged" not in repo.branches
    with pytest.raises(tc.CaskError, match="feature"):
        repo.delete_branch("feature")
    assert repo.branches["feature"] == feature_head
    assert repo.delete_branch("feature", force=True) == feature_head
    assert repo.branches == {"main": base}
    with pytest.raises(tc.RefNotFoundError):
        repo.delete_branch("feature")
    with pytest.raises(tc.CaskError):
        repo.delete_branch("main")  # the current branch
    assert repo.branches == {"main": base}
    # the deleted branch's commit is still reachable by id until gc
    with repo.checkout(commit=feature_head) as co:
        assert co["labels"].keys() == [0, 1]


def test_tags_are_immutable(repo):
    first = _commit_labels(repo, {0: 0}, "first")
    second = _commit_labels(repo, {1: 1}, "second")
    assert repo.create_tag("v1", "main") == second
    assert repo.create_tag("v0", first[:5]) == first
    assert repo.tags == {"v0": first, "v1": second}
    with pytest.raises(tc.CaskError, match="v1"):
        repo.create_tag("v1", first)
    assert repo.tags["v1"] == second
    third = _commit_labels(repo, {2: 2}, "third")
    assert repo.resolve("v1") == second  # the branch moved, the tag did not
    assert repo.resolve("main") == third
    with repo.checkout(commit="v1") as co:
        assert co.commit_id == second
        assert co["labels"].keys() == [0, 1]
    with pytest.raises(tc.RefNotFoundError):
        repo.create_tag("v9", "nope")
    assert "v9" not in repo.tags


# -- summary -----------------------------------------------------------------------------


def test_summary_names_path_head_and_columns(repo, mnist_like):
    images, labels = mnist_like
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("images", (28, 28), "uint8").update(range(5), images[:5])
        co.add_ndarray_column("labels", (), "int64").update(range(7), labels[:7])
        co.add_str_column("captions").update({"a": "x", "b": "y"})
        head = co.commit("summary")
    text = repo.summary()
    assert isinstance(text, str)
    assert str(repo.path) in text
    assert head in text
    lines = text.splitlines()
    for name, count in (("images", 5), ("labels", 7), ("captions", 2)):
        matching = [line for line in lines if re.search(rf"\b{name}\b", line)]
        assert matching, f"column {name} missing from summary:\n{text}"
        assert any(re.search(rf"\b{count}\b", line) for line in matching), text
    assert "uint8" in text or "u1" in text


def test_summary_of_empty_repository(repo):
    text = repo.summary()
    assert isinstance(text, str)
    assert str(repo.path) in text


# -- verify and corruption ---------------------------------------------------------------------


def _build_healthy(repo, mnist_like):
    images, labels = mnist_like
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("images", (28, 28), "uint8").update(
            [f"i{k}" for k in range(8)], images[:8]
        )
        co.add_ndarray_column("labels", (), "int64").update(range(8), labels[:8])
        co.add_ndarray_column("vol", (None, 4), "float32").update(
            {"v": np.ones((3, 4), np.float32)}
        )
        co.add_str_column("captions").update({"c": "a caption"})
        co.add_bytes_column("raw").update({"r": b"\x00raw\xff"})
        return co.commit("healthy")


def test_verify_healthy_repository(repo, mnist_like):
    _build_healthy(repo, mnist_like)
    _commit_labels(repo, {100: 1}, "second")
    report = repo.verify()
    assert report.ok
    assert report.problems == []
    full = repo.verify(full=True)
    assert full.ok
    assert full.problems == []
    assert repo.verify("main", full=True).ok
    assert repo.verify(raise_on_error=False).ok


def test_verify_empty_repository(repo):
    assert repo.verify(full=True).ok


def test_flipped_byte_in_memmap_segment_is_detected(repo):
    rows = {f"k{i}": np.full((16, 16), i + 1, dtype=np.uint8) for i in range(4)}
    rows["k2"] = np.frombuffer(b"CORRUPT-ME-PLEASE" * 16, np.uint8)[:256].reshape(16, 16).copy()
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("images", (16, 16), "uint8").update(rows)
        cid = co.commit("rows")
    segments = sorted((repo.path / "data" / "memmap").glob("*"))
    flipped = sum(_flip_byte_in(p, rows["k2"].tobytes()) for p in segments)
    assert flipped == 1, "the sample's bytes should be stored exactly once"

    with tc.Repository(repo.path) as fresh, fresh.checkout(commit=cid) as co:
        col = co["images"]
        with pytest.raises(tc.CorruptionError) as info:
            col["k2"]
        err = info.value
        assert err.column == "images"
        assert err.key == "k2"
        assert err.path is not None
        damaged = Path(err.path)
        assert damaged.is_absolute()
        assert damaged.parent == (repo.path / "data" / "memmap").absolute()
        message = str(err)
        assert "images" in message
        assert "k2" in message
        assert err.path in message
        # undamaged samples still read; a batch that includes the damage names it
        np.testing.assert_array_equal(col["k1"], rows["k1"])
        with pytest.raises(tc.CorruptionError) as batch_info:
            col.get_many(["k0", "k2", "k3"])
        assert batch_info.value.key == "k2"
        assert batch_info.value.column == "images"

    with pytest.raises(tc.CorruptionError):
        repo.verify(full=True)
    report = repo.verify(full=True, raise_on_error=False)
    assert not report.ok
    assert report.problems
    assert any("images" in p and "k2" in p for p in report.problems), report.problems
    assert not any("'k1'" in p for p in report.problems)


def test_flipped_byte_in_lmdb_str_sample_is_detected(repo):
    marker = "tensorcask-corruption-marker-0123456789"
    with repo.checkout(write=True) as co:
        col = co.add_str_column("captions")
        col.update({"good": "fine text", "bad": marker})
        cid = co.commit("captions")
    data_file = repo.path / "data" / "lmdb" / "data.mdb"
    assert data_file.is_file()
    assert _flip_byte_in(data_file, marker.encode()) >= 1

    with tc.Repository(repo.path) as fresh, fresh.checkout(commit=cid) as co:
        assert co["captions"]["good"] == "fine text"
        with pytest.raises(tc.CorruptionError) as info:
            co["captions"]["bad"]
        err = info.value
        assert (err.column, err.key) == ("captions", "bad")
        assert err.path is not None
        assert Path(err.path).is_relative_to(repo.path / "data" / "lmdb")
        assert "captions" in str(err)
        assert "bad" in str(err)
    report = repo.verify(full=True, raise_on_error=False)
    assert not report.ok
    assert any("captions" in p and "bad" in p for p in report.problems)


def test_flipped_byte_in_hdf5_sample_is_detected(repo):
    value = np.frombuffer(b"HDF5-PAYLOAD-MARKER-" * 8, np.uint8).copy()
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("seq", (None,), "uint8")
        col.update({"ok": np.arange(10, dtype=np.uint8), "hit": value})
        cid = co.commit("hdf5")
    files = sorted((repo.path / "data" / "hdf5").glob("*"))
    assert files
    flipped = sum(_flip_byte_in(p, value.tobytes()) for p in files)
    if flipped == 0:
        pytest.skip("the hdf5 backend does not store this sample's bytes verbatim")
    with tc.Repository(repo.path) as fresh, fresh.checkout(commit=cid) as co:
        np.testing.assert_array_equal(co["seq"]["ok"], np.arange(10, dtype=np.uint8))
        with pytest.raises(tc.CorruptionError) as info:
            co["seq"]["hit"]
        assert (info.value.column, info.value.key) == ("seq", "hit")
    with pytest.raises(tc.CorruptionError):
        repo.verify(full=True)


# -- gc --------------------------------------------------------------------------------------


def _snapshot(repo: tc.Repository) -> dict[str, dict]:
    """Every commit on every branch and tag: column -> key -> (kind, bytes)."""
    out = {}
    for info in {c.id: c for ref in repo.branches for c in repo.log(ref)}.values():
        with repo.checkout(commit=info.id) as co:
            out[info.id] = {
                name: {k: _raw(col[k]) for k in col} for name, col in co.columns.items()
            }
    return out


def _raw(value):
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tobytes())
    return value


def test_gc_removes_reset_and_force_deleted_data(repo, mnist_like):
    images, labels = mnist_like
    memmap = repo.path / "data" / "memmap"
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("images", (28, 28), "uint8").update(range(8), images[:8])
        co.add_ndarray_column("labels", (), "int64").update(range(8), labels[:8])
        co.add_str_column("notes")["n"] = "kept"
        co.commit("base")
    with repo.checkout(write=True) as co:
        co["images"].update(range(8, 16), images[8:16])
        co.commit("more")
    kept_files = _files(memmap)

    # staged, then reset
    rng = np.random.default_rng(1)
    dropped = rng.integers(0, 256, size=(64, 28, 28), dtype=np.uint8)
    with repo.checkout(write=True) as co:
        co["images"].update(range(100, 164), dropped)
    reset_files = _files(memmap) - kept_files
    assert reset_files
    with repo.checkout(write=True) as co:
        co.reset_staging_area()

    # committed on a branch that is then force-deleted
    repo.create_branch("doomed")
    doomed_data = rng.integers(0, 256, size=(64, 28, 28), dtype=np.uint8)
    with repo.checkout(write=True, branch="doomed") as co:
        co["images"].update(range(200, 264), doomed_data)
        co.add_str_column("doomed_notes")["x"] = "gone soon"
        doomed_head = co.commit("doomed work")
    doomed_files = _files(memmap) - kept_files - reset_files
    assert doomed_files
    with repo.checkout(write=True, branch="main"):
        pass
    repo.delete_branch("doomed", force=True)
    repo.create_tag("keep", "main")

    snapshot = _snapshot(repo)
    usage_before = repo.disk_usage()
    report = repo.gc()
    assert isinstance(report, tc.GCReport)
    remaining = _files(memmap)
    assert not (remaining & reset_files), "gc kept the data of a reset staging area"
    assert not (remaining & doomed_files), "gc kept the data of a force-deleted branch"
    assert kept_files <= remaining
    assert repo.disk_usage() < usage_before
    with pytest.raises(tc.RefNotFoundError):
        repo.resolve(doomed_head)

    assert _snapshot(repo) == snapshot  # every remaining commit reads back bit-exact
    assert repo.verify(full=True).ok
    with tc.Repository(repo.path) as fresh:
        assert _snapshot(fresh) == snapshot
        assert fresh.verify(full=True).ok
    # a second gc finds nothing more
    again = repo.gc()
    assert (again.commits, again.samples, again.segments) == (0, 0, 0)
    # and the repository is still writable
    with repo.checkout(write=True) as co:
        co["images"][999] = images[0]
        co.commit("after gc")
    assert repo.verify(full=True).ok


def test_gc_keeps_staged_data(repo):
    _commit_labels(repo, {0: 0}, "base")
    with repo.checkout(write=True) as co:
        co["labels"][1] = np.int64(12345)
        co.add_str_column("s")["k"] = "staged string"
    repo.gc()
    with repo.checkout(write=True) as co:
        assert int(co["labels"][1]) == 12345
        assert co["s"]["k"] == "staged string"
        cid = co.commit("commit after gc")
    with repo.checkout(commit=cid) as rc:
        assert int(rc["labels"][1]) == 12345
    assert repo.verify(full=True).ok


def test_gc_refused_while_a_writer_is_open(repo):
    _commit_labels(repo, {0: 0})
    with repo.checkout(write=True), pytest.raises(tc.WriterLockError):
        repo.gc()


# -- identity and content addressing -------------------------------------------------------------


def _replay(path: Path, monkeypatch, *, message: str = "second") -> list[str]:
    clock = itertools.count(1_600_000_000_000_000_000, 1_000_000_000)
    monkeypatch.setattr(history_store, "time", types.SimpleNamespace(time_ns=lambda: next(clock)))
    ids = []
    with tc.init(path, user_name="Ada", user_email="ada@example.org") as repo:
        with repo.checkout(write=True) as co:
            co.add_ndarray_column("x", (2, 2), "float32").update(
                {"a": np.eye(2, dtype=np.float32), 3: np.zeros((2, 2), np.float32)}
            )
            co.add_str_column("s")["k"] = "text"
            ids.append(co.commit("first"))
            co["x"]["b"] = np.ones((2, 2), np.float32)
            ids.append(co.commit(message))
        repo.create_branch("dev", base=ids[0])
        with repo.checkout(write=True, branch="dev") as co:
            del co["x"]["a"]
            ids.append(co.commit("on dev"))
    return ids


def test_commit_ids_are_deterministic(tmp_path, monkeypatch):
    one = _replay(tmp_path / "one", monkeypatch)
    two = _replay(tmp_path / "two", monkeypatch)
    assert one == two
    assert len(set(one)) == 3
    other = _replay(tmp_path / "three", monkeypatch, message="a different message")
    assert other[0] == one[0]
    assert other[1] != one[1]
    with tc.Repository(tmp_path / "one") as a, tc.Repository(tmp_path / "two") as b:
        assert a.branches == b.branches
        assert [c.time for c in a.log("dev")] == [c.time for c in b.log("dev")]


def test_commit_ids_depend_on_author(tmp_path, monkeypatch):
    ids = []
    for name in ("Ada", "Grace"):
        clock = itertools.count(1_600_000_000_000_000_000, 1_000_000_000)
        monkeypatch.setattr(
            history_store, "time", types.SimpleNamespace(time_ns=lambda c=clock: next(c))
        )
        with tc.init(tmp_path / name, user_name=name, user_email="x@example.org") as repo:
            ids.append(_commit_labels(repo, {0: 0}, "same"))
    assert ids[0] != ids[1]


def test_equal_content_is_stored_once(repo):
    rng = np.random.default_rng(3)
    value = rng.integers(0, 2**31, size=(32, 32), dtype=np.int32)  # 4 KiB
    memmap = repo.path / "data" / "memmap"
    with repo.checkout(write=True) as co:
        for name in ("a", "b", "c"):
            co.add_ndarray_column(name, (32, 32), "int32").update(
                {k: value for k in ("x", "y", 1, 2)}
            )
        co.commit("same value everywhere")
    repo.create_branch("dev")
    for branch in ("dev", "main"):
        with repo.checkout(write=True, branch=branch) as co:
            co["a"][branch] = value.copy()
            co["b"][branch] = value.astype(">i4")
            co.commit(f"again on {branch}")
    stored = b"".join(p.read_bytes() for p in sorted(_files(memmap)))
    needle = value.tobytes()
    assert stored.count(needle) == 1
    assert len(stored) < 2 * len(needle)
    with repo.checkout() as co:
        assert len({co[n].digest(k) for n in ("a", "b", "c") for k in co[n]}) == 1


# -- the public API ------------------------------------------------------------------------------

EXPECTED_ALL = [
    "AmbiguousRefError",
    "CaskError",
    "CheckoutClosedError",
    "Column",
    "ColumnDiff",
    "CommitInfo",
    "Conflict",
    "ConcurrentUpdateError",
    "CorruptionError",
    "DataNotLocalError",
    "Diff",
    "FetchResult",
    "GCReport",
    "MergeConflictError",
    "PartWriter",
    "PurgeReport",
    "PurgedDataError",
    "PushResult",
    "ReadCheckout",
    "ReadOnlyError",
    "RefNotFoundError",
    "RemoteError",
    "RemoteVerifyReport",
    "Repository",
    "RepositoryNotFoundError",
    "SamplesPart",
    "SchemaError",
    "Tombstone",
    "VerifyReport",
    "WriteCheckout",
    "WriterLockError",
    "__version__",
    "clone",
    "init",
]


def test_curated_public_api():
    assert sorted(tc.__all__) == sorted(EXPECTED_ALL)
    assert len(tc.__all__) == len(set(tc.__all__))
    for name in tc.__all__:
        assert getattr(tc, name) is not None, name
    namespace: dict = {}
    exec("from tensorcask import *", namespace)
    assert set(EXPECTED_ALL) <= set(namespace)
    assert isinstance(tc.__version__, str)


def test_import_does_not_pull_in_frameworks():
    code = (
        "import sys, tensorcask, tensorcask.loaders\n"
        "heavy = [m for m in ('torch', 'tensorflow', 'jax', 'keras') if m in sys.modules]\n"
        "print(','.join(heavy) or 'none')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "none"


ERROR_BASES = {
    "RepositoryNotFoundError": (builtins.FileNotFoundError,),
    "WriterLockError": (builtins.PermissionError,),
    "ReadOnlyError": (builtins.PermissionError,),
    "CheckoutClosedError": (),
    "SchemaError": (builtins.ValueError,),
    "RefNotFoundError": (builtins.KeyError,),
    "AmbiguousRefError": (builtins.KeyError,),
    "MergeConflictError": (),
    "CorruptionError": (),
    "PurgedDataError": (),
    "DataNotLocalError": (),
    "ConcurrentUpdateError": (),
    "RemoteError": (),
}


@pytest.mark.parametrize("name", sorted(ERROR_BASES))
def test_error_hierarchy(name):
    cls = getattr(tc, name)
    assert issubclass(cls, tc.CaskError)
    assert issubclass(cls, Exception)
    for base in ERROR_BASES[name]:
        assert issubclass(cls, base), f"{name} should derive from {base.__name__}"
    error = cls("something happened to 'thing'")
    assert str(error) == "something happened to 'thing'"  # no KeyError-style quoting
    with pytest.raises(tc.CaskError):
        raise error


def test_every_exported_error_is_listed():
    exported = {n for n in tc.__all__ if isinstance(getattr(tc, n), type)}
    errors = {n for n in exported if issubclass(getattr(tc, n), BaseException)}
    assert errors == set(ERROR_BASES) | {"CaskError"}
    assert issubclass(tc.CaskError, Exception)


def test_merge_conflict_and_corruption_error_attributes():
    conflict = tc.MergeConflictError("conflict", [("images", "k", "modify/modify")])
    assert conflict.conflicts == [("images", "k", "modify/modify")]
    corrupt = tc.CorruptionError("bad", column="c", key=3, path="/x")
    assert (corrupt.column, corrupt.key, corrupt.path) == ("c", 3, "/x")


def test_repositories_dropped_without_close_release_their_files(tmp_path: Path) -> None:
    """Each open repository maps a large address range: hundreds dropped without
    close() must not exhaust the process's address space."""
    for i in range(200):  # far beyond what fits if none were released
        repo = tc.init(tmp_path / f"r{i}")
        assert repo.branches == {}
        del repo
