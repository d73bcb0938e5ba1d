"""Buffered single-sample writes (``col[k] = v``) in a write checkout.

Writes live in the process until a flush stages them as one batch: at
``BUFFER_SAMPLES`` samples, ``col.flush()``, ``co.flush()``, ``commit()``,
``close()``, the end of ``with col:`` and before operations that need the
staged state. The ``staged`` fixture counts the batches the checkout's
staging writer stores; crashes are real SIGKILLs of a child process.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pytest

import tensorcask as tc
import tensorcask.checkout
import tensorcask.columns

REPO_ROOT = Path(__file__).resolve().parents[1]
WRITER = tensorcask.checkout._StagingWriter

KINDS = {
    "fixed": (
        lambda co, name: co.add_ndarray_column(name, shape=(3,), dtype="int32"),
        lambda i: np.array([i, -i, i * 7], dtype=np.int32),
    ),
    "variable": (
        lambda co, name: co.add_ndarray_column(
            name, shape=(None,), dtype="float64", max_shape=(9,)
        ),
        lambda i: np.arange(i % 9 + 1, dtype=np.float64) * (i + 0.5),
    ),
    "str": (lambda co, name: co.add_str_column(name), lambda i: f"s{i}:" + "\u00e9" * (i % 4)),
    "bytes": (lambda co, name: co.add_bytes_column(name), lambda i: bytes([i % 256]) * (i % 5 + 1)),
}


def same(got: Any, want: Any) -> bool:
    if isinstance(want, np.ndarray):
        return (
            isinstance(got, np.ndarray)
            and (got.dtype, got.shape) == (want.dtype, want.shape)
            and got.tobytes() == want.tobytes()
        )
    return type(got) is type(want) and got == want


@pytest.fixture
def staged(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """``(column, samples)`` of every batch a write checkout stored and staged."""
    calls: list[tuple[str, int]] = []
    original = WRITER.write

    def write(self: Any, column: tc.Column, raw_keys: list[bytes], *args: Any, **kw: Any) -> None:
        original(self, column, raw_keys, *args, **kw)
        calls.append((column.name, len(raw_keys)))

    monkeypatch.setattr(WRITER, "write", write)
    return calls


@pytest.mark.parametrize("kind", list(KINDS))
def test_buffered_values_read_back_and_commit(repo, staged, kind):
    add, value = KINDS[kind]
    with repo.checkout(write=True) as co:
        col = add(co, "c")
        for i in range(20):
            col[i] = value(i)
        for i in range(20):
            assert same(col[i], value(i)) and i in col
        assert 20 not in col and col.get(20) is None
        digests = {i: col.digest(i) for i in range(20)}
        assert staged == []  # reads of buffered keys do not flush
        cid = co.commit("buffered")
        assert staged == [("c", 20)]
    with repo.checkout(commit=cid) as ro:
        assert ro["c"].keys() == list(range(20))
        for i in range(20):
            assert same(ro["c"][i], value(i)) and ro["c"].digest(i) == digests[i]
    assert repo.verify(full=True).ok


TRIGGERS = {
    "col.flush": lambda co, col: col.flush(),
    "co.flush": lambda co, col: co.flush(),
    "len": lambda co, col: len(col),
    "keys": lambda co, col: col.keys(),
    "get_many": lambda co, col: col.get_many([2, 1]),
    "del": lambda co, col: col.__delitem__(0),
    "update": lambda co, col: col.update({9: "nine"}),
    "diff": lambda co, col: co.diff(),
    "commit": lambda co, col: co.commit("flushed"),
    "close": lambda co, col: co.close(),
}


@pytest.mark.parametrize("trigger", list(TRIGGERS))
def test_operations_that_flush(repo, staged, trigger):
    with repo.checkout(write=True) as co:
        col = co.add_str_column("t")
        for i in range(3):
            col[i] = f"v{i}"
        assert staged == []
        TRIGGERS[trigger](co, col)
        assert staged[0] == ("t", 3)
    want = {i: f"v{i}" for i in range(3)}
    if trigger == "del":
        del want[0]
    if trigger == "update":
        want[9] = "nine"
    with repo.checkout(write=True) as co:  # what is staged (or committed) now
        assert co["t"].keys() == sorted(want)
        assert [co["t"][k] for k in sorted(want)] == [want[k] for k in sorted(want)]
        assert bool(co.diff()) is (trigger != "commit")


def test_with_block_flushes_at_its_end(repo, staged):
    with repo.checkout(write=True) as co:
        col = co.add_bytes_column("b")
        with col:
            col[1] = b"one"
            with col:
                col[2] = b"two"
            assert staged == []  # an inner block does not flush
        assert staged == [("b", 2)]
        col[3] = b"three"  # buffered without a block, too
        assert staged == [("b", 2)]
        assert len(col) == 3 and staged == [("b", 2), ("b", 1)]


def test_buffer_flushes_itself_at_buffer_samples(repo, staged, monkeypatch):
    monkeypatch.setattr(tensorcask.columns, "BUFFER_SAMPLES", 4)
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("x", shape=(), dtype="int64")
        for i in range(11):
            col[i] = np.int64(i)
        assert staged == [("x", 4), ("x", 4)]
        assert co.commit("eleven") and staged[-1] == ("x", 3)
        co["x"][11] = np.int64(11)
        co.commit("a buffered write is all there is to commit")
        assert co["x"].keys() == list(range(12)) and staged[-1] == ("x", 1)


@pytest.mark.parametrize("kind", list(KINDS))
def test_interleaved_writes_and_reads_equal_update(repo, monkeypatch, kind):
    monkeypatch.setattr(tensorcask.columns, "BUFFER_SAMPLES", 7)  # automatic flushes too
    add, value = KINDS[kind]
    rng = random.Random(kind)
    model: dict[int, Any] = {}
    with repo.checkout(write=True) as co:
        a, b = add(co, "a"), add(co, "b")
        for step in range(300):
            k, op = rng.randrange(40), rng.random()
            if op < 0.6:
                a[k] = model[k] = value(k * 1000 + step)
            elif op < 0.8:
                assert (k in a) is (k in model)
                assert k not in model or same(a[k], model[k])
            elif op < 0.9 and k in model:
                del a[k]
                del model[k]
            elif op > 0.97:
                assert len(a) == len(model)
        b.update(model)
        cid = co.commit("interleaved")
    with repo.checkout(commit=cid) as ro:
        assert ro["a"].keys() == ro["b"].keys() == sorted(model)
        for k, want in model.items():
            assert ro["a"].digest(k) == ro["b"].digest(k)
            assert same(ro["a"][k], want)


def test_reassigning_keeps_the_last_value(repo):
    arr = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("x", shape=(2,), dtype="int64").update({"base": arr(1, 1)})
        co.commit("base")
        col = co["x"]
        col["base"], col["base"] = arr(2, 2), arr(3, 3)  # over a committed key
        col["new"], col["new"] = arr(4, 4), arr(5, 5)  # twice in the buffer
        col["staged"] = arr(6, 6)
        col.flush()
        col["staged"] = arr(7, 7)  # over a staged key
        want = {"base": arr(3, 3), "new": arr(5, 5), "staged": arr(7, 7)}
        assert all(same(col[k], v) for k, v in want.items())
        assert len(col) == 3
        cid = co.commit("last values")
    with repo.checkout(commit=cid) as ro:
        assert ro["x"].keys() == sorted(want)
        assert all(same(ro["x"][k], v) for k, v in want.items())


def test_deleting_a_buffered_key(repo):
    with repo.checkout(write=True) as co:
        co.add_bytes_column("b").update({"base": b"old"})
        co.commit("base")
        col = co["b"]
        col["base"], col["fresh"], col["kept"] = b"new", b"x", b"k"
        del col["base"]
        del col["fresh"]
        assert "base" not in col and "fresh" not in col
        with pytest.raises(KeyError):
            col["fresh"]
        with pytest.raises(KeyError):
            del col["fresh"]
        assert col.keys() == ["kept"]
        change = co.diff().columns["b"]
        assert (change.added, change.removed) == ({"kept"}, {"base"})
        cid = co.commit("deletions")
    with repo.checkout(commit=cid) as ro:
        assert ro["b"].keys() == ["kept"] and ro["b"]["kept"] == b"k"


def test_buffer_holds_copies_and_reads_return_copies(repo):
    with repo.checkout(write=True) as co:
        fixed = co.add_ndarray_column("f", shape=(3,), dtype="float32")
        var = co.add_ndarray_column("v", shape=(None,), dtype="int16", max_shape=(8,))
        big = np.arange(9, dtype=np.float32).reshape(3, 3)
        fixed["row"] = big[:, 1]  # a strided view into the caller's array
        fixed.update({"ref": np.array([1, 4, 7], dtype=np.float32)})
        small = np.arange(4, dtype=np.int16)
        var["a"] = small
        digest = fixed.digest("row")
        assert digest == fixed.digest("ref")
        big[:] = -1
        small[:] = -1
        got = fixed["row"]
        assert same(got, np.array([1, 4, 7], dtype=np.float32))
        got[:] = 99
        var["a"][:] = 99
        assert same(fixed["row"], np.array([1, 4, 7], dtype=np.float32))
        assert same(var["a"], np.arange(4, dtype=np.int16))
        assert fixed.digest("row") == digest
        cid = co.commit("copies")
    with repo.checkout(commit=cid) as ro:
        assert same(ro["f"]["row"], np.array([1, 4, 7], dtype=np.float32))
        assert same(ro["v"]["a"], np.arange(4, dtype=np.int16))
        assert ro["f"].digest("row") == digest


def test_writing_purged_content_is_refused_at_once(repo, staged):
    secret, blocked = os.urandom(64), os.urandom(64)
    with repo.checkout(write=True) as co:
        co.add_bytes_column("b").update({"k": secret, "o": b"other"})
        co["b"]["probe"] = blocked
        digest = co["b"].digest("probe")
        del co["b"]["probe"]
        co.commit("one")
    repo.purge("b", ["k"], reason="erasure")
    repo.purge_content([digest], reason="blocklist")
    staged.clear()
    with repo.checkout(write=True) as co:
        col = co["b"]
        col["n"] = b"fresh"
        with pytest.raises(tc.PurgedDataError) as info:
            col["k"] = secret
        assert (info.value.column, info.value.key, info.value.reason) == ("b", "k", "erasure")
        with pytest.raises(tc.PurgedDataError) as info, col:
            col[99] = blocked  # purged content: refused under any key
        assert info.value.reason == "blocklist" and 99 not in col
        assert col["n"] == b"fresh" and staged == [("b", 1)]  # the block's end flushed "n"
        with pytest.raises(tc.PurgedDataError):
            col["k"]  # still the purged committed sample
        assert col.keys() == ["k", "n", "o"]
        co.commit("two")
    assert repo.verify().ok


def test_failed_flush_keeps_the_buffer(repo, monkeypatch):
    original = WRITER.write
    failures: list[Exception] = [OSError("disk full (injected)")]

    def write(self: Any, *args: Any, **kw: Any) -> None:
        if failures:
            raise failures.pop()
        original(self, *args, **kw)

    monkeypatch.setattr(WRITER, "write", write)
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("x", shape=(2,), dtype="uint8")
        for i in range(5):
            col[i] = np.full(2, i, dtype=np.uint8)
        with pytest.raises(OSError, match="injected"):
            col.flush()
        assert all(same(col[i], np.full(2, i, dtype=np.uint8)) for i in range(5))
        failures.append(OSError("injected again"))
        with pytest.raises(OSError, match="injected again"):
            co.commit("fails")
        assert co.commit_id is None
        cid = co.commit("after the failures")
    with repo.checkout(commit=cid) as ro:
        assert ro["x"].keys() == list(range(5))
        assert all(same(ro["x"][i], np.full(2, i, dtype=np.uint8)) for i in range(5))


def test_delete_column_drops_its_buffered_writes(repo, staged):
    with repo.checkout(write=True) as co:
        co.add_str_column("kept").update({1: "one"})
        co.add_str_column("gone").update({1: "one"})
        co.commit("base")
        staged.clear()
        co["kept"][2] = "two"
        old = co["gone"]
        old[2], old[3] = "two", "three"
        co.delete_column("gone")
        with pytest.raises(KeyError):
            old[4] = "four"  # a column deleted from the checkout
        co.add_str_column("fresh")[5] = "five"
        co.delete_column("fresh")
        new = co.add_str_column("gone")  # a new column of that name starts empty
        old.flush()  # nothing left to flush into it
        assert len(new) == 0 and 2 not in new
        cid = co.commit("deleted")
        assert staged == [("kept", 1)]
    with repo.checkout(commit=cid) as ro:
        assert list(ro.columns) == ["gone", "kept"]
        assert ro["gone"].keys() == [] and ro["kept"].keys() == [1, 2]
    assert repo.verify().ok


CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import tensorcask as tc
    import tensorcask.columns

    path, buffer, flushed, unflushed = sys.argv[1], *map(int, sys.argv[2:])
    tensorcask.columns.BUFFER_SAMPLES = buffer
    co = tc.Repository(path).checkout(write=True)
    for i in range(flushed + unflushed):
        if i == flushed:
            co.flush()
        co["x"][i] = np.arange(4, dtype=np.int64) * i - 3
        co["t"][i] = "t%d" % i
    print("ready", flush=True)
    time.sleep(120)
    """
)


