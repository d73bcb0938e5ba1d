"""Loaders over purged samples (SPEC §3, §6).

Without ``skip_purged`` a purged sample raises :class:`tensorcask.PurgedDataError`
naming its column and key: in the main process, through DataLoader workers
(fork and spawn) and through tf.data. With ``skip_purged=True`` the purged
samples are left out, decided once when the dataset is made, so the dataset
is the one ``keys=`` the unpurged keys gives: same samples, same order, on
every worker and rank. A dataset built before a purge raises
``PurgedDataError`` (never ``CorruptionError``) for what was purged since.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader  # noqa: E402

import tensorcask as tc  # noqa: E402
from tensorcask.loaders.torch import repo_dataset, repo_iterable_dataset  # noqa: E402

N = 24
LABEL0 = 1000  # label of key k is LABEL0 + k
COLUMNS = ["images", "labels", "names"]
IMAGE_KEY = 5  # purged by key from "images"
NAME_KEY = 13  # its "names" content is purged (purge_content)
PURGED = {("images", IMAGE_KEY), ("names", NAME_KEY)}
UNPURGED = [k for k in range(N) if k not in (IMAGE_KEY, NAME_KEY)]


def _image(key: int) -> np.ndarray:
    return ((np.arange(16) * 3 + 11 * key + 1) % 256).astype(np.uint8).reshape(4, 4)


def _name(key: int) -> str:
    return f"name-{key}-\u00e9"


def _init(path: Path) -> tc.Repository:
    return tc.init(path, user_name="Ada", user_email="ada@example.org")


def _build(path: Path, n: int = N) -> tc.Repository:
    """Three columns keyed 0..n-1 over two commits (keys >= n - 4 come in the second)."""
    repo = _init(path)
    first = list(range(n - 4))
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("images", shape=(4, 4), dtype="uint8").update(
            first, np.stack([_image(k) for k in first])
        )
        co.add_ndarray_column("labels", shape=(), dtype="int64").update(
            first, LABEL0 + np.array(first)
        )
        co.add_str_column("names").update({k: _name(k) for k in first})
        co.commit("first")
        rest = list(range(n - 4, n))
        co["images"].update(rest, np.stack([_image(k) for k in rest]))
        co["labels"].update(rest, LABEL0 + np.array(rest))
        co["names"].update({k: _name(k) for k in rest})
        co.commit("second")
    return repo


@pytest.fixture(scope="module")
def repo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared repository: images[5] purged by key, the content of names[13] purged."""
    path = tmp_path_factory.mktemp("purge-loaders") / "repo"
    repo = _build(path)
    try:
        repo.purge("images", [IMAGE_KEY], reason="request 5")
        digest = repo.checkout()["names"].digest(NAME_KEY)
        repo.purge_content([digest], reason="request 13")
    finally:
        repo.close()
    return path


def _check_sample(sample: Any) -> int:
    """Assert one sample (images, labels, names) holds what was written; return its key."""
    image, label, name = sample
    key = int(label) - LABEL0
    assert np.array_equal(np.asarray(image), _image(key))
    assert name == _name(key)
    return key


def _check_batch(batch: Any) -> list[int]:
    """Assert a collated batch (images, labels, names) holds what was written; its keys."""
    images, labels, names = batch
    keys = [int(v) - LABEL0 for v in labels.reshape(-1).tolist()]
    assert images.shape == (len(keys), 4, 4)
    for i, k in enumerate(keys):
        assert np.array_equal(images[i].numpy(), _image(k))
    assert list(names) == [_name(k) for k in keys]
    return keys


def _errors(loader: DataLoader) -> tuple[list[list[int]], list[BaseException]]:
    """Iterate ``loader`` to its end: the keys of each batch that arrived, and the errors.

    Draining lets the workers finish (an iterator dropped right after a worker
    error makes torch wait for each worker at shutdown).
    """
    batches: list[list[int]] = []
    errors: list[BaseException] = []
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return batches, errors
        except Exception as exc:
            errors.append(exc)
        else:
            batches.append(_check_batch(batch))


def _assert_names_a_purged_sample(error: BaseException) -> tuple[str, int]:
    """The error is a PurgedDataError naming a purged (column, key), in attributes and text."""
    assert isinstance(error, tc.PurgedDataError), (type(error), str(error)[-2000:])
    assert not isinstance(error, tc.CorruptionError)
    assert (error.column, error.key) in PURGED, (error.column, error.key, str(error)[-2000:])
    pattern = rf"column '{error.column}', key {error.key}\b"
    assert re.search(pattern, str(error)), str(error)[-2000:]
    return error.column, error.key


