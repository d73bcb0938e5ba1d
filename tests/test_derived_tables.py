"""Column tables derived at commit time (tensorcask/derived_tables.py): they must equal
a fresh build array by array, reads must return the committed values, and where nothing
is derivable nothing is saved (the table is built when first read)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import tensorcask as tc
from tensorcask.locations import ColumnTable, ColumnTables
from tensorcask.table_cache import TableCacheWarning

REPO_ROOT = Path(__file__).resolve().parents[1]
KEYS = [0, 1, 2, 9, 2**32 + 1, 2**63 - 1, 2**63, 2**63 + 7, 2**64 - 2, 2**64 - 1]
SCHEMAS = [((3,), "float32"), ((2, 2), "int16")]
ARRAYS = ("digests", "int_keys", "segments", "rows", "checksums")


def _value(schema: int, v: int) -> np.ndarray:
    shape, dtype = SCHEMAS[schema]
    return (np.arange(int(np.prod(shape))) + 7 * v).astype(dtype).reshape(shape)


def _manifests(path: Path) -> set[str]:
    return {p.stem for p in (path / "cache" / "tables").glob("*.json")}


def _table_name(probe: tc.Repository, cid: str, column: str) -> str:
    parts = probe._parts
    root = parts.history.columns(cid)[column]
    return ColumnTables.cache_name(root.hash, parts.store.tombstones().generation)


def _check_tables(probe: tc.Repository, cid: str, column: str, *, get: bool = False) -> None:
    """The saved table of ``column`` (``get``: or its rebuild) equals a fresh build."""
    parts = probe._parts
    root = parts.history.columns(cid)[column]
    derived = parts.tables.get(root) if get else parts.tables.cached(root)
    assert derived is not None
    built = ColumnTable.build(parts.history.tree, root.tree, parts.store.lookup_raw, root.schema)
    assert derived.count == built.count == root.count
    if not built.count:  # a build of nothing has no int keys or rows: any empty arrays do
        assert all(len(a) == 0 for a in derived.arrays().values())
        return
    assert set(derived.arrays()) == set(built.arrays())
    for name in ARRAYS:
        a, b = derived.arrays()[name], built.arrays()[name]
        assert a.dtype == b.dtype and np.array_equal(a, b), f"{name} differs at commit {cid}"


def _setup(path: Path, **columns: dict[Any, np.ndarray]) -> tuple[tc.Repository, str]:
    """A repository whose first commit holds int64 (3,) memmap ``columns``."""
    repo = tc.init(path, user_name="Ada", user_email="ada@example.org")
    with repo.checkout(write=True) as co:
        for name, model in columns.items():
            co.add_ndarray_column(name, (3,), "int64").update(model)
        return repo, co.commit("c1")


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, np.ndarray):
        got = np.asarray(got)
        return got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    return bool(got == want)


def _same_dict(a: dict[Any, Any], b: dict[Any, Any]) -> bool:
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)


def _check_reads(path: Path, cid: str, column: str, model: dict[Any, Any]) -> None:
    """A fresh read checkout and the torch dataset return ``model``."""
    repo_dataset = pytest.importorskip("tensorcask.loaders.torch").repo_dataset
    probe = tc.Repository(path)
    try:
        with probe.checkout(commit=cid) as co:
            col = co[column]
            assert col.keys() == sorted(model)
            for k, v in model.items():
                assert _same(col[k], v), k
            for k, got in zip(sorted(model), col.get_many(sorted(model)), strict=True):
                assert _same(got, model[k]), k
        if model:
            ds = repo_dataset(probe, [column], commit=cid)
            assert len(ds) == len(model)
            for i, (sample,) in enumerate(ds.__getitems__(list(range(len(ds))))):
                assert _same(sample, model[ds.key(i)]), ds.key(i)
            ds.source._state()[0].close()
    finally:
        probe.close()


# -- 1. derived == built, over random histories --------------------------------------------------

_key = st.integers(0, len(KEYS) - 1)
_val = st.one_of(st.integers(0, 3), st.none())  # a pooled (deduplicated) value, or a fresh one
_op = st.one_of(
    st.tuples(st.just("set"), _key, _val),
    st.tuples(
        st.just("update"),
        st.lists(st.tuples(_key, _val), min_size=1, max_size=6, unique_by=lambda t: t[0]),
    ),
    st.tuples(st.just("del"), _key),
    st.tuples(st.just("clear")),
    st.tuples(st.just("recreate"), st.booleans()),
    st.tuples(st.just("reopen")),  # staged edits outlive their checkout
)
_history = st.lists(st.lists(_op, max_size=6), min_size=1, max_size=5)  # commits of ops


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(_history)
@example(  # keys >= 2**63 and 0, dedup, delete + re-add, every key deleted, then re-added
    [
        [("update", [(0, 0), (6, 1), (9, None), (3, 2)])],
        [("set", 6, 2), ("del", 0), ("set", 0, 1), ("reopen",), ("update", [(9, 1), (7, None)])],
        [("clear",)],
        [("set", 0, 0), ("update", [(9, 3), (6, 3)])],
    ]
)
@example(  # deleted and re-created: same schema (all, some records), other schema, and back
    [
        [("update", [(0, 0), (6, 1), (9, 2)])],
        [("recreate", True), ("set", 6, 3)],
        [("recreate", True), ("update", [(6, 0), (1, 1)])],
        [("recreate", False), ("set", 2, None), ("del", 2), ("set", 8, 0)],
        [("recreate", False), ("recreate", False), ("set", 5, 0)],
    ]
)
def test_derived_table_equals_a_fresh_build(history: list[list[tuple[Any, ...]]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "repo"
        repo = tc.init(path, user_name="Ada", user_email="ada@example.org")
        schema, fresh, model, parent = 0, 100, {}, None

        def value(v: int | None, i: int = 0) -> np.ndarray:  # pooled, or fresh content
            return _value(schema, 10 * fresh + i if v is None else v)

        try:
            for ops in history:
                parent_schema, recreated = schema, parent is None
                co = repo.checkout(write=True)
                if parent is None:
                    co.add_ndarray_column("x", *SCHEMAS[0])
                for op in ops:
                    fresh += 1
                    if op[0] == "reopen":
                        co.close()
                        co = repo.checkout(write=True)
                        continue
                    col = co["x"]
                    if op[0] == "set":
                        model[KEYS[op[1]]] = col[KEYS[op[1]]] = value(op[2])
                    elif op[0] == "update":
                        keys = [KEYS[i] for i, _ in op[1]]
                        batch = np.stack([value(v, i) for i, (_, v) in enumerate(op[1])])
                        col.update(np.array(keys, dtype=np.uint64), batch)
                        model.update(zip(keys, batch, strict=True))
                    elif op[0] == "del" and KEYS[op[1]] in model:
                        del col[KEYS[op[1]]], model[KEYS[op[1]]]
                    elif op[0] == "clear":
                        for k in list(model):
                            del col[k], model[k]
                    elif op[0] == "recreate":
                        co.delete_column("x")
                        schema = schema if op[1] else 1 - schema
                        co.add_ndarray_column("x", *SCHEMAS[schema])
                        model, recreated = {}, True
                if not recreated and _same_dict(model, parent or {}):
                    model[KEYS[0]] = co["x"][KEYS[0]] = value(None)  # something to commit
                before = _manifests(path)
                cid = co.commit("c")
                co.close()
                # Must be derived: a changed column, unless re-created with its old schema
                # over records it did not all write again (then only sometimes).
                must = bool(model) and (
                    not recreated
                    or schema != parent_schema
                    or parent is None
                    or set(parent) <= set(model)
                )
                probe = tc.Repository(path)
                try:
                    name = _table_name(probe, cid, "x")
                    if must:
                        assert name in _manifests(path), f"no table derived for {ops}"
                    if name in _manifests(path):
                        _check_tables(probe, cid, "x")
                    assert _manifests(path) - before <= {name}
                finally:
                    probe.close()
                _check_reads(path, cid, "x", model)  # (caches the table for the next commit)
                parent = dict(model)
        finally:
            repo.close()


# -- 2. nothing derivable: nothing saved, built when read ----------------------------------------


def _ints(k: int, v: int) -> np.ndarray:
    return np.array([k % 1000, v, 7], dtype=np.int64)


KINDS: dict[str, tuple[Any, Any, Any]] = {  # add the column, its key k, its value (k, v)
    "str-keys": (lambda co: co.add_ndarray_column("c", (3,), "int64"), lambda k: f"k{k}", _ints),
    "str-column": (lambda co: co.add_str_column("c"), lambda k: k, lambda k, v: f"s{k}-{v}"),
    "hdf5": (lambda co: co.add_ndarray_column("c", (3,), "int64", backend="hdf5"), int, _ints),
    "lmdb": (lambda co: co.add_ndarray_column("c", (3,), "int64", backend="lmdb"), int, _ints),
    "var-shape": (
        lambda co: co.add_ndarray_column("c", (None,), "int64", max_shape=(8,)),
        int,
        lambda k, v: np.arange(k % 5 + 1, dtype=np.int64) + v,
    ),
    "parent-cache-removed": (lambda co: co.add_ndarray_column("c", (3,), "int64"), int, _ints),
}
KINDS["parent-cache-removed-same-handle"] = KINDS["parent-cache-removed"]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_nothing_saved_where_nothing_is_derivable(tmp_path: Path, kind: str) -> None:
    add, key, val = KINDS[kind]
    path = tmp_path / "repo"
    repo = tc.init(path, user_name="Ada", user_email="ada@example.org")
    model = {key(k): val(k, 0) for k in range(6)}
    ok = {k: _ints(k, 100) for k in range(6)}  # derivable (content not shared with c)
    with repo.checkout(write=True) as co:
        add(co).update(model)
        co.add_ndarray_column("ok", (3,), "int64").update(ok)
        c1 = co.commit("c1")
    probe = tc.Repository(path)
    assert _table_name(probe, c1, "ok") in _manifests(path)
    removed = kind.startswith("parent-cache-removed")  # a new memmap column with int keys
    assert (_table_name(probe, c1, "c") in _manifests(path)) == removed
    _check_reads(path, c1, "c", model)  # builds and saves its table
    if removed:
        shutil.rmtree(path / "cache")
    if kind == "parent-cache-removed":  # a new handle: the parent's tables are nowhere at hand
        repo.close()
        repo = tc.Repository(path)
    before = _manifests(path)
    with repo.checkout(write=True) as co:
        co["c"][key(1)] = model[key(1)] = val(1, 1)
        co["c"][key(40)] = model[key(40)] = val(40, 0)
        del co["c"][key(2)], model[key(2)]
        co["ok"][3] = ok[3] = _ints(3, 5)
        c2 = co.commit("c2")
    saved = _manifests(path) - before
    # A writer keeps no derived table in memory (they are private copies): with the
    # cache removed, the same handle has no parent table at hand either.
    assert saved == (set() if removed else {_table_name(probe, c2, "ok")})
    _check_reads(path, c2, "c", model)
    _check_reads(path, c2, "ok", ok)
    assert _table_name(probe, c2, "c") in _manifests(path)  # built when read, then saved
    probe.close()


# -- 3. after a purge and gc ---------------------------------------------------------------------


def test_commits_after_a_purge_and_gc(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    xs, ys = {k: _ints(k, 1) for k in range(10)}, {k: _ints(k, 2) for k in range(10)}
    repo, c1 = _setup(path, x=xs, y=ys)
    repo.purge("x", [3], reason="erasure")
    repo.gc()
    probe = tc.Repository(path)
    generation = probe._parts.store.tombstones().generation
    assert generation > 0
    _check_reads(path, c1, "y", ys)  # caches c1's y table under the new generation
    del xs[3]
    with repo.checkout(write=True) as co:
        del co["x"][3]
        co["x"][4] = xs[4] = _ints(4, 9)
        co["y"][2**64 - 1] = ys[2**64 - 1] = _ints(5, 9)
        del co["y"][0], ys[0]
        co.add_ndarray_column("z", (3,), "int64").update(ys)  # a new column
        before = _manifests(path)
        c2 = co.commit("c2")
    # x is not derived: c1's table of x holds a purged record, so it is never cached.
    names = {c: _table_name(probe, c2, c) for c in "xyz"}
    assert _manifests(path) - before == {names["y"], names["z"]}
    assert all(n.endswith(f"-{generation}") for n in names.values())
    for column, model in (("y", ys), ("z", ys)):
        _check_tables(probe, c2, column)
        _check_reads(path, c2, column, model)
    _check_reads(path, c2, "x", xs)
    with repo.checkout(write=True) as co:
        co["x"][5] = xs[5] = _ints(5, 7)
        c3 = co.commit("c3")  # derived from c2's x table, cached when read
    assert _table_name(probe, c3, "x") in _manifests(path)
    _check_tables(probe, c3, "x")
    _check_reads(path, c3, "x", xs)
    repo_dataset = pytest.importorskip("tensorcask.loaders.torch").repo_dataset
    with probe.checkout(commit=c1) as co, pytest.raises(tc.PurgedDataError):
        co["x"][3]
    ds = repo_dataset(path, ["x"], commit=c1)
    with pytest.raises(tc.PurgedDataError):
        ds.__getitems__(list(range(len(ds))))
    probe.close()


def test_commit_right_after_a_purge_through_another_handle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer holds the lock, so no purge can race its commit: the tables it
    saves must carry the purge generation even if its handle last looked at the
    tombstones before another handle purged (pinned here, not left to timing)."""
    monkeypatch.setattr("tensorcask.storage.content._RELOOK", 3600.0)
    path = tmp_path / "repo"
    xs, ys = {k: _ints(k, 1) for k in range(10)}, {k: _ints(k, 2) for k in range(10)}
    repo, _ = _setup(path, x=xs, y=ys)
    other = tc.Repository(path)
    other.purge("x", [3], reason="erasure")
    generation = other._parts.store.tombstones(fresh=True).generation
    before = _manifests(path)
    with repo.checkout(write=True) as co:
        co["x"][1] = xs[1] = _ints(1, 9)
        co["y"][1] = ys[1] = _ints(1, 9)
        c2 = co.commit("c2")
    saved = _manifests(path) - before
    _check_reads(path, c2, "y", ys)
    with other.checkout(commit=c2) as co, pytest.raises(tc.PurgedDataError):
        co["x"].get_many(list(xs))
    assert all(n.endswith(f"-{generation}") for n in saved), (generation, saved)
    other.close()


