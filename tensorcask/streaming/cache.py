"""Where checked pieces are kept: a folder bounded in bytes, or memory.

:class:`DiskCache` keeps pieces in a folder that any number of processes
share (DataLoader workers, several jobs on one node)::

    <cache_dir>/samples/<2 hex>/<piece name>   one checked piece
    <cache_dir>/samples/.tmp/...               pieces being written
    <cache_dir>/samples/.claims/<piece name>   a process fetching that piece (its pid)
    <cache_dir>/samples/.lock, .usage          the bound's lock and ledger

Rules that make sharing safe without a server or a daemon:

* **Only checked bytes get a name.** A piece is checked against the names of
  all its entries *before* it is written, under a temporary name, then
  renamed into place. A download killed at any point leaves at most a
  temporary file, which is never read and is swept later.
* **A file is checked before use.** Each file starts with a header holding
  its length and the xxh3-64 of its body; a process checks it when it first
  maps the file and drops (and removes) one that fails: a torn write after a
  power cut, a flipped bit. Mapped files are kept open, so a second epoch
  reads at local speed.
* **One process fetches a piece.** Before fetching a piece a process
  creates its claim file (exclusively); others that find a live claim wait
  for the piece to appear instead of fetching it too (DataLoader workers
  read neighbouring batches, which share pieces). A claim whose process is
  gone, or older than two minutes, is taken over.
* **The bound holds.** Writers take a lock (``fcntl.flock``) on ``.lock``
  to add to the ledger ``.usage``; a writer that would go over the limit
  first removes the least recently used pieces (file mtimes, refreshed when a
  process maps a piece) down to 90% of it. Removing a file another process
  has mapped is safe: its mapping stays valid.

:class:`MemoryCache` is the same contract in one process's memory, for nodes
without scratch disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path

import xxhash

__all__ = [
    "DEFAULT_DISK_LIMIT",
    "DEFAULT_MEMORY_LIMIT",
    "DiskCache",
    "MemoryCache",
    "PieceCache",
]

DEFAULT_DISK_LIMIT = 16 << 30
DEFAULT_MEMORY_LIMIT = 512 << 20

_MAGIC = b"TCPIECE1"
_HEAD = struct.Struct("<8sQQ")  # magic, body length, xxh3-64 of the body
_MAPS = 4096  # files a process keeps mapped (well under vm.max_map_count)
_TOUCH_EVERY = 60.0  # seconds between mtime refreshes of one piece by one process
_LOW_WATER = 0.9  # eviction frees space down to this fraction of the limit
_STALE_TMP = 3600.0  # temporary files older than this are from killed writers
_CLAIM_STALE = 120.0  # a claim this old is a fetcher's that hung or died


class PieceCache:
    """Checked pieces by name (what both caches offer)."""

    limit: int

    def get(self, name: str) -> memoryview | None:
        """The piece, or None if it is not cached (or failed its check and was dropped)."""
        raise NotImplementedError

    def put(self, name: str, data: bytes) -> None:
        """Keep a checked piece (best effort: a cache that cannot take it skips it)."""
        raise NotImplementedError

    def usage(self) -> int:
        """Bytes the cache holds now."""
        raise NotImplementedError

    def claim(self, name: str) -> bool:
        """Take the fetching of ``name`` for this process: False while another process
        sharing the cache fetches it (then wait for it to appear, or for the claim to go)."""
        return True

    def claimed(self, name: str) -> bool:
        """Whether another live process is fetching ``name``."""
        return False

    def release(self, name: str) -> None:
        """Give up a claim (after the piece was put, or the fetch failed)."""

    def retain_packs(self, packs: AbstractSet[str], mark: str) -> int:
        """Drop the pieces of packs not in ``packs``: a purge rewrote those packs without
        the purged samples, and their pieces may hold them. How many were dropped.

        ``mark`` names the purges this was done for: a second call with the
        same ``mark`` does nothing.
        """
        return 0


class MemoryCache(PieceCache):
    """Pieces in this process's memory, least recently used dropped beyond ``limit`` bytes."""

    def __init__(self, limit: int = DEFAULT_MEMORY_LIMIT) -> None:
        self.limit = int(limit)
        self._pieces: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, name: str) -> memoryview | None:
        with self._lock:
            data = self._pieces.get(name)
            if data is None:
                return None
            self._pieces.move_to_end(name)
            return memoryview(data)

    def put(self, name: str, data: bytes) -> None:
        if len(data) > self.limit:
            return
        with self._lock:
            if name in self._pieces:
                return
            while self._pieces and self._bytes + len(data) > self.limit:
                _, old = self._pieces.popitem(last=False)
                self._bytes -= len(old)
            self._pieces[name] = bytes(data)
            self._bytes += len(data)

    def usage(self) -> int:
        with self._lock:
            return self._bytes

    def retain_packs(self, packs: AbstractSet[str], mark: str) -> int:
        with self._lock:
            stale = [n for n in self._pieces if n.split(".", 1)[0] not in packs]
            for name in stale:
                self._bytes -= len(self._pieces.pop(name))
        return len(stale)


