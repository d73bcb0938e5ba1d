"""Every public read of sample bytes goes through ``ContentStore.fetch``.

``ContentStore.fetch`` is the one place where a check on what may be read at
all (purged content) will go. These tests replace it with a *gate* that
records the digests it is asked for and refuses tombstoned ones, and make
every backend read primitive fail unless called from inside the gate. Then
each public read path (columns of read and write checkouts, pinned commits,
the torch and tf.data loaders, ``verify``) is driven with one sample
tombstoned: that sample must fail to read, every other sample must still read
correctly, and no byte may be read past the gate.

The last tests damage an HDF5 file (plain and gzip) under a process that has
it open and cached, and check that ``verify(full=True)`` still sees it.
"""

from __future__ import annotations

import contextvars
import functools
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import tensorcask as tc
import tensorcask.storage.hdf5
import tensorcask.storage.lmdb_backend
import tensorcask.storage.memmap
import tensorcask.storage.memory  # imported: every backend class exists to be guarded
from tensorcask.hashing import array_digest_prefix, blob_digest
from tensorcask.locations import ColumnTable
from tensorcask.storage.base import Backend, TableRows
from tensorcask.storage.content import ContentStore

N = 4096  # rows per column: one get_many of every key resolves a column table
TARGET = 1234  # the key tombstoned in most tests
OLD = 7  # the key the second commit overwrites
KINDS = ("fixed", "var", "gzip", "lmdb", "str", "bytes")
MARK = "PURGED-BY-THE-GATE"

# (backend, compression) each column must be stored with: every kind is covered
STORED_AS = {
    "fixed": ("memmap", None),
    "var": ("hdf5", None),
    "gzip": ("hdf5", "gzip"),
    "lmdb": ("lmdb", None),
    "str": (None, None),
    "bytes": (None, None),
}

# What reads sample bytes in a backend: these run only inside ContentStore.fetch.
GUARDED = (
    "read",
    "read_many",
    "read_stacked",
    "read_rows",
    "read_durable",
    "verify",
    # private read primitives (guarded when a backend has them)
    "_rows",
    "_gather",
    "_dataset",
    "_read_block",
    "_read_durable",
    "_decode",
)
REQUIRED = ("read", "read_many", "read_stacked", "read_rows", "read_durable")


class Purged(tc.PurgedDataError):
    """Marker: the gate refused a tombstoned digest (what a purge check raises)."""


# -- sample values -------------------------------------------------------------


def value(kind: str, k: int, version: int = 1) -> Any:
    """The sample of column ``kind`` under key ``k``: distinct for every (kind, k, version)."""
    v = k + 100_000 * (version - 1)
    if kind == "fixed":
        return np.array([v, 7 * v + 1, -v - 3], np.int32)
    if kind == "var":
        return np.full((k % 4 + 1, 2), v, np.float32) + np.arange(2, dtype=np.float32)
    if kind == "gzip":
        return np.arange(k % 3 + 1, dtype=np.float64) + v + 0.5
    if kind == "lmdb":
        return np.array([v, -v - 1], np.int64)
    if kind == "str":
        return f"str-{v}-é"
    return b"bytes-" + v.to_bytes(4, "big")


def check(kind: str, k: int, got: Any, version: int = 1) -> None:
    """Assert ``got`` is the sample of ``kind`` under ``k``."""
    want = value(kind, k, version)
    if isinstance(want, np.ndarray):
        got = np.asarray(got)
        assert got.dtype == want.dtype and got.shape == want.shape, (kind, k)
        np.testing.assert_array_equal(got, want, err_msg=f"{kind} {k}")
    else:
        assert type(got) is type(want) and got == want, (kind, k, got)


