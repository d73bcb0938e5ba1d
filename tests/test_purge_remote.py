"""Purge propagation through remotes (SPEC §6): purge records travel with push and
fetch, purged bytes leave the remote's data packs (rewriting only the packs that hold
them) and every clone, a stale clone cannot bring them back, shared content stays,
``allow_purged`` re-adds travel too, and streaming loaders read the remote's records.

Every check of "the bytes are gone" looks for a distinctive random byte pattern of the
purged sample in every object of the remote (a ``file://`` folder walked, or an S3
bucket of moto's server listed and read through s3fs) or every file of a clone, with
the patterns of samples that were not purged as the positive control.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest

import tensorcask as tc

IDENTITY: dict[str, Any] = {"user_name": "Ada", "user_email": "ada@example.org"}
N = 12  # keys 0..N-1 in the first commit
IMAGE = 256  # bytes of an image: a random, distinctive pattern
COLUMNS = ["images", "feats", "names", "blobs"]


# -- remotes: a file:// folder or an S3 bucket, and every object they hold -------------


@dataclass
class Remote:
    """A remote URL, the options that reach it, and a way to read every object."""

    kind: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)
    server: Any = None
    _fs: Any = None

    def add_to(self, repo: tc.Repository, name: str = "origin") -> None:
        repo.add_remote(name, self.url, **self.options)

    def clone(self, path: Path, partial: bool = False) -> tc.Repository:
        return tc.clone(
            self.url, path, partial=partial, storage_options=self.options or None, **IDENTITY
        )

    def objects(self) -> dict[str, bytes]:
        """Every object of the remote: name (relative to its root) -> content."""
        if self.kind == "file":
            root = Path(urlparse(self.url).path)
            return {
                p.relative_to(root).as_posix(): p.read_bytes()
                for p in sorted(root.rglob("*"))
                if p.is_file()
            }
        if self._fs is None:
            self._fs = self.server.filesystem()
        prefix = self.url[len("s3://") :]
        names = self._fs.find(prefix)
        assert names, f"nothing under {self.url}"
        contents = self._fs.cat(names)
        return {n[len(prefix) + 1 :]: contents[n] for n in names}

    def holding(self, patterns: Mapping[Any, bytes]) -> dict[Any, list[str]]:
        """Pattern label -> the objects that hold it."""
        return _holding(self.objects(), patterns)


def _holding(objects: Mapping[str, bytes], patterns: Mapping[Any, bytes]) -> dict[Any, list[str]]:
    return {
        label: sorted(n for n, data in objects.items() if pattern in data)
        for label, pattern in patterns.items()
    }


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root``: relative name -> content."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _local_holding(root: Path, patterns: Mapping[Any, bytes]) -> dict[Any, list[str]]:
    return _holding(_files(root), patterns)


def _make_remote(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Remote:
    if kind == "file":
        return Remote("file", (tmp_path / "remote").as_uri())
    server = request.getfixturevalue("s3_server")
    return Remote("s3", request.getfixturevalue("s3_url"), server.storage_options, server)


@pytest.fixture(params=["file", "s3"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Remote:
    return _make_remote(request.param, request, tmp_path)


@pytest.fixture
def file_remote(request: pytest.FixtureRequest, tmp_path: Path) -> Remote:
    return _make_remote("file", request, tmp_path)


# -- data: distinctive random samples, and what every commit holds ---------------------


class Values:
    """Column -> key -> value, drawn from one generator, with their byte patterns."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def image(self) -> np.ndarray:
        return self.rng.integers(0, 256, IMAGE, dtype=np.uint8)

    def feat(self) -> np.ndarray:
        return self.rng.integers(0, 256, 96, dtype=np.uint8)

    def name(self) -> str:
        return self.rng.bytes(40).hex()

    def blob(self) -> bytes:
        return self.rng.bytes(120)

    def sample(self, column: str) -> Any:
        return {"images": self.image, "feats": self.feat, "names": self.name, "blobs": self.blob}[
            column
        ]()


def _pattern(value: Any) -> bytes:
    if isinstance(value, np.ndarray):
        return value.tobytes()
    if isinstance(value, str):
        return value.encode()
    assert isinstance(value, bytes)
    return value


def _create_columns(co: tc.WriteCheckout, columns: Iterable[str] = COLUMNS) -> None:
    for column in columns:
        if column == "images":
            co.add_ndarray_column("images", shape=(IMAGE,), dtype="uint8")
        elif column == "feats":
            co.add_ndarray_column("feats", shape=(96,), dtype="uint8", backend="hdf5")
        elif column == "names":
            co.add_str_column("names")
        elif column == "blobs":
            co.add_bytes_column("blobs")


