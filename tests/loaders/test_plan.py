"""The loader plan: which indices each (rank, worker) yields, and resuming, without processes."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorcask.loaders.plan import (
    EVEN_MODES,
    EvenMode,
    epoch_length,
    epoch_order,
    plan,
    rank_length,
)

NS = st.integers(0, 300)
WORLDS = st.integers(1, 5)
WORKERS = st.integers(1, 4)
BATCHES = st.integers(1, 7)
SEEDS = st.integers(0, 2**32 - 1)
EPOCHS = st.integers(0, 1000)
EVENS: st.SearchStrategy[EvenMode] = st.sampled_from(["pad", "drop", "none"])


def padded_order(n: int, *, seed: int, epoch: int, shuffle: bool, world: int, even: str) -> list:
    """The reference: the global order padded/truncated as the contract says, built naively."""
    order = epoch_order(n, seed=seed, epoch=epoch, shuffle=shuffle).tolist()
    if even == "pad":
        extra = (-n) % world
        while extra:  # repeat the first entries, cycling if n is tiny
            take = order[: min(extra, n)]
            order += take
            extra -= len(take)
    elif even == "drop":
        order = order[: n // world * world]
    return order


def worker_plans(n: int, world: int, workers: int, rank: int, **kw: Any) -> list[np.ndarray]:
    return [
        plan(n, rank=rank, world_size=world, worker=w, num_workers=workers, **kw)
        for w in range(workers)
    ]


def as_loader_sees(streams: list[np.ndarray], batch_size: int) -> list[int]:
    """What torch's DataLoader hands the trainer: one batch from each live worker in turn."""
    cursors = [0] * len(streams)
    seen: list[int] = []
    while any(c < len(s) for c, s in zip(cursors, streams, strict=True)):
        for w, stream in enumerate(streams):
            if cursors[w] < len(stream):
                seen.extend(int(i) for i in stream[cursors[w] : cursors[w] + batch_size])
                cursors[w] += batch_size
    return seen


def rank_sequence(n: int, world: int, workers: int, rank: int, batch_size: int, **kw: Any) -> list:
    streams = worker_plans(n, world, workers, rank, batch_size=batch_size, **kw)
    return as_loader_sees(streams, batch_size)


# -- the global order -------------------------------------------------------------------------


def test_epoch_order_without_shuffle_is_arange() -> None:
    out = epoch_order(7, seed=3, epoch=9, shuffle=False)
    assert out.dtype == np.int64
    assert out.tolist() == list(range(7))
    assert epoch_order(0, seed=0, epoch=0, shuffle=True).tolist() == []


def test_epoch_order_is_pinned() -> None:
    # If numpy ever changes Generator.permutation, checkpoints would resume into a
    # different order: this pins the stream the module documents.
    assert epoch_order(12, seed=17, epoch=3, shuffle=True).tolist() == [
        0, 4, 8, 9, 5, 2, 6, 7, 1, 10, 3, 11,
    ]  # fmt: skip
    assert epoch_order(10, seed=0, epoch=0, shuffle=True).tolist() == [
        4, 6, 2, 7, 3, 5, 9, 0, 8, 1,
    ]  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(n=NS, seed=SEEDS, epoch=EPOCHS, shuffle=st.booleans())
def test_epoch_order_is_a_deterministic_permutation(
    n: int, seed: int, epoch: int, shuffle: bool
) -> None:
    a = epoch_order(n, seed=seed, epoch=epoch, shuffle=shuffle)
    b = epoch_order(n, seed=seed, epoch=epoch, shuffle=shuffle)
    assert a.dtype == np.int64
    assert np.array_equal(a, b)
    assert sorted(a.tolist()) == list(range(n))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(30, 300), seed=SEEDS, epoch=EPOCHS)
def test_other_epochs_and_seeds_shuffle_differently(n: int, seed: int, epoch: int) -> None:
    # Two independent permutations of >= 30 items coincide with probability 1/30!.
    base = epoch_order(n, seed=seed, epoch=epoch, shuffle=True)
    assert not np.array_equal(base, epoch_order(n, seed=seed, epoch=epoch + 1, shuffle=True))
    assert not np.array_equal(base, epoch_order(n, seed=seed + 1, epoch=epoch, shuffle=True))
    assert not np.array_equal(base, np.arange(n))


