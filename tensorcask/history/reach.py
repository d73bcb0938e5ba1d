"""Reachability: what some commits need, less what other commits already have.

One walk serves every question of the form "which commits, history objects
and sample digests do these commits reach, that those do not?":

* ``gc`` keeps what the refs reach (nothing excluded);
* ``verify`` checks what a ref (or every ref) reaches, reporting damage as it
  goes instead of stopping;
* ``log``, ``merge`` and branch deletion ask for the ancestry of commits;
* ``push`` and ``fetch`` send what one side reaches and the other does not,
  and ``purge`` finds the commits that reach a sample.

The walk compares record trees level by level, the way
:meth:`~tensorcask.history.tree.RecordTree.diff` does: a page that the
excluded side also has is skipped with everything below it, so the cost grows
with the difference between the two sides, not with the size of either.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from ..errors import CaskError
from .objects import ColumnRoot, ColumnSchema, Commit, CommitId, RecordRoot
from .store import History
from .tree import EMPTY_ROOT, Node, decode_node

__all__ = ["Damage", "Reachable", "ancestry", "newest_first", "reachable"]

Damage = Callable[[str, Exception], None]
"""Called as ``on_damage(where, error)`` for an object that cannot be read;
the walk then goes on without it. Without it, the error is raised."""

LeafVisitor = Callable[[str, ColumnSchema, Node], None]
"""Called as ``on_leaf(column, schema, page)`` for each newly reached record page."""

Label = tuple[str, ColumnSchema]
"""The name and schema of the column a page was reached through."""

Progress = Callable[[str, int], None]

_PROBLEMS = (CaskError, OSError, ValueError, KeyError)


@dataclass
class Reachable:
    """What a walk reached.

    Attributes
    ----------
    commits:
        Commit ids, each before its parents.
    objects:
        Names of record roots, column roots and record pages.
    digests:
        Content digests of the samples in the reached record pages (empty
        when the walk was asked not to collect them).
    pages:
        How many record pages were reached.
    order:
        ``objects`` in the order the walk reached them: record roots, column
        roots, then pages a level at a time from the top down (each level
        sorted), which is the order a reader opening a commit needs them.
    """

    commits: list[CommitId] = field(default_factory=list)
    objects: set[bytes] = field(default_factory=set)
    digests: set[bytes] = field(default_factory=set)
    pages: int = 0
    order: list[bytes] = field(default_factory=list)

    def add(self, names: Iterable[bytes]) -> None:
        """Record objects reached (``order`` keeps the first time each one was)."""
        for name in names:
            if name not in self.objects:
                self.objects.add(name)
                self.order.append(name)


def ancestry(
    history: History,
    starts: Iterable[str],
    *,
    stop: AbstractSet[str] = frozenset(),
    on_damage: Damage | None = None,
) -> list[CommitId]:
    """``starts`` and every commit they reach, each before its parents.

    Commits in ``stop`` are neither returned nor walked past.
    """
    # Depth first, each commit finished after its parents: the reverse of the
    # finishing order lists every commit before its parents.
    seen: set[str] = set(stop)
    finished: list[CommitId] = []
    stack: list[tuple[str, bool]] = [(s, False) for s in starts]
    while stack:
        cid, parents_done = stack.pop()
        if parents_done:
            finished.append(CommitId(cid))
            continue
        if cid in seen:
            continue
        seen.add(cid)
        commit = _commit(history, cid, on_damage)
        if commit is None:
            continue
        stack.append((cid, True))
        stack.extend((p, False) for p in reversed(commit.parents) if p not in seen)
    finished.reverse()
    return finished


def newest_first(history: History, start: str, limit: int | None = None) -> Iterator[Commit]:
    """The commits ``start`` reaches, newest first (ties by id), each once; lazily."""
    seen = {start}
    first = history.commit(start)
    heap = [(-first.time_us, _desc(start), start)]
    emitted = 0
    while heap and (limit is None or emitted < limit):
        _, _, current = heapq.heappop(heap)
        commit = history.commit(current)
        yield commit
        emitted += 1
        for parent in commit.parents:
            if parent not in seen:
                seen.add(parent)
                heapq.heappush(heap, (-history.commit(parent).time_us, _desc(parent), parent))


def _desc(commit_id: str) -> bytes:
    # the larger id comes first among commits of equal time
    return bytes(255 - b for b in bytes.fromhex(commit_id))


def reachable(
    history: History,
    from_commits: Iterable[str],
    excluding: Iterable[str] = (),
    *,
    digests: bool = True,
    on_damage: Damage | None = None,
    on_leaf: LeafVisitor | None = None,
    progress: Progress | None = None,
) -> Reachable:
    """Commits, objects and digests that ``from_commits`` reach and ``excluding`` do not.

    Parameters
    ----------
    history:
        The history to walk.
    from_commits:
        Where the walk starts.
    excluding:
        Commits whose history the other side already has: their ancestry is
        left out, and so are the objects and digests that the commits on the
        border between the two sides share with the new ones, found by
        comparing each changed column with the same column across the border.
        Commits are exact; objects and digests may include a few the other
        side has (a page shared between two columns), never miss one it lacks.
    digests:
        Collect the content digests of reached record pages.
    on_damage:
        Report objects that cannot be read, and go on (see :data:`Damage`).
    on_leaf:
        Called for every reached record page, with its column's name.
    progress:
        Called as ``progress("walking history", pages)`` now and then.
    """
    excluded = set(ancestry(history, excluding, on_damage=on_damage))
    out = Reachable(commits=ancestry(history, from_commits, stop=excluded, on_damage=on_damage))
    border = {p for c in out.commits for p in history.commit(c).parents if p in excluded}
    border.update(c for c in excluding if c in excluded)
    old_roots = _column_roots(history, border, on_damage, out=None)
    new_roots = _column_roots(history, out.commits, on_damage, out=out)
    old_hashes = {h for h, _, _ in old_roots}
    new_tops: dict[bytes, Label] = {}
    for root_hash, name, root in new_roots:
        if root_hash in old_hashes or root_hash in out.objects:
            continue
        out.add([root_hash])
        if root.tree != EMPTY_ROOT:
            new_tops.setdefault(root.tree, (name, root.schema))
    # New pages are compared with the old pages of the same column only (a page
    # shared across columns is sent again: never missed, at worst repeated), and
    # an old column the new side shares whole holds nothing to compare against.
    new_hashes = {h for h, _, _ in new_roots}
    changed = {name for name, _ in new_tops.values()}
    old_tops = {
        root.tree: (name, root.schema)
        for root_hash, name, root in old_roots
        if root.tree != EMPTY_ROOT and root_hash not in new_hashes and name in changed
    }
    _walk_pages(history, new_tops, old_tops, out, digests, on_damage, on_leaf, progress)
    return out


def _commit(history: History, cid: str, on_damage: Damage | None) -> Commit | None:
    try:
        return history.commit(cid)
    except _PROBLEMS as exc:
        if on_damage is None:
            raise
        on_damage(f"commit {cid}", exc)
        return None


def _load(
    history: History, names: list[bytes], where: dict[bytes, str], on_damage: Damage | None
) -> dict[bytes, bytes]:
    """Checked objects by name; damaged ones reported (and left out) or raised."""
    try:
        return dict(zip(names, history.load_objects(names), strict=True))
    except _PROBLEMS:
        if on_damage is None:
            raise
    found: dict[bytes, bytes] = {}
    for name in names:  # find which ones are damaged
        try:
            found[name] = history.load_object(name)
        except _PROBLEMS as exc:
            on_damage(where[name], exc)
    return found


def _column_roots(
    history: History, commits: Iterable[str], on_damage: Damage | None, out: Reachable | None
) -> list[tuple[bytes, str, ColumnRoot]]:
    """``(hash, column name, root)`` of every column of ``commits`` (each root once).

    With ``out``, record roots not seen before are added to ``out.objects``.
    """
    commit_of: dict[bytes, str] = {}  # record root -> the first commit found with it
    for cid in commits:
        commit = _commit(history, cid, on_damage)
        if commit is not None:
            commit_of.setdefault(commit.records, cid)
    if out is not None:
        out.add(commit_of)
    where = {r: f"record root of commit {cid}" for r, cid in commit_of.items()}
    records = _load(history, list(where), where, on_damage)
    root_where: dict[bytes, str] = {}
    names: dict[bytes, str] = {}
    for record_hash, data in records.items():
        for name, root_hash in RecordRoot.from_bytes(data).columns:
            if root_hash not in root_where:
                root_where[root_hash] = f"column {name!r} of commit {commit_of[record_hash]}"
                names[root_hash] = name
    loaded = _load(history, list(root_where), root_where, on_damage)
    return [(h, names[h], ColumnRoot.from_bytes(data)) for h, data in loaded.items()]


_LEAF_CHUNK = 1024  # leaves decoded at a time: memory stays flat however big the trees


def _walk_pages(
    history: History,
    new: dict[bytes, Label],
    old: dict[bytes, Label],
    out: Reachable,
    digests: bool,
    on_damage: Damage | None,
    on_leaf: LeafVisitor | None,
    progress: Progress | None,
) -> None:
    """Walk both sides' pages from the top level down, skipping pages the old side has.

    ``new`` and ``old`` map the top pages of each side to a column name; the
    children of a page at level ``L`` are at level ``L - 1``, so only inner
    pages and the new leaves are ever read.
    """
    tops = _pages(history, {**old, **new}, on_damage)
    by_level: dict[int, tuple[set[bytes], set[bytes]]] = {}
    for h, page in tops.items():
        sides = by_level.setdefault(page.level, (set(), set()))
        if h in new:
            sides[0].add(h)
        if h in old:
            sides[1].add(h)
    names = {**old, **new}
    level = max(by_level, default=-1)
    while level >= 0:
        fresh, known = by_level.pop(level, (set(), set()))
        common = fresh & known
        fresh -= common | out.objects
        known -= common
        out.add(sorted(fresh))
        out.pages += len(fresh)
        if progress is not None:
            progress("walking history", out.pages)
        if level == 0:
            _leaves(history, fresh, known, names, out, digests, on_damage, on_leaf)
            return
        below = by_level.setdefault(level - 1, (set(), set()))
        for side, hashes in ((0, fresh), (1, known)):
            wanted = {h: names[h] for h in hashes}
            loaded = {h: tops[h] for h in hashes if h in tops}
            loaded.update(
                _pages(history, {h: n for h, n in wanted.items() if h not in loaded}, on_damage)
            )
            for h, page in loaded.items():
                for i in range(len(page)):
                    child = page.child(i)
                    names.setdefault(child, names[h])
                    below[side].add(child)
        level -= 1


def _leaves(
    history: History,
    fresh: set[bytes],
    known: set[bytes],
    names: dict[bytes, Label],
    out: Reachable,
    digests: bool,
    on_damage: Damage | None,
    on_leaf: LeafVisitor | None,
) -> None:
    """Visit the new leaves, a chunk at a time; their digests, less the old leaves' ones."""
    stale: set[bytes] = set()
    if digests and fresh:
        for chunk in _chunks(sorted(known)):
            for page in _pages(history, {h: names[h] for h in chunk}, on_damage).values():
                stale.update(page.values())
    for chunk in _chunks(sorted(fresh)):
        for h, page in _pages(history, {h: names[h] for h in chunk}, on_damage).items():
            if on_leaf is not None:
                on_leaf(*names[h], page)
            if digests:
                out.digests.update(d for d in page.values() if d not in stale)


def _chunks(items: list[bytes]) -> Iterator[list[bytes]]:
    for i in range(0, len(items), _LEAF_CHUNK):
        yield items[i : i + _LEAF_CHUNK]


def _pages(
    history: History, wanted: dict[bytes, Label], on_damage: Damage | None
) -> dict[bytes, Node]:
    """Decoded pages (checked against their hashes) by hash."""
    where = {h: f"a record page of column {label[0]!r}" for h, label in wanted.items()}
    raw = _load(history, list(wanted), where, on_damage)
    out: dict[bytes, Node] = {}
    for h, data in raw.items():
        try:
            out[h] = decode_node(data, h)
        except _PROBLEMS as exc:
            if on_damage is None:
                raise
            on_damage(where[h], exc)
    return out
