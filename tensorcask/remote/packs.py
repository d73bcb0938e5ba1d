"""Packs: many immutable, named entries in one remote object, found through an index.

A remote keeps history objects and sample bytes in packs, so that a million
samples do not become a million objects. A pack is written once and never
changed; it is named by the hash of its bytes. Its index (``<id>.idx``,
written after the pack and so the mark that the pack is complete) lists the
sorted entry names with their offset and size. ``docs/remote-format.md``
describes both formats.

:class:`PackSet` is the packs of one folder: it lists the indexes once,
keeps them in memory (they never change) and lists again only when a name is
not found, reads entries by coalesced ranged reads, and writes new packs.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import CorruptionError
from .transport import Transport

__all__ = [
    "IDX_MAGIC",
    "Located",
    "PACK_MAGIC",
    "PackIndex",
    "PackSet",
    "decode_index",
    "encode_pack",
    "entry_key",
]

PACK_MAGIC = b"TCPACK\x00\x01"
IDX_MAGIC = b"TCIDX\x00\x00\x01"
_IDX_HEAD = struct.Struct("<8sQQ")  # magic, entry count, pack size
_CHECK = 32  # bytes of the blake2b-256 that closes an index
KEY_BYTES = 33  # name length byte + name padded to 32 bytes
_GAP = 1 << 18  # ranges closer than this are read as one request
_WHOLE_PACK = 8 << 20  # smaller packs are read whole and kept in memory
_WHOLE_CACHE = 256 << 20  # bytes of whole packs kept, at most


def entry_key(name: bytes) -> bytes:
    """The sort key of a name in an index: its length, then the name padded to 32 bytes."""
    if not 1 <= len(name) <= 32:
        raise ValueError(f"pack entry names are 1-32 bytes, not {len(name)}")
    return bytes([len(name)]) + name.ljust(32, b"\0")


def _name_of(key: bytes) -> bytes:
    return key[1 : 1 + key[0]]


def pack_id(pack: bytes | memoryview, index: bytes | memoryview) -> str:
    """The name of a pack: the blake2b-256 of its bytes and then its index's, in hex.

    The index counts: two packs of equal bytes may name their entries differently.
    """
    h = hashlib.blake2b(pack, digest_size=32)
    h.update(index)
    return h.hexdigest()


def encode_pack(items: Sequence[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    """The bytes of a pack holding ``items`` (name, data), and of its index."""
    unique = dict(items)
    names = sorted(unique, key=entry_key)
    offsets = np.empty(len(names), np.uint64)
    sizes = np.empty(len(names), np.uint64)
    parts = [PACK_MAGIC]
    at = len(PACK_MAGIC)
    for i, name in enumerate(names):
        data = unique[name]
        offsets[i], sizes[i] = at, len(data)
        parts.append(data)
        at += len(data)
    pack = b"".join(parts)
    keys = b"".join(entry_key(n) for n in names)
    body = _IDX_HEAD.pack(IDX_MAGIC, len(names), len(pack)) + keys
    body += offsets.astype("<u8").tobytes() + sizes.astype("<u8").tobytes()
    return pack, body + hashlib.blake2b(body, digest_size=_CHECK).digest()


@dataclass(frozen=True)
class PackIndex:
    """The decoded index of one pack.

    Attributes
    ----------
    pack:
        The pack's id (hex).
    keys:
        Sorted entry keys (:func:`entry_key`), as a ``S33`` array.
    offsets, sizes:
        Where each entry lies in the pack.
    size:
        The pack's size in bytes.
    """

    pack: str
    keys: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    size: int

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Position of each key (``S33`` array) in this index, -1 where absent."""
        if not len(self.keys):
            return np.full(len(keys), -1, np.intp)
        at = np.searchsorted(self.keys, keys)
        at[at >= len(self.keys)] = 0
        return np.where(self.keys[at] == keys, at, -1)

    def names(self) -> list[bytes]:
        """Every entry name, in key order."""
        return [_name_of(k.ljust(KEY_BYTES, b"\0")) for k in self.keys.tolist()]