# -- one epoch across all ranks and workers ---------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    n=NS,
    world=WORLDS,
    workers=WORKERS,
    batch_size=BATCHES,
    seed=SEEDS,
    epoch=EPOCHS,
    shuffle=st.booleans(),
    even=EVENS,
)
def test_the_epoch_is_covered_as_the_even_mode_says(
    n: int,
    world: int,
    workers: int,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    even: EvenMode,
) -> None:
    kw: dict[str, Any] = dict(
        seed=seed, epoch=epoch, shuffle=shuffle, batch_size=batch_size, even=even
    )
    per_rank = []
    union: Counter[int] = Counter()
    for rank in range(world):
        streams = worker_plans(n, world, workers, rank, **kw)
        for stream in streams:
            assert stream.dtype == np.int64
            union.update(stream.tolist())
        total = sum(len(s) for s in streams)
        assert total == rank_length(n, rank=rank, world_size=world, even=even)
        per_rank.append(total)

    length = epoch_length(n, world_size=world, even=even)
    assert sum(per_rank) == length
    assert max(per_rank, default=0) - min(per_rank, default=0) <= 1
    ideal = Counter(range(n))
    if even == "none":
        assert union == ideal
        assert length == n
    elif even == "pad":
        assert set(union) == set(range(n))
        assert length - n == (-n) % world <= world - 1
        assert sum(union.values()) - n <= world - 1
        assert len(set(per_rank)) <= 1
    else:
        assert all(c == 1 for c in union.values())
        assert n - len(union) == n % world <= world - 1
        assert len(set(per_rank)) <= 1
    assert union == Counter(padded_order(n, world=world, **_order_kw(kw)))


def _order_kw(kw: dict[str, Any]) -> dict[str, Any]:
    return {k: kw[k] for k in ("seed", "epoch", "shuffle", "even")}