def _write(co: tc.WriteCheckout, values: Mapping[str, Mapping[Any, Any]]) -> None:
    for column, samples in values.items():
        col = co[column]
        if column in ("images", "feats"):
            keys = list(samples)
            col.update(keys, np.stack([samples[k] for k in keys]))
        else:
            col.update(dict(samples))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
    return type(a) is type(b) and a == b


@dataclass
class Source:
    """A local repository with two commits on main, and what each commit holds."""

    repo: tc.Repository
    path: Path
    commits: list[str]
    held: dict[str, dict[str, dict[Any, Any]]]  # commit -> column -> key -> value
    values: Values

    def value(self, column: str, key: Any, commit: str | None = None) -> Any:
        return self.held[commit or self.commits[-1]][column][key]

    def patterns(self, pairs: Iterable[tuple[str, Any]]) -> dict[tuple[str, Any, str], bytes]:
        """(column, key, commit) -> pattern, for every distinct content these samples hold."""
        out: dict[tuple[str, Any, str], bytes] = {}
        for column, key in sorted(pairs, key=repr):
            for commit in self.commits:
                value = self.held[commit][column].get(key)
                if value is not None and _pattern(value) not in out.values():
                    out[(column, key, commit[:8])] = _pattern(value)
        return out

    def all_pairs(self) -> set[tuple[str, Any]]:
        return {(c, k) for held in self.held.values() for c, ks in held.items() for k in ks}


def _source(path: Path, seed: int = 7, columns: list[str] = COLUMNS) -> Source:
    """main: "first" (keys 0..N-1 in every column), then "second" (key 1 changed
    in every column, key N added); tag v1 at "first"."""
    values = Values(seed)
    repo = tc.init(path, **IDENTITY)
    first = {c: {k: values.sample(c) for k in range(N)} for c in columns}
    with repo.checkout(write=True) as co:
        _create_columns(co, columns)
        _write(co, first)
        c1 = co.commit("first")
    repo.create_tag("v1", c1)
    change = {c: {1: values.sample(c), N: values.sample(c)} for c in columns}
    with repo.checkout(write=True) as co:
        _write(co, change)
        c2 = co.commit("second")
    second = {c: {**first[c], **change[c]} for c in columns}
    return Source(repo, path, [c1, c2], {c1: first, c2: second}, values)


def _check_reads(
    repo: tc.Repository, src: Source, purged: set[tuple[str, Any]], commits: Iterable[str]
) -> None:
    """Every sample that was not purged reads back exactly, in every commit; then every
    purged sample raises PurgedDataError naming it, in every commit."""
    commits = list(commits)
    for commit in commits:
        with repo.checkout(commit=commit) as co:
            for column, samples in src.held[commit].items():
                for key, value in samples.items():
                    if (column, key) not in purged:
                        assert _same(co[column][key], value), (commit, column, key)
    for commit in commits:
        with repo.checkout(commit=commit) as co:
            for column, samples in src.held[commit].items():
                for key in samples:
                    if (column, key) in purged:
                        with pytest.raises(tc.PurgedDataError) as info:
                            co[column][key]
                        assert (info.value.column, info.value.key) == (column, key), commit
                        assert info.value.reason


# -- 1. purge, then push: the remote loses the bytes; clones never see them -----------


def test_purge_then_push_removes_the_bytes_from_the_remote(remote: Remote, tmp_path: Path) -> None:
    src = _source(tmp_path / "a")
    a = src.repo
    remote.add_to(a)
    a.push("origin", "main")
    purged = {("images", 1), ("images", 2), ("feats", 2), ("names", 2), ("blobs", 1)}
    gone = src.patterns(purged)
    # images 1 and blobs 1 hold two contents each (changed in "second"): 7 contents
    assert len(gone) == 7
    kept = src.patterns(src.all_pairs() - purged)
    before = remote.holding({**gone, **kept})
    assert all(before.values()), [k for k, v in before.items() if not v]

    reports = [
        a.purge("images", [1, 2], reason="GDPR request 17"),
        a.purge("feats", [2], reason="GDPR request 17"),
        a.purge("names", [2], reason="GDPR request 17"),
        a.purge("blobs", [1], reason="GDPR request 18"),
    ]
    assert [r.tombstones for r in reports] == [3, 1, 1, 2]
    pushed = a.push("origin", "main")
    assert pushed.commit == src.commits[-1] and pushed.samples == 0
    assert pushed.purged == 7

    objects = remote.objects()
    assert _holding(objects, gone) == {k: [] for k in gone}
    assert all(_holding(objects, kept).values())  # the positive control
    records = sorted(n for n in objects if n.startswith("tombstones/"))
    assert len(records) == 4 and all(n.endswith(".json") for n in records)
    for name in records:
        doc = json.loads(objects[name])
        assert name == f"tombstones/{doc['id']}.json"
    report = a.verify_remote("origin")
    assert report.ok and report.purged == 7, str(report)

    again = a.push("origin", "main")  # nothing more to remove, nothing uploaded
    assert (again.purged, again.samples) == (0, 0)
    assert remote.objects() == objects

    clone = remote.clone(tmp_path / "c")
    assert [t.reason for t in clone.tombstones()].count("GDPR request 17") == 5
    assert {(t.column, t.key) for t in clone.tombstones()} == purged
    _check_reads(clone, src, purged, src.commits)
    with clone.checkout(commit="v1") as co, pytest.raises(tc.PurgedDataError):
        co["images"].get_many([0, 1, 3])
    assert _local_holding(tmp_path / "c", gone) == {k: [] for k in gone}
    assert all(_local_holding(tmp_path / "c", kept).values())
    assert clone.verify(full=True).ok
    # The purging repository reads as the clone does.
    _check_reads(a, src, purged, src.commits)


