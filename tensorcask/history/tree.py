"""Paged Merkle record trees (prolly trees).

A column's records, ``encoded key -> digest``, are kept sorted and cut into
pages. A key ends a page at level ``L`` when ``xxh3_64(key, seed=L)`` has its
low :data:`PAGE_BITS` bits clear, so page boundaries depend only on the keys,
never on the order of edits: the same records always give the same pages,
the same root hash, and equal subtrees in two versions have equal hashes.

Level 0 pages hold ``key -> digest``; a page at level ``L > 0`` holds, for
each child page, ``last key of child -> child hash + record count``. The root
is the lowest level with a single page. An update rewrites only the pages its
edits fall into (plus a neighbour when a boundary key is deleted) and their
ancestors, so a commit, a lookup or a diff costs O(changed pages · depth),
not O(records).
"""

from __future__ import annotations

import copy
import itertools
import struct
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from xxhash import xxh3_64_intdigest

from ..hashing import object_hash
from .objectstore import WriteBatch

__all__ = ["EMPTY_ROOT", "Node", "RecordTree", "decode_node", "encode_node"]

PAGE_BITS = 9  # pages of ~512 entries
_MASK = (1 << PAGE_BITS) - 1
EMPTY_ROOT = b"\0" * 32
DIGEST_WIDTH = 32
INNER_WIDTH = 40  # child hash + u64 record count
_MAGIC = b"TCP1"
_HEAD = struct.Struct("<4sBI")

Edit = tuple[bytes, bytes | None]
"""``(encoded key, value)``; a ``None`` value deletes the key."""


class Node:
    """A page: sorted keys and fixed-width values, decoded lazily from its bytes."""

    __slots__ = ("_keys", "_offsets", "_positions", "data", "hash", "level", "vals", "width")

    def __init__(self, data: bytes, node_hash: bytes) -> None:
        magic, level, n = _HEAD.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError("not a record-tree page")
        start = _HEAD.size + 4 * (n + 1)
        self._offsets = [start + o for o in np.frombuffer(data, "<u4", n + 1, _HEAD.size).tolist()]
        self.data = data
        self.level = level
        self.vals = data[self._offsets[-1] :]
        self.width = DIGEST_WIDTH if level == 0 else INNER_WIDTH
        self.hash = node_hash
        self._keys: list[bytes] | None = None
        self._positions: dict[bytes, int] | None = None

    @property
    def keys(self) -> list[bytes]:
        """The sorted keys (decoded on first use)."""
        keys = self._keys
        if keys is None:
            data = self.data
            keys = self._keys = [data[a:b] for a, b in itertools.pairwise(self._offsets)]
        return keys

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def last_key(self) -> bytes:
        """The largest key."""
        offs = self._offsets
        return self.data[offs[-2] : offs[-1]]

    def find(self, key: bytes) -> int:
        """Index of ``key``, or -1, by binary search over the raw bytes."""
        data, offs = self.data, self._offsets
        lo, hi = 0, len(offs) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if data[offs[mid] : offs[mid + 1]] < key:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(offs) - 1 and data[offs[lo] : offs[lo + 1]] == key:
            return lo
        return -1

    def position(self, key: bytes) -> int:
        """Index of ``key`` in a leaf, or -1 (a dict built on first use: for reads)."""
        positions = self._positions
        if positions is None:
            positions = self._positions = {k: i for i, k in enumerate(self.keys)}
        return positions.get(key, -1)

    def value(self, i: int) -> bytes:
        """The value stored with ``keys[i]``."""
        w = self.width
        return self.vals[i * w : (i + 1) * w]

    def values(self) -> list[bytes]:
        """All values, in key order."""
        w, v = self.width, self.vals
        return [v[i : i + w] for i in range(0, len(v), w)]

    def child(self, i: int) -> bytes:
        """Hash of child ``i`` (inner pages)."""
        return self.vals[i * INNER_WIDTH : i * INNER_WIDTH + 32]

    def child_count(self, i: int) -> int:
        """Records below child ``i`` (inner pages)."""
        start = i * INNER_WIDTH + 32
        return int.from_bytes(self.vals[start : start + 8], "little")

    def count(self) -> int:
        """Records below this page."""
        if self.level == 0:
            return len(self)
        return sum(self.child_count(i) for i in range(len(self)))