@settings(max_examples=200, deadline=None)
@given(
    n=NS,
    world=WORLDS,
    workers=WORKERS,
    batch_size=BATCHES,
    seed=SEEDS,
    shuffle=st.booleans(),
    even=EVENS,
)
def test_workers_round_robin_reproduces_the_interleaved_rank_order(
    n: int, world: int, workers: int, batch_size: int, seed: int, shuffle: bool, even: EvenMode
) -> None:
    kw: dict[str, Any] = dict(seed=seed, epoch=2, shuffle=shuffle, even=even)
    reference = padded_order(n, world=world, **kw)
    for rank in range(world):
        streams = worker_plans(n, world, workers, rank, batch_size=batch_size, **kw)
        # Each worker holds whole chunks: chunk c of the rank's order goes to worker c % workers.
        for w, stream in enumerate(streams):
            chunks = [
                reference[rank::world][c * batch_size : (c + 1) * batch_size]
                for c in range(w, -(-len(reference[rank::world]) // batch_size), workers)
            ]
            assert stream.tolist() == [i for chunk in chunks for i in chunk]
        assert as_loader_sees(streams, batch_size) == reference[rank::world]


def test_a_small_example_by_hand() -> None:
    # 10 samples, 3 ranks, padded to 12: positions 10 and 11 repeat samples 0 and 1.
    kw: dict[str, Any] = dict(seed=0, epoch=0, shuffle=False, world_size=3, even="pad")
    assert plan(10, rank=0, worker=0, num_workers=1, **kw).tolist() == [0, 3, 6, 9]
    assert plan(10, rank=1, worker=0, num_workers=1, **kw).tolist() == [1, 4, 7, 0]
    assert plan(10, rank=2, worker=0, num_workers=1, **kw).tolist() == [2, 5, 8, 1]
    # Two workers, batches of 2 from rank 0's [0, 3, 6, 9]: worker 0 gets [0, 3], worker 1 [6, 9].
    assert plan(10, rank=0, worker=0, num_workers=2, batch_size=2, **kw).tolist() == [0, 3]
    assert plan(10, rank=0, worker=1, num_workers=2, batch_size=2, **kw).tolist() == [6, 9]
    assert plan(10, rank=2, worker=0, num_workers=1, start=9, **kw).tolist() == [1]
    assert plan(10, rank=0, worker=0, num_workers=1, start=12, **kw).tolist() == []
    drop = {**kw, "even": "drop"}
    assert plan(10, rank=0, worker=0, num_workers=1, **drop).tolist() == [0, 3, 6]
    none = {**kw, "even": "none"}
    assert plan(10, rank=0, worker=0, num_workers=1, **none).tolist() == [0, 3, 6, 9]
    assert plan(10, rank=1, worker=0, num_workers=1, **none).tolist() == [1, 4, 7]
    # Fewer samples than ranks: padding cycles through the order again.
    assert [plan(1, rank=r, worker=0, num_workers=1, **{**kw, "world_size": 4}).tolist()
            for r in range(4)] == [[0], [0], [0], [0]]  # fmt: skip


@settings(max_examples=50, deadline=None)
@given(n=NS, world=WORLDS, workers=WORKERS, seed=SEEDS, even=EVENS)
def test_same_arguments_same_plan(n: int, world: int, workers: int, seed: int, even: str) -> None:
    kw: dict[str, Any] = dict(
        seed=seed, epoch=1, shuffle=True, rank=world - 1, world_size=world,
        worker=workers - 1, num_workers=workers, batch_size=3, even=even,
    )  # fmt: skip
    assert np.array_equal(plan(n, **kw), plan(n, **kw))


# -- resuming ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    n=NS,
    world=WORLDS,
    workers=WORKERS,
    batch_size=BATCHES,
    seed=SEEDS,
    shuffle=st.booleans(),
    even=EVENS,
)
def test_resuming_yields_exactly_the_rest_of_the_epoch(
    data: st.DataObject,
    n: int,
    world: int,
    workers: int,
    batch_size: int,
    seed: int,
    shuffle: bool,
    even: EvenMode,
) -> None:
    kw: dict[str, Any] = dict(seed=seed, epoch=5, shuffle=shuffle, even=even)
    reference = padded_order(n, world=world, **kw)
    start = data.draw(st.integers(0, len(reference) + 3), label="start")
    union: Counter[int] = Counter()
    lengths = []
    for rank in range(world):
        seq = rank_sequence(n, world, workers, rank, batch_size, start=start, **kw)
        assert seq == reference[start:][rank::world]
        assert len(seq) == rank_length(n, rank=rank, world_size=world, even=even, start=start)
        union.update(seq)
        lengths.append(len(seq))
    assert union == Counter(reference[start:])
    if even != "none" and start % world == 0:
        assert len(set(lengths)) == 1
    # Lockstep resume: each rank picks up its first run's sequence after start / world samples.
    if start % world == 0:
        for rank in range(world):
            first = rank_sequence(n, world, workers, rank, batch_size, **kw)
            resumed = rank_sequence(n, world, workers, rank, batch_size, start=start, **kw)
            assert resumed == first[start // world :]


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    n=NS,
    worlds=st.tuples(WORLDS, WORLDS),
    workers=st.tuples(WORKERS, WORKERS),
    batches=st.tuples(BATCHES, BATCHES),
    seed=SEEDS,
    shuffle=st.booleans(),
    even=EVENS,
)
def test_elastic_restart_loses_and_repeats_nothing(
    data: st.DataObject,
    n: int,
    worlds: tuple[int, int],
    workers: tuple[int, int],
    batches: tuple[int, int],
    seed: int,
    shuffle: bool,
    even: EvenMode,
) -> None:
    (w1, w2), (k1, k2), (b1, b2) = worlds, workers, batches
    kw: dict[str, Any] = dict(seed=seed, epoch=7, shuffle=shuffle, even=even)
    per_rank = rank_length(n, rank=w1 - 1, world_size=w1, even=even)  # the shortest rank
    k = data.draw(st.integers(0, per_rank), label="samples per rank before the restart")

    # First run: w1 ranks each consume k samples in lockstep (as the trainer sees them).
    consumed = [rank_sequence(n, w1, k1, r, b1, **kw)[:k] for r in range(w1)]
    first: list[int] = [i for part in consumed for i in part]
    # The consumed global positions are exactly 0 .. k*w1 - 1.
    assert sorted(first) == sorted(padded_order(n, world=w1, **kw)[: k * w1])

    # Restart with w2 ranks, k2 workers and batch size b2, from global position k * w1.
    start = k * w1
    second: list[int] = []
    for rank in range(w2):
        second += rank_sequence(n, w2, k2, rank, b2, start=start, **kw)

    # The padded order is a prefix of the cyclic order whatever the world size, so the
    # two parts are exactly the first max(start, epoch length under w2) cyclic positions.
    union = Counter(first + second)
    expected = padded_order(n, world=w1, **kw)[:start] + padded_order(n, world=w2, **kw)[start:]
    assert union == Counter(expected)
    order = epoch_order(n, seed=seed, epoch=7, shuffle=shuffle).tolist()
    cyclic = [order[i % n] for i in range(max(start, epoch_length(n, world_size=w2, even=even)))]
    assert union == Counter(cyclic)
    if even == "none":
        assert union == Counter(range(n))
    elif even == "pad":
        assert set(union) == set(range(n))
        assert sum(union.values()) - n <= max(w1, w2) - 1
    else:
        assert all(c == 1 for c in union.values())
        assert n - len(union) <= max(w1, w2) - 1


# -- arguments --------------------------------------------------------------------------------


GOOD: dict[str, Any] = dict(
    seed=0, epoch=0, shuffle=True, rank=0, world_size=2, worker=0, num_workers=2,
    batch_size=1, start=0, even="pad",
)  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "name"),
    [
        ({"rank": -1}, "rank"),
        ({"rank": 2}, "rank"),
        ({"world_size": 0}, "world_size"),
        ({"worker": -1}, "worker"),
        ({"worker": 2}, "worker"),
        ({"num_workers": 0}, "num_workers"),
        ({"batch_size": 0}, "batch_size"),
        ({"start": -1}, "start"),
        ({"even": "pads"}, "even"),
        ({"seed": -1}, "seed"),
        ({"epoch": -1}, "epoch"),
    ],
)
def test_bad_arguments_raise_naming_them(bad: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name} "):
        plan(10, **{**GOOD, **bad})