def add_columns(co: tc.WriteCheckout) -> None:
    co.add_ndarray_column("fixed", shape=(3,), dtype="int32")
    co.add_ndarray_column("var", shape=(None, 2), dtype="float32")
    co.add_ndarray_column("gzip", shape=(None,), dtype="float64", compression="gzip")
    co.add_ndarray_column("lmdb", shape=(2,), dtype="int64", backend="lmdb")
    co.add_str_column("str")
    co.add_bytes_column("bytes")
    for kind, (backend, compression) in STORED_AS.items():
        if backend is not None:
            assert co[kind].schema.backend == backend
            assert co[kind].schema.compression == compression


def write(co: tc.WriteCheckout, keys: list[int], version: int = 1) -> None:
    for kind in KINDS:
        if kind == "fixed":
            batch = np.stack([value(kind, k, version) for k in keys])
            co[kind].update(np.asarray(keys), batch)
        else:
            co[kind].update({k: value(kind, k, version) for k in keys})


@dataclass
class Built:
    path: Path
    repo: tc.Repository
    first: str  # commit holding version 1 of every key
    head: str  # OLD overwritten with version 2


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """N keys in six columns (memmap, hdf5, gzip hdf5, lmdb, str, bytes), two commits."""
    path = tmp_path_factory.mktemp("read-path") / "repo"
    repo = tc.init(path, user_name="Ada", user_email="ada@example.org")
    with repo.checkout(write=True) as co:
        add_columns(co)
        write(co, list(range(N)))
        first = co.commit("one")
        write(co, [OLD], version=2)
        head = co.commit("two")
    try:
        yield Built(path, repo, first, head)
    finally:
        repo.close()


# -- the gate ------------------------------------------------------------------

_inside_fetch: contextvars.ContextVar[bool] = contextvars.ContextVar("inside_fetch", default=False)


def _payload_digests(out: Any) -> list[set[bytes]]:
    """Per sample returned by fetch, the digests its content may have."""
    samples = list(out) if isinstance(out, np.ndarray) else out
    found: list[set[bytes]] = []
    for sample in samples:
        if isinstance(sample, bytes):
            found.append({blob_digest("str", sample), blob_digest("bytes", sample)})
        else:
            arr = np.ascontiguousarray(np.asarray(sample))
            h = array_digest_prefix(arr.dtype, arr.shape)
            h.update(arr.data if arr.size else b"")
            found.append({h.digest()})
    return found


