"""Export a commit's columns to ``.npz``, HDF5 (``.h5``/``.hdf5``) or Zarr (``.zarr``).

The format comes from the destination's suffix. Every column becomes one
array (an ``.npz`` member, an HDF5 dataset, a Zarr array) named after it,
its samples in key order, beside an array of its keys
(:func:`~tensorcask.interop.layout.member_names` gives every name):

* fixed-shape ndarray column ``C``: array ``C`` of shape ``(N, *shape)`` and
  the column's dtype.
* variable-shape ndarray column ``C`` (the *ragged layout*): sample ``i`` is
  ``values[offsets[i]:offsets[i+1]].reshape(shapes[i])``, with ``values``
  the flat concatenation of all samples (the column's dtype), ``offsets``
  ``int64 (N+1,)`` and ``shapes`` ``int64 (N, ndim)``. In HDF5 and Zarr they
  are the arrays of a group ``C`` whose attributes hold
  ``tensorcask_layout = "ragged"`` and ``tensorcask_shape`` (the column's
  shape as JSON, ``null`` for a variable dimension); in ``.npz`` they are the
  members ``C.values``, ``C.offsets`` and ``C.shapes``, and the manifest
  records the shape.
* str column ``C``: variable-length UTF-8 strings (HDF5, Zarr); in ``.npz``
  a fixed-width unicode array (``<U`` of the longest value). A value ending
  in ``"\\0"`` cannot be told from the padding of ``.npz`` and HDF5 strings
  cannot hold ``"\\0"`` at all: those are refused, naming the column and key,
  before anything is written (Zarr keeps them).
* bytes column ``C``: variable-length ``uint8`` sequences (HDF5, with
  attribute ``tensorcask_kind = "bytes"``), variable-length bytes (Zarr), or
  in ``.npz`` the members ``C.values`` (``uint8``, all values concatenated)
  and ``C.offsets`` (``int64 (N+1,)``; no ``shapes``).
* keys: array ``C.keys``, ``int64`` for int keys (``uint64`` when one is
  ``2**63`` or more) or strings (variable-length UTF-8; ``<U`` in ``.npz``).
  A column holding both int and str keys is refused: one key array holds
  one kind (``"1"`` and ``1`` are different keys and must stay so).
* ``.npz`` manifest: member ``__tensorcask__``, a 0-d unicode array holding
  JSON ``{"format": "tensorcask-npz", "version": 1, "commit": id,
  "columns": [...]}``, each column ``{"name", "layout"`` (``"fixed"``,
  ``"ragged"``, ``"str"`` or ``"bytes"``), ``"kind"``, ``"dtype"`` (numpy
  descr, or null), ``"shape"`` (null for a variable dimension; null for str
  and bytes) and ``"members"`` (role -> member name)``}``. The import follows
  it, so column names like ``X.values`` read back as written.

Columns whose arrays would share a name (``a.keys`` beside ``a``; ``X``
variable-shape beside ``X.values`` in ``.npz``; ``__tensorcask__`` in
``.npz``) are refused, naming both. The HDF5 file and the Zarr group carry
the commit id in attribute ``tensorcask_commit``. A Zarr export also carries
a checksum tree (:mod:`~tensorcask.interop.checksum_tree`), written once the
store is in place, that :func:`~tensorcask.interop.verify_export` checks.
h5py, zarr-python and numpy read every export without tensorcask, and
importing an export gives back its columns and keys.

Samples are read through the column API in blocks of about
:data:`~tensorcask.interop.source.BATCH_BYTES` and written block by block, so
memory stays bounded whatever the size of the commit (the keys of a column
are held in memory). The export is written to a partial beside the
destination and moved into place when complete
(:mod:`~tensorcask.interop.destination`): a failed export leaves an existing
destination as it was. An existing destination is replaced only with
``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from ..columns import Column
from ..keys import Key
from ..repository import Repository
from .arrays import rows_per_block
from .destination import Destination
from .layout import NPZ_MANIFEST, column_layout, member_names
from .source import BATCH_BYTES
from .util import Progress, is_url, url_errors

__all__ = ["ExportResult", "Format", "export", "export_format"]

Format = Literal["npz", "hdf5", "zarr"]
_SUFFIXES: dict[str, Format] = {".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5", ".zarr": "zarr"}
CHUNK_BYTES = 1 << 20
"""Target size of one chunk of an exported HDF5 dataset or Zarr array."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote.

    Attributes
    ----------
    path : str
        The destination, as given.
    format : {"npz", "hdf5", "zarr"}
        The format its suffix chose.
    commit : str
        The full id of the exported commit.
    columns : dict of str to int
        Samples written per column.
    samples, nbytes : int
        Samples and value bytes written over all columns.
    """

    path: str
    format: Format
    commit: str
    columns: dict[str, int]
    samples: int
    nbytes: int


class Writer(Protocol):
    """What a format's writer does: ``NpzWriter``, ``HDF5Writer``, ``ZarrWriter``."""

    def fixed(
        self,
        name: str,
        length: int,
        shape: tuple[int, ...],
        dtype: np.dtype,
        chunk_rows: int,
        blocks: Iterable[np.ndarray],
    ) -> None: ...

    def strings(
        self, name: str, length: int, kind: str, blocks: Iterable[list[Any]], width: int = 1
    ) -> None: ...

    def ragged(
        self,
        name: str,
        length: int,
        shape: tuple[int | None, ...],
        dtype: np.dtype,
        blocks: Iterable[list[np.ndarray]],
    ) -> None: ...

    def keys(self, name: str, keys: np.ndarray | list[str]) -> None: ...

    def close(self) -> None: ...


