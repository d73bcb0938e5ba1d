"""The PyTorch adapter: map-style and iterable datasets with real DataLoaders,
worker processes (fork and spawn), a real two-rank gloo group, resuming, damage."""

from __future__ import annotations

import json
import pickle
import re
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402

import tensorcask as tc  # noqa: E402
from tensorcask.loaders.core import RepoSource  # noqa: E402
from tensorcask.loaders.plan import epoch_order  # noqa: E402
from tensorcask.loaders.torch import (  # noqa: E402
    RepoDataset,
    RepoIterableDataset,
    repo_dataset,
    repo_iterable_dataset,
)

N = 50  # samples in the shared repository: even, but not a multiple of 3 or 4
LABEL0 = 1000  # label of key k is LABEL0 + k
COLUMNS = ["images", "labels", "names", "blobs"]


def _image(key: int) -> np.ndarray:
    return ((np.arange(16) + 7 * key) % 256).astype(np.uint8).reshape(4, 4)


def _build(path: Path, n: int) -> tc.Repository:
    """A repository with ``n`` samples keyed 0..n-1 in four columns."""
    repo = tc.init(path, user_name="Ada", user_email="ada@example.org")
    co = repo.checkout(write=True)
    keys = np.arange(n)
    co.add_ndarray_column("images", shape=(4, 4), dtype="uint8").update(
        keys, np.stack([_image(k) for k in range(n)])
    )
    co.add_ndarray_column("labels", shape=(), dtype="int64").update(keys, LABEL0 + keys)
    co.add_str_column("names").update({k: f"s{k}" for k in range(n)})
    co.add_bytes_column("blobs").update({k: bytes([k % 256]) * 3 for k in range(n)})
    co.commit("m")
    co.close()
    return repo


@pytest.fixture(scope="module")
def repo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("torch") / "repo"
    _build(path, N).close()
    return path


def _keys(labels: Any) -> list[int]:
    """Keys from a batch (or sample) of labels."""
    return [int(v) - LABEL0 for v in torch.as_tensor(labels).reshape(-1).tolist()]


def _check_batch(batch: Any) -> list[int]:
    """Assert a collated 4-column batch holds what was written; return its keys."""
    images, labels, names, blobs = batch
    keys = _keys(labels)
    assert images.dtype == torch.uint8 and images.shape == (len(keys), 4, 4)
    assert labels.dtype == torch.int64
    for i, k in enumerate(keys):
        assert np.array_equal(images[i].numpy(), _image(k))
    assert list(names) == [f"s{k}" for k in keys]
    assert list(blobs) == [bytes([k % 256]) * 3 for k in keys]
    return keys


def _labels_only(sample: tuple[Any, ...]) -> int:
    """A module-level (picklable) transform."""
    return int(sample[1]) - LABEL0


# -- map-style -----------------------------------------------------------


def test_map_samples_are_tuples_of_what_was_written(repo_path: Path) -> None:
    ds = repo_dataset(repo_path, COLUMNS)
    assert isinstance(ds, RepoDataset) and isinstance(ds, torch.utils.data.Dataset)
    repo = tc.Repository(repo_path)
    assert ds.commit == repo.branches["main"]
    repo.close()
    assert len(ds) == N
    image, label, name, blob = ds[7]
    assert isinstance(image, torch.Tensor) and image.dtype == torch.uint8
    assert np.array_equal(image.numpy(), _image(7))
    assert isinstance(label, torch.Tensor) and label.shape == () and int(label) == LABEL0 + 7
    assert name == "s7" and type(name) is str
    assert blob == bytes([7]) * 3 and type(blob) is bytes
    assert int(ds[-1][1]) == LABEL0 + N - 1
    with pytest.raises(IndexError):
        ds[N]
    # Column order is the order named; keys= restricts and orders.
    picked = repo_dataset(repo_path, ["names", "labels"], keys=[9, 3])
    assert len(picked) == 2 and picked[0][0] == "s9" and picked[1][0] == "s3"
    assert picked.__getitems__([1, 0, 1]) == [picked[1], picked[0], picked[1]]
    assert repo_dataset(repo_path, COLUMNS, transform=_labels_only)[5] == 5


