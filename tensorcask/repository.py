"""The repository: opening, checkouts, refs, log and maintenance.

:class:`Repository` is the public face of a repository directory; what it is
made of (object store, refs, staging area, content store, column tables) is
opened and held by :class:`~tensorcask.parts.RepositoryParts`, where the
directory layout is described too.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from .checkout import ReadCheckout, WriteCheckout
from .errors import CaskError, ConcurrentUpdateError, MergeConflictError, RefNotFoundError
from .history.diff import Diff, diff_columns
from .history.merge import ancestors, describe, merge_base, merge_columns
from .history.objects import CommitId, CommitInfo
from .history.objectstore import WriteBatch
from .history.reach import newest_first
from .history.refs import HEADS, TAGS
from .keys import utf8, validate_ref_name
from .layout import DATA_DIR, FORMAT_FILE, META_DIR, WRITER_LOCK_FILE
from .maintenance import GCReport, Progress, VerifyReport, collect_garbage, verify_repository
from .parts import FORMAT_TEXT, RepositoryParts
from .purge import PurgeMethods
from .remote.methods import RemoteMethods
from .report import render_summary
from .storage.db import MetaDB
from .storage.lock import force_release

__all__ = ["Repository", "init"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _identity(value: object, what: str) -> str:
    """A user name or email to record in commits: a str without control characters."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    utf8(value, what)
    bad = _CONTROL.search(value)
    if bad is not None:
        raise ValueError(
            f"{what} {value!r} contains the control character {bad.group()!r}; "
            "give it on one line, without control characters"
        )
    return value


def _git_config(key: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "config", "--get", key], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _default_identity() -> tuple[str, str]:
    name = _git_config("user.name") or os.environ.get("GIT_AUTHOR_NAME") or getpass.getuser()
    email = (
        _git_config("user.email")
        or os.environ.get("GIT_AUTHOR_EMAIL")
        or os.environ.get("EMAIL")
        or f"{getpass.getuser()}@localhost"
    )
    return name, email


def init(
    path: str | os.PathLike[str],
    user_name: str | None = None,
    user_email: str | None = None,
    *,
    exist_ok: bool = False,
) -> Repository:
    """Create a repository at ``path`` and open it.

    Parameters
    ----------
    path:
        Directory to create (it may exist if empty).
    user_name, user_email:
        Identity recorded in commits; default to git's ``user.name`` /
        ``user.email``, then the environment.
    exist_ok:
        Open an existing repository instead of raising.
    """
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise CaskError(
            f"cannot create a repository at {root}: it is a file, not a directory; "
            "choose an empty or new directory"
        )
    if (root / FORMAT_FILE).exists():
        if exist_ok:
            return Repository(root)
        raise CaskError(
            f"a tensorcask repository already exists at {root}; open it as it is, or "
            "choose another path"
        )
    if root.exists() and any(root.iterdir()):
        raise CaskError(f"{root} exists and is not empty; choose an empty or new directory")
    default_name, default_email = _default_identity()
    name = _identity(user_name or default_name, "user_name")
    email = _identity(user_email or default_email, "user_email")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise CaskError(
            f"cannot create a repository at {root}: {exc.filename or root} is in the way "
            "(a file where a directory should be); choose another path"
        ) from exc
    (root / DATA_DIR).mkdir(exist_ok=True)
    db = MetaDB(root / META_DIR, create=True)
    with db.write() as txn:
        db.put_json(
            txn,
            "config",
            {"user_name": name, "user_email": email},
        )
    db.close()
    marker = root / FORMAT_FILE
    tmp = root / (FORMAT_FILE + ".tmp")
    tmp.write_text(FORMAT_TEXT)
    os.replace(tmp, marker)  # the marker appears last: a half-made directory is no repository
    return Repository(root)