# -- 4. a damaged piece of a derived table -------------------------------------------------------


@pytest.mark.parametrize("then", ["read", "commit"])
@pytest.mark.parametrize("array", ARRAYS)
def test_damaged_piece_of_a_derived_table_is_rebuilt(tmp_path: Path, array: str, then: str) -> None:
    path = tmp_path / "repo"
    model = {k * 3: _ints(k, 0) for k in range(600)}
    repo, _ = _setup(path, x=model)
    with repo.checkout(write=True) as co:
        co["x"][3] = model[3] = _ints(3, 4)
        co["x"][1] = model[1] = _ints(1, 4)
        c2 = co.commit("c2")
    name = _table_name(repo, c2, "x")
    doc = json.loads((path / "cache" / "tables" / f"{name}.json").read_text())
    piece = doc["arrays"][array]["pieces"][-1]
    damaged = path / "cache" / "pieces" / piece[:2] / piece[2:]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x55
    damaged.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if then == "commit":  # the damaged table is the base of the next derivation
            repo.close()
            with tc.Repository(path).checkout(write=True) as co:  # nothing held in memory
                co["x"][6] = model[6] = _ints(6, 4)
                c2 = co.commit("c3")
            probe = tc.Repository(path)
            if _table_name(probe, c2, "x") in _manifests(path):
                _check_tables(probe, c2, "x")
            probe.close()
        _check_reads(path, c2, "x", model)
        probe = tc.Repository(path)
        _check_tables(probe, c2, "x", get=True)  # every array, digests too
        probe.close()
    assert any(issubclass(w.category, TableCacheWarning) for w in caught)


