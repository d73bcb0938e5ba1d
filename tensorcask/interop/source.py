"""The seam every import format implements: a :class:`Source`.

A source describes the columns it brings (:class:`ColumnSpec`) and yields
its samples as bounded batches (:class:`Batch`), never the whole file at
once, so that an import runs in bounded memory whatever the size of the
input. The importer (:mod:`tensorcask.interop.importer`) turns batches into
``Column.update`` calls and one commit; a format module only reads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..keys import Key

__all__ = ["BATCH_BYTES", "Batch", "ColumnSpec", "Source"]

#: Target size of one batch's values: large enough for the batched write
#: path, small enough to keep an import's memory bounded.
BATCH_BYTES = 64 << 20

Kind = Literal["ndarray", "str", "bytes"]


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """A column a source brings: its name and schema.

    ``shape`` and ``dtype`` are those of one sample (ndarray columns only);
    ``None`` in ``shape`` marks a variable dimension, as in
    ``add_ndarray_column``.
    """

    name: str
    kind: Kind = "ndarray"
    shape: tuple[int | None, ...] | None = None
    dtype: np.dtype | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive samples of one column: ``keys[i]`` holds ``values[i]``.

    ``values`` is an array with a leading sample axis (fixed-shape columns)
    or a sequence of arrays, ``str`` or ``bytes``.
    """

    column: str
    keys: Sequence[Key] | np.ndarray
    values: np.ndarray | Sequence[object]
    nbytes: int


class Source(ABC):
    """One input (a file, a store, a folder) read as columns of samples."""

    #: Shown in progress lines and in the default commit message.
    description: str

    @abstractmethod
    def columns(self) -> list[ColumnSpec]:
        """The columns this source brings, in a stable order."""

    @abstractmethod
    def batches(self) -> Iterator[Batch]:
        """Every sample, in bounded batches (about :data:`BATCH_BYTES` each)."""

    def total_samples(self) -> int | None:
        """Samples over all columns, when known up front (for progress)."""
        return None

    def total_bytes(self) -> int | None:
        """Value bytes over all columns, when known up front (for progress)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release open files (called once the import ends, also on error)."""
