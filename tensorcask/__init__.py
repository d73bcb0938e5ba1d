"""tensorcask: version control for tensor data that feeds training loops.

>>> import tensorcask as tc
>>> repo = tc.init("data/mnist-repo", user_name="Ada", user_email="ada@example.org")
>>> with repo.checkout(write=True) as co:
...     images = co.add_ndarray_column("images", shape=(28, 28), dtype="uint8")
...     images.update(keys, batch)
...     commit_id = co.commit("add images")

Importing tensorcask never imports torch or tensorflow; the loaders live in
``tensorcask.loaders.torch`` and ``tensorcask.loaders.tensorflow``.
"""

from .checkout import ReadCheckout, WriteCheckout
from .columns import Column
from .errors import (
    AmbiguousRefError,
    CaskError,
    CheckoutClosedError,
    ConcurrentUpdateError,
    CorruptionError,
    DataNotLocalError,
    MergeConflictError,
    PurgedDataError,
    ReadOnlyError,
    RefNotFoundError,
    RemoteError,
    RepositoryNotFoundError,
    SchemaError,
    WriterLockError,
)
from .history.diff import ColumnDiff, Diff
from .history.merge import Conflict
from .history.objects import CommitInfo
from .ingest import PartWriter, SamplesPart
from .maintenance import GCReport, VerifyReport
from .purge import PurgeReport
from .remote.check import RemoteVerifyReport
from .remote.clone import clone
from .remote.sync import FetchResult, PushResult
from .repository import Repository, init
from .storage.tombstones import Tombstone

__version__ = "0.1.0"

__all__ = [
    "AmbiguousRefError",
    "CaskError",
    "CheckoutClosedError",
    "Column",
    "ColumnDiff",
    "CommitInfo",
    "Conflict",
    "ConcurrentUpdateError",
    "CorruptionError",
    "DataNotLocalError",
    "Diff",
    "FetchResult",
    "GCReport",
    "MergeConflictError",
    "PartWriter",
    "PurgeReport",
    "PurgedDataError",
    "PushResult",
    "ReadCheckout",
    "ReadOnlyError",
    "RefNotFoundError",
    "RemoteError",
    "RemoteVerifyReport",
    "Repository",
    "RepositoryNotFoundError",
    "SamplesPart",
    "SchemaError",
    "Tombstone",
    "VerifyReport",
    "WriteCheckout",
    "WriterLockError",
    "__version__",
    "clone",
    "init",
]
