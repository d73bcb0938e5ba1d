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

A handle remembers the identity (device, inode) of the ``data.mdb`` it opened.
Every write transaction, and every repository-level call through
:meth:`MetaDB.check_identity`, compares it with the file now at the path: a
repository removed or replaced after it was opened raises :class:`CaskError`
instead of writing into deleted files.

A read-only handle refuses write transactions. Its environment is opened with
LMDB's ``readonly=True`` when this process cannot write ``data.mdb``, and then
with ``lock=False`` when ``lock.mdb`` cannot be written either: such a handle
takes no slot in LMDB's reader table, so it does not coordinate with a
concurrent writer (fine for read-only media, where there is none). A read-only
handle on files the process can write shares the normal environment (with its
lock): one environment per file serves every handle of a process, and a
writable handle may join it later.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import weakref
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import lmdb
from xxhash import xxh3_64_intdigest

from ..errors import CaskError, CorruptionError, ReadOnlyError
from ..layout import LMDB_DATA_FILE, LMDB_LOCK_FILE

__all__ = ["TABLES", "Identity", "MetaDB", "check_meta_pages", "identity_of", "lock_writable"]

Identity = tuple[int, int]
"""``(st_dev, st_ino)`` of a file."""

TABLES = ("content", "objects", "commits", "refs", "staging", "meta")
_MAP_SIZE = 1 << 40  # address space only: LMDB files are sparse


_OPEN: dict[tuple[int, int, int], _Shared] = {}
# Re-entrant: a handle dropped while the lock is held (the garbage collector runs
# finalizers on any allocation) releases its environment on the same thread.
_OPEN_LOCK = threading.RLock()


class _Shared:
    """One process's environment for one metadata file, and its users."""

    __slots__ = ("active", "env", "identity", "readonly", "users")

    def __init__(self, env: lmdb.Environment, identity: Identity, readonly: bool) -> None:
        self.env = env
        self.identity = identity
        self.readonly = readonly
        self.users = 0
        self.active = threading.local()  # .txn: this thread's open write transaction


class _Joined:
    """A transaction already open in this thread, used without ending it."""

    __slots__ = ("txn",)

    def __init__(self, txn: lmdb.Transaction) -> None:
        self.txn = txn

    def __enter__(self) -> lmdb.Transaction:
        return self.txn

    def __exit__(self, *exc: object) -> None:
        return None


class _WriteScope:
    """A new write transaction, known to this thread while it is open."""

    __slots__ = ("active", "txn")

    def __init__(self, active: threading.local, txn: lmdb.Transaction) -> None:
        self.active = active
        self.txn = txn

    def __enter__(self) -> lmdb.Transaction:
        self.active.txn = self.txn
        return self.txn.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.active.txn = None
        self.txn.__exit__(*exc)


def identity_of(path: Path) -> Identity | None:
    """``(st_dev, st_ino)`` of the environment's data file, or None if it is missing."""
    try:
        st = os.stat(path / LMDB_DATA_FILE)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_dev, st.st_ino


def _writable(path: str | Path) -> bool:
    return os.access(path, os.W_OK, effective_ids=os.access in os.supports_effective_ids)


def lock_writable(path: Path) -> bool:
    """Whether a read-only environment at ``path`` can still use LMDB's lock file.

    LMDB registers every reader in ``lock.mdb``; when that file cannot be
    written (a read-only mount, another user's repository) the environment
    must be opened with ``lock=False`` instead.
    """
    lock = path / LMDB_LOCK_FILE
    if os.path.exists(lock):
        return _writable(lock)
    return False  # creating it would write into a repository opened read-only