def x_value(i: Any) -> np.ndarray:
    return np.arange(4, dtype=np.int64) * i - 3


@pytest.mark.parametrize(
    ("buffer", "flushed", "unflushed", "survive"),
    [(8192, 100, 50, 100), (10, 0, 13, 10), (10, 25, 13, 35)],
)
def test_sigkill_loses_only_unflushed_writes(tmp_path, buffer, flushed, unflushed, survive):
    path = tmp_path / "repo"
    repo = tc.init(path, user_name="Ada", user_email="ada@example.org")
    base = {f"base{i}": i for i in range(10)}
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("x", shape=(4,), dtype="int64").update(
            {k: x_value(i) for k, i in base.items()}
        )
        co.add_str_column("t").update({k: f"b{i}" for k, i in base.items()})
        cid = co.commit("base")
    repo.close()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    args = [sys.executable, "-c", CHILD, str(path), str(buffer), str(flushed), str(unflushed)]
    with open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, env=env)
    with proc:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else b""  # type: ignore[union-attr]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert line == b"ready\n", (tmp_path / "stderr").read_text(errors="replace")
    assert proc.returncode == -signal.SIGKILL

    repo = tc.Repository(path)
    with repo.checkout(commit=cid) as ro:  # the commit reads back bit-exact
        assert ro["x"].keys() == sorted(base) and ro["t"].keys() == sorted(base)
        for k, i in base.items():
            assert same(ro["x"][k], x_value(i)) and ro["t"][k] == f"b{i}"
    assert repo.verify(full=True).ok
    with pytest.warns(RuntimeWarning, match="died without releasing"):
        co = repo.checkout(write=True)  # the dead writer's lock is taken over
    with co:
        change = co.diff()
        assert change.columns["x"].added == change.columns["t"].added == set(range(survive))
        assert co["x"].keys() == co["t"].keys() == [*range(survive), *sorted(base)]
        for i in range(survive):
            assert same(co["x"][i], x_value(i)) and co["t"][i] == f"t{i}"