# -- 5. a fresh process maps the derived table ---------------------------------------------------

CHILD = """
import sys
import numpy as np
import tensorcask as tc
import tensorcask.locations
from tensorcask.loaders.core import RepoSource

def refuse(*args, **kwargs):
    raise AssertionError("ColumnTable.build was called")

tensorcask.locations.ColumnTable.build = refuse
path, commit, out = sys.argv[1:]
source = RepoSource(path, ["x", "y"], commit=commit)
x, y = source.read(np.arange(len(source)))
with tc.Repository(path).checkout(commit=commit) as co:
    keys = co["x"].keys()
    many = co["x"].get_many(keys)
np.savez(out, x=x, y=y, many=many, keys=np.array(keys, dtype=np.uint64))
"""


def test_fresh_process_reads_without_building(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    repo = tc.init(path, user_name="Ada", user_email="ada@example.org")
    keys = np.arange(5000, dtype=np.uint64) * 7 + 2**63
    xs = np.arange(5000 * 4, dtype=np.float32).reshape(5000, 4)
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("x", (4,), "float32").update(keys, xs)
        co.commit("c1")
    with repo.checkout(write=True) as co:
        xs[10] = -1
        co["x"][int(keys[10])] = xs[10]
        del co["x"][int(keys[0])]
        co.add_ndarray_column("y", (), "int64").update(keys[1:], np.arange(1, 5000))
        c2 = co.commit("c2")
    before = _manifests(path)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    out = tmp_path / "out.npz"
    args = [sys.executable, "-c", CHILD, str(path), c2, str(out)]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _manifests(path) == before
    got = np.load(out)
    assert np.array_equal(got["keys"], keys[1:])
    assert np.array_equal(got["x"], xs[1:]) and np.array_equal(got["many"], xs[1:])
    assert np.array_equal(got["y"], np.arange(1, 5000))


def test_no_table_is_derived_from_a_parent_with_unresolved_records(tmp_path: Path) -> None:
    """A partial clone's table marks samples not fetched yet; a commit must not derive
    from it (its placeholder rows would read as another sample's bytes)."""
    origin = tc.init(tmp_path / "origin", user_name="Ada", user_email="ada@example.org")
    with origin.checkout(write=True) as co:
        co.add_ndarray_column("x", shape=(4,), dtype="int64").update(
            list(range(6)), np.arange(24).reshape(6, 4) * 10
        )
        co.commit("six")
    url = (tmp_path / "remote").as_uri()
    origin.add_remote("origin", url)
    origin.push("origin")
    repo = tc.clone(url, tmp_path / "clone", partial=True, user_name="a", user_email="a@b.c")
    repo.fetch_data("origin", "main", columns=["x"], keys=[0, 1, 2])
    with repo.checkout() as ro:
        col = ro["x"]
        for _ in range(1400):  # enough reads that the column resolves its (partial) table
            col.get_many([0, 1, 2])
    with repo.checkout(write=True) as co:
        co["x"][100] = np.full(4, 7)
        cid = co.commit("one more")
    fresh = tc.Repository(tmp_path / "clone")
    with fresh.checkout(commit=cid) as ro:
        for k in (3, 4, 5):
            with pytest.raises(tc.DataNotLocalError):
                ro["x"][k]
        assert ro["x"][100].tolist() == [7, 7, 7, 7]
    fresh.close()
    repo.close()
    origin.close()
