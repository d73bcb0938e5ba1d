"""The repository writer lock: one write checkout at a time, across processes.

The lock is an ``fcntl.flock`` on ``<repo>/writer.lock``, held for the life of
a write checkout. The kernel drops it when the holder's process dies, so a
crashed writer never blocks the next one. The file itself only carries holder
information for error messages, as one JSON object::

    {"pid": 1234, "host": "gpu-07", "since": "2025-01-31T12:00:00+00:00",
     "purpose": "write checkout"}

An empty file means nobody holds the lock (or the holder has not written its
information yet). Information found in the file by a process that just got
the lock belongs to a holder that died without releasing; it is reported with
a :class:`RuntimeWarning` and overwritten.

:func:`force_release` is the escape hatch for a holder that is stuck (or that
still lives on a host whose locks we cannot see): it atomically replaces the
file, so new writers lock the new inode while the old holder keeps a lock on
an unlinked one. The old holder notices through :meth:`WriterLock.check_owned`,
which committing code calls before publishing anything.

The lock belongs to the process that took it: a child created by ``fork``
closes its inherited copy at once, so it can neither release the parent's
lock nor keep it alive after the parent exits.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import tempfile
import warnings
import weakref
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from tensorcask.errors import WriterLockError
from tensorcask.storage.base import fsync_path

__all__ = ["WriterLock", "force_release", "holder_is_dead", "read_holder"]

_REMEDY = (
    "Close that checkout; if that process is gone or stuck, call "
    "repo.force_release_writer_lock() or run `tensorcask lock release`."
)

# Locks held by this process, so that a forked child can drop its copies.
_LIVE: weakref.WeakSet[WriterLock] = weakref.WeakSet()


def _close_inherited_locks() -> None:
    for lock in list(_LIVE):
        lock.forget_inherited()


os.register_at_fork(after_in_child=_close_inherited_locks)


def _parse_holder(raw: bytes) -> dict[str, Any] | None:
    try:
        info = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def read_holder(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Return the holder information written in a lock file.

    Parameters
    ----------
    path:
        The lock file.

    Returns
    -------
    dict or None
        ``pid``, ``host``, ``since`` and ``purpose`` of the holder, or None
        when the file is missing, empty or unreadable.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    return _parse_holder(raw) if raw.strip() else None


def holder_is_dead(info: dict[str, Any] | None) -> bool:
    """Tell whether a lock holder's process is provably gone.

    Parameters
    ----------
    info:
        Holder information as returned by :func:`read_holder`.

    Returns
    -------
    bool
        True only when the holder ran on this host and no process with its
        pid exists. A holder on another host is never reported dead: we
        cannot see its processes.
    """
    if not info or info.get("host") != socket.gethostname():
        return False
    pid = info.get("pid")
    # pid 0 or negative would signal process groups, not one process.
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, owned by another user
    return False


def _describe(info: dict[str, Any] | None) -> str:
    if info is None:
        return "an unknown process (no holder information written yet)"
    return (
        f"pid {info.get('pid')} on host {info.get('host')} "
        f"since {info.get('since')} (purpose: {info.get('purpose')})"
    )


def force_release(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Break a writer lock whose holder is gone or stuck.

    The lock file is atomically replaced by a fresh, empty one (a temporary
    file in the same directory, then :func:`os.replace`). Whoever held the
    lock keeps a lock on the old, now unlinked file and no longer excludes
    anyone; its next :meth:`WriterLock.check_owned` raises
    :class:`~tensorcask.errors.WriterLockError`, so its later commits fail
    instead of racing the new writer.

    Parameters
    ----------
    path:
        The lock file (``<repo>/writer.lock``).

    Returns
    -------
    dict or None
        The holder information that was in the file, or None if there was
        none.
    """
    path = Path(path)
    info = read_holder(path)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_path(path.parent)
    return info