class DiskCache(PieceCache):
    """Pieces in a folder shared by processes, at most ``limit`` bytes of them."""

    def __init__(self, root: str | os.PathLike[str], limit: int = DEFAULT_DISK_LIMIT) -> None:
        self.root = Path(root)
        self._folder = str(self.root)
        self.limit = int(limit)
        self.tmp = self.root / ".tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        (self.root / ".claims").mkdir(exist_ok=True)
        self._maps: OrderedDict[str, tuple[mmap.mmap, memoryview]] = OrderedDict()
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def path(self, name: str) -> Path:
        """Where the piece ``name`` is kept."""
        return self.root / name[:2] / name

    # -- reading ---------------------------------------------------------

    def get(self, name: str) -> memoryview | None:
        self._after_fork()
        with self._lock:
            found = self._maps.get(name)
            if found is not None:
                self._maps.move_to_end(name)
                self._touch(name)
                return found[1]
        opened = self._open(name)
        if opened is None:
            return None
        with self._lock:
            if name not in self._maps:
                self._maps[name] = opened
                while len(self._maps) > _MAPS:
                    self._maps.popitem(last=False)  # the mapping closes with its last view
            return self._maps[name][1]

    def _open(self, name: str) -> tuple[mmap.mmap, memoryview] | None:
        path = os.path.join(self._folder, name[:2], name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError:
            self._drop(Path(path))
            return None
        try:
            st = os.fstat(fd)
            if st.st_size < _HEAD.size:
                raise ValueError("shorter than its header")
            mapped = mmap.mmap(fd, st.st_size, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            self._drop(Path(path))
            return None
        finally:
            os.close(fd)
        magic, length, check = _HEAD.unpack_from(mapped)
        body = memoryview(mapped)[_HEAD.size :]
        if magic != _MAGIC or length != len(body) or xxhash.xxh3_64_intdigest(body) != check:
            body.release()
            mapped.close()
            self._drop(Path(path))  # torn or damaged: it is only a cache, fetch it again
            return None
        if time.time() - st.st_mtime >= _TOUCH_EVERY:  # least recently used go first
            with contextlib.suppress(OSError):
                os.utime(path)
        self._touched[name] = time.monotonic()
        return mapped, body

    def _touch(self, name: str) -> None:
        now = time.monotonic()
        if now - self._touched.get(name, now) >= _TOUCH_EVERY:
            self._touched[name] = now
            with contextlib.suppress(OSError):
                os.utime(self.path(name))

    def _drop(self, path: Path) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            return
        with self._locked():
            self._write_usage(max(self._read_usage() - size, 0))

    def _after_fork(self) -> None:
        if self._pid != os.getpid():  # a forked worker: its parent's lock is not its own
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self._maps = OrderedDict(self._maps)

    # -- claims: one process fetches a piece, the others wait for it ------

    def _claim_path(self, name: str) -> str:
        return os.path.join(self._folder, ".claims", name)

    def claim(self, name: str) -> bool:
        path = self._claim_path(name)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self.claimed(name):
                    return False
                with contextlib.suppress(OSError):
                    os.unlink(path)  # its holder died: take it over
                continue
            except OSError:
                return True  # claims cannot be made here: fetch, as without a cache
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return True
        return True

    def claimed(self, name: str) -> bool:
        path = self._claim_path(name)
        try:
            with open(path) as f:
                text = f.read()
            age = time.time() - os.stat(path).st_mtime
        except OSError:
            return False
        if age > _CLAIM_STALE:
            return False
        if not text.strip().isdigit():
            return True  # being written this instant
        try:
            os.kill(int(text), 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True  # alive, another user's
        return True

    def release(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._claim_path(name))

    # -- writing ---------------------------------------------------------

    def put(self, name: str, data: bytes) -> None:
        self._after_fork()
        size = _HEAD.size + len(data)
        if size > self.limit * _LOW_WATER:
            return
        path = self.path(name)
        tmp = self.tmp / f"{uuid.uuid4().hex}.{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                f.write(_HEAD.pack(_MAGIC, len(data), xxhash.xxh3_64_intdigest(data)))
                f.write(data)
            with self._locked():
                if path.exists():  # another process fetched it first
                    return
                usage = self._read_usage()
                if usage + size > self.limit:
                    usage = self._evict(size)
                path.parent.mkdir(exist_ok=True)
                # counted before it appears: a writer killed in between leaves the ledger
                # high (the next eviction recounts), never low (which would break the bound)
                self._write_usage(usage + size)
                try:
                    os.replace(tmp, path)
                except OSError:
                    self._write_usage(usage)
                    raise
        except OSError:
            return  # a full or read-only disk: read on without caching
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _evict(self, needed: int) -> int:
        """Remove least recently used pieces until ``needed`` more bytes fit under the low
        water mark; returns the bytes left. Called under the lock."""
        files = []
        usage = 0
        for entry in self._scan():
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_size, entry.path))
            usage += st.st_size
        files.sort()
        target = max(int(self.limit * _LOW_WATER) - needed, 0)
        for _, size, path in files:
            if usage <= target:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                usage -= size
        self._sweep_tmp()
        return usage

    def _scan(self) -> list[os.DirEntry[str]]:
        out: list[os.DirEntry[str]] = []
        with os.scandir(self.root) as top:
            for folder in top:
                if folder.name.startswith(".") or not folder.is_dir():
                    continue
                with contextlib.suppress(FileNotFoundError), os.scandir(folder.path) as files:
                    out.extend(f for f in files if f.is_file())
        return out

    def retain_packs(self, packs: AbstractSet[str], mark: str) -> int:
        marker = self.root / ".purges"
        with contextlib.suppress(OSError):
            if marker.read_text() == mark:
                return 0
        dropped = 0
        for entry in self._scan():
            if entry.name.split(".", 1)[0] not in packs:
                self._drop(Path(entry.path))
                dropped += 1
        with self._lock:
            for name in [n for n in self._maps if n.split(".", 1)[0] not in packs]:
                self._maps.pop(name)
        tmp = self.tmp / f"purges.{os.getpid()}"
        tmp.write_text(mark)
        os.replace(tmp, marker)
        return dropped

    def _sweep_tmp(self) -> None:
        cutoff = time.time() - _STALE_TMP
        with contextlib.suppress(OSError), os.scandir(self.tmp) as files:
            for f in files:
                with contextlib.suppress(OSError):
                    if f.stat().st_mtime < cutoff:
                        os.unlink(f.path)

    def usage(self) -> int:
        """Bytes of pieces in the folder now (counted afresh)."""
        total = 0
        for entry in self._scan():
            with contextlib.suppress(FileNotFoundError):
                total += entry.stat().st_size
        return total

    # -- the ledger ------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _read_usage(self) -> int:
        """The ledger's byte count; counted afresh when it is missing or unreadable."""
        try:
            return int((self.root / ".usage").read_text())
        except (OSError, ValueError):
            return self.usage()

    def _write_usage(self, usage: int) -> None:
        tmp = self.root / f".usage.{os.getpid()}"
        tmp.write_text(str(usage))
        os.replace(tmp, self.root / ".usage")