def _acquire_env(path: Path, create: bool, readonly: bool) -> _Shared:
    """The process's environment for the metadata file at ``path``.

    LMDB allows one environment per file and process, so handles share it.
    The registry is keyed by the file's identity, not its path: a repository
    removed and re-created at the same path is a new file, opened afresh.
    """
    pid = os.getpid()
    with _OPEN_LOCK:
        for inherited in [k for k in _OPEN if k[0] != pid]:
            # A forked child cannot use its parent's environments, and py-lmdb
            # refuses to reopen files they hold. Closing them here is safe: the
            # parent's fcntl locks are not inherited and no transaction of ours
            # spans a fork.
            _OPEN.pop(inherited).env.close()
        before = identity_of(path)
        if before is None and not create:
            raise CorruptionError(
                f"{path / 'data.mdb'} is missing: the repository at {path.parent} is incomplete, "
                "or was removed while being opened",
                path=str(path / LMDB_DATA_FILE),
            )
        found = None if before is None else _OPEN.get((pid, *before))
        if found is None:
            try:
                env = _open_env(path, create, readonly)
            except lmdb.Error as error:
                raise _as_damage(path / LMDB_DATA_FILE, error) from error
            after = identity_of(path)
            if after is None or (before is not None and after != before):
                env.close()
                raise CaskError(
                    f"the repository at {path.parent} was removed or replaced while it was "
                    "being opened; open it again"
                )
            found = _OPEN[(pid, *after)] = _Shared(env, after, readonly)
        found.users += 1
        return found


def _release_env(shared: _Shared) -> None:
    key = (os.getpid(), *shared.identity)
    with _OPEN_LOCK:
        shared.users -= 1
        if shared.users <= 0 and _OPEN.get(key) is shared:
            del _OPEN[key]
            shared.env.close()


def check_meta_pages(data_file: Path) -> None:
    """Raise :class:`CorruptionError` if ``data_file``'s LMDB meta pages are damaged
    (see :func:`_check_meta_pages`); a writer committing meanwhile can tear one
    reading, so a failure is read again before it counts."""
    for attempt in range(3):
        try:
            _check_meta_pages(data_file)
            return
        except CorruptionError:
            if attempt == 2:
                raise
            time.sleep(0.05)


def _check_meta_pages(data_file: Path) -> None:
    """Check the two LMDB meta pages of ``data_file`` before LMDB trusts them.

    LMDB picks the meta page with the larger transaction id and checksums
    nothing: one flipped bit in the other page's id would silently roll the
    whole repository back to an older transaction. The two pages must hold
    LMDB's magic and consecutive ids, each in the page of its parity.
    """
    try:
        with open(data_file, "rb") as f:
            head = f.read(_META_AT + 8)
            psize = struct.unpack_from("<I", head, _PSIZE_AT)[0] if len(head) >= 44 else 0
            if psize < 512 or psize & (psize - 1):
                raise _meta_damaged(data_file, "its page size is not a power of two")
            f.seek(0)
            pages = f.read(2 * psize)
    except FileNotFoundError:
        return
    if len(pages) < 2 * psize:
        raise _meta_damaged(data_file, "it is shorter than its two meta pages")
    ids = []
    for page in (0, 1):
        magic = struct.unpack_from("<I", pages, page * psize + _MAGIC_AT)[0]
        txnid = struct.unpack_from("<Q", pages, page * psize + _META_AT)[0]
        if magic != _LMDB_MAGIC:
            raise _meta_damaged(data_file, f"meta page {page} lacks LMDB's magic number")
        if txnid and txnid % 2 != page:
            raise _meta_damaged(data_file, f"meta page {page} holds transaction {txnid}")
        ids.append(txnid)
    if abs(ids[0] - ids[1]) != 1 and ids != [0, 0]:
        raise _meta_damaged(data_file, f"its meta pages hold transactions {ids[0]} and {ids[1]}")


_PSIZE_AT = 40  # mm_dbs[FREE_DBI].md_pad, after the 16-byte page header
_MAGIC_AT = 16
_META_AT = 144  # mm_txnid
_LMDB_MAGIC = 0xBEEFC0DE


