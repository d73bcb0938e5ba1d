"""Pieces: what a streaming reader downloads, checks and caches at a time.

A sample is a few bytes to a few megabytes; a request to object storage
costs milliseconds whatever it returns. So a streaming reader does not ask
for a small sample alone: it asks for the *piece* of a data pack that holds
it. Piece ``k`` of a pack holds the small entries (under
:data:`LARGE_ENTRY` bytes) whose first byte lies in
``[k * PIECE_BYTES, (k + 1) * PIECE_BYTES)`` and spans from the first one's
start to the last one's end; a larger entry is a piece of its own, so a
rank that reads every other large sample fetches only its own. The cut
depends only on the pack's index, so every process, worker and job agrees
on it, and pieces are named by their pack and byte range
(:func:`piece_name`): a cache shared by several jobs holds each piece once,
whichever commit or column asked for it.

A push writes a column's samples in key order (``docs/remote-format.md``),
so reading a column in order reads pieces in order, and neighbouring pieces
merge into one ranged read.

:class:`PieceMap` holds, for the records of one column, which piece each
record lies in and where, and for each of those pieces every entry it holds
(name, offset, size): a downloaded piece is checked whole, every entry
against its name, before anything in it is used or cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..remote.packs import PackIndex
from ..remote.samples import check_entries

__all__ = ["LARGE_ENTRY", "PIECE_BYTES", "PieceMap", "check_piece", "map_pieces", "piece_name"]

#: Small entries starting in one window of this many bytes share a piece.
PIECE_BYTES = 1 << 18
#: Entries of at least this many bytes are pieces of their own.
LARGE_ENTRY = 1 << 15

_PACK_SHIFT = 42  # a piece's key: its pack, whether it is one large entry, and where
_SOLO = 1 << 41

_NAME_BYTES = 32  # sample digests


def piece_name(pack: str, start: int, end: int) -> str:
    """The name of a piece: its pack's id and byte range (unique, immutable)."""
    return f"{pack}.{start}-{end}"