@dataclass(frozen=True)
class Located:
    """Where some names are: for each, a pack (a position in ``packs``, -1: absent) and a range.

    Attributes
    ----------
    packs:
        The indexes that were searched.
    pack, offset, size:
        Per name: which pack holds it (-1 where none does), and where.
    """

    packs: list[PackIndex]
    pack: np.ndarray
    offset: np.ndarray
    size: np.ndarray

    def found(self) -> np.ndarray:
        """Whether each name was found (bool array)."""
        return self.pack >= 0

    def take(self, positions: np.ndarray) -> Located:
        """The same, for the names at ``positions`` only."""
        return Located(
            self.packs, self.pack[positions], self.offset[positions], self.size[positions]
        )

    def storage_order(self) -> np.ndarray:
        """Positions of the found names, by pack and offset (the order that reads least)."""
        present = np.flatnonzero(self.pack >= 0)
        return present[np.lexsort((self.offset[present], self.pack[present]))]


def _slice_into(
    out: list[bytes | None], block: bytes, start: int, members: np.ndarray, where: Located
) -> None:
    """Cut the entries ``members`` out of ``block`` (which begins at offset ``start``)."""
    for i, offset, size in zip(
        members.tolist(), where.offset[members].tolist(), where.size[members].tolist(), strict=True
    ):
        out[i] = block[offset - start : offset - start + size]  # short: fails the hash check


def decode_index(pack: str, data: bytes, where: str) -> PackIndex:
    """Parse and check an index; :class:`CorruptionError` naming ``where`` if it is damaged."""

    def damaged(why: str) -> CorruptionError:
        return CorruptionError(
            f"pack index {where} is damaged ({why}); the remote is damaged: run "
            "`repo.verify_remote()` and push again from a complete copy",
            path=where,
        )

    if len(data) < _IDX_HEAD.size + _CHECK:
        raise damaged("too short")
    body, check = data[:-_CHECK], data[-_CHECK:]
    if hashlib.blake2b(body, digest_size=_CHECK).digest() != check:
        raise damaged("checksum mismatch")
    magic, count, size = _IDX_HEAD.unpack_from(body)
    if magic != IDX_MAGIC:
        raise damaged(f"unknown format {magic!r}")
    at = _IDX_HEAD.size
    if len(body) != at + count * (KEY_BYTES + 16):
        raise damaged("wrong length")
    keys = np.frombuffer(body, f"S{KEY_BYTES}", count, at)
    at += count * KEY_BYTES
    offsets = np.frombuffer(body, "<u8", count, at).astype(np.int64)
    sizes = np.frombuffer(body, "<u8", count, at + 8 * count).astype(np.int64)
    if count and (np.any(offsets + sizes > size) or np.any(keys[1:] <= keys[:-1])):
        raise damaged("entries out of order or past the end of the pack")
    return PackIndex(pack, keys, offsets, sizes, int(size))