def _as_damage(data_file: Path, error: lmdb.Error) -> lmdb.Error | CorruptionError:
    """LMDB's refusal to open a file, as :class:`CorruptionError` when it means damage.

    Permission and read-only refusals stay LMDB errors (read-only handling
    decides what they mean); any other failure to open an existing file is a
    damaged file (a bad format version, page or database record).
    """
    text = str(error)
    if isinstance(error, lmdb.ReadonlyError | lmdb.LockError | lmdb.ReadersFullError) or any(
        s in text for s in ("Permission denied", "Read-only file system", "No such file")
    ):
        return error
    return _meta_damaged(data_file, f"LMDB cannot open it: {type(error).__name__}: {text}")


def _meta_damaged(data_file: Path, why: str) -> CorruptionError:
    return CorruptionError(
        f"the metadata file {data_file} is damaged ({why}); restore the repository from a "
        "clone or backup",
        path=str(data_file),
    )


def _open_env(path: Path, create: bool, readonly: bool) -> lmdb.Environment:
    check_meta_pages(path / LMDB_DATA_FILE)
    options: dict[str, Any] = {
        "map_size": _MAP_SIZE,
        "max_dbs": len(TABLES) + 2,
        "subdir": True,
        "create": create,
        "sync": True,
        "metasync": True,
        "readahead": False,
        "max_readers": 1024,
    }
    if not readonly:
        return lmdb.open(str(path), **options)
    lock = lock_writable(path)
    try:
        return lmdb.open(str(path), readonly=True, lock=lock, **options)
    except lmdb.ReadonlyError:
        if not lock:
            raise
    # lock.mdb looked writable but is not (NFS root squash, ACLs): go without.
    return lmdb.open(str(path), readonly=True, lock=False, **options)


