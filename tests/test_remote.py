"""Remotes through the public API: push, clone, fetch, fetch_data, partial clones, tags,
non-fast-forward pushes and the errors a user meets, against a ``file://`` remote and a
real S3-protocol server (moto through s3fs)."""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest

import tensorcask as tc

IDENTITY = {"user_name": "Ada", "user_email": "ada@example.org"}
COLUMNS = ["blobs", "codes", "feats", "images", "labels", "names", "seqs"]
N = 40  # samples per column in the first commit


# -- the remote under test: a file:// folder or an S3 bucket -------------------------


@dataclass
class RemoteURL:
    """A remote URL and the storage options that reach it."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)

    def add_to(self, repo: tc.Repository, name: str = "origin") -> None:
        repo.add_remote(name, self.url, **self.options)

    def clone(self, path: Path, partial: bool = False) -> tc.Repository:
        return tc.clone(
            self.url, path, partial=partial, storage_options=self.options or None, **IDENTITY
        )


@pytest.fixture(params=["file", "s3"])
def remote_url(request: pytest.FixtureRequest, tmp_path: Path) -> RemoteURL:
    if request.param == "file":
        return RemoteURL((tmp_path / "remote").as_uri())
    server = request.getfixturevalue("s3_server")
    return RemoteURL(request.getfixturevalue("s3_url"), server.storage_options)


# -- repositories ------------------------------------------------------------------


def _image(k: int) -> np.ndarray:
    return ((np.arange(64) * 3 + 11 * k) % 256).astype(np.uint8).reshape(8, 8)


def _seq(k: int) -> np.ndarray:
    return np.arange(k % 7 + 1, dtype=np.int32) + k


def _first_commit(co: tc.WriteCheckout, keys: range) -> None:
    """Write the seven columns (one of each kind and backend) at ``keys``."""
    ks = list(keys)
    co.add_ndarray_column("images", shape=(8, 8), dtype="uint8").update(
        ks, np.stack([_image(k) for k in ks])
    )
    co.add_ndarray_column("labels", shape=(), dtype="int64").update(ks, np.asarray(ks) + 1000)
    co.add_str_column("names").update({k: f"name-{k}-é" for k in ks})
    co.add_bytes_column("blobs").update({k: bytes([k % 256, 0, 255]) * (k % 5 + 1) for k in ks})
    co.add_ndarray_column("seqs", shape=(None,), dtype="int32", max_shape=(8,)).update(
        {k: _seq(k) for k in ks}
    )
    co.add_ndarray_column("feats", shape=(3,), dtype="float32", backend="hdf5").update(
        ks, np.asarray([[k, k / 3, -k] for k in ks], dtype=np.float32)
    )
    co.add_ndarray_column("codes", shape=(2,), dtype="uint16", backend="lmdb").update(
        ks, np.asarray([[k, 60000 - k] for k in ks], dtype=np.uint16)
    )


def _new_repo(path: Path) -> tc.Repository:
    """One commit ("first") of N samples in each of the seven columns; branch main."""
    repo = tc.init(path, **IDENTITY)
    with repo.checkout(write=True) as co:
        _first_commit(co, range(N))
        co.commit("first")
    return repo


def _commit_images(repo: tc.Repository, values: dict[int, int], branch: str, msg: str) -> str:
    """Commit ``images[k] = _image(v)`` for each item on ``branch``; the new head."""
    with repo.checkout(write=True, branch=branch) as co:
        for k, v in values.items():
            co["images"][k] = _image(v)
        return co.commit(msg)


def _raw(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tobytes())
    return (type(value).__name__, value)


def _snapshot(repo: tc.Repository, ref: str) -> dict[str, dict[Any, Any]]:
    """Column -> key -> (dtype, shape, bytes) or (type, value) of every sample at ``ref``."""
    with repo.checkout(commit=ref) as co:
        return {name: {k: _raw(col[k]) for k in col} for name, col in co.columns.items()}


def _digests(repo: tc.Repository, ref: str) -> set[str]:
    """The content digests of every sample at ``ref`` (one per distinct sample)."""
    with repo.checkout(commit=ref) as co:
        return {col.digest(k) for col in co.columns.values() for k in col}


def _history(repo: tc.Repository, ref: str) -> list[tuple[Any, ...]]:
    return [(c.id, c.parents, c.message, c.author, c.email, c.time) for c in repo.log(ref)]


# -- 1. push, then clone: a bit-exact copy -------------------------------------------


def test_push_then_clone_is_bit_exact(remote_url: RemoteURL, tmp_path: Path) -> None:
    src = _new_repo(tmp_path / "src")
    first = src.resolve("main")
    src.create_tag("v1", "main")
    second = _commit_images(src, {0: 500, N: 501}, "main", "second")
    src.create_branch("dev", first)
    with src.checkout(write=True, branch="dev") as co:
        co["names"]["extra"] = "only on dev"
        del co["labels"][3]
        dev_head = co.commit("dev work")
    src.create_tag("dev-1", "dev")
    with src.checkout(write=True, branch="main"):
        pass  # back to main as the current branch
    remote_url.add_to(src)

    pushed = src.push("origin", "main")
    assert (pushed.branch, pushed.commit, pushed.commits) == ("main", second, 2)
    assert pushed.tags == ["v1"]  # dev-1 is not reached from main
    assert pushed.samples == len(_digests(src, first) | _digests(src, second))
    assert pushed.objects >= pushed.commits and pushed.bytes > 0
    pushed_dev = src.push("origin", "dev")
    assert (pushed_dev.branch, pushed_dev.commit, pushed_dev.commits) == ("dev", dev_head, 1)
    assert pushed_dev.tags == ["dev-1"]
    assert pushed_dev.samples == 1  # only "only on dev" is new; the deletion uploads nothing
    assert src.resolve("origin/main") == second and src.resolve("origin/dev") == dev_head

    clone = remote_url.clone(tmp_path / "clone")
    try:
        assert clone.current_branch == "main"
        assert clone.branches == {"main": second, "dev": dev_head}
        assert clone.branches == src.branches
        assert clone.tags == {"v1": first, "dev-1": dev_head} == src.tags
        assert clone.remotes == {"origin": remote_url.url}
        assert clone.resolve("origin/main") == second
        assert clone.resolve("origin/dev") == dev_head
        for ref in ("main", "dev"):
            assert _history(clone, ref) == _history(src, ref)
        assert [c.message for c in clone.log("dev")] == ["dev work", "first"]
        assert clone.log("main")[0].parents == (first,)
        for commit in (first, second, dev_head):
            assert _snapshot(clone, commit) == _snapshot(src, commit)
        snap = _snapshot(clone, "main")
        assert sorted(snap) == COLUMNS
        assert len(snap["images"]) == N + 1 and len(snap["labels"]) == N
        with clone.checkout() as co:
            assert np.array_equal(co["images"][N], _image(501))
            assert np.array_equal(co["images"].get_many([1, 2]), np.stack([_image(1), _image(2)]))
            assert co["seqs"][6].shape == (7,) and co["seqs"][6].dtype == np.int32
            assert co["feats"][3].dtype == np.float32
            assert co["names"][2] == "name-2-é" and co["blobs"][2] == bytes([2, 0, 255]) * 3
        with clone.checkout(commit="dev") as co:
            assert co["names"]["extra"] == "only on dev" and 3 not in co["labels"]
        report = clone.verify(full=True)
        assert report.ok and report.full and report.not_local == 0
        assert report.commits == 3
        remote_report = src.verify_remote("origin")
        assert remote_report.ok and remote_report.refs == 4  # main, dev, v1, dev-1
        assert remote_report.samples == pushed.samples + pushed_dev.samples
    finally:
        clone.close()
        src.close()


def test_clone_without_main_checks_out_the_first_branch(
    remote_url: RemoteURL, tmp_path: Path
) -> None:
    with tc.init(tmp_path / "src", **IDENTITY) as src:
        with src.checkout(write=True, branch="zeta") as co:
            co.add_str_column("names")["a"] = "z"
            head = co.commit("z")
        src.create_branch("feature/x", "zeta")
        with src.checkout(write=True, branch="feature/x") as co:
            co["names"]["b"] = "x"
            feature = co.commit("x")
        remote_url.add_to(src)
        src.push("origin", "zeta")
        assert src.push("origin", "feature/x").samples == 1
    with remote_url.clone(tmp_path / "clone") as clone:
        assert clone.current_branch == "feature/x"
        assert clone.branches == {"feature/x": feature, "zeta": head}
        assert clone.resolve("origin/feature/x") == feature
        with clone.checkout() as co:
            assert dict(co["names"].items()) == {"a": "z", "b": "x"}


# -- 2. incremental push -----------------------------------------------------------


def test_incremental_push_uploads_only_new_samples(remote_url: RemoteURL, tmp_path: Path) -> None:
    with _new_repo(tmp_path / "src") as src:
        remote_url.add_to(src)
        first = src.push("origin")
        initial = len(_digests(src, "main"))
        assert first.samples == initial == 7 * N  # every sample of every column is distinct
        assert first.commits == 1

        old = src.resolve("main")
        with src.checkout(write=True) as co:
            co["images"].update([N, N + 1, N + 2], np.stack([_image(900 + i) for i in range(3)]))
            co["images"][0] = _image(1)  # content the remote already has (images[1])
            co["labels"][N] = np.int64(1005)  # content the remote already has (labels[5])
            co["names"][N] = "brand new"
            co["names"][N + 1] = "brand new"  # the same new content twice: one sample
            head = co.commit("more")
        new = _digests(src, "main") - _digests(src, old)
        assert len(new) == 4

        second = src.push("origin")
        assert (second.commit, second.commits, second.samples) == (head, 1, 4)
        assert second.tags == []
        assert 0 < second.bytes < first.bytes

        again = src.push("origin")
        assert (again.commit, again.commits, again.objects, again.samples, again.bytes) == (
            head,
            0,
            0,
            0,
            0,
        )
        # a new branch at a pushed commit uploads no samples and no history either
        src.create_branch("dev", old)
        dev = src.push("origin", "dev")
        assert (dev.commit, dev.commits, dev.objects, dev.samples) == (old, 0, 0, 0)

        report = src.verify_remote("origin")
        assert report.ok and report.samples == initial + 4  # nothing was uploaded twice
        assert report.refs == 2


def test_many_pushes_stay_readable(remote_url: RemoteURL, tmp_path: Path) -> None:
    """Twelve small pushes (the remote merges its indexes as they come), read back by a
    partial clone along the way and by a full clone at the end."""
    with _new_repo(tmp_path / "src") as src:
        remote_url.add_to(src)
        src.push("origin")
        fs, root = fsspec.core.url_to_fs(remote_url.url, **remote_url.options)
        with remote_url.clone(tmp_path / "part", partial=True) as part:
            for i in range(12):
                _commit_images(src, {1000 + i: 2000 + i, i: 3000 + i}, "main", f"push {i}")
                pushed = src.push("origin")
                assert (pushed.commits, pushed.samples) == (1, 2)
                units = [p for p in fs.ls(f"{root}/data", detail=False) if not p.endswith(".pack")]
                assert 1 <= len(units) <= 6, units  # indexes a reader loads stay few
                if i % 4 == 3:
                    assert part.fetch("origin").commits == 4
                    got = part.fetch_data("origin", "origin/main", ["images"], [1000 + i, i])
                    assert got.samples == 2
                    with part.checkout(commit="origin/main") as co:
                        assert np.array_equal(co["images"][1000 + i], _image(2000 + i))
                        assert np.array_equal(co["images"][i], _image(3000 + i))
            assert part.merge("origin/main", "main") == src.resolve("main")
            part.fetch_data("origin", "main")
            assert _snapshot(part, "main") == _snapshot(src, "main")
        report = src.verify_remote("origin")
        assert report.ok and report.samples == 7 * N + 24
        with remote_url.clone(tmp_path / "clone") as clone:
            assert _history(clone, "main") == _history(src, "main")
            assert len(clone.log()) == 13
            assert _snapshot(clone, "main") == _snapshot(src, "main")
            middle = clone.log()[6].id
            assert _snapshot(clone, middle) == _snapshot(src, middle)
            assert clone.verify(full=True).ok


# -- 3. fetch -----------------------------------------------------------------------


def test_fetch_brings_new_commits_without_moving_local_branches(
    remote_url: RemoteURL, tmp_path: Path
) -> None:
    with _new_repo(tmp_path / "src") as src, tc.init(tmp_path / "other", **IDENTITY) as other:
        remote_url.add_to(src)
        src.push("origin")
        base = src.resolve("main")
        clone = remote_url.clone(tmp_path / "clone")
        try:
            assert clone.branches == {"main": base}
            head = _commit_images(src, {0: 700, 1: 701, N + 5: 702}, "main", "update")
            src.push("origin")

            fetched = clone.fetch("origin")
            assert fetched.heads == {"main": head}
            assert (fetched.commits, fetched.samples) == (1, 3)
            assert fetched.objects >= 1 and fetched.bytes > 0 and fetched.tags == []
            assert clone.resolve("origin/main") == head
            assert clone.branches == {"main": base}  # local main stays
            assert clone.log("main")[0].id == base
            assert _snapshot(clone, "origin/main") == _snapshot(src, "main")

            assert clone.merge("origin/main", "main") == head  # fast-forward: no merge commit
            assert clone.branches == {"main": head}
            assert _history(clone, "main") == _history(src, "main")
            with clone.checkout() as co:
                assert np.array_equal(co["images"][N + 5], _image(702))
            assert clone.verify(full=True).ok

            nothing = clone.fetch("origin")
            assert nothing.heads == {"main": head}
            assert (nothing.commits, nothing.objects, nothing.samples) == (0, 0, 0)

            # a repository with no history of its own fetches one branch by name
            remote_url.add_to(other)
            src.create_branch("dev")
            src.push("origin", "dev")
            only_dev = other.fetch("origin", "dev")
            assert only_dev.heads == {"dev": head}
            assert only_dev.commits == 2
            assert only_dev.samples == len(_digests(src, base) | _digests(src, head))
            assert other.resolve("origin/dev") == head and other.branches == {}
            with pytest.raises(tc.RefNotFoundError, match="nope"):
                other.fetch("origin", "nope")
        finally:
            clone.close()


# -- 4. tags travel both ways -------------------------------------------------------


def test_tags_travel_both_ways(remote_url: RemoteURL, tmp_path: Path) -> None:
    with _new_repo(tmp_path / "src") as src:
        first = src.resolve("main")
        src.create_tag("v1", "main")
        src.create_branch("side")
        side = _commit_images(src, {0: 3}, "side", "side")
        src.create_tag("side-tag", "side")  # not reached by main: stays local
        _commit_images(src, {0: 4}, "main", "main 2")
        src.create_tag("v2", "main")
        remote_url.add_to(src)
        assert src.push("origin", "main").tags == ["v1", "v2"]
        assert src.push("origin", "main").tags == []  # already there
        src.create_tag("late", first)  # a tag made after its commit was pushed
        late = src.push("origin", "main")
        assert (late.tags, late.commits, late.samples) == (["late"], 0, 0)

        clone = remote_url.clone(tmp_path / "clone")
        try:
            assert clone.tags == {"v1": first, "v2": src.resolve("v2"), "late": first}
            assert clone.resolve("v1") == first
            clone.create_tag("from-clone", "v1")
            head = _commit_images(clone, {1: 8}, "main", "clone work")
            clone.create_tag("clone-head", "main")
            assert clone.push("origin").tags == ["clone-head", "from-clone"]

            fetched = src.fetch("origin")
            assert fetched.tags == ["clone-head", "from-clone"]
            assert src.tags == {
                "v1": first,
                "v2": src.resolve("v2"),
                "late": first,
                "side-tag": side,
                "clone-head": head,
                "from-clone": first,
            }
            assert src.fetch("origin").tags == []  # tags are created once

            assert src.push("origin", "side").tags == ["side-tag"]
            clone.fetch("origin")
            assert clone.tags["side-tag"] == side
            assert clone.resolve("origin/side") == side
        finally:
            clone.close()


# -- 5. partial clones --------------------------------------------------------------


def test_partial_clone_reads_only_fetched_data(remote_url: RemoteURL, tmp_path: Path) -> None:
    with _new_repo(tmp_path / "src") as src:
        head = _commit_images(src, {N: 77}, "main", "second")
        remote_url.add_to(src)
        src.push("origin")
        expected = _snapshot(src, "main")
        total = src.verify().samples

    part = remote_url.clone(tmp_path / "part", partial=True)
    try:
        assert part.branches == {"main": head}
        assert [c.message for c in part.log()] == ["second", "first"]
        with part.checkout() as co:
            assert sorted(co.columns) == COLUMNS
            assert len(co["images"]) == N + 1 and 5 in co["labels"]
            with pytest.raises(tc.DataNotLocalError, match="'origin'"):
                co["images"][3]
            with pytest.raises(tc.DataNotLocalError, match="'origin'"):
                co["names"][0]
            with pytest.raises(tc.DataNotLocalError, match="'origin'"):
                co["images"].get_many([3, 4])
            with pytest.raises(tc.DataNotLocalError, match="'origin'"):
                co["seqs"].get_many([0])
        report = part.verify()
        assert report.ok and report.not_local == total > 7 * N

        got = part.fetch_data("origin", "main", columns=["images"], keys=[3, 4])
        assert (got.samples, got.commits) == (2, 0)
        with part.checkout() as co:
            assert np.array_equal(co["images"][3], _image(3))
            assert np.array_equal(co["images"].get_many([4, 3]), np.stack([_image(4), _image(3)]))
            with pytest.raises(tc.DataNotLocalError, match="'origin'"):
                co["images"][5]
            with pytest.raises(tc.DataNotLocalError, match="'origin'"):
                co["labels"][3]
            with pytest.raises(tc.DataNotLocalError, match="'origin'"):
                co["images"].get_many([3, 5])
        assert part.verify().not_local == total - 2
        # keys a column lacks are skipped; a column the commit lacks is a KeyError
        skipped = part.fetch_data("origin", "main", columns=["images"], keys=[3, "nope", 10**6])
        assert skipped.samples == 0
        with pytest.raises(KeyError, match="'nope'"):
            part.fetch_data("origin", "main", columns=["nope"])
        assert part.verify().not_local == total - 2

        got = part.fetch_data("origin", "main", columns=["names", "labels"])
        assert got.samples == 2 * N
        assert part.verify().not_local == total - 2 - 2 * N
        with part.checkout() as co:
            assert co["names"][N - 1] == f"name-{N - 1}-é" and co["labels"][7] == 1007
            with pytest.raises(tc.DataNotLocalError):
                co["blobs"][0]

        rest = part.fetch_data("origin", "main")
        assert rest.samples == total - 2 - 2 * N
        assert part.fetch_data("origin", "main").samples == 0
        assert _snapshot(part, "main") == expected
        report = part.verify(full=True)
        assert report.ok and report.not_local == 0 and report.samples == total
    finally:
        part.close()


def test_a_checkout_open_before_fetch_data_reads_what_it_brought(tmp_path: Path) -> None:
    with _new_repo(tmp_path / "src") as src:
        url = (tmp_path / "remote").as_uri()
        src.add_remote("origin", url)
        src.push("origin")
    with tc.clone(url, tmp_path / "part", partial=True, **IDENTITY) as part:
        co = part.checkout()
        images = co["images"]
        for _ in range(4096 // N + 1):  # enough keys read for the column to be resolved whole
            with pytest.raises(tc.DataNotLocalError):
                images.get_many(list(range(N)))
        with pytest.raises(tc.DataNotLocalError):
            images[3]
        part.fetch_data("origin", "main", columns=["images"])
        assert np.array_equal(images[3], _image(3))  # the same column object
        assert np.array_equal(
            images.get_many(list(range(N))), np.stack([_image(k) for k in range(N)])
        )
        co.close()


def test_partial_clone_torch_dataset(remote_url: RemoteURL, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from tensorcask.loaders.torch import repo_dataset

    with _new_repo(tmp_path / "src") as src:
        remote_url.add_to(src)
        src.push("origin")
    with remote_url.clone(tmp_path / "part", partial=True) as part:
        ds = repo_dataset(part, ["images", "labels"])
        assert len(ds) == N
        with pytest.raises(tc.DataNotLocalError, match="'origin'"):
            ds[0]
        with pytest.raises(tc.DataNotLocalError, match="'origin'"):
            next(iter(ds))
        loader = torch.utils.data.DataLoader(ds, batch_size=8)
        with pytest.raises(tc.DataNotLocalError, match="'origin'"):
            next(iter(loader))

        part.fetch_data("origin", "main", columns=["images", "labels"])
        ds = repo_dataset(part, ["images", "labels"])
        seen = []
        for images, labels in torch.utils.data.DataLoader(ds, batch_size=8):
            for image, label in zip(images, labels, strict=True):
                k = int(label) - 1000
                assert np.array_equal(image.numpy(), _image(k))
                seen.append(k)
        assert seen == list(range(N))
        with pytest.raises(tc.DataNotLocalError):
            repo_dataset(part, ["names"])[0]


def test_partial_clone_pushes_new_commits(remote_url: RemoteURL, tmp_path: Path) -> None:
    with _new_repo(tmp_path / "src") as src:
        remote_url.add_to(src)
        src.push("origin")
    with remote_url.clone(tmp_path / "part", partial=True) as part:
        head = _commit_images(part, {N: 999, 0: 998}, "main", "from partial")
        pushed = part.push("origin")
        assert (pushed.commit, pushed.commits, pushed.samples) == (head, 1, 2)
        assert part.verify_remote("origin").ok
        # a remote that has none of the data: the partial clone cannot supply it
        other = RemoteURL((tmp_path / "elsewhere").as_uri())
        other.add_to(part, "elsewhere")
        with pytest.raises(tc.DataNotLocalError, match="elsewhere"):
            part.push("elsewhere")
    with remote_url.clone(tmp_path / "full") as full:
        assert full.branches == {"main": head}
        with full.checkout() as co:
            assert np.array_equal(co["images"][N], _image(999))
            assert np.array_equal(co["images"][1], _image(1))


# -- 6. non-fast-forward pushes -----------------------------------------------------


def test_non_fast_forward_push_is_refused(remote_url: RemoteURL, tmp_path: Path) -> None:
    with _new_repo(tmp_path / "a") as a:
        remote_url.add_to(a)
        a.push("origin")
        with remote_url.clone(tmp_path / "b") as b:
            a_head = _commit_images(a, {0: 100}, "main", "a's change")
            a.push("origin")
            b_head = _commit_images(b, {1: 200}, "main", "b's change")

            with pytest.raises(tc.ConcurrentUpdateError, match="'main'"):
                b.push("origin")
            assert b.resolve("origin/main") != b_head
            with remote_url.clone(tmp_path / "check") as check:  # the remote is unchanged
                assert check.branches == {"main": a_head}
                assert _snapshot(check, "main") == _snapshot(a, "main")
            assert a.verify_remote("origin").ok

            assert b.fetch("origin").heads == {"main": a_head}
            merged = b.merge("origin/main", "main")
            assert b.log()[0].parents == (b_head, a_head)
            pushed = b.push("origin")
            assert (pushed.commit, pushed.commits) == (merged, 2)
            assert a.fetch("origin").heads == {"main": merged}
            assert a.merge("origin/main", "main") == merged  # a fast-forwards
            with a.checkout() as co:
                assert np.array_equal(co["images"][0], _image(100))
                assert np.array_equal(co["images"][1], _image(200))


def test_force_push_overwrites_the_remote_branch(remote_url: RemoteURL, tmp_path: Path) -> None:
    with _new_repo(tmp_path / "a") as a:
        remote_url.add_to(a)
        base = a.resolve("main")
        a.push("origin")
        with remote_url.clone(tmp_path / "b") as b:
            b_head = _commit_images(b, {1: 200}, "main", "b's change")
            b.push("origin")
            a_head = _commit_images(a, {0: 100}, "main", "a's change")
            with pytest.raises(tc.ConcurrentUpdateError, match="'main'"):
                a.push("origin")
            forced = a.push("origin", force=True)
            assert (forced.branch, forced.commit) == ("main", a_head)
            assert a.resolve("origin/main") == a_head
            with remote_url.clone(tmp_path / "check") as check:
                assert check.branches == {"main": a_head}
                assert [c.id for c in check.log()] == [a_head, base]
            assert a.verify_remote("origin").ok
            # b is now the one behind
            with pytest.raises(tc.ConcurrentUpdateError, match="'main'"):
                b.push("origin")
            assert b.fetch("origin").heads == {"main": a_head}
            assert b.branches == {"main": b_head}


def test_push_racing_another_push_is_refused(remote_url: RemoteURL, tmp_path: Path) -> None:
    """Another client moves the branch while a push uploads: the push must not win."""
    with _new_repo(tmp_path / "a") as a:
        remote_url.add_to(a)
        base = a.push("origin").commit
        with remote_url.clone(tmp_path / "b") as b:
            a_head = _commit_images(a, {0: 100}, "main", "a's change")
            b_head = _commit_images(b, {1: 200}, "main", "b's change")
            seen: list[str] = []

            def other_client_pushes_now(what: str, done: int, total: int) -> None:
                seen.append(what)
                if what == "objects":  # a's samples and history are up; its branch is not
                    assert b.push("origin").commit == b_head

            with pytest.raises(tc.ConcurrentUpdateError, match="'main' moved while pushing"):
                a.push("origin", progress=other_client_pushes_now)
            assert "objects" in seen
            assert a.resolve("origin/main") == base  # a never saw its push land
            assert a.fetch("origin").heads == {"main": b_head}
            assert a.verify_remote("origin").ok
            with remote_url.clone(tmp_path / "check") as check:
                assert [c.id for c in check.log()] == [b_head, base]
            assert a_head != b_head


def test_concurrent_pushes_exactly_one_wins(remote_url: RemoteURL, tmp_path: Path) -> None:
    """Clients that all start from the same remote head push at once: exactly one moves it."""
    with _new_repo(tmp_path / "src") as src:
        remote_url.add_to(src)
        base = src.push("origin").commit
    clients = [remote_url.clone(tmp_path / f"c{i}") for i in range(3)]
    try:
        heads = [
            _commit_images(c, {i: 300 + i}, "main", f"client {i}") for i, c in enumerate(clients)
        ]
        barrier = threading.Barrier(len(clients), timeout=60)
        outcomes: list[Any] = [None] * len(clients)

        def meet(what: str, done: int, total: int) -> None:
            if what == "objects":  # everyone is about to move the branch
                barrier.wait()

        def push(i: int) -> None:
            try:
                outcomes[i] = clients[i].push("origin", progress=meet)
            except BaseException as exc:  # recorded, checked below
                outcomes[i] = exc
                barrier.abort()

        threads = [threading.Thread(target=push, args=(i,)) for i in range(len(clients))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        winners = [i for i, o in enumerate(outcomes) if isinstance(o, tc.PushResult)]
        losers = [o for o in outcomes if not isinstance(o, tc.PushResult)]
        assert len(winners) == 1, outcomes
        assert all(isinstance(o, tc.ConcurrentUpdateError) for o in losers), outcomes
        winner = winners[0]
        with remote_url.clone(tmp_path / "check") as check:
            assert check.branches == {"main": heads[winner]}
            assert [c.id for c in check.log()] == [heads[winner], base]
            with check.checkout() as co:
                assert np.array_equal(co["images"][winner], _image(300 + winner))
        assert clients[winner].verify_remote("origin").ok
    finally:
        for c in clients:
            c.close()


def _damage_a_data_pack(remote_url: RemoteURL) -> None:
    """Flip the last byte of one sample pack on the remote (the storage, not the API)."""
    fs, root = fsspec.core.url_to_fs(remote_url.url, **remote_url.options)
    packs = sorted(p for p in fs.find(f"{root}/data") if p.endswith(".pack"))
    assert packs
    data = bytearray(fs.cat_file(packs[0]))
    data[-1] ^= 0xFF
    fs.pipe_file(packs[0], bytes(data))


def test_damaged_remote_is_detected(remote_url: RemoteURL, tmp_path: Path) -> None:
    with _new_repo(tmp_path / "src") as src:
        remote_url.add_to(src)
        src.push("origin")
        assert src.verify_remote("origin").ok
        _damage_a_data_pack(remote_url)
        with pytest.raises(tc.CorruptionError, match="fails its hash"):
            src.verify_remote("origin")
        report = src.verify_remote("origin", raise_on_error=False)
        assert not report.ok and len(report.problems) >= 1
    target = tmp_path / "clone"
    with pytest.raises(tc.CorruptionError, match="does not hash to its digest"):
        remote_url.clone(target)
    assert not target.exists()
    with remote_url.clone(tmp_path / "part", partial=True) as part:  # history is intact
        before = part.verify().not_local
        with pytest.raises(tc.CorruptionError):
            part.fetch_data("origin", "main")
        assert part.verify().not_local == before  # nothing damaged was stored


def test_many_small_packs_and_chunks(
    remote_url: RemoteURL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With tiny pack and batch sizes, samples spread over many packs still round-trip."""
    from tensorcask.remote import transfer

    monkeypatch.setattr(transfer, "PACK_BYTES", 500)
    monkeypatch.setattr(transfer, "READ_BATCH", 7)
    with _new_repo(tmp_path / "src") as src:
        remote_url.add_to(src)
        pushed = src.push("origin")
        assert pushed.samples == 7 * N
        report = src.verify_remote("origin")
        assert report.ok and report.samples == 7 * N and report.packs > 10
        expected = _snapshot(src, "main")
    with remote_url.clone(tmp_path / "clone") as clone:
        assert _snapshot(clone, "main") == expected
        assert clone.verify(full=True).ok
    with remote_url.clone(tmp_path / "part", partial=True) as part:
        keys = [0, 9, 17, 33, 39]
        assert part.fetch_data("origin", "main", ["seqs", "feats"], keys).samples == 10
        with part.checkout() as co:
            for k in keys:
                assert np.array_equal(co["seqs"][k], _seq(k))
            with pytest.raises(tc.DataNotLocalError):
                co["seqs"][1]
        assert part.fetch_data("origin", "main").samples == 7 * N - 10
        assert _snapshot(part, "main") == expected


