"""Turning user values into stored payloads and digests, and back.

Validation happens here, before anything is written: a value of the wrong
kind, dtype, rank or size raises :class:`~tensorcask.errors.SchemaError`
naming the column (and key), and a batch with one bad value writes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import numpy as np

from .errors import SchemaError
from .hashing import Digest, array_digest_prefix, blob_digest, canonical_array, canonical_dtype
from .history.objects import ColumnSchema
from .keys import utf8
from .storage.base import Payload

__all__ = ["Value", "from_payload", "prepare_batch", "prepare_one"]

Value = np.ndarray | str | bytes


def _where(column: str, key: object) -> str:
    return f"column {column!r}" + ("" if key is None else f", key {key!r}")


def _check_array(schema: ColumnSchema, value: Any, column: str, key: object) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        if isinstance(value, str | bytes) or value is None:
            raise SchemaError(
                f"{_where(column, key)} holds {schema.dtype} arrays, not {type(value).__name__}"
            )
        value = np.asarray(value)
    expected = schema.np_dtype
    if canonical_dtype(value.dtype) != expected:
        raise SchemaError(
            f"{_where(column, key)}: dtype {value.dtype} does not match the column's {expected}; "
            f"convert with .astype({str(expected)!r})"
        )
    assert schema.shape is not None
    if value.ndim != len(schema.shape):
        raise SchemaError(
            f"{_where(column, key)}: rank {value.ndim} (shape {value.shape}) does not match the "
            f"column's shape {_shape_str(schema.shape)}"
        )
    bound = schema.max_shape
    for axis, (got, want) in enumerate(zip(value.shape, schema.shape, strict=True)):
        if want is not None and got != want:
            raise SchemaError(
                f"{_where(column, key)}: shape {value.shape} does not match the column's shape "
                f"{_shape_str(schema.shape)}"
            )
        if want is None and bound is not None and got > bound[axis]:
            raise SchemaError(
                f"{_where(column, key)}: shape {value.shape} exceeds the column's max_shape {bound}"
            )
    return canonical_array(value)


def _shape_str(shape: tuple[int | None, ...]) -> str:
    return (
        "("
        + ", ".join("None" if d is None else str(d) for d in shape)
        + (",)" if len(shape) == 1 else ")")
    )


def prepare_one(
    schema: ColumnSchema, value: Any, column: str, key: object
) -> tuple[Payload, Digest]:
    """Validate one value; return the payload to store and its digest."""
    if schema.kind == "ndarray":
        arr = _check_array(schema, value, column, key)
        h = array_digest_prefix(arr.dtype, arr.shape)
        h.update(arr.data if arr.size else b"")
        return arr, Digest(h.digest())
    if schema.kind == "str":
        if not isinstance(value, str):
            raise SchemaError(f"{_where(column, key)} holds str values, not {type(value).__name__}")
        raw = utf8(value, f"{_where(column, key)}: str value", SchemaError)
        return raw, blob_digest("str", raw)
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise SchemaError(f"{_where(column, key)} holds bytes values, not {type(value).__name__}")
    return value, blob_digest("bytes", value)


def prepare_batch(
    schema: ColumnSchema, batch: Any, n: int, column: str, *, threads: bool = True
) -> tuple[np.ndarray | list[Payload], list[Digest]]:
    """Validate ``n`` values; return payloads (a stacked array when possible) and digests.

    ``threads=False`` hashes on the calling thread only (see :func:`stacked_digests`).

    A fixed-shape ndarray column given an array with a leading batch axis
    takes the fast path: one dtype/shape check, then one hash per row over a
    contiguous buffer.
    """
    if schema.kind == "ndarray" and schema.fixed and isinstance(batch, np.ndarray):
        assert schema.shape is not None
        if batch.ndim != len(schema.shape) + 1 or batch.shape[0] != n:
            raise SchemaError(
                f"column {column!r}: a batch for {n} keys must have shape "
                f"({n}, {', '.join(str(d) for d in schema.shape)}), got {batch.shape}"
            )
        if canonical_dtype(batch.dtype) != schema.np_dtype:
            raise SchemaError(
                f"column {column!r}: batch dtype {batch.dtype} does not match the column's "
                f"{schema.np_dtype}; convert with .astype({schema.dtype!r})"
            )
        if tuple(batch.shape[1:]) != schema.shape:
            raise SchemaError(
                f"column {column!r}: batch rows have shape {batch.shape[1:]}, the column's shape "
                f"is {_shape_str(schema.shape)}"
            )
        stacked = canonical_array(batch)
        return stacked, stacked_digests(stacked, threads=threads)
    if isinstance(batch, np.ndarray) and schema.kind == "ndarray":
        batch = list(batch)
    if not isinstance(batch, Sequence) or isinstance(batch, str | bytes):
        raise SchemaError(
            f"column {column!r}: update(keys, values) needs a sequence or array of values"
        )
    if len(batch) != n:
        raise SchemaError(f"column {column!r}: {n} keys but {len(batch)} values")
    payloads: list[Payload] = []
    digests: list[Digest] = []
    for value in batch:
        payload, digest = prepare_one(schema, value, column, None)
        payloads.append(payload)
        digests.append(digest)
    return payloads, digests


def stacked_digests(stacked: np.ndarray, *, threads: bool = True) -> list[Digest]:
    """Digest of every row of a C-contiguous, canonical batch.

    Rows of 1, 2, 4 or 8 bytes (labels, scalars) are hashed once per
    distinct value; rows of :data:`_PARALLEL_ROW_BYTES` or more are hashed
    on every core (hashlib releases the GIL for them), unless ``threads`` is
    False: a caller that is one of several processes (or threads) already
    keeping the cores busy, where more threads only contend.
    """
    n = stacked.shape[0]
    if n == 0:
        return []
    base = array_digest_prefix(stacked.dtype, stacked.shape[1:])
    if stacked.size == 0:
        return [Digest(base.digest())] * n
    step = stacked.nbytes // n
    if step in _SMALL_ROWS and n > 64:
        values, inverse = np.unique(
            stacked.reshape(-1).view(np.uint8).view(_SMALL_ROWS[step]), return_inverse=True
        )
        if len(values) < n // 2:
            distinct = _hash_rows(base, memoryview(values.view(np.uint8)), step)  # type: ignore[arg-type]
            return [distinct[i] for i in inverse.tolist()]
    view = memoryview(stacked.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
    if threads and step >= _PARALLEL_ROW_BYTES and n >= 2 * _threads():
        parts = np.array_split(np.arange(n), _threads())
        pool = _pool()
        chunks = pool.map(
            lambda rows: _hash_rows(
                base, view[int(rows[0]) * step : (int(rows[-1]) + 1) * step], step
            ),
            [p for p in parts if len(p)],
        )
        return [d for chunk in chunks for d in chunk]
    return _hash_rows(base, view, step)


_SMALL_ROWS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_PARALLEL_ROW_BYTES = 4096
"""hashlib releases the GIL for inputs above 2 KiB; below this, threads only contend."""
_POOL: ThreadPoolExecutor | None = None


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(_threads(), thread_name_prefix="tensorcask-hash")
    return _POOL


def _forget_pool() -> None:
    global _POOL  # a forked child has the pool but not its threads
    _POOL = None


os.register_at_fork(after_in_child=_forget_pool)


def _hash_rows(base: Any, view: memoryview, step: int) -> list[Digest]:
    """Digests of the consecutive ``step``-byte rows of ``view`` (``base``: the primed state)."""
    copy = base.copy
    out: list[bytes] = []
    append = out.append
    for start in range(0, len(view), step):
        h = copy()
        h.update(view[start : start + step])
        append(h.digest())
    return cast(list[Digest], out)


def from_payload(schema: ColumnSchema, payload: Payload) -> Value:
    """The user-facing value of a stored payload."""
    if schema.kind == "str":
        assert isinstance(payload, bytes)
        return payload.decode("utf-8")
    return payload
