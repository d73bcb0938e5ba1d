"""Where an export is written: a partial beside the destination, moved into place
only when complete.

Local paths
-----------
The export is written to ``.<name>.partial-<host>-<pid>-<random>`` in the
destination's folder (a unique name: two exports to one place, even from one
process, never share it), every file and folder of it is fsynced, and then
it is renamed into place: a file replaces an old file with one
``os.replace``; a folder (a Zarr store), or anything replacing one, moves the
old destination aside to ``.<name>.replaced-<host>-<pid>-<random>`` first,
renames the new one in, then deletes the old one (putting it back if the
rename fails). There is never a moment without an export at the destination
except between those two renames.

URLs
----
The export is written to ``<url>.partial-<host>-<pid>-<random>``; once it is
complete the old store is deleted and the new one moved (on object stores:
copied) into place. A URL overwrite is therefore not atomic, but it never
loses the old export before the new one is complete; if the move fails, the
error names the partial that holds the complete export.

Leftovers
---------
A killed export leaves its partial (or, between the two renames, its moved
aside old destination) behind. Each export removes the leftovers of earlier
exports to the same place that are stale: written by a process of this host
that is gone, or older than :data:`STALE_SECONDS`. A stale old destination
moved aside is put back when the destination is missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import RemoteError
from .util import is_url, url_errors, url_fs

__all__ = ["STALE_SECONDS", "Destination", "fsync_tree", "host_name"]

STALE_SECONDS = 24 * 3600
"""Age after which a leftover partial is removed whoever wrote it."""
PARTIAL = "partial"
REPLACED = "replaced"


def host_name() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"


def _tag() -> str:
    """``<host>-<pid>-``: what a partial's name says about its writer."""
    return f"{host_name()}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _stale(rest: str, mtime: float | None) -> bool:
    """Whether a leftover named ``...-<host>-<pid>-<random>`` (``rest``) is stale."""
    if mtime is not None and time.time() - mtime > STALE_SECONDS:
        return True
    parts = rest.split("-")
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    host, pid = parts[0], int(parts[1])
    return host == host_name() and not _alive(pid)


def _fsync(path: str, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return  # folders cannot be opened for fsync on every platform
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike[str]) -> None:
    """fsync a file, or every file and folder under a folder."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        _fsync(path)
        return
    for root, _, files in os.walk(path, topdown=False):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync(root, directory=True)


def _remove_local(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


class Destination:
    """Where one export goes (module notes).

    Construction checks the destination (its folder exists; it does not
    exist unless ``overwrite``) and removes stale leftovers; :meth:`begin`
    makes the partial to write, :meth:`commit` moves it into place and
    :meth:`discard` removes it.
    """

    def __init__(
        self, dest: str, overwrite: bool, storage_options: dict[str, Any] | None, directory: bool
    ) -> None:
        self.dest = dest
        self.url = is_url(dest)
        self.options = storage_options or {}
        self.directory = directory
        self.target = ""
        self._keep = False
        if self.url:
            self.fs, self.path = url_fs(dest, self.options)
            with url_errors(dest):
                self._clean_remote()
                exists = bool(self.fs.exists(self.path))
        else:
            if self.options:
                raise ValueError(f"storage options apply to URLs, not to the local path {dest}")
            path = Path(dest)
            if not path.parent.is_dir():
                raise FileNotFoundError(f"cannot export to {dest}: no folder {path.parent}")
            self._clean_local(path)
            exists = path.exists() or path.is_symlink()
        if exists and not overwrite:
            raise FileExistsError(
                f"{dest} already exists; pass overwrite=True (--force) to replace it, "
                "or export to another path"
            )
        self.exists = exists

    # -- leftovers

    def _clean_local(self, path: Path) -> None:
        for kind in (REPLACED, PARTIAL):
            prefix = f".{path.name}.{kind}-"
            for entry in path.parent.glob(f"{glob.escape(prefix)}*"):
                try:
                    mtime = entry.lstat().st_mtime
                except FileNotFoundError:
                    continue
                if not _stale(entry.name[len(prefix) :], mtime):
                    continue
                with contextlib.suppress(OSError):
                    if kind == REPLACED and not (path.exists() or path.is_symlink()):
                        os.replace(entry, path)  # killed between the two renames: put it back
                    else:
                        _remove_local(str(entry))

    def _clean_remote(self) -> None:
        parent, _, name = self.path.rstrip("/").rpartition("/")
        prefix = f"{name}.{PARTIAL}-"
        try:
            entries = self.fs.ls(parent or "/", detail=True)
        except (FileNotFoundError, NotImplementedError):
            return
        for entry in entries:
            full = entry["name"].rstrip("/")
            base = full.rpartition("/")[2]
            if base.startswith(prefix) and _stale(base[len(prefix) :], _mtime(entry)):
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(full, recursive=True)

    # -- the export

    def begin(self) -> str:
        """Make the partial and return where to write: a local path or a URL."""
        if self.url:
            suffix = f".{PARTIAL}-{_tag()}{uuid.uuid4().hex[:12]}"
            self.target = self.dest + suffix
            self.target_path = self.path.rstrip("/") + suffix
            return self.target
        path = Path(self.dest)
        prefix = f".{path.name}.{PARTIAL}-{_tag()}"
        if self.directory:
            self.target = tempfile.mkdtemp(prefix=prefix, dir=path.parent)
        else:
            fd, self.target = tempfile.mkstemp(prefix=prefix, dir=path.parent)
            os.close(fd)
        return self.target

    def commit(self) -> None:
        """Move the complete partial into place (module notes)."""
        if self.url:
            self._commit_remote()
            return
        fsync_tree(self.target)
        dest = self.dest
        old_is_dir = os.path.isdir(dest) and not os.path.islink(dest)
        if not os.path.lexists(dest) or not (old_is_dir or os.path.isdir(self.target)):
            os.replace(self.target, dest)
            _fsync(str(Path(dest).parent), directory=True)
            return
        parent = Path(dest).parent
        aside = str(parent / f".{Path(dest).name}.{REPLACED}-{_tag()}{uuid.uuid4().hex[:12]}")
        os.rename(dest, aside)
        try:
            os.rename(self.target, dest)
        except BaseException:
            os.rename(aside, dest)
            raise
        _fsync(str(parent), directory=True)
        _remove_local(aside)

    def _commit_remote(self) -> None:
        with url_errors(self.dest):
            removed = False
            try:
                if self.exists and self.fs.exists(self.path):
                    self.fs.rm(self.path, recursive=True)
                    removed = True
                self.fs.mv(self.target_path, self.path, recursive=True)
            except Exception as exc:
                self._keep = True
                old = "the old export was removed" if removed else "the old export is unchanged"
                raise RemoteError(
                    f"the new export of {self.dest} is complete at {self.target} but could not "
                    f"be moved into place ({type(exc).__name__}: {exc}); {old}. Move it by hand, "
                    "or export again"
                ) from exc

    def discard(self) -> None:
        """Remove what a failed export wrote (never a complete export that failed to move)."""
        if not self.target or self._keep:
            return
        try:
            if self.url:
                if self.fs.exists(self.target_path):
                    self.fs.rm(self.target_path, recursive=True)
            else:
                _remove_local(self.target)
        except Exception:
            pass


def _mtime(entry: dict[str, Any]) -> float | None:
    """The modification time an fsspec listing entry gives, if any."""
    for key in ("mtime", "LastModified", "last_modified", "created", "updated"):
        value = entry.get(key)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None
