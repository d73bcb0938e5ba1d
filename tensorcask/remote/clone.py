"""clone: a new local repository from a remote, named ``origin``, one branch per remote branch."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

from ..history.refs import HEADS
from ..parts import RepositoryParts
from ..repository import Repository, init
from . import registry, sync
from .remote import Remote
from .transfer import Transfer

__all__ = ["clone"]

ORIGIN = "origin"


def clone(
    url: str,
    path: str | Path,
    partial: bool = False,
    storage_options: dict[str, Any] | None = None,
    *,
    user_name: str | None = None,
    user_email: str | None = None,
    progress: Transfer | None = None,
) -> Repository:
    """Copy the repository at ``url`` into a new repository at ``path`` and open it.

    The remote is remembered as ``origin`` (with ``storage_options``); every
    remote branch becomes a local branch (``origin/<branch>`` records where
    it was), tags come along, and the current branch is ``main`` if the
    remote has one, else its first branch. ``partial=True`` fetches history
    only: reading a sample raises
    :class:`~tensorcask.errors.DataNotLocalError` until
    :meth:`~tensorcask.Repository.fetch_data` brings it. Everything is
    checked against its hash before it is stored. If the clone fails,
    nothing is left at ``path``.
    """
    options = dict(storage_options or {})
    remote = Remote(ORIGIN, url, options)
    remote.require()  # before anything is created locally
    target = Path(path)
    existed = target.exists()
    init(target, user_name, user_email).close()
    try:
        parts = RepositoryParts(target)
        try:
            registry.add(parts, ORIGIN, url, options)
            if partial:
                parts.set_config("partial_remote", ORIGIN)
                parts.store.partial_remote = ORIGIN
            result = sync.fetch(parts, remote, None, data=not partial, progress=progress)
            with parts.db.write():
                for branch, commit in sorted(result.heads.items()):
                    parts.refs.set_if_equals(HEADS + branch, None, commit)
                if result.heads:
                    current = "main" if "main" in result.heads else min(result.heads)
                    parts.refs.set_current_branch(current)
        finally:
            parts.close()
    except BaseException:
        if existed:  # it was an empty folder: leave it empty
            for child in target.iterdir():
                with contextlib.suppress(OSError):
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        else:
            shutil.rmtree(target, ignore_errors=True)
        raise
    return Repository(target)
