"""Which sample indices one (rank, worker) yields in an epoch, and where to resume.

This is the deterministic, framework-free heart of ``repo_iterable_dataset``:
pure functions of integers, tested without processes. A sample is named by
its index ``0..n-1`` in the dataset's key order; the adapters map indices to
keys and read them.

The model, in five steps
------------------------
1. **Global order.** :func:`epoch_order` gives the epoch's order of all ``n``
   indices: ``0..n-1``, or with ``shuffle=True`` a permutation drawn from
   ``np.random.Generator(np.random.PCG64([seed, epoch]))``. Every rank and
   worker computes the same order independently; nothing is communicated.
2. **Pad or truncate** so that ranks can be kept even (``even=``):

   * ``"pad"`` (the default, as torch's ``DistributedSampler`` does) extends
     the order by repeating its first ``(-n) % world_size`` entries (cycling
     through the order again if ``n < world_size - 1``), so every rank gets
     the same count and DDP never waits on a rank that ran out. At most
     ``world_size - 1`` samples are repeated.
   * ``"drop"`` truncates the order to ``n // world_size * world_size``
     (at most ``world_size - 1`` samples are left out).
   * ``"none"`` keeps every sample exactly once; ranks may differ by one.

   The padded order is always a prefix of the endless cyclic order
   ``order[i % n]`` and the truncated one a prefix of ``order``, so a
   *global position* means the same sample whatever the world size; only
   the epoch's length (:func:`epoch_length`) depends on it.
3. **Skip** the first ``start`` global positions: the samples already
   consumed this epoch, counted across all ranks. What remains is
   ``padded[start:]`` (empty when ``start`` is at or beyond the end).
4. **Interleave ranks** over the remaining order as ``DistributedSampler``
   does: rank ``r`` takes remaining positions ``r, r + W, r + 2W, ...``.
   Hence when all ``W`` ranks have consumed ``k`` samples each in lockstep,
   the consumed positions are exactly ``start .. start + k*W - 1``, and
   ``start + k*W`` is the position to resume from.
5. **Chunk by batch across workers.** Within a rank, consecutive runs of
   ``batch_size`` samples form chunks, and chunk ``c`` goes to worker
   ``c % num_workers``. Torch's ``DataLoader`` with an iterable dataset takes
   one batch from each worker in turn (worker 0, 1, ..., 0, 1, ...), so when
   every worker batches ``batch_size`` samples the trainer sees the rank's
   samples in exactly the rank's order, and "the first ``k`` samples seen"
   is a prefix of the rank's order, which is what makes step 4's resume
   position exact. Only the rank's last chunk can be partial (fewer than
   ``batch_size`` samples); it is the last batch the trainer sees, so the
   order is preserved with ``drop_last=False`` as well.

Resuming
--------
Because padding/truncation is computed on the full epoch *before* ``start``
is skipped, and the rank and worker split is applied afresh to what remains,
resuming with a different world size, worker count or batch size (an elastic
restart) yields exactly the remaining samples, split anew, with none lost or
repeated. With ``"pad"``/``"drop"`` all ranks yield the same count when
``start`` is a multiple of ``world_size``; otherwise the first
``(epoch_length - start) % world_size`` ranks yield one sample more than the
others (see :func:`rank_length`), exactly as with ``"none"``; the adapter
decides how to keep a distributed job in step in that case.

Stability of the shuffle
------------------------
``PCG64`` seeded through ``SeedSequence([seed, epoch])`` produces a bit
stream that numpy guarantees to stay the same across versions and platforms
(NEP 19). ``Generator.permutation`` turns that stream into a permutation; its
algorithm has been unchanged since numpy 1.17 but NEP 19 allows a future
numpy to change a ``Generator`` method's output, so resuming a checkpoint
across a numpy upgrade relies on that algorithm staying put (the tests pin a
known permutation to notice if it ever moves).
"""

from __future__ import annotations

import operator
from typing import Literal, TypeAlias, get_args

import numpy as np
import numpy.typing as npt

__all__ = [
    "EVEN_MODES",
    "EvenMode",
    "checked_int",
    "epoch_length",
    "epoch_order",
    "plan",
    "rank_length",
]