class PackSet:
    """The packs in one folder of a remote.

    Parameters
    ----------
    transport:
        The remote's filesystem and root.
    folder:
        The folder under the root (``objects`` or ``data``).
    """

    def __init__(self, transport: Transport, folder: str) -> None:
        self.transport = transport
        self.folder = folder
        self._indexes: dict[str, PackIndex] = {}
        self._whole: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._listed = False

    def path(self, pack: str, suffix: str) -> str:
        """Full path of ``<pack><suffix>`` in this folder."""
        return self.transport.path(f"{self.folder}/{pack}{suffix}")

    # -- the indexes -----------------------------------------------------

    def refresh(self) -> None:
        """List the folder and load the indexes of packs not seen yet."""
        found = self.transport.list_names(self.folder)
        new = sorted(n[: -len(".idx")] for n in found if n.endswith(".idx"))
        new = [p for p in new if p not in self._indexes]
        if new:
            raw = self.transport.cat_many([self.path(p, ".idx") for p in new])
            for pack, data in zip(new, raw, strict=True):
                index = decode_index(pack, data, self.path(pack, ".idx"))
                with self._lock:
                    self._indexes[pack] = index
        with self._lock:
            self._listed = True

    def indexes(self) -> list[PackIndex]:
        """The indexes known (listing the folder the first time)."""
        if not self._listed:
            self.refresh()
        with self._lock:
            return list(self._indexes.values())

    def locate(self, names: Sequence[bytes]) -> Located:
        """Where each name is (a pack and a byte range), listing again on a miss."""
        keys = np.array([entry_key(n) for n in names], f"S{KEY_BYTES}")
        found = self._find(keys)
        if not found.found().all():
            self.refresh()
            found = self._find(keys)
        return found

    def _find(self, keys: np.ndarray) -> Located:
        indexes = self.indexes()
        pack = np.full(len(keys), -1, np.int32)
        offset = np.zeros(len(keys), np.int64)
        size = np.zeros(len(keys), np.int64)
        for number, index in enumerate(indexes):
            todo = np.flatnonzero(pack < 0)
            if not len(todo):
                break
            at = index.find(keys[todo])
            hit = at >= 0
            chosen, rows = todo[hit], at[hit]
            pack[chosen] = number
            offset[chosen] = index.offsets[rows]
            size[chosen] = index.sizes[rows]
        return Located(indexes, pack, offset, size)

    # -- reading ---------------------------------------------------------

    def get_many(self, names: Sequence[bytes]) -> list[bytes | None]:
        """The stored bytes of each entry (None where absent), in order."""
        return self.read(self.locate(names))

    def has_many(self, names: Sequence[bytes]) -> list[bool]:
        """Whether each name is in some pack."""
        if not names:
            return []
        return [bool(f) for f in self.locate(names).found().tolist()]

    def read(self, where: Located) -> list[bytes | None]:
        """The bytes of located entries (None where absent), in order.

        Packs up to 8 MiB are read whole and kept; from larger ones, the
        entries' byte ranges, merged when less than 256 KiB apart, so
        reading entries in pack order costs one request per stretch.
        """
        out: list[bytes | None] = [None] * len(where.pack)
        present = np.flatnonzero(where.pack >= 0)
        paths: list[str] = []
        starts: list[int] = []
        ends: list[int] = []
        spans: list[np.ndarray] = []
        whole: dict[str, np.ndarray] = {}
        for number in np.unique(where.pack[present]).tolist():
            index = where.packs[number]
            members = present[where.pack[present] == number]
            with self._lock:
                cached = self._whole.get(index.pack)
            if cached is not None:
                _slice_into(out, cached, 0, members, where)
            elif index.size <= _WHOLE_PACK:
                whole[index.pack] = members
            else:
                members = members[np.argsort(where.offset[members], kind="stable")]
                first = where.offset[members]
                last = np.maximum.accumulate(first + where.size[members])
                breaks = np.flatnonzero(first[1:] - last[:-1] > _GAP) + 1
                for span in np.split(np.arange(len(members)), breaks):
                    paths.append(self.path(index.pack, ".pack"))
                    starts.append(int(first[span[0]]))
                    ends.append(int(last[span[-1]]))
                    spans.append(members[span])
        if whole:
            got = self.transport.cat_many([self.path(p, ".pack") for p in whole])
            with self._lock:
                if sum(map(len, self._whole.values())) > _WHOLE_CACHE:
                    self._whole.clear()
                self._whole.update(zip(whole, got, strict=True))
            for data, members in zip(got, whole.values(), strict=True):
                _slice_into(out, data, 0, members, where)
        if paths:
            blocks = self.transport.cat_ranges(paths, starts, ends)
            for block, start, members in zip(blocks, starts, spans, strict=True):
                _slice_into(out, block, start, members, where)
        return out

    def names(self, lead: int | None = None, prefix: bytes = b"") -> Iterator[bytes]:
        """Entry names (of length ``lead`` if given) that start with ``prefix``, sorted."""
        self.refresh()
        chosen: set[bytes] = set()
        for index in self.indexes():
            for name in index.names():
                if (lead is None or len(name) == lead) and name.startswith(prefix):
                    chosen.add(name)
        return iter(sorted(chosen))

    # -- writing ---------------------------------------------------------

    def write(self, items: Sequence[tuple[bytes, bytes]]) -> str | None:
        """Store ``items`` as one new pack (the pack first, then its index); its id."""
        if not items:
            return None
        pack, index = encode_pack(items)
        name = pack_id(pack, index)
        self.transport.put(self.path(name, ".pack"), pack)
        self.transport.put(self.path(name, ".idx"), index)
        decoded = decode_index(name, index, self.path(name, ".idx"))
        with self._lock:
            self._indexes[name] = decoded
        return name

    def delete_many(self, names: Iterable[bytes]) -> int:
        """Remove entries by rewriting the packs that hold them; how many existed."""
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return 0
        self.refresh()
        found = self.locate(wanted)
        hit = found.found()
        doomed = {entry_key(n) for n, h in zip(wanted, hit.tolist(), strict=True) if h}
        for number in np.unique(found.pack[hit]).tolist():
            index = found.packs[number]
            keep = [n for n in index.names() if entry_key(n) not in doomed]
            data = self.get_many(keep)
            self.write([(n, d) for n, d in zip(keep, data, strict=True) if d is not None])
            self.transport.remove([self.path(index.pack, ".idx"), self.path(index.pack, ".pack")])
            with self._lock:
                self._indexes.pop(index.pack, None)
                self._whole.pop(index.pack, None)
        return len(doomed)