# -- without skip_purged: reads raise -------------------------------------------


def test_map_dataset_raises_in_process_naming_column_key_and_reason(repo_path: Path) -> None:
    ds = repo_dataset(repo_path, COLUMNS)
    assert len(ds) == N  # purged samples are not silently dropped
    with pytest.raises(tc.PurgedDataError) as info:
        ds[IMAGE_KEY]
    assert (info.value.column, info.value.key) == ("images", IMAGE_KEY)
    assert info.value.reason == "request 5" and "request 5" in str(info.value)
    assert info.value.digest is not None and len(info.value.digest) == 64
    with pytest.raises(tc.PurgedDataError) as info:
        ds[NAME_KEY]
    assert (info.value.column, info.value.key) == ("names", NAME_KEY)
    assert info.value.reason == "request 13"
    # a batched read holding a purged sample raises too, naming it
    with pytest.raises(tc.PurgedDataError) as info:
        ds.__getitems__([0, 1, IMAGE_KEY, 7])
    assert (info.value.column, info.value.key) == ("images", IMAGE_KEY)
    # every other sample reads, and so do the columns not purged at a purged key
    assert [_check_sample(ds[k]) for k in UNPURGED] == UNPURGED
    only = repo_dataset(repo_path, ["labels", "images"], keys=[NAME_KEY, 2])
    assert int(only[0][0]) == LABEL0 + NAME_KEY
    assert np.array_equal(only[0][1].numpy(), _image(NAME_KEY))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_map_dataloader_workers_raise_naming_column_and_key(repo_path: Path, context: str) -> None:
    ds = repo_dataset(repo_path, COLUMNS)
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context=context)
    batches, errors = _errors(loader)
    # keys 4..7 and 12..15 are the two batches that hold a purged sample
    assert sorted(_assert_names_a_purged_sample(e) for e in errors) == sorted(PURGED)
    seen = [k for b in batches for k in b]
    assert seen == [k for k in range(N) if not 4 <= k < 8 and not 12 <= k < 16]


@pytest.mark.parametrize("context", [None, "fork", "spawn"])
def test_iterable_dataset_raises_naming_column_and_key(repo_path: Path, context: str) -> None:
    it = repo_iterable_dataset(repo_path, COLUMNS, shuffle=True, seed=3, batch_size=4)
    assert len(it.source) == N
    if context is None:
        with pytest.raises(tc.PurgedDataError) as info:
            for _ in it:
                pass
        _assert_names_a_purged_sample(info.value)
    workers = 0 if context is None else 2
    loader = DataLoader(it, batch_size=4, num_workers=workers, multiprocessing_context=context)
    batches, errors = _errors(loader)
    assert 1 <= len(errors) <= (1 if workers == 0 else 2)
    named = {_assert_names_a_purged_sample(e) for e in errors}
    seen = [k for b in batches for k in b]
    assert len(seen) == len(set(seen)) and set(seen) <= set(UNPURGED)
    assert len(named) == len(errors)


# -- skip_purged=True: exactly the unpurged samples --------------------------------


def test_skip_purged_map_dataset_is_the_unpurged_keys(repo_path: Path) -> None:
    skipping = repo_dataset(repo_path, COLUMNS, skip_purged=True)
    reference = repo_dataset(repo_path, COLUMNS, keys=UNPURGED)
    assert skipping.commit == reference.commit
    assert len(skipping) == len(reference) == len(UNPURGED)
    assert [_check_sample(skipping[i]) for i in range(len(skipping))] == UNPURGED
    batch = skipping.__getitems__(list(range(len(UNPURGED))))  # one batched read
    assert [_check_sample(s) for s in batch] == UNPURGED
    # Only the columns named decide: a purge in another column leaves nothing out.
    labels_only = repo_dataset(repo_path, ["labels"], skip_purged=True)
    assert len(labels_only) == N
    images_only = repo_dataset(repo_path, ["images", "labels"], skip_purged=True)
    assert [int(images_only[i][1]) - LABEL0 for i in range(len(images_only))] == [
        k for k in range(N) if k != IMAGE_KEY
    ]
    # pickled (as workers get it): the same samples, same order
    clone = pickle.loads(pickle.dumps(skipping))
    assert [_check_sample(clone[i]) for i in range(len(clone))] == UNPURGED

    def run(ds: Any, workers: int, context: str | None) -> list[list[int]]:
        loader = DataLoader(
            ds,
            batch_size=5,
            shuffle=True,
            generator=torch.Generator().manual_seed(77),
            num_workers=workers,
            multiprocessing_context=context,
        )
        return [_check_batch(b) for b in loader]

    expected = run(reference, 0, None)
    assert sorted(k for b in expected for k in b) == UNPURGED
    assert run(skipping, 0, None) == expected
    assert run(skipping, 2, "fork") == expected


