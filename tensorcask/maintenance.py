"""Repository maintenance: integrity verification and garbage collection."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import lmdb

from .errors import CaskError, CorruptionError, RefNotFoundError
from .hashing import object_hash
from .history.objects import ColumnRoot, CommitId, RecordRoot
from .history.refs import HEADS, TAGS
from .history.tree import EMPTY_ROOT, Node, decode_node
from .keys import decode_key
from .layout import DATA_DIR
from .samples import prepare_one
from .storage.base import Location
from .storage.content import ContentStore

if TYPE_CHECKING:
    from .repository import Repository

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


def _ref_targets(repo: Repository) -> list[str]:
    with repo._db.read() as txn:
        refs = repo._history.refs
        targets: list[str] = [*refs.listing(txn, HEADS).values(), *refs.listing(txn, TAGS).values()]
        state = repo._staging.state(txn)
    if state is not None and state.base:
        targets.append(state.base)
    return targets


def _raw_object(repo: Repository, key: bytes) -> bytes | None:
    with repo._db.read() as txn:
        return repo._db.get(txn, "objects", key)


Progress = Callable[[str, int], None]
"""Called as ``progress(phase, count)`` while long maintenance work runs."""


_PROBLEMS = (CaskError, OSError, ValueError, KeyError, lmdb.Error)
"""What a damaged repository can raise while it is verified: reported, never raised."""


def verify_repository(
    repo: Repository,
    ref: str | None,
    *,
    full: bool,
    raise_on_error: bool,
    progress: Progress | None = None,
) -> VerifyReport:
    """Check hashes of commits, record roots, pages, the content index, the
    table cache and (``full``) sample bytes; report every problem found."""
    report = VerifyReport(full=full)
    try:
        starts = [repo.resolve(ref)] if ref is not None else _ref_targets(repo)
    except RefNotFoundError:
        raise
    except _PROBLEMS as exc:
        report.add(str(exc))
        starts = []
    seen_objects: set[bytes] = set()
    seen_digests: set[bytes] = set()
    for cid in _walk_commits(repo, starts, report):
        report.commits += 1
        commit = repo._history.commit(cid)
        data = _checked_object(repo, commit.records, f"record root of commit {cid}", report)
        if data is None or commit.records in seen_objects:
            continue
        seen_objects.add(commit.records)
        for name, root_hash in RecordRoot.from_bytes(data).columns:
            root_data = _checked_object(repo, root_hash, f"column {name!r} of commit {cid}", report)
            if root_data is None or root_hash in seen_objects:
                continue
            seen_objects.add(root_hash)
            root = ColumnRoot.from_bytes(root_data)
            _verify_tree(repo, name, root, cid, full, report, seen_objects, seen_digests, progress)
    _verify_index(repo, report)
    for problem in repo._tables.cache.check():
        report.add(f"{problem} (removed: it is rebuilt on the next read)")
    repo._tables.forget()
    if raise_on_error and not report.ok:
        raise CorruptionError(
            f"repository {repo.path} failed verification: {report.problems[0]}"
            + (f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else "")
        )
    return report


def _walk_commits(
    repo: Repository, starts: Iterable[str], report: VerifyReport | None = None
) -> list[str]:
    """Commits reachable from ``starts``; a damaged one is added to ``report``
    (and skipped) or, without a report, raised."""
    seen: set[str] = set()
    order: list[str] = []
    stack = list(starts)
    while stack:
        cid = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        try:
            commit = repo._history.commit(cid)
        except _PROBLEMS as exc:
            if report is None:
                raise
            report.add(f"commit {cid}: {exc}")
            continue
        order.append(cid)
        stack.extend(commit.parents)
    return order


def _verify_index(repo: Repository, report: VerifyReport) -> None:
    """Check every content-index entry and run file."""
    index = repo._reader_store.index
    try:
        with repo._db.read() as txn:
            for problem in index.check(txn):
                report.add(str(problem))
    except _PROBLEMS as exc:
        report.add(f"content index: {exc}")


def _checked_object(repo: Repository, key: bytes, what: str, report: VerifyReport) -> bytes | None:
    data = _raw_object(repo, key)
    if data is None:
        report.add(f"{what}: object {key.hex()[:16]} is missing")
        return None
    if object_hash(data) != key:
        report.add(f"{what}: object {key.hex()[:16]} does not match its hash")
        return None
    return data


def _verify_tree(
    repo: Repository,
    column: str,
    root: ColumnRoot,
    cid: CommitId | str,
    full: bool,
    report: VerifyReport,
    seen_objects: set[bytes],
    seen_digests: set[bytes],
    progress: Progress | None,
) -> None:
    if root.tree == EMPTY_ROOT:
        return
    stack = [root.tree]
    store = repo._reader_store
    while stack:
        page_hash = stack.pop()
        if page_hash in seen_objects:
            continue
        seen_objects.add(page_hash)
        data = _checked_object(repo, page_hash, f"column {column!r} of commit {cid}", report)
        if data is None:
            continue
        report.pages += 1
        node: Node = decode_node(data, page_hash)
        if node.level:
            stack.extend(node.child(i) for i in range(len(node.keys)))
            continue
        for raw_key, digest in zip(node.keys, node.values(), strict=True):
            if digest in seen_digests:
                continue
            seen_digests.add(digest)
            report.samples += 1
            if progress is not None and not report.samples % 4096:
                progress("verifying samples", report.samples)
            key = decode_key(raw_key)
            try:
                loc = store.locate(digest)
            except _PROBLEMS as exc:
                report.add(f"column {column!r}, key {key!r}: {exc}")
                continue
            if loc is None:
                report.add(
                    f"column {column!r}, key {key!r}: content {digest.hex()[:16]} is missing"
                )
            elif full:
                _verify_sample(repo, column, key, root, loc, digest, report)


def _verify_sample(
    repo: Repository,
    column: str,
    key: object,
    root: ColumnRoot,
    loc: Location,
    digest: bytes,
    report: VerifyReport,
) -> None:
    store = repo._reader_store
    try:
        payload = store.read(loc)
    except CorruptionError as exc:
        report.add(f"column {column!r}, key {key!r}: checksum mismatch in {exc.path}")
        return
    except _PROBLEMS as exc:
        report.add(f"column {column!r}, key {key!r}: cannot read its bytes: {exc}")
        return
    value = payload.decode("utf-8") if root.schema.kind == "str" else payload  # type: ignore[union-attr]
    _, again = prepare_one(root.schema, value, column, key)
    if again != digest:
        report.add(
            f"column {column!r}, key {key!r}: bytes in {store.path_of(loc)} do not match "
            "their content digest"
        )


def collect_garbage(repo: Repository, progress: Progress | None = None) -> GCReport:
    """Delete unreachable commits, objects, index entries and dead segments.

    The caller holds the writer lock. Segments still holding one referenced
    payload are kept whole.
    """
    report = GCReport()
    db = repo._db
    live_commits = set(_walk_commits(repo, _ref_targets(repo)))
    live_objects: set[bytes] = set()
    live_digests: set[bytes] = set()
    tree = repo._history.tree
    for cid in live_commits:
        commit = repo._history.commit(cid)
        if commit.records in live_objects:
            continue
        live_objects.add(commit.records)
        records = RecordRoot.from_bytes(_raw_object(repo, commit.records) or b"")
        for _, root_hash in records.columns:
            live_objects.add(root_hash)
            root = ColumnRoot.from_bytes(_raw_object(repo, root_hash) or b"")
            for page in tree.pages(root.tree):
                if page.hash in live_objects:
                    continue
                live_objects.add(page.hash)
                if page.level == 0:
                    live_digests.update(page.values())
                    if progress is not None and not len(live_objects) % 256:
                        progress("marking live pages", len(live_objects))
    with db.read() as txn:
        for _, value in db.cursor(txn, "staging"):
            if value:
                live_digests.add(bytes(value))
    live_segments: set[tuple[str, int]] = set()
    with db.write() as txn:
        for table, live, attr in (
            ("commits", {bytes.fromhex(c) for c in live_commits}, "commits"),
            ("objects", live_objects, "objects"),
        ):
            cursor = db.cursor(txn, table)
            for key in list(cursor.iternext(keys=True, values=False)):
                if bytes(key) not in live:
                    db.delete(txn, table, bytes(key))
                    setattr(report, attr, getattr(report, attr) + 1)
    store = ContentStore(repo.path / DATA_DIR, db, writable=True)
    try:
        report.samples = store.index.retain(live_digests)
        with db.read() as txn:
            for _, raw in store.index.items(txn):
                loc = Location.from_bytes(raw)
                live_segments.add((loc.backend, loc.segment))
        repo._reader_store.forget_all()
        _remove_dead_segments(store, live_segments, report)
        repo._tables.forget()
        repo._tables.cache.retain(h.hex() for h in live_objects)
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
