"""Streaming tables: one committed column of a remote, resolved once, down to its pieces.

Opening a commit on a remote costs a bounded number of requests, however
many records it has: the commit and its column roots are read directly, the
record trees of all named columns one level at a time (one request per
level and pack), and the data folder's indexes once. From them a
:class:`StreamTable` holds the column's keys in order and, per record, the
piece that holds it (:mod:`tensorcask.streaming.pieces`).

With a cache folder the tables are saved there (by column root, through the
same checked, piece-sharing :class:`~tensorcask.table_cache.TableCache` as
local repositories use), so DataLoader workers and later jobs open the
commit without asking the remote again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import CorruptionError, RefNotFoundError, RemoteError
from ..history.objects import ColumnRoot, ColumnSchema, Commit, CommitId, RecordRoot, commit_id_of
from ..history.refs import HEADS
from ..locations import KeyedTable, key_arrays
from ..remote.remote import Remote
from ..table_cache import TableCache
from .pieces import LARGE_ENTRY, PIECE_BYTES, PieceMap, map_pieces

__all__ = [
    "StreamTable",
    "default_commit",
    "missing_error",
    "open_commit",
    "remote_gone",
    "stream_tables",
    "table_from_arrays",
]

_FORMAT = "stream-2"  # 2: tables keep their records' digests
_FULL_ID = re.compile(r"[0-9a-fA-F]{40}")


class StreamTable(KeyedTable):
    """The records of one committed column of a remote: keys in order, and their pieces.

    Attributes
    ----------
    schema:
        The column's schema.
    pieces:
        Where each record's bytes are (:class:`~tensorcask.streaming.pieces.PieceMap`).
    """

    def __init__(
        self, arrays: dict[str, np.ndarray], schema: ColumnSchema, count: int, pieces: PieceMap
    ) -> None:
        super().__init__(arrays, count)
        self.schema = schema
        self.pieces = pieces

    def missing(self, records: np.ndarray) -> int | None:
        """The first of ``records`` the remote holds no bytes for, or None."""
        bad = self.pieces.record_piece[records] < 0
        return int(records[int(np.flatnonzero(bad)[0])]) if bad.any() else None

    def arrays(self) -> dict[str, np.ndarray]:
        return {**super().arrays(), **self.pieces.arrays()}


def open_commit(remote: Remote, ref: str) -> tuple[CommitId, dict[str, ColumnRoot]]:
    """The full id and column roots of ``ref`` on ``remote``.

    A full commit id is read directly (one ranged read); a branch or tag
    costs one listing and one read more.
    """
    history = remote.history
    commit_id: str | None = ref.lower() if _FULL_ID.fullmatch(ref) else None
    data = None
    if commit_id is not None:
        data = remote.objects.packs.get_many([bytes.fromhex(commit_id)])[0]
    if data is None:
        commit_id = history.resolve(ref)
        data = remote.objects.packs.get_many([bytes.fromhex(commit_id)])[0]
        if data is None:
            raise CorruptionError(
                f"ref {ref!r} of {remote.url} names commit {commit_id[:12]}, which is missing "
                "from the remote; the remote is damaged: push the branch again",
                path=remote.url,
            )
    assert commit_id is not None
    if commit_id_of(data) != commit_id:
        raise CorruptionError(
            f"commit {commit_id} on {remote.url} does not hash to its id; the remote is "
            "damaged: run `repo.verify_remote()` and push again from a complete copy",
            path=remote.url,
        )
    commit = Commit.from_bytes(data)
    records = RecordRoot.from_bytes(history.load_object(commit.records))
    names = [name for name, _ in records.columns]
    roots = history.load_objects([root for _, root in records.columns])
    return CommitId(commit_id), {
        name: ColumnRoot.from_bytes(d) for name, d in zip(names, roots, strict=True)
    }


def default_commit(remote: Remote) -> CommitId:
    """What a dataset reads when given no commit: the head of the remote's ``main``."""
    head = remote.refs.get(HEADS + "main")
    if head is None:
        raise RefNotFoundError(
            f"remote {remote.url} has no branch 'main'; pass commit= (a commit id, branch or tag)"
        )
    return head


