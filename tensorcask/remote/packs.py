"""Pack formats: many immutable, named entries in one remote object, and the indexes that find them.

A remote keeps history objects and sample bytes in packs, so that a million
samples do not become a million objects. A pack (``<id>.pack``) is written
once and never changed. An index lists sorted entry names with their pack,
offset and size: ``<id>.idx`` covers one pack and is written right after it
(its presence marks the pack complete); ``<id>.midx`` covers several packs
and replaces their ``.idx`` files when indexes are consolidated.
``docs/remote-format.md`` is the specification; :mod:`.packset` reads and
writes packs of one folder.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import CorruptionError

__all__ = [
    "IDX_MAGIC",
    "KEY_BYTES",
    "MIDX_MAGIC",
    "PACK_MAGIC",
    "Located",
    "PackIndex",
    "decode_index",
    "encode_multi_index",
    "encode_pack",
    "entry_key",
    "name_of_key",
    "pack_id",
    "unit_name",
]

PACK_MAGIC = b"TCPACK\x00\x01"
IDX_MAGIC = b"TCIDX\x00\x00\x01"
MIDX_MAGIC = b"TCMIDX\x00\x01"
_IDX_HEAD = struct.Struct("<8sQQ")  # magic, entry count, pack size
_MIDX_HEAD = struct.Struct("<8sQQ")  # magic, entry count, pack count
_PACK_REF = struct.Struct("<32sQ")  # pack id (raw), pack size
_CHECK = 32  # bytes of the blake2b-256 that closes an index
KEY_BYTES = 33  # name length byte + name padded to 32 bytes


def entry_key(name: bytes) -> bytes:
    """The sort key of a name in an index: its length, then the name padded to 32 bytes."""
    if not 1 <= len(name) <= 32:
        raise ValueError(f"pack entry names are 1-32 bytes, not {len(name)}")
    return bytes([len(name)]) + name.ljust(32, b"\0")


def name_of_key(key: bytes) -> bytes:
    """The name in an entry key, also as numpy hands keys back (trailing zeros stripped)."""
    return key[1 : 1 + key[0]].ljust(key[0], b"\0")


def pack_id(pack: bytes | memoryview, index: bytes | memoryview) -> str:
    """The name of a pack: the blake2b-256 of its bytes and then its index's, in hex.

    The index counts: two packs of equal bytes may name their entries differently.
    """
    h = hashlib.blake2b(pack, digest_size=32)
    h.update(index)
    return h.hexdigest()


def _sealed(body: bytes) -> bytes:
    return body + hashlib.blake2b(body, digest_size=_CHECK).digest()


def encode_pack(items: Sequence[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    """The bytes of a pack holding ``items`` (name, data), and of its index.

    Entries are stored in the order given (the first time each name comes),
    so that entries written together (a column's samples in key order) lie
    side by side for readers that stream them; the index is sorted by key.
    """
    unique = dict(items)
    written = list(unique)
    datas = [unique[n] for n in written]
    sizes = np.fromiter(map(len, datas), np.int64, len(datas))
    offsets = len(PACK_MAGIC) + np.cumsum(sizes) - sizes
    pack = b"".join([PACK_MAGIC, *datas])
    # names of one length sort as their keys do
    one_length = len({len(n) for n in unique}) <= 1
    keyed = written if one_length else [entry_key(n) for n in written]
    order = sorted(range(len(written)), key=keyed.__getitem__)
    names = [written[i] for i in order]
    if one_length and names and len(names[0]) == 32:  # sample digests: no padding to do
        keys = bytes([32]) + bytes([32]).join(names)
    else:
        keys = b"".join([entry_key(n) for n in names])
    at = np.array(order, np.int64)
    body = _IDX_HEAD.pack(IDX_MAGIC, len(names), len(pack)) + keys
    body += offsets[at].astype("<u8").tobytes() + sizes[at].astype("<u8").tobytes()
    return pack, _sealed(body)


@dataclass(frozen=True)
class PackIndex:
    """A decoded index: of one pack (``.idx``) or of several (``.midx``).

    Attributes
    ----------
    unit:
        The index's file name (``<id>.idx`` or ``<id>.midx``).
    packs:
        ``(pack id, pack size)`` of each pack it covers.
    keys:
        Sorted entry keys (:func:`entry_key`), as an ``S33`` array.
    entry_pack:
        Per entry, its pack's position in ``packs``.
    offsets, sizes:
        Where each entry lies in its pack.
    """

    unit: str
    packs: tuple[tuple[str, int], ...]
    keys: np.ndarray
    entry_pack: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Position of each key (``S33`` array) in this index, -1 where absent."""
        if not len(self.keys):
            return np.full(len(keys), -1, np.intp)
        at = np.searchsorted(self.keys, keys)
        at[at >= len(self.keys)] = 0
        return np.where(self.keys[at] == keys, at, -1)

    def names(self) -> list[bytes]:
        """Every entry name, in key order."""
        return [name_of_key(k) for k in self.keys.tolist()]


def encode_multi_index(indexes: Sequence[PackIndex]) -> tuple[str, bytes]:
    """One index covering every pack of ``indexes``: its file name and bytes.

    An entry present in several (the same object pushed twice) is kept once.
    """
    packs = sorted({p for index in indexes for p in index.packs})
    number = {p: i for i, p in enumerate(packs)}
    keys = np.concatenate([index.keys for index in indexes])
    entry_pack = np.concatenate(
        [
            np.array([number[p] for p in index.packs], np.uint32)[index.entry_pack]
            for index in indexes
        ]
    )
    offsets = np.concatenate([index.offsets for index in indexes])
    sizes = np.concatenate([index.sizes for index in indexes])
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    first = np.ones(len(keys), bool)
    first[1:] = keys[1:] != keys[:-1]
    chosen = order[first]
    body = _MIDX_HEAD.pack(MIDX_MAGIC, len(chosen), len(packs))
    body += b"".join(_PACK_REF.pack(bytes.fromhex(p), size) for p, size in packs)
    body += b"".join(k.ljust(KEY_BYTES, b"\0") for k in keys[first].tolist())
    body += entry_pack[chosen].astype("<u4").tobytes()
    body += offsets[chosen].astype("<u8").tobytes() + sizes[chosen].astype("<u8").tobytes()
    data = _sealed(body)
    return unit_name(data, ".midx"), data


def unit_name(data: bytes, suffix: str) -> str:
    """The file name of a multi-pack index: the blake2b-256 of its bytes, in hex, and ``suffix``."""
    return hashlib.blake2b(data, digest_size=32).hexdigest() + suffix


def decode_index(unit: str, data: bytes, where: str) -> PackIndex:
    """Parse and check an index file named ``unit``; CorruptionError naming ``where`` if damaged."""

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
    magic, count, third = _IDX_HEAD.unpack_from(body)
    at = _IDX_HEAD.size
    if magic == IDX_MAGIC:
        packs: tuple[tuple[str, int], ...] = ((unit.rsplit(".", 1)[0], int(third)),)
        per_entry = KEY_BYTES + 16
    elif magic == MIDX_MAGIC:
        if len(body) < at + third * _PACK_REF.size:
            raise damaged("wrong length")
        packs = tuple(
            (raw.hex(), int(size))
            for raw, size in (
                _PACK_REF.unpack_from(body, at + i * _PACK_REF.size) for i in range(third)
            )
        )
        at += third * _PACK_REF.size
        per_entry = KEY_BYTES + 20
    else:
        raise damaged(f"unknown format {magic!r}")
    if len(body) != at + count * per_entry:
        raise damaged("wrong length")
    keys = np.frombuffer(body, f"S{KEY_BYTES}", count, at)
    at += count * KEY_BYTES
    if magic == MIDX_MAGIC:
        entry_pack = np.frombuffer(body, "<u4", count, at).astype(np.intp)
        at += 4 * count
    else:
        entry_pack = np.zeros(count, np.intp)
    offsets = np.frombuffer(body, "<u8", count, at).astype(np.int64)
    sizes = np.frombuffer(body, "<u8", count, at + 8 * count).astype(np.int64)
    if count:
        limits = np.array([size for _, size in packs], np.int64)
        if (
            np.any(entry_pack >= len(packs))
            or np.any(offsets + sizes > limits[np.minimum(entry_pack, len(packs) - 1)])
            or np.any(keys[1:] <= keys[:-1])
        ):
            raise damaged("entries out of order or past the end of their pack")
    return PackIndex(unit, packs, keys, entry_pack, offsets, sizes)


@dataclass(frozen=True)
class Located:
    """Where some names are: for each, a pack (a position in ``packs``, -1: absent) and a range.

    Attributes
    ----------
    packs:
        ``(pack id, pack size)`` of the packs that hold them.
    pack, offset, size:
        Per name: which pack holds it (-1 where none does), and where.
    """

    packs: list[tuple[str, int]]
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
