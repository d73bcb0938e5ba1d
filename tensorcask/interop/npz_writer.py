"""The ``.npz`` export writer: an uncompressed ``.npz``, member by member, block by
block, and its manifest; see :mod:`tensorcask.interop.export` for the layout."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from . import arrays
from .layout import (
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    NPZ_MANIFEST,
    Layout,
    RaggedIndex,
    member_names,
)

__all__ = ["NpzWriter"]


def _raw(array: np.ndarray) -> memoryview:
    """The bytes of ``array`` in C order, without a copy when it is contiguous."""
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))  # type: ignore[arg-type]


class NpzWriter:
    """Writes columns as members of a new, uncompressed ``.npz`` file, streamed,
    and a manifest of them (member ``__tensorcask__``) when closed."""

    def __init__(self, path: str | os.PathLike[str], commit: str) -> None:
        self.path = Path(path)
        self.zip = zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True)
        self.commit = commit
        self.columns: list[dict[str, Any]] = []

    def _member(
        self, name: str, shape: tuple[int, ...], dtype: np.dtype, parts: Iterable[Any]
    ) -> None:
        with self.zip.open(f"{name}.npy", "w", force_zip64=True) as fp:
            header = {
                "descr": np.lib.format.dtype_to_descr(dtype),
                "fortran_order": False,
                "shape": shape,
            }
            np.lib.format.write_array_header_1_0(fp, header)
            for part in parts:
                fp.write(_raw(part) if isinstance(part, np.ndarray) else part)

    def _record(
        self,
        name: str,
        layout: Layout,
        kind: str,
        dtype: np.dtype | None,
        shape: tuple[int | None, ...] | None,
    ) -> None:
        self.columns.append(
            {
                "name": name,
                "layout": layout,
                "kind": kind,
                "dtype": None if dtype is None else np.lib.format.dtype_to_descr(dtype),
                "shape": None if shape is None else list(shape),
                "members": member_names(name, layout, "npz"),
            }
        )

    def fixed(
        self,
        name: str,
        length: int,
        shape: tuple[int, ...],
        dtype: np.dtype,
        chunk_rows: int,
        blocks: Iterable[np.ndarray],
    ) -> None:
        """A fixed-shape column as one ``(N, *shape)`` member."""
        self._record(name, "fixed", "ndarray", dtype, shape)
        self._member(name, (length, *shape), dtype, blocks)

    def strings(
        self, name: str, length: int, kind: str, blocks: Iterable[list[Any]], width: int = 1
    ) -> None:
        """A str column as a ``<U{width}`` member; a bytes column as ``values`` and ``offsets``.

        ``width`` is the longest value's length (the export measures it first).
        """
        if kind == "bytes":
            self._record(name, "bytes", "bytes", None, None)
            self._flat(name, np.dtype(np.uint8), length, blocks, None)
            return
        dtype = np.dtype(f"<U{max(1, width)}")
        self._record(name, "str", "str", None, None)
        self._member(name, (length,), dtype, (np.array(b, dtype=dtype) for b in blocks))

    def ragged(
        self,
        name: str,
        length: int,
        shape: tuple[int | None, ...],
        dtype: np.dtype,
        blocks: Iterable[list[np.ndarray]],
    ) -> None:
        """A variable-shape column as the members ``values``, ``offsets`` and ``shapes``."""
        self._record(name, "ragged", "ndarray", dtype, shape)
        self._flat(name, dtype, length, blocks, len(shape))

    def _flat(
        self,
        name: str,
        dtype: np.dtype,
        length: int,
        blocks: Iterable[list[Any]],
        ndim: int | None,
    ) -> None:
        """``values`` (spooled to a temporary file to learn its length) and ``offsets``,
        plus ``shapes`` unless ``ndim`` is None (bytes)."""
        index = RaggedIndex(length, ndim)
        with tempfile.TemporaryFile(dir=self.path.parent) as spool:
            for block in blocks:
                spool.write(_raw(index.add(block)))
            spool.seek(0)
            parts = iter(lambda: spool.read(arrays.BATCH_BYTES), b"")
            self._member(f"{name}.values", (index.size,), dtype, parts)
        self._member(f"{name}.offsets", index.offsets.shape, index.offsets.dtype, [index.offsets])
        if index.shapes is not None:
            self._member(f"{name}.shapes", index.shapes.shape, index.shapes.dtype, [index.shapes])

    def keys(self, name: str, keys: np.ndarray | list[str]) -> None:
        """A column's keys: an integer member, or a ``<U`` member."""
        array = keys if isinstance(keys, np.ndarray) else np.array(keys, dtype=str)
        if not isinstance(keys, np.ndarray) and not keys:
            array = np.empty(0, dtype="<U1")
        self._member(name, array.shape, array.dtype, [array])

    def close(self) -> None:
        """Write the manifest and finish the zip file."""
        if self.zip.fp is not None:
            manifest = {
                "format": MANIFEST_FORMAT,
                "version": MANIFEST_VERSION,
                "commit": self.commit,
                "columns": self.columns,
            }
            text = np.array(json.dumps(manifest, ensure_ascii=False))
            self._member(NPZ_MANIFEST, (), text.dtype, [text])
        self.zip.close()
