"""Repository maintenance: integrity verification and garbage collection."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import lmdb

from .errors import CaskError, CorruptionError
from .history.objects import ColumnSchema
from .history.reach import reachable
from .history.refs import HEADS, REMOTES, TAGS
from .history.tree import Node
from .keys import decode_key
from .parts import RepositoryParts
from .purge import finish_pending
from .samples import prepare_one
from .storage.base import Location, Payload
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
        for raw_key, digest in zip(page.keys, page.values(), strict=True):
            if tombstones.active and tombstones.find(column, raw_key, digest) is not None:
                report.purged += 1
            elif digest not in seen:
                seen.add(digest)
                checker.add(column, schema, raw_key, digest)

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

    Full checks are gathered and run in storage order (by backend, segment
    and offset), so that each stored chunk is read from disk once.
    """

    def __init__(
        self, store: ContentStore, full: bool, report: VerifyReport, progress: Progress | None
    ) -> None:
        self.store = store
        self.full = full
        self.report = report
        self.progress = progress
        self.todo: list[tuple[Location, str, ColumnSchema, bytes, bytes]] = []

    def add(self, column: str, schema: ColumnSchema, raw_key: bytes, digest: bytes) -> None:
        report = self.report
        report.samples += 1
        if self.progress is not None and not report.samples % 4096:
            self.progress("verifying samples", report.samples)
        try:
            loc = self.store.locate(digest)
        except _PROBLEMS as exc:
            report.add(f"column {column!r}, key {decode_key(raw_key)!r}: {exc}")
            return
        if loc is None and self.store.partial_remote is not None:
            report.not_local += 1
        elif loc is None:
            report.add(
                f"column {column!r}, key {decode_key(raw_key)!r}: content "
                f"{digest.hex()[:16]} is missing"
            )
        elif self.full:
            self.todo.append((loc, column, schema, raw_key, digest))

    def finish(self) -> None:
        self.todo.sort(key=lambda t: (t[0].backend, t[0].segment, t[0].offset))
        for loc, column, schema, raw_key, digest in self.todo:
            self._check(loc, column, schema, decode_key(raw_key), digest)
        self.todo.clear()

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
        for segment in backend.segments():
            if (backend.name, segment) not in live_segments:
                report.bytes_freed += _segment_size(backend.root, segment)
                backend.remove_segment(segment)
                report.segments += 1


def _segment_size(root: object, segment: int) -> int:
    from pathlib import Path

    total = 0
    for path in Path(str(root)).glob(f"{segment:08d}*"):
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total