class MetaDB:
    """An open metadata environment (shared by every handle in one process).

    Parameters
    ----------
    path:
        Directory of the LMDB environment.
    create:
        Create the environment if missing (only ``init`` does).
    readonly:
        Make this handle read-only: :meth:`write` raises
        :class:`~tensorcask.errors.ReadOnlyError`. The environment itself is
        opened with LMDB's ``readonly=True`` only when this process cannot
        write ``data.mdb``; a process that already has the file open shares
        that environment whatever its mode.

    Attributes
    ----------
    readonly:
        Whether this handle refuses writes (asked for, or its environment is
        read-only).
    read_only_reason:
        Why, for the :class:`~tensorcask.errors.ReadOnlyError` message.
    data_file:
        The environment's ``data.mdb``, for error messages.
    identity:
        ``(st_dev, st_ino)`` of the ``data.mdb`` this handle opened.
    """

    def __init__(self, path: Path, *, create: bool = False, readonly: bool = False) -> None:
        self.path = Path(path)
        self.data_file: str = str(self.path / LMDB_DATA_FILE)
        self._closed = False
        lock = self.path / LMDB_LOCK_FILE
        env_readonly = readonly and not (
            _writable(self.data_file) and _writable(lock if lock.exists() else self.path)
        )
        self._shared = _acquire_env(self.path, create, env_readonly)
        # A handle dropped without close() still gives its share back: an environment
        # maps a large address range, and a process can only hold so many.
        self._release = weakref.finalize(self, _release_env, self._shared)
        self.env = self._shared.env
        self.identity: Identity = self._shared.identity
        self.readonly: bool = readonly or self._shared.readonly
        self.read_only_reason = f"{self.path} is not writable by this process"
        try:
            self.tables = {name: self.env.open_db(name.encode(), create=create) for name in TABLES}
        except lmdb.Error as error:
            self.close()
            raise _as_damage(Path(self.data_file), error) from error
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release this handle; the environment closes with its last handle. Idempotent."""
        if not self._closed:
            self._closed = True
            self._release()

    def check_identity(self) -> None:
        """Make sure the repository on disk is still the one this handle opened.

        One ``os.stat``. Raises :class:`~tensorcask.errors.CaskError` when
        ``data.mdb`` was removed or replaced (e.g. the directory was deleted
        and a new repository created at the same path) since it was opened.
        """
        try:
            st = os.stat(self.data_file)
            now: Identity | None = (st.st_dev, st.st_ino)
        except (FileNotFoundError, NotADirectoryError):
            now = None
        if now != self.identity:
            raise CaskError(
                f"the repository at {self.path.parent} was removed or replaced after it was "
                "opened; open it again (tensorcask.Repository(path)) to use the repository "
                "now at that path"
            )

    def read(self) -> AbstractContextManager[lmdb.Transaction]:
        """A read-only snapshot transaction, as a context manager.

        Inside a :meth:`write` block of this thread it is that write
        transaction, so reads see the writes made so far.
        """
        active = getattr(self._shared.active, "txn", None)
        if active is not None:
            return _Joined(active)
        return self.env.begin(write=False, buffers=False)

    def write(self) -> AbstractContextManager[lmdb.Transaction]:
        """A write transaction, as a context manager: committed (and fsynced) on
        success, aborted on error.

        Write blocks nest: an inner block (in the same thread) joins the
        outer one, so that several stores' writes commit or abort together.

        Raises :class:`~tensorcask.errors.ReadOnlyError` for a read-only
        environment and :class:`~tensorcask.errors.CaskError` when the
        repository was removed or replaced since this handle opened it.
        """
        if self.readonly:
            raise ReadOnlyError(
                f"cannot write to the repository at {self.path.parent}: it is open read-only "
                f"because {self.read_only_reason}"
            )
        self.check_identity()
        active = getattr(self._shared.active, "txn", None)
        if active is not None:
            return _Joined(active)
        return _WriteScope(self._shared.active, self.env.begin(write=True))

    def get(self, txn: lmdb.Transaction, table: str, key: bytes) -> bytes | None:
        """One value from a table, or None."""
        value = txn.get(key, db=self.tables[table])
        return None if value is None else bytes(value)

    def has(self, txn: lmdb.Transaction, table: str, key: bytes) -> bool:
        """Whether a table holds ``key``."""
        return txn.get(key, db=self.tables[table]) is not None

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
        """A JSON document from the ``meta`` table (checked), or None."""
        raw = self.get(txn, "meta", key.encode())
        return None if raw is None else self.decode_json(raw, key)

    def put_json(self, txn: lmdb.Transaction, key: str, value: Any) -> None:
        """Store a JSON document in the ``meta`` table, sealed with a checksum."""
        self.put(txn, "meta", key.encode(), _seal_json(value))

    def decode_json(self, raw: bytes, key: str) -> Any:
        """A stored ``meta`` document: checked against its seal, then parsed.

        Documents written before sealing (plain JSON) are parsed as they are.
        Damage raises :class:`~tensorcask.errors.CorruptionError` naming the
        document and the file.
        """
        body = raw
        if raw[:4] == _JSON_MAGIC:
            body = raw[12:]
            if len(raw) < 12 or xxh3_64_intdigest(body) != int.from_bytes(raw[4:12], "little"):
                raise self._damaged_json(key, "fails its checksum")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise self._damaged_json(key, "is not readable") from None

    def _damaged_json(self, key: str, why: str) -> CorruptionError:
        where = self.data_file
        return CorruptionError(
            f"the {key!r} document of the metadata in {where} {why}; the repository is "
            "damaged: restore it from a clone or backup",
            path=where,
        )

    def drop(self, txn: lmdb.Transaction, table: str) -> None:
        """Empty a table in one step."""
        txn.drop(self.tables[table], delete=False)

    def disk_usage(self) -> int:
        """Bytes used by the environment's data file."""
        data = Path(self.data_file)
        return data.stat().st_size if data.exists() else 0


_JSON_MAGIC = b"TCJ1"


def _seal_json(value: Any) -> bytes:
    body = json.dumps(value, sort_keys=True).encode()
    return _JSON_MAGIC + xxh3_64_intdigest(body).to_bytes(8, "little") + body