def test_skip_purged_iterable_shuffled_and_split_over_ranks(repo_path: Path) -> None:
    def make(rank: int = 0, world_size: int = 1, **kw: Any) -> Any:
        return repo_iterable_dataset(
            repo_path,
            COLUMNS,
            shuffle=True,
            seed=9,
            rank=rank,
            world_size=world_size,
            even_ranks="none",
            batch_size=3,
            **kw,
        )

    def keys_of(it: Any, workers: int = 0) -> list[int]:
        loader = DataLoader(
            it,
            batch_size=3,
            num_workers=workers,
            multiprocessing_context="fork" if workers else None,
        )
        return [k for b in loader for k in _check_batch(b)]

    whole = keys_of(make(skip_purged=True))
    assert whole == keys_of(make(keys=UNPURGED))
    assert sorted(whole) == UNPURGED and whole != UNPURGED  # shuffled, nothing purged
    assert [_check_sample(s) for s in make(skip_purged=True)] == whole
    ranks = []
    for rank in (0, 1):
        mine = keys_of(make(rank, 2, skip_purged=True))
        assert mine == keys_of(make(rank, 2, keys=UNPURGED))
        assert keys_of(make(rank, 2, skip_purged=True), workers=2) == mine
        ranks.append(mine)
    both = ranks[0] + ranks[1]
    assert sorted(both) == UNPURGED and len(set(both)) == len(both)  # each once
    assert abs(len(ranks[0]) - len(ranks[1])) <= 1


# -- a dataset made before a purge -------------------------------------------------


