"""The repository's metadata database: one LMDB environment, several tables.

Tables (LMDB named databases):

``content``
    digest (32 bytes) -> encoded :class:`~tensorcask.storage.base.Location`.
``objects``
    object hash (32 bytes) -> record-tree pages, column roots, record roots.
``commits``
    commit id (20 bytes) -> encoded commit.
``refs``
    ``heads/<branch>`` / ``tags/<tag>`` -> commit id; ``HEAD`` -> ``heads/<branch>``.
``staging``
    ``<column>\\0<encoded key>`` -> digest, or ``b""`` for a staged deletion.
``meta``
    small JSON documents: ``config``, ``staging`` (branch, base, column ops).

Every publication (staged records, a commit with its pages and ref move) is
one write transaction, which LMDB makes atomic and durable (``sync=True``).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import lmdb

__all__ = ["TABLES", "MetaDB"]

TABLES = ("content", "objects", "commits", "refs", "staging", "meta")
_MAP_SIZE = 1 << 40  # address space only: LMDB files are sparse


_OPEN: dict[tuple[int, str], tuple[lmdb.Environment, int]] = {}
_OPEN_LOCK = threading.Lock()


def _acquire_env(path: Path, create: bool) -> lmdb.Environment:
    """The process's environment for ``path`` (LMDB allows one per process)."""
    key = (os.getpid(), str(path.resolve()))
    with _OPEN_LOCK:
        for inherited in [k for k in _OPEN if k[0] != key[0]]:
            # A forked child cannot use its parent's environments, and py-lmdb
            # refuses to reopen a path they hold. Closing them here is safe: the
            # parent's fcntl locks are not inherited and no transaction of ours
            # spans a fork.
            _OPEN.pop(inherited)[0].close()
        found = _OPEN.get(key)
        if found is not None:
            _OPEN[key] = (found[0], found[1] + 1)
            return found[0]
        env = _open_env(path, create)
        _OPEN[key] = (env, 1)
        return env


def _release_env(path: Path, env: lmdb.Environment) -> None:
    key = (os.getpid(), str(path.resolve()))
    with _OPEN_LOCK:
        found = _OPEN.get(key)
        if found is None or found[0] is not env:
            return
        if found[1] > 1:
            _OPEN[key] = (env, found[1] - 1)
        else:
            del _OPEN[key]
            env.close()


def _open_env(path: Path, create: bool) -> lmdb.Environment:
    return lmdb.open(
        str(path),
        map_size=_MAP_SIZE,
        max_dbs=len(TABLES) + 2,
        subdir=True,
        create=create,
        sync=True,
        metasync=True,
        readahead=False,
        max_readers=1024,
    )


class MetaDB:
    """An open metadata environment (shared by every handle in one process).

    Parameters
    ----------
    path:
        Directory of the LMDB environment.
    create:
        Create the environment if missing (only ``init`` does).
    """

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = Path(path)
        self._closed = False
        self.env = _acquire_env(self.path, create)
        self.tables = {name: self.env.open_db(name.encode(), create=create) for name in TABLES}

    def close(self) -> None:
        """Release this handle; the environment closes with its last handle. Idempotent."""
        if not self._closed:
            self._closed = True
            _release_env(self.path, self.env)

    def read(self) -> lmdb.Transaction:
        """A read-only snapshot transaction (use it as a context manager)."""
        return self.env.begin(write=False, buffers=False)

    def write(self) -> lmdb.Transaction:
        """A write transaction: as a context manager, committed (and fsynced) on
        success, aborted on error."""
        return self.env.begin(write=True)

    def get(self, txn: lmdb.Transaction, table: str, key: bytes) -> bytes | None:
        """One value from a table, or None."""
        value = txn.get(key, db=self.tables[table])
        return None if value is None else bytes(value)

    def put(self, txn: lmdb.Transaction, table: str, key: bytes, value: bytes) -> None:
        """Store one value in a table."""
        txn.put(key, value, db=self.tables[table])

    def delete(self, txn: lmdb.Transaction, table: str, key: bytes) -> bool:
        """Remove one key from a table; True if it existed."""
        return bool(txn.delete(key, db=self.tables[table]))

    def cursor(self, txn: lmdb.Transaction, table: str) -> lmdb.Cursor:
        """A cursor over a table (keys in byte order)."""
        return txn.cursor(db=self.tables[table])

    def get_json(self, txn: lmdb.Transaction, key: str) -> Any:
        """A JSON document from the ``meta`` table, or None."""
        raw = self.get(txn, "meta", key.encode())
        return None if raw is None else json.loads(raw)

    def put_json(self, txn: lmdb.Transaction, key: str, value: Any) -> None:
        """Store a JSON document in the ``meta`` table."""
        self.put(txn, "meta", key.encode(), json.dumps(value, sort_keys=True).encode())

    def drop(self, txn: lmdb.Transaction, table: str) -> None:
        """Empty a table in one step."""
        txn.drop(self.tables[table], delete=False)

    def disk_usage(self) -> int:
        """Bytes used by the environment's data file."""
        data = self.path / "data.mdb"
        return data.stat().st_size if data.exists() else 0
