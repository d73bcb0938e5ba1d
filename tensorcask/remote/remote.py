"""A remote repository: an object store, a refs container and sample packs on one transport.

Layout under the remote's root (``docs/remote-format.md``)::

    tensorcask-remote.json    format marker, created by the first push
    objects/<id>.pack, .idx   history objects (commits, roots, record pages)
    data/<id>.pack, .idx      sample bytes by content digest
    refs/<ref>~/<version>     one create-only log of versions per ref
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..errors import RemoteError
from ..history.objectstore import Kind, ObjectStore, WriteBatch
from ..history.store import History
from .objects import RemoteObjectStore
from .packset import PackSet
from .refs import RemoteRefs
from .samples import DATA_FOLDER
from .transport import Transport, open_transport

__all__ = ["FORMAT_FILE", "REMOTE_FORMAT", "LayeredObjects", "Remote"]

FORMAT_FILE = "tensorcask-remote.json"
REMOTE_FORMAT = 1


class Remote:
    """One remote, opened.

    Parameters
    ----------
    name:
        The name the local repository knows it by (``origin``); empty for a URL
        given to a loader.
    url:
        Any fsspec URL (``s3://bucket/prefix``, ``file:///path``, ``memory://x``).
    storage_options:
        Passed to fsspec (``endpoint_url``, credentials, ...).
    """

    def __init__(self, name: str, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.name = name
        self.url = url
        self.transport: Transport = open_transport(url, storage_options)
        self.objects = RemoteObjectStore(self.transport)
        self.refs = RemoteRefs(self.transport)
        self.data = PackSet(self.transport, DATA_FOLDER)
        self.history = History(self.objects, self.refs)
        self._format_seen = False

    def __repr__(self) -> str:
        return f"<Remote {self.name!r} {self.url}>"

    @property
    def label(self) -> str:
        """How messages name the remote: ``remote 'origin' at URL`` (``remote URL`` when
        it has no name: a URL given to a loader)."""
        return f"remote {self.name!r} at {self.url}" if self.name else f"remote {self.url}"

    def check_format(self, *, create: bool) -> bool:
        """Whether a tensorcask remote is there (creating its marker if ``create``).

        Raises :class:`RemoteError` for a remote of a newer format, or a
        marker that is not ours.
        """
        if self._format_seen:
            return True
        path = self.transport.path(FORMAT_FILE)
        doc = self.transport.read_json(path)
        if doc is None and create:
            marker = json.dumps({"format": "tensorcask-remote", "version": REMOTE_FORMAT})
            self.transport.create(path, marker.encode() + b"\n")
            doc = self.transport.read_json(path)
        if doc is None:
            return False
        if not isinstance(doc, dict) or doc.get("format") != "tensorcask-remote":
            raise RemoteError(
                f"{self.url} holds {FORMAT_FILE} that is not a tensorcask remote's marker; "
                "choose another URL"
            )
        version = doc.get("version")
        if not isinstance(version, int) or version > REMOTE_FORMAT:
            raise RemoteError(
                f"{self.label} has format {version!r}; this tensorcask "
                f"reads format {REMOTE_FORMAT}: `pip install -U tensorcask`"
            )
        self._format_seen = True  # a marker, once there, never changes: read it once
        return True

    def require(self) -> None:
        """Raise :class:`RemoteError` if nothing was ever pushed to the remote."""
        if not self.check_format(create=False):
            raise RemoteError(
                f"{self.label} holds no tensorcask repository yet; "
                "push to it first, or check the URL"
            )


class LayeredObjects(ObjectStore):
    """Local objects first, then a remote's: how a fetch walks history it does not have yet.

    Objects read from the remote are kept (:attr:`fetched`) so that a fetch
    stores what it walked without reading it twice.
    """

    def __init__(self, local: ObjectStore, remote: ObjectStore) -> None:
        self.local = local
        self.remote = remote
        self.location = remote.location
        self.fetched: dict[bytes, bytes] = {}

    def get_many(self, names: Sequence[bytes]) -> list[bytes | None]:
        out = self.local.get_many(names)
        todo = [i for i, d in enumerate(out) if d is None and names[i] not in self.fetched]
        if todo:
            got = self.remote.get_many([names[i] for i in todo])
            for i, data in zip(todo, got, strict=True):
                if data is not None:
                    self.fetched[bytes(names[i])] = data
        return [
            d if d is not None else self.fetched.get(bytes(n))
            for n, d in zip(names, out, strict=True)
        ]

    def has_many(self, names: Sequence[bytes]) -> list[bool]:
        here = self.local.has_many(names)
        todo = [n for n, h in zip(names, here, strict=True) if not h]
        there = iter(self.remote.has_many(todo) if todo else [])
        return [h or next(there) for h in here]

    def write(self, batch: WriteBatch) -> None:
        raise TypeError("a layered view is read-only: write to its local store")

    def names(self, kind: Kind, prefix: bytes = b"") -> Iterator[bytes]:
        return iter(sorted({*self.local.names(kind, prefix), *self.remote.names(kind, prefix)}))

    def delete_many(self, names: Iterable[bytes]) -> int:
        raise TypeError("a layered view is read-only")