def export_format(dest: str | os.PathLike[str]) -> Format:
    """The format a destination's suffix names; ``ValueError`` for any other suffix."""
    text = os.fspath(dest).rstrip("/")
    suffix = os.path.splitext(text)[1].lower()
    if suffix not in _SUFFIXES:
        raise ValueError(
            f"cannot tell the export format of {os.fspath(dest)!r} from its suffix "
            f"{suffix or '(none)'!r}; name it .npz, .h5 / .hdf5 or .zarr"
        )
    return _SUFFIXES[suffix]


# -- reading columns --------------------------------------------------------------


@dataclass
class _Plan:
    """One column to export: its keys in order and how to read them in blocks."""

    column: Column
    keys: list[Key]
    progress: _Counter
    written_keys: np.ndarray | list[str] | None = None
    width: int = 1

    @property
    def name(self) -> str:
        return self.column.name

    def key_array(self) -> np.ndarray | list[str]:
        """The keys as written: ints as one integer array, strs as a list (made once)."""
        if self.written_keys is None:
            self.written_keys = self._key_array()
        return self.written_keys

    def _key_array(self) -> np.ndarray | list[str]:
        ints = [k for k in self.keys if isinstance(k, int)]
        if len(ints) == len(self.keys):
            big = bool(ints) and max(ints) >= 2**63
            return np.array(ints, dtype=np.uint64 if big else np.int64)
        if not ints:
            return [str(k) for k in self.keys]
        raise ValueError(
            f"column {self.name!r} has both int keys ({len(ints)}) and str keys "
            f"({len(self.keys) - len(ints)}); an export holds one key array of one kind per "
            "column, and writing ints as strings would merge keys like 1 and '1'. Copy the "
            "samples under keys of one kind (in a branch) and export that"
        )

    def fixed_blocks(self, rows: int) -> Iterator[np.ndarray]:
        for a in range(0, len(self.keys), rows):
            block = self.column.get_many(self.keys[a : a + rows])
            assert isinstance(block, np.ndarray)
            self.progress.add(len(block), int(block.nbytes))
            yield block

    def list_blocks(self, count: bool = True) -> Iterator[list[Any]]:
        step, a = 8, 0  # then sized from what was read: values may be large
        while a < len(self.keys):
            block = list(self.column.get_many(self.keys[a : a + step]))
            size = sum(v.nbytes if isinstance(v, np.ndarray) else len(v) for v in block)
            if count:
                self.progress.add(len(block), size)
            a += len(block)
            step = int(min(1 << 16, max(1, BATCH_BYTES * len(block) // max(1, size))))
            yield block


class _Counter:
    """Samples and bytes exported so far, reported to ``progress``."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.samples = 0
        self.nbytes = 0
        self.total = total
        self.progress = progress

    def add(self, samples: int, nbytes: int) -> None:
        self.samples += samples
        self.nbytes += nbytes
        if self.progress is not None:
            self.progress("export bytes", self.nbytes, None)
            self.progress("export samples", self.samples, self.total)


def _chunk_rows(row_bytes: int) -> int:
    """Rows per chunk: a power of two, chunks of at most :data:`CHUNK_BYTES`."""
    rows = max(1, CHUNK_BYTES // max(1, row_bytes))
    return 1 << (rows.bit_length() - 1)


def _check_strings(plan: _Plan, fmt: Format) -> None:
    """Refuse str values the format cannot keep, naming the column and key, and
    measure the longest (the width of an ``.npz`` unicode array): a pass of its own,
    made before anything is written."""
    width, i = 1, 0
    for block in plan.list_blocks(count=False):
        for j, value in enumerate(block):
            width = max(width, len(value))
            if "\0" not in value or (fmt == "npz" and not value.endswith("\0")):
                continue
            key = plan.keys[i + j]
            if fmt == "hdf5":
                raise ValueError(
                    f"str column {plan.name!r} holds a value with '\\0' (key {key!r}), which "
                    "HDF5 strings cannot keep; export to .zarr or .npz instead"
                )
            raise ValueError(
                f"str column {plan.name!r} holds a value ending in '\\0' (key {key!r}), which "
                "a numpy unicode array cannot keep (it pads with '\\0'); export to .zarr instead"
            )
        i += len(block)
    plan.width = width


def _write_column(writer: Writer, plan: _Plan) -> None:
    column = plan.column
    n = len(plan.keys)
    if column.kind in ("str", "bytes"):
        writer.strings(plan.name, n, column.kind, plan.list_blocks(), plan.width)
    elif None in (column.shape or ()):
        assert column.shape is not None and column.dtype is not None
        writer.ragged(plan.name, n, column.shape, column.dtype, plan.list_blocks())
    else:
        assert column.dtype is not None
        shape = tuple(d for d in column.shape or () if d is not None)
        row_bytes = int(np.prod(shape, dtype=np.int64)) * column.dtype.itemsize
        chunk = _chunk_rows(row_bytes)
        rows = rows_per_block(row_bytes, chunk)
        writer.fixed(plan.name, n, shape, column.dtype, chunk, plan.fixed_blocks(rows))
    writer.keys(f"{plan.name}.keys", plan.key_array())


# -- destinations -------------------------------------------------------------------


def _open_writer(fmt: Format, target: str, commit: str, options: dict[str, Any]) -> Writer:
    if fmt == "npz":
        from .npz_writer import NpzWriter

        return NpzWriter(target, commit)
    if fmt == "hdf5":
        from .hdf5_io import HDF5Writer

        return HDF5Writer(target, commit)
    from .zarr_io import ZarrWriter

    return ZarrWriter(target, commit, options or None)


def _output_names(plans: Sequence[_Plan], fmt: Format) -> None:
    """Refuse columns whose arrays would share a name (``a.keys`` beside ``a``; in
    ``.npz``, ragged ``X`` beside ``X.values``, or the manifest's name)."""
    owner: dict[str, str] = {}
    if fmt == "npz":
        owner[NPZ_MANIFEST] = ""
    for plan in plans:
        layout = column_layout(plan.column.kind, plan.column.shape)
        for name in member_names(plan.name, layout, fmt).values():
            if name not in owner:
                owner[name] = plan.name
            elif not owner[name]:
                raise ValueError(
                    f"column {plan.name!r} would write an array named {name!r}, the name of the "
                    ".npz export's manifest; export it to .h5 or .zarr, or copy it under "
                    "another name"
                )
            else:
                raise ValueError(
                    f"columns {owner[name]!r} and {plan.name!r} would both write an array named "
                    f"{name!r}; export them separately (columns=[...]) or to another format"
                )


def _write(target: Destination, fmt: Format, commit: str, plans: Sequence[_Plan]) -> None:
    """Write every column to a partial and move it into place; on failure remove it."""
    path = target.begin()
    try:
        writer = _open_writer(fmt, path, commit, target.options)
        try:
            for plan in plans:
                _write_column(writer, plan)
        except BaseException:
            with contextlib.suppress(Exception):
                writer.close()
            raise
        writer.close()
        target.commit()
    except BaseException:
        target.discard()
        raise


def export(
    repo: Repository | str | os.PathLike[str],
    ref: str,
    dest: str | os.PathLike[str],
    columns: Sequence[str] | None = None,
    *,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Export the columns of commit ``ref`` to ``dest`` (``.npz``, ``.h5``/``.hdf5``, ``.zarr``).

    Parameters
    ----------
    repo : Repository or path
        The repository (a path is opened and closed again).
    ref : str
        Any ref: branch, tag, full commit id or unique prefix.
    dest : str or path-like
        The file or store to write; the suffix picks the format. A Zarr
        store may be an fsspec URL (``s3://bucket/out.zarr``).
    columns : sequence of str, optional
        Columns to export, in this order (default: all, sorted by name).
    overwrite : bool
        Replace ``dest`` if it exists (else ``FileExistsError``).
    storage_options : dict, optional
        fsspec options for a URL destination.
    progress : callable, optional
        ``progress(phase, done, total)`` (see :mod:`tensorcask.interop.util`).

    Returns
    -------
    ExportResult
        The path, format, commit id and samples written per column.

    Raises
    ------
    ValueError
        For an unknown suffix, a column with both int and str keys, names
        that would clash, or str values the format cannot keep (naming the
        column and key); all before anything is written.
    KeyError
        For a ref or column that does not exist.
    FileExistsError
        If ``dest`` exists and ``overwrite`` is False.
    MissingDependencyError
        Without zarr-python (``.zarr``) or the fsspec package of a URL.
    RemoteError
        When a URL cannot be reached.

    Notes
    -----
    A failed export leaves an existing ``dest`` as it was and removes what
    it wrote. A URL overwrite deletes the old store only once the new one is
    complete, then moves the new one into place: not atomic, but the old
    export is never lost before the new one is complete.
    """
    fmt = export_format(dest)
    dest_text = os.fspath(dest).rstrip("/") if is_url(dest) else os.fspath(dest)
    if is_url(dest_text) and fmt != "zarr":
        raise ValueError(
            f"exporting {fmt} to a URL ({dest_text}) is not supported; export to a local "
            "path and upload the file, or export to .zarr"
        )
    with ExitStack() as stack:
        if not isinstance(repo, Repository):
            repo = stack.enter_context(Repository(repo))
        commit = repo.resolve(ref)
        co = stack.enter_context(repo.checkout(commit=commit))
        names = list(columns) if columns is not None else sorted(co.columns)
        for name in names:
            if name not in co.columns:
                have = ", ".join(sorted(co.columns)) or "none"
                raise KeyError(f"no column {name!r} at {ref} ({commit[:10]}); columns: {have}")
        if len(set(names)) != len(names):
            raise ValueError(f"a column is named twice in {names}")
        target = Destination(dest_text, overwrite, storage_options, directory=fmt == "zarr")
        selected = [co.columns[name] for name in names]
        keys = [col.keys() for col in selected]
        counter = _Counter(sum(len(k) for k in keys), progress)
        plans = [_Plan(col, k, counter) for col, k in zip(selected, keys, strict=True)]
        for plan in plans:
            plan.key_array()  # refuse mixed keys before anything is written
        _output_names(plans, fmt)
        for plan in plans:
            if plan.column.kind == "str" and fmt != "zarr":
                _check_strings(plan, fmt)
        with url_errors(dest_text) if target.url else contextlib.nullcontext():
            _write(target, fmt, commit, plans)
            if fmt == "zarr":
                from .checksum_tree import write_checksum_tree

                write_checksum_tree(dest_text, storage_options=target.options or None)
    return ExportResult(
        path=os.fspath(dest),
        format=fmt,
        commit=commit,
        columns={plan.name: len(plan.keys) for plan in plans},
        samples=counter.samples,
        nbytes=counter.nbytes,
    )