@dataclass
class Gate:
    """What the gate saw; ``tombstoned`` is what it refuses."""

    tombstoned: set[bytes] = field(default_factory=set)
    calls: list[tuple[str, list[bytes]]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    table_reads: int = 0  # ColumnTable.read (batch reads from a resolved table)
    table_read_ones: int = 0  # ColumnTable.read_one
    in_flight: int = 0  # fetch calls running now (in any thread)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def purge(self, hex_digest: str) -> bytes:
        digest = bytes.fromhex(hex_digest)
        self.tombstoned.add(digest)
        return digest

    def asked(self, mode: str | None = None) -> set[bytes]:
        return {d for m, ds in self.calls if mode in (None, m) for d in ds}

    def modes(self) -> set[str]:
        return {m for m, _ in self.calls}

    def reset(self) -> None:
        self.calls.clear()
        self.table_reads = self.table_read_ones = 0

    def settle(self, quiet: float = 0.3, limit: float = 20.0) -> None:
        """Wait until no fetch runs and none started for ``quiet`` seconds (reader
        threads of an abandoned tf.data iterator may still be finishing)."""
        deadline = time.monotonic() + limit
        seen = -1
        while time.monotonic() < deadline:
            with self.lock:
                now = (len(self.calls), self.in_flight)
            if now[1] == 0 and (now[0] == seen or not quiet):
                return
            seen = now[0] if now[1] == 0 else -1
            time.sleep(quiet)
        raise AssertionError("reads through the gate did not stop")


def _all_subclasses(cls: type) -> list[type]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    """``ContentStore.fetch`` records and refuses; backend reads outside it fail."""
    state = Gate()
    original = ContentStore.fetch

    def fetch(
        self: ContentStore,
        digests: Any,
        where: Any,
        *,
        stack: bool = False,
        durable: bool = False,
        **named: Any,
    ) -> Any:
        with state.lock:
            state.in_flight += 1
        try:
            return gated(self, digests, where, stack=stack, durable=durable, **named)
        finally:
            with state.lock:
                state.in_flight -= 1

    def gated(
        self: ContentStore, digests: Any, where: Any, *, stack: bool, durable: bool, **named: Any
    ) -> Any:
        asked = [bytes(d) for d in digests]
        if isinstance(where, TableRows):
            mode, count = "rows", len(where.rows)
        else:
            mode = "durable" if durable else "stack" if stack else "list"
            count = len(where)
        if len(asked) != count:
            state.violations.append(f"fetch got {len(asked)} digests for {count} samples")
            raise AssertionError(state.violations[-1])
        with state.lock:
            state.calls.append((mode, asked))
        for digest in asked:
            if digest in state.tombstoned:
                raise Purged(f"{MARK}: content {digest.hex()} was purged")
        token = _inside_fetch.set(True)
        try:
            out = original(self, digests, where, stack=stack, durable=durable, **named)
        finally:
            _inside_fetch.reset(token)
        # The digests handed to fetch are those of what it returns: a check on
        # them refuses exactly the bytes it means to.
        got = _payload_digests(out)
        if len(got) != len(asked) or any(d not in g for d, g in zip(asked, got, strict=True)):
            state.violations.append(f"fetch ({mode}) returned content other than its digests")
            raise AssertionError(state.violations[-1])
        return out

    monkeypatch.setattr(ContentStore, "fetch", fetch)

    def guard(where: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if not _inside_fetch.get():
                state.violations.append(f"{where} was called outside ContentStore.fetch")
                raise AssertionError(state.violations[-1])
            return method(*args, **kwargs)

        guarded.gated = True  # type: ignore[attr-defined]
        return guarded

    classes = _all_subclasses(Backend)
    names = {cls.__name__ for cls in classes}
    assert {"MemmapBackend", "HDF5Backend", "LMDBBackend", "MemoryBackend"} <= names
    for cls in classes:
        for name in GUARDED:
            if name in vars(cls):
                monkeypatch.setattr(cls, name, guard(f"{cls.__name__}.{name}", vars(cls)[name]))
    for cls in classes:  # every read method any backend has is guarded
        for name in REQUIRED:
            assert getattr(getattr(cls, name), "gated", False), f"{cls.__name__}.{name}"

    def spy(name: str, counter: str) -> None:
        method = getattr(ColumnTable, name)

        @functools.wraps(method)
        def spied(*args: Any, **kwargs: Any) -> Any:
            setattr(state, counter, getattr(state, counter) + 1)
            return method(*args, **kwargs)

        monkeypatch.setattr(ColumnTable, name, spied)

    spy("read", "table_reads")
    spy("read_one", "table_read_ones")
    yield state
    state.settle(quiet=0)
    assert not state.violations, state.violations


def digest_at(built: Built, kind: str, key: int) -> str:
    """Hex digest of ``key`` in column ``kind`` of the first commit."""
    with built.repo.checkout(commit=built.first) as co:
        return co[kind].digest(key)


# -- column reads of read checkouts -----------------------------------------------

COLUMN_OPS = ("getitem", "get", "getitem_table", "get_many", "get_many_table", "values", "items")


def _read_keys(col: tc.Column, op: str, keys: list[int]) -> list[Any]:
    if op in ("get_many", "get_many_table"):
        return list(col.get_many(keys))
    if op == "get":
        return [col.get(k, "default") for k in keys]
    return [col[k] for k in keys]


@pytest.mark.parametrize("op", COLUMN_OPS)
@pytest.mark.parametrize("kind", KINDS)
def test_column_reads_pass_the_gate(built: Built, gate: Gate, kind: str, op: str) -> None:
    # Columns read from a table as soon as one is at hand (commits derive them): start
    # without any, so that each op takes the path it names.
    shutil.rmtree(built.path / "cache", ignore_errors=True)
    built.repo._parts.tables.forget()
    co = built.repo.checkout()
    try:
        col = co[kind]
        everything = list(range(N))
        if op in ("getitem_table", "get_many_table"):
            # one batch of every key resolves the column's table (memmap: read from it)
            check_all = col.get_many(everything)
            for k in (0, TARGET, N - 1):
                check(kind, k, check_all[k], version=2 if k == OLD else 1)
            assert gate.table_reads == (1 if kind == "fixed" else 0)
            assert "rows" in gate.modes() if kind == "fixed" else "rows" not in gate.modes()
            gate.reset()
        before = _read_keys(col, op, [TARGET])  # reads before the purge
        check(kind, TARGET, before[0])
        digest = gate.purge(col.digest(TARGET))
        if op in ("values", "items"):
            seen: list[int] = []
            with pytest.raises(Purged, match=digest.hex()):
                pairs = col.items() if op == "items" else zip(col.keys(), col.values(), strict=True)
                for k, v in pairs:
                    check(kind, k, v, version=2 if k == OLD else 1)
                    seen.append(k)
            assert seen == list(range(TARGET))  # every sample before it read
            assert gate.table_reads == gate.table_read_ones == 0
            return
        batch = [TARGET - 1, TARGET, TARGET + 1] if op != "get_many_table" else everything
        for keys in ([TARGET], batch):
            with pytest.raises(Purged, match=digest.hex()):
                _read_keys(col, op, keys)  # read again after the purge: refused
        others = [k for k in batch if k != TARGET]
        got = _read_keys(col, op, others)
        for k, v in zip(others, got, strict=True):
            check(kind, k, v, version=2 if k == OLD else 1)
        assert digest in gate.asked()
        assert {bytes.fromhex(col.digest(k)) for k in others} <= gate.asked()
        # which path each op took
        if op == "get_many_table" and kind == "fixed":
            assert gate.table_reads == 4 and gate.modes() == {"rows"}
        elif op == "getitem_table":
            assert gate.table_read_ones >= 3 and gate.table_reads == 0
        else:
            assert gate.table_reads == gate.table_read_ones == 0
            if op == "get_many" and kind in ("fixed", "lmdb"):
                assert gate.modes() == {"stack"}
            elif op != "get_many_table":
                assert gate.modes() == {"list"}
    finally:
        co.close()


@pytest.mark.parametrize("kind", KINDS)
def test_pinned_commit_reads_pass_the_gate(built: Built, gate: Gate, kind: str) -> None:
    """An old commit's content is refused by digest; the head's new content still reads."""
    old_co = built.repo.checkout(commit=built.first)
    head_co = built.repo.checkout()
    branch_co = built.repo.checkout(branch="main")
    try:
        old, head = old_co[kind], head_co[kind]
        check(kind, OLD, old[OLD])
        digest = gate.purge(old.digest(OLD))
        assert head.digest(OLD) != digest.hex()
        for read in (lambda: old[OLD], lambda: old.get(OLD), lambda: old.get_many([OLD + 1, OLD])):
            with pytest.raises(Purged, match=digest.hex()):
                read()
        check(kind, OLD, head[OLD], version=2)
        check(kind, OLD, branch_co[kind].get_many([OLD])[0], version=2)
        check(kind, OLD + 1, old[OLD + 1])
        check(kind, OLD + 1, old.get_many([OLD + 1])[0])
    finally:
        for co in (old_co, head_co, branch_co):
            co.close()


# -- column reads of a write checkout ---------------------------------------------

W = 64  # keys of the write-checkout repository
NEW = 1000  # a key only the staging area holds
CHANGED = 3  # a base key the staging area overwrites
BASE = 10  # a base key left alone


@pytest.fixture(scope="module")
def write_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tc.Repository]:
    repo = tc.init(
        tmp_path_factory.mktemp("write") / "repo", user_name="Ada", user_email="ada@example.org"
    )
    with repo.checkout(write=True) as co:
        add_columns(co)
        write(co, list(range(W)))
        co.commit("base")
    try:
        yield repo
    finally:
        repo.close()


@pytest.fixture
def staged(write_repo: tc.Repository) -> Iterator[tc.WriteCheckout]:
    """A write checkout with NEW staged and CHANGED overwritten (dropped at teardown)."""
    co = write_repo.checkout(write=True)
    try:
        write(co, [NEW])
        write(co, [CHANGED], version=2)
        yield co
    finally:
        co.reset_staging_area()
        co.close()


@pytest.mark.parametrize("op", ["getitem", "get", "get_many", "items"])
@pytest.mark.parametrize("which", ["new", "changed", "base"])
@pytest.mark.parametrize("kind", KINDS)
def test_write_checkout_reads_pass_the_gate(
    staged: tc.WriteCheckout, gate: Gate, kind: str, which: str, op: str
) -> None:
    key = {"new": NEW, "changed": CHANGED, "base": BASE}[which]
    version = 2 if which == "changed" else 1
    col = staged[kind]
    if op == "items":
        expected = {k: (2 if k == CHANGED else 1) for k in [*range(W), NEW]}
        got = dict(col.items())
        assert list(got) == sorted(expected)
        for k, v in got.items():
            check(kind, k, v, version=expected[k])
        digest = gate.purge(col.digest(key))
        seen: list[int] = []
        with pytest.raises(Purged, match=digest.hex()):
            for k, v in col.items():
                check(kind, k, v, version=expected[k])
                seen.append(k)
        assert seen == [k for k in sorted(expected) if k < key]
        return
    check(kind, key, _read_keys(col, op, [key])[0], version=version)
    digest = gate.purge(col.digest(key))
    with pytest.raises(Purged, match=digest.hex()):
        _read_keys(col, op, [key])
    with pytest.raises(Purged, match=digest.hex()):
        col.get_many([BASE + 1, key, NEW if key != NEW else CHANGED])
    check(kind, BASE + 1, col[BASE + 1])
    others = [k for k in (NEW, CHANGED, BASE, 0) if k != key]
    for k, v in zip(others, _read_keys(col, op, others), strict=True):
        check(kind, k, v, version=2 if k == CHANGED else 1)
    assert gate.table_reads == gate.table_read_ones == 0  # a writer never uses tables


# -- loaders -----------------------------------------------------------------------


def _torch_check(sample: tuple[Any, ...], k: int) -> None:
    for kind, got in zip(KINDS, sample, strict=True):
        check(kind, k, got.numpy() if hasattr(got, "numpy") else got)


@pytest.mark.parametrize("kind", KINDS)
def test_torch_map_style_dataset_passes_the_gate(built: Built, gate: Gate, kind: str) -> None:
    loaders = pytest.importorskip("tensorcask.loaders.torch")
    ds = loaders.repo_dataset(built.path, list(KINDS), commit=built.first)
    assert len(ds) == N
    _torch_check(ds[TARGET], TARGET)
    digest = gate.purge(digest_at(built, kind, TARGET))
    with pytest.raises(Purged, match=digest.hex()):
        ds[TARGET]
    with pytest.raises(Purged, match=digest.hex()):
        ds.__getitems__([0, TARGET, N - 1])
    for i in (0, TARGET - 1, TARGET + 1, N - 1):
        _torch_check(ds[i], i)
    for i, sample in zip([0, OLD, N - 1], ds.__getitems__([0, OLD, N - 1]), strict=True):
        _torch_check(sample, i)
    assert gate.table_reads > 0 and digest in gate.asked()


FIRST_KEYS = list(range(600))  # the iterable datasets' keys: TARGET is past the first read


@pytest.mark.parametrize("kind", KINDS)
def test_torch_iterable_dataset_passes_the_gate(built: Built, gate: Gate, kind: str) -> None:
    loaders = pytest.importorskip("tensorcask.loaders.torch")
    it = loaders.repo_iterable_dataset(built.path, list(KINDS), built.first, keys=FIRST_KEYS)
    gate.purge(digest_at(built, kind, 900))
    seen = []
    for sample in it:  # a tombstone outside the selection changes nothing
        seen.append(int(sample[0][0]))
    assert seen == FIRST_KEYS
    gate.tombstoned.clear()
    digest = gate.purge(digest_at(built, kind, 300))
    seen = []
    with pytest.raises(Purged, match=digest.hex()):
        for sample in it:
            k = int(sample[0][0])
            _torch_check(sample, k)
            seen.append(k)
    assert seen == FIRST_KEYS[: len(seen)] and 0 < len(seen) <= 300


DL_KEYS = list(range(1200))
DL_PURGED = 1100  # batch 110 of 10: a worker's third read of 256, past its first batches


def _collate_in_worker(gate: Gate) -> Callable[[list[Any]], tuple[int, list[int], int]]:
    def collate(samples: list[tuple[Any, ...]]) -> tuple[int, list[int], int]:
        """Check the samples in the worker; send back only its pid, their keys and
        how many reads its (forked) gate has seen."""
        found = [int(sample[0][0]) for sample in samples]
        for sample, k in zip(samples, found, strict=True):
            _torch_check(sample, k)
        return os.getpid(), found, len(gate.calls)

    return collate


@pytest.mark.parametrize("style", ["map", "iterable"])
@pytest.mark.parametrize("kind", KINDS)
def test_torch_dataloader_fork_workers_pass_the_gate(
    built: Built, gate: Gate, kind: str, style: str
) -> None:
    torch_data = pytest.importorskip("torch.utils.data")
    loaders = pytest.importorskip("tensorcask.loaders.torch")
    if style == "map":
        ds = loaders.repo_dataset(built.path, list(KINDS), built.first, keys=DL_KEYS)
    else:
        ds = loaders.repo_iterable_dataset(
            built.path, list(KINDS), built.first, keys=DL_KEYS, batch_size=10
        )
    digest = gate.purge(digest_at(built, kind, DL_PURGED))
    loader = torch_data.DataLoader(
        ds,
        batch_size=10,
        num_workers=2,
        multiprocessing_context="fork",
        collate_fn=_collate_in_worker(gate),
    )
    seen: list[int] = []
    workers: set[int] = set()
    errors: list[BaseException] = []
    batches = iter(loader)
    while True:  # drain the loader: its workers then shut down at once
        try:
            pid, batch_keys, reads = next(batches)
        except StopIteration:
            break
        except Purged as exc:  # raised in a worker, re-raised here
            errors.append(exc)
            continue
        assert pid != os.getpid() and reads > 0  # the gate survived the fork
        workers.add(pid)
        seen.extend(batch_keys)
    del batches
    assert len(errors) == 1 and len(workers) == 2
    assert digest.hex() in str(errors[0]) and MARK in str(errors[0])
    assert DL_PURGED not in seen and len(seen) == len(set(seen))
    if style == "map":  # only the batch holding the purged sample fails
        lost = set(range(DL_PURGED - DL_PURGED % 10, DL_PURGED - DL_PURGED % 10 + 10))
        assert seen == [k for k in DL_KEYS if k not in lost]
    else:  # its worker stops; the other worker's batches all arrive
        other = [k for k in DL_KEYS if (k // 10) % 2 != (DL_PURGED // 10) % 2]
        assert set(other) <= set(seen) and seen[:256] == DL_KEYS[:256]
    assert gate.calls == []  # every read happened in the workers, through their gate


@pytest.mark.parametrize("kind", KINDS)
def test_tf_dataset_passes_the_gate(built: Built, gate: Gate, kind: str) -> None:
    tf = pytest.importorskip("tensorflow")
    loaders = pytest.importorskip("tensorcask.loaders.tensorflow")
    ds = loaders.repo_dataset(built.path, list(KINDS), built.first, keys=FIRST_KEYS, batch_read=64)
    digest = gate.purge(digest_at(built, kind, 300))
    seen: list[int] = []
    samples = iter(ds)
    try:
        with pytest.raises(tf.errors.OpError) as info:
            for sample in samples:
                k = int(sample[0].numpy()[0])
                for column, got in zip(KINDS, sample, strict=True):
                    got = got.numpy()
                    check(column, k, got.decode("utf-8") if column == "str" else got)
                seen.append(k)
    finally:
        del samples
        gate.settle()  # parallel reads of the abandoned iterator finish first
    assert not isinstance(info.value, tf.errors.OutOfRangeError)
    assert "Purged" in str(info.value) and digest.hex() in str(info.value)
    assert seen == FIRST_KEYS[: len(seen)] and 256 <= len(seen) <= 300
    assert digest in gate.asked()


# -- verify ---------------------------------------------------------------------------


def test_verify_reports_each_refused_sample(built: Built, gate: Gate) -> None:
    head = built.repo.checkout()
    old = built.repo.checkout(commit=built.first)
    try:
        expected = {bytes.fromhex(old[kind].digest(k)) for kind in KINDS for k in range(N)}
        expected |= {bytes.fromhex(head[kind].digest(OLD)) for kind in KINDS}
        refused = {(kind, TARGET): gate.purge(head[kind].digest(TARGET)) for kind in KINDS}
        refused["gzip", OLD] = gate.purge(old["gzip"].digest(OLD))  # only the first commit's
    finally:
        head.close()
        old.close()
    report = built.repo.verify(full=True, raise_on_error=False)
    assert not report.ok
    assert len(report.problems) == len(refused), report.problems
    for (kind, key), digest in refused.items():
        (problem,) = [p for p in report.problems if f"column {kind!r}, key {key!r}:" in p]
        assert MARK in problem and digest.hex() in problem
    # Every sample was re-read through the gate: equal-shape memmap rows in batches
    # (their reads always see the file as it is now), the others durably, one by one.
    assert gate.modes() == {"durable", "rows"}
    assert gate.asked() == expected
    gate.tombstoned.clear()
    assert built.repo.verify(full=True, raise_on_error=False).ok


# -- HDF5 damage under a process that has the file open --------------------------------


def _flip(path: Path, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_verify_sees_hdf5_damage_done_after_this_process_read_it(
    tmp_path: Path, gate: Gate, compression: str | None
) -> None:
    path = tmp_path / "repo"
    repo = tc.init(path, user_name="Ada", user_email="ada@example.org")
    rng = np.random.default_rng(7)
    samples = {k: rng.standard_normal(64 + k) for k in range(8)}
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("vol", shape=(None,), dtype="float64", compression=compression)
        col.update(samples)
        co.commit("vol")
    files = sorted((path / "data" / "hdf5").glob("*.h5"))
    assert len(files) == 1
    h5 = files[0]
    wanted = samples[5].tobytes()
    if compression is None:
        data = h5.read_bytes()
        assert data.count(wanted) == 1
        at = data.find(wanted) + len(wanted) // 2
    else:
        assert wanted not in h5.read_bytes()  # the bytes are compressed
        with h5py.File(h5, "r") as f:
            dataset = f["data"]
            assert dataset.compression == "gzip"
            chunks = [dataset.id.get_chunk_info(i) for i in range(dataset.id.get_num_chunks())]
        assert chunks and all(c.size > 64 for c in chunks)
        at = chunks[0].byte_offset + chunks[0].size // 2
    try:
        with repo.checkout() as co:  # the process opens the file and caches its chunks
            for k, v in samples.items():
                np.testing.assert_array_equal(co["vol"][k], v)
            np.testing.assert_array_equal(co["vol"].get_many([5, 6])[0], samples[5])
        assert repo.verify(full=True, raise_on_error=False).ok
        _flip(h5, at)
        report = repo.verify(full=True, raise_on_error=False)
        assert not report.ok
        assert any("column 'vol', key 5:" in p for p in report.problems), report.problems
        if compression is None:  # only the damaged sample
            assert len(report.problems) == 1, report.problems
        assert gate.modes() == {"list", "durable"}
    finally:
        repo.close()
