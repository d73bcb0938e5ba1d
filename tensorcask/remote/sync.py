"""Push, fetch and fetch_data: moving history and samples between a repository and a remote.

Both directions ask the one reachability walk what the other side lacks
(``reachable(..., excluding=<what the other side's refs reach>)``), so the
cost follows the change, never the size of either side, and neither lists
the bucket to find out.

Order is what keeps readers safe. A push uploads sample packs, then a pack
of history objects, then tags, then moves the branch by compare-and-swap: a
ref on the remote never points at anything missing, and a push killed at any
moment leaves only unreferenced packs that the next push does not need to
redo. A fetch stores samples (each checked against its digest), then, in
one local transaction, the history objects (each checked against its hash)
and the refs.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from ..errors import (
    CaskError,
    ConcurrentUpdateError,
    CorruptionError,
    RefNotFoundError,
)
from ..history.objects import ColumnSchema, CommitId
from ..history.objectstore import WriteBatch
from ..history.reach import ancestry, reachable
from ..history.refs import HEADS, REMOTES, TAGS
from ..history.store import History
from ..history.tree import Node
from ..keys import encode_keys
from ..parts import RepositoryParts
from . import tombstones as purge_records
from .remote import LayeredObjects, Remote
from .transfer import Transfer, download_samples, locate_local, note, upload_samples

__all__ = ["FetchResult", "PushResult", "fetch", "fetch_data", "push"]


@dataclass
class PushResult:
    """What a push did.

    Attributes
    ----------
    branch, commit:
        The branch pushed and the commit the remote branch now points at.
    commits, objects, samples, bytes:
        What was uploaded: commits, history objects (commits included),
        samples, and bytes in all.
    tags:
        Tags created on the remote.
    purged:
        Purged contents removed from the remote's data packs.
    """

    branch: str
    commit: CommitId
    commits: int = 0
    objects: int = 0
    samples: int = 0
    bytes: int = 0
    tags: list[str] = field(default_factory=list)
    purged: int = 0


@dataclass
class FetchResult:
    """What a fetch did.

    Attributes
    ----------
    heads:
        Remote branch -> commit, as now recorded in ``remotes/<remote>/<branch>``.
    commits, objects, samples, bytes:
        What was downloaded.
    tags:
        Tags created locally.
    """

    heads: dict[str, CommitId] = field(default_factory=dict)
    commits: int = 0
    objects: int = 0
    samples: int = 0
    bytes: int = 0
    tags: list[str] = field(default_factory=list)


# -- push ------------------------------------------------------------------


def push(
    parts: RepositoryParts,
    remote: Remote,
    branch: str,
    *,
    force: bool = False,
    progress: Transfer | None = None,
) -> PushResult:
    """Upload what ``remote`` lacks of ``branch`` and move its branch; see ``Repository.push``."""
    head = parts.head(branch)
    if head is None:
        known = ", ".join(sorted(parts.refs.listing(HEADS))) or "none yet: make a first commit"
        raise RefNotFoundError(f"no branch named {branch!r} to push (branches: {known})")
    exists = remote.check_format(create=False)  # refuses a remote of a newer format
    # Purges made elsewhere first: what they remove here is then never uploaded.
    records = purge_records.read_records(remote) if exists else {}
    if records:
        with parts.writer_lock():
            purge_records.apply_new(parts, records)
    theirs_all, damaged = remote.refs.scan()
    if HEADS + branch in damaged and not force:
        raise damaged[HEADS + branch]
    theirs = theirs_all.get(HEADS + branch)
    result = PushResult(branch, head)
    history = parts.history
    if (
        theirs is not None
        and theirs != head
        and not force
        and (
            not parts.objects.has(bytes.fromhex(theirs)) or theirs not in ancestry(history, [head])
        )
    ):
        raise ConcurrentUpdateError(
            f"remote {remote.name!r} has branch {branch!r} at {theirs[:12]}, which is not an "
            f"ancestor of {head[:12]} (someone else pushed, or the histories diverged); "
            f"{_catch_up(remote.name, branch)}, or push with force=True to overwrite it"
        )
    # What the remote has: everything its refs reach (a push moves a ref only once all
    # of it is uploaded), and everything they reached when this repository last fetched
    # or pushed, if those commits are still there; as far as this repository knows them.
    tracked = set(parts.refs.listing(f"{REMOTES}{remote.name}/").values()) - set(
        theirs_all.values()
    )
    if tracked:
        order = sorted(tracked)
        there = remote.objects.has_many([bytes.fromhex(c) for c in order])
        tracked = {c for c, t in zip(order, there, strict=True) if t}
    have = [c for c in {*theirs_all.values(), *tracked} if parts.objects.has(bytes.fromhex(c))]
    kinds: dict[bytes, str] = {}

    def on_leaf(column: str, schema: ColumnSchema, page: Node) -> None:
        if schema.kind != "ndarray":  # arrays say what they are; str and bytes do not
            for digest in page.values():
                kinds.setdefault(digest, schema.kind)

    walk = reachable(history, [head], excluding=have, on_leaf=on_leaf)
    purged = purge_records.purged_contents(parts)
    digests = [d for d in walk.digests if d not in purged]
    again = purge_records.restorable(parts)  # a purge may have removed them from the remote
    if again:
        digests += [d for d, h in zip(again, remote.data.has_many(again), strict=True) if not h]
    located = locate_local(parts, remote, list(dict.fromkeys(digests)))
    remote.check_format(create=True)  # nothing is written to a remote before this point
    moved = upload_samples(parts, remote, located, kinds, progress)
    result.samples, result.bytes = moved.samples, moved.bytes
    names = [bytes.fromhex(c) for c in walk.commits] + walk.order
    batch = WriteBatch()
    for name, data in zip(names, parts.objects.get_many(names), strict=True):
        if data is None:
            raise CorruptionError(
                f"history object {name.hex()} is missing from {parts.objects.location}; the "
                "repository is damaged: run `tensorcask verify` and restore from a clone",
                path=parts.objects.location,
            )
        batch.put(name, data)
    if len(batch):
        remote.objects.write(batch)
        result.bytes += batch.nbytes()
    result.commits, result.objects = len(walk.commits), len(batch)
    note(progress, "objects", len(batch), len(batch))
    result.tags = _push_tags(parts, remote, head, {*theirs_all, *damaged})
    result.purged = purge_records.remove_purged(parts, remote)
    purge_records.upload_records(parts, remote, set(records))
    if theirs != head or HEADS + branch in damaged:
        if force:  # whatever it holds now, even a damaged version
            swapped = remote.refs.overwrite(HEADS + branch, head)
        else:
            swapped = remote.refs.set_if_equals(HEADS + branch, theirs, head)
        if not swapped:
            raise ConcurrentUpdateError(
                f"remote {remote.name!r}: branch {branch!r} moved while pushing (another client "
                f"pushed first); {_catch_up(remote.name, branch)}"
            )
    _remember(parts, remote.name, {branch: head})
    # Keep the indexes (and history packs) a reader must load logarithmic in the number
    # of pushes. The push is complete already: a failure here only leaves more files.
    try:
        remote.objects.packs.consolidate(rewrite=True)
        remote.data.consolidate(rewrite=False)
    except (CaskError, OSError) as exc:
        warnings.warn(
            f"pushed {branch!r} to {remote.name!r}, but could not consolidate its indexes "
            f"({exc}); the remote is complete, and the next push tries again",
            RuntimeWarning,
            stacklevel=3,
        )
    return result


def _catch_up(remote: str, branch: str) -> str:
    return (
        f"run repo.fetch({remote!r}, {branch!r}), merge {remote + '/' + branch!r} into "
        f"{branch!r} (repo.merge({remote + '/' + branch!r}, {branch!r})) and push again"
    )


def _push_tags(
    parts: RepositoryParts, remote: Remote, head: str, theirs: AbstractSet[str]
) -> list[str]:
    """Create on the remote the local tags of commits ``head`` reaches that it lacks
    (``theirs``: the full names of the refs it has)."""
    tags = {t: c for t, c in parts.refs.listing(TAGS).items() if TAGS + t not in theirs}
    if not tags:
        return []
    reached = set(ancestry(parts.history, [head]))
    created = []
    for tag, commit in sorted(tags.items()):
        if commit in reached and remote.refs.set_if_equals(TAGS + tag, None, commit):
            created.append(tag)
    return created


def _remember(parts: RepositoryParts, remote: str, heads: dict[str, CommitId]) -> None:
    """Record where the remote's branches are, in ``remotes/<remote>/<branch>``."""
    with parts.db.write():
        for branch, commit in heads.items():
            name = f"{REMOTES}{remote}/{branch}"
            parts.refs.set_if_equals(name, parts.refs.get(name), commit)


