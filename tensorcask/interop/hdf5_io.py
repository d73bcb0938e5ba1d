"""HDF5 files (through h5py): an import source and an export writer.

Import
------
Every dataset of the file (groups walked depth first), or the one ``select``
names, becomes a column named by its path without the leading ``/`` and with
``/`` replaced by ``.`` (``/train/images`` -> ``train.images``). The first
axis is the sample axis; datasets are read in blocks of about
:data:`~tensorcask.interop.source.BATCH_BYTES` aligned to their chunks, so a
file larger than memory imports in bounded memory. Numeric datasets give
ndarray columns; variable-length or fixed-length strings give ``str``
columns (UTF-8) or ``bytes`` columns (ASCII); one-dimensional
variable-length numeric datasets give variable-shape columns of shape
``(None,)``. A scalar dataset has no sample axis and is refused, naming it.
The layouts :class:`HDF5Writer` writes (``<column>.keys``, ragged groups,
bytes as variable-length ``uint8``) read back as the columns they came from,
a ragged group of the shape its ``tensorcask_shape`` attribute records. Text
that is not UTF-8 is refused, naming the dataset and the sample.

Export
------
See :mod:`tensorcask.interop.export` for the layout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .arrays import (
    Array,
    ArraySource,
    assemble,
    column_spec,
    ragged_array,
    read_rows,
    rows_per_block,
)
from .layout import COMMIT_ATTR, KIND_ATTR, LAYOUT_ATTR, SHAPE_ATTR, RaggedIndex
from .source import ColumnSpec

__all__ = ["HDF5Writer", "open_hdf5"]


def _attr(obj: Any, name: str) -> str | None:
    value = obj.attrs.get(name)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)


def _vlen_row_bytes(ds: h5py.Dataset) -> int:
    """Average bytes of the first rows of a variable-length dataset (to size blocks)."""
    head = ds[: min(len(ds), 16)]
    sizes = [v.nbytes if isinstance(v, np.ndarray) else len(v) for v in head]
    return max(1, int(np.mean(sizes))) if sizes else 1


def _text_rows(ds: h5py.Dataset, a: int, b: int, label: str) -> list[str]:
    """UTF-8 strings ``a:b``; text that is not UTF-8 names the dataset and the sample."""
    try:
        return list(read_rows(ds.asstr(), a, b, label).tolist())
    except UnicodeDecodeError as exc:
        raw = read_rows(ds, a, b, label).tolist()
        row = next((a + i for i, v in enumerate(raw) if not _is_utf8(v)), a)
        raise ValueError(
            f"{label} holds text that is not UTF-8 at sample {row} ({exc.reason} at byte "
            f"{exc.start}); fix that value, or store the dataset as bytes (e.g. "
            "h5py.string_dtype('ascii')) to import it as a bytes column"
        ) from None


def _is_utf8(value: Any) -> bool:
    try:
        (value if isinstance(value, bytes) else str(value).encode()).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _dataset_array(ds: h5py.Dataset, name: str, where: str) -> Array:
    label = f"dataset '/{name}' of {where}"
    chunk_rows = ds.chunks[0] if ds.chunks else 1
    if ds.shape is None or ds.ndim == 0:
        what = "has no data (an empty dataspace)" if ds.shape is None else "is a scalar (shape ())"
        problem = (
            f"{what}: it has no sample axis; pick other datasets with --dataset, or store it "
            "with shape (1,)"
        )
        return Array(name, label, 0, None, lambda: iter(()), None, problem)
    length = int(ds.shape[0])
    dtype = ds.dtype
    string = h5py.check_string_dtype(dtype)
    vlen = h5py.check_vlen_dtype(dtype)
    kind = _attr(ds, KIND_ATTR)
    spec: ColumnSpec | None
    if string is not None or (vlen is not None and kind == "bytes" and vlen == np.uint8):
        text = string is not None and string.encoding == "utf-8"
        spec, problem = column_spec(name, np.dtype("U1" if text else "S1"), tuple(ds.shape[1:]))
        to_bytes = string is None  # variable-length uint8 rows
        fixed_length = string.length if string is not None else None
        step = rows_per_block(fixed_length or _vlen_row_bytes(ds), chunk_rows)

        def strings() -> Iterator[list[Any]]:
            for a in range(0, length, step):
                if text:
                    yield _text_rows(ds, a, a + step, label)
                    continue
                rows = read_rows(ds, a, a + step, label).tolist()
                yield [bytes(v) for v in rows] if to_bytes else rows

        return Array(name, label, length, spec, strings, None, problem)
    if vlen is not None:
        if ds.ndim != 1 or vlen.kind not in "biufc":
            problem = f"holds variable-length {vlen} data of shape {ds.shape}: no column holds it"
            return Array(name, label, length, None, lambda: iter(()), None, problem)
        spec, problem = column_spec(name, vlen, (None,))
        step = rows_per_block(_vlen_row_bytes(ds), chunk_rows)

        def arrays() -> Iterator[list[np.ndarray]]:
            for a in range(0, length, step):
                yield list(read_rows(ds, a, a + step, label))

        return Array(name, label, length, spec, arrays, None, problem)
    spec, problem = column_spec(name, np.dtype(dtype.str), tuple(ds.shape[1:]))
    row_bytes = int(np.prod(ds.shape[1:], dtype=np.int64)) * dtype.itemsize
    step = rows_per_block(row_bytes, chunk_rows)

    def blocks() -> Iterator[np.ndarray]:
        for a in range(0, length, step):
            yield read_rows(ds, a, a + step, label)

    return Array(name, label, length, spec, blocks, row_bytes, problem)


def _ragged_array(group: h5py.Group, name: str, where: str) -> Array:
    label = f"ragged group '/{name}' of {where}"
    return ragged_array(
        group, name, label, _attr(group, SHAPE_ATTR), lambda v, a, b: read_rows(v, a, b, label)
    )


def open_hdf5(
    path: str | os.PathLike[str],
    *,
    select: str | None = None,
    keys: str | None = None,
    column: str | None = None,
) -> ArraySource:
    """An HDF5 file as an import source (module notes).

    Raises ``FileNotFoundError`` for a missing file, ``ValueError`` for one
    that is not HDF5, ``KeyError`` for a ``select`` or ``keys`` dataset the
    file lacks.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(
            f"{path} is not a readable HDF5 file ({exc}); check the path, or write it with h5py"
        ) from None
    try:
        found: list[tuple[str, Any]] = []

        def visit(name: str, obj: Any) -> None:
            found.append((name, obj))

        f.visititems(visit)
        ragged = sorted(
            name
            for name, obj in found
            if isinstance(obj, h5py.Group) and _attr(obj, LAYOUT_ATTR) == "ragged"
        )
        arrays: list[Array] = []
        for name, obj in found:
            if any(name.startswith(f"{r}/") for r in ragged):
                continue
            if isinstance(obj, h5py.Dataset):
                arrays.append(_dataset_array(obj, name, str(path)))
        arrays.extend(_ragged_array(f[name], name, str(path)) for name in ragged)
        arrays.sort(key=lambda a: a.name)
        description = str(path) if select is None else f"{path}:/{select.strip('/')}"
        return assemble(
            description,
            arrays,
            where=str(path),
            select=select,
            keys=keys,
            column=column,
            on_close=f.close,
        )
    except BaseException:
        f.close()
        raise


