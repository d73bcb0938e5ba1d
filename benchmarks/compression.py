"""Benchmark of column compression: disk saved against ingest and read speed lost.

Run from the repository root (the library and torch must be importable)::

    python benchmarks/compression.py                # defaults: --n 200000 --repeat 3
    python benchmarks/compression.py --n 50000      # quicker
    python benchmarks/compression.py --json         # results as JSON on stdout

Data is MNIST-shaped and seeded: ``uint8`` 28x28 images and ``int64`` labels
0-9, of two kinds: ``sparse`` (like real MNIST: about 80% zero pixels, the
rest uniform in 1..255) and ``uniform`` (every pixel uniform in 0..255, which
no compressor can shrink). Each kind is stored four ways, the same setting on
both columns: ``none`` (the default: memmap segments), and
``compression="zstd"``, ``"gzip"`` and ``"lzf"`` (HDF5). For each it measures

* ingest: ``col.update(keys, batch)`` in batches of 10,000, then ``co.commit()``;
* disk: bytes allocated under the repository's ``data/`` folder and under the
  whole repository (history, indexes and ``cache/`` included) after the commit,
  over the raw bytes ``n * (784 + 8)``;
* ``get_many``: steady reads of random batches of 256 images (after a warm-up),
  for at least a second;
* epoch: one shuffled epoch of ``DataLoader(repo_dataset(...), batch_size=256,
  shuffle=True, num_workers=0)``, checked (samples, sum of labels, of pixels).

Every figure is shown next to the uncompressed column's of the same data.
Reads run on a warm page cache (the data was just written). Ingest and
``get_many`` are the best of ``--repeat`` (a fresh repository per ingest);
so is the epoch, but another epoch runs only while those so far took under
30 s, so a compressed epoch (minutes) runs once. The scratch directory (a
new folder inside ``--dir``) is removed at exit.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from report import Row, fmt_value, remove, scratch_dir, table_line, timed
from torch.utils.data import DataLoader

import tensorcask as tc
from tensorcask.loaders.torch import repo_dataset

KINDS = ("sparse", "uniform")
COMPRESSIONS: tuple[str | None, ...] = (None, "zstd", "gzip", "lzf")
CHUNK = 10_000  # samples per update() call
BATCH = 256  # keys per get_many call and DataLoader batch
WARMUP_BATCHES = 20  # get_many calls before the steady measurement
MIN_READ_S = 1.0  # the steady get_many measurement runs at least this long...
MIN_BATCHES = 20  # ...and at least this many batches
MAX_BATCHES = 2_000
EPOCH_BUDGET_S = 30.0  # another epoch (up to --repeat) only while the epochs so far took less
SPARSE_NONZERO = 0.2  # share of nonzero pixels in the sparse kind
SEED = 20240601
SHUFFLE_SEED = 17
SAMPLE_BYTES = 28 * 28 + 8  # raw bytes of one image and its label


@dataclass
class Result:
    """The figures of one (data kind, compression) pair."""

    kind: str
    compression: str
    ingest: float  # samples/s
    data_bytes: int
    repo_bytes: int
    get_many: float  # samples/s
    epoch: float  # samples/s


def label(compression: str | None) -> str:
    return compression or "none"


def log(text: str, quiet: bool) -> None:
    print(text, file=sys.stderr if quiet else sys.stdout, flush=True)


def make_data(kind: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded images of ``kind`` and labels 0-9."""
    rng = np.random.default_rng(SEED + KINDS.index(kind))
    images = np.empty((n, 28, 28), np.uint8)
    for start in range(0, n, CHUNK):  # chunked: the float mask of all n would be 1.2 GB
        part = images[start : start + CHUNK]
        if kind == "sparse":
            part[...] = rng.integers(1, 256, part.shape, dtype=np.uint8)
            part[rng.random(part.shape) >= SPARSE_NONZERO] = 0
        else:
            part[...] = rng.integers(0, 256, part.shape, dtype=np.uint8)
    return images, rng.integers(0, 10, n).astype(np.int64)


def disk_bytes(root: Path) -> int:
    """Bytes allocated on disk (what ``du`` counts) under ``root``."""
    return sum(p.lstat().st_blocks * 512 for p in root.rglob("*") if not p.is_dir())