def stream_tables(
    remote: Remote,
    roots: Sequence[ColumnRoot],
    cache: TableCache | None,
    purges: str = "",
    purged: Callable[[int, StreamTable], np.ndarray] | None = None,
) -> list[StreamTable]:
    """The streaming tables of some column roots: from ``cache`` where saved, else built
    from the remote (all columns at once) and saved.

    ``purges`` names the remote's purge records: a purge rewrites data packs,
    so tables saved before it (naming the old packs) are not used after it.
    A table is saved when the remote holds every record's bytes, or lacks
    only those of purged samples (``purged(i, table)``: the mask of root ``i``'s).
    """
    out: dict[int, StreamTable] = {}
    stamps = [
        {
            "format": _FORMAT,
            "root": r.hash.hex(),
            "count": r.count,
            "piece": PIECE_BYTES,
            "large": LARGE_ENTRY,
        }
        for r in roots
    ]
    if cache is not None:
        for i, (root, stamp) in enumerate(zip(roots, stamps, strict=True)):
            arrays = cache.load(root.hash.hex() + purges, stamp)
            if arrays is None:
                continue
            try:
                out[i] = table_from_arrays(dict(arrays.items()), root)
            except (KeyError, ValueError):
                cache.forget(root.hash.hex() + purges)
    todo = [i for i in range(len(roots)) if i not in out]
    if todo:
        for i, table in zip(todo, _build(remote, [roots[i] for i in todo]), strict=True):
            out[i] = table
            if cache is not None and _complete(i, table, purged):
                cache.save(roots[i].hash.hex() + purges, stamps[i], table.arrays())
    return [out[i] for i in range(len(roots))]


def _complete(
    i: int, table: StreamTable, purged: Callable[[int, StreamTable], np.ndarray] | None
) -> bool:
    """Whether the remote holds the bytes of every record of ``table`` that is not purged."""
    absent = table.pieces.record_piece < 0
    if not absent.any():
        return True
    return purged is not None and not (absent & ~purged(i, table)).any()


def table_from_arrays(arrays: dict[str, np.ndarray], root: ColumnRoot) -> StreamTable:
    """The table of ``root`` from the arrays :meth:`StreamTable.arrays` gave (KeyError or
    ValueError if they do not make one)."""
    pieces = PieceMap.from_arrays(arrays)
    if len(pieces.record_piece) != root.count:
        raise ValueError("a saved streaming table has the wrong number of records")
    keys: dict[str, np.ndarray] = {
        k: arrays[k] for k in ("int_keys", "keys", "key_lengths") if k in arrays
    }
    if not keys:
        raise KeyError("keys")
    digests = arrays["digests"]
    if digests.shape != (root.count, 32):
        raise ValueError("a saved streaming table has digests of the wrong shape")
    return StreamTable({**keys, "digests": digests}, root.schema, root.count, pieces)


def _build(remote: Remote, roots: Sequence[ColumnRoot]) -> list[StreamTable]:
    """Walk the record trees of ``roots`` together, then locate every record's bytes."""
    leaves = remote.history.tree.leaves_of([r.tree for r in roots])
    keyed: list[tuple[list[bytes], np.ndarray]] = []
    for pages in leaves:
        raw_keys = [k for page in pages for k in page.keys]
        digests = np.frombuffer(b"".join(page.vals for page in pages), np.uint8).reshape(-1, 32)
        keyed.append((raw_keys, digests))
    every = np.concatenate([d for _, d in keyed]) if keyed else np.zeros((0, 32), np.uint8)
    located = remote.data.retrying(lambda: remote.data.locate(every))
    indexes = remote.data.indexes()
    out = []
    at = 0
    for root, (raw_keys, digests) in zip(roots, keyed, strict=True):
        if len(raw_keys) != root.count:
            raise CorruptionError(
                f"column root {root.hash.hex()[:16]} on {remote.url} counts {root.count} records "
                f"but its tree holds {len(raw_keys)}; the remote is damaged",
                path=remote.url,
            )
        part = slice(at, at + len(digests))
        at += len(digests)
        pieces = map_pieces(
            indexes, located.pack[part], located.offset[part], located.size[part], located.packs
        )
        arrays = {**key_arrays(raw_keys), "digests": digests}
        out.append(StreamTable(arrays, root.schema, len(raw_keys), pieces))
    return out


def missing_error(url: str, column: str, key: object, commit: str) -> CorruptionError:
    """The error of a record whose bytes are in none of the remote's data packs."""
    return CorruptionError(
        f"column {column!r}, key {key!r} of commit {commit[:12]}: its sample is in none of "
        f"the data packs of {url}; the remote is damaged or was pushed partially: push the "
        "data again from a complete copy",
        column=column,
        key=key,
        path=url,
    )


def remote_gone(url: str, pack: str) -> RemoteError:
    """The error of a data pack that a table names but the remote no longer holds."""
    return RemoteError(
        f"data pack {pack} of {url} is gone though the streaming table names it; the remote "
        "was rewritten since: open the dataset again"
    )