def test_a_dataset_made_before_a_purge_raises_purged_not_corruption(tmp_path: Path) -> None:
    path = tmp_path / "r"
    _build(path).close()
    ds = repo_dataset(path, COLUMNS)
    skipping = repo_dataset(path, COLUMNS, skip_purged=True)  # nothing purged yet
    it = repo_iterable_dataset(path, COLUMNS, batch_size=4)
    assert [_check_sample(ds[k]) for k in range(N)] == list(range(N))  # tables cached
    assert len(skipping) == N and len(list(it)) == N
    pickled = pickle.dumps(ds)  # a worker started after the purge
    repo = tc.Repository(path)
    try:
        report = repo.purge("images", [9, 21], reason="takedown")  # 21: second commit
        assert report.tombstones == 2 and report.removed == 2
        for dataset in (ds, skipping, pickle.loads(pickled)):
            for key in (9, 21):
                with pytest.raises(tc.PurgedDataError) as info:
                    dataset[key]  # index == key: skipping was made before the purge
                assert not isinstance(info.value, tc.CorruptionError)
                assert (info.value.column, info.value.key) == ("images", key)
            assert _check_sample(dataset[10]) == 10
        assert len(skipping) == N  # what to leave out was decided when it was made
        with pytest.raises(tc.PurgedDataError) as info:
            list(it)
        assert (info.value.column, info.value.key) == ("images", 9)
        loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="fork")
        batches, errors = _errors(loader)
        assert [(e.column, e.key) for e in errors] == [("images", 9), ("images", 21)]
        assert all(isinstance(e, tc.PurgedDataError) for e in errors)
        assert [k for b in batches for k in b] == [k for k in range(N) if k // 4 not in (2, 5)]
    finally:
        repo.close()


@pytest.mark.parametrize("read_before", [True, False])
def test_purged_samples_raise_purged_data_error_after_gc(tmp_path: Path, read_before: bool) -> None:
    """gc drops the index entries of purged content: reads must still say "purged".

    ``read_before``: a dataset read the head before the purge (its column tables
    are cached, locations resolved) or nothing was ever read.
    """
    path = tmp_path / "r"
    _build(path).close()
    before = repo_dataset(path, COLUMNS) if read_before else None
    if before is not None:
        assert _check_sample(before[9]) == 9
    repo = tc.Repository(path)
    try:
        repo.purge("images", [9, 21], reason="takedown")
        repo.gc()
        kept = [k for k in range(N) if k not in (9, 21)]
        first = repo.log("main")[-1].id
        fresh = repo_dataset(path, COLUMNS)
        old = repo_dataset(path, COLUMNS, commit=first)  # the first commit held key 9
        assert len(fresh) == N and len(old) == N - 4
        reads: list[tuple[str, Any]] = [
            ("a dataset made after gc", lambda: fresh[9]),
            ("a batched read of it", lambda: fresh.__getitems__([8, 9])),
            ("an iterable dataset", lambda: list(repo_iterable_dataset(path, COLUMNS))),
            ("a read checkout", lambda: repo.checkout()["images"][9]),
            ("get_many", lambda: repo.checkout()["images"].get_many([8, 9])),
            ("a dataset of the first commit", lambda: old[9]),
            (
                "a read checkout of the first commit",
                lambda: repo.checkout(commit=first)["images"][9],
            ),
        ]
        if before is not None:
            reads.insert(0, ("a dataset made before the purge", lambda: before[9]))
        wrong = []
        for name, read in reads:
            try:
                read()
            except tc.PurgedDataError as exc:
                assert (exc.column, exc.key) == ("images", 9), name
            except Exception as exc:  # CorruptionError: "is not in the content index"
                wrong.append(f"{name}: {type(exc).__name__}: {exc}")
            else:
                wrong.append(f"{name}: the purged sample was read")
        assert not wrong, "reading purged images[9] after gc:\n" + "\n".join(wrong)
        assert [_check_sample(fresh[k]) for k in kept] == kept
        after = repo_dataset(path, COLUMNS, skip_purged=True)
        assert [_check_sample(after[i]) for i in range(len(after))] == kept
        assert len(repo_dataset(path, COLUMNS, commit=first, skip_purged=True)) == N - 5
    finally:
        repo.close()


# -- content shared between two columns ---------------------------------------------


def test_purge_of_content_shared_between_two_columns(tmp_path: Path) -> None:
    repo = _init(tmp_path / "r")
    shared = np.full((4, 4), 0xA7, np.uint8)
    shared[0, :] = [0x5E, 0xC2, 0x9B, 0x13]  # a row no other sample has
    a_rows = np.stack([_image(k) for k in range(8)])
    b_rows = np.stack([_image(k + 100) for k in range(8)])
    a_rows[3] = shared
    b_rows[6] = shared
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("a", shape=(4, 4), dtype="uint8").update(np.arange(8), a_rows)
        co.add_ndarray_column("b", shape=(4, 4), dtype="uint8").update(np.arange(8), b_rows)
        co.commit("two columns share a content")
        digest = co["a"].digest(3)
        assert co["b"].digest(6) == digest
    try:
        # a key purge keeps the content that another column's sample holds
        report = repo.purge("a", [3], reason="user a")
        assert report.tombstones == 1 and report.kept == 1 and report.removed == 0
        b = repo_dataset(repo, ["b"])
        assert np.array_equal(b[6][0].numpy(), shared)
        with pytest.raises(tc.PurgedDataError) as info:
            repo_dataset(repo, ["a", "b"])[3]
        assert (info.value.column, info.value.key) == ("a", 3)
        pair = repo_dataset(repo, ["a", "b"], skip_purged=True)
        assert len(pair) == 7
        for i, k in enumerate([0, 1, 2, 4, 5, 6, 7]):
            assert np.array_equal(pair[i][0].numpy(), a_rows[k])
            assert np.array_equal(pair[i][1].numpy(), b_rows[k])
        assert np.array_equal(pair[5][1].numpy(), shared)  # b[6] is still read
        assert len(repo_dataset(repo, ["b"], skip_purged=True)) == 8

        # a content purge reaches it in both columns
        report = repo.purge_content([digest], reason="the content itself")
        assert report.tombstones == 1 and report.removed == 1
        for column, key in (("a", 3), ("b", 6)):
            ds = repo_dataset(repo, [column])
            with pytest.raises(tc.PurgedDataError) as info:
                ds[key]
            assert (info.value.column, info.value.key) == (column, key)
            loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="fork")
            errors = []
            iterator = iter(loader)
            while True:
                try:
                    next(iterator)
                except StopIteration:
                    break
                except Exception as exc:
                    errors.append(exc)
            assert len(errors) == 1 and isinstance(errors[0], tc.PurgedDataError)
            assert (errors[0].column, errors[0].key) == (column, key)
            assert re.search(rf"column '{column}', key {key}\b", str(errors[0]))
        b_skip = repo_dataset(repo, ["b"], skip_purged=True)
        got = [b_skip[i][0].numpy() for i in range(len(b_skip))]
        assert len(got) == 7
        assert all(
            np.array_equal(g, b_rows[k]) for g, k in zip(got, [0, 1, 2, 3, 4, 5, 7], strict=True)
        )
        pair = repo_dataset(repo, ["a", "b"], skip_purged=True)
        assert len(pair) == 6  # a[3] and b[6]
        files = [p for p in (repo.path / "data").rglob("*") if p.is_file()]
        assert not any(shared.tobytes() in p.read_bytes() for p in files)
    finally:
        repo.close()


