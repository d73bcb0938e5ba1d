"""Merge bases and three-way merges of column sets.

The merge base comes from the commit graph, never from timestamps: the best
common ancestors of two commits are the common ancestors that are not
ancestors of another common ancestor. Criss-cross histories have several; the
one with the smallest id is taken, so every replica picks the same base.
Either choice is safe: a change that one best ancestor has and the other
lacks is present on both sides of the merge and so merges cleanly.

A three-way merge never loses data silently. Every key changed on both sides
in different ways is a :class:`Conflict`, and so is a column deleted on one
side while changed on the other, or a schema change that the other side does
not share. Identical changes on both sides are not conflicts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..keys import Key, decode_key
from .diff import RecordChanges, record_changes
from .objects import ColumnRoot
from .reach import ancestry
from .store import History
from .tree import EMPTY_ROOT, Edit, RecordTree

__all__ = ["Conflict", "ancestors", "merge_base", "merge_columns"]

BOTH_ADDED = "both_added"
BOTH_CHANGED = "both_changed"
CHANGED_DELETED = "changed_deleted"
SCHEMA_CHANGED = "schema_changed"
COLUMN_DELETED = "column_deleted"


@dataclass(frozen=True)
class Conflict:
    """One conflicting change found by a merge.

    Attributes
    ----------
    column:
        The column.
    key:
        The sample key, or None for a whole-column conflict.
    kind:
        ``both_added`` (both sides added the key with different values),
        ``both_changed`` (both changed it differently), ``changed_deleted``
        (one side changed it, the other deleted it), ``schema_changed`` (one
        side changed the column's schema, the other changed the column
        differently), ``column_deleted`` (one side deleted the column, the
        other changed it).
    base, ours, theirs:
        Hex digests of the key on each side (None: absent); for column
        conflicts, hashes of the column roots.
    """

    column: str
    key: Key | None
    kind: str
    base: str | None
    ours: str | None
    theirs: str | None

    def __str__(self) -> str:
        where = self.column if self.key is None else f"{self.column}[{self.key!r}]"
        return f"{where}: {self.kind.replace('_', ' ')}"


def ancestors(history: History, start: str) -> set[str]:
    """``start`` and every commit reachable from it."""
    return set(ancestry(history, [start]))


def merge_base(history: History, a: str, b: str) -> str | None:
    """The merge base of commits ``a`` and ``b`` (None: unrelated histories)."""
    common = ancestors(history, a) & ancestors(history, b)
    if not common:
        return None
    # one walk marks every strict ancestor of a common ancestor
    shadowed = ancestry(history, [p for c in common for p in history.commit(c).parents])
    return min(common - set(shadowed))


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _root_hex(root: ColumnRoot | None) -> str | None:
    return None if root is None else root.hash.hex()


def merge_columns(
    tree: RecordTree,
    base: dict[str, ColumnRoot],
    ours: dict[str, ColumnRoot],
    theirs: dict[str, ColumnRoot],
) -> tuple[dict[str, ColumnRoot], list[Conflict]]:
    """Three-way merge of column sets; returns the merged columns and all conflicts.

    ``tree`` writes the merged record pages into its write batch.
    """
    merged: dict[str, ColumnRoot] = {}
    conflicts: list[Conflict] = []
    for name in sorted(set(base) | set(ours) | set(theirs)):
        b, o, t = base.get(name), ours.get(name), theirs.get(name)
        result = _merge_column(tree, name, b, o, t, conflicts)
        if result is not None:
            merged[name] = result
    return merged, conflicts


def _merge_column(
    tree: RecordTree,
    name: str,
    b: ColumnRoot | None,
    o: ColumnRoot | None,
    t: ColumnRoot | None,
    conflicts: list[Conflict],
) -> ColumnRoot | None:
    if o == t or t == b:
        return o
    if o == b:
        return t
    if o is None or t is None:  # deleted on one side, changed on the other
        conflicts.append(
            Conflict(name, None, COLUMN_DELETED, _root_hex(b), _root_hex(o), _root_hex(t))
        )
        return None
    if o.schema != t.schema:
        conflicts.append(
            Conflict(name, None, SCHEMA_CHANGED, _root_hex(b), _root_hex(o), _root_hex(t))
        )
        return None
    # Same schema on both sides. If it is new (both re-created the column), the
    # old records are no common ground: merge as if both started empty.
    base_tree = b.tree if b is not None and b.schema == o.schema else EMPTY_ROOT
    ours_changes = record_changes(tree, base_tree, o.tree)
    theirs_changes = record_changes(tree, base_tree, t.tree)
    edits = _apply_theirs(name, base_tree, ours_changes, theirs_changes, conflicts)
    merged_tree = tree.update(o.tree, edits)
    return ColumnRoot(o.schema, merged_tree, tree.count(merged_tree))


def _apply_theirs(
    name: str,
    base_tree: bytes,
    ours: RecordChanges,
    theirs: RecordChanges,
    conflicts: list[Conflict],
) -> list[Edit]:
    """Edits that bring their non-conflicting changes onto our tree."""
    edits: list[Edit] = []
    ours_keys = ours.keys()
    for key in sorted(theirs.keys()):
        after_theirs = theirs.after(key)
        if key not in ours_keys:
            edits.append((key, after_theirs))
            continue
        after_ours = ours.after(key)
        if after_ours == after_theirs:
            continue  # the same change on both sides
        before = theirs.removed.get(key) or (theirs.changed.get(key) or (None, None))[0]
        if before is None:
            before = ours.removed.get(key) or (ours.changed.get(key) or (None, None))[0]
        if before is None:
            kind = BOTH_ADDED
        elif after_ours is None or after_theirs is None:
            kind = CHANGED_DELETED
        else:
            kind = BOTH_CHANGED
        conflicts.append(
            Conflict(
                name, decode_key(key), kind, _hex(before), _hex(after_ours), _hex(after_theirs)
            )
        )
    return edits


def describe(conflicts: Iterable[Conflict], limit: int = 5) -> str:
    """A short listing of conflicts for an error message."""
    items = list(conflicts)
    shown = "; ".join(str(c) for c in items[:limit])
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{shown}{more}"
