"""numpy files (``.npy``, ``.npz``) as import sources.

A ``.npy`` file is one array, memory-mapped; an ``.npz`` file one array per
member, each streamed (stored or deflated; a Fortran-order member is spooled
to a temporary file and memory-mapped), so memory stays bounded by one block
(about :data:`~tensorcask.interop.arrays.BATCH_BYTES`) whatever the size of
the file. The options shared with HDF5 and Zarr (``select``, ``keys``,
``column``) are those of :func:`~tensorcask.interop.arrays.assemble`.

An ``.npz`` file written by :class:`~tensorcask.interop.npz_writer.NpzWriter`
carries a manifest (member
``__tensorcask__``, see :mod:`~tensorcask.interop.export`) naming every
column's members, layout and shape; it is followed as written, whatever the
column names. Without one, three members ``<name>.values``,
``<name>.offsets`` and ``<name>.shapes`` form one variable-shape column whose
dimensions that vary between samples are variable (``None``), the others
fixed; ``<name>.values`` (``uint8``) and ``<name>.offsets`` without
``shapes`` form one bytes column.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from . import arrays
from .arrays import Array, ArraySource, assemble, column_spec, ragged_blocks, rows_per_block
from .layout import (
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    NPZ_MANIFEST,
    RAGGED_PARTS,
    check_ragged,
    parse_shape,
)

__all__ = ["open_npy", "open_npz"]


def _read_header(fp: IO[bytes], label: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from the header of an ``.npy`` stream."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            return fmt.read_array_header_1_0(fp)
        if version == (2, 0):
            return fmt.read_array_header_2_0(fp)
        raise ValueError(f"format version {version} is not supported")
    except (ValueError, EOFError, SyntaxError) as exc:
        raise ValueError(
            f"{label} is not a readable .npy array ({exc}); write it with numpy.save"
        ) from None


def _fixed_array(
    name: str,
    label: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    reader: Callable[[int], Iterator[np.ndarray]],
    scalar_hint: str = "save it as shape (1,)",
) -> Array:
    """An :class:`Array` of a header's shape and dtype; ``reader(step)`` yields the blocks."""
    if not shape:
        spec, problem = None, f"is a scalar (shape ()): it has no sample axis; {scalar_hint}"
    else:
        spec, problem = column_spec(name, dtype, tuple(shape[1:]))
    row_bytes = int(math.prod(shape[1:])) * dtype.itemsize if shape else 0
    step = rows_per_block(row_bytes)
    return Array(
        name, label, shape[0] if shape else 0, spec, lambda: reader(step), row_bytes, problem
    )


def open_npy(
    path: str | os.PathLike[str], *, column: str | None = None, select: str | None = None
) -> ArraySource:
    """A ``.npy`` file as one column (named ``column``, default the file stem), memory-mapped."""
    path = Path(path)
    label = f"array {path}"
    with open(path, "rb") as fp:
        shape, _, dtype = _read_header(fp, str(path))
        data_start = fp.tell()
    size = path.stat().st_size
    expected = data_start + int(math.prod(shape)) * dtype.itemsize
    if dtype.kind != "O" and size < expected:
        raise ValueError(
            f"{path} is truncated: its header announces shape {shape} of {dtype} "
            f"({expected} bytes with the header) but the file holds {size} bytes; write it again"
        )

    def reader(step: int) -> Iterator[np.ndarray]:
        if not shape or not shape[0]:
            return
        data = np.load(path, mmap_mode="r", allow_pickle=False)
        for a in range(0, shape[0], step):
            yield data[a : a + step]

    array = _fixed_array(path.stem, label, shape, dtype, reader)
    if select is not None and select.strip("/") != array.name:
        raise KeyError(f"no array {select!r} in {path}; it holds one array: {array.name}")
    return assemble(str(path), [array], where=str(path), column=column)


def _fortran_blocks(
    fp: IO[bytes], shape: tuple[int, ...], dtype: np.dtype, step: int, label: str
) -> Iterator[np.ndarray]:
    """Row blocks of a Fortran-order member: its rows are not contiguous, so the
    member is spooled to a temporary file and memory-mapped."""
    size = int(math.prod(shape)) * dtype.itemsize
    with tempfile.TemporaryFile() as spool:
        copied = 0
        while copied < size:
            data = fp.read(min(arrays.BATCH_BYTES, size - copied))
            if not data:
                raise ValueError(f"{label} is truncated; write the file again")
            spool.write(data)
            copied += len(data)
        spool.flush()
        mapped = np.memmap(spool, dtype=dtype, mode="r", shape=shape, order="F")
        try:
            for a in range(0, shape[0], step):
                yield np.array(mapped[a : a + step], order="C")
        finally:
            del mapped


