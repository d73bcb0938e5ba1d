"""Which source a dataset reads: a local repository or, for a URL, a remote.

:func:`open_source` is what the torch and tf.data loaders call with their
first argument: a path or an open :class:`~tensorcask.Repository` gives a
:class:`~tensorcask.loaders.core.RepoSource`, a URL (``s3://...``,
``file://...``) a :class:`~tensorcask.loaders.stream.StreamSource`.
:func:`warm_cache` fills a streaming cache folder ahead of a job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..keys import Key
from ..repository import Repository
from .core import RepoSource
from .stream import StreamSource, WarmResult

__all__ = ["Source", "is_url", "open_source", "warm_cache"]


def is_url(repo: object) -> bool:
    """Whether a loader's first argument names a remote (``s3://...``, ``file://...``)."""
    return isinstance(repo, str) and "://" in repo


Source = RepoSource | StreamSource
"""What a dataset reads from: a local repository or a remote."""


def open_source(
    repo: str | os.PathLike[str] | Repository,
    columns: Sequence[str],
    commit: str | None = None,
    keys: Sequence[Key] | np.ndarray | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_limit_bytes: int | None = None,
    skip_purged: bool = False,
) -> Source:
    """The source of a dataset: a :class:`StreamSource` for a URL, else a local
    :class:`~tensorcask.loaders.core.RepoSource`."""
    if is_url(repo):
        assert isinstance(repo, str)
        return StreamSource(
            repo,
            columns,
            commit,
            keys,
            storage_options=storage_options,
            cache_dir=cache_dir,
            cache_limit_bytes=cache_limit_bytes,
            skip_purged=skip_purged,
        )
    given = [
        name
        for name, value in (
            ("storage_options", storage_options),
            ("cache_dir", cache_dir),
            ("cache_limit_bytes", cache_limit_bytes),
        )
        if value is not None
    ]
    if given:
        raise TypeError(
            f"{given[0]}= applies to a remote URL (s3://..., file://...), not to the local "
            f"repository {os.fspath(repo) if not isinstance(repo, Repository) else repo.path}"
        )
    return RepoSource(repo, columns, commit, keys, skip_purged=skip_purged)


def warm_cache(
    url: str,
    columns: Sequence[str],
    commit: str | None = None,
    *,
    cache_dir: str | os.PathLike[str],
    storage_options: dict[str, Any] | None = None,
    cache_limit_bytes: int | None = None,
    keys: Sequence[Key] | np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> WarmResult:
    """Fetch the samples of ``columns`` at ``commit`` of a remote into ``cache_dir``, so
    that the datasets of a training job read them at local speed from the first epoch.

    Arguments as for :class:`StreamSource`; ``progress(done, total)`` is called as
    samples are cached. A sample whose bytes fail their hash raises
    :class:`~tensorcask.errors.CorruptionError`.
    """
    source = StreamSource(
        url,
        columns,
        commit,
        keys,
        storage_options=storage_options,
        cache_dir=cache_dir,
        cache_limit_bytes=cache_limit_bytes,
    )
    try:
        return source.warm(progress)
    finally:
        source.close()