def test_clone_never_touches_a_non_empty_target(remote_url: RemoteURL, tmp_path: Path) -> None:
    with _new_repo(tmp_path / "src") as src:
        remote_url.add_to(src)
        src.push("origin")
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(tc.CaskError):
        remote_url.clone(target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("case", ["new branch while behind", "force"])
def test_push_uploads_only_what_the_remote_lacks_when_behind(
    remote_url: RemoteURL, tmp_path: Path, case: str
) -> None:
    with _new_repo(tmp_path / "a") as a:
        remote_url.add_to(a)
        assert a.push("origin").samples == 7 * N
        with remote_url.clone(tmp_path / "b") as b:
            _commit_images(a, {0: 100}, "main", "a moves main")
            assert a.push("origin").samples == 1
            branch = "feature" if case == "new branch while behind" else "main"
            if branch != "main":
                b.create_branch(branch)
            _commit_images(b, {1: 200}, branch, "b's change")
            pushed = b.push("origin", branch, force=case == "force")
            assert pushed.samples == 1  # only images[1] = _image(200) is new to the remote


def test_a_remote_emptied_behind_our_back_gets_everything_again(tmp_path: Path) -> None:
    root = tmp_path / "remote"
    with _new_repo(tmp_path / "a") as a:
        a.add_remote("origin", root.as_uri())
        a.push("origin")  # remembers origin/main
        shutil.rmtree(root)  # someone empties the bucket; origin/main still says "pushed"
        _commit_images(a, {0: 100}, "main", "after the wipe")
        pushed = a.push("origin")
        assert pushed.samples == 7 * N + 1  # both commits again, not just the new image
        assert a.verify_remote("origin").ok
        with tc.clone(root.as_uri(), tmp_path / "b", **IDENTITY) as b:
            assert _snapshot(b, "main") == _snapshot(a, "main")


# -- 7. errors ----------------------------------------------------------------------


def test_unknown_remote_lists_known_ones(remote_url: RemoteURL, repo: tc.Repository) -> None:
    with pytest.raises(tc.RemoteError, match="none"):
        repo.fetch("origin")
    remote_url.add_to(repo)
    remote_url.add_to(repo, "backup")
    assert repo.remotes == {"backup": remote_url.url, "origin": remote_url.url}
    with repo.checkout(write=True) as co:
        co.add_str_column("names")["a"] = "b"
        co.commit("one")
    for call in (
        lambda: repo.push("upstream"),
        lambda: repo.fetch("upstream"),
        lambda: repo.fetch_data("upstream", "main"),
        lambda: repo.verify_remote("upstream"),
    ):
        with pytest.raises(tc.RemoteError, match="'upstream'") as info:
            call()
        assert "backup, origin" in str(info.value)


def test_adding_a_duplicate_remote_is_refused(remote_url: RemoteURL, repo: tc.Repository) -> None:
    remote_url.add_to(repo)
    with pytest.raises(tc.CaskError, match="'origin' already exists"):
        repo.add_remote("origin", "file:///somewhere/else")
    assert repo.remotes == {"origin": remote_url.url}
    with pytest.raises(ValueError, match="'/'"):
        repo.add_remote("a/b", remote_url.url)
    assert repo.remotes == {"origin": remote_url.url}


def test_clone_of_an_empty_remote_leaves_nothing(remote_url: RemoteURL, tmp_path: Path) -> None:
    target = tmp_path / "clone"
    with pytest.raises(tc.RemoteError, match="holds no tensorcask repository"):
        remote_url.clone(target)
    assert not target.exists()
    target.mkdir()
    with pytest.raises(tc.RemoteError):
        remote_url.clone(target, partial=True)
    assert list(target.iterdir()) == []

    with tc.init(tmp_path / "empty", **IDENTITY) as empty:
        remote_url.add_to(empty)
        with pytest.raises(tc.RemoteError, match="holds no tensorcask repository"):
            empty.fetch("origin")
        with pytest.raises(tc.RemoteError):
            empty.verify_remote("origin")


def test_clone_of_a_nonexistent_location_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "clone"
    with pytest.raises(tc.RemoteError):
        tc.clone((tmp_path / "no" / "such" / "folder").as_uri(), target, **IDENTITY)
    assert not target.exists()


def test_clone_of_a_nonexistent_bucket_leaves_nothing(s3_server: Any, tmp_path: Path) -> None:
    target = tmp_path / "clone"
    with pytest.raises(tc.RemoteError):
        tc.clone(
            "s3://no-such-bucket-here/repo",
            target,
            storage_options=s3_server.storage_options,
            **IDENTITY,
        )
    assert not target.exists()


def _write_marker(remote_url: RemoteURL, doc: dict[str, Any]) -> None:
    fs, root = fsspec.core.url_to_fs(remote_url.url, **remote_url.options)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(f"{root}/tensorcask-remote.json", json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ({"format": "tensorcask-remote", "version": 99}, "format 99"),
        ({"format": "something-else", "version": 1}, "not a tensorcask remote"),
    ],
)
def test_remote_of_another_format_is_refused(
    remote_url: RemoteURL, tmp_path: Path, marker: dict[str, Any], message: str
) -> None:
    _write_marker(remote_url, marker)
    with _new_repo(tmp_path / "src") as src:
        remote_url.add_to(src)
        with pytest.raises(tc.RemoteError, match=message):
            src.push("origin")
        with pytest.raises(tc.RemoteError, match=message):
            src.fetch("origin")
        with pytest.raises(tc.RefNotFoundError):
            src.resolve("origin/main")
    target = tmp_path / "clone"
    with pytest.raises(tc.RemoteError, match=message):
        remote_url.clone(target)
    assert not target.exists()