class HDF5Writer:
    """Writes columns into a new HDF5 file, dataset by dataset, block by block."""

    def __init__(self, path: str | os.PathLike[str], commit: str) -> None:
        self.file = h5py.File(path, "w")
        self.file.attrs[COMMIT_ATTR] = commit

    def fixed(
        self,
        name: str,
        length: int,
        shape: tuple[int, ...],
        dtype: np.dtype,
        chunk_rows: int,
        blocks: Iterable[np.ndarray],
    ) -> None:
        """A fixed-shape ndarray column as one ``(N, *shape)`` dataset."""
        full = (length, *shape)
        chunks = None if 0 in full else (min(chunk_rows, length), *shape)
        ds = self.file.create_dataset(name, shape=full, dtype=dtype, chunks=chunks)
        start = 0
        for block in blocks:
            ds[start : start + len(block)] = block
            start += len(block)

    def strings(
        self, name: str, length: int, kind: str, blocks: Iterable[list[Any]], width: int = 1
    ) -> None:
        """A str column (variable-length UTF-8) or bytes column (variable-length uint8).

        A str value holding ``"\\0"`` is refused by h5py; the export checks
        for those before it writes anything.
        """
        dtype = h5py.string_dtype("utf-8") if kind == "str" else h5py.vlen_dtype(np.uint8)
        ds = self.file.create_dataset(name, shape=(length,), dtype=dtype)
        ds.attrs[KIND_ATTR] = kind
        start = 0
        for block in blocks:
            values = np.empty(len(block), dtype=object)
            values[:] = block if kind == "str" else [np.frombuffer(b, np.uint8) for b in block]
            ds[start : start + len(block)] = values
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
        group = self.file.create_group(name)
        group.attrs[LAYOUT_ATTR] = "ragged"
        group.attrs[SHAPE_ATTR] = json.dumps(list(shape))
        chunk = max(1, (1 << 20) // max(1, dtype.itemsize))
        values = group.create_dataset(
            "values", shape=(0,), maxshape=(None,), dtype=dtype, chunks=(chunk,)
        )
        index = RaggedIndex(length, len(shape))
        for block in blocks:
            flat = index.add(block)
            end = values.shape[0]
            values.resize((end + len(flat),))
            values[end:] = flat
        group.create_dataset("offsets", data=index.offsets)
        group.create_dataset("shapes", data=index.shapes)

    def keys(self, name: str, keys: np.ndarray | list[str]) -> None:
        """A column's keys: an integer dataset, or variable-length UTF-8 strings."""
        if isinstance(keys, np.ndarray):
            self.file.create_dataset(name, data=keys)
        else:
            ds = self.file.create_dataset(
                name, shape=(len(keys),), dtype=h5py.string_dtype("utf-8")
            )
            if keys:
                ds[:] = np.array(keys, dtype=object)

    def close(self) -> None:
        """Finish the file."""
        self.file.close()