def ingest(path: Path, images: np.ndarray, labels: np.ndarray, compression: str | None) -> str:
    """A new repository at ``path`` holding both columns, committed; the commit id."""
    repo = tc.init(path, user_name="bench", user_email="bench@example.org")
    co = repo.checkout(write=True)
    try:
        image_col = co.add_ndarray_column(
            "images", shape=(28, 28), dtype="uint8", compression=compression
        )
        label_col = co.add_ndarray_column(
            "labels", shape=(), dtype="int64", compression=compression
        )
        for start in range(0, len(images), CHUNK):
            stop = min(start + CHUNK, len(images))
            keys = np.arange(start, stop)
            image_col.update(keys, images[start:stop])
            label_col.update(keys, labels[start:stop])
        return co.commit(f"{len(images)} samples, compression={compression}")
    finally:
        co.close()
        repo.close()


def get_many_rate(path: Path, cid: str, images: np.ndarray, seed: int) -> float:
    """Steady samples/s of ``get_many`` of random batches (checked once against the data)."""
    rng = np.random.default_rng(seed)
    batches = rng.integers(0, len(images), size=(WARMUP_BATCHES + MAX_BATCHES, BATCH))
    repo = tc.Repository(path)
    rc = repo.checkout(commit=cid)
    try:
        col = rc["images"]
        if not np.array_equal(np.asarray(col.get_many(batches[0])), images[batches[0]]):
            raise AssertionError(f"{path.name}: get_many returned other rows than were ingested")
        for keys in batches[1:WARMUP_BATCHES]:
            col.get_many(keys)
        done, started = 0, time.perf_counter()
        for keys in batches[WARMUP_BATCHES:]:
            col.get_many(keys)
            done += 1
            elapsed = time.perf_counter() - started
            if done >= MIN_BATCHES and elapsed >= MIN_READ_S:
                break
    finally:
        rc.close()
        repo.close()
    return done * BATCH / elapsed


def epoch_rate(path: Path, cid: str, totals: tuple[int, int, int]) -> float:
    """Samples/s of one shuffled DataLoader epoch over both columns, checked."""
    torch.manual_seed(SHUFFLE_SEED)
    ds = repo_dataset(path, ["images", "labels"], commit=cid)
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=0)

    def consume() -> tuple[int, int, int]:
        count = label_sum = pixel_sum = 0
        for images, labels in loader:
            count += len(labels)
            label_sum += int(labels.sum())
            pixel_sum += int(images.sum(dtype=torch.int64))
        return count, label_sum, pixel_sum

    seconds, got = timed(consume)
    if got != totals:
        raise AssertionError(f"{path.name}: epoch gave {got}, expected {totals}")
    return totals[0] / seconds


def bench(kind: str, args: argparse.Namespace, scratch: Path) -> list[Result]:
    """Every compression on one kind of data."""
    images, labels = make_data(kind, args.n)
    totals = (args.n, int(labels.sum()), int(images.sum(dtype=np.int64)))
    zeros = float(np.mean(images == 0))
    log(f"[{kind}] {args.n:,} samples, {zeros:.1%} zero pixels", args.json)
    results = []
    for compression in COMPRESSIONS:
        name = label(compression)
        path, cid, ingest_s = Path(), "", float("inf")
        for r in range(args.repeat):  # a fresh repository each repeat; the last one is kept
            if path.name:
                remove(path)
            path = scratch / f"{kind}-{name}-{r}"
            seconds, cid = timed(functools.partial(ingest, path, images, labels, compression))
            ingest_s = min(ingest_s, seconds)
        data_bytes, repo_bytes = disk_bytes(path / "data"), disk_bytes(path)
        reads = max(get_many_rate(path, cid, images, SEED + r) for r in range(args.repeat))
        epochs = [epoch_rate(path, cid, totals)]  # more only while they are quick
        while len(epochs) < args.repeat and sum(args.n / e for e in epochs) < EPOCH_BUDGET_S:
            epochs.append(epoch_rate(path, cid, totals))
        epoch = max(epochs)
        result = Result(kind, name, args.n / ingest_s, data_bytes, repo_bytes, reads, epoch)
        log(
            f"  {name}: ingest {result.ingest:,.0f}/s, data/ {data_bytes / 2**20:,.1f} MiB, "
            f"repository {repo_bytes / 2**20:,.1f} MiB, get_many({BATCH}) {reads:,.0f}/s, "
            f"epoch {epoch:,.0f}/s",
            args.json,
        )
        results.append(result)
        remove(path)
    return results


