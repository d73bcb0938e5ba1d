"""The on-disk cache of column tables: checksummed, shared between commits, bounded.

A column table (:mod:`tensorcask.locations`) is derived data: it can always be
rebuilt from the record trees and the content index, so nothing here is
trusted blindly. Layout under ``<repo>/cache/``::

    pieces/ab/cdef…     raw bytes of one piece of one array, named by its xxh3-128
    tables/<root>.json  the manifest of one column root's table

An array is cut into pieces of a power-of-two size (at least a memory page,
at most about 1/:data:`PIECES_PER_ARRAY` of the array; the last one shorter)
and each piece is stored once under the hash of its bytes. Tables of related
commits therefore share what did not change: appending samples, or changing
values in place, leaves the pieces before the change byte-identical. A
manifest lists each array's dtype, shape, piece size and pieces, a stamp
(cache format, column root, record count) and a checksum of itself.

Loading checks the manifest's checksum and stamp, maps every piece and checks
it against its name. Where the platform allows (Linux, macOS), the pieces of
an array are mapped side by side into one reserved address range (``mmap``
with ``MAP_FIXED``): the array is contiguous, read-only and backed by the page
cache, so loader workers share it with no private copy. Elsewhere the pieces
are read into one array.

A damaged or stale table is reported as :class:`TableCacheWarning`, removed,
and rebuilt by the caller. The cache is bounded (:attr:`TableCache.limit`):
after each save the least recently loaded tables are dropped until the
pieces fit, and pieces no manifest names are deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import os
import shutil
import sys
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from .errors import CorruptionError

__all__ = [
    "CACHE_FORMAT",
    "PIECES_PER_ARRAY",
    "LazyArrays",
    "TableCache",
    "TableCacheWarning",
    "piece_bytes",
]

CACHE_FORMAT = 2
PIECES_PER_ARRAY = 16
"""An array is cut into about this many pieces: fine enough that a small change
leaves most of them shared, few enough that opening a table maps them fast."""
_ORPHAN_GRACE_S = 3600.0  # a piece no manifest names yet may belong to a save in progress
HOT_S = 600.0
"""Tables opened or saved this recently are not evicted, even over the limit:
the columns a training job reads together must not push each other out (each
eviction would make every new loader worker rebuild)."""


class TableCacheWarning(UserWarning):
    """A cached column table was damaged or stale; it is rebuilt from history."""


class _Damaged(Exception):
    """A cache file failed its check (internal: turned into a warning)."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


