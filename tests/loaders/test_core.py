"""The loader core: sample selection, batch reads, pinning, pickling, processes, damage."""

from __future__ import annotations

import multiprocessing
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import tensorcask as tc
from tensorcask.loaders.core import RepoSource


@pytest.fixture
def repo(tmp_path: Path) -> tc.Repository:
    repo = tc.init(tmp_path / "r", user_name="Ada", user_email="ada@example.org")
    with repo.checkout(write=True) as co:
        images = co.add_ndarray_column("images", shape=(3, 3), dtype="uint8")
        images.update(np.arange(10), np.arange(90, dtype=np.uint8).reshape(10, 3, 3))
        labels = co.add_ndarray_column("labels", shape=(), dtype="int64")
        labels.update(np.arange(2, 12), np.arange(2, 12) * 10)  # keys 2..11
        text = co.add_str_column("text")
        text.update({i: f"t{i}" for i in range(0, 12, 2)})  # even keys
        co.commit("first")
    return repo


def _cid(repo: tc.Repository) -> str:
    return repo.branches["main"]


def test_samples_are_the_keys_of_every_column_in_order(repo: tc.Repository) -> None:
    source = RepoSource(repo, ["images", "labels"])
    assert len(source) == 8  # keys 2..9
    assert [source.index.key(i) for i in range(len(source))] == list(range(2, 10))
    images, labels = source.read([0, 7, 0])
    assert isinstance(images, np.ndarray) and images.shape == (3, 3, 3)
    assert np.array_equal(images[1], np.arange(81, 90, dtype=np.uint8).reshape(3, 3))
    assert labels.tolist() == [20, 90, 20]
    with_text = RepoSource(repo, ["text", "labels"])
    assert [with_text.index.key(i) for i in range(len(with_text))] == [2, 4, 6, 8, 10]
    text, labels = with_text.read([4, 0])
    assert text == ["t10", "t2"] and labels.tolist() == [100, 20]


def test_keys_restrict_and_order_samples(repo: tc.Repository) -> None:
    source = RepoSource(repo, ["labels"], keys=[9, 2, 5])
    assert source.read([0, 1, 2])[0].tolist() == [90, 20, 50]
    with pytest.raises(KeyError, match="'images'"):
        RepoSource(repo, ["labels", "images"], keys=[11])


def test_construction_errors_name_the_problem(repo: tc.Repository) -> None:
    with pytest.raises(KeyError, match="nope"):
        RepoSource(repo, ["images", "nope"])
    with pytest.raises(tc.RefNotFoundError):
        RepoSource(repo, ["images"], commit="does-not-exist")
    with pytest.raises(TypeError):
        RepoSource(repo, "images")  # type: ignore[arg-type]


def test_a_source_stays_pinned_to_its_commit(repo: tc.Repository) -> None:
    source = RepoSource(repo.path, ["labels"], commit="main")
    first = _cid(repo)
    with repo.checkout(write=True) as co:
        co["labels"][2] = np.int64(-1)
        co.commit("second")
    assert source.commit == first
    assert source.read([0])[0].tolist() == [20]
    assert RepoSource(repo.path, ["labels"]).read([0])[0].tolist() == [-1]


def test_pickles_as_arguments_and_reopens_lazily(repo: tc.Repository) -> None:
    source = RepoSource(repo, ["images", "labels"])
    blob = pickle.dumps(source)
    assert len(blob) < 1000  # path, commit, columns: no handles, no arrays
    clone = pickle.loads(blob)
    assert clone.commit == source.commit
    assert np.array_equal(clone.read([3])[0], source.read([3])[0])


def _child_read(source: RepoSource, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put((os.getpid(), source.read([1, 2])[1].tolist()))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_reads_in_child_processes(repo: tc.Repository, method: str) -> None:
    source = RepoSource(repo, ["images", "labels"])
    source.read([0])  # opened in the parent first
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    child = ctx.Process(target=_child_read, args=(source, queue))
    child.start()
    pid, labels = queue.get(timeout=60)
    child.join(60)
    assert child.exitcode == 0 and pid != os.getpid()
    assert labels == [30, 40]


def test_a_damaged_sample_raises_naming_column_and_key(repo: tc.Repository) -> None:
    source = RepoSource(repo, ["images"])
    table = source.index.tables[0]
    loc = table.location(6)
    path = Path(repo._parts.store.path_of(loc))
    with open(path, "r+b") as f:
        f.seek(loc.offset * 9)
        byte = f.read(1)
        f.seek(loc.offset * 9)
        f.write(bytes([byte[0] ^ 1]))
    fresh = RepoSource(repo.path, ["images"])
    assert fresh.read([5])[0].shape == (1, 3, 3)
    with pytest.raises(tc.CorruptionError) as err:
        fresh.read([5, 6])
    assert err.value.column == "images" and err.value.key == 6
    assert "images" in str(err.value) and "6" in str(err.value)


def test_out_of_range_indices_raise_index_error(repo: tc.Repository) -> None:
    source = RepoSource(repo, ["images", "labels"])
    with pytest.raises(IndexError, match="8"):
        source.read([0, 8])
    with pytest.raises(IndexError, match="-1"):
        source.read([-1])
    assert source.read([])[1].tolist() == []