def test_refused_push_leaves_a_fresh_remote_empty(remote_url: RemoteURL, tmp_path: Path) -> None:
    source = RemoteURL((tmp_path / "source").as_uri())
    with _new_repo(tmp_path / "src") as src:
        source.add_to(src)
        src.push("origin")
    with source.clone(tmp_path / "part", partial=True) as part:
        remote_url.add_to(part, "fresh")
        with pytest.raises(tc.DataNotLocalError, match="'fresh'"):
            part.push("fresh")
    target = tmp_path / "clone"
    with pytest.raises(tc.RemoteError, match="holds no tensorcask repository"):
        remote_url.clone(target).close()
    assert not target.exists()


def test_push_of_a_missing_branch(remote_url: RemoteURL, repo: tc.Repository) -> None:
    remote_url.add_to(repo)
    with pytest.raises(tc.RefNotFoundError, match="'main'"):
        repo.push("origin")  # no commit yet
    with repo.checkout(write=True) as co:
        co.add_str_column("names")["a"] = "b"
        co.commit("one")
    with pytest.raises(tc.RefNotFoundError, match="'feature'"):
        repo.push("origin", "feature")
    target = repo.path.parent / "clone"
    with pytest.raises(tc.RemoteError):  # nothing was pushed
        tc.clone(remote_url.url, target, storage_options=remote_url.options or None, **IDENTITY)
    assert not target.exists()