def test_getitems_reads_each_batch_in_one_source_read(repo_path: Path) -> None:
    ds = repo_dataset(repo_path, COLUMNS)
    calls: list[int] = []
    read = ds.source.read

    def counting(indices: Any) -> Any:
        calls.append(len(indices))
        return read(indices)

    ds.source.read = counting  # type: ignore[method-assign]
    loader = DataLoader(ds, batch_size=8, shuffle=False, num_workers=0)
    seen = [k for batch in loader for k in _check_batch(batch)]
    assert seen == list(range(N))
    assert calls == [8] * (N // 8) + [N % 8]  # one read per batch, not per sample


def test_map_datasets_pickle_small_and_pinned(tmp_path: Path) -> None:
    repo = _build(tmp_path / "r", 6)
    ds = repo_dataset(repo, ["names", "labels"], transform=_labels_only)
    it = repo_iterable_dataset(repo.path, ["labels"], commit="main")
    first = ds.commit
    with repo.checkout(write=True) as co:
        co["labels"][0] = np.int64(-5)
        co.commit("second")
    assert repo.branches["main"] != first
    for obj in (ds, it):
        blob = pickle.dumps(obj)
        assert len(blob) < 2000  # the source's arguments and the settings, no handles
        clone = pickle.loads(blob)
        assert clone.commit == first
    assert pickle.loads(pickle.dumps(ds))[0] == 0  # still the first commit's label
    assert [int(s[0]) for s in pickle.loads(pickle.dumps(it))] == list(range(LABEL0, LABEL0 + 6))
    # A state taken on another commit does not load.
    newer = repo_iterable_dataset(repo.path, ["labels"])
    assert newer.commit == repo.branches["main"]
    with pytest.raises(ValueError, match="commit"):
        newer.load_state_dict(it.state_dict())
    repo.close()


def _shuffled_run(ds: RepoDataset, num_workers: int, context: str | None) -> list[list[int]]:
    """One epoch of a DataLoader shuffling with a generator seeded alike: keys per batch."""
    loader = DataLoader(
        ds,
        batch_size=8,
        shuffle=True,
        generator=torch.Generator().manual_seed(1234),
        num_workers=num_workers,
        multiprocessing_context=context,
    )
    return [_check_batch(batch) for batch in loader]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_map_dataloader_is_deterministic_across_workers(repo_path: Path, context: str) -> None:
    ds = repo_dataset(repo_path, COLUMNS)
    reference = _shuffled_run(ds, 0, None)
    assert _shuffled_run(ds, 0, None) == reference
    flat = [k for batch in reference for k in batch]
    assert sorted(flat) == list(range(N)) and flat != list(range(N))
    assert _shuffled_run(ds, 2, context) == reference


def test_map_dataset_with_distributed_sampler_covers_the_dataset(repo_path: Path) -> None:
    ds = repo_dataset(repo_path, COLUMNS)
    seen: list[int] = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(1)
        loader = DataLoader(ds, batch_size=6, sampler=sampler)
        mine = [k for batch in loader for k in _check_batch(batch)]
        assert len(mine) == N // 2
        seen += mine
    assert sorted(seen) == list(range(N))


def test_variable_shape_columns_yield_their_own_shapes(tmp_path: Path) -> None:
    pytest.importorskip("h5py")
    repo = tc.init(tmp_path / "v", user_name="Ada", user_email="ada@example.org")
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("seq", shape=(None,), dtype="float32", max_shape=(8,))
        col.update({k: np.arange(k + 1, dtype=np.float32) for k in range(5)})
        co.commit("v")
    ds = repo_dataset(repo, ["seq"])
    shapes = [tuple(s[0].shape) for s in ds.__getitems__([0, 3, 4])]
    assert shapes == [(1,), (4,), (5,)]
    (seq,) = ds[2]
    assert seq.dtype == torch.float32 and seq.tolist() == [0.0, 1.0, 2.0]
    repo.close()


# -- iterable ------------------------------------------------------------


def _run(it: RepoIterableDataset, num_workers: int = 0, batch_size: int = 4) -> list[int]:
    loader = DataLoader(
        it,
        batch_size=batch_size,
        num_workers=num_workers,
        multiprocessing_context="fork" if num_workers else None,
    )
    return [k for batch in loader for k in _keys(batch[-1])]  # labels come last


def test_iterable_yields_single_samples_in_key_order(repo_path: Path) -> None:
    it = repo_iterable_dataset(repo_path, COLUMNS)
    assert isinstance(it, torch.utils.data.IterableDataset)
    samples = list(it)
    assert len(samples) == N
    image, label, name, blob = samples[3]
    assert np.array_equal(image.numpy(), _image(3)) and int(label) == LABEL0 + 3
    assert (name, blob) == ("s3", bytes([3]) * 3)
    assert [int(s[1]) - LABEL0 for s in samples] == list(range(N))
    batches = DataLoader(it, batch_size=16, num_workers=0)
    assert [k for b in batches for k in _check_batch(b)] == list(range(N))


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("world_size", [1, 3])
def test_iterable_covers_every_sample_once_per_epoch(
    repo_path: Path, num_workers: int, world_size: int
) -> None:
    orders = []
    for epoch in (0, 1):
        seen: list[int] = []
        for rank in range(world_size):
            it = repo_iterable_dataset(
                repo_path,
                ["images", "labels"],
                shuffle=True,
                seed=5,
                rank=rank,
                world_size=world_size,
                even_ranks="none",
                batch_size=4,
            )
            it.set_epoch(epoch)
            seen += _run(it, num_workers)
        assert sorted(seen) == list(range(N))
        orders.append(seen)
    assert orders[0] != orders[1]  # set_epoch changes the order


def test_iterable_shuffle_is_deterministic_from_seed_and_epoch(repo_path: Path) -> None:
    def order(seed: int, epoch: int, num_workers: int = 0) -> list[int]:
        it = repo_iterable_dataset(repo_path, ["labels"], shuffle=True, seed=seed, batch_size=4)
        it.set_epoch(epoch)
        return _run(it, num_workers)

    expected = epoch_order(N, seed=9, epoch=2, shuffle=True).tolist()
    assert order(9, 2) == expected == order(9, 2)
    # With batch_size= equal to the DataLoader's, workers do not change the order.
    assert order(9, 2, num_workers=2) == expected
    assert order(9, 3) != expected and order(10, 2) != expected
    assert sorted(order(9, 3)) == list(range(N))
    plain = repo_iterable_dataset(repo_path, ["labels"])
    plain.set_epoch(4)
    assert _run(plain) == list(range(N))  # no shuffle unless asked


@pytest.mark.parametrize(("even", "per_rank"), [("pad", 17), ("drop", 16), ("none", None)])
def test_even_ranks_modes(repo_path: Path, even: str, per_rank: int | None) -> None:
    counts = []
    seen: list[int] = []
    for rank in range(3):
        it = repo_iterable_dataset(
            repo_path,
            ["labels"],
            rank=rank,
            world_size=3,
            even_ranks=even,  # type: ignore[arg-type]
        )
        mine = _run(it)
        counts.append(len(mine))
        seen += mine
    if per_rank is None:
        assert counts == [17, 17, 16] and sorted(seen) == list(range(N))
    else:
        assert counts == [per_rank] * 3
        assert set(seen) <= set(range(N))
        assert len(set(seen)) == (N if even == "pad" else 48)
    with pytest.raises(ValueError, match="even_ranks"):
        repo_iterable_dataset(repo_path, ["labels"], even_ranks="some")  # type: ignore[arg-type]


@pytest.mark.parametrize(("before", "after"), [(0, 0), (0, 2), (2, 0)])
def test_resume_yields_exactly_the_rest_of_the_epoch(
    repo_path: Path, before: int, after: int
) -> None:
    def fresh() -> RepoIterableDataset:
        return repo_iterable_dataset(
            repo_path, ["labels"], shuffle=True, seed=21, batch_size=4, even_ranks="none"
        )

    it = fresh()
    it.set_epoch(1)
    epoch = epoch_order(N, seed=21, epoch=1, shuffle=True).tolist()
    loader = DataLoader(
        it, batch_size=4, num_workers=before, multiprocessing_context="fork" if before else None
    )
    consumed: list[int] = []
    for i, batch in enumerate(loader):
        consumed += _keys(batch[-1])
        if i == 4:
            break
    assert len(consumed) == 20
    state = it.state_dict(samples_seen=len(consumed))
    if before == 0:
        assert it.state_dict() == state  # counted in-process
    state = json.loads(json.dumps(state))  # plain values
    assert state["commit"] == it.commit and state["epoch"] == 1 and state["position"] == 20

    resumed = fresh()
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # the same epoch keeps the restored position
    rest = _run(resumed, after)
    assert consumed + rest == epoch
    if after == 0:  # iterated in-process: the dataset saw the epoch end
        assert resumed.state_dict()["position"] == N
        assert _run(resumed) == epoch  # so the next iteration starts from the beginning
    # The next epoch starts from its beginning whoever iterated.
    resumed.set_epoch(2)
    assert _run(resumed) == epoch_order(N, seed=21, epoch=2, shuffle=True).tolist()


def test_resume_with_another_world_size(repo_path: Path) -> None:
    def rank_ds(rank: int, world_size: int) -> RepoIterableDataset:
        return repo_iterable_dataset(
            repo_path,
            ["labels"],
            shuffle=True,
            seed=2,
            rank=rank,
            world_size=world_size,
            even_ranks="none",
        )

    consumed: list[int] = []
    states = []
    for rank in range(2):  # two ranks consume 7 samples each, in step
        it = rank_ds(rank, 2)
        iterator = iter(it)
        consumed += [int(next(iterator)[0]) - LABEL0 for _ in range(7)]
        states.append(it.state_dict())
    assert states[0] == states[1] and states[0]["position"] == 14
    rest: list[int] = []
    for rank in range(3):  # an elastic restart on three ranks
        it = rank_ds(rank, 3)
        it.load_state_dict(states[0])
        rest += _run(it)
    assert sorted(consumed + rest) == list(range(N))


def test_load_state_dict_rejects_foreign_states(repo_path: Path) -> None:
    it = repo_iterable_dataset(repo_path, ["labels"])
    state = it.state_dict()
    with pytest.raises(ValueError, match="commit"):
        it.load_state_dict({**state, "commit": "0" * len(it.commit)})
    with pytest.raises(ValueError, match="samples"):
        it.load_state_dict({**state, "num_samples": N + 1})
    with pytest.raises(ValueError):
        it.load_state_dict({"position": 3})


# -- a real two-rank gloo group --------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, port: int, path: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        result: dict[str, Any] = {}
        # Spawned workers have no process group: they get the rank from the pickle.
        runs = [("none", 0, "fork", 2), ("none", 1, "fork", 2), ("pad", 0, "fork", 2)]
        runs.append(("none", 2, "spawn", 1))
        for even, epoch, context, workers in runs:
            it = repo_iterable_dataset(
                path, ["labels"], shuffle=True, seed=11, even_ranks=even, batch_size=4
            )
            assert it.topology() == (rank, 2)
            with pytest.raises(ValueError, match="disagree"):
                repo_iterable_dataset(path, ["labels"], rank=1 - rank, world_size=2).topology()
            it.set_epoch(epoch)
            loader = DataLoader(
                it, batch_size=4, num_workers=workers, multiprocessing_context=context
            )
            result[f"{even}-{epoch}"] = [_keys(b[-1]) for b in loader]
        dist.barrier()
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


@pytest.mark.timeout(120)
def test_two_gloo_ranks_with_two_workers_each(repo_path: Path, tmp_path: Path) -> None:
    torch.multiprocessing.spawn(
        _rank_main, args=(_free_port(), str(repo_path), str(tmp_path)), nprocs=2, join=True
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in (0, 1, 2):
        both = [k for r in ranks for b in r[f"none-{epoch}"] for k in b]
        assert sorted(both) == list(range(N))  # every sample once per epoch
    assert ranks[0]["none-0"] != ranks[0]["none-1"]
    padded = [r["pad-0"] for r in ranks]
    assert len(padded[0]) == len(padded[1])  # equal batch counts: DDP never waits
    assert Counter(len(b) for b in padded[0]) == Counter(len(b) for b in padded[1])
    assert {k for r in padded for b in r for k in b} == set(range(N))


# -- damage ----------------------------------------------------------------


def _damage_one_image(path: Path, n: int) -> int:
    """Flip a byte of one stored image; return the damaged sample's key."""
    segments = [p for p in (path / "data" / "memmap").rglob("*") if p.is_file()]
    images = [p for p in segments if p.stat().st_size == 16 * n]
    assert len(images) == 1, segments
    with images[0].open("r+b") as f:
        f.seek(16 * 13 + 5)
        byte = f.read(1)
        f.seek(16 * 13 + 5)
        f.write(bytes([byte[0] ^ 0xFF]))
    source = RepoSource(path, ["images"])
    bad = []
    for i in range(len(source)):
        try:
            source.read([i])
        except tc.CorruptionError as exc:
            assert exc.column == "images" and exc.key == source.index.key(i)
            bad.append(source.index.key(i))
    assert len(bad) == 1
    return int(bad[0])


def _errors(loader: DataLoader) -> list[BaseException]:
    """Iterate ``loader`` to its end and return the errors it raised.

    Draining lets the workers finish; an iterator dropped right after a worker
    error makes torch wait 5 s per worker at shutdown.
    """
    errors: list[BaseException] = []
    iterator = iter(loader)
    while True:
        try:
            next(iterator)
        except StopIteration:
            return errors
        except Exception as exc:
            errors.append(exc)


def test_a_corrupted_sample_raises_through_worker_processes(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    _build(path, 20).close()
    key = _damage_one_image(path, 20)
    pattern = rf"column 'images', key {key}\b"
    ds = repo_dataset(path, ["labels", "images"])
    with pytest.raises(tc.CorruptionError, match=pattern):
        ds[key]
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="fork")
    it = repo_iterable_dataset(path, ["images", "labels"], shuffle=True, batch_size=4)
    for errors in (_errors(loader), _errors(DataLoader(it, batch_size=4, num_workers=2))):
        assert len(errors) == 1
        assert isinstance(errors[0], tc.CorruptionError)
        assert re.search(pattern, str(errors[0])), str(errors[0])
        # rebuilt from the worker's message, it still names what is damaged
        assert errors[0].column == "images" and errors[0].key == key
        assert errors[0].path is not None and errors[0].path.endswith(".seg")


def test_works_with_tensorflow_imported_in_the_parent(repo_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    assert tf.constant(1).numpy() == 1  # TF's runtime is up before the workers fork
    ds = repo_dataset(repo_path, COLUMNS)
    loader = DataLoader(ds, batch_size=10, num_workers=2, multiprocessing_context="fork")
    assert [k for b in loader for k in _check_batch(b)] == list(range(N))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop", [1, 5])
def test_stateful_dataloader_resumes_exactly(tmp_path: Path, workers: int, stop: int) -> None:
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    repo = tc.init(tmp_path / "r", user_name="Ada", user_email="ada@example.org")
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("x", shape=(), dtype="int64").update(np.arange(90), np.arange(90))
        co.commit("90 samples")
    repo.close()

    def loader() -> Any:
        ds = repo_iterable_dataset(tmp_path / "r", ["x"], shuffle=True, seed=5, batch_size=8)
        return stateful.StatefulDataLoader(ds, batch_size=8, num_workers=workers)

    full = [v for (batch,) in loader() for v in batch.tolist()]
    first = loader()
    it = iter(first)
    seen = [v for _ in range(stop) for v in next(it)[0].tolist()]
    state = first.state_dict()
    del it
    resumed = loader()
    resumed.load_state_dict(state)
    rest = [v for (batch,) in resumed for v in batch.tolist()]
    assert seen + rest == full  # the same order, nothing lost or repeated
    assert sorted(full) == list(range(90))
