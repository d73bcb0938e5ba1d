"""Parallel ingest: worker processes store samples through ``Column.part_writer()``,
the writer stages them with ``Column.add_parts()`` and commits once.

Workers are real processes (fork and spawn pools, and a SIGKILLed child);
parts are checked before anything of them is staged.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import tensorcask as tc

REPO_ROOT = Path(__file__).resolve().parents[1]


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8), dtype=np.uint8)


def _segments(repo: tc.Repository) -> set[str]:
    return {p.name for p in (repo.path / "data" / "memmap").glob("*.seg")}


def _segment_bytes(repo: tc.Repository) -> int:
    return sum(p.stat().st_size for p in (repo.path / "data" / "memmap").glob("*.seg"))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_writes_parts_and_one_commit_publishes_them(repo: tc.Repository, method: str) -> None:
    images = _images(4000)
    chunks = [np.arange(a, a + 1000) for a in range(0, 4000, 1000)]
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("images", shape=(8, 8), dtype="uint8")
        writer = col.part_writer()
        with ProcessPoolExecutor(2, mp_context=mp.get_context(method)) as pool:
            parts = list(pool.map(writer.write, chunks, [images[c] for c in chunks]))
        assert [len(p) for p in parts] == [1000] * 4
        assert len(col) == 0  # nothing staged before add_parts
        col.add_parts(parts)
        assert len(col) == 4000
        commit = co.commit("parallel ingest")
    read = repo.checkout(commit=commit)
    assert np.array_equal(read["images"].get_many(list(range(4000))), images)
    assert repo.verify(full=True).ok


def test_part_writer_pickles_small_and_parts_carry_no_sample_bytes(repo: tc.Repository) -> None:
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("x", shape=(1024,), dtype="float64")
        writer = pickle.loads(pickle.dumps(col.part_writer()))
        part = writer.write(np.arange(10), np.ones((10, 1024)))
        assert len(pickle.dumps(part)) < 10 * 1024 * 8 // 4
        col.add_parts([pickle.loads(pickle.dumps(part))])
        co.commit("one part")
    assert np.array_equal(repo.checkout()["x"][9], np.ones(1024))


@pytest.mark.parametrize(
    ("add", "value"),
    [
        (
            lambda co: co.add_ndarray_column("c", shape=(None,), dtype="int16"),
            lambda i: np.arange(i, dtype=np.int16),
        ),
        (
            lambda co: co.add_ndarray_column("c", shape=(4,), dtype="int32", compression="zstd"),
            lambda i: np.full(4, i, np.int32),
        ),
        (lambda co: co.add_str_column("c"), lambda i: f"caption {i}"),
        (lambda co: co.add_bytes_column("c"), lambda i: bytes([i % 256]) * (i + 1)),
    ],
    ids=["variable", "compressed", "str", "bytes"],
)
def test_every_backend_takes_parts(repo: tc.Repository, add, value) -> None:  # type: ignore[no-untyped-def]
    keys = [f"k{i}" for i in range(60)]
    with repo.checkout(write=True) as co:
        col = add(co)
        writer = col.part_writer()
        with ProcessPoolExecutor(2, mp_context=mp.get_context("fork")) as pool:
            parts = list(
                pool.map(
                    writer.write,
                    [keys[:30], keys[30:]],
                    [[value(i) for i in range(30)], [value(i) for i in range(30, 60)]],
                )
            )
        col.add_parts(parts)
        co.commit("parts")
    col = repo.checkout()["c"]
    for i, key in enumerate(keys):
        got, want = col[key], value(i)
        assert np.array_equal(got, want) if isinstance(want, np.ndarray) else got == want
    assert repo.verify(full=True).ok


def test_contents_are_stored_once_and_later_parts_win(repo: tc.Repository) -> None:
    images = _images(100)
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("images", shape=(8, 8), dtype="uint8")
        col.update(np.arange(50), images[:50])
        writer = col.part_writer()
        known = writer.write(np.arange(50), images[:50])
        assert known.stored == 0  # the repository holds them already
        first = writer.write(np.arange(50, 100), images[50:])
        again = writer.write(np.arange(50, 100), images[50:])  # e.g. a retried task
        assert first.stored == again.stored == 50
        relabel = writer.write([0], images[99:100])
        col.add_parts([known, first, again, relabel])
        co.commit("dedup")
    # Published once: the rows of the retried task and of the relabel are garbage in
    # a segment that also holds live rows; the one sample gc drops is key 0's old
    # content, replaced by the relabel.
    assert repo.gc().samples == 1
    read = repo.checkout()["images"]
    assert np.array_equal(read[0], images[99])
    assert np.array_equal(read.get_many(list(range(1, 100))), images[1:])
    assert repo.verify(full=True).ok


def test_bad_parts_are_refused_and_nothing_is_staged(tmp_path: Path, repo: tc.Repository) -> None:
    other = tc.init(tmp_path / "other", user_name="a", user_email="a@example.org")
    with other.checkout(write=True) as co:
        foreign = co.add_ndarray_column("images", shape=(8, 8), dtype="uint8").part_writer()
        foreign_part = foreign.write([0], _images(1))
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("images", shape=(8, 8), dtype="uint8")
        labels = co.add_ndarray_column("labels", shape=(), dtype="int64")
        good = col.part_writer().write(np.arange(5), _images(5))
        label_part = labels.part_writer().write([0], np.zeros(1, np.int64))
        with pytest.raises(tc.CaskError, match="another repository"):
            col.add_parts([good, foreign_part])
        with pytest.raises(tc.SchemaError, match="'labels' cannot be added to column 'images'"):
            col.add_parts([good, label_part])
        with pytest.raises(TypeError, match="SamplesPart"):
            col.add_parts([good, {"keys": [1]}])  # type: ignore[list-item]
        assert len(col) == 0 and len(labels) == 0
        # A schema changed since the writer was made (column deleted and re-created).
        co.delete_column("images")
        col = co.add_ndarray_column("images", shape=(8, 8), dtype="int16")
        with pytest.raises(tc.SchemaError, match="written for schema"):
            col.add_parts([good])
        with pytest.raises(ValueError, match="must have shape"):
            col.part_writer().write([0, 1], np.zeros((3, 8, 8), np.int16))


def test_a_part_whose_file_is_gone_is_refused(repo: tc.Repository) -> None:
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("images", shape=(8, 8), dtype="uint8")
        part = col.part_writer().write(np.arange(10), _images(10))
        for name in _segments(repo):
            os.truncate(repo.path / "data" / "memmap" / name, 64 * 3)
        with pytest.raises(tc.CaskError, match=r"bytes missing from .*seg; write the part again"):
            col.add_parts([part])
        assert len(col) == 0


def test_purged_content_is_refused_by_workers_unless_allowed(repo: tc.Repository) -> None:
    images = _images(3)
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("images", shape=(8, 8), dtype="uint8").update([0], images[:1])
        co.commit("one")
    repo.purge_content([repo.checkout()["images"].digest(0)], reason="takedown")
    with repo.checkout(write=True) as co:
        col = co["images"]
        with pytest.raises(tc.PurgedDataError, match="takedown"):
            col.part_writer().write([5], images[:1])
        part = col.part_writer(allow_purged=True).write([5], images[:1])
        col.add_parts([part])
        co.commit("stored again")
    assert np.array_equal(repo.checkout()["images"][5], images[0])


def test_a_killed_worker_leaves_only_garbage_that_gc_removes(repo: tc.Repository) -> None:
    """A worker SIGKILLed while it writes: the writer publishes the other parts, and
    gc removes the segment files the dead worker left behind."""
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("images", shape=(8, 8), dtype="uint8")
        writer = col.part_writer()
        script = textwrap.dedent(
            f"""
            import pickle, sys
            import numpy as np
            writer = pickle.loads({pickle.dumps(writer)!r})
            rng = np.random.default_rng(1)
            print("ready", flush=True)
            for start in range(0, 10**9, 1000):
                writer.write(np.arange(start, start + 1000),
                             rng.integers(0, 256, (1000, 8, 8), dtype=np.uint8))
            """
        )
        child = subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
        assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 60
        while _segment_bytes(repo) < 3 * 1000 * 64:  # it has written three parts
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.001)
        child.send_signal(signal.SIGKILL)
        child.wait()
        leftovers = _segments(repo)
        part = writer.write(np.arange(100), _images(100, seed=5))
        col.add_parts([part])
        co.commit("survivor")
    report = repo.gc()
    assert not (_segments(repo) & leftovers)
    assert report.samples == 0  # the dead worker published nothing
    assert repo.verify(full=True).ok
    assert np.array_equal(repo.checkout()["images"].get_many(list(range(100))), _images(100, 5))


def test_parts_survive_closing_the_checkout_and_are_added_by_the_next(
    repo: tc.Repository,
) -> None:
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("images", shape=(8, 8), dtype="uint8").update([0], _images(1))
        co.commit("schema")
        writer = co["images"].part_writer()
    part = writer.write(np.arange(1, 11), _images(10, seed=3))  # no writer is open now
    with repo.checkout(write=True) as co:
        co["images"].add_parts([part])
        co.commit("later")
    assert len(repo.checkout()["images"]) == 11