def _member_reader(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str
) -> Callable[[int], Iterator[np.ndarray]]:
    """``reader(step)``: the blocks of one ``.npz`` member, streamed."""

    def reader(step: int) -> Iterator[np.ndarray]:
        try:
            with zf.open(info) as fp:
                shape, fortran, dtype = _read_header(fp, label)
                if not shape or not shape[0]:
                    return
                if fortran:
                    yield from _fortran_blocks(fp, shape, dtype, step, label)
                    return
                row = int(math.prod(shape[1:])) * dtype.itemsize
                for a in range(0, shape[0], step):
                    rows = min(step, shape[0] - a)
                    data = fp.read(rows * row)
                    if len(data) < rows * row:
                        raise ValueError(f"{label} is truncated; write the file again")
                    yield np.frombuffer(data, dtype).reshape((rows, *shape[1:]))
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise ValueError(f"{label} is damaged ({exc}); write the file again") from None

    return reader


def _load_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> np.ndarray:
    """A whole (small) member, of its own shape also when it holds no rows."""
    with zf.open(info) as fp:
        shape, _, dtype = _read_header(fp, label)
        if not shape:
            data = fp.read(dtype.itemsize)
            if len(data) < dtype.itemsize:
                raise ValueError(f"{label} is truncated; write the file again")
            return np.frombuffer(data, dtype).reshape(())
    parts = list(_member_reader(zf, info, label)(1 << 62))
    return parts[0] if parts else np.empty(shape, dtype=dtype)


def _ragged_member(
    zf: zipfile.ZipFile,
    name: str,
    parts: dict[str, zipfile.ZipInfo],
    where: str,
    *,
    as_bytes: bool | None = None,
    shape: Any = None,
) -> Array:
    """Members ``values``, ``offsets`` (and ``shapes``) as one column: variable-shape
    arrays (of ``shape`` when recorded), or without ``shapes`` and of ``uint8``,
    bytes (``as_bytes`` when the manifest says so)."""
    label = f"ragged array {name!r} of {where}"
    with zf.open(parts["values"]) as fp:
        values_shape, _, dtype = _read_header(fp, label)
    offsets = np.asarray(_load_member(zf, parts["offsets"], label), dtype=np.int64)
    if as_bytes is None:
        as_bytes = "shapes" not in parts and dtype == np.uint8
    if "shapes" in parts:
        shapes = np.asarray(_load_member(zf, parts["shapes"], label), dtype=np.int64)
    else:
        shapes = np.diff(offsets).reshape(-1, 1) if offsets.ndim == 1 else offsets
    size = int(values_shape[0]) if len(values_shape) == 1 else -1
    check_ragged(label, offsets, shapes, size)
    if as_bytes:
        spec, problem = column_spec(name, np.dtype("S1"), ())
    else:
        spec, problem = column_spec(name, dtype, parse_shape(shape, label, shapes))

    def blocks() -> Iterator[list[Any]]:
        stream = _member_reader(zf, parts["values"], label)(rows_per_block(dtype.itemsize))
        pending = np.empty(0, dtype=dtype)

        def read_values(start: int, stop: int) -> np.ndarray:
            nonlocal pending
            want = stop - start
            chunks = [pending]
            have = len(pending)
            while have < want:
                chunk = next(stream)
                chunks.append(chunk)
                have += len(chunk)
            joined = np.concatenate(chunks) if len(chunks) > 1 else pending
            pending = joined[want:]
            return joined[:want]

        for block in ragged_blocks(offsets, shapes, read_values, dtype.itemsize):
            yield [v.tobytes() for v in block] if as_bytes else block

    return Array(name, label, len(shapes), spec, blocks, None, problem)