# -- 2. propagation by fetch ---------------------------------------------------------


def test_fetch_applies_the_remotes_purges(remote: Remote, tmp_path: Path) -> None:
    src = _source(tmp_path / "a", columns=["images", "feats"])
    a = src.repo
    remote.add_to(a)
    a.push("origin", "main")
    b = remote.clone(tmp_path / "b")
    lazy = remote.clone(tmp_path / "lazy", partial=True)  # history only, before the purge
    purged = {("images", 3), ("feats", 3), ("images", 1)}
    gone = src.patterns(purged)
    kept = src.patterns(src.all_pairs() - purged)
    assert all(_local_holding(tmp_path / "b", gone).values())

    a.purge("images", [3, 1], reason="takedown")
    a.purge("feats", [3], reason="takedown")
    assert a.push("origin").purged == len(gone) == 4

    assert b.tombstones() == []
    b.fetch("origin")
    assert {(t.column, t.key, t.reason) for t in b.tombstones()} == {
        (c, k, "takedown") for c, k in purged
    }
    held = _local_holding(tmp_path / "b", {**gone, **kept})
    assert {k: held[k] for k in gone} == {k: [] for k in gone}
    assert all(held[k] for k in kept)
    _check_reads(b, src, purged, src.commits)
    assert b.verify(full=True).ok
    # A partial clone brings data on demand: never the purged samples.
    lazy.fetch_data("origin", "main")
    lazy.fetch_data("origin", "v1")
    _check_reads(lazy, src, purged, src.commits)
    assert _local_holding(tmp_path / "lazy", gone) == {k: [] for k in gone}


def test_fetch_removes_purged_str_and_bytes_samples_from_the_clone(
    file_remote: Remote, tmp_path: Path
) -> None:
    """str and bytes columns (stored in LMDB): the fetched purge removes their bytes too."""
    src = _source(tmp_path / "a", columns=["names", "blobs"])
    a = src.repo
    file_remote.add_to(a)
    a.push("origin", "main")
    b = file_remote.clone(tmp_path / "b")
    purged = {("names", 4), ("blobs", 4)}
    gone = src.patterns(purged)
    kept = src.patterns(src.all_pairs() - purged)
    a.purge("names", [4], reason="takedown")
    a.purge("blobs", [4], reason="takedown")
    a.push("origin")
    b.fetch("origin")
    _check_reads(b, src, purged, src.commits)
    assert all(_local_holding(tmp_path / "b", kept).values())
    assert _local_holding(tmp_path / "b", gone) == {k: [] for k in gone}
    assert _local_holding(tmp_path / "a", gone) == {k: [] for k in gone}


# -- 3. a stale clone cannot bring purged bytes back ---------------------------------