def test_bad_n_and_lengths_arguments() -> None:
    with pytest.raises(ValueError, match=r"^n "):
        plan(-1, **GOOD)
    with pytest.raises(ValueError, match=r"^world_size "):
        epoch_length(5, world_size=0, even="pad")
    with pytest.raises(ValueError, match=r"^even "):
        epoch_length(5, world_size=1, even="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^rank "):
        rank_length(5, rank=3, world_size=3, even="none")
    with pytest.raises(ValueError, match=r"^start "):
        rank_length(5, rank=0, world_size=3, even="none", start=-2)
    with pytest.raises(TypeError, match=r"^batch_size "):
        plan(10, **{**GOOD, "batch_size": 1.5})
    assert set(EVEN_MODES) == {"pad", "drop", "none"}


def test_numpy_integers_are_accepted() -> None:
    n: Any = np.int64(10)
    args = {**GOOD, "rank": np.int64(1), "start": np.int32(4)}
    assert plan(n, **args).tolist() == plan(10, **{**GOOD, "rank": 1, "start": 4}).tolist()


def test_lengths() -> None:
    assert [epoch_length(10, world_size=3, even=e) for e in ("pad", "drop", "none")] == [12, 9, 10]
    assert epoch_length(0, world_size=4, even="pad") == 0
    assert [rank_length(10, rank=r, world_size=3, even="none") for r in range(3)] == [4, 3, 3]
    assert [rank_length(10, rank=r, world_size=3, even="pad", start=4) for r in range(3)] == [
        3, 3, 2,
    ]  # fmt: skip
    assert rank_length(10, rank=0, world_size=3, even="pad", start=100) == 0
