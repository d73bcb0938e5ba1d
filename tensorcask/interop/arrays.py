"""What every array format (numpy, HDF5, Zarr) shares as an import source.

An :class:`ArraySource` is a :class:`~tensorcask.interop.source.Source` over
named arrays (:class:`Array`), each read in blocks along its first axis, the
sample axis. The numpy, HDF5 and Zarr sources differ only in how they find
and read their arrays; :func:`assemble` applies the options they share:

* ``select``: import one array (``--dataset``) instead of all.
* ``keys``: the name of an array of the same file holding the keys of every
  other array (ints >= 0 or strings, unique, one per sample); it is not
  imported as a column. Without it the keys are ``0..N-1``, except that an
  array named ``<name>.keys`` beside array ``<name>`` holds that array's keys
  (the layout :mod:`~tensorcask.interop.export` writes).
* ``column``: the column name of a source that brings exactly one array.

Column names are array names with ``/`` replaced by ``.``. Blocks hold about
:data:`BATCH_BYTES` (aligned to the array's chunks when a chunk fits), so
memory stays bounded whatever the size of the input. :func:`ragged_array`
reads a group in the ragged layout (:mod:`~tensorcask.interop.layout`) of
HDF5 and Zarr alike.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import RemoteError
from ..hashing import canonical_dtype
from ..keys import Key, encode_keys
from .layout import check_ragged, parse_shape
from .source import BATCH_BYTES, Batch, ColumnSpec, Source
from .util import remote_error

__all__ = [
    "BATCH_BYTES",
    "Array",
    "ArraySource",
    "assemble",
    "column_name",
    "column_spec",
    "load_keys",
    "ragged_array",
    "ragged_blocks",
    "read_rows",
    "rows_per_block",
]

Block = np.ndarray | list[Any]


@dataclass
class Array:
    """One named array of a source, read in consecutive blocks of samples.

    ``spec`` is None when the array cannot be a column; ``problem`` then says
    why (raised only if the array is imported).
    """

    name: str
    label: str
    length: int
    spec: ColumnSpec | None
    blocks: Callable[[], Iterator[Block]]
    row_bytes: int | None = None
    problem: str = ""


def column_name(name: str) -> str:
    """The column an array path names: ``/group/x`` -> ``group.x``."""
    return name.strip("/").replace("/", ".")


def column_spec(
    name: str, dtype: np.dtype, sample_shape: tuple[int | None, ...]
) -> tuple[ColumnSpec | None, str]:
    """The column an array of ``dtype`` with samples of ``sample_shape`` gives, or why none."""
    kind = dtype.kind
    if kind in "biufc" and not dtype.hasobject and dtype.fields is None:
        return ColumnSpec(column_name(name), "ndarray", sample_shape, canonical_dtype(dtype)), ""
    if kind in "UST" and dtype.fields is None:
        text: Literal["str", "bytes"] = "str" if kind in "UT" else "bytes"
        if sample_shape:
            return None, (
                f"has {text} samples of shape {sample_shape}: a {text} column holds one "
                f"{text} per sample; reshape it to one dimension"
            )
        return ColumnSpec(column_name(name), text), ""
    if kind == "O":
        return None, (
            "has dtype object (Python objects), which cannot be read without unpickling; "
            "save it with a numeric or string dtype (e.g. .astype('U') for text)"
        )
    return None, (
        f"has dtype {dtype}, which no column holds; convert it to a numeric dtype "
        "(or split a structured array into one array per field)"
    )


def rows_per_block(row_bytes: int, chunk_rows: int = 1) -> int:
    """Samples per block: about :data:`BATCH_BYTES`, a multiple of ``chunk_rows``
    when a chunk fits in that, else part of a chunk (h5py and zarr read those)."""
    rows = max(1, BATCH_BYTES // max(1, row_bytes))
    chunk_rows = max(1, chunk_rows)
    if chunk_rows > rows:
        return rows
    return rows // chunk_rows * chunk_rows


def block_bytes(block: Block) -> int:
    if isinstance(block, np.ndarray):
        return int(block.nbytes)
    return sum(v.nbytes if isinstance(v, np.ndarray) else len(v) for v in block)


def as_values(spec: ColumnSpec, block: Block) -> Block:
    """What ``Column.update`` takes: str and bytes as Python objects."""
    if spec.kind != "ndarray" and isinstance(block, np.ndarray):
        return list(block.tolist())
    return block


def ragged_blocks(
    offsets: np.ndarray,
    shapes: np.ndarray,
    read_values: Callable[[int, int], np.ndarray],
    itemsize: int,
) -> Iterator[list[np.ndarray]]:
    """Samples of a ragged layout: ``values[offsets[i]:offsets[i+1]].reshape(shapes[i])``.

    ``read_values(start, stop)`` reads flat elements; it is called with
    consecutive ranges of about :data:`BATCH_BYTES`.
    """
    n = len(shapes)
    target = max(1, BATCH_BYTES // max(1, itemsize))
    a = 0
    while a < n:
        b = int(np.searchsorted(offsets, offsets[a] + target, side="right")) - 1
        b = min(n, max(a + 1, b))
        flat = read_values(int(offsets[a]), int(offsets[b]))
        base = int(offsets[a])
        yield [
            flat[int(offsets[i]) - base : int(offsets[i + 1]) - base].reshape(shapes[i])
            for i in range(a, b)
        ]
        a = b


def _read_all(array: Array) -> Block:
    parts = list(array.blocks())
    if parts and isinstance(parts[0], list):
        return [v for part in parts for v in part]
    if not parts:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([np.asarray(p) for p in parts])


def load_keys(array: Array) -> np.ndarray | list[str]:
    """The keys an array holds: ints >= 0 or strings (bytes decoded as UTF-8), unique."""
    values = _read_all(array)
    if isinstance(values, np.ndarray) and values.ndim != 1:
        raise ValueError(f"key array {array.label} must be one-dimensional, not {values.shape}")
    keys: np.ndarray | list[str]
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        keys = values.astype(np.uint64 if values.dtype.kind == "u" else np.int64)
        if len(np.unique(keys)) != len(keys):
            uniq, counts = np.unique(keys, return_counts=True)
            raise ValueError(
                f"key array {array.label} holds key {int(uniq[counts > 1][0])} more than once; "
                "keys must be unique"
            )
    else:
        items = values.tolist() if isinstance(values, np.ndarray) else values
        if not all(isinstance(k, str | bytes) for k in items):
            kind = values.dtype if isinstance(values, np.ndarray) else "mixed values"
            raise TypeError(
                f"key array {array.label} holds {kind}; keys must be ints >= 0 or strings"
            )
        try:
            keys = [k.decode("utf-8") if isinstance(k, bytes) else k for k in items]
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"key array {array.label} holds bytes that are not UTF-8 ({exc}); store str keys"
            ) from None
        if len(set(keys)) != len(keys):
            dup = next(k for k, count in Counter(keys).items() if count > 1)
            raise ValueError(
                f"key array {array.label} holds key {dup!r} more than once; keys must be unique"
            )
    try:
        encode_keys(keys)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"key array {array.label}: {exc}") from None
    return keys


class ArraySource(Source):
    """Named arrays, each read block by block as one column; see :func:`assemble`."""

    def __init__(
        self,
        description: str,
        entries: Sequence[tuple[Array, np.ndarray | list[str] | None]],
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.description = description
        self.entries = list(entries)
        self._on_close = on_close

    def columns(self) -> list[ColumnSpec]:
        return [array.spec for array, _ in self.entries if array.spec is not None]

    def batches(self) -> Iterator[Batch]:
        for array, keys in self.entries:
            spec = array.spec
            assert spec is not None
            start = 0
            for block in array.blocks():
                n = len(block)
                if not n:
                    continue
                stop = start + n
                if stop > array.length:
                    break
                batch_keys: Sequence[Key] | np.ndarray = (
                    np.arange(start, stop, dtype=np.int64) if keys is None else keys[start:stop]
                )
                yield Batch(spec.name, batch_keys, as_values(spec, block), block_bytes(block))
                start = stop
            if start != array.length:
                raise ValueError(
                    f"{array.label} ended after {start} of its {array.length} samples: the file "
                    "is truncated or damaged; write it again"
                )

    def total_samples(self) -> int | None:
        return sum(array.length for array, _ in self.entries)

    def total_bytes(self) -> int | None:
        sizes = [array.row_bytes for array, _ in self.entries]
        if any(size is None for size in sizes):
            return None
        return sum(
            (size or 0) * array.length for size, (array, _) in zip(sizes, self.entries, strict=True)
        )

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


def _find(arrays: list[Array], name: str, what: str, where: str) -> Array:
    wanted = name.strip("/")
    for array in arrays:
        if array.name == wanted:
            return array
    listing = ", ".join(a.name for a in arrays) or "nothing"
    raise KeyError(f"no {what} {name!r} in {where}; it holds: {listing}")


def assemble(
    description: str,
    arrays: list[Array],
    *,
    where: str,
    select: str | None = None,
    keys: str | None = None,
    column: str | None = None,
    on_close: Callable[[], None] | None = None,
) -> ArraySource:
    """An :class:`ArraySource` over ``arrays`` with the shared options applied (module notes).

    Raises ``KeyError`` for a ``select`` or ``keys`` name the source lacks and
    ``ValueError`` (or :class:`~tensorcask.errors.SchemaError`) for key arrays
    of the wrong length or content and arrays no column can hold.
    """
    by_name = {a.name: a for a in arrays}
    shared: np.ndarray | list[str] | None = None
    key_array: Array | None = None
    if keys is not None:
        key_array = _find(arrays, keys, "key array", where)
        shared = load_keys(key_array)
    chosen = [_find(arrays, select, "array", where)] if select is not None else list(arrays)
    sidecars = {f"{a.name}.keys" for a in arrays if f"{a.name}.keys" in by_name}
    chosen = [a for a in chosen if a is not key_array and (select or a.name not in sidecars)]
    if not chosen:
        raise ValueError(f"{where} holds no arrays to import besides the key array {keys!r}")
    if column is not None and len(chosen) != 1:
        raise ValueError(
            f"--column names the column of a source with one array, but {where} holds "
            f"{len(chosen)} ({', '.join(a.name for a in chosen)}); drop --column to import each "
            "under its own name, or pick one with --dataset"
        )
    entries: list[tuple[Array, np.ndarray | list[str] | None]] = []
    for array in chosen:
        if array.spec is None:
            raise ValueError(f"{array.label} {array.problem}")
        if column is not None:
            array.spec = ColumnSpec(column, array.spec.kind, array.spec.shape, array.spec.dtype)
        own = shared
        if own is None and f"{array.name}.keys" in by_name and keys is None:
            own = load_keys(by_name[f"{array.name}.keys"])
        if own is not None and len(own) != array.length:
            source = key_array.label if key_array else f"{array.name}.keys"
            raise ValueError(
                f"key array {source} holds {len(own)} keys but {array.label} has "
                f"{array.length} samples; a key array needs one key per sample"
            )
        entries.append((array, own))
    names = [a.spec.name for a, _ in entries if a.spec is not None]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: two arrays map to the same column name ({sorted(names)})")
    return ArraySource(description, entries, on_close)


def read_rows(
    reader: Any,
    a: int,
    b: int,
    label: str,
    *,
    errors: tuple[type[BaseException], ...] = (OSError,),
    what: str = "file",
    url: str | None = None,
) -> Any:
    """``reader[a:b]``; a read error (one of ``errors``) says the ``what`` holding the
    array is damaged, and a network error of a ``url`` store is a
    :class:`~tensorcask.errors.RemoteError`."""
    try:
        return reader[a:b]
    except Exception as exc:
        if url is not None and (remote := remote_error(exc, url)) is not None:
            raise remote from exc
        if isinstance(exc, errors) and not isinstance(exc, RemoteError | UnicodeDecodeError):
            raise ValueError(
                f"{label} could not be read at samples {a}:{b} ({exc}); the {what} is damaged"
            ) from None
        raise


def ragged_array(
    group: Any,
    name: str,
    label: str,
    shape_attr: Any,
    read: Callable[[Any, int, int], np.ndarray],
) -> Array:
    """A group holding ``values``, ``offsets`` and ``shapes`` (h5py or zarr) as one
    variable-shape column; ``shape_attr`` is its recorded shape (or None),
    ``read(values, start, stop)`` reads flat values."""
    try:
        values, offsets_arr, shapes_arr = (group[p] for p in ("values", "offsets", "shapes"))
    except KeyError:
        raise ValueError(
            f"{label} is marked as a ragged group but lacks 'values', 'offsets' or 'shapes'"
        ) from None
    offsets = np.asarray(offsets_arr[...], dtype=np.int64)
    shapes = np.asarray(shapes_arr[...], dtype=np.int64)
    check_ragged(label, offsets, shapes, int(values.shape[0]) if len(values.shape) == 1 else -1)
    shape = parse_shape(shape_attr, label, shapes)
    dtype = np.dtype(np.dtype(values.dtype).str)
    spec, problem = column_spec(name, dtype, shape)

    def blocks() -> Iterator[list[np.ndarray]]:
        yield from ragged_blocks(offsets, shapes, lambda a, b: read(values, a, b), dtype.itemsize)

    return Array(name, label, len(shapes), spec, blocks, None, problem)
