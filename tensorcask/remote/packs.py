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

    def _find(self, names: Sequence[bytes]) -> list[tuple[PackIndex, int] | None]:
        keys = np.array([entry_key(n) for n in names], f"S{KEY_BYTES}")
        out: list[tuple[PackIndex, int] | None] = [None] * len(names)
        for index in self.indexes():
            if all(o is not None for o in out):
                break
            for i, at in enumerate(index.find(keys).tolist()):
                if at >= 0 and out[i] is None:
                    out[i] = (index, at)
        return out

    def locate(self, names: Sequence[bytes]) -> list[tuple[PackIndex, int] | None]:
        """The pack and entry of each name (None where no pack has it), listing again on a miss."""
        found = self._find(names) if names else []
        if any(f is None for f in found):
            self.refresh()
            found = self._find(names)
        return found

    # -- reading ---------------------------------------------------------

    def get_many(self, names: Sequence[bytes]) -> list[bytes | None]:
        """The stored bytes of each entry (None where absent), in order."""
        return self.read(self.locate(names))

    def has_many(self, names: Sequence[bytes]) -> list[bool]:
        """Whether each name is in some pack."""
        return [f is not None for f in self.locate(names)]

    def read(self, found: Sequence[tuple[PackIndex, int] | None]) -> list[bytes | None]:
        """The bytes of located entries: small packs read whole, large ones by coalesced ranges."""
        out: list[bytes | None] = [None] * len(found)
        by_pack: dict[str, list[tuple[int, int, int]]] = {}
        sizes: dict[str, int] = {}
        for i, f in enumerate(found):
            if f is None:
                continue
            index, at = f
            by_pack.setdefault(index.pack, []).append(
                (int(index.offsets[at]), int(index.sizes[at]), i)
            )
            sizes[index.pack] = index.size
        whole = [p for p in by_pack if sizes[p] <= _WHOLE_PACK and p not in self._whole]
        if whole:
            got = self.transport.cat_many([self.path(p, ".pack") for p in whole])
            with self._lock:
                if sum(map(len, self._whole.values())) > _WHOLE_CACHE:
                    self._whole.clear()
                self._whole.update(zip(whole, got, strict=True))
        paths: list[str] = []
        starts: list[int] = []
        ends: list[int] = []
        spans: list[list[tuple[int, int, int]]] = []
        for pack, wanted in by_pack.items():
            with self._lock:
                data = self._whole.get(pack)
            if data is not None:
                for offset, size, i in wanted:
                    out[i] = data[offset : offset + size]
                continue
            wanted.sort()
            for offset, size, i in wanted:
                if spans and paths[-1] == pack and offset - ends[-1] <= _GAP:
                    ends[-1] = max(ends[-1], offset + size)
                    spans[-1].append((offset, size, i))
                else:
                    paths.append(pack)
                    starts.append(offset)
                    ends.append(offset + size)
                    spans.append([(offset, size, i)])
        if paths:
            blocks = self.transport.cat_ranges([self.path(p, ".pack") for p in paths], starts, ends)
            for block, start, span in zip(blocks, starts, spans, strict=True):
                for offset, size, i in span:
                    piece = block[offset - start : offset - start + size]
                    out[i] = piece  # a short piece fails the caller's hash check
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
        self.refresh()
        found = self._find(wanted)
        doomed = {entry_key(n) for n, f in zip(wanted, found, strict=True) if f is not None}
        for index in {f[0].pack: f[0] for f in found if f is not None}.values():
            keep = [n for n in index.names() if entry_key(n) not in doomed]
            data = self.get_many(keep)
            self.write([(n, d) for n, d in zip(keep, data, strict=True) if d is not None])
            self.transport.remove([self.path(index.pack, ".idx"), self.path(index.pack, ".pack")])
            with self._lock:
                self._indexes.pop(index.pack, None)
                self._whole.pop(index.pack, None)
        return len(doomed)
