"""A ``tf.data`` source over the columns of one pinned commit.

:func:`repo_dataset` returns a :class:`tf.data.Dataset` that yields one tuple
per sample, one tensor per column in the order the columns were named::

    from tensorcask.loaders.tensorflow import repo_dataset
    ds = repo_dataset("data/mnist-repo", ["images", "labels"], commit="3fa9c2")
    ds.commit                      # the full commit id it is pinned to
    ds = ds.shuffle(10_000).batch(256).prefetch(tf.data.AUTOTUNE)

How it is built (no Python generator per sample):

1. an *index dataset* of sample indices: ``0..n-1`` in key order, or the
   seeded permutation :func:`~tensorcask.loaders.plan.epoch_order` with
   ``shuffle=True``; with ``shard=(index, count)`` only every ``count``-th
   index starting at ``index``, exactly as ``Dataset.shard(count, index)``;
2. ``batch(batch_read)``, then ``map`` with a batched ``tf.numpy_function``
   that calls :meth:`RepoSource.read <tensorcask.loaders.core.RepoSource.read>`
   once per chunk (``num_parallel_calls``, ``deterministic=True``);
3. ``unbatch()``, with the static shapes restored by ``tf.ensure_shape``.

The ``element_spec`` is exact: dtypes come from the column schemas
(``tf.string`` for str and bytes columns, whose str values are yielded as
their UTF-8 bytes), fixed-shape columns have fully static shapes and
variable-shape columns ``None`` in their variable dimensions, yielding each
sample in its own shape.

The commit is resolved once, at construction: later commits to a branch never
change what the dataset yields. It is available as the ``commit`` attribute
of the dataset :func:`repo_dataset` returns; datasets derived from it
(``.shuffle()``, ``.batch()``, ...) are new objects without that attribute, so
read it (or keep a reference) before chaining.

Errors are never swallowed: a missing column or key raises ``KeyError`` at
construction, and a corrupted sample makes the iteration raise a
``tf.errors.UnknownError`` whose message carries the
:class:`~tensorcask.CorruptionError` naming the column and the key.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from ..keys import Key
from ..repository import Repository
from .plan import checked_int, epoch_order
from .sources import Source, open_source

__all__ = ["repo_dataset"]

RepoLike = str | os.PathLike[str] | Repository


@dataclass(frozen=True)
class _Column:
    """How one column travels through the batched read."""

    name: str
    kind: str  # "fixed", "variable" or "string"
    np_dtype: np.dtype | None  # None for strings
    shape: tuple[int | None, ...]  # sample shape; () for strings

    @property
    def tf_dtype(self) -> Any:
        return tf.string if self.np_dtype is None else tf.as_dtype(self.np_dtype)


def _column(name: str, schema: Any) -> _Column:
    if schema.kind in ("str", "bytes"):
        return _Column(name, "string", None, ())
    if schema.kind != "ndarray" or schema.shape is None:
        raise TypeError(
            f"column {name!r} ({schema.kind}, shape {schema.shape}) has no tf.data form"
        )
    dtype = np.dtype(schema.dtype)
    try:
        tf.as_dtype(dtype)
    except TypeError:
        raise TypeError(f"column {name!r} has dtype {dtype} which TensorFlow cannot hold") from None
    shape = tuple(schema.shape)
    return _Column(name, "variable" if None in shape else "fixed", dtype, shape)


def _shard(shard: object) -> tuple[int, int]:
    if not isinstance(shard, tuple | list) or len(shard) != 2:
        raise TypeError(f"shard must be a pair (index, count), not {shard!r}")
    count = checked_int(shard[1], "shard count", 1)
    index = checked_int(shard[0], "shard index", 0)
    if index >= count:
        raise ValueError(f"shard index must be < shard count ({count}) (it is {index})")
    return index, count


class _BatchReader:
    """The Python side of the batched ``tf.numpy_function``.

    Called with a 1-D int64 array of sample indices, it returns flat outputs:
    per fixed-shape column one ``[B, *shape]`` array; per str/bytes column one
    ``[B]`` object array of bytes; per variable-shape column the samples'
    values concatenated into one flat array plus their shapes ``[B, rank]``.
    """

    def __init__(self, source: Source, columns: Sequence[_Column]) -> None:
        self.source = source
        self.columns = list(columns)

    def __call__(self, indices: np.ndarray) -> list[np.ndarray]:
        try:
            return self._convert(indices, self.source.read(indices))
        except (StopIteration, IndexError) as exc:
            # tf.numpy_function turns these into OutOfRangeError, which tf.data
            # takes for the end of the data and would silently truncate the epoch.
            raise RuntimeError(f"reading samples failed: {type(exc).__name__}: {exc}") from exc

    def _convert(self, indices: np.ndarray, read: list[Any]) -> list[np.ndarray]:
        count = len(indices)
        out: list[np.ndarray] = []
        for column, values in zip(self.columns, read, strict=True):
            if column.kind == "string":
                strings = np.empty(count, dtype=object)
                strings[:] = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values]
                out.append(strings)
            elif column.kind == "fixed":
                assert column.np_dtype is not None
                if isinstance(values, np.ndarray):
                    batch = values
                elif values:
                    batch = np.stack(values)
                else:
                    dims = tuple(int(d) for d in column.shape if d is not None)
                    batch = np.empty((0, *dims), dtype=column.np_dtype)
                out.append(np.ascontiguousarray(batch, dtype=column.np_dtype))
            else:
                assert column.np_dtype is not None
                arrays = [np.asarray(v) for v in values]
                if any(a.ndim != len(column.shape) for a in arrays):
                    raise ValueError(
                        f"column {column.name!r}: a sample's rank differs from the schema's "
                        f"shape {column.shape}"
                    )
                shapes = np.array([a.shape for a in arrays], dtype=np.int64).reshape(
                    count, len(column.shape)
                )
                flat = (
                    np.concatenate([a.reshape(-1) for a in arrays])
                    if arrays
                    else np.empty(0, dtype=column.np_dtype)
                )
                out.append(flat.astype(column.np_dtype, copy=False))
                out.append(shapes)
        return out


def repo_dataset(
    repo: RepoLike,
    columns: Sequence[str],
    commit: str | None = None,
    *,
    keys: Sequence[Key] | np.ndarray | None = None,
    shuffle: bool = False,
    seed: int = 0,
    shard: tuple[int, int] | None = None,
    batch_read: int = 256,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    storage_options: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_limit_bytes: int | None = None,
    skip_purged: bool = False,
) -> Any:
    """A ``tf.data.Dataset`` of the samples of ``columns`` at one commit.

    Parameters
    ----------
    repo:
        A repository path, an open :class:`~tensorcask.Repository`, or a
        remote's URL (``s3://bucket/repo``): samples are then streamed from
        it, no clone needed.
    columns:
        Column names; each element is a tuple of one tensor per column, in
        this order.
    commit:
        Any ref, resolved once, here, to a full commit id (default: the
        current branch's head now). The returned dataset's ``commit``
        attribute holds the id.
    keys:
        Restrict and order the samples (default: the keys present in every
        column, sorted).
    shuffle, seed:
        With ``shuffle=True`` the samples come in the permutation
        ``epoch_order(n, seed=seed, epoch=0, shuffle=True)``; the same seed
        always gives the same order. (Reshuffle per epoch with
        ``.shuffle(buffer)`` downstream, or build one dataset per epoch.)
    shard:
        ``(index, count)``: keep every ``count``-th sample of the order
        starting at ``index``, exactly as ``Dataset.shard(count, index)``.
    batch_read:
        Samples read per ``tf.numpy_function`` call.
    num_parallel_calls:
        Parallelism of the batched reads (the order stays deterministic).
    storage_options, cache_dir, cache_limit_bytes:
        For a remote URL only, as for
        :func:`tensorcask.loaders.torch.repo_dataset`.
    skip_purged:
        Leave out purged samples instead of raising
        :class:`~tensorcask.errors.PurgedDataError`, as for
        :func:`tensorcask.loaders.torch.repo_dataset`.

    Returns
    -------
    tf.data.Dataset
        Its ``element_spec`` is a tuple of ``tf.TensorSpec`` with the columns'
        dtypes (``tf.string`` for str/bytes) and shapes (``None`` for variable
        dimensions).

    Raises
    ------
    KeyError
        A column is missing from the commit, or a key of ``keys`` from a column.
    TypeError, ValueError
        An argument is out of range or a column has no TensorFlow form.
    """
    batch_read = checked_int(batch_read, "batch_read", 1)
    seed = checked_int(seed, "seed", 0)
    chosen_shard = None if shard is None else _shard(shard)
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
    roots = source.roots
    specs = [_column(name, root.schema) for name, root in zip(source.columns, roots, strict=True)]
    n = len(source)

    # 1. The index dataset: the sample order, sharded like Dataset.shard.
    start, step = (0, 1) if chosen_shard is None else chosen_shard
    if shuffle:
        order = epoch_order(n, seed=seed, epoch=0, shuffle=True)[start::step]
        indices = tf.data.Dataset.from_tensor_slices(tf.constant(order, dtype=tf.int64))
    else:
        indices = tf.data.Dataset.range(start, n, step)

    # 2. Batched reads: one numpy_function call per chunk of indices.
    reader = _BatchReader(source, specs)
    tout: list[Any] = []
    for spec in specs:
        tout.append(spec.tf_dtype)
        if spec.kind == "variable":
            tout.append(tf.int64)

    # A variable-shape column is read as a batch too (one read per chunk, like
    # the others), as its samples' values concatenated into one flat array
    # plus their shapes: numpy_function returns only dense arrays, so the flat
    # values become a RaggedTensor with one row per sample, which unbatch()
    # splits into per-sample rows; _restore then reshapes each row to its
    # sample's own shape. This is exact for any rank and any number of
    # variable dimensions, and keeps reads batched (no per-sample Python call).
    @tf.autograph.experimental.do_not_convert
    def read_batch(batch: Any) -> tuple[Any, ...]:
        flat = tf.numpy_function(reader, [batch], tout, name="tensorcask_read")
        out: list[Any] = []
        at = 0
        for spec in specs:
            if spec.kind == "variable":
                values = tf.ensure_shape(flat[at], [None])
                shapes = tf.ensure_shape(flat[at + 1], [None, len(spec.shape)])
                sizes = tf.reduce_prod(shapes, axis=1)
                out.append((tf.RaggedTensor.from_row_lengths(values, sizes), shapes))
                at += 2
            else:
                out.append(tf.ensure_shape(flat[at], [None, *spec.shape]))
                at += 1
        return tuple(out)

    @tf.autograph.experimental.do_not_convert
    def restore(*sample: Any) -> tuple[Any, ...]:
        out = []
        for spec, value in zip(specs, sample, strict=True):
            if spec.kind == "variable":
                row, shape = value
                out.append(tf.ensure_shape(tf.reshape(row, shape), list(spec.shape)))
            else:
                out.append(value)
        return tuple(out)

    dataset = indices.batch(batch_read).map(
        read_batch, num_parallel_calls=num_parallel_calls, deterministic=True
    )
    # 3. One element per sample, static shapes restored.
    dataset = dataset.unbatch()
    if any(spec.kind == "variable" for spec in specs):
        dataset = dataset.map(restore, num_parallel_calls=num_parallel_calls, deterministic=True)
    # unbatch() loses the length; the index dataset knows it (Keras, len() use it)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(range(start, n, step))))
    dataset.commit = source.commit  # a plain attribute; derived datasets do not carry it
    return dataset
