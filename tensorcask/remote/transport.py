"""One fsspec filesystem plus a root path: the few operations a remote needs.

Everything a remote does goes through :class:`Transport`: list a folder,
read whole objects or byte ranges (many at once, concurrently where the
filesystem is asynchronous), write an object, create one only if it does not
exist, remove objects. Errors of the filesystem become
:class:`~tensorcask.errors.RemoteError` naming the URL, except
``FileNotFoundError`` / ``FileExistsError``, which callers act on.

Listings bypass fsspec's listing cache: another client may have written
since.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..errors import CaskError, RemoteError

__all__ = ["READ_ATTEMPTS", "Transport", "is_transient", "open_transport"]

T = TypeVar("T")

#: Attempts of a read that fails with a transient error (timeouts, 5xx, throttling)
#: before it is reported, waiting ``BACKOFF * 2**n`` seconds (with jitter) in between.
READ_ATTEMPTS = 6
BACKOFF = 0.05
_MAX_WAIT = 4.0

_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EBUSY", "EAGAIN", "ETIMEDOUT", "ECONNRESET", "ECONNABORTED", "ECONNREFUSED",
        "EPIPE", "EREMOTEIO", "EIO", "ENETUNREACH", "EHOSTUNREACH",
    )
    if hasattr(errno, name)
)  # fmt: skip
_TRANSIENT_TYPES = frozenset(
    {
        "ClientPayloadError", "ClientOSError", "ServerDisconnectedError", "ServerTimeoutError",
        "ConnectTimeoutError", "ReadTimeoutError", "EndpointConnectionError",
        "ConnectionClosedError", "IncompleteRead", "ResponseStreamingError",
        "FSTimeoutError", "ProtocolError", "ChunkedEncodingError",
    }
)  # fmt: skip
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
        "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequests",
    }
)  # fmt: skip


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is worth retrying: a timeout, a dropped
    connection, a 5xx answer or throttling, as fsspec filesystems report them."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (FileNotFoundError, FileExistsError, PermissionError, CaskError)):
            return False
        if isinstance(e, (TimeoutError, ConnectionError)):
            return True
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            return True
        if type(e).__name__ in _TRANSIENT_TYPES:
            return True
        response = getattr(e, "response", None)  # botocore's ClientError
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = response.get("Error", {}).get("Code")
            if code in _TRANSIENT_CODES or status in (429, 500, 502, 503, 504):
                return True
        status = getattr(e, "status", None)  # aiohttp / http errors
        if isinstance(status, int) and (status == 429 or 500 <= status < 600):
            return True
        todo += [e.__cause__, e.__context__]
    return False


class Transport:
    """A remote's filesystem and root.

    Parameters
    ----------
    fs:
        An fsspec filesystem.
    root:
        The remote's root path on ``fs`` (no protocol, no trailing slash).
    url:
        The URL the user gave, for messages.
    """

    def __init__(self, fs: Any, root: str, url: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url
        # Local files are written whole under a temporary name, then renamed (put) or
        # hard-linked (create): a killed writer never leaves a torn object behind.
        self.local = "file" in _protocols(fs)
        self.s3 = bool({"s3", "s3a"} & set(_protocols(fs))) and hasattr(fs, "call_s3")

    def path(self, relative: str) -> str:
        """Full path of ``relative`` under the root."""
        return f"{self.root}/{relative}" if relative else self.root

    def _call(self, what: str, fn: Callable[[], T], *, retry: bool = False) -> T:
        """``fn()``, its errors made :class:`RemoteError` naming ``what``.

        With ``retry`` (reads, which are idempotent) transient errors are
        retried with exponential backoff, :data:`READ_ATTEMPTS` times in all.
        """
        attempts = READ_ATTEMPTS if retry else 1
        for attempt in range(attempts):
            try:
                return fn()
            except (FileNotFoundError, FileExistsError):
                raise
            except CaskError:
                raise
            except Exception as exc:  # network, permissions, throttling: all say where
                if attempt + 1 < attempts and is_transient(exc):
                    wait = min(BACKOFF * 2**attempt, _MAX_WAIT)
                    time.sleep(wait * (0.5 + random.random()))
                    continue
                tried = f" (tried {attempt + 1} times)" if attempt else ""
                raise RemoteError(
                    f"remote {self.url}: {what} failed{tried}: {type(exc).__name__}: {exc}; "
                    "check the URL, the storage options (credentials, endpoint_url) and the "
                    "network, then retry"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def list_files(self, relative: str) -> dict[str, int]:
        """Name -> size of the files directly in a folder (empty if it does not exist)."""
        full = self.path(relative)

        def run() -> dict[str, int]:
            self.fs.invalidate_cache(full)
            try:
                entries = self.fs.ls(full, detail=True)
            except FileNotFoundError:
                return {}
            return {
                e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0)
                for e in entries
                if e["type"] == "file"
            }

        return self._call(f"listing {full}", run, retry=True)

    def first_files(self, relative: str, count: int) -> dict[str, int]:
        """Name -> size of at least the first ``count`` files (in name order) directly in a
        folder.

        One request on S3 whatever the folder holds (``MaxKeys``); elsewhere
        the whole folder is listed (local folders may hold temporary files of
        writes in progress, which sort first).
        """
        if not self.s3:
            return self.list_files(relative)
        full = self.path(relative).rstrip("/") + "/"
        bucket, _, prefix = full.partition("/")

        def run() -> dict[str, int]:
            answer = self.fs.call_s3(
                "list_objects_v2", Bucket=bucket, Prefix=prefix, Delimiter="/", MaxKeys=count
            )
            return {
                item["Key"][len(prefix) :]: int(item.get("Size") or 0)
                for item in answer.get("Contents", [])
            }

        return self._call(f"listing {full}", run, retry=True)

    def list_names(self, relative: str) -> list[str]:
        """Names of the files directly in a folder (empty if it does not exist)."""
        return list(self.list_files(relative))

    def find(self, relative: str) -> dict[str, int]:
        """Path (relative to ``relative``) -> size of every file below a folder, sorted."""
        full = self.path(relative)

        def run() -> dict[str, int]:
            self.fs.invalidate_cache(full)
            try:
                found = self.fs.find(full, detail=True)
            except FileNotFoundError:
                return {}
            base = full.rstrip("/") + "/"  # the root has no protocol, as find's answers
            return {
                p[len(base) :]: int(found[p].get("size") or 0)
                for p in sorted(found)
                if p.startswith(base)
            }

        return self._call(f"listing {full}", run, retry=True)

    def cat(self, path: str) -> bytes:
        """The bytes of one object (``FileNotFoundError`` if absent)."""
        # s3fs asks for the size first (a HEAD) unless told to read in one request
        extra = {"max_concurrency": 1} if self.s3 else {}
        return self._call(
            f"reading {path}", lambda: bytes(self.fs.cat_file(path, **extra)), retry=True
        )

    def cat_many(self, paths: Sequence[str], sizes: Sequence[int] | None = None) -> list[bytes]:
        """The bytes of several objects, read concurrently where the filesystem allows.

        With their ``sizes`` (from a listing) each object is one ranged read;
        without, one read each as well (S3: no HEAD first).
        """
        if not paths:
            return []
        if sizes is not None:
            got = self.cat_ranges(list(paths), [0] * len(paths), list(sizes))
            if any(len(data) != size for data, size in zip(got, sizes, strict=True)):
                return self.cat_many(paths)  # replaced since the listing: read them whole
            return got

        def run() -> list[bytes]:
            extra = {"max_concurrency": 1} if self.s3 else {}  # no HEAD before each GET
            got = self.fs.cat(list(paths), on_error="return", **extra)
            out = []
            for p in paths:
                value = got.get(p)  # keyed by the paths asked (no protocol), as the root is
                if isinstance(value, FileNotFoundError) or value is None:
                    raise FileNotFoundError(p)
                if isinstance(value, BaseException):
                    raise value
                out.append(bytes(value))
            return out

        return self._call(f"reading {_many(paths)}", run, retry=True)

    def cat_ranges(
        self, paths: Sequence[str], starts: Sequence[int], ends: Sequence[int]
    ) -> list[bytes]:
        """Byte ranges ``[start, end)`` of objects, read concurrently where possible."""
        if not paths:
            return []
        return self._call(
            f"reading {_many(paths, 'ranges of ')}",
            lambda: [
                bytes(b)
                for b in self.fs.cat_ranges(list(paths), list(starts), list(ends), on_error="raise")
            ],
            retry=True,
        )

    def put(self, path: str, data: bytes) -> None:
        """Write an object (replacing any at ``path``); readers see all of it or nothing."""
        if self.local:
            self._call(f"writing {path}", lambda: _local_write(path, data, exclusive=False))
            return
        self._call(
            f"writing {path}", lambda: self._parented(path, lambda: self.fs.pipe_file(path, data))
        )

    def create(self, path: str, data: bytes) -> bool:
        """Write an object only if none exists at ``path``; whether it was written.

        Exclusive create: ``If-None-Match: *`` on S3, a hard link (which fails
        if the name exists) on local files.
        """

        def run() -> bool:
            try:
                if self.local:
                    _local_write(path, data, exclusive=True)
                else:
                    self._parented(path, lambda: self._create(path, data))
            except FileExistsError:
                return False
            return True

        return self._call(f"creating {path}", run)

    def _create(self, path: str, data: bytes) -> None:
        with self.fs.open(path, "xb") as f:
            f.write(data)

    def _parented(self, path: str, write: Callable[[], None]) -> None:
        try:
            write()
        except FileNotFoundError:  # filesystems with real folders want the parent first
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            write()

    def remove(self, paths: Sequence[str]) -> None:
        """Remove objects (absent ones are ignored)."""
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                self._call(f"removing {path}", functools.partial(self.fs.rm_file, path))

    def read_json(self, path: str) -> Any:
        """A JSON document, or None if absent."""
        try:
            return json.loads(self.cat(path))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise RemoteError(f"remote {self.url}: {path} is not valid JSON ({exc})") from exc


def _many(paths: Sequence[str], what: str = "") -> str:
    """``paths`` for a message: the first one, and how many others."""
    others = len(set(paths)) - 1
    return f"{what}{paths[0]}" + (f" and {others} more objects" if others > 0 else "")


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _local_write(path: str, data: bytes, *, exclusive: bool) -> None:
    """Write a local file whole: a fsynced temporary file, then a rename or a hard link."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)  # FileExistsError if the name is taken
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def open_transport(url: str, storage_options: dict[str, Any] | None = None) -> Transport:
    """The transport of ``url`` (any fsspec URL; a plain path is a local folder)."""
    import fsspec  # fsspec is imported only by what uses remotes

    if not isinstance(url, str) or not url:
        raise ValueError(f"a remote URL must be a non-empty str, not {url!r}")
    try:
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ImportError, ValueError, TypeError) as exc:
        raise RemoteError(
            f"cannot open remote {url}: {exc}; for s3:// URLs install s3fs "
            "(`pip install tensorcask[s3]`), and check the storage options"
        ) from exc
    return Transport(fs, str(root), url)
