"""verify_remote: re-hash all a remote holds; check that its refs reach only what it has."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..errors import CaskError, CorruptionError
from ..hashing import object_hash
from ..history.objects import ColumnSchema, commit_id_of
from ..history.reach import reachable
from ..history.tree import Node
from ..storage.tombstones import Tombstones
from .packs import PackIndex, decode_index, pack_id, unit_name
from .packset import PackSet
from .remote import Remote
from .samples import DATA_FOLDER, decode_sample
from .tombstones import remote_tombstones

__all__ = ["RemoteVerifyReport", "verify_remote"]

_PROBLEMS = (CaskError, OSError, ValueError, KeyError)


@dataclass
class RemoteVerifyReport:
    """What :meth:`Repository.verify_remote` checked and found."""

    remote: str
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    packs: int = 0
    objects: int = 0
    samples: int = 0
    bytes: int = 0
    refs: int = 0
    purged: int = 0
    """Samples the history refers to that a purge removed on purpose (not a problem)."""

    def add(self, problem: str) -> None:
        """Record one problem."""
        self.ok = False
        self.problems.append(problem)

    def __str__(self) -> str:
        head = (
            f"verified remote {self.remote!r}: {self.refs} refs, {self.packs} packs, "
            f"{self.objects} history objects, {self.samples} samples ({self.bytes} bytes): "
            + ("ok" if self.ok else f"{len(self.problems)} problem(s)")
        )
        if self.purged:
            head += f" ({self.purged} purged samples removed)"
        return "\n".join([head, *self.problems])


def verify_remote(
    remote: Remote,
    *,
    raise_on_error: bool = True,
    progress: Callable[[str, int], None] | None = None,
) -> RemoteVerifyReport:
    """Re-hash every pack, history object and sample of ``remote``; check its refs' closure."""
    remote.require()
    report = RemoteVerifyReport(remote.name)
    _check_packs(remote.objects.packs, report, _check_object, progress)
    _check_packs(remote.data, report, _check_sample, progress)
    try:
        refs, damaged = remote.refs.scan()
    except _PROBLEMS as exc:
        report.add(f"refs: {exc}")
        refs, damaged = {}, {}
    for problem in damaged.values():
        report.add(str(problem))
    report.refs = len(refs) + len(damaged)
    try:
        missing = _closure(remote, refs, report, remote_tombstones(remote))
    except _PROBLEMS as exc:  # a damaged index: reported above, and here what it hides
        report.add(f"cannot check what the refs reach: {exc}")
        missing = []
    for digest in missing[:20]:
        report.add(
            f"sample {digest.hex()[:16]} is referred to by history but missing from the remote"
        )
    if len(missing) > 20:
        report.add(f"... and {len(missing) - 20} more missing samples")
    if raise_on_error and not report.ok:
        raise CorruptionError(str(report), path=remote.url)
    return report


def _closure(
    remote: Remote, refs: Mapping[str, str], report: RemoteVerifyReport, tombstones: Tombstones
) -> list[bytes]:
    """Walk from every ref, reporting what is damaged or missing; the missing samples.

    A sample only purged records hold may be missing (a purge removed it on
    purpose): counted in ``report.purged``, not returned.
    """
    starts = []
    for name, commit in sorted(refs.items()):
        if remote.objects.has(bytes.fromhex(commit)):
            starts.append(commit)
        else:
            report.add(f"ref {name!r} points at commit {commit[:12]}, which the remote lacks")
    needed: set[bytes] = set()

    def leaf(column: str, schema: ColumnSchema, page: Node) -> None:
        for raw, digest in zip(page.keys, page.values(), strict=True):
            if tombstones.find(column, raw, digest) is None:
                needed.add(digest)

    walk = reachable(
        remote.history,
        starts,
        on_damage=lambda where, exc: report.add(f"{where}: {exc}"),
        on_leaf=leaf if tombstones.active else None,
    )
    digests = sorted(walk.digests)
    missing = [d for d, h in zip(digests, remote.data.has_many(digests), strict=True) if not h]
    if not tombstones.active:
        return missing
    report.purged = sum(d not in needed for d in missing)
    return [d for d in missing if d in needed]


def _check_object(name: bytes, data: bytes) -> bool:
    if len(name) == 20:
        return commit_id_of(data) == name.hex()
    return object_hash(data) == name


def _check_sample(name: bytes, data: bytes) -> bool:
    try:
        decode_sample(data, name, "")
    except CorruptionError:
        return False
    return True


def _check_packs(
    packs: PackSet,
    report: RemoteVerifyReport,
    check: Callable[[bytes, bytes], bool],
    progress: Callable[[str, int], None] | None,
) -> None:
    """Check every index of a folder, every pack they name, and every entry in it."""
    transport = packs.transport
    entries: dict[str, list[tuple[PackIndex, np.ndarray]]] = {}
    sizes: dict[str, int] = {}
    own_index: dict[str, bytes] = {}  # a pack's own .idx, which its name hashes too
    for unit in sorted(
        n for n in transport.list_names(packs.folder) if n.endswith((".idx", ".midx"))
    ):
        where = packs.path(unit)
        try:
            raw = transport.cat(where)
            index = decode_index(unit, raw, where)
        except _PROBLEMS as exc:
            report.add(f"index {where}: {exc}")
            continue
        if unit.endswith(".midx") and unit_name(raw, ".midx") != unit:
            report.add(f"index {where} does not match its name")
        for number, (pack, size) in enumerate(index.packs):
            rows = np.flatnonzero(index.entry_pack == number)
            entries.setdefault(pack, []).append((index, rows))
            sizes[pack] = size
            if unit.endswith(".idx"):
                own_index[pack] = raw
    names_of: dict[str, list[bytes]] = {}
    for pack, users in sorted(entries.items()):
        pack_path = packs.path(pack, ".pack")
        try:
            data = transport.cat(pack_path)
        except _PROBLEMS as exc:
            report.add(f"pack {pack_path}: {exc}")
            continue
        report.packs += 1
        report.bytes += len(data)
        if len(data) != sizes[pack]:
            report.add(f"pack {pack_path} is {len(data)} bytes; its index says {sizes[pack]}")
        elif pack in own_index and pack_id(data, own_index[pack]) != pack:
            report.add(f"pack {pack_path} does not match its name (damaged)")
        seen: set[bytes] = set()
        for index, rows in users:
            names = names_of.get(index.unit)
            if names is None:
                names = names_of[index.unit] = index.names()
            for row in rows.tolist():
                name = names[row]
                if name in seen:
                    continue
                seen.add(name)
                start, size = int(index.offsets[row]), int(index.sizes[row])
                entry = data[start : start + size]
                if len(entry) != size or not check(name, entry):
                    report.add(
                        f"{packs.folder} entry {name.hex()[:16]} in pack {pack_path} fails its hash"
                    )
                if packs.folder == DATA_FOLDER:
                    report.samples += 1
                else:
                    report.objects += 1
        if progress is not None:
            progress(f"verifying {packs.folder} packs", report.packs)