def test_a_key_purge_holds_after_its_content_is_stored_again(tmp_path: Path) -> None:
    """purge_content, then purge of a key holding that content, then the content stored
    again with allow_purged=True (which lifts the content tombstone): the key purge
    still stands, in tombstones() and in the loaders."""
    repo = _init(tmp_path / "r")
    with repo.checkout(write=True) as co:
        co.add_str_column("t").update({k: f"user {k}" for k in range(6)})
        co.add_ndarray_column("labels", shape=(), dtype="int64").update(
            list(range(6)), LABEL0 + np.arange(6)
        )
        first = co.commit("first")
    try:
        digest = repo.checkout()["t"].digest(1)
        repo.purge_content([digest], reason="dmca")
        repo.purge("t", [1], reason="gdpr user 1")
        with repo.checkout(write=True) as co:
            co["t"].update({9: "user 1"}, allow_purged=True)  # someone else's "user 1"
            co["labels"][9] = np.int64(LABEL0 + 9)
            co.commit("second")
        assert repo.checkout()["t"][9] == "user 1"
        for commit in (first, None):
            ds = repo_dataset(repo, ["labels", "t"], commit=commit)
            with pytest.raises(tc.PurgedDataError, match=r"column 't', key 1\b"):
                ds[1]
            skipping = repo_dataset(repo, ["labels", "t"], commit=commit, skip_purged=True)
            assert 1 not in [int(skipping[i][0]) - LABEL0 for i in range(len(skipping))]
    finally:
        repo.close()


# -- tf.data ------------------------------------------------------------------------


def test_tf_dataset_raises_naming_column_and_key_and_skips(repo_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    from tensorcask.loaders.tensorflow import repo_dataset as tf_dataset

    for batch_read in (1, 8):
        ds = tf_dataset(repo_path, ["labels", "images", "names"], batch_read=batch_read)
        with pytest.raises(tf.errors.OpError) as info:
            for _ in ds:
                pass
        assert not isinstance(info.value, tf.errors.OutOfRangeError)
        message = str(info.value)
        assert "PurgedDataError" in message and "CorruptionError" not in message
        assert re.search(rf"column 'images', key {IMAGE_KEY}\b", message), message
    only_names = tf_dataset(repo_path, ["names"], keys=[NAME_KEY + 1, NAME_KEY])
    with pytest.raises(tf.errors.OpError, match=rf"column 'names', key {NAME_KEY}\b"):
        list(only_names)

    def labels(ds: Any) -> list[int]:
        return [int(s[0].numpy()) - LABEL0 for s in ds]

    skipping = tf_dataset(repo_path, ["labels", "images", "names"], skip_purged=True)
    samples = list(skipping)
    assert labels(samples) == UNPURGED
    for label, image, name in samples:
        k = int(label.numpy()) - LABEL0
        assert np.array_equal(image.numpy(), _image(k)) and name.numpy() == _name(k).encode()
    for kw in ({"shuffle": True, "seed": 4}, {"shard": (1, 3)}):
        got = labels(tf_dataset(repo_path, ["labels", "names", "images"], skip_purged=True, **kw))
        want = labels(tf_dataset(repo_path, ["labels", "names", "images"], keys=UNPURGED, **kw))
        assert got == want and set(got) <= set(UNPURGED) and got != UNPURGED
    # only the columns named decide what is left out
    names_only = labels(tf_dataset(repo_path, ["labels", "names"], skip_purged=True))
    assert names_only == [k for k in range(N) if k != NAME_KEY]
