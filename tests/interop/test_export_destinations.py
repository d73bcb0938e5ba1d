"""A failed export keeps the old one; partials are unique, fsynced and cleaned up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest

import tensorcask as tc
from tensorcask.interop import destination, export

zarr = pytest.importorskip("zarr")

CHECKSUMS = ".tensorcask-checksums.json"


class Boom(RuntimeError):
    pass


def _fail_midway(phase: str, done: int, total: int | None) -> None:
    if phase == "export samples" and done >= 8:
        raise Boom("stop here")


@pytest.fixture
def two_commits(repo: tc.Repository) -> tc.Repository:
    """``old``: a tag of 10 samples; ``main``: 2000."""
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("x", shape=(4,), dtype="int64").update(
            np.arange(10), np.zeros((10, 4), np.int64)
        )
        co.commit("old")
        repo.create_tag("old", "main")
        co["x"].update(np.arange(10, 2000), np.ones((1990, 4), np.int64))
        co.commit("new")
    return repo


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(CHECKSUMS))


@pytest.mark.parametrize("suffix", [".npz", ".h5", ".zarr"])
def test_a_failed_overwrite_keeps_the_old_export_and_leaves_no_partial(
    two_commits: tc.Repository, tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tensorcask.interop import arrays

    monkeypatch.setattr(arrays, "BATCH_BYTES", 64)  # many small blocks
    dest = tmp_path / f"out{suffix}"
    export(two_commits, "old", dest)
    before = sorted(
        str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "repo" not in p.parts
    )

    with pytest.raises(Boom):
        export(two_commits, "main", dest, overwrite=True, progress=_fail_midway)

    after = sorted(
        str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "repo" not in p.parts
    )
    assert after == before
    export(two_commits, "main", dest, overwrite=True)
    assert _entries(tmp_path) == [f"out{suffix}", "repo"]


def test_a_failed_overwrite_of_a_url_keeps_the_old_store(two_commits: tc.Repository) -> None:
    base = f"memory://{uuid.uuid4().hex}"
    url = f"{base}/out.zarr"
    export(two_commits, "old", url, storage_options={})
    fs = fsspec.filesystem("memory")

    with pytest.raises(Boom):
        export(two_commits, "main", url, overwrite=True, progress=_fail_midway)

    assert zarr.open_group(url, mode="r")["x"].shape[0] == 10
    assert not [p for p in fs.ls(base, detail=False) if ".partial-" in p]
    export(two_commits, "main", url, overwrite=True, storage_options={})
    assert zarr.open_group(url, mode="r")["x"].shape[0] == 2000
    assert not [p for p in fs.ls(base, detail=False) if ".partial-" in p]


def test_partials_are_unique_and_stale_ones_are_removed(
    two_commits: tc.Repository, tmp_path: Path
) -> None:
    dest = str(tmp_path / "out.npz")
    a = destination.Destination(dest, False, None, directory=False)
    b = destination.Destination(dest, False, None, directory=False)
    assert a.begin() != b.begin()
    a.discard()
    b.discard()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = destination.host_name()
    gone = tmp_path / f".out.npz.partial-{host}-{dead.pid}-abc123"
    old = tmp_path / ".out.npz.partial-otherhost-1-def456"
    live = tmp_path / f".out.npz.partial-{host}-{os.getpid()}-ghi789"
    for path in (gone, old, live):
        path.write_bytes(b"partial")
    day_ago = time.time() - destination.STALE_SECONDS - 60
    os.utime(old, (day_ago, day_ago))

    export(two_commits, "main", dest)

    assert _entries(tmp_path) == [live.name, "out.npz", "repo"]


def test_an_old_store_moved_aside_by_a_killed_export_is_put_back(
    two_commits: tc.Repository, tmp_path: Path
) -> None:
    export(two_commits, "old", tmp_path / "out.zarr")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = tmp_path / f".out.zarr.replaced-{destination.host_name()}-{dead.pid}-abc"
    (tmp_path / "out.zarr").rename(aside)

    with pytest.raises(FileExistsError):
        export(two_commits, "main", tmp_path / "out.zarr")

    assert zarr.open_group(tmp_path / "out.zarr", mode="r")["x"].shape[0] == 10
    assert not aside.exists()