def rows(results: list[Result], n: int) -> list[Row]:
    """The results as report rows: each figure next to the uncompressed one (or the raw bytes)."""
    raw = float(n * SAMPLE_BYTES)
    out = []
    for r in results:
        base = next(b for b in results if b.kind == r.kind and b.compression == "none")
        for metric, value, unit, ref, ref_kind in (
            ("ingest", r.ingest, "/s", base.ingest, "uncompressed"),
            ("data/ bytes", r.data_bytes, "B", raw, "raw"),
            ("repository bytes", r.repo_bytes, "B", raw, "raw"),
            ("data/ bytes vs uncompressed", r.data_bytes, "B", base.data_bytes, "uncompressed"),
            (f"get_many({BATCH})", r.get_many, "/s", base.get_many, "uncompressed"),
            ("epoch", r.epoch, "/s", base.epoch, "uncompressed"),
        ):
            out.append(Row(r.kind, f"{r.compression} {metric}", value, unit, ref, ref_kind))
    return out


def render(results: list[Result], n: int) -> str:
    """One line per (kind, compression): figures and their ratios to the uncompressed column."""
    raw = n * SAMPLE_BYTES
    header = (
        "data / compression",
        "ingest",
        "x none",
        "data/",
        "x raw",
        "x none",
        "repo x raw",
        f"get_many({BATCH})",
        "x none",
        "epoch",
        "x none",
    )
    cells = []
    for r in results:
        base = next(b for b in results if b.kind == r.kind and b.compression == "none")
        cells.append(
            (
                f"{r.kind} / {r.compression}",
                fmt_value(r.ingest, "/s"),
                f"{r.ingest / base.ingest:.2f}x",
                fmt_value(r.data_bytes, "B"),
                f"{r.data_bytes / raw:.3f}x",
                f"{r.data_bytes / base.data_bytes:.3f}x",
                f"{r.repo_bytes / raw:.3f}x",
                fmt_value(r.get_many, "/s"),
                f"{r.get_many / base.get_many:.4f}x",
                fmt_value(r.epoch, "/s"),
                f"{r.epoch / base.epoch:.4f}x",
            )
        )
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    rule = tuple("-" * w for w in widths)
    return "\n".join(table_line(c, widths) for c in [header, rule, *cells])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=200_000, help="samples (default 200000)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats; the best is kept")
    parser.add_argument(
        "--dir", default=tempfile.gettempdir(), help="where to make the scratch directory"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.n < BATCH or args.repeat < 1:
        parser.error(f"--n must be >= {BATCH}; --repeat >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with scratch_dir(args.dir) as scratch:
        started = time.perf_counter()
        log(
            f"tensorcask {tc.__version__} compression benchmark: n={args.n:,} "
            f"repeat={args.repeat} | python {platform.python_version()} numpy "
            f"{np.__version__} torch {torch.__version__} | {os.cpu_count()} CPUs "
            f"| scratch {scratch}",
            args.json,
        )
        results = [r for kind in KINDS for r in bench(kind, args, scratch)]
        elapsed = time.perf_counter() - started
        if args.json:
            doc: dict[str, Any] = {
                "config": vars(args),
                "elapsed_s": elapsed,
                "raw_bytes": args.n * SAMPLE_BYTES,
                "results": [row.to_dict() for row in rows(results, args.n)],
            }
            print(json.dumps(doc, indent=2))
        else:
            print(
                f"\n{render(results, args.n)}\n\nspeeds: samples/s, 'x none' = rate / the "
                "uncompressed column's (above 1 faster); sizes: 'x raw' and 'x none' = bytes / "
                f"raw bytes n*(784+8) or / the uncompressed data/ (below 1 smaller); "
                f"total {elapsed:.0f} s"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
