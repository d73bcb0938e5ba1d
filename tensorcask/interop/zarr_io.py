"""Zarr stores (v3 and v2, through zarr-python 3): an import source and an export writer.

Import
------
A store is a local path or any fsspec URL (``s3://``, ``memory://``,
``file://``; ``storage_options`` go to fsspec). Every array of its group
(nested groups walked, ``/`` in a path becoming ``.`` in the column name),
or the one ``select`` names, or the store itself when it is an array (named
after the store, less a ``.zarr`` suffix), becomes a column; arrays are read
chunk by chunk along the first axis, in blocks of about
:data:`~tensorcask.interop.source.BATCH_BYTES` (aligned to shards when the
array has them). Numeric arrays give ndarray columns, string arrays ``str``
columns and variable-length bytes arrays ``bytes`` columns. The layouts
:class:`ZarrWriter` writes (``<column>.keys``, ragged groups) read back as
the columns they came from, a ragged group of the shape its
``tensorcask_shape`` attribute records.

Metadata zarr-python cannot parse (a damaged ``zarr.json``) is a
``ValueError`` naming the store; for a URL, a missing fsspec package is a
:class:`~tensorcask.interop.util.MissingDependencyError` naming it and a
network failure a :class:`~tensorcask.errors.RemoteError` naming the URL.

zarr-python is optional: without it, both directions raise
:class:`~tensorcask.interop.util.MissingDependencyError` naming
``pip install 'tensorcask[zarr]'``.

Export
------
See :mod:`tensorcask.interop.export` for the layout.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from . import arrays
from .arrays import (
    Array,
    ArraySource,
    assemble,
    column_spec,
    ragged_array,
    read_rows,
    rows_per_block,
)
from .layout import COMMIT_ATTR, LAYOUT_ATTR, SHAPE_ATTR, RaggedIndex
from .util import is_url, require, url_errors

__all__ = ["ZarrWriter", "open_zarr", "zarr_options"]


def zarr_options(
    store: str | os.PathLike[str], storage_options: dict[str, Any] | None
) -> dict[str, Any]:
    """The keyword arguments that open ``store``: a path as is, a URL with its options."""
    if is_url(store):
        return {"store": os.fspath(store), "storage_options": storage_options or {}}
    if storage_options:
        raise ValueError(f"storage options apply to URLs, not to the local path {store}")
    return {"store": os.fspath(store)}


def _reader(where: str) -> Callable[[Any, int, int, str], Any]:
    """``read(arr, a, b, label)``: rows ``a:b``; read, decode and network errors name
    the array (the last as :class:`~tensorcask.errors.RemoteError` for a URL)."""
    url = where if is_url(where) else None

    def read(arr: Any, a: int, b: int, label: str) -> Any:
        return read_rows(
            arr, a, b, label, errors=(OSError, ValueError, RuntimeError), what="store", url=url
        )

    return read


def _dtype_of(arr: Any) -> np.dtype:
    """A numpy dtype that says what ``arr`` holds: ``U`` for text, ``S`` for bytes."""
    dtype = np.dtype(arr.dtype)
    if dtype.kind == "T":
        return np.dtype("U1")
    if dtype.kind == "O":
        meta = arr.metadata
        zdtype = getattr(meta, "data_type", None) or getattr(meta, "dtype", None)
        name = type(zdtype).__name__
        if "UTF8" in name or "String" in name:
            return np.dtype("U1")
        if "Bytes" in name:
            return np.dtype("S1")
    return dtype


def _array(arr: Any, name: str, where: str) -> Array:
    label = f"array '{name}' of {where}"
    if not arr.shape:
        problem = (
            "is a scalar (shape ()): it has no sample axis; pick other arrays with --dataset, "
            "or store it with shape (1,)"
        )
        return Array(name, label, 0, None, lambda: iter(()), None, problem)
    length = int(arr.shape[0])
    dtype = _dtype_of(arr)
    spec, problem = column_spec(name, dtype, tuple(arr.shape[1:]))
    fixed = dtype.kind not in "US"
    if fixed:
        row_bytes = int(np.prod(arr.shape[1:], dtype=np.int64)) * dtype.itemsize
    else:  # variable-length values: sized from the first few
        head = arr[: min(length, 16)].tolist()
        row_bytes = max(1, sum(len(v) for v in head) // max(1, len(head)))
    chunk_rows = int(arr.chunks[0])
    if arr.shards is not None and arr.shards[0] * row_bytes <= arrays.BATCH_BYTES:
        chunk_rows = int(arr.shards[0])  # whole shards when they fit a block
    step = rows_per_block(row_bytes, chunk_rows)
    read = _reader(where)

    def blocks() -> Iterator[Any]:
        for a in range(0, length, step):
            block = read(arr, a, a + step, label)
            yield block if fixed else block.tolist()

    return Array(name, label, length, spec, blocks, row_bytes if fixed else None, problem)


def _ragged_array(group: Any, name: str, where: str) -> Array:
    label = f"ragged group '{name}' of {where}"
    read = _reader(where)
    shape = group.attrs.get(SHAPE_ATTR)
    return ragged_array(group, name, label, shape, lambda v, a, b: read(v, a, b, label))


@contextlib.contextmanager
def _unreadable(where: str) -> Iterator[None]:
    """Metadata zarr-python cannot parse (a broken ``zarr.json``) as one clear error."""
    try:
        yield
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(
            f"{where} is not a readable Zarr store ({type(exc).__name__}: {exc}): its metadata "
            "(zarr.json, or .zarray / .zgroup) is damaged or not Zarr; write the store again "
            "with zarr-python"
        ) from None


def open_zarr(
    store: str | os.PathLike[str],
    *,
    select: str | None = None,
    keys: str | None = None,
    column: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> ArraySource:
    """A Zarr group or array as an import source (module notes).

    Raises ``FileNotFoundError`` when nothing is stored there, ``KeyError``
    for a ``select`` or ``keys`` array the group lacks, ``ValueError`` for
    metadata that is not Zarr, :class:`~tensorcask.interop.util.MissingDependencyError`
    without zarr-python or the URL's fsspec package, and
    :class:`~tensorcask.errors.RemoteError` when a URL cannot be reached.
    """
    zarr = require("zarr", "reading Zarr stores")
    where = os.fspath(store)
    with url_errors(where):
        with _unreadable(where):
            try:
                node = zarr.open(mode="r", **zarr_options(store, storage_options))
            except FileNotFoundError:
                raise FileNotFoundError(f"no Zarr group or array at {where}") from None
        found: list[Array] = []
        if isinstance(node, zarr.Array):
            name = where.rstrip("/").rsplit("/", 1)[-1].removesuffix(".zarr") or "array"
            found.append(_array(node, name, where))
        else:
            with warnings.catch_warnings(), _unreadable(where):
                # files that are no Zarr node (an export's checksum manifest) are skipped
                warnings.filterwarnings("ignore", "Object at .* is not recognized", UserWarning)
                members = sorted(node.members(max_depth=None), key=lambda m: m[0])
            ragged = [
                path
                for path, obj in members
                if isinstance(obj, zarr.Group) and obj.attrs.get(LAYOUT_ATTR) == "ragged"
            ]
            for path, obj in members:
                inside = any(path.startswith(f"{r}/") for r in ragged)
                if isinstance(obj, zarr.Array) and not inside:
                    found.append(_array(obj, path, where))
            found.extend(_ragged_array(node[path], path, where) for path in ragged)
            found.sort(key=lambda a: a.name)
    description = where if select is None else f"{where}:{select.strip('/')}"
    return assemble(description, found, where=where, select=select, keys=keys, column=column)


class ZarrWriter:
    """Writes columns into a new Zarr v3 group, array by array, chunk by chunk."""

    def __init__(
        self, store: str | os.PathLike[str], commit: str, storage_options: dict[str, Any] | None
    ) -> None:
        self.zarr = require("zarr", "exporting to Zarr")
        self.group = self.zarr.open_group(
            mode="w", zarr_format=3, **zarr_options(store, storage_options)
        )
        self.group.attrs[COMMIT_ATTR] = commit

    def fixed(
        self,
        name: str,
        length: int,
        shape: tuple[int, ...],
        dtype: np.dtype,
        chunk_rows: int,
        blocks: Iterable[np.ndarray],
    ) -> None:
        """A fixed-shape ndarray column as one ``(N, *shape)`` array."""
        arr = self.group.create_array(
            name,
            shape=(length, *shape),
            dtype=dtype,
            chunks=(max(1, chunk_rows), *(max(1, d) for d in shape)),
        )
        start = 0
        for block in blocks:
            arr[start : start + len(block)] = block
            start += len(block)

    def strings(
        self, name: str, length: int, kind: str, blocks: Iterable[list[Any]], width: int = 1
    ) -> None:
        """A str column (variable-length UTF-8) or bytes column (variable-length bytes)."""
        dtype: Any = str if kind == "str" else self.zarr.dtype.VariableLengthBytes()
        with warnings.catch_warnings():
            # zarr-python reads its variable-length bytes; the warning is about other readers.
            warnings.simplefilter("ignore", self.zarr.errors.UnstableSpecificationWarning)
            arr = self.group.create_array(
                name, shape=(length,), dtype=dtype, chunks=(max(1, min(length, 4096)),)
            )
        start = 0
        for block in blocks:
            values = np.empty(len(block), dtype=object)
            values[:] = block
            arr[start : start + len(block)] = values
            start += len(block)

    def ragged(
        self,
        name: str,
        length: int,
        shape: tuple[int | None, ...],
        dtype: np.dtype,
        blocks: Iterable[list[np.ndarray]],
    ) -> None:
        """A variable-shape column as a group: ``values``, ``offsets``, ``shapes``."""
        group = self.group.create_group(name)
        group.attrs[LAYOUT_ATTR] = "ragged"
        group.attrs[SHAPE_ATTR] = json.dumps(list(shape))
        chunk = max(1, (1 << 20) // max(1, dtype.itemsize))
        values = group.create_array("values", shape=(0,), dtype=dtype, chunks=(chunk,))
        index = RaggedIndex(length, len(shape))
        for block in blocks:
            if block:
                values.append(index.add(block))
        rows = max(1, min(length, 1 << 16))
        group.create_array("offsets", data=index.offsets, chunks=(rows + 1,))
        group.create_array("shapes", data=index.shapes, chunks=(rows, max(1, len(shape))))

    def keys(self, name: str, keys: np.ndarray | list[str]) -> None:
        """A column's keys: an integer array, or a string array."""
        rows = max(1, min(len(keys), 1 << 16))
        if isinstance(keys, np.ndarray):
            self.group.create_array(name, data=keys, chunks=(rows,))
            return
        arr = self.group.create_array(name, shape=(len(keys),), dtype=str, chunks=(rows,))
        if keys:
            values = np.empty(len(keys), dtype=object)
            values[:] = keys
            arr[:] = values

    def close(self) -> None:
        """Nothing to finish: every write is stored when made."""
