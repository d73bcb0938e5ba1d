"""The parts a repository is made of, composed once and shared by its users.

A repository is an object store and a refs container for history (as in
dulwich), a staging area, a content store for sample bytes and the column
tables over it, all in one directory. :class:`RepositoryParts` opens and
holds them; :class:`~tensorcask.repository.Repository` is the public face
over it, and checkouts, maintenance and the loaders take the parts they need
from it rather than reaching into the repository.

On-disk layout of a repository directory::

    TENSORCASK      format marker
    meta/           LMDB environment: content index, history objects, refs, staging
    data/memmap/    fixed-shape sample segments
    data/hdf5/      variable-shape / compressed sample files
    data/lmdb/      str, bytes and small samples
    index/          run files of the content index
    cache/          checksummed column tables (rebuildable; see table_cache.py)
    writer.lock     the writer lock (holder info inside)

Each name is defined once, in :mod:`tensorcask.layout`.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

from .access import open_metadata
from .errors import CaskError, ReadOnlyError, RepositoryNotFoundError
from .history.objects import ColumnRoot, CommitId
from .history.objectstore import LMDBObjectStore
from .history.refs import HEADS, LMDBRefs
from .history.staging import Staging
from .history.store import History
from .layout import CACHE_DIR, DATA_DIR, FORMAT_FILE, WRITER_LOCK_FILE
from .locations import ColumnTable, ColumnTables
from .storage.content import ContentStore
from .storage.lock import WriterLock
from .storage.tombstones import default_who
from .table_cache import TableCache

__all__ = ["FORMAT_TEXT", "FORMAT_VERSION", "RepositoryParts", "read_format", "tree_bytes"]

DEFAULT_TABLE_CACHE_BYTES = 256 << 20
FORMAT_VERSION = 1
"""The newest repository format this tensorcask reads and writes."""
FORMAT_TEXT = f"tensorcask repository\nformat {FORMAT_VERSION}\n"
_FORMAT_LINE = re.compile(r"format ([0-9]{1,9})")


def read_format(marker: Path) -> int:
    """The format version the marker file ``marker`` (``TENSORCASK``) declares.

    Only reads. Raises :class:`~tensorcask.errors.CaskError` if the marker
    is not a valid tensorcask format marker, or declares a format newer than
    :data:`FORMAT_VERSION` (then the message names both versions and how to
    upgrade).
    """
    try:
        with open(marker, "rb") as f:
            data = f.read(4096)
    except OSError as exc:
        raise CaskError(f"cannot read the repository marker {marker}: {exc}") from exc
    lines = data.decode("utf-8", "replace").splitlines()
    found = None
    if len(lines) >= 2 and lines[0].strip() == "tensorcask repository":
        match = _FORMAT_LINE.fullmatch(lines[1].strip())
        if match is not None:
            found = int(match.group(1))
    if found is None or found < 1:
        raise CaskError(
            f"{marker} is not a valid tensorcask format marker (it should read "
            f"{FORMAT_TEXT!r}, it holds {data[:64]!r}); the repository at {marker.parent} is "
            "damaged or was not made by tensorcask: restore the file, or the repository from "
            "a clone or backup"
        )
    if found > FORMAT_VERSION:
        from . import __version__

        raise CaskError(
            f"the repository at {marker.parent} has format {found}, but this tensorcask "
            f"({__version__}) reads format {FORMAT_VERSION} at most; it was written by a newer "
            "tensorcask: upgrade with `pip install -U tensorcask`"
        )
    return found


class RepositoryParts:
    """The opened parts of one repository.

    Parameters
    ----------
    path:
        The repository directory.
    read_only:
        Refuse every write (a repository this process cannot write opens
        read-only by itself).

    Attributes
    ----------
    path:
        The repository directory, absolute.
    db:
        The metadata environment (content index, history, refs, staging).
    objects, refs:
        History objects and refs, as the interfaces remotes implement too.
    history:
        Commits and record trees over ``objects`` and ``refs``.
    staging:
        The staging area of the one branch being written.
    store:
        The read-only content store: digests to sample bytes.
    tables:
        The resolved column tables of committed columns (memory and disk).

    Raises
    ------
    RepositoryNotFoundError
        If ``path`` holds no repository.
    """

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.path = Path(path).absolute()
        if not (self.path / FORMAT_FILE).is_file():
            raise RepositoryNotFoundError(
                f"no tensorcask repository at {self.path}; create one with tensorcask.init() "
                "or `tensorcask init`"
            )
        read_format(self.path / FORMAT_FILE)  # before anything is opened or written
        self.db = open_metadata(self.path, read_only=read_only)
        self.objects = LMDBObjectStore(self.db)
        self.refs = LMDBRefs(self.db)
        self.history = History(self.objects, self.refs)
        self.staging = Staging(self.db)
        self.store = ContentStore(self.path / DATA_DIR, self.db, writable=False)
        self.store.partial_remote = self.partial_remote()
        self.tables = ColumnTables(
            self.history.tree,
            self.store,
            TableCache(
                self.path / CACHE_DIR, writable=not self.read_only, limit=self.table_cache_bytes
            ),
        )

    @property
    def read_only(self) -> bool:
        """Whether writes are refused (asked for, or the files are not writable)."""
        return self.db.readonly

    def check_alive(self) -> None:
        """Raise CaskError if the repository was removed or replaced since it was opened."""
        self.db.check_identity()

    def require_writable(self, action: str) -> None:
        """Raise ReadOnlyError (saying why and what to do) for a read-only repository."""
        self.db.check_identity()
        if self.db.readonly:
            raise ReadOnlyError(
                f"cannot {action}: the repository at {self.path} is read-only because "
                f"{self.db.read_only_reason}"
            )

    def config(self) -> dict[str, Any]:
        """The stored settings (``user_name``, ``user_email``, ...)."""
        with self.db.read() as txn:
            return dict(self.db.get_json(txn, "config") or {})

    def set_config(self, key: str, value: Any) -> None:
        """Store one setting (``None`` removes it)."""
        with self.db.write() as txn:
            config = dict(self.db.get_json(txn, "config") or {})
            if value is None:
                config.pop(key, None)
            else:
                config[key] = value
            self.db.put_json(txn, "config", config)

    def who(self) -> str:
        """Who acts, for records that keep it (``name <email>`` as configured)."""
        config = self.config()
        return default_who(config.get("user_name"), config.get("user_email"))

    def table_cache_bytes(self) -> int:
        """The bound of the column-table cache (configured, else the default)."""
        configured = self.config().get("table_cache_limit")
        if isinstance(configured, int):
            return configured
        return max(DEFAULT_TABLE_CACHE_BYTES, 2 * tree_bytes(self.path / DATA_DIR))

    def head(self, branch: str) -> CommitId | None:
        """The head commit of ``branch``, or None."""
        return self.refs.get(HEADS + branch)

    def column_table(self, root: ColumnRoot) -> ColumnTable:
        """The resolved table of a committed column (memory, then disk cache, then built)."""
        return self.tables.get(root)

    def writer_lock(self) -> WriterLock:
        """The repository's writer lock (not yet taken)."""
        return WriterLock(self.path / WRITER_LOCK_FILE)

    def writable_store(self) -> ContentStore:
        """A content store that may append (a writer's, or gc's); close it after use."""
        store = ContentStore(self.path / DATA_DIR, self.db, writable=True)
        store.partial_remote = self.store.partial_remote
        return store

    def partial_remote(self) -> str | None:
        """The remote a partial clone fetches its missing samples from (None: complete)."""
        value = self.config().get("partial_remote")
        return value if isinstance(value, str) else None

    def close(self) -> None:
        """Release file handles. Idempotent."""
        self.store.close()
        self.db.close()


def tree_bytes(root: Path) -> int:
    """Bytes of the files below ``root``."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(dirpath, f)).st_size
    return total
