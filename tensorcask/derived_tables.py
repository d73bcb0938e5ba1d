"""Column tables derived at commit time from the parent's table and the edits.

A loader that opens a commit needs its column tables (:mod:`tensorcask.locations`).
Built from scratch, a table costs a walk of the record tree and a content-index
lookup per record: about a second for 200k records, paid by the first process
that reads the commit. The writer knows better: the parent commit's table (in
the cache when anything read it, or when it was itself derived) and the
staged edits, whose new contents it just stored. So a commit derives the new
table in array operations that cost O(records) memory copies and O(edits)
lookups, and saves it; the first reader maps it in milliseconds.

Only what vectorises is derived: int keys and fixed-shape columns stored in
memmap rows. Anything else (str keys, blob locations, a parent table not at
hand, an edit whose content could not be located) is left to be built when
first read, as before; a derived table is never wrong, only sometimes absent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .history.objects import ColumnSchema
from .history.tree import Edit
from .locations import ColumnTable, Lookup, parse_memmap

__all__ = ["derive_table"]

_INT_KEY = 9  # tag byte + 8 big-endian bytes


def derive_table(
    base: ColumnTable | None,
    edits: Sequence[Edit],
    lookup: Lookup,
    schema: ColumnSchema,
    count: int,
) -> ColumnTable | None:
    """The table of a column after ``edits`` (sorted by key, None = deleted) on ``base``.

    ``base`` is the parent commit's table of the column (None for a new
    column); ``lookup`` resolves the edited contents; ``count`` is the new
    record count (a check). Returns None where the table is not derivable
    (see the module notes).
    """
    if schema.backend != "memmap" or not schema.fixed:
        return None
    if base is not None and (base.int_keys is None or base.segments is None):
        return None
    packed = np.frombuffer(b"".join([k for k, _ in edits]), np.uint8)
    if len(packed) != _INT_KEY * len(edits):
        return None
    packed = packed.reshape(-1, _INT_KEY)
    if packed[:, 0].any():  # tag 0 ends each 9 bytes: every key is an int (see keys.py)
        return None
    values = [v for _, v in edits]
    written = [v for v in values if v is not None]
    found = lookup(written) if written else []
    resolved = [raw for raw in found if isinstance(raw, bytes)]
    if len(resolved) != len(found):
        return None  # damaged or absent: the reader's build says which record
    located = parse_memmap(resolved, schema) if resolved else _no_rows()
    if located is None:
        return None
    edit_keys = np.ascontiguousarray(packed[:, 1:]).view(">u8").ravel().astype(np.uint64)
    sets = np.array([v is not None for v in values], bool)
    new: dict[str, np.ndarray] = {
        "digests": np.frombuffer(b"".join(written), np.uint8).reshape(-1, 32),
        **located,
    }
    if base is None:
        old_keys = np.empty(0, np.uint64)
        old = {name: array[:0] for name, array in new.items()}
    else:
        assert base.int_keys is not None and base.segments is not None
        assert base.rows is not None and base.checksums is not None
        old_keys = np.asarray(base.int_keys)
        old = {
            "digests": np.asarray(base.digests),
            "segments": np.asarray(base.segments),
            "rows": np.asarray(base.rows),
            "checksums": np.asarray(base.checksums),
        }
    at = np.searchsorted(old_keys, edit_keys)
    present = np.zeros(len(edits), bool)
    if len(old_keys):
        present = (at < len(old_keys)) & (old_keys[np.minimum(at, len(old_keys) - 1)] == edit_keys)
    value_of = np.cumsum(sets) - 1  # an edit's row in `new`
    changed = present & sets
    keep = np.ones(len(old_keys), bool)
    keep[at[present & ~sets]] = False
    added = ~present & sets
    out_keys = old_keys[keep]
    where = np.searchsorted(out_keys, edit_keys[added])
    dropping, adding = not keep.all(), added.any()
    arrays: dict[str, np.ndarray] = {}
    for name, array in old.items():
        if changed.any():
            array = array.copy()
            array[at[changed]] = new[name][value_of[changed]]
        if dropping:
            array = array[keep]
        if adding:
            array = np.insert(array, where, new[name][value_of[added]], axis=0)
        arrays[name] = array
    arrays["int_keys"] = np.insert(out_keys, where, edit_keys[added]) if adding else out_keys
    if len(arrays["int_keys"]) != count:
        return None
    return ColumnTable(arrays, schema, count)


def _no_rows() -> dict[str, np.ndarray]:
    return {
        "segments": np.empty(0, np.int64),
        "rows": np.empty(0, np.intp),
        "checksums": np.empty(0, np.uint64),
    }