class Repository(RemoteMethods, PurgeMethods):
    """An existing repository on local disk.

    Parameters
    ----------
    path:
        The repository directory (as given to :func:`init`).
    read_only:
        Refuse every write (:class:`~tensorcask.errors.ReadOnlyError`). A
        repository this process cannot write (a read-only mount, another
        user's files) opens read-only without asking; see :attr:`read_only`.

    Raises
    ------
    RepositoryNotFoundError
        If ``path`` holds no repository.
    """

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self._parts = RepositoryParts(path, read_only=read_only)
        self._db = self._parts.db
        self._history = self._parts.history
        self._staging = self._parts.staging
        self._refs = self._parts.refs
        self.path = self._parts.path

    def __repr__(self) -> str:
        return f"<Repository {str(self.path)!r}{' read-only' if self.read_only else ''}>"

    @property
    def read_only(self) -> bool:
        """Whether this handle refuses writes.

        True when opened with ``read_only=True``, or when the process cannot
        write the repository (a read-only mount, another user's files); every
        write then raises :class:`~tensorcask.errors.ReadOnlyError` saying why.
        """
        return self._parts.read_only

    def _check_alive(self) -> None:
        self._parts.check_alive()

    def _require_writable(self, action: str) -> None:
        self._parts.require_writable(action)

    def close(self) -> None:
        """Release file handles. Idempotent."""
        self._parts.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def config(self) -> dict[str, Any]:
        """Repository settings (``user_name``, ``user_email``)."""
        self._check_alive()
        return self._parts.config()

    # -- checkouts -------------------------------------------------------

    @overload
    def checkout(
        self, write: Literal[False] = False, *, branch: str | None = None, commit: str | None = None
    ) -> ReadCheckout: ...

    @overload
    def checkout(
        self,
        write: Literal[True],
        *,
        branch: str | None = None,
        commit: str | None = None,
        allow_purged: bool = False,
    ) -> WriteCheckout: ...

    def checkout(
        self,
        write: bool = False,
        *,
        branch: str | None = None,
        commit: str | None = None,
        allow_purged: bool = False,
    ) -> ReadCheckout | WriteCheckout:
        """Open a checkout.

        ``write=True`` opens the writer of ``branch`` (default: the current
        branch) and makes it the current branch. Otherwise a read-only
        checkout pinned to ``commit`` (any ref) or to ``branch``'s head now
        (default: the current branch).

        ``allow_purged=True`` (write checkouts) lets every write of this
        checkout store purged content again, lifting its tombstones (see
        :meth:`purge`).
        """
        self._check_alive()
        if write:
            if commit is not None:
                raise ValueError(
                    "a write checkout writes to a branch head; pass branch=, not commit="
                )
            return WriteCheckout(
                self._parts,
                branch if branch is not None else self.current_branch,
                allow_purged=allow_purged,
            )
        if allow_purged:
            raise ValueError("allow_purged applies to write checkouts (write=True)")
        if commit is not None and branch is not None:
            raise ValueError("pass either branch= or commit=, not both")
        ref = commit if commit is not None else branch
        if ref is None:
            return ReadCheckout(self._parts, self._parts.head(self.current_branch))
        if branch is not None:
            head = self._parts.head(branch)
            if head is None:
                raise self._no_branch(branch)
            return ReadCheckout(self._parts, CommitId(head))
        return ReadCheckout(self._parts, self.resolve(ref))

    # -- refs ------------------------------------------------------------

    @property
    def current_branch(self) -> str:
        """The branch write checkouts use by default."""
        self._check_alive()
        return self._refs.current_branch()

    @property
    def staged_branch(self) -> str | None:
        """The branch that has uncommitted staged changes, or None."""
        self._check_alive()
        with self._db.read() as txn:
            state = self._staging.state(txn)
            if state is None or not self._staging.has_changes(txn):
                return None
            return state.branch

    @property
    def branches(self) -> dict[str, CommitId]:
        """Branch name -> head commit id."""
        self._check_alive()
        return self._refs.listing(HEADS)

    @property
    def tags(self) -> dict[str, CommitId]:
        """Tag name -> commit id."""
        self._check_alive()
        return self._refs.listing(TAGS)

    def switch(self, branch: str, *, create: bool = False) -> None:
        """Make ``branch`` the current branch.

        The current branch is the default of later write checkouts, of
        :meth:`log` and of the command line's ``status``, ``log`` and
        ``merge``; opening ``checkout(write=True, branch=...)`` switches too.

        Parameters
        ----------
        branch : str
            An existing branch; with ``create=True``, a new one.
        create : bool, default False
            Create ``branch`` at the current branch's head first (like
            :meth:`create_branch`). In a repository without commits, make
            ``branch`` the branch the first commit will create instead.

        Raises
        ------
        RefNotFoundError
            If ``branch`` does not exist and ``create`` is False.
        CaskError
            If another branch has staged changes (staged changes belong to
            their branch: commit or reset them first), or if ``create`` names
            a branch that already exists.
        WriterLockError
            If a write checkout is open (in any process); the message names
            its holder.
        ReadOnlyError
            If the repository is read-only.
        ValueError
            If ``create`` is True and ``branch`` is not a valid branch name.

        Examples
        --------
        >>> repo.switch("dev")  # doctest: +SKIP
        >>> repo.current_branch  # doctest: +SKIP
        'dev'
        """
        if not isinstance(branch, str):
            raise TypeError(f"branch name must be a str, not {type(branch).__name__}")
        self._require_writable(f"switch to branch {branch!r}")
        refs = self._refs
        if not create and branch == refs.current_branch():
            return
        # Holding the writer lock keeps anyone from staging changes between
        # the check below and the move of the current branch.
        lock = self._parts.writer_lock()
        lock.acquire(f"switch to branch {branch!r}")
        try:
            staged = self.staged_branch
            if staged is not None and staged != branch:
                raise CaskError(
                    f"branch {staged!r} has uncommitted staged changes, which belong to it; "
                    f"commit them or reset them (reset_staging_area) in a write checkout of "
                    f"{staged!r} before switching to {branch!r}"
                )
            if create:
                if refs.listing(HEADS):
                    self.create_branch(branch)
                else:  # no commits yet: the first commit creates the branch
                    validate_ref_name(branch, "branch name")
            elif refs.get(HEADS + branch) is None:
                raise self._no_branch_to_switch(branch)
            refs.set_current_branch(branch)
        finally:
            lock.release()

    def _no_branch_to_switch(self, name: str) -> RefNotFoundError:
        known = sorted(self.branches)
        if not known:
            return RefNotFoundError(
                f"no branch named {name!r}: the repository has no commits yet; "
                f"`tensorcask switch --create {name}` (repo.switch({name!r}, create=True)) "
                "makes it the branch the first commit creates"
            )
        return RefNotFoundError(
            f"no branch named {name!r} (branches: {', '.join(known)}); create it with "
            f"`tensorcask branch {name}` or `tensorcask switch --create {name}` "
            f"(repo.switch({name!r}, create=True))"
        )

    def _no_branch(self, name: str) -> RefNotFoundError:
        known = ", ".join(sorted(self.branches)) or "none yet: make a first commit"
        return RefNotFoundError(f"no branch named {name!r} (branches: {known})")

    def resolve(self, ref: str) -> CommitId:
        """Full commit id of a ref.

        In this order: a full 40-hex id of an existing commit is always that
        commit; else a branch of that name; else a tag; else a unique prefix
        of 4 or more hex digits (case-insensitive). Branch and tag names may
        not look like ids (see :meth:`create_branch`), so no name can hide a
        commit.

        Raises
        ------
        RefNotFoundError
            If nothing matches.
        AmbiguousRefError
            If a prefix matches several commits.
        """
        self._check_alive()
        return self._history.resolve(ref)

    def create_branch(self, name: str, base: str | None = None) -> CommitId:
        """Create branch ``name`` at ``base`` (any ref; default: the current branch head).

        ``name`` follows git's ref-name rules (``feature/x`` is fine; ``..``,
        spaces, control characters, a leading ``-``, ``HEAD`` and more are
        not) and may not be 4 to 40 hex digits; a malformed name raises
        ``ValueError``. A name already used by a branch or a tag, or a branch
        ``a`` next to ``a/b``, raises :class:`~tensorcask.errors.CaskError`;
        a ``base`` that names nothing raises
        :class:`~tensorcask.errors.RefNotFoundError`.
        """
        self._require_writable("create a branch")
        validate_ref_name(name, "branch name")
        target = self.resolve(base if base is not None else self.current_branch)
        refs = self._refs
        with self._db.write():  # the checks and the new ref: one transaction
            if refs.get(HEADS + name) is not None:
                raise CaskError(
                    f"branch {name!r} already exists; choose another name, or delete it first "
                    f"with repo.delete_branch({name!r})"
                )
            refs.check_new(HEADS, name)
            refs.set_if_equals(HEADS + name, None, target)
        return target

    def delete_branch(self, name: str, *, force: bool = False) -> CommitId:
        """Delete branch ``name``; an unmerged branch needs ``force=True``."""
        self._require_writable("delete a branch")
        refs = self._refs
        head = refs.get(HEADS + name)
        if head is None:
            raise self._no_branch(name)
        if name == refs.current_branch():
            raise CaskError(
                f"branch {name!r} is the current branch; open a write checkout of another "
                "branch first"
            )
        others = [c for b, c in refs.listing(HEADS).items() if b != name]
        if not force and not any(head in ancestors(self._history, other) for other in others):
            raise CaskError(
                f"branch {name!r} is not merged into any other branch; its commits would be lost. "
                "Merge it, or delete it anyway with force=True (`tensorcask branch -D`)"
            )
        if not refs.set_if_equals(HEADS + name, head, None):
            raise ConcurrentUpdateError(
                f"branch {name!r} moved while being deleted; nothing was deleted: try again"
            )
        return head

    def create_tag(self, name: str, ref: str) -> CommitId:
        """Create the immutable tag ``name`` for the commit ``ref`` names.

        ``name`` follows the rules of branch names (:meth:`create_branch`) and
        may not be the name of a branch.
        """
        self._require_writable("create a tag")
        validate_ref_name(name, "tag name")
        target = self.resolve(ref)
        refs = self._refs
        with self._db.write():  # the checks and the new ref: one transaction
            if refs.get(TAGS + name) is not None:
                raise CaskError(f"tag {name!r} already exists; tags are immutable")
            refs.check_new(TAGS, name)
            refs.set_if_equals(TAGS + name, None, target)
        return target

    # -- history ---------------------------------------------------------

    def log(self, ref: str | None = None, limit: int | None = None) -> list[CommitInfo]:
        """Commits reachable from ``ref`` (default: the current branch), newest first.

        ``limit`` (None: all) caps how many; it must be an int >= 0.
        """
        if limit is not None:
            if not isinstance(limit, int | np.integer) or isinstance(limit, bool):
                raise TypeError(f"limit must be None or an int >= 0, not {type(limit).__name__}")
            if limit < 0:
                raise ValueError(f"limit must be None or an int >= 0, not {limit}")
            limit = int(limit)
        self._check_alive()
        start = self._parts.head(self.current_branch) if ref is None else self.resolve(ref)
        if start is None:
            return []
        return [CommitInfo.of(c) for c in newest_first(self._history, start, limit)]

    def diff(self, a: str, b: str) -> Diff:
        """How to go from commit ``a`` to commit ``b`` (any refs).

        Per column: added, removed and changed keys; added and removed
        columns; schema changes. Costs O(size of the change).
        """
        self._check_alive()
        history = self._history
        return diff_columns(
            history.tree, history.columns(self.resolve(a)), history.columns(self.resolve(b))
        )

    def merge(self, source: str, into: str = "main", message: str | None = None) -> CommitId:
        """Merge ``source`` (any ref) into branch ``into``; return the resulting head.

        Fast-forwards when ``into`` is an ancestor of ``source``; otherwise
        makes a two-parent commit from a three-way merge per column and key.
        Conflicting changes raise :class:`~tensorcask.errors.MergeConflictError`
        listing every conflict, and nothing is written. Takes the writer lock;
        refused while ``into`` has staged changes.
        """
        if message is not None:
            if not isinstance(message, str):
                raise TypeError(f"the merge message must be a str, not {type(message).__name__}")
            utf8(message, "merge message")
        self._require_writable("merge")
        with self._parts.writer_lock():
            return self._merge_locked(source, into, message)

    def _merge_locked(self, source: str, into: str, message: str | None) -> CommitId:
        history = self._history
        theirs = self.resolve(source)
        ours = self._parts.head(into)
        with self._db.read() as txn:
            state = self._staging.state(txn)
            dirty = state is not None and state.branch == into and self._staging.has_changes(txn)
        if ours is None:
            raise self._no_branch(into)
        if dirty:
            raise CaskError(
                f"branch {into!r} has staged changes; commit or reset them before merging into it"
            )
        if theirs in ancestors(history, ours):
            return ours  # already merged
        if ours in ancestors(history, theirs):
            return self._move_branch(into, ours, theirs)  # fast-forward
        base = merge_base(history, ours, theirs)
        batch = WriteBatch()
        merged, conflicts = merge_columns(
            history.tree.with_batch(batch),
            history.columns(base),
            history.columns(ours),
            history.columns(theirs),
        )
        if conflicts:
            raise MergeConflictError(
                f"merging {source!r} into {into!r} found {len(conflicts)} conflict(s): "
                f"{describe(conflicts)}; nothing was written. Resolve them on one branch "
                "(write the values you want, or delete the keys) and merge again",
                conflicts,
            )
        config = self.config
        commit = history.new_commit(
            batch,
            parents=(ours, theirs),
            columns=merged,
            author=config["user_name"],
            email=config["user_email"],
            message=message or f"Merge {source} into {into}",
        )
        with self._db.write() as txn:  # objects, ref and staging base: one transaction
            history.objects.write(batch)
            if not self._refs.set_if_equals(HEADS + into, ours, commit.id):
                raise ConcurrentUpdateError(f"branch {into!r} moved during the merge; merge again")
            self._follow_head(txn, into, commit.id)
        return commit.id

    def _move_branch(self, branch: str, old: str, new: str) -> CommitId:
        with self._db.write() as txn:
            if not self._refs.set_if_equals(HEADS + branch, old, new):
                raise ConcurrentUpdateError(
                    f"branch {branch!r} moved during the merge; merge again"
                )
            self._follow_head(txn, branch, new)
        return CommitId(new)

    def _follow_head(self, txn: Any, branch: str, head: str) -> None:
        """Keep an empty staging area of ``branch`` based on its new head."""
        state = self._staging.state(txn)
        if state is not None and state.branch == branch:
            state.base = head
            self._staging.save_state(txn, state)

    def summary(self) -> str:
        """A human-readable report: path, disk use, head commit, columns."""
        self._check_alive()
        branch = self.current_branch
        head = self._parts.head(branch)
        return render_summary(
            path=self.path,
            disk_use=self.disk_usage(),
            branch=branch,
            staged=self.staged_branch == branch,
            branches=len(self.branches),
            tags=len(self.tags),
            head=None if head is None else self.log(head, limit=1)[0],
            columns=self._history.columns(head),
        )

    def verify(
        self,
        ref: str | None = None,
        *,
        full: bool = False,
        raise_on_error: bool = True,
        progress: Progress | None = None,
    ) -> VerifyReport:
        """Re-hash records and the commit chain (and with ``full``, every stored byte).

        Checks every commit reachable from ``ref`` (default: every branch and
        tag). Raises :class:`~tensorcask.errors.CorruptionError` on the first
        report with problems unless ``raise_on_error=False``. ``progress``, if
        given, is called as ``progress(phase, count)`` while samples are checked.
        """
        self._check_alive()
        starts = None if ref is None else [self.resolve(ref)]
        return verify_repository(
            self._parts, starts, full=full, raise_on_error=raise_on_error, progress=progress
        )

    def gc(self, *, progress: Progress | None = None) -> GCReport:
        """Remove data that no commit, branch, tag or staging area references.

        Takes the writer lock for its duration. ``progress`` as for :meth:`verify`.
        """
        self._require_writable("run gc")
        with self._parts.writer_lock():
            return collect_garbage(self._parts, progress)

    def force_release_writer_lock(self) -> dict[str, Any] | None:
        """Release the writer lock whoever holds it; returns the holder info.

        For a writer that is stuck or lives on another host. The old holder's
        later writes and commits fail with :class:`~tensorcask.errors.WriterLockError`.
        """
        self._require_writable("release the writer lock")
        return force_release(self.path / WRITER_LOCK_FILE)

    @property
    def table_cache_limit(self) -> int:
        """Bytes the column-table cache under ``cache/`` may use.

        Default: twice the size of the stored sample data, and at least 256
        MiB. Tables opened in the last ten minutes are kept even over the
        bound, so that the columns of a running job never evict each other.
        Set it (any int >= 0) to store a fixed bound in the repository's
        config; set ``None`` to return to the default.
        """
        return self._parts.table_cache_bytes()

    @table_cache_limit.setter
    def table_cache_limit(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"table_cache_limit must be an int or None, not {type(value).__name__}")
        if value is not None and value < 0:
            raise ValueError(f"table_cache_limit must be >= 0, not {value}")
        self._parts.set_config("table_cache_limit", value)

    def disk_usage(self) -> int:
        """Bytes used by the repository directory."""
        total = 0
        for dirpath, _, files in os.walk(self.path):
            for f in files:
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(dirpath, f)).st_blocks * 512
        return total