def test_a_stale_clone_does_not_resurrect_purged_bytes(remote: Remote, tmp_path: Path) -> None:
    src = _source(tmp_path / "a", columns=["images"])
    a = src.repo
    remote.add_to(a)
    a.push("origin", "main")
    b = remote.clone(tmp_path / "b")
    gone = src.patterns({("images", 5)})
    assert all(_local_holding(tmp_path / "b", gone).values())  # b holds the bytes

    a.purge("images", [5], reason="erase me")
    assert a.push("origin").purged == 1
    assert remote.holding(gone) == {k: [] for k in gone}

    new = src.values.image()
    with b.checkout(write=True) as co:  # b never fetched: it does not know of the purge
        co["images"][100] = new
        head = co.commit("new work in a stale clone")
    pushed = b.push("origin")
    assert pushed.commit == head and pushed.samples == 1
    objects = remote.objects()
    assert _holding(objects, gone) == {k: [] for k in gone}
    assert _holding(objects, {"new": new.tobytes()})["new"]
    assert [(t.column, t.key) for t in b.tombstones()] == [("images", 5)]
    assert _local_holding(tmp_path / "b", gone) == {k: [] for k in gone}
    with b.checkout() as co, pytest.raises(tc.PurgedDataError):
        co["images"][5]
    assert a.verify_remote("origin").ok

    c = remote.clone(tmp_path / "c")  # made after: never held the bytes
    assert _local_holding(tmp_path / "c", gone) == {k: [] for k in gone}
    with c.checkout() as co:
        assert _same(co["images"][100], new)


def test_a_stale_clone_pushing_a_new_branch_uploads_no_purged_bytes(
    remote: Remote, tmp_path: Path
) -> None:
    """b branches off the first commit (which holds the purged sample) and pushes that
    new branch: the walk of what the remote lacks must not bring the bytes back."""
    src = _source(tmp_path / "a", columns=["images"])
    a = src.repo
    remote.add_to(a)
    a.push("origin", "main")
    b = remote.clone(tmp_path / "b")
    gone = src.patterns({("images", 6)})
    a.purge("images", [6], reason="erase me")
    a.push("origin")
    b.create_branch("side", src.commits[0])
    with b.checkout(write=True, branch="side") as co:
        co["images"][7] = src.values.image()
        co.commit("side work")
    b.push("origin", "side")
    assert remote.holding(gone) == {k: [] for k in gone}
    assert _local_holding(tmp_path / "b", gone) == {k: [] for k in gone}
    assert a.verify_remote("origin").ok


# -- 4. content shared with samples that were not purged stays on the remote ----------


def _shared_source(path: Path, where: str) -> tuple[Source, Any, dict[str, Any]]:
    """images key 3's content also held by another sample; the pattern and where the
    other sample is (ref, column, key)."""
    src = _source(path, columns=["images"])
    a = src.repo
    content = src.value("images", 3)
    holder: dict[str, Any] = {"ref": "main", "column": "images", "key": 40}
    if where == "same-branch":
        with a.checkout(write=True) as co:
            co["images"][40] = content
            co.commit("a copy of 3 at 40")
    elif where == "other-branch":
        a.create_branch("dev", src.commits[0])
        with a.checkout(write=True, branch="dev") as co:
            co["images"][40] = content
            co.commit("a copy of 3 at 40, on dev")
        with a.checkout(write=True, branch="main"):
            pass
        holder["ref"] = "dev"
    elif where == "other-column":
        with a.checkout(write=True) as co:
            co.add_ndarray_column("copy", shape=(IMAGE,), dtype="uint8")
            keys = sorted(src.held[src.commits[-1]]["images"])
            co["copy"].update(keys, np.stack([src.value("images", k) for k in keys]))
            co.commit("the same samples in another column")
        holder.update(column="copy", key=3)
    return src, content, holder


