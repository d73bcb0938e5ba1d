"""Parallel ingest of large samples against the raw ceiling with every core.

Run from the repository root::

    python benchmarks/parallel_ingest.py                 # 4,000 samples of 3x224x224 uint8
    python benchmarks/parallel_ingest.py --n 1000 --workers 2

The samples (150 KB each) lie in a ``.npy`` file that every process maps, so
no figure includes sending sample bytes between processes. Each figure is
the best of ``--repeat`` runs, all in this process run:

``raw``        the ceiling: a process pool, one task per chunk of 256 samples,
               each writing its rows to a file of its own with ``os.write``,
               hashing each row with blake2b-256 and fsyncing the file.
``parts``      tensorcask: the same pool; each task calls
               ``PartWriter.write`` on its chunk and returns the part; then
               ``add_parts`` and ``commit`` in the writer (all timed).
``update``     tensorcask, one process: ``update()`` per chunk, then ``commit``.

Target: ``parts`` >= 0.8x ``raw``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from report import Row, ceiling_row, render_table, scratch_dir

import tensorcask as tc

SHAPE = (3, 224, 224)
CHUNK = 256
SECTIONS = ["parallel ingest"]


def _chunks(n: int) -> list[tuple[int, int]]:
    return [(a, min(a + CHUNK, n)) for a in range(0, n, CHUNK)]


def _raw_task(source: str, out_dir: str, span: tuple[int, int]) -> int:
    data = np.load(source, mmap_mode="r")[span[0] : span[1]]
    rows = np.ascontiguousarray(data)
    view = memoryview(rows.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
    step = rows.nbytes // len(rows)
    for i in range(len(rows)):
        hashlib.blake2b(view[i * step : (i + 1) * step], digest_size=32).digest()
    fd = os.open(os.path.join(out_dir, f"{span[0]:09d}.raw"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:])
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(rows)


def _part_task(source: str, writer: tc.PartWriter, span: tuple[int, int]) -> tc.SamplesPart:
    data = np.load(source, mmap_mode="r")[span[0] : span[1]]
    return writer.write(np.arange(span[0], span[1]), np.ascontiguousarray(data))


def raw(source: Path, out: Path, n: int, workers: int) -> float:
    out.mkdir()
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
        spans = _chunks(n)
        done = sum(pool.map(_raw_task, [str(source)] * len(spans), [str(out)] * len(spans), spans))
    fd = os.open(out, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    assert done == n
    return n / (time.perf_counter() - t0)


def parts(source: Path, path: Path, n: int, workers: int) -> float:
    repo = tc.init(path, user_name="bench", user_email="bench@example.org")
    t0 = time.perf_counter()
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("images", shape=SHAPE, dtype="uint8")
        writer = col.part_writer()
        spans = _chunks(n)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            written = list(
                pool.map(_part_task, [str(source)] * len(spans), [writer] * len(spans), spans)
            )
        col.add_parts(written)
        co.commit("parallel ingest")
    rate = n / (time.perf_counter() - t0)
    repo.close()
    return rate


def serial(source: Path, path: Path, n: int) -> float:
    data = np.load(source, mmap_mode="r")
    repo = tc.init(path, user_name="bench", user_email="bench@example.org")
    t0 = time.perf_counter()
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("images", shape=SHAPE, dtype="uint8")
        for a, b in _chunks(n):
            col.update(np.arange(a, b), np.ascontiguousarray(data[a:b]))
        co.commit("serial ingest")
    rate = n / (time.perf_counter() - t0)
    repo.close()
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=4000, help="samples (default 4000, 600 MB)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3, help="repeats; the best is kept")
    parser.add_argument("--dir", default=None, help="scratch parent directory")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    best = {"raw": 0.0, "parts": 0.0, "update": 0.0}
    with scratch_dir(args.dir) as scratch:
        source = scratch / "samples.npy"
        rng = np.random.default_rng(0)
        out = np.lib.format.open_memmap(source, "w+", np.uint8, (args.n, *SHAPE))
        for a, b in _chunks(args.n):
            out[a:b] = rng.integers(0, 256, (b - a, *SHAPE), dtype=np.uint8)
        out.flush()
        del out
        for r in range(args.repeat):
            best["raw"] = max(best["raw"], raw(source, scratch / f"raw{r}", args.n, args.workers))
            best["parts"] = max(
                best["parts"], parts(source, scratch / f"parts{r}", args.n, args.workers)
            )
            best["update"] = max(best["update"], serial(source, scratch / f"update{r}", args.n))
    section = SECTIONS[0]
    rows: list[Row] = [
        ceiling_row(
            section, f"PartWriter, {args.workers} workers", best["parts"], best["raw"], 0.8
        ),
        ceiling_row(section, "update(), one process", best["update"], best["raw"]),
    ]
    if args.json:
        print(json.dumps({"n": args.n, "workers": args.workers, **best}))
    else:
        mb = np.prod(SHAPE) / 1e6
        print(
            f"{args.n} samples of {SHAPE} uint8 ({mb:.2f} MB each), {args.workers} workers; "
            f"raw ceiling {best['raw']:,.0f} samples/s ({best['raw'] * mb:,.0f} MB/s)"
        )
        print(render_table(rows, SECTIONS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
