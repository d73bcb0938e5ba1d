"""Refs on a remote: a create-only log of versions per ref, moved by exclusive create.

A ref ``heads/main`` is the folder ``refs/heads/main~/`` of a remote. Each
move adds one small, immutable version object to it, named so that newer
versions sort first (``10**16 - n`` as 16 digits for version ``n``), holding
the commit id (or ``deleted``). The newest version is the ref's value.

A move from the value of version ``n`` creates version ``n + 1`` with an
exclusive create (``If-None-Match: *`` on S3, ``O_EXCL`` on local files), so
of several clients that read version ``n``, exactly one wins; the others get
False and read again. Nothing but exclusive create is needed: no locks, no
leases, no server, and a version is never rewritten or removed (a deletion is
a version too), so a slow client can never win with a stale view.
"""

from __future__ import annotations

from ..errors import CorruptionError, RemoteError
from ..history.objects import CommitId
from ..history.refs import RefsContainer
from .transport import Transport

__all__ = ["REFS_FOLDER", "RemoteRefs"]

REFS_FOLDER = "refs"
_LOG = "~"  # ref names may not contain "~", so "<name>~" is never a ref's own folder
_SPAN = 10**16
_DELETED = b"deleted\n"
_RETRIES = 8


def _version_name(n: int) -> str:
    return f"{_SPAN - n:016d}"


def _version_number(name: str) -> int | None:
    if len(name) != 16 or not name.isdigit():
        return None
    return _SPAN - int(name)


class RemoteRefs(RefsContainer):
    """The refs of one remote, each a log of versions made by exclusive create."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.location = transport.path(REFS_FOLDER)

    def _folder(self, name: str) -> str:
        return f"{REFS_FOLDER}/{name}{_LOG}"

    def _decode(self, data: bytes, path: str) -> CommitId | None:
        if data == _DELETED:
            return None
        text = data.decode("ascii", "replace").strip()
        try:
            value = self.commit_value(text, "a ref")
        except ValueError:
            raise CorruptionError(
                f"ref version {path} is damaged (it holds {data[:60]!r}, not a commit id); "
                "repair the remote by pushing the branch again with force=True",
                path=path,
            ) from None
        assert value is not None
        return CommitId(value)

    def _versions(self, name: str) -> dict[int, int]:
        """Number -> size of (at least) the newest versions of ``name``."""
        listed = self.transport.first_files(self._folder(name), 8)  # the newest sort first
        found = ((_version_number(n), size) for n, size in listed.items())
        return {n: size for n, size in found if n is not None}

    def _newest(self, name: str) -> tuple[int, CommitId | None]:
        """The newest version number of ``name`` (0: none) and its value."""
        folder = self._folder(name)
        for _ in range(_RETRIES):
            numbers = self._versions(name)
            if not numbers:
                return 0, None
            newest = max(numbers)
            path = self.transport.path(f"{folder}/{_version_name(newest)}")
            try:
                data = self.transport.cat_many([path], [numbers[newest]])[0]
                return newest, self._decode(data, path)
            except FileNotFoundError:  # removed by hand between listing and reading
                continue
        raise RemoteError(f"ref {name!r} at {self.location} keeps changing; retry")

    def get(self, name: str) -> CommitId | None:
        return self._newest(name)[1]

    def set_if_equals(self, name: str, old: str | None, new: str | None) -> bool:
        old = self.commit_value(old, "old")
        new = self.commit_value(new, "new")
        number, value = self._newest(name)
        if value != old:
            return False
        if value is None and new is None:
            return True
        data = _DELETED if new is None else new.encode() + b"\n"
        path = self.transport.path(f"{self._folder(name)}/{_version_name(number + 1)}")
        return self.transport.create(path, data)

    def delete(self, name: str) -> bool:
        for _ in range(_RETRIES):
            number, value = self._newest(name)
            if value is None:
                return False
            path = self.transport.path(f"{self._folder(name)}/{_version_name(number + 1)}")
            if self.transport.create(path, _DELETED):
                return True
        raise RemoteError(f"ref {name!r} at {self.location} keeps changing; retry the deletion")

    def listing(self, prefix: str = "") -> dict[str, CommitId]:
        values, damaged = self.scan(prefix)
        if damaged:
            raise next(iter(damaged.values()))
        return values

    def scan(self, prefix: str = "") -> tuple[dict[str, CommitId], dict[str, CorruptionError]]:
        """Like :meth:`listing`, with damaged refs reported apart instead of raised:
        ``(values, {full name: error})``."""
        newest: dict[str, int] = {}
        sizes = self.transport.find(REFS_FOLDER)
        for found in sizes:
            folder, _, version = found.rpartition("/")
            number = _version_number(version)
            if not folder.endswith(_LOG) or number is None:
                continue
            name = folder[: -len(_LOG)]
            if name.startswith(prefix) and number > newest.get(name, 0):
                newest[name] = number
        names = sorted(newest)
        versions = [f"{n}{_LOG}/{_version_name(newest[n])}" for n in names]
        paths = [self.transport.path(f"{REFS_FOLDER}/{v}") for v in versions]
        lengths = [sizes[v] for v in versions]
        out: dict[str, CommitId] = {}
        damaged: dict[str, CorruptionError] = {}
        for name, path, data in zip(
            names, paths, self.transport.cat_many(paths, lengths), strict=True
        ):
            try:
                value = self._decode(data, path)
            except CorruptionError as exc:
                damaged[name] = exc
                continue
            if value is not None:
                out[name[len(prefix) :]] = value
        return out, damaged

    def overwrite(self, name: str, new: str) -> bool:
        """Make ``new`` the value of ``name`` whatever it holds now, even a damaged version
        (a forced push repairs a ref this way); False if another client moved it meanwhile."""
        value = self.commit_value(new, "new")
        assert value is not None
        newest = max(self._versions(name), default=0)
        path = self.transport.path(f"{self._folder(name)}/{_version_name(newest + 1)}")
        return self.transport.create(path, value.encode() + b"\n")
