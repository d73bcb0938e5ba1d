"""Repository maintenance: integrity verification and garbage collection."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import lmdb
import numpy as np

from .errors import CaskError, CorruptionError
from .history.objects import ColumnSchema
from .history.reach import reachable
from .history.refs import HEADS, REMOTES, TAGS
from .history.tree import Node
from .keys import decode_key
from .parts import RepositoryParts
from .purge import finish_pending
from .samples import prepare_one, stacked_digests
from .storage.base import Location, LocationGroup, Payload, TableRows, group_locations
from .storage.content import ContentStore
from .storage.tombstones import add_pending, load_tombstones

__all__ = ["GCReport", "Progress", "VerifyReport", "collect_garbage", "verify_repository"]


@dataclass
class VerifyReport:
    """What :meth:`Repository.verify` checked and found."""

    ok: bool = True
    problems: list[str] = field(default_factory=list)
    commits: int = 0
    pages: int = 0
    samples: int = 0
    full: bool = False
    not_local: int = 0
    """Samples a partial clone has not fetched (not a problem: they are on its remote)."""
    purged: int = 0
    """Records of purged samples (not a problem: their bytes were removed on purpose)."""

    def add(self, problem: str) -> None:
        """Record one problem."""
        self.ok = False
        self.problems.append(problem)

    def __str__(self) -> str:
        what = "every stored byte, " if self.full else ""
        head = (
            f"verified {what}{self.commits} commits, {self.pages} pages, {self.samples} samples: "
            + ("ok" if self.ok else f"{len(self.problems)} problem(s)")
        )
        if self.not_local:
            head += f" ({self.not_local} samples not fetched into this partial clone)"
        if self.purged:
            head += f" ({self.purged} records of purged samples)"
        return "\n".join([head, *self.problems])


@dataclass
class GCReport:
    """What :meth:`Repository.gc` removed."""

    commits: int = 0
    objects: int = 0
    samples: int = 0
    segments: int = 0
    bytes_freed: int = 0

    def __str__(self) -> str:
        return (
            f"removed {self.commits} unreachable commits, {self.objects} history objects, "
            f"{self.samples} unreferenced samples, {self.segments} segment files "
            f"({self.bytes_freed / 2**20:.1f} MiB freed)"
        )


def _ref_targets(parts: RepositoryParts) -> list[str]:
    """What the refs (branches, tags, remote branches) and the staging area point at: the
    roots of everything kept."""
    targets: list[str] = [
        *parts.refs.listing(HEADS).values(),
        *parts.refs.listing(TAGS).values(),
        *parts.refs.listing(REMOTES).values(),
    ]
    with parts.db.read() as txn:
        state = parts.staging.state(txn)
    if state is not None and state.base:
        targets.append(state.base)
    return targets


Progress = Callable[[str, int], None]
"""Called as ``progress(phase, count)`` while long maintenance work runs."""


_PROBLEMS = (CaskError, OSError, ValueError, KeyError, lmdb.Error)
"""What a damaged repository can raise while it is verified: reported, never raised."""


def verify_repository(
    parts: RepositoryParts,
    starts: Sequence[str] | None,
    *,
    full: bool,
    raise_on_error: bool,
    progress: Progress | None = None,
) -> VerifyReport:
    """Check hashes of commits, record roots, pages, the content index, the
    table cache and (``full``) sample bytes; report every problem found.

    ``starts``: the commits to check (None: what every ref reaches).
    """
    report = VerifyReport(full=full)
    if starts is None:
        try:
            starts = _ref_targets(parts)
        except _PROBLEMS as exc:
            report.add(str(exc))
            starts = []
    seen: set[bytes] = set()
    checker = _SampleChecker(parts.store, full, report, progress)
    tombstones = parts.store.tombstones(fresh=True)

    def leaf(column: str, schema: ColumnSchema, page: Node) -> None:
        values = page.values()
        if not tombstones.active:
            fresh = set(values).difference(seen)
            if len(fresh) == len(values):  # the usual case: no per-sample work
                seen.update(fresh)
                checker.add(column, schema, page.keys, values)
                return
        todo_keys, todo_digests = [], []
        for raw_key, digest in zip(page.keys, values, strict=True):
            if tombstones.active and tombstones.find(column, raw_key, digest) is not None:
                report.purged += 1
            elif digest not in seen:
                seen.add(digest)
                todo_keys.append(raw_key)
                todo_digests.append(digest)
        if todo_digests:
            checker.add(column, schema, todo_keys, todo_digests)

    walked = reachable(
        parts.history,
        starts,
        digests=False,
        on_damage=lambda where, exc: report.add(f"{where}: {exc}"),
        on_leaf=leaf,
    )
    checker.finish()
    report.commits = len(walked.commits)
    report.pages = walked.pages
    _verify_index(parts, report)
    for problem in parts.tables.cache.check():
        report.add(f"{problem} (removed: it is rebuilt on the next read)")
    parts.tables.forget()
    if raise_on_error and not report.ok:
        raise CorruptionError(
            f"repository {parts.path} failed verification: {report.problems[0]}"
            + (f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else "")
        )
    return report


def _verify_index(parts: RepositoryParts, report: VerifyReport) -> None:
    """Check every content-index entry and run file."""
    try:
        with parts.db.read() as txn:
            for problem in parts.store.index.check(txn):
                report.add(str(problem))
    except _PROBLEMS as exc:
        report.add(f"content index: {exc}")


class _SampleChecker:
    """Finds every sample's bytes, and with ``full`` re-reads and re-hashes them.

    Samples are located :data:`LOOKUP_BATCH` at a time (pages are queued whole).
    Full checks are gathered and run in
    storage order (by backend, segment and offset), so that each stored chunk
    is read from disk once; equal-shape memmap rows are read and hashed in
    batches, like a loader reads them.
    """

    BATCH_BYTES = 32 << 20
    LOOKUP_BATCH = 16384

    def __init__(
        self, store: ContentStore, full: bool, report: VerifyReport, progress: Progress | None
    ) -> None:
        self.store = store
        self.full = full
        self.report = report
        self.progress = progress
        self.columns: list[tuple[str, ColumnSchema]] = []  # of the pages added
        # Queued to be located: one entry per sample, ``page`` indexing ``columns``.
        self.pending: tuple[list[int], list[bytes], list[bytes]] = ([], [], [])
        # Located, to be re-read (``full``): location, page, key and digest per sample.
        self.todo: tuple[list[bytes], list[int], list[bytes], list[bytes]] = ([], [], [], [])

    def add(
        self, column: str, schema: ColumnSchema, raw_keys: list[bytes], digests: list[bytes]
    ) -> None:
        """Queue the samples of one page to be located (and, ``full``, re-read)."""
        pages, keys, queued = self.pending
        pages.extend([len(self.columns)] * len(digests))
        self.columns.append((column, schema))
        keys.extend(raw_keys)
        queued.extend(digests)
        if len(queued) >= self.LOOKUP_BATCH:
            self._locate()

    def _locate(self) -> None:
        """Look the queued samples up in one index snapshot (index runs check a large
        lookup's entries wholesale)."""
        (pages, keys, digests), self.pending = self.pending, ([], [], [])
        report = self.report
        before = report.samples
        report.samples += len(digests)
        if self.progress is not None and before // 4096 != report.samples // 4096:
            self.progress("verifying samples", report.samples)
        try:
            found = self.store.lookup_raw(digests)
        except _PROBLEMS as exc:
            report.add(f"content index: cannot look samples up: {exc}")
            return
        raws, todo_pages, todo_keys, todo_digests = self.todo
        if all(type(raw) is bytes for raw in found):  # the usual case: no per-sample work
            if self.full:
                raws.extend(cast(list[bytes], found))
                todo_pages.extend(pages)
                todo_keys.extend(keys)
                todo_digests.extend(digests)
            return
        for page, raw_key, digest, raw in zip(pages, keys, digests, found, strict=True):
            column = self.columns[page][0]
            if isinstance(raw, bytes):
                if self.full:
                    raws.append(raw)
                    todo_pages.append(page)
                    todo_keys.append(raw_key)
                    todo_digests.append(digest)
            elif raw is not None:
                report.add(f"column {column!r}, key {decode_key(raw_key)!r}: {raw}")
            elif self.store.partial_remote is not None:
                report.not_local += 1
            else:
                report.add(
                    f"column {column!r}, key {decode_key(raw_key)!r}: content "
                    f"{digest.hex()[:16]} is missing"
                )

    def finish(self) -> None:
        """Locate what is queued, then read and re-hash every located sample."""
        self._locate()
        (raws, pages, keys, digests), self.todo = self.todo, ([], [], [], [])
        try:
            groups = group_locations(raws)
        except _PROBLEMS as exc:
            self.report.add(f"content index: a location cannot be decoded: {exc}")
            return
        done = 0
        for group in groups:
            order = np.lexsort((group.offsets, group.segments))  # storage order
            row = 0
            if group.backend == "memmap":
                row = np.dtype(group.dtype).itemsize * math.prod(group.shape)
            step = max(1, self.BATCH_BYTES // row) if row else 1
            for start in range(0, len(order), step):
                chosen = order[start : start + step]
                done += len(chosen)
                if self.progress is not None and (row or not done % 4096 or done == len(raws)):
                    self.progress("re-reading samples", done)
                members = group.members[chosen].tolist()
                expected = [digests[m] for m in members]
                if row and len(chosen) > 1 and self._rows_match(group, chosen, expected):
                    continue
                for i, m in zip(chosen.tolist(), members, strict=True):
                    loc = Location(
                        group.backend,
                        int(group.segments[i]),
                        int(group.offsets[i]),
                        group.dtype,
                        group.shape,
                        int(group.checksums[i]),
                    )
                    column, schema = self.columns[pages[m]]
                    self._check(loc, column, schema, decode_key(keys[m]), digests[m])

    def _rows_match(self, group: LocationGroup, chosen: np.ndarray, digests: list[bytes]) -> bool:
        """Check equal-shape memmap rows at once; False to check them one by one (a
        batch that fails, so that each bad sample is named)."""
        rows = TableRows(
            group.segments[chosen],
            group.offsets[chosen],
            group.checksums[chosen],
            group.dtype,
            group.shape,
        )
        try:
            stacked = cast(np.ndarray, self.store.fetch(digests, rows))
        except _PROBLEMS:
            return False
        return stacked_digests(stacked) == digests

    def _check(
        self, loc: Location, column: str, schema: ColumnSchema, key: object, digest: bytes
    ) -> None:
        report = self.report
        try:
            payload = cast(list[Payload], self.store.fetch([digest], [loc], durable=True))[0]
        except CorruptionError as exc:
            report.add(f"column {column!r}, key {key!r}: checksum mismatch in {exc.path}")
            return
        except _PROBLEMS as exc:
            report.add(f"column {column!r}, key {key!r}: cannot read its bytes: {exc}")
            return
        value = payload.decode("utf-8") if schema.kind == "str" else payload  # type: ignore[union-attr]
        if prepare_one(schema, value, column, key)[1] != digest:
            report.add(
                f"column {column!r}, key {key!r}: bytes in {self.store.path_of(loc)} do not "
                "match their content digest"
            )


def collect_garbage(parts: RepositoryParts, progress: Progress | None = None) -> GCReport:
    """Delete unreachable commits, objects, index entries and dead segments.

    The caller holds the writer lock. Segments still holding one referenced
    payload are kept, with the payloads nothing references overwritten (so
    that content dropped here is not left behind where a later purge of it
    could no longer find it).
    """
    report = GCReport()
    live = reachable(parts.history, _ref_targets(parts), progress=progress)
    with parts.db.read() as txn:
        live.digests.update(parts.staging.digests(txn))
        live.digests.difference_update(load_tombstones(parts.db, txn).gone)
    objects = parts.objects
    live_commits = {bytes.fromhex(c) for c in live.commits}
    with parts.db.write():  # one transaction: all history objects go, or none
        report.commits = objects.delete_many(
            [n for n in objects.names("commit") if n not in live_commits]
        )
        report.objects = objects.delete_many(
            [n for n in objects.names("object") if n not in live.objects]
        )
    store = parts.writable_store()
    try:
        finish_pending(parts, store)  # a purge a crash interrupted
        live_segments: set[tuple[str, int]] = set()
        dropped: list[tuple[tuple[str, int], bytes]] = []
        with parts.db.read() as txn:
            for digest, raw in store.index.items(txn):
                loc = Location.from_bytes(raw)
                if digest in live.digests:
                    live_segments.add((loc.backend, loc.segment))
                else:
                    dropped.append(((loc.backend, loc.segment), raw))
        with parts.db.write() as txn:  # journalled first: a crash leaves them to the next gc
            add_pending(parts.db, txn, [raw for seg, raw in dropped if seg in live_segments])
        report.samples = store.index.retain(live.digests)
        parts.store.forget_all()
        _remove_dead_segments(store, live_segments, report)
        finish_pending(parts, store)
        parts.tables.forget()
        generation = parts.store.tombstones(fresh=True).generation
        parts.tables.cache.retain(parts.tables.cache_name(h, generation) for h in live.objects)
    finally:
        store.close()
    return report


def _remove_dead_segments(
    store: ContentStore, live_segments: set[tuple[str, int]], report: GCReport
) -> None:
    for backend in store.all_backends():
        dead = [s for s in backend.segments() if (backend.name, s) not in live_segments]
        report.bytes_freed += sum(_segment_size(backend.root, segment) for segment in dead)
        backend.remove_segments(dead)
        report.segments += len(dead)


def _segment_size(root: object, segment: int) -> int:
    from pathlib import Path

    total = 0
    for path in Path(str(root)).glob(f"{segment:08d}*"):
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total
