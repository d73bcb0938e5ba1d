"""Metadata on disk: how much besides the sample bytes, and whether staging churn grows it.

Run from the repository root::

    python benchmarks/metadata.py                 # 200,000 MNIST-shaped samples, 10 rounds
    python benchmarks/metadata.py --n 50000 --rounds 3

Two fresh repositories receive the same seeded data (``uint8`` 28x28 images
and ``int64`` labels, ``update()`` in batches of 10,000):

``once``   staged once, committed, then ``gc``.
``churn``  staged ``--rounds`` times, the staging area reset after all but the
           last round, then committed and ``gc``.

For each it prints the bytes allocated under ``meta/`` (LMDB: history,
staging, the recent content-index table), ``index/`` (content-index run
files), ``cache/`` (column tables) and ``data/``, and the metadata (all but
``data/``) over the raw sample bytes. Targets: metadata <= 0.20 of raw;
``churn`` no larger than ``once``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from report import Row, render_table, scratch_dir

import tensorcask as tc

PARTS = ("meta", "index", "cache", "data")
CHUNK = 10_000
SECTIONS = ["metadata"]


def allocated(root: Path) -> int:
    """Bytes allocated under ``root`` (what ``du`` counts)."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            total += os.stat(os.path.join(folder, name)).st_blocks * 512
    return total


def build(path: Path, images: np.ndarray, labels: np.ndarray, rounds: int) -> dict[str, int]:
    with tc.init(path, user_name="bench", user_email="bench@example.org") as repo:
        with repo.checkout(write=True) as co:
            co.add_ndarray_column("images", shape=images.shape[1:], dtype=images.dtype)
            co.add_ndarray_column("labels", shape=(), dtype=labels.dtype)
            co.commit("schema")
        for round_ in range(rounds):
            with repo.checkout(write=True) as co:
                for start in range(0, len(images), CHUNK):
                    keys = np.arange(start, min(start + CHUNK, len(images)))
                    co["images"].update(keys, images[keys])
                    co["labels"].update(keys, labels[keys])
                if round_ < rounds - 1:
                    co.reset_staging_area()
                else:
                    co.commit("ingest")
        repo.gc()
    return {part: allocated(path / part) for part in PARTS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=200_000, help="samples (default 200000)")
    parser.add_argument("--rounds", type=int, default=10, help="staging rounds of `churn`")
    parser.add_argument("--dir", default=None, help="scratch parent directory")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, args.n).astype(np.int64)
    raw = images.nbytes + labels.nbytes
    with scratch_dir(args.dir) as scratch:
        sizes = {
            "once": build(scratch / "once", images, labels, 1),
            "churn": build(scratch / "churn", images, labels, args.rounds),
        }
    meta = {name: sum(v for k, v in s.items() if k != "data") for name, s in sizes.items()}
    if args.json:
        print(json.dumps({"n": args.n, "rounds": args.rounds, "raw": raw, "sizes": sizes}))
        return 0
    print(f"{args.n:,} samples, raw sample bytes {raw / 2**20:.1f} MiB")
    for name, parts in sizes.items():
        shown = ", ".join(f"{part} {parts[part] / 2**20:.1f} MiB" for part in PARTS)
        print(f"  {name:5s}: {shown}; metadata / raw {meta[name] / raw:.3f}")
    rows = [
        Row("metadata", "metadata (meta+index+cache), once", meta["once"], "B", raw * 0.2, "", 1.0),
        Row(
            "metadata",
            f"metadata after {args.rounds} staging rounds",
            meta["churn"],
            "B",
            meta["once"],
            "",
            1.0,
        ),
    ]
    print(render_table(rows, SECTIONS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