class WriterLock:
    """The exclusive writer lock of one repository.

    Parameters
    ----------
    path:
        The lock file, normally ``<repo>/writer.lock``; created on first use.

    Examples
    --------
    >>> with WriterLock(repo_dir / "writer.lock") as lock:  # doctest: +SKIP
    ...     stage_changes()
    ...     lock.check_owned()
    ...     publish_commit()
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def __repr__(self) -> str:
        state = "held" if self.held else "not held"
        return f"WriterLock({str(self.path)!r}, {state})"

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    @property
    def held(self) -> bool:
        """Whether this instance holds the lock (it may since have been force-released)."""
        return self._fd is not None

    def acquire(self, purpose: str = "write checkout") -> None:
        """Take the lock without waiting.

        Parameters
        ----------
        purpose:
            What the lock is taken for; shown to anyone who finds it held.

        Raises
        ------
        WriterLockError
            Another open file description holds the lock: another process,
            or another :class:`WriterLock` in this one. The message names the
            holder's pid, host and since when, and the remedy. Also raised
            when this instance already holds it.

        Warns
        -----
        RuntimeWarning
            The previous holder died without releasing; its lock is taken over.
        """
        if self._fd is not None:
            raise WriterLockError(f"writer lock {self.path} is already held by this WriterLock")
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise self._held_error() from None
            # A force release between our open and our flock leaves us locking
            # an unlinked inode; start over on the current file.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        try:
            stale = os.pread(fd, 1 << 16, 0)
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": datetime.now(UTC).isoformat(timespec="seconds"),
                "purpose": purpose,
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode("utf-8") + b"\n", 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        _LIVE.add(self)
        if stale.strip():
            previous = _parse_holder(stale)
            who = _describe(previous) if previous else f"unreadable holder info {stale[:200]!r}"
            warnings.warn(
                f"writer lock {self.path} was left behind by {who}, which died without "
                "releasing it; the lock was taken over",
                RuntimeWarning,
                stacklevel=2,
            )

    def _held_error(self) -> WriterLockError:
        info = read_holder(self.path)
        message = f"writer lock {self.path} is held by {_describe(info)}"
        if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            message += " -- that is this process: another checkout in it is still open"
        elif holder_is_dead(info):
            message += (
                "; that process appears dead, so a child process that inherited "
                "its lock file is probably keeping the lock alive"
            )
        return WriterLockError(f"{message}. {_REMEDY}")

    def release(self) -> None:
        """Release the lock; does nothing if it is not held.

        The holder information is cleared only while this instance still owns
        the lock file: after a force release it belongs to the new holder.
        """
        fd = self._fd
        if fd is None:
            return
        self._fd = None
        _LIVE.discard(self)
        try:
            if _same_file(fd, self.path):
                os.ftruncate(fd, 0)
                os.fsync(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def check_owned(self) -> None:
        """Make sure this instance still holds the repository's lock.

        Raises
        ------
        WriterLockError
            The lock is not held, or was force-released (the lock file was
            replaced) since this instance took it.
        """
        if self._fd is None:
            raise WriterLockError(
                f"writer lock {self.path} is not held by this checkout; open a new write checkout"
            )
        if not _same_file(self._fd, self.path):
            raise WriterLockError(
                f"writer lock {self.path} was force-released while this checkout held it, "
                f"and now belongs to {_describe(read_holder(self.path))}; nothing was "
                "published. Close this checkout and open a new write checkout."
            )

    def holder(self) -> dict[str, Any] | None:
        """Return the holder information currently written in the lock file.

        Returns
        -------
        dict or None
            See :func:`read_holder`.
        """
        return read_holder(self.path)

    def forget_inherited(self) -> None:
        """In a forked child: drop this lock's copy without releasing the parent's."""
        # Closing our descriptor copy without unlocking: unlocking would unlock
        # the parent's shared open file description.
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_ino, mine.st_dev) == (on_disk.st_ino, on_disk.st_dev)
