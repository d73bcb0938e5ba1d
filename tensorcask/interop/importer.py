"""Imports: open a file, folder or store as a :class:`~.source.Source` and drive it
into columns and one commit.

:func:`open_source` picks the format (``.npy``, ``.npz``, ``.h5``/``.hdf5``,
a Zarr store given as a folder or an fsspec URL, or an image folder);
:func:`import_source` runs any source through the batched write path: in a
write checkout of the branch, each source column is created with the
source's schema (or must fit the existing column's), every batch goes to
``Column.update(keys, values)``, and one commit records it all.

Rules
-----
* Only what is new is staged: into a column that exists, each batch is
  hashed and compared with what the branch holds under its keys
  (``Column.digests``), and only missing keys are staged. Re-importing the
  same data stages nothing, and no commit is made (``committed=False``, the
  result names the unchanged head).
* Nothing is silently replaced: samples whose content differs from what the
  branch holds under the same key are counted, and the import is refused
  unless ``overwrite=True``; then they are staged too.
* All or nothing: an error (a bad value, a damaged file, an interrupt)
  drops everything the import staged, so nothing is committed or left
  staged.
* Not mixed into other work: an import refuses to start while its branch
  has staged changes, naming the remedy (commit them, or drop them with
  ``co.reset_staging_area()``). One exception keeps a killed import (kill -9,
  power loss) recoverable by running it again: staged changes that touch
  only the source's columns and hold exactly the source's values for their
  keys are the leftovers of an interrupted import of this same source, and
  the import proceeds over them. Checking that reads the source once more.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import numpy as np

from ..checkout import WriteCheckout
from ..columns import Column
from ..errors import CaskError, SchemaError
from ..hashing import canonical_dtype
from ..repository import Repository
from ..samples import prepare_batch
from .source import Batch, ColumnSpec, Source
from .util import Progress, is_url

__all__ = ["ImportResult", "import_source", "open_source"]

ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_source` did.

    Attributes
    ----------
    commit : str
        Full id of the new commit, or of the unchanged head when nothing changed.
    committed : bool
        Whether a commit was made.
    source : str
        The source, as given.
    columns : dict of str to int
        Samples imported per column.
    samples, nbytes : int
        Samples and value bytes read from the source over all columns.
    added, changed : int
        Samples the commit added, and samples it changed (``overwrite=True``),
        over all columns; the rest of ``samples`` were already there.
    """

    commit: str
    committed: bool
    source: str
    columns: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    nbytes: int = 0
    added: int = 0
    changed: int = 0


def _no_option(value: object, option: str, what: str) -> None:
    if value:
        raise ValueError(f"{option} does not apply to {what}")