# -- fetch -----------------------------------------------------------------


def fetch(
    parts: RepositoryParts,
    remote: Remote,
    branches: Iterable[str] | None = None,
    *,
    data: bool = True,
    progress: Transfer | None = None,
) -> FetchResult:
    """Bring the remote's branches (all, or ``branches``) and tags; see ``Repository.fetch``."""
    remote.require()
    listing, damaged = remote.refs.scan()
    heads = {n[len(HEADS) :]: c for n, c in listing.items() if n.startswith(HEADS)}
    if branches is None and damaged:
        raise next(iter(damaged.values()))  # a branch or tag we cannot read: say so
    if branches is not None:
        wanted = list(branches)
        for branch in wanted:
            if HEADS + branch in damaged:
                raise damaged[HEADS + branch]
        unknown = [b for b in wanted if b not in heads]
        if unknown:
            raise RefNotFoundError(
                f"remote {remote.name!r} has no branch {unknown[0]!r} (branches: "
                f"{', '.join(sorted(heads)) or 'none'})"
            )
        heads = {b: heads[b] for b in wanted}
    tags = {n[len(TAGS) :]: c for n, c in listing.items() if n.startswith(TAGS)}
    result = FetchResult(heads=dict(heads))
    records = purge_records.read_records(remote)
    tombstones = purge_records.combined(parts, records)
    with parts.writer_lock():
        layered = LayeredObjects(parts.objects, remote.objects)
        walked = History(layered, remote.refs)
        local_heads = set(parts.refs.listing().values())
        starts = sorted(
            c for c in {*heads.values(), *tags.values()} if not parts.objects.has(bytes.fromhex(c))
        )
        present = remote.objects.has_many([bytes.fromhex(c) for c in starts])
        for commit, there in zip(starts, present, strict=True):
            if not there:
                pointing = sorted(n for n, c in listing.items() if c == commit)
                raise CorruptionError(
                    f"remote {remote.name!r} at {remote.url}: ref {pointing[0]!r} points at commit "
                    f"{commit[:12]}, which the remote lacks; the remote is damaged: push the "
                    "branch again with force=True from a complete copy",
                    path=remote.refs.location,
                )
        schemas: dict[bytes, ColumnSchema] = {}

        def on_leaf(column: str, schema: ColumnSchema, page: Node) -> None:
            if not tombstones.active:
                for digest in page.values():
                    schemas.setdefault(digest, schema)
                return
            for raw, digest in zip(page.keys, page.values(), strict=True):
                if tombstones.find(column, raw, digest) is None:  # purged: never downloaded
                    schemas.setdefault(digest, schema)

        walk = reachable(
            walked, starts, excluding=local_heads, digests=data, on_leaf=on_leaf if data else None
        )
        if data:
            # The walk leaves out what local pages hold; a purge here may have removed it.
            again = tombstones.gone & schemas.keys()
            chosen = {d: schemas[d] for d in (*walk.digests, *again) if d in schemas}
            moved = download_samples(parts, remote, chosen, progress)
            result.samples, result.bytes = moved.samples, moved.bytes
        # The walk loaded every commit and object it reports through `walked`, which
        # checks each against its name before decoding it; store those same bytes.
        names = [bytes.fromhex(c) for c in walk.commits] + walk.order
        batch = WriteBatch()
        for name, raw in zip(names, layered.get_many(names), strict=True):
            assert raw is not None
            batch.put(name, raw)
        result.commits, result.objects, result.bytes = (
            len(walk.commits),
            len(batch),
            result.bytes + batch.nbytes(),
        )
        note(progress, "objects", len(batch), len(batch))
        with parts.db.write():
            parts.objects.write(batch)
            _remember(parts, remote.name, heads)
            for tag, commit in sorted(tags.items()):
                if (
                    parts.objects.has(bytes.fromhex(commit))
                    and parts.refs.get(TAGS + tag) is None
                    and parts.refs.get(HEADS + tag) is None  # a local branch of that name wins
                ):
                    parts.refs.set_if_equals(TAGS + tag, None, commit)
                    result.tags.append(tag)
        # Now that the remote's history is here, what other samples hold is judged on it.
        purge_records.apply_new(parts, records)
    return result


