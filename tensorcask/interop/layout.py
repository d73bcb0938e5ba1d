"""The export layout every format shares: attribute names, member names and the
ragged layout (one variable-shape or bytes column as three flat arrays).

Ragged layout
-------------
Sample ``i`` is ``values[offsets[i]:offsets[i+1]].reshape(shapes[i])``:
``values`` is the flat concatenation of all samples, ``offsets`` ``int64
(N+1,)`` and ``shapes`` ``int64 (N, ndim)``. A bytes column is the same
without ``shapes`` (``values`` ``uint8``, one byte string a sample).
:class:`RaggedIndex` builds ``offsets`` and ``shapes`` while a writer
streams ``values``; :func:`check_ragged` and :func:`ragged_shape` read them
back.

Names
-----
:func:`member_names` gives the arrays one column becomes in each format, so
that the writers, the name-clash check of an export and the ``.npz``
manifest agree.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

__all__ = [
    "COMMIT_ATTR",
    "KIND_ATTR",
    "LAYOUT_ATTR",
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "NPZ_MANIFEST",
    "RAGGED_PARTS",
    "SHAPE_ATTR",
    "Layout",
    "RaggedIndex",
    "check_ragged",
    "column_layout",
    "member_names",
    "parse_shape",
    "ragged_shape",
]

LAYOUT_ATTR = "tensorcask_layout"
"""Attribute of a group holding one variable-shape column (``"ragged"``)."""
SHAPE_ATTR = "tensorcask_shape"
"""Attribute of a ragged group: the column's sample shape as JSON (``null``: variable)."""
KIND_ATTR = "tensorcask_kind"
"""Attribute of an HDF5 dataset holding a ``str`` or ``bytes`` column."""
COMMIT_ATTR = "tensorcask_commit"
"""Attribute of an HDF5 file's or Zarr store's root: the exported commit id."""
NPZ_MANIFEST = "__tensorcask__"
"""The ``.npz`` member (``__tensorcask__.npy``, a 0-d unicode array) holding the
manifest JSON: every column's layout, kind, dtype, shape and member names."""
MANIFEST_FORMAT = "tensorcask-npz"
"""The ``format`` field of an ``.npz`` manifest."""
MANIFEST_VERSION = 1
"""The ``version`` field of an ``.npz`` manifest this code writes and reads."""
RAGGED_PARTS = ("values", "offsets", "shapes")

Layout = Literal["fixed", "ragged", "str", "bytes"]


def column_layout(kind: str, shape: Sequence[int | None] | None) -> Layout:
    """How a column of ``kind`` and ``shape`` is laid out."""
    if kind == "str":
        return "str"
    if kind == "bytes":
        return "bytes"
    return "ragged" if None in (shape or ()) else "fixed"


def member_names(name: str, layout: Layout, fmt: str) -> dict[str, str]:
    """The arrays column ``name`` becomes in format ``fmt``: role -> array name.

    Roles are ``data`` (fixed, str, and bytes in HDF5 / Zarr), ``values``,
    ``offsets``, ``shapes`` (the ragged layout; in HDF5 and Zarr they are the
    arrays of the group ``data``) and ``keys``.
    """
    keys = {"keys": f"{name}.keys"}
    if fmt == "npz" and layout == "ragged":
        return {p: f"{name}.{p}" for p in RAGGED_PARTS} | keys
    if fmt == "npz" and layout == "bytes":
        return {p: f"{name}.{p}" for p in ("values", "offsets")} | keys
    return {"data": name} | keys


class RaggedIndex:
    """``offsets`` and ``shapes`` of ``length`` samples, filled block by block.

    ``ndim`` None builds a bytes column's index (no ``shapes``).
    """

    def __init__(self, length: int, ndim: int | None) -> None:
        self.length = length
        self.offsets = np.zeros(length + 1, dtype=np.int64)
        self.shapes = np.zeros((length, ndim or 0), dtype=np.int64) if ndim is not None else None
        self.count = 0

    def add(self, block: Sequence[Any]) -> np.ndarray:
        """Record the samples of ``block``; return their values, flat and concatenated."""
        i = self.count
        if i + len(block) > self.length:
            raise ValueError(f"more than the announced {self.length} samples")
        flat = [np.frombuffer(v, np.uint8) if self.shapes is None else np.ravel(v) for v in block]
        sizes = np.fromiter((f.size for f in flat), dtype=np.int64, count=len(flat))
        self.offsets[i + 1 : i + 1 + len(flat)] = self.offsets[i] + np.cumsum(sizes)
        if self.shapes is not None:
            for j, value in enumerate(block):
                self.shapes[i + j] = np.shape(value)
        self.count += len(block)
        if not flat:
            return np.empty(0, np.uint8)
        return np.concatenate(flat) if len(flat) > 1 else flat[0]

    @property
    def size(self) -> int:
        """Values recorded so far."""
        return int(self.offsets[self.count])


def check_ragged(label: str, offsets: np.ndarray, shapes: np.ndarray, size: int) -> None:
    """Raise ``ValueError`` unless ``offsets`` and ``shapes`` describe ``size`` values."""
    n = len(shapes)
    counts = np.prod(shapes, axis=1, dtype=np.int64) if shapes.ndim == 2 else None
    if (
        counts is None
        or offsets.shape != (n + 1,)
        or offsets[0] != 0
        or offsets[-1] != size
        or not np.array_equal(np.diff(offsets), counts)
    ):
        raise ValueError(
            f"{label} is not a valid ragged layout: 'offsets' must hold N+1 increasing element "
            f"offsets from 0 to len(values) ({size}) and 'shapes' (N, ndim) sample shapes whose "
            "sizes are the offsets' differences"
        )


def ragged_shape(shapes: np.ndarray) -> tuple[int | None, ...]:
    """Column shape guessed from ragged samples: dimensions that vary are ``None``,
    the others fixed (the first is ``None`` when none varies, so that the
    column stays variable). Only for files that do not record the shape."""
    ndim = shapes.shape[1]
    if not len(shapes):
        return (None,) * ndim
    dims: list[int | None] = [
        int(shapes[0, d]) if (shapes[:, d] == shapes[0, d]).all() else None for d in range(ndim)
    ]
    if ndim and None not in dims:
        dims[0] = None
    return tuple(dims)


def parse_shape(text: Any, label: str, shapes: np.ndarray) -> tuple[int | None, ...]:
    """The column shape a recorded attribute (JSON text or list) gives, checked
    against the samples' ``shapes``; without one, :func:`ragged_shape`."""
    if text is None or text == "":
        return ragged_shape(shapes)
    try:
        dims = json.loads(text) if isinstance(text, str | bytes) else text
        shape = tuple(None if d is None else int(d) for d in dims)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{label} records the shape {text!r}, which is not a JSON list of ints and nulls "
            f"({exc}); fix or remove the {SHAPE_ATTR} attribute"
        ) from None
    fixed = [(d, size) for d, size in enumerate(shape) if size is not None]
    if len(shape) != shapes.shape[1] or any(
        len(shapes) and (shapes[:, d] != size).any() for d, size in fixed
    ):
        raise ValueError(
            f"{label} records the shape {list(shape)} but holds samples of other shapes; "
            f"fix or remove the {SHAPE_ATTR} attribute"
        )
    return shape
