"""Moving sample bytes between a repository's content store and a remote's data packs.

Uploads read samples in local storage order, a batch of equal-shape arrays
at a time (one vectorised read each), encode them with one header per batch,
and upload each pack from a background thread while the next is being read,
so reading and uploading overlap. Downloads read packs in their own order,
one ranged request per stretch of about 64 MiB, check every sample against
its digest, and store them in batches; each batch's index entries are
published in one local transaction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

import numpy as np

from ..errors import CorruptionError, DataNotLocalError
from ..history.objects import ColumnSchema
from ..parts import RepositoryParts
from ..storage.base import BLOB, Location, Payload
from .remote import Remote
from .samples import DATA_FOLDER, decode_many, encode_rows, encode_sample

__all__ = [
    "PACK_BYTES",
    "Moved",
    "Transfer",
    "download_samples",
    "locate_local",
    "note",
    "upload_samples",
]

Transfer = Callable[[str, int, int], None]
"""Called as ``progress(what, done, total)``: ``what`` is ``"samples"``, ``"objects"`` or
``"bytes"`` (sample bytes; history bytes are counted in the results only)."""

PACK_BYTES = 256 << 20
"""Sample bytes per pack (a pack is built in memory, then uploaded)."""
READ_BATCH = 4096
"""Samples read from local storage at once."""
FETCH_BYTES = 64 << 20
"""Sample bytes downloaded per request."""
_LOOKUP_BATCH = 1 << 16


@dataclass
class Moved:
    """Samples and bytes moved."""

    samples: int = 0
    bytes: int = 0


def note(progress: Transfer | None, what: str, done: int, total: int) -> None:
    """Report progress, if asked to."""
    if progress is not None:
        progress(what, done, total)


# -- upload ----------------------------------------------------------------


def locate_local(
    parts: RepositoryParts, remote: Remote, digests: list[bytes]
) -> list[tuple[bytes, Location]]:
    """Where each sample to push is stored here, in storage order.

    The walk already left out what the remote's refs reach, so the remote's
    data indexes are not consulted, except for samples a partial clone lacks
    (DataNotLocalError when the remote lacks them too).
    """
    located: list[tuple[bytes, Location]] = []
    absent: list[bytes] = []
    for start in range(0, len(digests), _LOOKUP_BATCH):
        batch = digests[start : start + _LOOKUP_BATCH]
        for digest, raw in zip(batch, parts.store.lookup_raw(batch), strict=True):
            if raw is None:
                absent.append(digest)
            elif isinstance(raw, CorruptionError):
                raise raw
            else:
                located.append((digest, Location.from_bytes(raw)))
    if absent:
        lacking = [d for d, h in zip(absent, remote.data.has_many(absent), strict=True) if not h]
        if lacking:
            raise DataNotLocalError(
                f"cannot push to {remote.name!r}: {len(lacking)} sample(s) the pushed commits "
                f"refer to are neither here nor on the remote (content {lacking[0].hex()[:16]}); "
                "fetch them with repo.fetch_data() from the remote this clone came from first"
            )
    if not located:
        return located
    backends = {name: i for i, name in enumerate(sorted({loc.backend for _, loc in located}))}
    order = np.lexsort(
        (
            np.fromiter((loc.offset for _, loc in located), np.int64, len(located)),
            np.fromiter((loc.segment for _, loc in located), np.int64, len(located)),
            np.fromiter((backends[loc.backend] for _, loc in located), np.int64, len(located)),
        )
    )
    return [located[i] for i in order.tolist()]


def upload_samples(
    parts: RepositoryParts,
    remote: Remote,
    located: list[tuple[bytes, Location]],
    kinds: dict[bytes, str],
    progress: Transfer | None,
) -> Moved:
    """Pack and upload the samples at ``located`` (read in that order)."""
    moved = Moved()
    total = len(located)
    total_bytes = sum(_nbytes(loc) for _, loc in located)
    read_bytes = 0
    pending: list[tuple[bytes, bytes]] = []
    pending_bytes = 0
    with ThreadPoolExecutor(1, thread_name_prefix="tensorcask-upload") as uploader:
        inflight: Future[str | None] | None = None
        for batch in _batches(located):
            for digest, entry in _encoded(parts, batch, kinds):
                pending.append((digest, entry))
                pending_bytes += len(entry)
            read_bytes += sum(_nbytes(loc) for _, loc in batch)
            moved.samples += len(batch)
            if pending_bytes >= PACK_BYTES:
                if inflight is not None:
                    inflight.result()
                inflight = uploader.submit(remote.data.write, pending)
                moved.bytes += pending_bytes
                pending, pending_bytes = [], 0
            note(progress, "samples", moved.samples, total)
            note(progress, "bytes", read_bytes, max(total_bytes, read_bytes))
        if inflight is not None:
            inflight.result()
    if pending:
        remote.data.write(pending)
        moved.bytes += pending_bytes
    return moved


def _batches(located: list[tuple[bytes, Location]]) -> list[list[tuple[bytes, Location]]]:
    """Runs of up to READ_BATCH samples of one backend, dtype and shape."""
    out: list[list[tuple[bytes, Location]]] = []
    for item in located:
        loc = item[1]
        if out:
            last = out[-1]
            first = last[0][1]
            if (
                len(last) < READ_BATCH
                and first.backend == loc.backend
                and first.dtype == loc.dtype
                and (first.shape == loc.shape or loc.dtype == BLOB)
            ):
                last.append(item)
                continue
        out.append([item])
    return out


def _encoded(
    parts: RepositoryParts, batch: list[tuple[bytes, Location]], kinds: dict[bytes, str]
) -> list[tuple[bytes, bytes]]:
    names = [d for d, _ in batch]
    locs = [loc for _, loc in batch]
    if locs[0].dtype != BLOB and len(locs) > 1:
        stacked = cast(np.ndarray, parts.store.fetch(names, locs, stack=True))
        return list(zip(names, encode_rows(stacked), strict=True))
    payloads = cast(list[Payload], parts.store.fetch(names, locs))
    return [(d, encode_sample(kinds[d], p)) for d, p in zip(names, payloads, strict=True)]


@lru_cache(maxsize=256)
def _itemsize(dtype: str) -> int:
    return np.dtype(dtype).itemsize


def _nbytes(loc: Location) -> int:
    """Bytes of the sample at ``loc`` (for progress totals)."""
    if loc.dtype == BLOB:
        return int(loc.shape[0]) if loc.shape else 0
    return math.prod(loc.shape) * _itemsize(loc.dtype)


# -- download --------------------------------------------------------------


def download_samples(
    parts: RepositoryParts,
    remote: Remote,
    wanted: dict[bytes, ColumnSchema],
    progress: Transfer | None,
) -> Moved:
    """Download, check and store the samples of ``wanted`` this repository lacks.

    Takes the caller's writer lock for granted.
    """
    moved = Moved()
    digests = sorted(wanted)
    store = parts.writable_store()
    try:
        with parts.db.read() as txn:
            todo = [digests[i] for i in store.missing(txn, digests)]
        if not todo:
            return moved
        where = remote.data.locate(todo)
        lacking = np.flatnonzero(~where.found())
        if len(lacking):
            missing = todo[int(lacking[0])]
            raise CorruptionError(
                f"remote {remote.name!r} at {remote.url} lacks {len(lacking)} sample(s) its "
                f"history refers to (content {missing.hex()[:16]}); the remote is damaged: run "
                "repo.verify_remote() and push the data again from a complete copy",
                path=remote.transport.path(DATA_FOLDER),
            )
        order = where.storage_order()
        total_bytes = int(where.size.sum())
        for span in _spans(where.size[order]):
            positions = order[span]
            chunk = [todo[int(i)] for i in positions]
            entries = remote.data.read(where.take(positions))
            samples = decode_many(entries, chunk, remote.transport.path(DATA_FOLDER))
            moved.bytes += sum(len(e or b"") for e in entries)
            groups: dict[tuple[str, str | None], list[int]] = {}
            for i, digest in enumerate(chunk):
                schema = wanted[digest]
                groups.setdefault((schema.backend, schema.compression), []).append(i)
            index_entries: list[tuple[bytes, bytes]] = []
            for (backend, compression), members in groups.items():
                payloads = [samples[i][1] for i in members]
                stacked = _stack(payloads)
                index_entries += store.append(
                    backend,
                    compression,
                    stacked if stacked is not None else payloads,
                    [chunk[i] for i in members],
                    range(len(members)),
                )
            with parts.db.write() as txn:
                store.publish(txn, index_entries)
            moved.samples += len(chunk)
            note(progress, "samples", moved.samples, len(todo))
            note(progress, "bytes", moved.bytes, total_bytes)
        store.maintain()
    finally:
        store.close()
    parts.tables.forget()
    parts.store.forget_all()
    return moved


def _spans(sizes: np.ndarray) -> list[np.ndarray]:
    """Consecutive stretches of entries of about FETCH_BYTES each (at least one entry)."""
    ends = np.cumsum(sizes)
    cuts = np.searchsorted(ends, np.arange(FETCH_BYTES, int(ends[-1]), FETCH_BYTES))
    return [s for s in np.split(np.arange(len(sizes)), np.unique(cuts)) if len(s)]


def _stack(payloads: list[Payload]) -> np.ndarray | None:
    """One stacked array when every payload is an array of one dtype and shape."""
    first = payloads[0]
    if not isinstance(first, np.ndarray):
        return None
    if all(
        isinstance(p, np.ndarray) and p.dtype == first.dtype and p.shape == first.shape
        for p in payloads
    ):
        return np.stack(cast(list[np.ndarray], payloads))
    return None
