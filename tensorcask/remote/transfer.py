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
from ..storage.base import BLOB, LocationGroup, Payload, TableRows, group_locations
from .remote import Remote
from .samples import DATA_FOLDER, blob_kind, decode_batch, encode_rows, encode_sample

__all__ = [
    "PACK_BYTES",
    "LocalRun",
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

PACK_BYTES = 64 << 20
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


@dataclass(frozen=True)
class LocalRun:
    """Samples to upload that are stored alike (one backend, dtype and shape), in storage order.

    Attributes
    ----------
    digests:
        Their content digests.
    group:
        Their locations, as arrays in the same order.
    """

    digests: list[bytes]
    group: LocationGroup

    @property
    def nbytes(self) -> int:
        """Bytes of the samples (for progress totals)."""
        g = self.group
        if g.dtype == BLOB:
            return int(g.shape[0]) * len(self.digests) if g.shape else 0
        return math.prod(g.shape) * _itemsize(g.dtype) * len(self.digests)


def locate_local(parts: RepositoryParts, remote: Remote, digests: list[bytes]) -> list[LocalRun]:
    """Where the samples to push are stored here: runs of alike samples, in storage order.

    The walk already left out what the remote's refs reach, so the remote's
    data indexes are not consulted, except for samples a partial clone lacks
    (DataNotLocalError when the remote lacks them too).
    """
    present: list[bytes] = []
    raws: list[bytes] = []
    absent: list[bytes] = []
    for start in range(0, len(digests), _LOOKUP_BATCH):
        batch = digests[start : start + _LOOKUP_BATCH]
        for digest, raw in zip(batch, parts.store.lookup_raw(batch), strict=True):
            if raw is None:
                absent.append(digest)
            elif isinstance(raw, CorruptionError):
                raise raw
            else:
                present.append(digest)
                raws.append(raw)
    if absent:
        lacking = [d for d, h in zip(absent, remote.data.has_many(absent), strict=True) if not h]
        if lacking:
            raise DataNotLocalError(
                f"cannot push to {remote.name!r}: {len(lacking)} sample(s) the pushed commits "
                f"refer to are neither here nor on the remote (content {lacking[0].hex()[:16]}); "
                "fetch them with repo.fetch_data() from the remote this clone came from first"
            )
    runs = []
    for g in group_locations(raws):
        order = np.lexsort((g.offsets, g.segments))
        ordered = LocationGroup(
            g.backend,
            g.dtype,
            g.shape,
            g.members[order],
            g.segments[order],
            g.offsets[order],
            g.checksums[order],
        )
        runs.append(LocalRun([present[i] for i in ordered.members.tolist()], ordered))
    runs.sort(key=lambda r: (r.group.backend, int(r.group.segments[0]), int(r.group.offsets[0])))
    return runs


def upload_samples(
    parts: RepositoryParts,
    remote: Remote,
    runs: list[LocalRun],
    kinds: dict[bytes, str],
    progress: Transfer | None,
) -> Moved:
    """Pack and upload the samples of ``runs``, read a batch at a time.

    Each pack is uploaded from a background thread while the next is read
    and encoded.
    """
    moved = Moved()
    total = sum(len(r.digests) for r in runs)
    total_bytes = sum(r.nbytes for r in runs)
    read_bytes = 0
    pending: list[tuple[bytes, bytes]] = []
    pending_bytes = 0
    with ThreadPoolExecutor(1, thread_name_prefix="tensorcask-upload") as uploader:
        inflight: Future[str | None] | None = None
        for run in runs:
            for start in range(0, len(run.digests), READ_BATCH):
                end = min(start + READ_BATCH, len(run.digests))
                for digest, entry in _encoded(parts, run, start, end, kinds):
                    pending.append((digest, entry))
                    pending_bytes += len(entry)
                moved.samples += end - start
                read_bytes += run.nbytes * (end - start) // max(len(run.digests), 1)
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


def _encoded(
    parts: RepositoryParts, run: LocalRun, start: int, end: int, kinds: dict[bytes, str]
) -> list[tuple[bytes, bytes]]:
    """The pack entries of samples ``start:end`` of ``run``, read through the one read path."""
    g = run.group
    names = run.digests[start:end]
    if g.dtype != BLOB and g.backend == "memmap":
        rows = TableRows(
            g.segments[start:end], g.offsets[start:end], g.checksums[start:end], g.dtype, g.shape
        )
        stacked = cast(np.ndarray, parts.store.fetch(names, rows))
        return list(zip(names, encode_rows(stacked), strict=True))
    locs = [g.location(i) for i in range(start, end)]
    if g.dtype != BLOB:
        stacked = cast(np.ndarray, parts.store.fetch(names, locs, stack=True))
        return list(zip(names, encode_rows(stacked), strict=True))
    payloads = cast(list[Payload], parts.store.fetch(names, locs))
    return [
        (d, encode_sample(kinds.get(d) or blob_kind(d, bytes(p)), p))
        for d, p in zip(names, payloads, strict=True)
    ]


@lru_cache(maxsize=256)
def _itemsize(dtype: str) -> int:
    return np.dtype(dtype).itemsize


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
            decoded = decode_batch(entries, chunk, remote.transport.path(DATA_FOLDER))
            moved.bytes += sum(len(e or b"") for e in entries)
            index_entries: list[tuple[bytes, bytes]] = []
            for positions, stacked in decoded.stacked:
                for (backend, compression), members in _by_storage(positions, chunk, wanted):
                    rows = stacked if len(members) == len(positions) else stacked[members]
                    names = [chunk[positions[m]] for m in members]
                    index_entries += store.append(
                        backend, compression, rows, names, range(len(names))
                    )
            singles: dict[tuple[str, str | None], list[tuple[bytes, Payload]]] = {}
            for position, _, payload in decoded.single:
                schema = wanted[chunk[position]]
                singles.setdefault((schema.backend, schema.compression), []).append(
                    (chunk[position], payload)
                )
            for (backend, compression), items in singles.items():
                index_entries += store.append(
                    backend,
                    compression,
                    [p for _, p in items],
                    [d for d, _ in items],
                    range(len(items)),
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


def _by_storage(
    positions: list[int], chunk: list[bytes], wanted: dict[bytes, ColumnSchema]
) -> list[tuple[tuple[str, str | None], list[int]]]:
    """Members (indexes into ``positions``) by the backend and compression of their column."""
    groups: dict[tuple[str, str | None], list[int]] = {}
    for m, position in enumerate(positions):
        schema = wanted[chunk[position]]
        groups.setdefault((schema.backend, schema.compression), []).append(m)
    return list(groups.items())
