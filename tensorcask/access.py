"""Read-only repositories: which repositories this process cannot write, and why.

A repository opens read-only when any file or directory a write needs is not
writable by this process (a read-only mount, a repository owned by another
user, a dataset baked into a container image), or when it is opened with
``Repository(path, read_only=True)``. Reads, log, diff, verify, summaries and
the loaders work; every write raises :class:`~tensorcask.errors.ReadOnlyError`
with the reason (see :func:`open_metadata`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
from pathlib import Path

import lmdb

from .layout import (
    DATA_DIR,
    INDEX_DIR,
    LMDB_DATA_FILE,
    LMDB_LOCK_FILE,
    META_DIR,
    WRITER_LOCK_FILE,
)
from .storage.db import MetaDB

__all__ = ["open_metadata", "why_unwritable"]

_EFFECTIVE = os.access in os.supports_effective_ids

# What a write touches: directories new files go to, and files written in place.
_NEEDED = (
    "",
    META_DIR,
    f"{META_DIR}/{LMDB_DATA_FILE}",
    f"{META_DIR}/{LMDB_LOCK_FILE}",
    DATA_DIR,
    f"{DATA_DIR}/lmdb/{LMDB_DATA_FILE}",  # the lmdb backend's environment
    f"{DATA_DIR}/lmdb/{LMDB_LOCK_FILE}",
    INDEX_DIR,
    WRITER_LOCK_FILE,
)


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except KeyError:  # no passwd entry (containers)
        return f"uid {uid}"


def _describe(path: Path) -> str:
    try:
        read_only_fs = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only_fs = False
    if read_only_fs:
        return f"{path} is on a read-only file system"
    return f"{path} is not writable by {_user()}"


def _remedy(root: Path) -> str:
    return (
        f"reads work; to write, make a writable copy (e.g. `cp -a {root} <a directory you can "
        "write>`) and open that, or get write access to the repository"
    )


def why_unwritable(root: Path) -> str | None:
    """Why this process cannot write the repository at ``root``, or None if it can.

    Checks (with ``access(2)``, so root on a read-only mount is caught too)
    the directories and files a write checkout, a commit or ``gc`` modify.
    Missing entries are skipped: a write creates them in their parent.
    """
    candidates = [root / name for name in _NEEDED]
    data = root / DATA_DIR
    with contextlib.suppress(OSError):
        candidates += sorted(entry for entry in data.iterdir() if entry.is_dir())
    for path in candidates:
        if os.path.lexists(path) and not os.access(path, os.W_OK, effective_ids=_EFFECTIVE):
            return _describe(path)
    return None


def open_metadata(root: Path, *, read_only: bool) -> MetaDB:
    """Open the metadata of the repository at ``root``, read-only where it must be.

    The handle is read-only when ``read_only`` asks for it or when
    :func:`why_unwritable` finds a reason (or LMDB refuses to open the files
    for writing); its ``read_only_reason`` then says why and what to do.
    """
    meta = root / META_DIR
    reason = why_unwritable(root)
    if reason is None:
        try:
            db = MetaDB(meta, readonly=read_only)
        except lmdb.Error as error:
            text = str(error)
            if not (
                isinstance(error, lmdb.ReadonlyError)
                or "Read-only file system" in text
                or "Permission denied" in text
            ):
                raise
            # access(2) said yes but the file system says no (NFS root squash, ACLs).
            reason = f"{meta} cannot be opened for writing ({text})"
        else:
            if read_only:
                db.read_only_reason = (
                    "it was opened with read_only=True; open it with "
                    f"tensorcask.Repository({str(root)!r}) to write"
                )
            elif db.readonly:
                db.read_only_reason = (
                    "this process opened it earlier while it was not writable; close every "
                    "handle to it and open it again to write"
                )
            return db
    db = MetaDB(meta, readonly=True)
    db.read_only_reason = f"{reason}; {_remedy(root)}"
    return db
