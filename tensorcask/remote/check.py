"""verify_remote: re-hash all a remote holds; check that its refs reach only what it has."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import CaskError, CorruptionError
from ..hashing import object_hash
from ..history.objects import commit_id_of
from ..history.reach import reachable
from .packs import PackSet, decode_index, pack_id
from .remote import Remote
from .samples import decode_sample

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
        refs = remote.refs.listing()
    except _PROBLEMS as exc:
        report.add(f"refs: {exc}")
        refs = {}
    report.refs = len(refs)
    starts = []
    for name, commit in sorted(refs.items()):
        if remote.objects.has(bytes.fromhex(commit)):
            starts.append(commit)
        else:
            report.add(f"ref {name!r} points at commit {commit[:12]}, which the remote lacks")
    walk = reachable(
        remote.history,
        starts,
        on_damage=lambda where, exc: report.add(f"{where}: {exc}"),
    )
    digests = sorted(walk.digests)
    missing = [d for d, h in zip(digests, remote.data.has_many(digests), strict=True) if not h]
    for digest in missing[:20]:
        report.add(
            f"sample {digest.hex()[:16]} is referred to by history but missing from the remote"
        )
    if len(missing) > 20:
        report.add(f"... and {len(missing) - 20} more missing samples")
    if raise_on_error and not report.ok:
        raise CorruptionError(str(report), path=remote.url)
    return report


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
    transport = packs.transport
    names = sorted(n[:-4] for n in transport.list_names(packs.folder) if n.endswith(".idx"))
    for pack in names:
        idx_path, pack_path = packs.path(pack, ".idx"), packs.path(pack, ".pack")
        try:
            raw_index = transport.cat(idx_path)
            index = decode_index(pack, raw_index, idx_path)
            data = transport.cat(pack_path)
        except _PROBLEMS as exc:
            report.add(f"pack {pack_path}: {exc}")
            continue
        report.packs += 1
        report.bytes += len(data)
        if len(data) != index.size or pack_id(data, raw_index) != pack:
            report.add(
                f"pack {pack_path} does not match its name (damaged or truncated: "
                f"{len(data)} bytes, its index says {index.size})"
            )
        for name, at in zip(index.names(), range(len(index.keys)), strict=True):
            start, size = int(index.offsets[at]), int(index.sizes[at])
            entry = data[start : start + size]
            if len(entry) != size or not check(name, entry):
                report.add(
                    f"{packs.folder} entry {name.hex()[:16]} in pack {pack_path} fails its hash"
                )
            if packs.folder == "data":
                report.samples += 1
            else:
                report.objects += 1
        if progress is not None:
            progress(f"verifying {packs.folder} packs", report.packs)