def encode_node(level: int, keys: Sequence[bytes], vals: Sequence[bytes]) -> bytes:
    """Canonical page bytes (what the page hash covers)."""
    offsets = np.zeros(len(keys) + 1, dtype="<u4")
    np.cumsum(list(map(len, keys)), out=offsets[1:])
    return b"".join((_HEAD.pack(_MAGIC, level, len(keys)), offsets.tobytes(), *keys, *vals))


def decode_node(data: bytes, node_hash: bytes) -> Node:
    """Inverse of :func:`encode_node`."""
    return Node(data, node_hash)


def is_boundary(key: bytes, level: int) -> bool:
    """Whether ``key`` ends a page at ``level``."""
    return not xxh3_64_intdigest(key, level) & _MASK


class _RawLeaf:
    """A leaf page read without decoding its keys."""

    __slots__ = ("data", "layout", "n", "offsets", "start", "vals")

    def __init__(self, data: bytes) -> None:
        _, _, n = _HEAD.unpack_from(data)
        self.data = data
        self.n = n
        self.offsets = np.frombuffer(data, "<u4", n + 1, _HEAD.size)
        self.start = _HEAD.size + 4 * (n + 1)
        end = self.start + int(self.offsets[-1])
        self.layout = data[_HEAD.size : end]  # offsets and keys: equal layout, equal keys
        self.vals = data[end:]

    def key(self, i: int) -> bytes:
        return self.data[self.start + int(self.offsets[i]) : self.start + int(self.offsets[i + 1])]

    def digest(self, i: int) -> bytes:
        return self.vals[i * DIGEST_WIDTH : (i + 1) * DIGEST_WIDTH]

    def differing_rows(self, other: _RawLeaf) -> list[int]:
        # digests as four uint64 words: 8x fewer comparisons than bytes
        a = np.frombuffer(self.vals, "<u8").reshape(self.n, 4)
        b = np.frombuffer(other.vals, "<u8").reshape(other.n, 4)
        return np.flatnonzero((a != b).any(axis=1)).tolist()

    def entries(self) -> dict[bytes, bytes]:
        return {self.key(i): self.digest(i) for i in range(self.n)}