def open_source(
    source: str | os.PathLike[str],
    *,
    column: str | None = None,
    keys: str | None = None,
    dataset: str | None = None,
    raw: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> Source:
    """Open ``source`` as the :class:`~.source.Source` its form names.

    A URL (``s3://``, ``memory://``, ...) is a Zarr store; a ``file://`` URL
    is read as the local path it names; a local folder is a Zarr store when it
    holds ``zarr.json``, ``.zgroup`` or ``.zarray`` (or is named ``*.zarr``),
    else an image folder; a file is read by its suffix. See
    :func:`import_source` for the options.
    """
    text = os.fspath(source)
    if text.startswith("file://"):
        text = url2pathname(urlsplit(text).path)
    if is_url(text):
        if Path(text.rstrip("/")).suffix.lower() in (".npy", ".npz", *HDF5_SUFFIXES):
            raise ValueError(
                f"{text}: only Zarr stores import from URLs; copy the file to a local path first"
            )
        _no_option(raw, "--raw (raw=True)", "Zarr stores")
        from .zarr_io import open_zarr

        return open_zarr(
            text, select=dataset, keys=keys, column=column, storage_options=storage_options
        )
    _no_option(storage_options, "--storage-option (storage_options)", f"the local path {text}")
    path = Path(text)
    if path.is_dir():
        if path.suffix.lower() == ".zarr" or any((path / m).exists() for m in ZARR_MARKERS):
            _no_option(raw, "--raw (raw=True)", "Zarr stores")
            from .zarr_io import open_zarr

            return open_zarr(text, select=dataset, keys=keys, column=column)
        what = "image folders (they give the columns images, labels and classes)"
        for value, option in ((column, "--column"), (keys, "--keys"), (dataset, "--dataset")):
            _no_option(value, option, what)
        from .images import ImageFolderSource

        return ImageFolderSource(path, raw=raw)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {text}")
    _no_option(raw, "--raw (raw=True)", f"{text} (only to image folders)")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        _no_option(keys, "--keys", ".npy files (one array: use .npz, HDF5 or Zarr for key arrays)")
        from .numpy_io import open_npy

        return open_npy(path, column=column, select=dataset)
    if suffix == ".npz":
        from .numpy_io import open_npz

        return open_npz(path, select=dataset, keys=keys, column=column)
    if suffix in HDF5_SUFFIXES:
        from .hdf5_io import open_hdf5

        return open_hdf5(path, select=dataset, keys=keys, column=column)
    raise ValueError(
        f"cannot tell the format of {text} from its suffix {suffix or '(none)'!r}; import .npy, "
        ".npz, .h5 / .hdf5 files, Zarr stores (a folder or URL) or image folders"
    )


# -- the import -------------------------------------------------------------------


def _describe(kind: str, shape: Any, dtype: Any) -> str:
    if kind != "ndarray":
        return kind
    dims = ", ".join("None" if d is None else str(d) for d in shape or ())
    return f"ndarray {np.dtype(dtype)} ({dims}{',' if len(shape or ()) == 1 else ''})"


def _fits(column: Column, spec: ColumnSpec) -> bool:
    """Whether the samples ``spec`` describes can go into the existing ``column``."""
    if column.kind != spec.kind:
        return False
    if spec.kind != "ndarray":
        return True
    assert spec.dtype is not None and spec.shape is not None
    if column.dtype != canonical_dtype(np.dtype(spec.dtype)):
        return False
    shape = column.shape or ()
    if len(shape) != len(spec.shape):
        return False
    return all(have is None or have == want for have, want in zip(shape, spec.shape, strict=True))


def _check_schemas(co: WriteCheckout, specs: list[ColumnSpec], description: str) -> None:
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{description} brings a column name twice: {names}")
    for spec in specs:
        column = co.columns.get(spec.name)
        if column is not None and not _fits(column, spec):
            raise SchemaError(
                f"column {spec.name!r} exists on branch {co.branch!r} as "
                f"{_describe(column.kind, column.shape, column.dtype)} but {description} brings "
                f"{_describe(spec.kind, spec.shape, spec.dtype)}; nothing was imported. Import "
                "it under another name (--column for a one-array source), into another branch, "
                "or delete the column first"
            )


def _create(co: WriteCheckout, spec: ColumnSpec) -> Column:
    if spec.kind == "str":
        return co.add_str_column(spec.name)
    if spec.kind == "bytes":
        return co.add_bytes_column(spec.name)
    return co.add_ndarray_column(spec.name, shape=spec.shape or (), dtype=spec.dtype)


def _same(stored: Any, value: Any) -> bool:
    if isinstance(stored, np.ndarray):
        other = np.asarray(value)
        return (
            stored.shape == other.shape
            and stored.tobytes() == other.astype(stored.dtype, copy=False).tobytes()
        )
    return bool(stored == value)


def _keys_of(batch: Batch) -> list[Any]:
    return batch.keys.tolist() if isinstance(batch.keys, np.ndarray) else list(batch.keys)


def _check_leftovers(
    co: WriteCheckout, src: Source, specs: list[ColumnSpec], progress: Progress | None
) -> None:
    """Refuse staged changes unless they are an interrupted import of ``src`` (module notes)."""
    staged = co.diff()
    names = {spec.name for spec in specs}

    def in_the_way() -> CaskError:
        summary = "; ".join(str(staged).splitlines()[:4])
        return CaskError(
            f"branch {co.branch!r} has staged changes that are not from an interrupted import "
            f"of {src.description} ({summary}); an import does not mix with other work: commit "
            f"them, or drop them with co.reset_staging_area() in a write checkout of "
            f"{co.branch!r}, then import again"
        )

    touched = set(staged.columns) | set(staged.added_columns)
    if staged.removed_columns or staged.schema_changed or not touched <= names:
        raise in_the_way()
    if any(change.removed for change in staged.columns.values()):
        raise in_the_way()
    pending = {name: set(change.added | change.changed) for name, change in staged.columns.items()}
    if not any(pending.values()):
        return
    if progress is not None:
        progress("check staged", 0, None)
    for batch in src.batches():
        want = pending.get(batch.column)
        if not want:
            continue
        keys = _keys_of(batch)
        rows = [i for i, key in enumerate(keys) if key in want]
        if not rows:
            continue
        stored = co.columns[batch.column].get_many([keys[i] for i in rows])
        for j, i in enumerate(rows):
            if not _same(stored[j], batch.values[i]):
                raise in_the_way()
        want.difference_update(keys[i] for i in rows)
    if any(pending.values()):
        raise in_the_way()


def _import(
    co: WriteCheckout,
    src: Source,
    specs: list[ColumnSpec],
    message: str | None,
    progress: Progress | None,
    overwrite: bool,
    leftovers: bool,
) -> ImportResult:
    fresh: set[str] = set()  # the columns this import creates
    columns: dict[str, Column] = {}
    for spec in specs:
        existing = co.columns.get(spec.name)
        if existing is None:
            existing = _create(co, spec)
            fresh.add(spec.name)
        columns[spec.name] = existing
    counts = dict.fromkeys(columns, 0)
    samples = nbytes = added = 0
    changed: dict[str, int] = {}
    wrote = bool(fresh) or leftovers  # a commit is due (a new column is a change)
    total, total_bytes = src.total_samples(), src.total_bytes()
    for batch in src.batches():
        column = columns.get(batch.column)
        if column is None:
            raise KeyError(f"{src.description} sent a batch for {batch.column!r}, not a column")
        n = len(batch.keys)
        if batch.column in fresh:
            column.update(batch.keys, batch.values)
            added += n
        else:
            # Stage only what the column does not hold already: an unchanged re-import
            # stages nothing, and changed samples are found without building trees.
            new, differ = _against_held(column, batch)
            added += len(new)
            if differ:
                changed[batch.column] = changed.get(batch.column, 0) + len(differ)
            rows = sorted(new + differ) if overwrite else new
            if rows:
                column.update(*_subset(batch, rows))
                wrote = True
        counts[batch.column] += n
        samples += n
        nbytes += batch.nbytes
        if progress is not None:
            progress("import bytes", nbytes, total_bytes)
            progress("import samples", samples, total)
    if changed and not overwrite:
        counts_text = ", ".join(f"{n:,} of column {name!r}" for name, n in changed.items())
        raise CaskError(
            f"importing {src.description} would change samples branch {co.branch!r} already "
            f"holds under the same keys ({counts_text}); nothing was imported. Pass "
            "overwrite=True (--overwrite) to replace them, or import into another column "
            "(--column) or branch (--branch)"
        )
    result = ImportResult(
        "", False, src.description, counts, samples, nbytes, added, sum(changed.values())
    )
    if wrote:
        if progress is not None:
            progress("commit", 0, None)
        commit = co.commit(message if message is not None else f"import {src.description}")
        return dataclasses.replace(result, commit=commit, committed=True)
    assert co.commit_id is not None  # nothing new: the head stays
    return dataclasses.replace(result, commit=co.commit_id)


def _against_held(column: Column, batch: Batch) -> tuple[list[int], list[int]]:
    """Rows of ``batch`` whose key ``column`` lacks, and rows whose content differs from
    what it holds (validated and hashed here, as ``update`` would)."""
    _, digests = prepare_batch(column.schema, batch.values, len(batch.keys), column.name)
    held = column.digests(batch.keys)
    new = [i for i, h in enumerate(held) if h is None]
    differ = [
        i
        for i, (h, digest) in enumerate(zip(held, digests, strict=True))
        if h is not None and h != digest.hex()
    ]
    return new, differ


def _subset(batch: Batch, rows: list[int]) -> tuple[Any, Any]:
    """Keys and values of ``rows`` of ``batch``."""
    if len(rows) == len(batch.keys):
        return batch.keys, batch.values
    keys, values = batch.keys, batch.values
    chosen_keys = (
        keys[np.asarray(rows)] if isinstance(keys, np.ndarray) else [keys[i] for i in rows]
    )
    if isinstance(values, np.ndarray):
        return chosen_keys, values[np.asarray(rows)]
    return chosen_keys, [values[i] for i in rows]


def import_source(
    repo: Repository | str | os.PathLike[str],
    source: str | os.PathLike[str] | Source,
    *,
    column: str | None = None,
    keys: str | None = None,
    dataset: str | None = None,
    raw: bool = False,
    branch: str | None = None,
    message: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> ImportResult:
    """Import a file, folder or store into columns and commit it once.

    Parameters
    ----------
    repo : Repository or path
        The repository (a path is opened and closed again).
    source : str, path-like or Source
        ``.npy`` (one column), ``.npz`` (one column per array), ``.h5`` /
        ``.hdf5`` (one column per dataset), a Zarr store (a folder or an
        fsspec URL; one column per array), an image folder (``images`` and
        ``labels``), or any :class:`~tensorcask.interop.source.Source`.
    column : str, optional
        Column name for a source of one array (default: the array's name;
        for ``.npy`` the file stem).
    keys : str, optional
        An array of the same file holding the keys (default ``0..N-1``, or
        the array ``<name>.keys`` beside ``<name>``).
    dataset : str, optional
        Import only this array / dataset (an HDF5 or Zarr path).
    raw : bool
        Image folders: keep the encoded files as a bytes column.
    branch : str, optional
        Branch to commit to (default: the current branch). The current
        branch stays what it was.
    message : str, optional
        Commit message (default ``"import <source>"``).
    storage_options : mapping, optional
        fsspec options for a URL source.
    progress : callable, optional
        ``progress(phase, done, total)`` (see :mod:`tensorcask.interop.util`).
    overwrite : bool
        Allow the import to change samples the branch already holds under the
        same keys (by default that is refused and nothing is imported: a
        second file imported with keys ``0..N-1`` would silently replace the
        first's samples).

    Returns
    -------
    ImportResult
        The commit (new, or the unchanged head), whether one was made, and
        what was read.

    Raises
    ------
    SchemaError
        If a column exists with a schema the source's samples do not fit.
    CaskError
        If the branch has staged changes of other work, or the import would
        change committed samples without ``overwrite=True``.
    ValueError, TypeError, KeyError, FileNotFoundError
        For unreadable, damaged or unsupported input and options that do not
        apply; nothing is committed or left staged.

    Examples
    --------
    >>> res = import_source(repo, "data/train.npz", message="MNIST train")  # doctest: +SKIP
    >>> res.columns  # doctest: +SKIP
    {'images': 60000, 'labels': 60000}
    """
    with ExitStack() as stack:
        if isinstance(source, Source):
            src, shown = source, source.description
        else:
            shown = os.fspath(source)
            src = open_source(
                source,
                column=column,
                keys=keys,
                dataset=dataset,
                raw=raw,
                storage_options=dict(storage_options) if storage_options else None,
            )
        stack.callback(src.close)
        if not isinstance(repo, Repository):
            repo = stack.enter_context(Repository(repo))
        specs = src.columns()
        if not specs:
            raise ValueError(f"{src.description} holds nothing to import")
        current = repo.current_branch
        if branch is not None and branch != current:
            # A write checkout makes its branch the current one; an import does not.
            stack.callback(_switch_back, repo, current)
        co = stack.enter_context(repo.checkout(write=True, branch=branch))
        _check_schemas(co, specs, src.description)
        leftovers = repo.staged_branch is not None
        if leftovers:
            _check_leftovers(co, src, specs, progress)
        try:
            result = _import(co, src, specs, message, progress, overwrite, leftovers)
        except BaseException:
            _drop_staged(co)
            raise
    return dataclasses.replace(result, source=shown)


def _switch_back(repo: Repository, branch: str) -> None:
    """Make ``branch`` current again (the checkout of another branch is closed by now)."""
    with contextlib.suppress(CaskError):  # e.g. it has no commits yet: nothing to restore
        repo.switch(branch)


def _drop_staged(co: WriteCheckout) -> None:
    """Reset what a failed import staged (its error, not this one's, is what matters)."""
    with contextlib.suppress(Exception):
        co.reset_staging_area()
