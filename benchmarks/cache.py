"""The column-table cache: disk use over many related commits, and opening cost.

A repository of MNIST-shaped samples (uint8 28x28 images, int64 labels) gets
``--commits`` commits that each append ``--step`` samples; every commit is
then opened through the loaders' ``RepoSource`` (which resolves and caches
both columns' tables), newest first. Printed:

* the bytes under ``cache/`` against the bytes of sample data (a ratio), and
  against what the same number of unshared tables would take;
* the time a fresh process takes to open the newest commit from the cache
  (the loader worker's start-up cost), best of ``--opens`` processes.

Runs with any tensorcask version that has ``RepoSource`` (point
``PYTHONPATH`` at another checkout to compare).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import tensorcask as tc
from tensorcask.loaders.core import RepoSource

SEED = 20240601


def _bytes_under(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            total += os.stat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def _build(path: Path, n: int, commits: int, step: int) -> list[str]:
    rng = np.random.default_rng(SEED)
    repo = tc.init(path, user_name="Bench", user_email="bench@example.org")
    ids = []
    with repo.checkout(write=True) as co:
        images = co.add_ndarray_column("images", shape=(28, 28), dtype="uint8")
        labels = co.add_ndarray_column("labels", shape=(), dtype="int64")
        images.update(np.arange(n), rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        labels.update(np.arange(n), rng.integers(0, 10, n, dtype=np.int64))
        ids.append(co.commit("base"))
        for c in range(1, commits):
            keys = np.arange(n + (c - 1) * step, n + c * step)
            images.update(keys, rng.integers(0, 256, (step, 28, 28), dtype=np.uint8))
            labels.update(keys, rng.integers(0, 10, step, dtype=np.int64))
            ids.append(co.commit(f"append {c}"))
    repo.close()
    return ids


def _fresh_open_ms(path: Path, commit: str) -> float:
    code = (
        "import time\n"
        "from tensorcask.loaders.core import RepoSource\n"
        "t = time.perf_counter()\n"
        f"s = RepoSource({str(path)!r}, ['images', 'labels'], commit={commit!r}); len(s)\n"
        "print(1000 * (time.perf_counter() - t))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30_000, help="samples in the first commit")
    parser.add_argument("--commits", type=int, default=132, help="commits to open")
    parser.add_argument("--step", type=int, default=100, help="samples appended per commit")
    parser.add_argument("--opens", type=int, default=5, help="fresh processes timed")
    parser.add_argument("--dir", default=None, help="where the scratch directory is made")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        path = Path(scratch) / "repo"
        t = time.perf_counter()
        ids = _build(path, args.n, args.commits, args.step)
        print(f"built {args.commits} commits in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        repo = tc.Repository(path)
        RepoSource(repo, ["images", "labels"], commit=ids[-1])
        one = _bytes_under(path / "cache")
        t = time.perf_counter()
        for commit in reversed(ids[:-1]):
            RepoSource(repo, ["images", "labels"], commit=commit)
        opened = time.perf_counter() - t
        repo.close()
        cache = _bytes_under(path / "cache")
        data = _bytes_under(path / "data")
        opens = [_fresh_open_ms(path, ids[-1]) for _ in range(args.opens)]
    version = getattr(tc, "__version__", "?")
    print(f"tensorcask {version} ({tc.__file__}), n={args.n}, {args.commits} commits +{args.step}")
    print(f"sample data on disk         {data / 2**20:9.1f} MiB")
    print(f"cache after one commit      {one / 2**20:9.1f} MiB")
    print(
        f"cache after {args.commits} commits     {cache / 2**20:9.1f} MiB  "
        f"({cache / data:.2f}x the data; {cache / (one * args.commits):.3f}x of "
        f"{args.commits} unshared tables)"
    )
    print(f"first open of {args.commits - 1} commits  {opened:9.1f} s (resolve + save)")
    print(f"fresh-process open, cached  {min(opens):9.1f} ms (best of {args.opens})")


if __name__ == "__main__":
    main()
