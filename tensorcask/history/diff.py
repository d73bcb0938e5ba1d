"""Differences between two sets of columns (two commits, or a commit and staging).

Record differences come from :meth:`RecordTree.diff`, which skips pages the
two versions share, so a diff costs O(size of the change).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..keys import Key, decode_key
from .objects import ColumnRoot
from .tree import EMPTY_ROOT, RecordTree

__all__ = ["ColumnDiff", "Diff", "RecordChanges", "diff_columns", "record_changes"]


@dataclass(frozen=True)
class RecordChanges:
    """Raw record differences of one column: encoded key -> digest(s)."""

    added: dict[bytes, bytes] = field(default_factory=dict)
    removed: dict[bytes, bytes] = field(default_factory=dict)
    changed: dict[bytes, tuple[bytes, bytes]] = field(default_factory=dict)

    def after(self, key: bytes) -> bytes | None:
        """The key's digest after the change (None: deleted)."""
        if key in self.changed:
            return self.changed[key][1]
        return self.added.get(key)

    def keys(self) -> set[bytes]:
        """Every key the change touches."""
        return set(self.added) | set(self.removed) | set(self.changed)


def record_changes(tree: RecordTree, old: bytes, new: bytes) -> RecordChanges:
    """How the records of tree ``old`` become those of tree ``new``."""
    only_old, only_new = tree.diff(old, new)
    changes = RecordChanges()
    for key, digest in only_old.items():
        other = only_new.get(key)
        if other is None:
            changes.removed[key] = digest
        elif other != digest:
            changes.changed[key] = (digest, other)
    for key, digest in only_new.items():
        if key not in only_old:
            changes.added[key] = digest
    return changes


@dataclass(frozen=True)
class ColumnDiff:
    """Keys of one column that were added, removed or changed."""

    added: frozenset[Key] = frozenset()
    removed: frozenset[Key] = frozenset()
    changed: frozenset[Key] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


@dataclass(frozen=True)
class Diff:
    """How to go from version ``a`` to version ``b``.

    Attributes
    ----------
    columns:
        Each column whose records differ -> its :class:`ColumnDiff` (an added
        column lists all its keys as added, a removed one as removed).
    added_columns, removed_columns:
        Names of columns only in ``b`` / only in ``a``.
    schema_changed:
        Names of columns in both whose schema differs.
    """

    columns: dict[str, ColumnDiff]
    added_columns: frozenset[str]
    removed_columns: frozenset[str]
    schema_changed: frozenset[str]

    def __bool__(self) -> bool:
        return bool(
            self.columns or self.added_columns or self.removed_columns or self.schema_changed
        )

    def __str__(self) -> str:
        if not self:
            return "no changes"
        lines = []
        for name in sorted(self.added_columns):
            lines.append(f"+ column {name}")
        for name in sorted(self.removed_columns):
            lines.append(f"- column {name}")
        for name in sorted(self.schema_changed):
            lines.append(f"~ column {name}: schema changed")
        for name, change in sorted(self.columns.items()):
            lines.append(
                f"  {name}: {len(change.added)} added, {len(change.removed)} removed, "
                f"{len(change.changed)} changed"
            )
        return "\n".join(lines)


def _keys(raw: object) -> frozenset[Key]:
    return frozenset(decode_key(k) for k in raw)  # type: ignore[attr-defined]


def diff_columns(tree: RecordTree, a: dict[str, ColumnRoot], b: dict[str, ColumnRoot]) -> Diff:
    """The :class:`Diff` from columns ``a`` to columns ``b``."""
    columns: dict[str, ColumnDiff] = {}
    schema_changed = set()
    for name in sorted(set(a) | set(b)):
        old, new = a.get(name), b.get(name)
        if old is not None and new is not None and old.schema != new.schema:
            schema_changed.add(name)
        old_tree = EMPTY_ROOT if old is None else old.tree
        new_tree = EMPTY_ROOT if new is None else new.tree
        changes = record_changes(tree, old_tree, new_tree)
        column = ColumnDiff(_keys(changes.added), _keys(changes.removed), _keys(changes.changed))
        if column:
            columns[name] = column
    return Diff(
        columns,
        frozenset(set(b) - set(a)),
        frozenset(set(a) - set(b)),
        frozenset(schema_changed),
    )