def test_fetch_into_a_read_only_repository(remote_url: RemoteURL, tmp_path: Path) -> None:
    with _new_repo(tmp_path / "src") as src:
        remote_url.add_to(src)
        src.push("origin")
    remote_url.clone(tmp_path / "clone", partial=True).close()
    with tc.Repository(tmp_path / "clone", read_only=True) as ro:
        with pytest.raises(tc.ReadOnlyError):
            ro.fetch("origin")
        with pytest.raises(tc.ReadOnlyError):
            ro.fetch_data("origin", "main")
        with pytest.raises(tc.ReadOnlyError):
            ro.add_remote("other", remote_url.url)
        with pytest.raises(tc.ReadOnlyError):
            ro.remove_remote("origin")
        assert ro.remotes == {"origin": remote_url.url}
        assert ro.verify_remote("origin").ok  # reading the remote is fine
        assert ro.verify().not_local > 0


def test_remove_remote_forgets_its_refs(remote_url: RemoteURL, tmp_path: Path) -> None:
    with _new_repo(tmp_path / "src") as src:
        head = src.resolve("main")
        remote_url.add_to(src)
        remote_url.add_to(src, "mirror")
        src.push("origin")
        src.push("mirror")
        assert src.resolve("origin/main") == head == src.resolve("mirror/main")
        src.remove_remote("origin")
        assert src.remotes == {"mirror": remote_url.url}
        with pytest.raises(tc.RefNotFoundError):
            src.resolve("origin/main")
        assert src.resolve("mirror/main") == head  # other remotes' refs stay
        assert src.branches == {"main": head}
        with pytest.raises(tc.RemoteError, match="'origin'"):
            src.remove_remote("origin")
        with pytest.raises(tc.RemoteError, match="'origin'"):
            src.push("origin")
        # nothing on the remote changed
        with remote_url.clone(tmp_path / "clone") as clone:
            assert clone.branches == {"main": head}


def test_storage_options_must_be_json(repo: tc.Repository, tmp_path: Path) -> None:
    url = (tmp_path / "remote").as_uri()
    with pytest.raises(TypeError, match="JSON"):
        repo.add_remote("origin", url, client=object())
    with pytest.raises(TypeError, match="JSON"):
        repo.add_remote("origin", url, token={b"bytes": 1})
    assert repo.remotes == {}
    with repo.checkout(write=True) as co:
        co.add_str_column("names")["a"] = "b"
        co.commit("one")
    repo.add_remote("origin", url)
    repo.push("origin")
    with pytest.raises(TypeError, match="JSON"):  # found once the clone has begun
        tc.clone(url, tmp_path / "clone", storage_options={"client": object()}, **IDENTITY)
    assert not (tmp_path / "clone").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(TypeError, match="JSON"):
        tc.clone(url, tmp_path / "empty", storage_options={"client": object()}, **IDENTITY)
    assert list((tmp_path / "empty").iterdir()) == []
