"""The packs of one folder of a remote: find entries, read them, write packs, consolidate indexes.

:class:`PackSet` lists the folder's indexes once, keeps them in memory (an
index never changes) and lists again only when a name is not found. Reads
take packs up to 8 MiB whole (and keep them), and byte ranges of larger
ones, merged when close, so reading entries in pack order costs one request
per stretch.

Every push adds a pack, so indexes would grow with the number of pushes, and
so would the requests a reader makes to open a commit. :meth:`PackSet.consolidate`
keeps them logarithmic, the way git's geometric repacking does: whenever the
small indexes add up to half of the next larger one, they are merged. History
packs are rewritten into one pack (they are small); sample packs stay as they
are and only their indexes are merged into a multi-pack index, so
consolidating never uploads sample bytes again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from typing import TypeVar

import numpy as np

from ..errors import RemoteError
from .packs import (
    KEY_BYTES,
    Located,
    PackIndex,
    decode_index,
    encode_multi_index,
    encode_pack,
    entry_key,
    name_of_key,
    pack_id,
)
from .transport import Transport

__all__ = ["PackSet"]

_GAP = 1 << 18  # ranges closer than this are read as one request
_WHOLE_PACK = 8 << 20  # smaller packs are read whole and kept in memory
_WHOLE_CACHE = 256 << 20  # bytes of whole packs kept, at most
_READ_AHEAD = 1 << 18  # with read_ahead, a read of a large pack takes this many bytes ...
_BLOCKS = 32  # ... and the last few such blocks are kept
_REWRITE_LIMIT = 8 << 20  # history packs are rewritten only up to this many bytes at once
_UNITS = (".idx", ".midx")
_RETRIES = 8
T = TypeVar("T")


def _is_unit(name: str) -> bool:
    return name.endswith(_UNITS) and not name.startswith(".")


def geometric(sizes: dict[str, int], factor: int = 2) -> list[str]:
    """The smallest units to merge so that each remaining one is ``factor`` times all below it."""
    order = sorted(sizes, key=lambda n: (sizes[n], n))
    total = cut = 0
    for i, name in enumerate(order):
        if i and sizes[name] < factor * total:
            cut = i + 1
        total += sizes[name]
    return order[:cut] if cut >= 2 else []


class PackSet:
    """The packs in one folder of a remote.

    Parameters
    ----------
    transport:
        The remote's filesystem and root.
    folder:
        The folder under the root (``objects`` or ``data``).
    read_ahead:
        Read at least 256 KiB of a large pack at a time and keep the last such
        blocks (for history packs, whose objects lie in the order readers walk).
    """

    def __init__(self, transport: Transport, folder: str, *, read_ahead: bool = False) -> None:
        self.transport = transport
        self.folder = folder
        self._units: dict[str, PackIndex] = {}
        self._whole: dict[str, bytes] = {}
        # History packs hold a commit's objects in the order a reader walks them, so a
        # small read there takes what follows too, and recent such blocks are kept.
        self._read_ahead = _READ_AHEAD if read_ahead else 0
        self._blocks: list[tuple[str, int, bytes]] = []
        self._lock = threading.Lock()
        self._listed = False
        self._clock = 0  # counts this set's writes of indexes ...
        self._born: dict[str, int] = {}  # ... and when each was written

    def path(self, name: str, suffix: str = "") -> str:
        """Full path of ``<name><suffix>`` in this folder."""
        return self.transport.path(f"{self.folder}/{name}{suffix}")

    # -- the indexes -----------------------------------------------------

    def refresh(self) -> None:
        """List the folder: load the indexes not seen yet, forget those no longer there."""
        for attempt in range(_RETRIES):
            with self._lock:
                begun = self._clock
            files = self.transport.list_files(self.folder)
            listed = [n for n in files if _is_unit(n)]
            new = [n for n in listed if n not in self._units]
            try:
                raw = self.transport.cat_many([self.path(n) for n in new], [files[n] for n in new])
            except FileNotFoundError:  # consolidated away since the listing: list again
                if attempt == _RETRIES - 1:
                    raise
                time.sleep(0.01 * attempt)  # let a busy consolidator finish
                continue
            loaded = {n: decode_index(n, d, self.path(n)) for n, d in zip(new, raw, strict=True)}
            with self._lock:
                # An index this set wrote while the listing ran may be missing from it.
                fresh = {n: u for n, u in self._units.items() if self._born.get(n, -1) >= begun}
                self._units = {n: self._units.get(n) or loaded[n] for n in listed}
                self._units.update(fresh)
                self._listed = True
            return

    def indexes(self) -> list[PackIndex]:
        """The indexes known (listing the folder the first time)."""
        if not self._listed:
            self.refresh()
        with self._lock:
            return list(self._units.values())

    def locate(self, names: Sequence[bytes] | np.ndarray) -> Located:
        """Where each name is (a pack and a byte range), listing again on a miss.

        ``names`` may be an ``(n, 32)`` uint8 array of 32-byte names (sample
        digests), turned into keys without a Python loop.
        """
        if isinstance(names, np.ndarray):
            raw = np.empty((len(names), KEY_BYTES), np.uint8)
            raw[:, 0] = 32
            raw[:, 1:] = names
            keys = raw.view(f"S{KEY_BYTES}").reshape(-1)
        else:
            keys = np.array([entry_key(n) for n in names], f"S{KEY_BYTES}")
        found = self._find(keys)
        if not found.found().all():
            self.refresh()
            found = self._find(keys)
        return found

    def _find(self, keys: np.ndarray) -> Located:
        packs: list[tuple[str, int]] = []
        number: dict[str, int] = {}
        pack = np.full(len(keys), -1, np.int32)
        offset = np.zeros(len(keys), np.int64)
        size = np.zeros(len(keys), np.int64)
        for index in self.indexes():
            todo = np.flatnonzero(pack < 0)
            if not len(todo):
                break
            at = index.find(keys[todo])
            hit = at >= 0
            if not hit.any():
                continue
            for p in index.packs:
                if p[0] not in number:
                    number[p[0]] = len(packs)
                    packs.append(p)
            local = np.array([number[p[0]] for p in index.packs], np.int32)
            chosen, rows = todo[hit], at[hit]
            pack[chosen] = local[index.entry_pack[rows]]
            offset[chosen] = index.offsets[rows]
            size[chosen] = index.sizes[rows]
        return Located(packs, pack, offset, size)

    # -- reading ---------------------------------------------------------

    def get_many(self, names: Sequence[bytes]) -> list[bytes | None]:
        """The stored bytes of each entry (None where absent), in order."""
        return self.retrying(lambda: self.read(self.locate(names)))

    def retrying(self, read: Callable[[], T]) -> T:
        """``read()``, listing again and retrying while packs it found are rewritten away
        (other clients consolidating); RemoteError if that goes on."""
        for _ in range(_RETRIES):
            try:
                return read()
            except FileNotFoundError:
                self.refresh()
        raise RemoteError(
            f"the packs under {self.path('')} keep changing while they are read (other "
            "clients consolidating them); retry"
        )

    def has_many(self, names: Sequence[bytes]) -> list[bool]:
        """Whether each name is in some pack."""
        if not names:
            return []
        return [bool(f) for f in self.locate(names).found().tolist()]

    def read(self, where: Located) -> list[bytes | None]:
        """The bytes of located entries (None where absent), in order."""
        out: list[bytes | None] = [None] * len(where.pack)
        present = np.flatnonzero(where.pack >= 0)
        paths: list[str] = []
        starts: list[int] = []
        ends: list[int] = []
        spans: list[np.ndarray] = []
        whole: dict[str, np.ndarray] = {}
        for number in np.unique(where.pack[present]).tolist():
            pack, pack_size = where.packs[number]
            members = present[where.pack[present] == number]
            with self._lock:
                cached = self._whole.get(pack)
            if cached is not None:
                _slice_into(out, cached, 0, members, where)
            elif pack_size <= _WHOLE_PACK:
                whole[pack] = members
            else:
                members = self._from_blocks(out, pack, members, where)
                if not len(members):
                    continue
                members = members[np.argsort(where.offset[members], kind="stable")]
                first = where.offset[members]
                last = np.maximum.accumulate(first + where.size[members])
                breaks = np.flatnonzero(first[1:] - last[:-1] > _GAP) + 1
                for span in np.split(np.arange(len(members)), breaks):
                    paths.append(self.path(pack, ".pack"))
                    starts.append(int(first[span[0]]))
                    ahead = min(starts[-1] + self._read_ahead, pack_size)
                    ends.append(max(int(last[span[-1]]), ahead))
                    spans.append(members[span])
        if whole:
            sizes = dict(where.packs)
            got = self.transport.cat_many(
                [self.path(p, ".pack") for p in whole], [sizes[p] for p in whole]
            )
            with self._lock:
                if sum(map(len, self._whole.values())) > _WHOLE_CACHE:
                    self._whole.clear()
                self._whole.update(zip(whole, got, strict=True))
            for data, members in zip(got, whole.values(), strict=True):
                _slice_into(out, data, 0, members, where)
        if paths:
            blocks = self.transport.cat_ranges(paths, starts, ends)
            for path, block, start, members in zip(paths, blocks, starts, spans, strict=True):
                _slice_into(out, block, start, members, where)
                if len(block) <= self._read_ahead:
                    self._keep_block(path, start, block)
        return out

    def _from_blocks(
        self, out: list[bytes | None], pack: str, members: np.ndarray, where: Located
    ) -> np.ndarray:
        """Fill ``out`` for the members inside blocks read before; the others."""
        path = self.path(pack, ".pack")
        with self._lock:
            blocks = [(start, data) for p, start, data in self._blocks if p == path]
        if not blocks:
            return members
        left = []
        for m in members.tolist():
            offset, size = int(where.offset[m]), int(where.size[m])
            for start, data in blocks:
                if start <= offset and offset + size <= start + len(data):
                    out[m] = data[offset - start : offset - start + size]
                    break
            else:
                left.append(m)
        return np.array(left, np.intp)

    def _keep_block(self, path: str, start: int, block: bytes) -> None:
        with self._lock:
            self._blocks.append((path, start, block))
            del self._blocks[:-_BLOCKS]

    def entries_of_length(
        self, lead: int, *, skip: AbstractSet[str] = frozenset()
    ) -> dict[str, dict[bytes, bytes | None]]:
        """Every entry whose name is ``lead`` bytes long, per index (except those in ``skip``).

        Names of one length are contiguous in a pack (keys start with the
        length), so this is one ranged read per pack: how a reader takes all
        commits at once instead of one request per commit.
        """
        out: dict[str, dict[bytes, bytes | None]] = {}
        for index in self.indexes():
            if index.unit in skip:
                continue
            lengths = np.frombuffer(index.keys.tobytes(), np.uint8)[::KEY_BYTES]
            rows = np.flatnonzero(lengths == lead)
            where = Located(
                list(index.packs), index.entry_pack[rows], index.offsets[rows], index.sizes[rows]
            )
            names = [name_of_key(k) for k in index.keys[rows].tolist()]
            out[index.unit] = dict(zip(names, self.read(where), strict=True))
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
        decoded = decode_index(name + ".idx", index, self.path(name, ".idx"))
        self._add(decoded)
        return name

    def _add(self, index: PackIndex) -> None:
        """Know an index this set has just written."""
        with self._lock:
            self._units[index.unit] = index
            self._born[index.unit] = self._clock
            self._clock += 1

    def delete_many(self, names: Iterable[bytes]) -> int:
        """Remove entries by rewriting the packs that hold them; how many existed.

        For history packs (single-pack indexes); sample packs are never rewritten.
        """
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return 0
        self.refresh()
        hit = self.locate(wanted).found()
        doomed = {entry_key(n) for n, h in zip(wanted, hit.tolist(), strict=True) if h}
        for index in self.indexes():
            if not any(k.ljust(KEY_BYTES, b"\0") in doomed for k in index.keys.tolist()):
                continue
            self._replace([index], doomed)
        return len(doomed)

    def remove_entries(self, names: Sequence[bytes]) -> int:
        """Remove entries (a purge) by rewriting only the packs that hold them; how many.

        Each such pack is written again without them, its other entries in
        their order, and the index that named it is replaced: by the new
        pack's own index, or for a multi-pack index by one over its other
        packs. The new files are written before the old ones are removed, so
        every other entry stays findable throughout.
        """
        self.refresh()
        doomed = np.array(sorted({entry_key(n) for n in names}), dtype=f"S{KEY_BYTES}")
        removed: set[bytes] = set()
        rewritten: set[str] = set()  # a pack two indexes name is rewritten once
        for index in self.indexes():
            at = index.find(doomed)
            hits = at[at >= 0]
            if not len(hits):
                continue
            removed.update(index.keys[hits].tolist())
            gone = np.zeros(len(index.keys), bool)
            gone[hits] = True
            touched = set(np.unique(index.entry_pack[hits]).tolist())
            for p in sorted(touched):
                if index.packs[p][0] not in rewritten:
                    self._rewrite_pack(index, p, gone)
                    rewritten.add(index.packs[p][0])
            kept = [i for i in range(len(index.packs)) if i not in touched]
            rest = np.flatnonzero(np.isin(index.entry_pack, kept))
            if len(rest):
                renumber = np.zeros(len(index.packs), np.uint32)
                renumber[kept] = np.arange(len(kept))
                others = PackIndex(
                    "",
                    tuple(index.packs[i] for i in kept),
                    index.keys[rest],
                    renumber[index.entry_pack[rest]],
                    index.offsets[rest],
                    index.sizes[rest],
                )
                unit, data = encode_multi_index([others])
                self.transport.put(self.path(unit), data)
                self._add(decode_index(unit, data, self.path(unit)))
            self.transport.remove([self.path(index.unit)])
            with self._lock:
                self._units.pop(index.unit, None)
        self.transport.remove([self.path(p, ".pack") for p in sorted(rewritten)])
        with self._lock:
            for p in rewritten:
                self._whole.pop(p, None)
        return len(removed)

    def _rewrite_pack(self, index: PackIndex, p: int, gone: np.ndarray) -> None:
        """Write pack ``p`` of ``index`` again without the entries ``gone`` marks."""
        members = np.flatnonzero((index.entry_pack == p) & ~gone)
        members = members[np.argsort(index.offsets[members], kind="stable")]
        pack = index.entry_pack[members]
        where = Located(list(index.packs), pack, index.offsets[members], index.sizes[members])
        names = [name_of_key(k) for k in index.keys[members].tolist()]
        data = self.read(where)
        if any(d is None for d in data):
            raise RemoteError(
                f"cannot rewrite {self.path(index.packs[p][0], '.pack')} without purged entries: "
                "some of its other entries could not be read; nothing was removed"
            )
        self.write([(n, d) for n, d in zip(names, data, strict=True) if d is not None])

    def _replace(self, units: list[PackIndex], drop: AbstractSet[bytes] = frozenset()) -> None:
        """Write the entries of ``units`` (less ``drop``) as one pack, then remove the units
        and their packs.

        Nothing is removed that the new pack is (a merge of entries one pack
        already holds has that pack's bytes and name), nor a pack that another
        index still names.
        """
        keep: dict[bytes, bytes] = {}
        for index in units:
            where = Located(list(index.packs), index.entry_pack, index.offsets, index.sizes)
            for name, data in zip(index.names(), self.read(where), strict=True):
                if entry_key(name) not in drop and data is not None:
                    keep[name] = data
        new = self.write(list(keep.items()))
        self.refresh()
        chosen = {index.unit for index in units}
        named = {p for index in self.indexes() if index.unit not in chosen for p, _ in index.packs}
        for index in units:
            if index.unit != f"{new}.idx":
                self.transport.remove([self.path(index.unit)])
            doomed = [p for p, _ in index.packs if p != new and p not in named]
            self.transport.remove([self.path(p, ".pack") for p in doomed])
            with self._lock:
                if index.unit != f"{new}.idx":
                    self._units.pop(index.unit, None)
                for p in doomed:
                    self._whole.pop(p, None)

    def consolidate(self, *, rewrite: bool) -> int:
        """Merge the small indexes geometrically; how many were merged (0: nothing to do).

        Only the indexes chosen are read. With ``rewrite`` (history), packs
        that add up to at most 8 MiB are rewritten into one pack (a reader
        then fetches them in one request); otherwise only the indexes are
        merged, into a multi-pack index, and no entry is uploaded again. The
        new files are written before the old ones are removed, so every entry
        is always findable, and concurrent consolidations only duplicate work.
        """
        sizes = {n: s for n, s in self.transport.list_files(self.folder).items() if _is_unit(n)}
        chosen = geometric(sizes)
        if len(chosen) < 2:
            return 0
        try:
            units = self._load(chosen, sizes)
        except FileNotFoundError:  # another client consolidated them first
            return 0
        if rewrite and sum(size for index in units for _, size in index.packs) <= _REWRITE_LIMIT:
            self._replace(units)
            return len(units)
        unit, data = encode_multi_index(units)
        self.transport.put(self.path(unit), data)
        self._add(decode_index(unit, data, self.path(unit)))
        # The merge of indexes that add nothing to one of them is that one, by name: keep it.
        merged = [index.unit for index in units if index.unit != unit]
        self.transport.remove([self.path(u) for u in merged])
        with self._lock:
            for u in merged:
                self._units.pop(u, None)
        return len(merged)

    def _load(self, units: list[str], sizes: dict[str, int]) -> list[PackIndex]:
        """The indexes named ``units`` (from memory, else read; ``sizes`` from a listing)."""
        with self._lock:
            known = {n: self._units[n] for n in units if n in self._units}
        todo = [n for n in units if n not in known]
        raw = self.transport.cat_many([self.path(n) for n in todo], [sizes[n] for n in todo])
        known.update({n: decode_index(n, d, self.path(n)) for n, d in zip(todo, raw, strict=True)})
        return [known[n] for n in units]


def _slice_into(
    out: list[bytes | None], block: bytes, start: int, members: np.ndarray, where: Located
) -> None:
    """Cut the entries ``members`` out of ``block`` (which begins at offset ``start``)."""
    for i, offset, size in zip(
        members.tolist(), where.offset[members].tolist(), where.size[members].tolist(), strict=True
    ):
        out[i] = block[offset - start : offset - start + size]  # short: fails the hash check
