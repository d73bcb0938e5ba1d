"""PyTorch datasets over the columns of one pinned commit.

Two datasets, both built on :class:`~tensorcask.loaders.core.RepoSource` (which
resolves the commit once, at construction, and opens its own read-only handles
lazily in each process that reads, under fork and spawn alike):

* :func:`repo_dataset` returns a map-style :class:`RepoDataset`. It never
  shuffles itself: the ``DataLoader``'s sampler does (``shuffle=True``,
  ``DistributedSampler``, ...). Its ``__getitems__`` reads a whole batch of
  indices in one pass, which torch's default fetcher uses when the
  ``DataLoader`` batches.
* :func:`repo_iterable_dataset` returns a :class:`RepoIterableDataset` that
  splits the samples across ``torch.distributed`` ranks and ``DataLoader``
  workers itself (see :mod:`tensorcask.loaders.plan`), shuffles
  deterministically from ``(seed, epoch)`` and resumes mid-epoch from
  :meth:`RepoIterableDataset.state_dict`.

A sample is a tuple with one entry per column, in the order the columns were
named: a :class:`torch.Tensor` for ndarray columns (0-d for shape ``()``; of
each sample's own shape for variable-shape columns), a Python ``str`` or
``bytes`` for str and bytes columns. ``transform=`` maps that tuple to
whatever the caller wants. Errors of the source propagate: a corrupted sample
raises :class:`~tensorcask.CorruptionError` naming the column and key, in the
worker process, and the ``DataLoader`` re-raises it in the trainer.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..keys import Key
from ..repository import Repository
from .plan import EVEN_MODES, EvenMode, checked_int, epoch_length, plan
from .sources import Source, open_source

__all__ = [
    "READ_CHUNK",
    "RepoDataset",
    "RepoIterableDataset",
    "repo_dataset",
    "repo_iterable_dataset",
]

#: How many sample indices :class:`RepoIterableDataset` reads per ``source.read``.
READ_CHUNK = 256

#: Version of the :meth:`RepoIterableDataset.state_dict` layout.
_STATE_VERSION = 1

Transform = Callable[[tuple[Any, ...]], Any]
RepoLike = str | os.PathLike[str] | Repository


def _tensor(array: np.ndarray) -> torch.Tensor:
    """``array`` as a tensor sharing its memory (copied only if read-only)."""
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array)


def _column_samples(column: np.ndarray | list[Any], count: int) -> Sequence[Any]:
    """One batch of one column as ``count`` per-sample values."""
    if isinstance(column, np.ndarray):  # a stacked fixed-shape column: one tensor, then views
        return _tensor(column).unbind(0) if count else ()
    return [_tensor(v) if isinstance(v, np.ndarray) else v for v in column]


def _samples(columns: list[Any], count: int) -> list[tuple[Any, ...]]:
    """A batch read from the source as ``count`` per-sample tuples."""
    per_column = [_column_samples(c, count) for c in columns]
    return list(zip(*per_column, strict=True)) if per_column else []


class _PinnedSource:
    """What both datasets expose of their :class:`RepoSource`."""

    source: Source

    @property
    def commit(self) -> str:
        """The full id of the commit the dataset reads."""
        return self.source.commit

    @property
    def columns(self) -> list[str]:
        """The column names, in sample order."""
        return list(self.source.columns)


class RepoDataset(_PinnedSource, Dataset[Any]):
    """A map-style dataset over some columns of one pinned commit.

    Build it with :func:`repo_dataset`. ``ds[i]`` is the ``i``-th sample (in
    the source's key order) as a tuple with one entry per column, passed
    through ``transform`` when given. Picklable: it holds only its
    :class:`~tensorcask.loaders.core.RepoSource` and its transform.
    """

    def __init__(self, source: Source, transform: Transform | None = None) -> None:
        self.source = source
        self.transform = transform

    def key(self, index: int) -> Key:
        """The key of sample ``index``."""
        return self.source.index.key(self._position(index))

    def __len__(self) -> int:
        return len(self.source)

    def _position(self, index: object) -> int:
        if isinstance(index, bool):
            raise TypeError("dataset indices must be integers, not bool")
        i = operator.index(index)  # type: ignore[arg-type]
        n = len(self.source)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for a dataset of {n} samples")
        return i + n if i < 0 else i

    def _finish(self, samples: list[tuple[Any, ...]]) -> list[Any]:
        transform = self.transform
        return samples if transform is None else [transform(s) for s in samples]

    def __getitem__(self, index: int) -> Any:
        at = self._position(index)
        return self._finish(_samples(self.source.read([at]), 1))[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """The samples at ``indices``, read in one pass (torch's batched fetch).

        Returns a list of per-sample tuples (or transformed samples), which is
        what torch's ``DataLoader`` hands to its ``collate_fn``.
        """
        n = len(self.source)
        at = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(at) == 0:
            return []
        if ((at < -n) | (at >= n)).any():
            bad = int(at[(at < -n) | (at >= n)][0])
            raise IndexError(f"index {bad} is out of range for a dataset of {n} samples")
        at = np.where(at < 0, at + n, at)
        return self._finish(_samples(self.source.read(at), len(at)))

    def __repr__(self) -> str:
        return (
            f"RepoDataset({str(self.source.path)!r}, {self.source.columns!r}, "
            f"commit={self.commit[:12]!r}, samples={len(self)})"
        )


def _distributed() -> tuple[int, int] | None:
    """``(rank, world_size)`` of the default process group, if one is initialised."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


class RepoIterableDataset(_PinnedSource, IterableDataset[Any]):
    """An iterable dataset over some columns of one pinned commit.

    Build it with :func:`repo_iterable_dataset`, which documents the
    arguments. Each ``iter()`` yields the single samples that this rank's
    ``DataLoader`` worker owns in the current epoch, from
    :func:`~tensorcask.loaders.plan.plan`; it reads them in chunks of
    :data:`READ_CHUNK` indices.

    **Epochs.** :meth:`set_epoch` selects the epoch (the shuffle is drawn from
    ``(seed, epoch)``). Iterating again without it repeats the same epoch.
    Setting the epoch the dataset already has keeps a position restored by
    :meth:`load_state_dict`, so a loop that calls ``set_epoch(epoch)`` at the
    top of every epoch resumes correctly. With ``persistent_workers=True``
    the workers keep the epoch they were started with (a torch limitation);
    use non-persistent workers, or ``shuffle=False``.

    **Position.** The *global position* is the number of samples of this
    epoch consumed across all ranks (see :mod:`tensorcask.loaders.plan`).
    :meth:`state_dict` records it; :meth:`load_state_dict` makes the next
    iteration start there, so that it yields exactly the epoch's remaining
    samples (split afresh over the current ranks and workers). :meth:`set_epoch`
    to another epoch starts that epoch from 0. When the dataset is iterated in
    this process (``num_workers=0``) it also sees the resumed epoch end, and the
    next iteration of the same epoch starts from 0; with ``DataLoader``
    workers only their copies see it, so the restored position holds until
    :meth:`set_epoch` selects another epoch (as a training loop does anyway).
    """

    def __init__(
        self,
        source: Source,
        *,
        shuffle: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        even_ranks: EvenMode = "pad",
        batch_size: int = 1,
        transform: Transform | None = None,
    ) -> None:
        if even_ranks not in EVEN_MODES:
            raise ValueError(
                f"even_ranks must be one of {', '.join(map(repr, EVEN_MODES))} "
                f"(it is {even_ranks!r})"
            )
        self.source = source
        self.shuffle = bool(shuffle)
        self.seed = checked_int(seed, "seed")
        self.even_ranks: EvenMode = even_ranks
        self.batch_size = checked_int(batch_size, "batch_size", 1)
        self.transform = transform
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank= and world_size=, or neither")
        if rank is not None and world_size is not None:
            world_size = checked_int(world_size, "world_size", 1)
            rank = checked_int(rank, "rank")
            if rank >= world_size:
                raise ValueError(f"rank must be < world_size ({world_size}) (it is {rank})")
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._resume = 0  # global position the next iteration starts from
        # global position consumed in this process (see state_dict): the position the
        # running iteration started at, its end, the world size and _yielded then
        self._counting = (0, 0, 1, 0)
        self._skip = 0  # samples of this worker's plan a resumed worker skips
        self._yielded = 0  # samples of this worker's plan yielded (skipped ones included)
        self._pickled_topology: tuple[int, int] | None = None

    def topology(self) -> tuple[int, int]:
        """``(rank, world_size)`` used for splitting, resolved now.

        ``torch.distributed``'s default group when it is initialised in this
        process; else the group that was initialised where the dataset was
        pickled (spawned ``DataLoader`` workers have no process group of their
        own); else the ``rank=``/``world_size=`` arguments; else ``(0, 1)``.
        When a process group is initialised and ``rank=``/``world_size=`` were
        given too, they must agree with it.
        """
        found = _distributed() or self._pickled_topology
        if found is not None:
            if self.rank is not None and (self.rank, self.world_size) != found:
                raise ValueError(
                    f"rank={self.rank}, world_size={self.world_size} disagree with "
                    f"torch.distributed (rank {found[0]} of {found[1]})"
                )
            return found
        if self.rank is not None and self.world_size is not None:
            return self.rank, self.world_size
        return 0, 1

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Spawned workers start without the trainer's process group: carry its topology.
        state["_pickled_topology"] = _distributed() or self._pickled_topology
        return state

    # -- epochs and state -------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch that the next iteration yields.

        Another epoch than the current one starts from its first sample; the
        current one keeps a position restored by :meth:`load_state_dict`.
        """
        epoch = checked_int(epoch, "epoch")
        if epoch != self.epoch:
            self.epoch = epoch
            self._resume = 0
            self._counting = (0, 0, 1, 0)
            self._skip = self._yielded = 0

    def epoch_length(self) -> int:
        """Samples in one epoch across all ranks (after padding or truncation)."""
        return epoch_length(len(self.source), world_size=self.topology()[1], even=self.even_ranks)

    def state_dict(self, samples_seen: int | None = None) -> dict[str, Any]:
        """The position to resume from, as a small dict of plain values.

        Parameters
        ----------
        samples_seen:
            Samples of the current epoch the trainer has consumed *across all
            ranks*, counted from the start of the epoch (including any consumed
            before a resume: after ``load_state_dict(state)`` the count goes on
            from ``state["position"]``). ``None`` uses the dataset's own count,
            which is exact only when it is iterated in this process
            (``num_workers=0``): the samples yielded here this epoch times the
            world size, plus the position the iteration started from. With
            ``DataLoader`` workers, the copies in the workers count and this
            object does not: pass ``samples_seen`` (for example batches
            consumed * batch size * world size).

        Returns
        -------
        dict
            ``commit``, ``seed``, ``epoch``, ``shuffle``, ``even_ranks``,
            ``num_samples``, ``position`` and ``version``.
        """
        info = get_worker_info()
        worker: dict[str, int] | None = None
        if samples_seen is not None:
            position = checked_int(samples_seen, "samples_seen")
        elif info is not None:
            # Inside a DataLoader worker (torchdata's StatefulDataLoader asks each
            # worker's copy): record where this iteration started and how far this
            # worker got; the same worker resumes from it exactly.
            position = self._resume
            worker = {"id": info.id, "num_workers": info.num_workers, "yielded": self._yielded}
        else:
            position = self._consumed()
        state: dict[str, Any] = {
            "version": _STATE_VERSION,
            "commit": self.commit,
            "seed": self.seed,
            "epoch": self.epoch,
            "shuffle": self.shuffle,
            "even_ranks": self.even_ranks,
            "num_samples": len(self.source),
            "position": position,
        }
        if worker is not None:
            state["worker"] = worker
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from a :meth:`state_dict`: the next iteration yields exactly the
        samples of ``state["epoch"]`` from ``state["position"]`` on.

        The seed, shuffle and even mode are taken from the state, so the order
        is the one the state was taken in; the rank and worker split is
        computed afresh (an elastic restart yields exactly the remaining samples).

        Raises
        ------
        ValueError
            If the state belongs to another commit or another sample
            selection, or is not a state of this dataset type.
        """
        try:
            version = state["version"]
            commit = state["commit"]
            num_samples = state["num_samples"]
            even = state["even_ranks"]
            seed = checked_int(state["seed"], "seed")
            epoch = checked_int(state["epoch"], "epoch")
            position = checked_int(state["position"], "position")
            shuffle = bool(state["shuffle"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a RepoIterableDataset state: {exc}") from None
        if version != _STATE_VERSION:
            raise ValueError(f"unsupported state version {version!r} (expected {_STATE_VERSION})")
        if commit != self.commit:
            raise ValueError(
                f"the state was taken on commit {str(commit)[:12]}, but this dataset reads "
                f"commit {self.commit[:12]}"
            )
        if num_samples != len(self.source):
            raise ValueError(
                f"the state was taken over {num_samples} samples, but this dataset has "
                f"{len(self.source)}"
            )
        if even not in EVEN_MODES:
            raise ValueError(f"state has an unknown even_ranks mode {even!r}")
        self.seed = seed
        self.epoch = epoch
        self.shuffle = shuffle
        self.even_ranks = even
        self._resume = position
        self._counting = (position, position, 1, 0)
        self._skip = self._yielded = 0
        worker = state.get("worker")
        if worker is not None:
            info = get_worker_info()
            if info is None or (info.id, info.num_workers) != (
                worker["id"],
                worker["num_workers"],
            ):
                raise ValueError(
                    "this state was taken inside DataLoader worker "
                    f"{worker['id']} of {worker['num_workers']}; load it into the same worker "
                    "(as torchdata's StatefulDataLoader does), or take the state with "
                    "state_dict(samples_seen=...) in the trainer for an elastic restart"
                )
            self._skip = self._yielded = checked_int(worker["yielded"], "yielded")

    # -- iteration --------------------------------------------------------

    def _plan(self) -> tuple[np.ndarray, int]:
        rank, world_size = self.topology()
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        indices = plan(
            len(self.source),
            seed=self.seed,
            epoch=self.epoch,
            shuffle=self.shuffle,
            rank=rank,
            world_size=world_size,
            worker=worker,
            num_workers=num_workers,
            batch_size=self.batch_size,
            start=self._resume,
            even=self.even_ranks,
        )
        return indices, world_size

    def __iter__(self) -> Iterator[Any]:
        indices, world_size = self._plan()
        skip, self._skip = self._skip, 0
        self._yielded = skip
        return self._generate(indices[skip:], world_size)

    def _consumed(self) -> int:
        """Global position consumed so far by iteration in this process."""
        start, end, world_size, base = self._counting
        return min(end, start + (self._yielded - base) * world_size)

    def _generate(self, indices: np.ndarray, world_size: int) -> Iterator[Any]:
        start = self._resume
        end = max(
            start, epoch_length(len(self.source), world_size=world_size, even=self.even_ranks)
        )
        self._counting = (start, end, world_size, self._yielded)
        transform = self.transform
        source = self.source
        # A streaming source fetches windows of the samples to come while these are used,
        # each asked for when the reads reach the middle of the window before it.
        window = source.prefetch_window
        fetched = READ_CHUNK if window else len(indices)
        for low in range(0, len(indices), READ_CHUNK):
            chunk = indices[low : low + READ_CHUNK]
            if fetched < len(indices) and low + window // 2 >= fetched - READ_CHUNK:
                source.prefetch(indices[fetched : fetched + window])
                fetched += window
            for sample in _samples(self.source.read(chunk), len(chunk)):
                # Count before yielding: a consumer that stops here has consumed it.
                self._yielded += 1
                yield sample if transform is None else transform(sample)
        # The epoch is over here: a later iteration starts from its beginning.
        self._counting = (end, end, 1, 0)
        self._resume = 0
        self._yielded = 0

    def __repr__(self) -> str:
        return (
            f"RepoIterableDataset({str(self.source.path)!r}, {self.source.columns!r}, "
            f"commit={self.commit[:12]!r}, samples={len(self.source)}, epoch={self.epoch}, "
            f"shuffle={self.shuffle}, seed={self.seed}, even_ranks={self.even_ranks!r})"
        )


def repo_dataset(
    repo: RepoLike,
    columns: Sequence[str],
    commit: str | None = None,
    *,
    keys: Sequence[Key] | np.ndarray | None = None,
    transform: Transform | None = None,
    storage_options: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_limit_bytes: int | None = None,
    skip_purged: bool = False,
) -> RepoDataset:
    """A map-style ``torch.utils.data.Dataset`` over ``columns`` of one commit.

    Parameters
    ----------
    repo:
        A repository path, an open :class:`~tensorcask.Repository`, or a
        remote's URL (``s3://bucket/repo``, ``file:///path``): samples are
        then streamed from it, no clone needed.
    columns:
        Column names; each sample is a tuple in this order.
    commit:
        Any ref, resolved once, here, to a full id (``ds.commit``); later
        commits never change what the dataset yields. Default: the current
        branch's head now.
    keys:
        Restrict and order the samples (default: the keys present in every
        column, sorted).
    transform:
        Applied to each sample tuple.
    storage_options, cache_dir, cache_limit_bytes:
        For a remote URL only: fsspec options (``endpoint_url``,
        credentials), a folder where checked pieces are cached and shared by
        every process and job naming it (default: none, pieces are kept in
        each process's memory), and the cache's bound in bytes (default
        16 GiB on disk, 512 MiB in memory). See
        :class:`~tensorcask.loaders.stream.StreamSource`.
    skip_purged:
        Leave out samples purged from the repository (``repo.purge``)
        instead of raising :class:`~tensorcask.errors.PurgedDataError` when
        one is read. Decided once, when the dataset is made, so every worker
        and rank leaves out the same samples and the order stays the same.

    The dataset never shuffles; use the ``DataLoader``'s ``shuffle=`` or a
    sampler such as ``DistributedSampler``. With batching, torch calls
    ``__getitems__``, which reads the whole batch in one pass.
    """
    source = open_source(
        repo,
        columns,
        commit,
        keys,
        storage_options=storage_options,
        cache_dir=cache_dir,
        cache_limit_bytes=cache_limit_bytes,
        skip_purged=skip_purged,
    )
    return RepoDataset(source, transform)


def repo_iterable_dataset(
    repo: RepoLike,
    columns: Sequence[str],
    commit: str | None = None,
    *,
    keys: Sequence[Key] | np.ndarray | None = None,
    shuffle: bool = False,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    even_ranks: EvenMode = "pad",
    batch_size: int = 1,
    transform: Transform | None = None,
    storage_options: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_limit_bytes: int | None = None,
    skip_purged: bool = False,
) -> RepoIterableDataset:
    """An iterable ``torch.utils.data.IterableDataset`` over ``columns`` of one commit.

    Parameters
    ----------
    repo, columns, commit, keys, transform, storage_options, cache_dir, cache_limit_bytes:
        As for :func:`repo_dataset`.
    skip_purged:
        As for :func:`repo_dataset`.
    shuffle, seed:
        With ``shuffle=True`` each epoch's order is a permutation drawn from
        ``(seed, epoch)``; every rank and worker computes it independently.
    rank, world_size:
        Used when ``torch.distributed`` is not initialised (default 0 and 1).
        When it is, its default group decides and these must agree with it.
    even_ranks:
        ``"pad"`` (default, as ``DistributedSampler``) repeats at most
        ``world_size - 1`` samples so every rank yields the same count;
        ``"drop"`` leaves out at most ``world_size - 1``; ``"none"`` yields
        every sample exactly once (ranks may differ by one sample).
    batch_size:
        **The** ``DataLoader``'s ``batch_size``. Workers take turns by whole
        batches, so with the same value here the trainer receives the rank's
        samples in the rank's order, which is what makes
        ``state_dict(samples_seen=...)`` exact. Any value yields every
        sample of the rank; a different one only reorders them.

    The dataset yields single samples (let the ``DataLoader`` batch them).
    """
    source = open_source(
        repo,
        columns,
        commit,
        keys,
        storage_options=storage_options,
        cache_dir=cache_dir,
        cache_limit_bytes=cache_limit_bytes,
        skip_purged=skip_purged,
    )
    return RepoIterableDataset(
        source,
        shuffle=shuffle,
        seed=seed,
        rank=rank,
        world_size=world_size,
        even_ranks=even_ranks,
        batch_size=batch_size,
        transform=transform,
    )