class RecordTree:
    """Reads and writes record trees whose pages live in an object table.

    Parameters
    ----------
    load:
        Returns the bytes of a stored page by hash (raises ``KeyError`` if
        missing).
    cache_pages:
        Decoded pages kept in memory (least recently used are dropped).
    load_many:
        Returns the bytes of several stored pages at once.

    A tree made by :meth:`with_batch` writes the new pages of its updates
    into a :class:`~tensorcask.history.objectstore.WriteBatch` and reads
    them back from it; the caller stores the batch.
    """

    def __init__(
        self,
        load: Callable[[bytes], bytes],
        cache_pages: int = 4096,
        load_many: Callable[[list[bytes]], list[bytes]] | None = None,
    ) -> None:
        self._load = load
        self._load_many = load_many
        self._cache: dict[bytes, Node] = {}
        self._cache_pages = cache_pages
        self._written: dict[bytes, bytes] = {}  # pages this process wrote lately, undecoded
        self.batch: WriteBatch | None = None

    def with_batch(self, batch: WriteBatch) -> RecordTree:
        """A view of this tree whose updates write new pages into ``batch``.

        It shares the decoded-page cache (pages are immutable), and reads the
        pages of ``batch`` as if they were stored.
        """
        view = copy.copy(self)
        view.batch = batch
        return view

    # -- reading ---------------------------------------------------------

    def node(self, node_hash: bytes) -> Node:
        """The decoded page ``node_hash``."""
        node = self._cache.get(node_hash)
        if node is not None:
            return node
        data = None if self.batch is None else self.batch.get(node_hash)
        if data is None:
            data = self._written.get(node_hash)
        if data is None:
            data = self._load(node_hash)
        node = decode_node(data, node_hash)
        self._remember(node_hash, node)
        return node

    def _remember(self, node_hash: bytes, node: Node) -> None:
        if len(self._cache) >= self._cache_pages:
            # evict the oldest page; upper pages are re-read at once if hot
            del self._cache[next(iter(self._cache))]
        self._cache[node_hash] = node

    def get(self, root: bytes, key: bytes) -> bytes | None:
        """The value stored for ``key``, or None."""
        if root == EMPTY_ROOT:
            return None
        node = self.node(root)
        while node.level:
            i = bisect_left(node.keys, key)
            if i == len(node.keys):
                return None
            node = self.node(node.child(i))
        i = node.position(key)
        return None if i < 0 else node.vals[i * DIGEST_WIDTH : (i + 1) * DIGEST_WIDTH]

    def get_many(self, root: bytes, keys: Sequence[bytes]) -> list[bytes | None]:
        """Values of several keys (None where absent), in the order given."""
        if root == EMPTY_ROOT:
            return [None] * len(keys)
        top = self.node(root)
        node_of = self.node
        out: list[bytes | None] = []
        for key in keys:
            node = top
            while node.level:
                i = bisect_left(node.keys, key)
                if i == len(node.keys):
                    break
                node = node_of(node.vals[i * INNER_WIDTH : i * INNER_WIDTH + 32])
            i = -1 if node.level else node.position(key)
            out.append(None if i < 0 else node.vals[i * DIGEST_WIDTH : (i + 1) * DIGEST_WIDTH])
        return out

    def count(self, root: bytes) -> int:
        """Number of records in the tree."""
        return 0 if root == EMPTY_ROOT else self.node(root).count()

    def leaves(self, root: bytes) -> Iterator[Node]:
        """Level-0 pages in key order."""
        if root == EMPTY_ROOT:
            return
        stack = [self.node(root)]
        while stack:
            node = stack.pop()
            if node.level == 0:
                yield node
            else:
                stack.extend(self.node(node.child(i)) for i in reversed(range(len(node.keys))))

    def leaves_of(self, roots: Sequence[bytes]) -> list[list[Node]]:
        """The level-0 pages of each tree, in key order, read one level at a time.

        Every page of one level of all the trees is loaded in one call of
        ``load_many``, so a remote is asked once per level (as many times as
        the trees are deep), not once per page.
        """
        fronts = [[] if root == EMPTY_ROOT else [root] for root in roots]
        out: list[list[Node]] = [[] for _ in roots]
        while any(fronts):
            wanted = list(dict.fromkeys(h for front in fronts for h in front))
            nodes = {h: node for h in wanted if (node := self._cache.get(h)) is not None}
            todo = [h for h in wanted if h not in nodes]
            for h, data in zip(todo, self._pages_bytes(todo), strict=True):
                nodes[h] = decode_node(data, h)
            for i, front in enumerate(fronts):
                level = [nodes[h] for h in front]
                if level and level[0].level == 0:
                    out[i] = level
                    fronts[i] = []
                else:
                    fronts[i] = [n.child(j) for n in level for j in range(len(n.keys))]
        return out

    def items(self, root: bytes) -> Iterator[tuple[bytes, bytes]]:
        """All ``(key, value)`` records in key order."""
        for leaf in self.leaves(root):
            yield from zip(leaf.keys, leaf.values(), strict=True)

    def pages(self, root: bytes) -> Iterator[Node]:
        """Every page of the tree (for verification and reachability)."""
        if root == EMPTY_ROOT:
            return
        stack = [self.node(root)]
        while stack:
            node = stack.pop()
            yield node
            if node.level:
                stack.extend(self.node(node.child(i)) for i in range(len(node.keys)))

    def diff(self, root_a: bytes, root_b: bytes) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        """Records that differ between two trees, skipping equal subtrees.

        Returns ``(only_a, only_b)``: the entries of the level-0 pages found in
        one tree but not the other. A page present in both trees holds the same
        records over the same key range, so every difference lies in these
        entries; keys in both dicts with different values are changes. Costs
        O(differing pages), not O(records).
        """
        if root_a == root_b:
            return {}, {}
        side_a = set() if root_a == EMPTY_ROOT else {root_a}
        side_b = set() if root_b == EMPTY_ROOT else {root_b}
        level_a = self.node(root_a).level if side_a else 0
        level_b = self.node(root_b).level if side_b else 0
        level = max(level_a, level_b)
        while True:
            common = side_a & side_b
            side_a -= common
            side_b -= common
            if level == 0:
                break
            side_a = self._children(side_a, level)
            side_b = self._children(side_b, level)
            level -= 1
        return self._leaf_diff(side_a, side_b)

    def _children(self, hashes: set[bytes], level: int) -> set[bytes]:
        """Expand the pages at ``level`` one level down (lower pages are kept)."""
        out: set[bytes] = set()
        for h in hashes:
            node = self.node(h)
            if node.level == level:
                out.update(node.child(i) for i in range(len(node.keys)))
            else:
                out.add(h)
        return out

    def _pages_bytes(self, hashes: list[bytes]) -> list[bytes]:
        """Raw bytes of many pages (one storage round trip when possible)."""
        batch = self.batch
        stored = [h for h in hashes if batch is None or h not in batch]
        if self._load_many is not None:
            loaded = dict(zip(stored, self._load_many(stored), strict=True))
        else:
            loaded = {h: self._load(h) for h in stored}
        if batch is not None:
            loaded.update((h, data) for h in hashes if (data := batch.get(h)) is not None)
        return [loaded[h] for h in hashes]

    def _leaf_diff(
        self, leaves_a: set[bytes], leaves_b: set[bytes]
    ) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        """Differing entries of two sets of leaves.

        Most differing leaves come in pairs with the same keys and some
        changed digests: those are compared as arrays without decoding keys.
        """
        only_a: dict[bytes, bytes] = {}
        only_b: dict[bytes, bytes] = {}
        list_a, list_b = list(leaves_a), list(leaves_b)
        raw = self._pages_bytes(list_a + list_b)
        pages_a = {h: _RawLeaf(data) for h, data in zip(list_a, raw, strict=False)}
        by_layout = {page.layout: h for h, page in pages_a.items()}
        for data in raw[len(list_a) :]:
            page_b = _RawLeaf(data)
            partner = by_layout.pop(page_b.layout, None)
            if partner is None:
                only_b.update(page_b.entries())
                continue
            page_a = pages_a.pop(partner)
            for i in page_a.differing_rows(page_b):
                key = page_a.key(i)
                only_a[key] = page_a.digest(i)
                only_b[key] = page_b.digest(i)
        for page in pages_a.values():
            only_a.update(page.entries())
        return only_a, only_b

    # -- writing ---------------------------------------------------------

    def update(self, root: bytes, edits: Sequence[Edit]) -> bytes:
        """Apply sorted, unique-key ``edits``; return the new root hash.

        New pages go into the tree's write batch (see :meth:`with_batch`);
        the caller stores the batch before anything refers to the root.
        """
        if not edits:
            return root
        if self.batch is None:
            raise TypeError("record-tree updates need a write batch: use tree.with_batch(batch)")
        height = -1 if root == EMPTY_ROOT else self.node(root).level
        level = 0
        level_edits: Sequence[Edit] = edits
        while True:
            new_entries, complete = self._update_level(root, height, level, level_edits)
            if complete:
                pages = [entry for entry in new_entries if entry[1] is not None]
                if len(pages) <= 1:  # the lowest single page is the root
                    new_entries = pages
                    break
            level_edits = new_entries
            level += 1
        if not new_entries:
            return EMPTY_ROOT
        new_root = new_entries[0][1][:32]  # type: ignore[index]
        node = self.node(new_root)
        while node.level and len(node.keys) == 1:  # the root is the lowest single page
            new_root = node.child(0)
            node = self.node(new_root)
        return new_root

    def build(self, items: Sequence[tuple[bytes, bytes]]) -> bytes:
        """Root of a tree holding exactly ``items`` (sorted by key)."""
        return self.update(EMPTY_ROOT, items)

    def _put(self, node_hash: bytes, data: bytes) -> None:
        assert self.batch is not None
        self.batch.put(node_hash, data)
        # The next commit's update starts from these pages: keep them (a page is named
        # by its content, so one never stored is simply never asked for).
        written = self._written
        if len(written) >= self._cache_pages:
            del written[next(iter(written))]
        written[node_hash] = data

    def _update_level(
        self, root: bytes, height: int, level: int, edits: Sequence[Edit]
    ) -> tuple[list[Edit], bool]:
        """Rewrite the pages of ``level`` that ``edits`` touch.

        Returns the edits for the level above (old page keys deleted, new
        page entries put) and whether the whole level was rebuilt.
        """
        if level > height:
            return self._rebuild_level(root, height, level, edits), True
        out: dict[bytes, bytes | None] = {}
        i, n = 0, len(edits)
        # Every level's last page ends with the tree's largest key (an inner page's
        # keys are its children's last keys), which the root's last key is.
        largest = self.node(root).last_key()
        while i < n:
            node = self._locate(root, level, edits[i][0])
            j = self._patchable(node, edits, i, last_page=node.last_key() == largest)
            if j > i:  # only new values for existing keys: patch the page in place
                out[node.last_key()] = self._patch(node, edits[i:j])
                i = j
                continue
            merged = dict(zip(node.keys, node.values(), strict=True))
            while True:
                last = node.last_key()
                out.setdefault(last, None)
                nxt = self._next(root, level, last)
                while i < n and (nxt is None or edits[i][0] <= last):
                    key, value = edits[i]
                    if value is None:
                        merged.pop(key, None)
                    else:
                        merged[key] = value
                    i += 1
                if nxt is None or (merged and is_boundary(max(merged), level)):
                    break
                node = nxt  # the region lost its closing boundary: absorb the next page
                merged.update(zip(node.keys, node.values(), strict=True))
            keys = sorted(merged)
            for key, value in self._write_pages(level, keys, [merged[k] for k in keys]):
                out[key] = value
        return sorted(out.items()), level == height

    def _patchable(self, node: Node, edits: Sequence[Edit], i: int, *, last_page: bool) -> int:
        """End of the run of edits from ``i`` that only re-value keys of ``node``.

        Returns ``i`` when some edit of the page would insert or delete a key:
        the page must then be rebuilt.
        """
        last = node.last_key()
        j = i
        n = len(edits)
        while j < n and edits[j][0] <= last:
            if edits[j][1] is None or node.find(edits[j][0]) < 0:
                return i
            j += 1
        if j < n and last_page:  # keys past the level's last page are inserted into it
            return i
        return j

    def _patch(self, node: Node, edits: Sequence[Edit]) -> bytes:
        """Store a copy of ``node`` with new values; return its parent entry."""
        w = node.width
        vals = bytearray(node.vals)
        for key, value in edits:
            k = node.find(key)
            vals[k * w : (k + 1) * w] = value  # type: ignore[assignment]
        # same keys, same layout: the new page is the old key section + new values
        data = node.data[: len(node.data) - len(node.vals)] + bytes(vals)
        node_hash = object_hash(data)
        self._put(node_hash, data)
        if node.level == 0:
            count = len(node)
        else:
            count = sum(
                int.from_bytes(vals[k + 32 : k + 40], "little") for k in range(0, len(vals), w)
            )
        return node_hash + count.to_bytes(8, "little")

    def _rebuild_level(
        self, root: bytes, height: int, level: int, edits: Sequence[Edit]
    ) -> list[Edit]:
        """Rebuild a level above the old root (or of an empty tree) entirely."""
        if height < 0 or level > height + 1:
            if all(v is not None for _, v in edits):
                return self._write_pages(level, [k for k, _ in edits], [v for _, v in edits])  # type: ignore[misc]
            base: dict[bytes, bytes] = {}
        else:
            top = self.node(root)
            base = {top.last_key(): root + top.count().to_bytes(8, "little")}
        for key, value in edits:
            if value is None:
                base.pop(key, None)
            else:
                base[key] = value
        keys = sorted(base)
        return self._write_pages(level, keys, [base[k] for k in keys])

    def _write_pages(self, level: int, keys: list[bytes], vals: list[bytes]) -> list[Edit]:
        """Cut sorted entries into pages, store them, return their parent entries."""
        entries: list[Edit] = []
        start = 0
        n = len(keys)
        ends = [i for i, key in enumerate(keys) if not xxh3_64_intdigest(key, level) & _MASK]
        if n and (not ends or ends[-1] != n - 1):
            ends.append(n - 1)
        for i in ends:
            page_keys, page_vals = keys[start : i + 1], vals[start : i + 1]
            data = encode_node(level, page_keys, page_vals)
            node_hash = object_hash(data)
            self._put(node_hash, data)
            if level == 0:
                count = len(page_keys)
            else:
                count = sum(int.from_bytes(v[32:40], "little") for v in page_vals)
            entries.append((keys[i], node_hash + count.to_bytes(8, "little")))
            start = i + 1
        return entries

    def _locate(self, root: bytes, level: int, key: bytes) -> Node:
        """The page at ``level`` whose key range holds (or would hold) ``key``."""
        node = self.node(root)
        while node.level > level:
            i = min(bisect_left(node.keys, key), len(node.keys) - 1)
            node = self.node(node.child(i))
        return node

    def _next(self, root: bytes, level: int, last_key: bytes) -> Node | None:
        """The page at ``level`` right after the one ending at ``last_key``."""
        node = self.node(root)
        if node.level == level:
            return None
        while node.level > level:
            i = bisect_right(node.keys, last_key)
            if i == len(node.keys):
                return None
            node = self.node(node.child(i))
        return node
