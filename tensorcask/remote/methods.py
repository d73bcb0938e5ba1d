"""The remote operations of :class:`~tensorcask.Repository` (SPEC §5).

Kept here, beside the code they call, and mixed into ``Repository``; each
method is a thin, documented front for :mod:`~tensorcask.remote.sync`,
:mod:`~tensorcask.remote.registry` and :mod:`~tensorcask.remote.check`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..parts import RepositoryParts
from . import registry, sync
from .check import RemoteVerifyReport, verify_remote
from .sync import FetchResult, PushResult
from .transfer import Transfer

__all__ = ["RemoteMethods"]


class RemoteMethods:
    """Remotes: add, remove, list, push, fetch, fetch_data, verify_remote."""

    _parts: RepositoryParts

    @property
    def remotes(self) -> dict[str, str]:
        """Remote name -> URL."""
        self._parts.check_alive()
        return {name: entry["url"] for name, entry in registry.listing(self._parts).items()}

    def add_remote(self, name: str, url: str, **storage_options: Any) -> None:
        """Remember remote ``name`` at ``url`` (any fsspec URL: ``s3://bucket/prefix``,
        ``gs://...``, ``file:///path``, ``memory://x``).

        ``storage_options`` go to fsspec each time the remote is opened
        (``endpoint_url=``, ``key=``/``secret=``, ``anon=True``, ...); they are
        stored in the repository's config, so prefer credentials from the
        environment over passing secrets here. Nothing is contacted yet.
        """
        registry.add(self._parts, name, url, storage_options)

    def remove_remote(self, name: str) -> None:
        """Forget remote ``name`` and the ``<name>/<branch>`` refs fetched from it.

        Nothing on the remote changes.
        """
        registry.remove(self._parts, name)

    def push(
        self,
        remote: str,
        branch: str | None = None,
        *,
        force: bool = False,
        progress: Transfer | None = None,
    ) -> PushResult:
        """Upload what ``remote`` lacks of ``branch`` (default: the current branch), then move
        the remote branch to its head.

        Only what the remote's branches and tags do not already reach is sent
        (found by walking history, never by listing the bucket), in the order
        sample packs, history, tags, branch: a reader of the remote never sees
        a ref to something missing, and a push that is interrupted leaves the
        remote as it was. Tags of pushed commits travel too.

        Raises
        ------
        ConcurrentUpdateError
            When the remote branch is not an ancestor of the local head
            (someone pushed first, or the histories diverged), or moved
            during the push: fetch, merge and push again, or pass
            ``force=True`` to overwrite the remote branch.
        DataNotLocalError
            From a partial clone, when samples the pushed commits need are
            neither local nor on the remote.
        """
        self._parts.check_alive()
        name = branch if branch is not None else self._parts.refs.current_branch()
        return sync.push(
            self._parts,
            registry.open_remote(self._parts, remote),
            name,
            force=force,
            progress=progress,
        )

    def fetch(
        self,
        remote: str,
        branch: str | Sequence[str] | None = None,
        *,
        progress: Transfer | None = None,
    ) -> FetchResult:
        """Bring ``remote``'s ``branch`` (default: every branch), its history and samples,
        and the remote's tags; set ``<remote>/<branch>`` (e.g. ``origin/main``).

        Every object is checked against its hash, and every sample against
        its digest, before it is stored. A partial clone fetches history
        only (see :meth:`fetch_data`). Local branches do not move: merge
        ``origin/main`` into one to take the changes. Takes the writer lock
        (:class:`~tensorcask.errors.WriterLockError` while a write checkout
        is open).
        """
        self._parts.require_writable(f"fetch from {remote!r}")
        branches = [branch] if isinstance(branch, str) else branch
        return sync.fetch(
            self._parts,
            registry.open_remote(self._parts, remote),
            branches,
            data=self._parts.partial_remote() is None,
            progress=progress,
        )

    def fetch_data(
        self,
        remote: str,
        ref: str,
        columns: Sequence[str] | None = None,
        keys: Iterable[object] | None = None,
        *,
        progress: Transfer | None = None,
    ) -> FetchResult:
        """Bring the samples of ``ref``'s ``columns`` (default: all) at ``keys`` (default: all)
        that this repository lacks (a partial clone's data, on demand).

        Keys a column lacks are skipped. Samples are checked against their
        digests before they are stored. Takes the writer lock, as :meth:`fetch`.
        """
        self._parts.require_writable(f"fetch data from {remote!r}")
        commit = self._parts.history.resolve(ref)
        return sync.fetch_data(
            self._parts,
            registry.open_remote(self._parts, remote),
            commit,
            columns,
            keys,
            progress=progress,
        )

    def verify_remote(
        self,
        name: str,
        *,
        raise_on_error: bool = True,
        progress: Callable[[str, int], None] | None = None,
    ) -> RemoteVerifyReport:
        """Re-hash every pack, history object and sample on remote ``name`` and check that
        its refs reach nothing it lacks.

        Reads the whole remote. Raises
        :class:`~tensorcask.errors.CorruptionError` listing the problems
        unless ``raise_on_error=False``.
        """
        self._parts.check_alive()
        return verify_remote(
            registry.open_remote(self._parts, name),
            raise_on_error=raise_on_error,
            progress=progress,
        )