@dataclass(frozen=True)
class PieceMap:
    """The pieces that hold some records, and where each record lies in them.

    Attributes
    ----------
    packs:
        Pack ids (``S64`` array); ``piece_pack`` indexes it.
    piece_pack, piece_start, piece_end:
        Per piece: its pack and byte range ``[start, end)`` in the pack.
    entry_first:
        ``piece p`` holds entries ``entry_first[p]:entry_first[p + 1]``.
    entry_names, entry_rel, entry_size:
        Per entry: its 32-byte name, offset from its piece's start, size.
    record_piece, record_rel, record_size:
        Per record: its piece (-1 where the remote has no such sample), its
        offset from the piece's start, its size.
    """

    packs: np.ndarray
    piece_pack: np.ndarray
    piece_start: np.ndarray
    piece_end: np.ndarray
    entry_first: np.ndarray
    entry_names: np.ndarray
    entry_rel: np.ndarray
    entry_size: np.ndarray
    record_piece: np.ndarray
    record_rel: np.ndarray
    record_size: np.ndarray

    FIELDS = (
        "packs",
        "piece_pack",
        "piece_start",
        "piece_end",
        "entry_first",
        "entry_names",
        "entry_rel",
        "entry_size",
        "record_piece",
        "record_rel",
        "record_size",
    )

    def arrays(self) -> dict[str, np.ndarray]:
        """The map as named arrays (for the table cache)."""
        return {f: getattr(self, f) for f in self.FIELDS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> PieceMap:
        """The map saved by :meth:`arrays` (KeyError if one is missing)."""
        return cls(**{f: arrays[f] for f in cls.FIELDS})

    def name(self, piece: int) -> str:
        """The cache name of ``piece``."""
        return piece_name(
            self.packs[self.piece_pack[piece]].decode(),
            int(self.piece_start[piece]),
            int(self.piece_end[piece]),
        )

    def pack(self, piece: int) -> str:
        """The id of the pack ``piece`` lies in."""
        return str(self.packs[self.piece_pack[piece]].decode())

    def entries(self, piece: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(names, offsets from the piece's start, sizes)`` of the entries of ``piece``."""
        a, b = int(self.entry_first[piece]), int(self.entry_first[piece + 1])
        return self.entry_names[a:b], self.entry_rel[a:b], self.entry_size[a:b]


def map_pieces(
    indexes: Sequence[PackIndex],
    record_pack: np.ndarray,
    record_offset: np.ndarray,
    record_size: np.ndarray,
    packs: Sequence[tuple[str, int]],
) -> PieceMap:
    """The :class:`PieceMap` of records located in ``packs`` (``record_pack`` -1: absent).

    ``indexes`` are the data folder's indexes: every entry of every piece a
    record lies in is taken from them.
    """
    found = record_pack >= 0
    used_packs = np.unique(record_pack[found])
    ids = np.array([packs[int(p)][0].encode() for p in used_packs], "S64")
    local = np.full(len(packs), -1, np.int64)
    local[used_packs] = np.arange(len(used_packs))
    rec_key = np.where(found, _keys(local[record_pack], record_offset, record_size), -1)
    wanted = np.unique(rec_key[found])
    names, offsets, sizes, keys = _entries_of(indexes, ids, wanted)
    order = np.lexsort((offsets, keys))
    names, offsets, sizes, keys = names[order], offsets[order], sizes[order], keys[order]
    first = np.searchsorted(keys, wanted, "left")
    last = np.searchsorted(keys, wanted, "right")
    if len(wanted) and (last <= first).any():  # cannot be: a record's own entry is in its piece
        raise ValueError("a located record's piece has no entries in the data indexes")
    piece_start = offsets[first] if len(wanted) else np.zeros(0, np.int64)
    piece_end = (
        np.maximum.reduceat(offsets + sizes, first) if len(wanted) else np.zeros(0, np.int64)
    )
    piece_of_entry = np.repeat(np.arange(len(wanted)), last - first)
    record_piece = np.full(len(record_pack), -1, np.int64)
    record_piece[found] = np.searchsorted(wanted, rec_key[found])
    record_rel = np.zeros(len(record_pack), np.int64)
    record_rel[found] = record_offset[found] - piece_start[record_piece[found]]
    return PieceMap(
        packs=ids,
        piece_pack=(wanted >> _PACK_SHIFT).astype(np.int32),
        piece_start=piece_start.astype(np.int64),
        piece_end=piece_end.astype(np.int64),
        entry_first=np.append(first, len(keys)).astype(np.int64),
        entry_names=names,
        entry_rel=(offsets - piece_start[piece_of_entry]).astype(np.int64),
        entry_size=sizes.astype(np.int64),
        record_piece=record_piece,
        record_rel=record_rel,
        record_size=np.where(found, record_size, 0).astype(np.int64),
    )


def _keys(pack: np.ndarray, offset: np.ndarray, size: np.ndarray) -> np.ndarray:
    """The piece of each entry as one int64: its pack (a position in the map's ``packs``),
    then a large entry's own offset or a small one's window."""
    pack = np.maximum(pack, 0).astype(np.int64)  # absent records' keys are masked by callers
    small = offset.astype(np.int64) // PIECE_BYTES
    solo = _SOLO | offset.astype(np.int64)
    return (pack << _PACK_SHIFT) | np.where(size >= LARGE_ENTRY, solo, small)


def _entries_of(
    indexes: Sequence[PackIndex], ids: np.ndarray, wanted: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(names, offsets, sizes, piece keys)`` of every entry of the ``wanted`` pieces.

    A pack named by several indexes (one being merged into another) is taken
    from the first.
    """
    position = {bytes(p): i for i, p in enumerate(ids.tolist())}
    done: set[int] = set()
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for index in indexes:
        mine = {
            j: position[pid.encode()]
            for j, (pid, _) in enumerate(index.packs)
            if pid.encode() in position and position[pid.encode()] not in done
        }
        if not mine:
            continue
        done.update(mine.values())
        to_local = np.full(len(index.packs), -1, np.int64)
        for j, at in mine.items():
            to_local[j] = at
        where = to_local[index.entry_pack]
        rows = np.flatnonzero(where >= 0)
        keys = _keys(where[rows], index.offsets[rows], index.sizes[rows])
        keep = np.isin(keys, wanted)
        rows, keys = rows[keep], keys[keep]
        raw = index.keys[rows].view(np.uint8).reshape(len(rows), -1)
        names = np.ascontiguousarray(raw[:, 1 : 1 + _NAME_BYTES])
        parts.append((names, index.offsets[rows], index.sizes[rows], keys))
    if not parts:
        empty = np.zeros(0, np.int64)
        return np.zeros((0, _NAME_BYTES), np.uint8), empty, empty, empty
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]).astype(np.int64),
        np.concatenate([p[2] for p in parts]).astype(np.int64),
        np.concatenate([p[3] for p in parts]),
    )


def check_piece(data: bytes, pieces: PieceMap, piece: int, where: str) -> None:
    """Check every entry of a downloaded piece against its name.

    Raises :class:`~tensorcask.errors.CorruptionError` naming ``where`` if
    one does not hash to its name or the piece is short.
    """
    names, rel, sizes = pieces.entries(piece)
    view = memoryview(data)
    entries: list[memoryview | None] = [
        view[a : a + n] for a, n in zip(rel.tolist(), sizes.tolist(), strict=True)
    ]
    expected = int(pieces.piece_end[piece] - pieces.piece_start[piece])
    digests = [bytes(d) for d in names]
    if len(data) != expected:
        entries = [
            e if e is not None and len(e) == n else None
            for e, n in zip(entries, sizes.tolist(), strict=True)
        ]
    check_entries(entries, digests, where)
