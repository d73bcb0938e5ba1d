"""The tensorcask exception tree.

Every error the library raises on purpose derives from :class:`CaskError`.
Where a builtin exception describes the same situation, the error also
derives from it, so that ``except KeyError`` or ``except PermissionError``
catches what users expect::

    CaskError                                            repository states, name clashes
    ├── RepositoryNotFoundError      (+ FileNotFoundError)
    ├── WriterLockError              (+ PermissionError)
    ├── ReadOnlyError                (+ PermissionError)  writes through a read checkout,
    │                                                     column or read-only repository
    ├── CheckoutClosedError
    ├── SchemaError                  (+ ValueError)       bad values and column definitions,
    │                                                     a column name already in use
    ├── RefNotFoundError             (+ KeyError)         a missing branch, tag or commit
    ├── AmbiguousRefError            (+ KeyError)
    ├── MergeConflictError                                ``conflicts`` lists them all
    ├── CorruptionError                                   ``column``, ``key``, ``path``
    ├── PurgedDataError
    ├── DataNotLocalError
    ├── ConcurrentUpdateError                             a branch or the staging area moved
    │                                                     under a writer
    └── RemoteError

A bare :class:`CaskError` is left for what no subclass describes: a state of
the repository (nothing to commit, staged changes in the way, a repository
removed while open, an unreadable format marker) and a branch or tag name
already in use. Messages say what happened, to what (column, key, ref, path)
and what to do.
"""

from __future__ import annotations

import ast
import re
from typing import Any, Self

__all__ = [
    "AmbiguousRefError",
    "CaskError",
    "CheckoutClosedError",
    "ConcurrentUpdateError",
    "CorruptionError",
    "DataNotLocalError",
    "MergeConflictError",
    "PurgedDataError",
    "ReadOnlyError",
    "RefNotFoundError",
    "RemoteError",
    "RepositoryNotFoundError",
    "SchemaError",
    "WriterLockError",
]


class CaskError(Exception):
    """Base class of every error tensorcask raises on purpose."""

    def again(self) -> Self:
        """A fresh copy to raise. Damage found once is often reported many times
        (a damaged run, a damaged record of a table); raising one instance
        again would chain every raise's traceback, and the frames (open read
        transactions among them) onto it."""
        error: Self = _restore(type(self), self.args, dict(self.__dict__))
        return error

    def __str__(self) -> str:
        # KeyError.__str__ quotes its argument; keep messages readable.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class RepositoryNotFoundError(CaskError, FileNotFoundError):
    """No tensorcask repository exists at the given path."""


class WriterLockError(CaskError, PermissionError):
    """Another live process holds the repository's writer lock."""


class ReadOnlyError(CaskError, PermissionError):
    """A write was attempted through a read-only checkout, column or repository.

    A repository is read-only when opened with ``read_only=True`` or when the
    process cannot write its files; the message says which and why.
    """


class CheckoutClosedError(CaskError):
    """A closed checkout, or a column taken from one, was used."""


class SchemaError(CaskError, ValueError):
    """A value does not fit its column, or a column cannot be made as asked.

    A value of the wrong kind, dtype or shape; a column definition that is
    invalid (dtype, shape, backend, compression); a column name already in use.
    """


class RefNotFoundError(CaskError, KeyError):
    """A branch, tag or commit id does not exist."""


class AmbiguousRefError(CaskError, KeyError):
    """A commit id prefix matches more than one commit."""


class MergeConflictError(CaskError):
    """A merge found conflicting changes; nothing was written.

    ``conflicts`` lists every conflict found, not only the first.
    """

    def __init__(self, message: str, conflicts: list[Any] | None = None) -> None:
        super().__init__(message)
        self.conflicts: list[Any] = list(conflicts or [])


class CorruptionError(CaskError):
    """Stored bytes or history do not match their checksum or hash.

    ``column``, ``key`` and ``path`` name the damaged sample where known. They
    survive pickling as they are (:meth:`__reduce__`); an error rebuilt from its
    message alone, as torch's DataLoader does for one raised in a worker,
    recovers them from the message.
    """

    def __init__(
        self,
        message: str,
        *,
        column: str | None = None,
        key: object = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        if column is None and key is None and path is None:
            # Rebuilt from its message alone, as DataLoader does for an error
            # raised in a worker process: recover what the message names.
            column, key, path = _named_in(message)
        self.column = column
        self.key = key
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        # The fields travel as they are; unpickling neither calls __init__
        # (a subclass may take other arguments) nor reads them from the text.
        return _restore, (type(self), self.args, self.__dict__)


def _restore(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    """An unpickled exception: its class, args and attributes, without ``__init__``."""
    error = cls.__new__(cls, *args)
    error.__dict__.update(state)
    return error


_NAMED = re.compile(r"column '((?:[^'\\]|\\.)*)', key ((?:'(?:[^'\\]|\\.)*')|\d+)")
_PATH = re.compile(r" in (/[^\s(),;:]+)")


def _named_in(message: str) -> tuple[str | None, object, str | None]:
    """The column, key and path a corruption message names (None where it doesn't)."""
    column: str | None = None
    key: object = None
    found = _NAMED.search(message)
    if found is not None:
        try:
            column = ast.literal_eval(f"'{found.group(1)}'")
            key = ast.literal_eval(found.group(2))
        except (ValueError, SyntaxError):
            column, key = None, None
    path = _PATH.search(message, 0 if found is None else found.end())
    return column, key, None if path is None else path.group(1)


def sample_error(
    exc: CorruptionError, column: str, key: object, commit: str = ""
) -> CorruptionError:
    """``exc`` (damage found below the column layer) restated for the sample it hits."""
    of = f" of commit {commit[:12]}" if commit else ""
    return CorruptionError(
        f"column {column!r}, key {key!r}{of}: {exc}", column=column, key=key, path=exc.path
    )


class PurgedDataError(CaskError):
    """The requested sample or content was purged from history.

    ``column``, ``key``, ``digest`` (hex) and ``reason`` name the purged
    sample and why it was purged, where known; they survive pickling, and an
    error rebuilt from its message alone (as torch's DataLoader does for one
    raised in a worker) recovers the column and key from the message.
    """

    def __init__(
        self,
        message: str,
        *,
        column: str | None = None,
        key: object = None,
        digest: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        if column is None and key is None:
            column, key, _ = _named_in(message)
        self.column = column
        self.key = key
        self.digest = digest
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return _restore, (type(self), self.args, self.__dict__)


class DataNotLocalError(CaskError):
    """The data belongs to a partial clone and has not been fetched."""


class ConcurrentUpdateError(CaskError):
    """A branch or the staging area moved under us (a compare-and-swap lost a race).

    Another writer (one that took over the writer lock, or a merge) changed
    what this operation started from; nothing of this operation was published.
    """


class RemoteError(CaskError):
    """A remote could not be reached or answered unexpectedly."""
