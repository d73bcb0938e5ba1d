"""The registry of storage backends, by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tensorcask.storage.base import Backend
from tensorcask.storage.hdf5 import HDF5Backend
from tensorcask.storage.lmdb_backend import LMDBBackend
from tensorcask.storage.memmap import MemmapBackend
from tensorcask.storage.memory import MemoryBackend

__all__ = ["BACKENDS", "open_backend"]

BACKENDS: dict[str, type[Backend]] = {
    backend.name: backend for backend in (MemoryBackend, MemmapBackend, HDF5Backend, LMDBBackend)
}
"""Backend classes by their registry name (``Location.backend``)."""


def open_backend(name: str, root: Path, *, writable: bool, **options: Any) -> Backend:
    """Open the backend registered as ``name``.

    Parameters
    ----------
    name:
        Registry name: ``"memory"``, ``"memmap"``, ``"hdf5"`` or ``"lmdb"``.
    root:
        Directory the backend owns.
    writable:
        Whether the instance may append.
    **options:
        Backend-specific keyword arguments (``compression`` for hdf5,
        ``store`` for memory).

    Raises
    ------
    ValueError
        If no backend has that name.
    """
    try:
        backend = BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise ValueError(f"unknown storage backend {name!r}; known backends: {known}") from None
    return backend(Path(root), writable=writable, **options)
