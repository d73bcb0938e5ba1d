"""What the import and export modules share: progress reporting, optional
dependencies, telling URLs from local paths and the errors of URLs.

Errors of URLs
--------------
:func:`url_errors` wraps work on an fsspec URL: a missing filesystem package
(``gcs://`` without ``gcsfs``) becomes :class:`MissingDependencyError` naming
the package, and a network failure (botocore, aiohttp, ... exceptions, which
are mostly not ``OSError``) a :class:`~tensorcask.errors.RemoteError` of one
line naming the URL and the cause.

Progress
--------
Imports and exports report through one callable, ``progress(phase, done,
total)``, called after each batch twice: with ``phase`` ``"import bytes"``
(or ``"export bytes"``) and the value bytes done so far, then with ``"import
samples"`` (``"export samples"``) and the samples done so far; ``total`` is
the whole when known up front, else None. Other phases (``"commit"``,
``"check staged"``) announce a step that has no count. :class:`Meter` turns
those calls into a rate and an estimated time left for a progress line.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from ..errors import CaskError, RemoteError
from ..report import format_bytes

__all__ = [
    "Meter",
    "MissingDependencyError",
    "Progress",
    "format_duration",
    "is_url",
    "remote_error",
    "require",
    "url_errors",
    "url_fs",
]

Progress = Callable[[str, int, int | None], None]
"""Called as ``progress(phase, done, total)`` while an import or export runs."""

_EXTRAS = {"zarr": "zarr", "PIL": "images"}


class MissingDependencyError(CaskError, ImportError):
    """An optional dependency a format needs is not installed."""


def require(module: str, what: str) -> ModuleType:
    """Import the optional ``module`` that ``what`` needs, or say how to install it.

    Raises
    ------
    MissingDependencyError
        Naming the ``pip install 'tensorcask[extra]'`` command that brings it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = _EXTRAS.get(module, module)
        raise MissingDependencyError(
            f"{what} needs the {module!r} package, which is not installed ({exc}); "
            f"install it with: pip install 'tensorcask[{extra}]'"
        ) from None


def is_url(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` is an fsspec URL (``s3://...``, ``memory://...``, chained ``::``)."""
    text = os.fspath(source)
    return "://" in text or "::" in text


_NETWORK_MODULES = frozenset(
    {"aiobotocore", "aiohttp", "azure", "botocore", "gcsfs", "google", "requests", "s3fs"}
    | {"urllib3", "adlfs", "http"}
)


def _protocol(url: str) -> str:
    return url.split("::")[0].split("://")[0] if "://" in url else url.split("::")[0]


def missing_backend(exc: ImportError, url: str) -> MissingDependencyError:
    """The error for a URL whose fsspec filesystem package is not installed."""
    protocol = _protocol(url)
    package = protocol
    with contextlib.suppress(Exception):
        from fsspec.registry import known_implementations

        package = known_implementations[protocol]["class"].split(".")[0]
    return MissingDependencyError(
        f"{url}: {protocol}:// URLs need the {package!r} package, which is not installed "
        f"({exc}); install it with: pip install {package}"
    )


def remote_error(exc: BaseException, url: str) -> RemoteError | None:
    """``exc`` as a :class:`RemoteError` naming ``url`` when it is a network failure, else None."""
    if isinstance(exc, CaskError):
        return None
    root = type(exc).__module__.split(".")[0]
    if root not in _NETWORK_MODULES and not isinstance(exc, ConnectionError | TimeoutError):
        return None
    cause = " ".join(str(exc).split()) or "no details"
    return RemoteError(
        f"{url} could not be reached: {type(exc).__name__}: {cause}; check the URL, the "
        "storage options (credentials, endpoint_url) and the network, then retry"
    )


@contextlib.contextmanager
def url_errors(url: str) -> Iterator[None]:
    """Make a missing fsspec backend and network failures of ``url`` clear errors (module notes)."""
    try:
        yield
    except MissingDependencyError:
        raise
    except ImportError as exc:
        raise missing_backend(exc, url) from None
    except Exception as exc:
        remote = remote_error(exc, url)
        if remote is None:
            raise
        raise remote from exc


def url_fs(url: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    """The fsspec filesystem and path of ``url`` (errors as :func:`url_errors` makes them)."""
    fsspec = require("fsspec", f"opening {url}")
    with url_errors(url):
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, path


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    total = max(0, round(seconds))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Meter:
    """Counts an import's or export's samples and bytes and derives its rate and ETA.

    Feed it every progress call; :meth:`describe` renders what a progress line
    shows next to the sample count, e.g. ``"12.0 MiB of 47.0 MiB, 31.2 MiB/s,
    ETA 3s"``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()
        self.samples = 0
        self.total_samples: int | None = None
        self.bytes = 0
        self.total_bytes: int | None = None
        self.phase = ""

    def __call__(self, phase: str, done: int, total: int | None = None) -> None:
        if phase.endswith(" bytes"):
            self.bytes, self.total_bytes = done, total
        elif phase.endswith(" samples"):
            self.samples, self.total_samples = done, total
        else:
            self.phase = phase

    @property
    def elapsed(self) -> float:
        """Seconds since the meter was made."""
        return self._clock() - self._start

    def eta(self) -> float | None:
        """Seconds left at the rate so far (None until there is a rate and a total)."""
        elapsed = self.elapsed
        if elapsed <= 0:
            return None
        if self.total_bytes and self.bytes:
            return (self.total_bytes - self.bytes) / (self.bytes / elapsed)
        if self.total_samples and self.samples:
            return (self.total_samples - self.samples) / (self.samples / elapsed)
        return None

    def describe(self) -> str:
        """Bytes so far (of the total), the byte rate and the time left."""
        parts = [format_bytes(self.bytes)]
        if self.total_bytes:
            parts[0] += f" of {format_bytes(self.total_bytes)}"
        elapsed = self.elapsed
        if elapsed > 0 and self.bytes:
            parts.append(f"{format_bytes(int(self.bytes / elapsed))}/s")
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        return ", ".join(parts)