def fetch_data(
    parts: RepositoryParts,
    remote: Remote,
    commit: str,
    columns: Sequence[str] | None = None,
    keys: Iterable[object] | None = None,
    *,
    progress: Transfer | None = None,
) -> FetchResult:
    """Bring the samples of ``commit``'s ``columns`` (all) at ``keys`` (all) that are not here."""
    remote.require()
    roots = parts.history.columns(commit)
    names = list(roots) if columns is None else list(columns)
    for name in names:
        if name not in roots:
            raise KeyError(
                f"commit {commit[:12]} has no column {name!r} (columns: {', '.join(sorted(roots))})"
            )
    raw_keys = None if keys is None else encode_keys(list(keys))
    records = purge_records.read_records(remote)
    tombstones = purge_records.combined(parts, records)
    wanted: dict[bytes, ColumnSchema] = {}
    tree = parts.history.tree
    for name in names:
        root = roots[name]
        if raw_keys is None:
            found: Iterable[tuple[bytes, bytes | None]] = tree.items(root.tree)
        else:
            found = zip(raw_keys, tree.get_many(root.tree, raw_keys), strict=True)
        for raw, digest in found:
            if digest is not None and tombstones.find(name, raw, digest) is None:
                wanted.setdefault(digest, root.schema)
    with parts.writer_lock():
        purge_records.apply_new(parts, records)
        moved = download_samples(parts, remote, wanted, progress)
    return FetchResult(samples=moved.samples, bytes=moved.bytes)
