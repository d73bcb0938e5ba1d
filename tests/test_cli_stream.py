"""``tensorcask warm``: a remote commit's samples fetched into a streaming cache folder,
which the loaders then read without asking the remote again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_one_error_line, run_cli

import tensorcask as tc
from tensorcask.loaders.torch import repo_dataset

N = 300


@pytest.fixture
def pushed(tmp_path: Path) -> tuple[Path, str]:
    """A remote folder holding one commit of images and labels; (folder, commit id)."""
    repo = tc.init(tmp_path / "src", user_name="Ada", user_email="ada@example.org")
    rng = np.random.default_rng(5)
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("images", shape=(28, 28), dtype="uint8").update(
            list(range(N)), rng.integers(0, 256, (N, 28, 28), dtype=np.uint8)
        )
        co.add_ndarray_column("labels", shape=(), dtype="int64").update(
            list(range(N)), np.arange(N) % 10
        )
        commit = co.commit("first")
    remote = tmp_path / "remote"
    repo.add_remote("origin", remote.as_uri())
    repo.push("origin", "main")
    return remote, commit


def test_warm_fills_the_cache_the_loaders_read(
    pushed: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    remote, commit = pushed
    cache = tmp_path / "cache"
    code, out, err = run_cli(
        capsys, "warm", str(remote), "--column", "images", "--column", "labels",
        "--cache-dir", str(cache), "--cache-limit", "64M",
    )  # fmt: skip
    assert code == 0, err
    assert f"cached {N} samples of images, labels at {commit[:10]}" in out
    assert "of 64.0 MiB" in out

    ds = repo_dataset(remote.as_uri(), ["images", "labels"], cache_dir=cache)
    assert ds.commit == commit
    batch = ds.__getitems__(list(range(N)))
    assert len(batch) == N
    assert ds.source.fetcher.requests == 0  # everything came from the warmed cache

    code, out, err = run_cli(
        capsys, "warm", remote.as_uri(), "--column", "images", "--commit", commit[:8],
        "--cache-dir", str(cache), "--json",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["commit"] == commit and doc["samples"] == N
    assert doc["requests"] == 0 and doc["bytes"] == 0  # already cached
    assert 0 < doc["cached"] <= doc["limit"]


def test_warm_errors_are_one_line(
    pushed: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    remote, _ = pushed
    cache = str(tmp_path / "cache")
    code, _, err = run_cli(capsys, "warm", str(remote), "--column", "nope", "--cache-dir", cache)
    assert code == 1
    assert "no column 'nope'" in assert_one_error_line(err)

    code, _, err = run_cli(
        capsys, "warm", str(tmp_path / "empty"), "--column", "images", "--cache-dir", cache
    )
    assert code == 1
    assert "holds no tensorcask repository" in assert_one_error_line(err)

    code, _, err = run_cli(
        capsys, "warm", str(remote), "--column", "images", "--commit", "nosuch",
        "--cache-dir", cache,
    )  # fmt: skip
    assert code == 1
    assert "nosuch" in assert_one_error_line(err)

    code, _, err = run_cli(
        capsys, "warm", str(remote), "--column", "images", "--cache-dir", cache,
        "--cache-limit", "lots",
    )  # fmt: skip
    assert code == 2 and "20G" in err