def _read_manifest(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> list[dict[str, Any]]:
    """The column entries of an ``.npz`` manifest, checked."""
    label = f"manifest {NPZ_MANIFEST!r} of {path}"
    try:
        text = str(_load_member(zf, info, label)[()])
        manifest = json.loads(text)
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {manifest.get('format')!r} is not {MANIFEST_FORMAT!r}")
        if manifest.get("version") != MANIFEST_VERSION:
            raise ValueError(f"version {manifest.get('version')!r} is not {MANIFEST_VERSION}")
        columns = manifest["columns"]
        for entry in columns:
            if entry["layout"] not in ("fixed", "ragged", "str", "bytes"):
                raise ValueError(f"unknown layout {entry['layout']!r}")
            if not isinstance(entry["name"], str) or not isinstance(entry["members"], dict):
                raise ValueError("a column entry lacks its name or members")
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(
            f"{label} is not readable ({type(exc).__name__}: {exc}); the file is damaged or "
            "was written by a newer tensorcask; export it again, or remove the member to import "
            "the arrays as they are"
        ) from None
    return list(columns)


def _manifest_arrays(
    zf: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], path: Path
) -> list[Array]:
    """The columns a manifest lists (with their key arrays), then any other member as is."""
    found: list[Array] = []
    claimed = {NPZ_MANIFEST}
    for entry in _read_manifest(zf, members[NPZ_MANIFEST], path):
        name, layout = entry["name"], entry["layout"]
        names: dict[str, str] = entry["members"]
        missing = [m for m in names.values() if m not in members]
        if missing:
            raise ValueError(
                f"{path}: its manifest lists member {missing[0]!r} of column {name!r}, which is "
                "missing; the file is damaged or was edited: export it again"
            )
        claimed.update(names.values())
        if layout in ("ragged", "bytes"):
            parts = {p: members[names[p]] for p in RAGGED_PARTS if p in names}
            found.append(
                _ragged_member(
                    zf, name, parts, str(path), as_bytes=layout == "bytes", shape=entry.get("shape")
                )
            )
        else:
            found.append(_plain_array(zf, name, members[names["data"]], path))
        if "keys" in names:
            found.append(_plain_array(zf, f"{name}.keys", members[names["keys"]], path))
    found += [_plain_array(zf, n, info, path) for n, info in members.items() if n not in claimed]
    return found


def _plain_array(zf: zipfile.ZipFile, name: str, info: zipfile.ZipInfo, path: Path) -> Array:
    label = f"array {name!r} of {path}"
    with zf.open(info) as fp:
        shape, _, dtype = _read_header(fp, label)
    hint = "pick other members with --dataset NAME, or save it with shape (1,)"
    return _fixed_array(name, label, shape, dtype, _member_reader(zf, info, label), hint)


def _guessed_arrays(
    zf: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], path: Path
) -> list[Array]:
    """The arrays of an ``.npz`` without a manifest, ragged layouts told by member names."""
    ragged = {
        name[: -len(".values")]
        for name in members
        if name.endswith(".values") and f"{name[: -len('.values')]}.offsets" in members
    }
    in_ragged = {f"{r}.{p}" for r in ragged for p in RAGGED_PARTS}
    found = [_plain_array(zf, n, info, path) for n, info in members.items() if n not in in_ragged]
    for name in sorted(ragged):
        parts = {p: members[f"{name}.{p}"] for p in RAGGED_PARTS if f"{name}.{p}" in members}
        found.append(_ragged_member(zf, name, parts, str(path)))
    return found


def open_npz(
    path: str | os.PathLike[str],
    *,
    select: str | None = None,
    keys: str | None = None,
    column: str | None = None,
) -> ArraySource:
    """An ``.npz`` file, one column per array, each streamed member by member."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ValueError(
            f"{path} is not a valid .npz file ({exc}); write it with numpy.savez"
        ) from None
    try:
        members = {
            info.filename[:-4]: info for info in zf.infolist() if info.filename.endswith(".npy")
        }
        if not members:
            raise ValueError(f"{path} holds no .npy arrays; write it with numpy.savez")
        if NPZ_MANIFEST in members:
            found = _manifest_arrays(zf, members, path)
        else:
            found = _guessed_arrays(zf, members, path)
        found.sort(key=lambda a: a.name)
        return assemble(
            str(path),
            found,
            where=str(path),
            select=select,
            keys=keys,
            column=column,
            on_close=zf.close,
        )
    except BaseException:
        zf.close()
        raise