def _piece_name(data: memoryview | bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def _manifest_check(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "check"}
    return xxhash.xxh3_64_hexdigest(json.dumps(body, sort_keys=True).encode())


# -- mapping pieces side by side --------------------------------------------

_MAP_FIXED = 0x10  # the same value on Linux and macOS
_libc: Any = None


def _load_libc() -> Any:
    global _libc
    if _libc is None:
        if sys.platform not in ("linux", "darwin"):
            _libc = False
        else:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.mmap.restype = ctypes.c_void_p
                libc.mmap.argtypes = [
                    ctypes.c_void_p,
                    ctypes.c_size_t,
                    ctypes.c_int,
                    ctypes.c_int,
                    ctypes.c_int,
                    ctypes.c_long,
                ]
                libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
                _libc = libc
            except (OSError, AttributeError):
                _libc = False
    return _libc


def piece_bytes(total: int) -> int:
    """The piece size for an array of ``total`` bytes (a power of two, >= a page)."""
    step = mmap.PAGESIZE
    while step * PIECES_PER_ARRAY < total:
        step *= 2
    return step


def _round_up(n: int) -> int:
    page = mmap.PAGESIZE
    return (n + page - 1) // page * page


def _map_side_by_side(
    paths: list[str], sizes: list[int], total: int, step: int
) -> memoryview | None:
    """One read-only buffer over ``paths`` laid end to end, or None if unsupported."""
    libc = _load_libc()
    if not libc or step % mmap.PAGESIZE:
        return None
    reserved = _round_up(total)
    base = libc.mmap(None, reserved, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if base in (None, ctypes.c_void_p(-1).value):
        return None
    buffer = (ctypes.c_char * total).from_address(base)
    weakref.finalize(buffer, libc.munmap, base, reserved)  # unmapped with its last view
    offset = 0
    for path, size in zip(paths, sizes, strict=True):
        fd = os.open(path, os.O_RDONLY)
        try:
            if os.fstat(fd).st_size != size:
                raise _Damaged(f"{path} has the wrong size", Path(path))
            flags = mmap.MAP_SHARED | _MAP_FIXED
            if libc.mmap(base + offset, size, mmap.PROT_READ, flags, fd, 0) != base + offset:
                return None
        finally:
            os.close(fd)
        offset += size
    return memoryview(buffer).cast("B")


def _read_end_to_end(paths: list[str], sizes: list[int], total: int) -> memoryview:
    out = bytearray(total)
    view = memoryview(out)
    offset = 0
    for path, size in zip(paths, sizes, strict=True):
        with open(path, "rb") as f:
            if f.readinto(view[offset : offset + size]) != size or f.read(1):
                raise _Damaged(f"{path} has the wrong size", Path(path))
        offset += size
    return view


class LazyArrays(Mapping[str, np.ndarray]):
    """The arrays of one saved table, each mapped and checked on first access."""

    def __init__(
        self,
        cache: TableCache,
        specs: dict[str, Any],
        name: str,
        rebuild: Callable[[], Mapping[str, np.ndarray] | None] | None = None,
    ) -> None:
        self._cache = cache
        self._specs = specs
        self._name = name
        self._rebuild = rebuild
        self._mapped: dict[str, np.ndarray] = {}

    def prefetch(self, key: str) -> None:
        """Map and check ``key`` now (raises the internal damage error)."""
        if key not in self._mapped:
            self._mapped[key] = self._cache.map_array(self._specs[key])

    def __getitem__(self, key: str) -> np.ndarray:
        array = self._mapped.get(key)
        if array is None:
            spec = self._specs[key]
            try:
                array = self._cache.map_array(spec)
            except (_Damaged, OSError, ValueError, KeyError, TypeError) as exc:
                self._cache.forget(self._name, getattr(exc, "path", None))
                rebuilt = self._rebuild() if self._rebuild is not None else None
                if rebuilt is not None:  # the same arrays, from the history: carry on
                    warnings.warn(
                        f"cached column table {self._name[:16]}: {exc}; rebuilt it from the "
                        "history",
                        TableCacheWarning,
                        stacklevel=2,
                    )
                    self._mapped.update({k: v for k, v in rebuilt.items() if k in self._specs})
                    self._rebuild = None
                    return self._mapped[key]
                raise CorruptionError(
                    f"the cached column table {self._name[:16]} is damaged ({exc}); it was "
                    "removed and is rebuilt when the column is opened again",
                    path=str(getattr(exc, "path", None) or self._cache.root),
                ) from None
            self._mapped[key] = array
        return array

    def __contains__(self, key: object) -> bool:
        return key in self._specs  # without mapping it (Mapping's default would)

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


class TableCache:
    """Column tables saved per column root under ``<repo>/cache``.

    Parameters
    ----------
    root:
        The repository's ``cache`` folder.
    writable:
        Whether this process may save, touch and remove cache files.
    limit:
        Bytes of pieces to keep at most, or a function returning it
        (evaluated when a table is saved).
    """

    def __init__(self, root: Path, *, writable: bool, limit: int | Callable[[], int]) -> None:
        self.root = Path(root)
        self.pieces = self.root / "pieces"
        self.tables = self.root / "tables"
        self.writable = writable
        self._limit = limit

    @property
    def limit(self) -> int:
        """The size bound in bytes."""
        return self._limit() if callable(self._limit) else int(self._limit)

    def _manifest(self, name: str) -> Path:
        return self.tables / f"{name}.json"

    def _piece(self, piece: str) -> Path:
        return self.pieces / piece[:2] / piece[2:]

    # -- loading -----------------------------------------------------------

    def load(
        self,
        name: str,
        stamp: dict[str, Any],
        eager: Iterable[str] = (),
        rebuild: Callable[[], Mapping[str, np.ndarray] | None] | None = None,
        *,
        in_use: bool = True,
    ) -> LazyArrays | None:
        """The arrays saved as ``name``; None if absent, damaged or stale.

        The arrays named in ``eager`` are mapped and checked now; the others
        on first use: a damaged one then removes the table and is served
        from ``rebuild()`` (the caller's fresh build of the same arrays), or,
        where that is None, raises :class:`~tensorcask.errors.CorruptionError`
        naming its piece. ``in_use=False`` leaves the table's place in the
        eviction order as it was. Damaged and
        stale tables raise a :class:`TableCacheWarning` and are removed, so
        the caller's rebuild replaces them.
        """
        path = self._manifest(name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._discard(name, f"cannot read {path}: {exc}")
            return None
        try:
            doc = self._parse(path, raw)
            stale = [k for k, v in stamp.items() if doc.get(k) != v]
            if stale:
                self._discard(name, f"{path} is stale ({stale[0]} changed)")
                return None
            arrays = LazyArrays(self, doc["arrays"], name, rebuild)
            for key in eager:
                if key in arrays:
                    arrays.prefetch(key)
        except FileNotFoundError:
            return None  # evicted by another process meanwhile: simply rebuild
        except _Damaged as exc:
            self._discard(name, str(exc), exc.path)
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._discard(name, str(exc))
            return None
        if self.writable and in_use:  # (not a commit's look at its parent's table)
            with contextlib.suppress(OSError):
                os.utime(path)  # least recently used tables are evicted first
        return arrays

    @staticmethod
    def _parse(path: Path, raw: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise _Damaged(f"{path} is not a readable manifest") from None
        if not isinstance(doc, dict) or doc.get("check") != _manifest_check(doc):
            raise _Damaged(f"{path} fails its checksum")
        return doc

    def map_array(self, spec: dict[str, Any]) -> np.ndarray:
        """One array of a manifest, mapped read-only and checked against its pieces."""
        dtype = np.dtype(spec["dtype"])
        shape = tuple(int(d) for d in spec["shape"])
        total = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        pieces: list[str] = list(spec["pieces"])
        if not pieces:
            if total:
                raise _Damaged("a manifest lists no pieces for a non-empty array")
            return np.empty(shape, dtype)
        step = int(spec["piece_bytes"])
        sizes = [step] * (len(pieces) - 1) + [total - step * (len(pieces) - 1)]
        if sizes[-1] <= 0 or sizes[-1] > step:
            raise _Damaged("a manifest's pieces do not add up to its array")
        folder = str(self.pieces)  # plain strings: pathlib costs more than mmap here
        paths = [os.path.join(folder, p[:2], p[2:]) for p in pieces]
        view = _map_side_by_side(paths, sizes, total, step)
        if view is None:
            view = _read_end_to_end(paths, sizes, total)
        offset = 0
        for piece, path, size in zip(pieces, paths, sizes, strict=True):
            if _piece_name(view[offset : offset + size]) != piece:
                raise _Damaged(f"{path} fails its checksum", Path(path))
            offset += size
        array = np.frombuffer(view, dtype).reshape(shape)
        array.flags.writeable = False
        return array

    def _discard(self, name: str, why: str, piece: Path | None = None) -> None:
        """Warn that a table is damaged or stale and remove it (and a bad piece)."""
        warnings.warn(
            f"cached column table {name[:16]}: {why}; rebuilding it from the history",
            TableCacheWarning,
            stacklevel=4,
        )
        self.forget(name, piece)

    def forget(self, name: str, piece: Path | None = None) -> None:
        """Remove table ``name`` (and a damaged piece) so that it is rebuilt."""
        if self.writable:
            for path in (self._manifest(name), piece):
                if path is not None:
                    with contextlib.suppress(OSError):
                        path.unlink()  # a damaged piece must not be reused by the rebuild
        return None

    # -- saving --------------------------------------------------------------

    def save(
        self,
        name: str,
        stamp: dict[str, Any],
        arrays: dict[str, np.ndarray],
        *,
        in_use: bool = True,
    ) -> None:
        """Store ``arrays`` as ``name`` (best effort: a cache that cannot be
        written is skipped), then enforce the size bound.

        A table saved ahead of use (``in_use=False``: derived by a commit) is
        not protected from eviction as recently used (see :data:`HOT_S`) until
        something loads it.
        """
        if not self.writable:
            return
        try:
            doc: dict[str, Any] = dict(stamp)
            doc["arrays"] = {key: self._save_array(a) for key, a in sorted(arrays.items())}
            doc["check"] = _manifest_check(doc)
            self.tables.mkdir(parents=True, exist_ok=True)
            tmp = self.tables / f".{name}.{uuid.uuid4().hex}.tmp"
            tmp.write_text(json.dumps(doc, sort_keys=True))
            os.replace(tmp, self._manifest(name))
            if not in_use:
                idle = time.time() - HOT_S - 1
                os.utime(self._manifest(name), (idle, idle))
            self.enforce_limit(keep=name)
        except OSError:
            return

    def _save_array(self, array: np.ndarray) -> dict[str, Any]:
        data = np.ascontiguousarray(array)
        flat = memoryview(data.reshape(-1).view(np.uint8).data)
        pieces = []
        step = piece_bytes(len(flat))
        for start in range(0, len(flat), step):
            chunk = flat[start : start + step]
            piece = _piece_name(chunk)
            path = self._piece(piece)
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
                with open(tmp, "wb") as f:
                    f.write(chunk)
                os.replace(tmp, path)  # a torn piece fails its name check and is rebuilt
            pieces.append(piece)
        return {
            "dtype": data.dtype.str,
            "shape": list(data.shape),
            "piece_bytes": step,
            "pieces": pieces,
        }

    # -- size bound, gc, verify ------------------------------------------------

    def _manifests(self) -> dict[str, tuple[float, set[str]]]:
        """Readable manifests: name -> (last use, pieces); unreadable ones are removed."""
        out: dict[str, tuple[float, set[str]]] = {}
        if not self.tables.is_dir():
            return out
        for path in self.tables.iterdir():
            if path.is_dir():  # a table folder of an older cache format: stale
                shutil.rmtree(path, ignore_errors=True)
                continue
            if path.suffix != ".json" or path.name.startswith("."):
                if time.time() - _mtime(path) > _ORPHAN_GRACE_S:
                    with contextlib.suppress(OSError):
                        path.unlink()
                continue
            try:
                doc = self._parse(path, path.read_bytes())
                used = {p for spec in doc["arrays"].values() for p in spec["pieces"]}
            except (OSError, _Damaged, KeyError, TypeError, AttributeError):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            out[path.stem] = (_mtime(path), used)
        return out

    def _piece_sizes(self) -> dict[str, tuple[int, float]]:
        out: dict[str, tuple[int, float]] = {}
        if not self.pieces.is_dir():
            return out
        for folder in self.pieces.iterdir():
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                with contextlib.suppress(OSError):
                    st = entry.stat()
                    out[folder.name + entry.name] = (st.st_size, st.st_mtime)
        return out

    def enforce_limit(self, keep: str | None = None) -> None:
        """Drop least recently used tables until the pieces fit :attr:`limit`."""
        if self.writable:
            self._collect(keep=keep, remove=None)

    def _collect(self, *, keep: str | None, remove: set[str] | None) -> int:
        """Remove the tables in ``remove`` (None: none), then evict to the limit."""
        manifests = self._manifests()
        removed = 0
        dropped: set[str] = set()
        for name in list(manifests) if remove is not None else []:
            if remove is not None and name in remove:
                with contextlib.suppress(OSError):
                    self._manifest(name).unlink()
                    removed += 1
                dropped |= manifests.pop(name)[1]
        sizes = self._piece_sizes()
        refs: dict[str, int] = {}
        for _, used in manifests.values():
            for piece in used:
                refs[piece] = refs.get(piece, 0) + 1
        live = sum(sizes.get(p, (0, 0.0))[0] for p in refs)
        limit = self.limit
        hot = time.time() - HOT_S
        for name, (used_at, used) in sorted(manifests.items(), key=lambda item: item[1][0]):
            if live <= limit or used_at > hot:
                break  # sorted oldest first: every later one is hot too
            if name == keep:
                continue
            with contextlib.suppress(OSError):
                self._manifest(name).unlink()
            for piece in used:
                refs[piece] -= 1
                if not refs[piece]:
                    live -= sizes.get(piece, (0, 0.0))[0]
                    dropped.add(piece)
        now = time.time()
        for piece, (_, mtime) in sizes.items():
            # Unnamed pieces younger than the grace period may belong to a save
            # still writing its manifest; pieces we just dropped go at once.
            if refs.get(piece, 0) == 0 and (piece in dropped or now - mtime > _ORPHAN_GRACE_S):
                with contextlib.suppress(OSError):
                    self._piece(piece).unlink()
        return removed

    def retain(self, live: Iterable[str]) -> int:
        """Remove tables not in ``live`` and the pieces only they used; return how many."""
        if not self.writable:
            return 0
        keep = set(live)
        dead = {name for name in self._manifests() if name not in keep}
        return self._collect(keep=None, remove=dead)

    def check(self) -> list[str]:
        """Check every manifest and piece; return problems (damaged tables are removed)."""
        problems: list[str] = []
        if not self.tables.is_dir():
            return problems
        for path in sorted(self.tables.glob("*.json")):
            if path.name.startswith("."):
                continue
            try:
                doc = self._parse(path, path.read_bytes())
                for spec in doc["arrays"].values():
                    self.map_array(spec)
            except FileNotFoundError as exc:
                problems.append(f"cached column table {path}: {exc.filename} is missing")
            except (_Damaged, OSError, ValueError, KeyError, TypeError) as exc:
                problems.append(f"cached column table {path}: {exc}")
            else:
                continue
            if self.writable:
                with contextlib.suppress(OSError):
                    path.unlink()
        return problems


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