EvenMode: TypeAlias = Literal["pad", "drop", "none"]
EVEN_MODES: tuple[str, ...] = get_args(EvenMode)

IndexArray: TypeAlias = npt.NDArray[np.int64]


def checked_int(value: object, name: str, minimum: int = 0) -> int:
    """``value`` as a Python int that is at least ``minimum``, else raise.

    Shared by the loader adapters for their integer arguments.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not bool")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum} (it is {number})")
    return number


def _even(even: object) -> EvenMode:
    if even not in EVEN_MODES:
        raise ValueError(f"even must be one of {', '.join(map(repr, EVEN_MODES))} (it is {even!r})")
    return even  # type: ignore[return-value]


def _length(n: int, world_size: int, even: EvenMode) -> int:
    if even == "pad":
        return -(-n // world_size) * world_size
    if even == "drop":
        return n // world_size * world_size
    return n


def _rank_count(remaining: int, rank: int, world_size: int) -> int:
    """How many of ``remaining`` interleaved positions fall to ``rank``."""
    return max(0, -(-(remaining - rank) // world_size))


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool) -> IndexArray:
    """The epoch's global order of the sample indices ``0..n-1``.

    Parameters
    ----------
    n : int
        Number of samples (``>= 0``).
    seed : int
        Non-negative seed of the shuffle; ignored without ``shuffle``.
    epoch : int
        Non-negative epoch number; ignored without ``shuffle``.
    shuffle : bool
        Whether to permute the samples.

    Returns
    -------
    numpy.ndarray
        A fresh int64 array: ``np.arange(n)``, or with ``shuffle`` the
        permutation ``Generator(PCG64([seed, epoch])).permutation(n)``.
        The same arguments always give the same order (see the module
        docstring on stability across numpy versions).

    Raises
    ------
    ValueError
        If ``n``, ``seed`` or ``epoch`` is negative.
    """
    return _order(n, seed=seed, epoch=epoch, shuffle=shuffle).astype(np.int64, copy=False)


def _order(n: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """:func:`epoch_order` in the narrowest index dtype (int32 below 2**31 samples).

    ``Generator.permutation(n)`` shuffles ``arange(n)`` in place; shuffling an
    int32 ``arange`` makes the same swaps, so the order is identical at half
    the memory every loader worker holds for an epoch.
    """
    n = checked_int(n, "n", 0)
    seed = checked_int(seed, "seed", 0)
    epoch = checked_int(epoch, "epoch", 0)
    order = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
    if shuffle:
        np.random.Generator(np.random.PCG64([seed, epoch])).shuffle(order)
    return order


def epoch_length(n: int, *, world_size: int, even: EvenMode) -> int:
    """Samples in one epoch across all ranks, after padding or truncation.

    Parameters
    ----------
    n : int
        Number of samples (``>= 0``).
    world_size : int
        Number of ranks (``>= 1``).
    even : {"pad", "drop", "none"}
        ``"pad"``: ``n`` rounded up to a multiple of ``world_size``;
        ``"drop"``: rounded down; ``"none"``: ``n``.

    Returns
    -------
    int
        The epoch length; global positions run from 0 to this minus one.

    Raises
    ------
    ValueError
        If an argument is out of range.
    """
    n = checked_int(n, "n", 0)
    world_size = checked_int(world_size, "world_size", 1)
    return _length(n, world_size, _even(even))


def rank_length(n: int, *, rank: int, world_size: int, even: EvenMode, start: int = 0) -> int:
    """How many samples ``rank`` yields this epoch from global position ``start``.

    Parameters
    ----------
    n : int
        Number of samples (``>= 0``).
    rank : int
        This rank, ``0 <= rank < world_size``.
    world_size : int
        Number of ranks (``>= 1``).
    even : {"pad", "drop", "none"}
        How ranks are kept even (see :func:`plan`).
    start : int, default 0
        Global position to resume from (samples consumed across all ranks).

    Returns
    -------
    int
        The length of the rank's share of the remaining ``R = max(0,
        epoch_length - start)`` positions: ``ceil((R - rank) / world_size)``
        (at least 0). With ``"pad"``/``"drop"`` and ``start`` a multiple of
        ``world_size``, ``R`` is a multiple of ``world_size`` and all ranks
        get ``R // world_size``. Otherwise (and with ``"none"``) the first
        ``R % world_size`` ranks get one sample more than the others.

    Raises
    ------
    ValueError
        If an argument is out of range.
    """
    n = checked_int(n, "n", 0)
    world_size = checked_int(world_size, "world_size", 1)
    rank = checked_int(rank, "rank", 0)
    if rank >= world_size:
        raise ValueError(f"rank must be < world_size ({world_size}) (it is {rank})")
    start = checked_int(start, "start", 0)
    remaining = max(0, _length(n, world_size, _even(even)) - start)
    return _rank_count(remaining, rank, world_size)


def plan(
    n: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    rank: int,
    world_size: int,
    worker: int,
    num_workers: int,
    batch_size: int = 1,
    start: int = 0,
    even: EvenMode = "pad",
) -> IndexArray:
    """The sample indices one worker of one rank yields this epoch, in order.

    Global order (:func:`epoch_order`) -> pad/truncate to
    :func:`epoch_length` -> skip the first ``start`` positions -> rank
    ``rank`` takes every ``world_size``-th remaining position starting at
    ``rank`` -> the rank's samples are cut into chunks of ``batch_size`` and
    chunk ``c`` goes to worker ``c % num_workers``. See the module docstring
    for why this matches torch's ``DataLoader`` and how resuming works.

    Parameters
    ----------
    n : int
        Number of samples (``>= 0``).
    seed, epoch : int
        Non-negative seed and epoch of the shuffle (ignored without it).
    shuffle : bool
        Whether the global order is a seeded permutation.
    rank : int
        This rank, ``0 <= rank < world_size``.
    world_size : int
        Number of ranks (``>= 1``).
    worker : int
        This DataLoader worker, ``0 <= worker < num_workers``.
    num_workers : int
        Number of DataLoader workers of the rank (``>= 1``; use 1 when
        loading in the main process).
    batch_size : int, default 1
        The DataLoader's batch size (``>= 1``): the chunk of consecutive rank
        samples one worker yields before the next worker's turn.
    start : int, default 0
        Samples of this epoch already consumed across all ranks, i.e. the
        global position to resume from (``>= 0``; beyond the epoch's end
        gives an empty plan).
    even : {"pad", "drop", "none"}, default "pad"
        ``"pad"`` repeats at most ``world_size - 1`` samples so that all
        ranks get the same count; ``"drop"`` leaves out at most
        ``world_size - 1``; ``"none"`` yields every sample exactly once.

    Returns
    -------
    numpy.ndarray
        A fresh int64 array of sample indices in ``0..n-1``, of length at
        most :func:`rank_length`; the union over all workers of a rank has
        exactly that length.

    Raises
    ------
    ValueError
        If an argument is out of range; the message names it.
    """
    n = checked_int(n, "n", 0)
    world_size = checked_int(world_size, "world_size", 1)
    rank = checked_int(rank, "rank", 0)
    if rank >= world_size:
        raise ValueError(f"rank must be < world_size ({world_size}) (it is {rank})")
    num_workers = checked_int(num_workers, "num_workers", 1)
    worker = checked_int(worker, "worker", 0)
    if worker >= num_workers:
        raise ValueError(f"worker must be < num_workers ({num_workers}) (it is {worker})")
    batch_size = checked_int(batch_size, "batch_size", 1)
    start = checked_int(start, "start", 0)
    mode = _even(even)
    order = _order(n, seed=seed, epoch=epoch, shuffle=shuffle)

    remaining = max(0, _length(n, world_size, mode) - start)
    count = _rank_count(remaining, rank, world_size)
    if count == 0:
        return np.empty(0, dtype=np.int64)
    # Positions (within the rank's sequence) whose chunk falls to this worker.
    # (only this worker's share is ever built: chunk starts, then their rows)
    starts = np.arange(worker * batch_size, count, num_workers * batch_size, dtype=np.int64)
    within = (starts[:, None] + np.arange(batch_size, dtype=np.int64)).ravel()
    within = within[within < count]
    positions = start + rank + within * world_size  # global positions, < epoch length
    if mode == "pad":
        positions %= n  # the padded order is the cyclic order's prefix
    return order[positions].astype(np.int64)
