"""The remotes a repository knows: names, URLs and storage options, kept in its config."""

from __future__ import annotations

import json
from typing import Any

from ..errors import CaskError, RemoteError
from ..keys import validate_ref_name
from ..parts import RepositoryParts
from .remote import Remote

__all__ = ["add", "get", "listing", "open_remote", "remove"]

_KEY = "remotes"


def listing(parts: RepositoryParts) -> dict[str, dict[str, Any]]:
    """Remote name -> ``{"url": ..., "storage_options": {...}}``."""
    remotes = parts.config().get(_KEY) or {}
    return {name: dict(entry) for name, entry in sorted(remotes.items())}


def add(parts: RepositoryParts, name: str, url: str, storage_options: dict[str, Any]) -> None:
    """Remember a remote (refusing a name in use)."""
    validate_ref_name(name, "remote name")
    if "/" in name:
        raise ValueError(f"remote name {name!r} may not contain '/'")
    if not isinstance(url, str) or not url:
        raise ValueError(f"a remote URL must be a non-empty str, not {url!r}")
    try:
        json.dumps(storage_options)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"storage options of remote {name!r} must be plain JSON values (str, numbers, "
            f"lists, dicts) to be remembered: {exc}"
        ) from None
    parts.require_writable(f"add remote {name!r}")
    remotes = listing(parts)
    if name in remotes:
        raise CaskError(
            f"remote {name!r} already exists ({remotes[name]['url']}); remove it first or "
            "choose another name"
        )
    remotes[name] = {"url": url, "storage_options": dict(storage_options)}
    parts.set_config(_KEY, remotes)


def remove(parts: RepositoryParts, name: str) -> dict[str, Any]:
    """Forget a remote and its ``remotes/<name>/`` refs; what it was."""
    parts.require_writable(f"remove remote {name!r}")
    remotes = listing(parts)
    entry = remotes.pop(name, None)
    if entry is None:
        raise _unknown(parts, name)
    with parts.db.write():
        parts.set_config(_KEY, remotes or None)
        for branch in parts.refs.listing(f"remotes/{name}/"):
            parts.refs.delete(f"remotes/{name}/{branch}")
    return entry


def get(parts: RepositoryParts, name: str) -> dict[str, Any]:
    """The entry of one remote; RemoteError naming the known ones if absent."""
    entry = listing(parts).get(name)
    if entry is None:
        raise _unknown(parts, name)
    return entry


def open_remote(parts: RepositoryParts, name: str) -> Remote:
    """Open the remote ``name`` knows."""
    if not isinstance(name, str):
        raise TypeError(f"a remote name must be a str, not {type(name).__name__}")
    entry = get(parts, name)
    return Remote(name, entry["url"], entry.get("storage_options") or {})


def _unknown(parts: RepositoryParts, name: str) -> RemoteError:
    known = ", ".join(listing(parts)) or "none: add one with repo.add_remote(name, url)"
    return RemoteError(f"no remote named {name!r} (remotes: {known})")