def test_a_dropped_checkout_still_stages_its_buffered_writes(tmp_path: Path) -> None:
    import gc

    repo = tc.init(tmp_path / "dropped", user_name="Ada", user_email="ada@example.org")
    co = repo.checkout(write=True)
    col = co.add_str_column("s")
    col["a"] = "staged when the checkout goes away"
    assert col.pending == 1
    del col, co
    gc.collect()
    with repo.checkout(write=True) as again:  # the lock was given back
        assert again["s"]["a"] == "staged when the checkout goes away"
    repo.close()


def test_a_script_that_never_closes_its_checkout_keeps_its_writes(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "script"
    tc.init(path, user_name="Ada", user_email="ada@example.org").close()
    script = (
        "import sys, tensorcask as tc\n"
        "repo = tc.Repository(sys.argv[1])\n"
        "co = repo.checkout(write=True)\n"
        "col = co.add_str_column('s')\n"
        "for i in range(10):\n"
        "    col[i] = str(i)\n"
        "GLOBAL = co  # alive until the interpreter exits\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, env=env)
    repo = tc.Repository(path)
    with repo.checkout(write=True) as co:
        assert co["s"].keys() == list(range(10))
    repo.close()


def test_a_large_buffer_is_staged_by_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tensorcask.columns, "BUFFER_BYTES", 10_000)
    repo = tc.init(tmp_path / "bytes", user_name="Ada", user_email="ada@example.org")
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("x", shape=(1000,), dtype="uint8")
        for i in range(25):
            col[i] = np.full(1000, i, np.uint8)
        assert col.pending == 5  # staged at 10, 20: never more than BUFFER_BYTES held
    repo.close()


def test_a_damaged_staged_run_does_not_lock_the_writer_out(tmp_path: Path) -> None:
    repo = tc.init(tmp_path / "damaged", user_name="Ada", user_email="ada@example.org")
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("x", shape=(), dtype="int64")[0] = np.int64(0)
        co.commit("init")
        co["x"].update([1, 2], np.array([1, 2]))
    repo.close()
    path = tmp_path / "damaged" / "meta"
    env = lmdb.open(str(path), max_dbs=16)
    staging = env.open_db(b"staging")
    with env.begin(write=True, db=staging) as txn:  # bit rot in the staged run
        key, value = next(iter(txn.cursor()))
        flipped = bytearray(value)
        flipped[10] ^= 1
        txn.put(key, bytes(flipped))
    env.close()
    repo = tc.Repository(tmp_path / "damaged")
    with repo.checkout(write=True) as co:  # opens: the damage is staged data, not history
        with pytest.raises(tc.CorruptionError, match="reset the staging area"):
            co["x"][1]
        co.reset_staging_area()
        assert co["x"].keys() == [0]
    repo.close()


def test_a_forked_child_hashes_large_rows(tmp_path: Path) -> None:
    from tensorcask import samples

    rows = np.random.default_rng(0).integers(0, 255, (64, 8192), dtype=np.uint8)
    expected = samples.stacked_digests(rows)  # the parent starts its hashing threads
    pid = os.fork()
    if pid == 0:  # the child has the pool object but none of its threads
        import signal

        signal.alarm(20)
        os._exit(0 if samples.stacked_digests(rows) == expected else 3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