@pytest.mark.parametrize(
    ("kind", "where"),
    [
        ("file", "same-branch"),
        ("s3", "same-branch"),
        ("file", "other-branch"),
        ("file", "other-column"),
        ("file", "unfetched-branch"),
    ],
)
def test_shared_content_stays_until_purged_by_content(
    kind: str, where: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    remote = _make_remote(kind, request, tmp_path)
    src, content, holder = _shared_source(tmp_path / "a", where)
    a = src.repo
    remote.add_to(a)
    a.push("origin", "main")
    if where == "other-branch":
        a.push("origin", "dev")
    if where == "unfetched-branch":
        # Someone else pushes a branch holding the content; a never fetches it.
        other = remote.clone(tmp_path / "other")
        other.create_branch("theirs", "main")
        with other.checkout(write=True, branch="theirs") as co:
            co["images"][40] = content
            co.commit("their copy of 3 at 40")
        other.push("origin", "theirs")
        holder["ref"] = "theirs"
    pattern = {"shared": content.tobytes()}
    expected_kept = 0 if where == "unfetched-branch" else 1

    report = a.purge("images", [3], reason="user 3 asked")
    assert report.kept == expected_kept, str(report)
    pushed = a.push("origin", "main")
    assert pushed.purged == 0
    assert remote.holding(pattern)["shared"], "the remote lost content another sample holds"
    assert a.verify_remote("origin").ok
    c = remote.clone(tmp_path / "c")
    with c.checkout(commit=holder["ref"]) as co:
        assert _same(co[holder["column"]][holder["key"]], content)
        with pytest.raises(tc.PurgedDataError):
            co["images"][3]
    assert c.verify(full=True).ok

    with a.checkout(commit=src.commits[0]) as co:
        digest = co["images"].digest(3)
    a.purge_content([digest], reason="the content itself")
    pushed = a.push("origin", "main")
    assert pushed.purged == 1
    assert remote.holding(pattern) == {"shared": []}
    report_remote = a.verify_remote("origin")
    assert report_remote.ok and report_remote.purged >= 1
    d = remote.clone(tmp_path / "d")
    with d.checkout(commit=holder["ref"]) as co, pytest.raises(tc.PurgedDataError):
        co[holder["column"]][holder["key"]]
    assert _local_holding(tmp_path / "d", pattern) == {"shared": []}


# -- 5. purge_content propagates; allow_purged re-adds travel too ---------------------


def test_purge_content_propagates(remote: Remote, tmp_path: Path) -> None:
    src = _source(tmp_path / "a", columns=["images", "feats"])
    a = src.repo
    remote.add_to(a)
    a.push("origin", "main")
    b = remote.clone(tmp_path / "b")
    with a.checkout(commit=src.commits[0]) as co:
        digests = [co["images"].digest(8), co["feats"].digest(9)]
    gone = src.patterns({("images", 8), ("feats", 9)})
    report = a.purge_content(digests, reason="DMCA notice")
    assert report.tombstones == 2
    assert a.push("origin").purged == 2
    assert remote.holding(gone) == {k: [] for k in gone}
    b.fetch("origin")
    stones = b.tombstones()
    assert sorted((t.kind, t.digest) for t in stones) == sorted(("content", d) for d in digests)
    assert _local_holding(tmp_path / "b", gone) == {k: [] for k in gone}
    _check_reads(b, src, {("images", 8), ("feats", 9)}, src.commits)
    # b refuses to store the content again without allow_purged.
    with b.checkout(write=True) as co, pytest.raises(tc.PurgedDataError):
        co["images"][50] = src.value("images", 8)


def test_content_readded_with_allow_purged_reaches_the_remote_and_clones(
    remote: Remote, tmp_path: Path
) -> None:
    """A purges a content and pushes (the remote drops it), then stores it again with
    allow_purged=True and pushes: the remote must hold it again, and B reads it after
    fetch."""
    src = _source(tmp_path / "a", columns=["images"])
    a = src.repo
    remote.add_to(a)
    a.push("origin", "main")
    b = remote.clone(tmp_path / "b")
    content = src.value("images", 8)
    with a.checkout() as co:
        digest = co["images"].digest(8)
    a.purge_content([digest], reason="DMCA notice")
    a.push("origin")
    b.fetch("origin")
    assert remote.holding({"x": content.tobytes()}) == {"x": []}

    with a.checkout(write=True) as co:
        with pytest.raises(tc.PurgedDataError):
            co["images"].update([60], content[None])
        co["images"].update([60], content[None], allow_purged=True)
        head = co.commit("the notice was withdrawn")
    assert [t.lifted is not None for t in a.tombstones()] == [True]
    pushed = a.push("origin")
    assert pushed.commit == head
    assert remote.holding({"x": content.tobytes()})["x"], (
        "the re-added content was not uploaded: the remote's history refers to it "
        f"but no data pack holds it ({pushed})"
    )
    assert a.verify_remote("origin").ok

    b.fetch("origin")
    b.merge("origin/main", into="main")
    assert [t.lifted is not None for t in b.tombstones()] == [True]
    with b.checkout() as co:
        assert _same(co["images"][60], content)
        assert _same(co["images"][8], content)  # the content tombstone is lifted
    c = remote.clone(tmp_path / "c")
    with c.checkout() as co:
        assert _same(co["images"][60], content)
    assert c.verify(full=True).ok


def test_a_clone_brings_content_whose_purge_was_lifted_before_the_push(
    file_remote: Remote, tmp_path: Path
) -> None:
    """The remote holds the content all along (purged and re-added before any push); a
    fresh clone applies the purge record and the lifting record: it must still bring
    the content, since no tombstone forbids it any more."""
    src = _source(tmp_path / "a", columns=["images"])
    a = src.repo
    content = src.value("images", 8)
    with a.checkout() as co:
        digest = co["images"].digest(8)
    a.purge_content([digest], reason="DMCA notice")
    with a.checkout(write=True) as co:
        co["images"].update([60], content[None], allow_purged=True)
        co.commit("the notice was withdrawn")
    file_remote.add_to(a)
    a.push("origin")
    assert file_remote.holding({"x": content.tobytes()})["x"]
    assert a.verify_remote("origin").ok

    c = file_remote.clone(tmp_path / "c")
    assert [t.lifted is not None for t in c.tombstones()] == [True]
    with c.checkout() as co:
        assert _same(co["images"][60], content)
    assert c.verify(full=True).ok


# -- 6. streaming from the remote --------------------------------------------------


def _streamed(sample: tuple[Any, ...]) -> tuple[Any, ...]:
    import torch

    out: list[tuple[Any, ...]] = []
    for value in sample:
        if isinstance(value, torch.Tensor):
            array = value.numpy()
            out.append(("t", array.dtype.str, array.shape, array.tobytes()))
        else:
            out.append((type(value).__name__, value))
    return tuple(out)


def test_streaming_reads_the_remotes_purges(remote: Remote, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from tensorcask.loaders.sources import warm_cache
    from tensorcask.loaders.torch import repo_dataset, repo_iterable_dataset

    src = _source(tmp_path / "a", columns=["images", "names"])
    a = src.repo
    remote.add_to(a)
    a.push("origin", "main")
    columns = ["images", "names"]
    options = remote.options or None
    cache = tmp_path / "cache"
    warmed = warm_cache(remote.url, columns, cache_dir=cache, storage_options=options)
    assert warmed is not None
    before = repo_dataset(remote.url, columns, storage_options=options, cache_dir=cache)
    every = [_streamed(before[i]) for i in range(len(before))]
    assert len(every) == N + 1
    purged = {("images", 3), ("names", 5), ("images", 1)}
    gone = src.patterns(purged)
    kept = src.patterns(src.all_pairs() - purged)
    assert all(_local_holding(cache, {k: v for k, v in gone.items() if k[0] == "images"}).values())

    a.purge("images", [3, 1], reason="erase")
    a.purge("names", [5], reason="erase")
    assert a.push("origin").purged == 4
    keys = list(range(N + 1))
    others = [k for k in keys if k not in (1, 3, 5)]
    local = repo_dataset(a.path, columns, keys=others)
    expected = [_streamed(local[i]) for i in range(len(local))]

    for cached in (None, cache):
        ds = repo_dataset(remote.url, columns, storage_options=options, cache_dir=cached)
        assert len(ds) == N + 1
        for key, column in ((3, "images"), (5, "names"), (1, "images")):
            with pytest.raises(tc.PurgedDataError) as info:
                ds[keys.index(key)]
            assert (info.value.column, info.value.key) == (column, key)
            assert f"{column!r}" in str(info.value) and f"key {key!r}" in str(info.value)
        with pytest.raises(tc.PurgedDataError):
            ds.__getitems__([0, 2, 3])
        assert _streamed(ds[keys.index(4)]) == expected[others.index(4)]
        skipping = repo_dataset(
            remote.url, columns, storage_options=options, cache_dir=cached, skip_purged=True
        )
        assert len(skipping) == len(others)
        assert [skipping.key(i) for i in range(len(skipping))] == others
        assert [_streamed(skipping[i]) for i in range(len(skipping))] == expected
        assert [_streamed(s) for s in skipping.__getitems__(list(range(len(others))))] == expected

        it = repo_iterable_dataset(remote.url, columns, storage_options=options, cache_dir=cached)
        with pytest.raises(tc.PurgedDataError) as info:
            list(it)
        assert (info.value.column, info.value.key) == ("images", 1)  # the first in order
        it = repo_iterable_dataset(
            remote.url, columns, storage_options=options, cache_dir=cached, skip_purged=True
        )
        assert [_streamed(s) for s in it] == expected
    # The cache folder held pieces of the packs the purge rewrote: opening dropped them.
    held = _local_holding(cache, {**gone, **kept})
    assert {k: held[k] for k in gone} == {k: [] for k in gone}
    # A dataset built before the purge still reads the other samples (from the new packs).
    assert _streamed(before[keys.index(4)]) == every[4]


def test_tf_streaming_reads_the_remotes_purges(file_remote: Remote, tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    from tensorcask.loaders.tensorflow import repo_dataset as tf_repo_dataset

    src = _source(tmp_path / "a", columns=["images", "names"])
    a = src.repo
    file_remote.add_to(a)
    a.push("origin", "main")
    a.purge("images", [3], reason="erase")
    a.purge("names", [5], reason="erase")
    a.push("origin")
    columns = ["images", "names"]
    others = [k for k in range(N + 1) if k not in (3, 5)]

    def raw(ds: Any) -> list[tuple[Any, ...]]:
        return [tuple(bytes(t.numpy()) for t in sample) for sample in ds]

    expected = raw(tf_repo_dataset(a.path, columns, keys=others))
    assert len(expected) == len(others)
    for cache in (None, tmp_path / "cache"):
        ds = tf_repo_dataset(file_remote.url, columns, cache_dir=cache)
        with pytest.raises((tf.errors.OpError, tc.PurgedDataError)) as info:
            raw(ds)
        assert "PurgedDataError" in str(info.value) or isinstance(info.value, tc.PurgedDataError), (
            str(info.value)
        )
        assert "'images'" in str(info.value) and "key 3" in str(info.value)
        skipping = tf_repo_dataset(file_remote.url, columns, cache_dir=cache, skip_purged=True)
        assert raw(skipping) == expected


# -- 7. many packs, consolidated indexes: every other sample still reads --------------


def test_purging_from_many_packs_keeps_every_other_sample(remote: Remote, tmp_path: Path) -> None:
    values = Values(99)
    a = tc.init(tmp_path / "a", **IDENTITY)
    remote.add_to(a)
    held: dict[int, np.ndarray] = {}
    pushes = [30, 30, 60, 20, 20, 1]  # the last push: one sample, a pack of its own
    key = 0
    with a.checkout(write=True) as co:
        _create_columns(co, ["images"])
        co.commit("empty")
    for count in pushes:
        batch = {key + i: values.image() for i in range(count)}
        key += count
        held.update(batch)
        with a.checkout(write=True) as co:
            _write(co, {"images": batch})
            co.commit(f"{count} samples")
        a.push("origin", "main")
    names = sorted(remote.objects())
    assert any(n.startswith("data/") and n.endswith(".midx") for n in names), names
    assert sum(n.startswith("data/") and n.endswith(".pack") for n in names) == len(pushes)

    # Samples of pushes 1, 3, 4, 5 and the last (whose pack held only that sample).
    doomed = [0, 29, 61, 100, 125, 150, key - 1]
    a.purge("images", doomed, reason="several packs")
    gone = {k: held[k].tobytes() for k in doomed}
    kept = {k: v.tobytes() for k, v in held.items() if k not in doomed}
    pushed = a.push("origin")
    assert pushed.purged == len(doomed)
    objects = remote.objects()
    assert _holding(objects, gone) == {k: [] for k in gone}
    assert all(_holding(objects, kept).values())
    assert a.verify_remote("origin").ok

    c = remote.clone(tmp_path / "c")
    assert c.verify(full=True).ok
    with c.checkout() as co:
        col = co["images"]
        for k in sorted(kept):
            assert _same(col[k], held[k]), k
        rest = sorted(kept)
        assert _same(col.get_many(rest), np.stack([held[k] for k in rest]))

    # Later pushes consolidate the rewritten packs' indexes with the rest: all still there.
    for _ in range(3):
        batch = {key + i: values.image() for i in range(25)}
        key += 25
        held.update(batch)
        kept.update({k: v.tobytes() for k, v in batch.items()})
        with a.checkout(write=True) as co:
            _write(co, {"images": batch})
            co.commit("more")
        a.push("origin")
    assert a.verify_remote("origin").ok
    objects = remote.objects()
    assert _holding(objects, gone) == {k: [] for k in gone}
    assert all(_holding(objects, kept).values())
    d = remote.clone(tmp_path / "d")
    assert d.verify(full=True).ok
    with d.checkout() as co:
        rest = sorted(kept)
        assert _same(co["images"].get_many(rest), np.stack([held[k] for k in rest]))
    # Last, the purged samples: PurgedDataError in both clones (they never held them).
    for repo in (c, d):
        with repo.checkout() as co:
            for k in doomed:
                with pytest.raises(tc.PurgedDataError) as info:
                    co["images"][k]
                assert (info.value.column, info.value.key) == ("images", k)


# -- more: content back under a new key, verify_remote, several purgers, partial clones --


def test_content_of_a_purged_key_stored_under_a_new_key_reaches_the_remote(
    remote: Remote, tmp_path: Path
) -> None:
    """A key purge does not tombstone the content: after the remote dropped it, the same
    content under a new key must be uploaded again, and read from a clone."""
    src = _source(tmp_path / "a", columns=["images"])
    a = src.repo
    remote.add_to(a)
    a.push("origin", "main")
    content = src.value("images", 4)
    a.purge("images", [4], reason="user 4 asked")
    assert a.push("origin").purged == 1
    with a.checkout(write=True) as co:
        co["images"][70] = content  # someone else's sample with the same bytes
        co.commit("user 70")
    pushed = a.push("origin")
    assert remote.holding({"x": content.tobytes()})["x"], (
        f"key 70's content was not uploaded ({pushed}): the remote's history reached it "
        "through the purged key 4"
    )
    assert a.verify_remote("origin").ok
    c = remote.clone(tmp_path / "c")
    with c.checkout() as co:
        assert _same(co["images"][70], content)
        with pytest.raises(tc.PurgedDataError):
            co["images"][4]


def test_verify_remote_reports_missing_content_that_a_sample_not_purged_needs(
    file_remote: Remote, tmp_path: Path
) -> None:
    """Key 3 is purged, key 40 holds the same content and is not purged: when the remote
    loses that content (here its data files are deleted), verify_remote must report it
    missing, not count it as purged on purpose."""
    src = _source(tmp_path / "a", columns=["images"])
    a = src.repo
    with a.checkout(write=True) as co:
        co["images"][40] = src.value("images", 3)
        co.commit("a copy of 3 at 40")
    report = a.purge("images", [3], reason="user 3 asked")
    assert report.kept == 1
    file_remote.add_to(a)
    a.push("origin")
    with a.checkout() as co:
        digest = co["images"].digest(40)
    root = Path(urlparse(file_remote.url).path)
    for p in (root / "data").iterdir():
        p.unlink()
    checked = a.verify_remote("origin", raise_on_error=False)
    assert not checked.ok
    assert checked.purged == 0, str(checked)  # nothing was removed on purpose
    assert any(digest[:16] in problem for problem in checked.problems), str(checked)


def test_purges_from_two_clones_both_travel(file_remote: Remote, tmp_path: Path) -> None:
    src = _source(tmp_path / "a", columns=["images"])
    a = src.repo
    file_remote.add_to(a)
    a.push("origin", "main")
    b = file_remote.clone(tmp_path / "b")
    gone = src.patterns({("images", 2), ("images", 9)})
    a.purge("images", [2], reason="from a")
    b.purge("images", [9], reason="from b")
    assert a.push("origin").purged == 1
    assert b.push("origin").purged == 1  # b applies a's record, sends its own
    assert file_remote.holding(gone) == {k: [] for k in gone}
    a.fetch("origin")
    for repo, root in ((a, tmp_path / "a"), (b, tmp_path / "b")):
        assert sorted(t.reason for t in repo.tombstones()) == ["from a", "from b"]
        assert _local_holding(root, gone) == {k: [] for k in gone}
        _check_reads(repo, src, {("images", 2), ("images", 9)}, src.commits)
    objects = file_remote.objects()
    assert len([n for n in objects if n.startswith("tombstones/")]) == 2
    assert a.verify_remote("origin").ok


def test_a_partial_clone_can_purge_and_push(remote: Remote, tmp_path: Path) -> None:
    """A partial clone never held the bytes: its purge still removes them from the remote."""
    src = _source(tmp_path / "a", columns=["images"])
    a = src.repo
    remote.add_to(a)
    a.push("origin", "main")
    lazy = remote.clone(tmp_path / "lazy", partial=True)
    gone = src.patterns({("images", 6)})
    report = lazy.purge("images", [6], reason="from a partial clone")
    assert report.tombstones == 1
    assert lazy.push("origin").purged == 1
    assert remote.holding(gone) == {k: [] for k in gone}
    assert a.verify_remote("origin").ok
    a.fetch("origin")
    assert _local_holding(tmp_path / "a", gone) == {k: [] for k in gone}
    with a.checkout() as co, pytest.raises(tc.PurgedDataError):
        co["images"][6]


def test_a_damaged_purge_record_is_refused_naming_it(file_remote: Remote, tmp_path: Path) -> None:
    src = _source(tmp_path / "a", columns=["images"])
    a = src.repo
    file_remote.add_to(a)
    a.push("origin", "main")
    b = file_remote.clone(tmp_path / "b")
    a.purge("images", [6], reason="erase")
    a.push("origin")
    root = Path(urlparse(file_remote.url).path)
    (record,) = (root / "tombstones").iterdir()
    doc = json.loads(record.read_bytes())
    doc["entries"] = []  # a record that would purge nothing: no longer its name's hash
    record.write_text(json.dumps(doc))
    with pytest.raises(tc.CorruptionError, match="tombstones") as info:
        b.fetch("origin")
    assert record.name in str(info.value)
    assert b.tombstones() == []
    with pytest.raises(tc.CorruptionError, match=record.name):
        file_remote.clone(tmp_path / "c")
    assert not (tmp_path / "c").exists()
