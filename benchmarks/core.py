"""Performance benchmark of the tensorcask core engine, each figure next to its reference.

Run from the repository root (the library must be importable, e.g. installed editable)::

    python benchmarks/core.py                      # defaults: --n 200000 --big 1000000 --repeat 3
    python benchmarks/core.py --n 50000 --big 200000
    python benchmarks/core.py --only ingest reads  # some sections only
    python benchmarks/core.py --json               # results as JSON on stdout

Data is MNIST-shaped and seeded: ``uint8`` 28x28 images and ``int64`` labels.
Every figure is printed next to a ceiling (the same work done with plain numpy
and hashlib, measured in the same run) or a fixed target, with their ratio.
Ratios are always "speed relative to the reference": above 1 is faster. A
target row passes at a ratio >= 1, a ceiling row at the fraction it names.

Sections (``--only`` names):

``ingest``      ``col.update(keys, batch)`` in chunks of 10,000 into a fresh repository;
                ceiling: ``np.save`` of the array plus blake2b-256 of every sample.
``per-sample``  ``col[k] = v`` in a plain loop (then ``co.flush()``) and inside ``with col:``.
``commit``      ``co.commit()`` after staging N image records; then a fresh process opens
                the new commit and reads one random batch of 256.
``big-commit``  commit of a one-record change on a ``--big`` record column (and 100k).
``open``        ``repo.checkout(commit=...)`` of the big commit, in a fresh process and
                in-process.
``reads``       ``rc["images"][k]`` and ``get_many`` of 256 keys on the N-image commit;
                ceiling: the same rows gathered from ``np.load(..., mmap_mode="r")``.
``verify``      ``repo.verify(full=True)`` of the N-image commit; ceiling: reading the same
                ``.npy`` file and hashing every sample with blake2b-256 (target 0.5x).

Each measurement is taken ``--repeat`` times and the best is kept. The scratch
directory (a new folder inside ``--dir``) is removed at exit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from report import Row, ceiling_row, rate_row, remove, render_table, scratch_dir, time_row, timed

import tensorcask as tc

SECTIONS = ("ingest", "per-sample", "commit", "big-commit", "open", "reads", "verify")
CHUNK = 10_000  # samples per update() call when ingesting
SCALAR_CHUNK = 100_000  # samples per update() call when building the big scalar column
FLAT_RECORDS = 100_000  # the smaller column of the big-commit section
EDITS_PER_REPEAT = 5  # single-record commits per repeat (their median is kept)
OPENS_PER_REPEAT = 5  # in-process checkouts per repeat
READ_KEYS = 20_000  # per-sample reads
BATCH = 256  # keys per get_many call
BATCHES = 200  # get_many calls in the steady-state measurement
SEED = 20240601

TARGET_INGEST_RATE = 350_000.0
CEILING_INGEST_FRACTION = 0.5
TARGET_PER_SAMPLE_RATE = 60_000.0
TARGET_COMMIT_S = 0.3
TARGET_BIG_COMMIT_S = 0.050
TARGET_OPEN_S = 0.020
TARGET_FIRST_BATCH_S = 0.100
TARGET_READ_RATE = 150_000.0
TARGET_GET_MANY_RATE = 1_000_000.0


OPEN_SNIPPET = """
import json, sys, time
t0 = time.perf_counter()
import tensorcask as tc
t1 = time.perf_counter()
repo = tc.Repository(sys.argv[1])
t2 = time.perf_counter()
co = repo.checkout(commit=sys.argv[2])
t3 = time.perf_counter()
co.close()
repo.close()
print(json.dumps({"import_s": t1 - t0, "repository_s": t2 - t1, "checkout_s": t3 - t2}))
"""

FIRST_BATCH_SNIPPET = """
import json, sys, time
import numpy as np
import tensorcask as tc
t0 = time.perf_counter()
repo = tc.Repository(sys.argv[1])
co = repo.checkout(commit=sys.argv[2])
col = co[sys.argv[3]]
keys = np.random.default_rng(int(sys.argv[4])).choice(len(col), 256, replace=False)
col.get_many(keys)
t1 = time.perf_counter()
print(json.dumps({"first_batch_s": t1 - t0}))
"""


# -- results ------------------------------------------------------------------


# -- run context ----------------------------------------------------------------


@dataclass
class Context:
    """Arguments, scratch space, data and the repositories sections share."""

    n: int
    big: int
    repeat: int
    scratch: Path
    quiet: bool
    rows: list[Row] = field(default_factory=list)
    images: np.ndarray = field(init=False)
    labels: np.ndarray = field(init=False)
    image_repo: tuple[Path, str] | None = None
    big_repo: tuple[Path, str] | None = None
    _serial: int = 0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(SEED)
        self.images = rng.integers(0, 256, size=(self.n, 28, 28), dtype=np.uint8)
        self.labels = rng.integers(0, 10, size=self.n).astype(np.int64)

    @property
    def npy_path(self) -> Path:
        return self.scratch / "images.npy"

    def fresh_path(self, stem: str) -> Path:
        self._serial += 1
        return self.scratch / f"{stem}-{self._serial}"

    def log(self, text: str) -> None:
        print(text, file=sys.stderr if self.quiet else sys.stdout, flush=True)

    def add(self, *rows: Row) -> None:
        self.rows.extend(rows)


def new_repo(path: Path) -> tc.Repository:
    return tc.init(path, user_name="bench", user_email="bench@example.org")


def ingest_batches(col: tc.Column, data: np.ndarray, chunk: int) -> None:
    for start in range(0, len(data), chunk):
        stop = min(start + chunk, len(data))
        col.update(np.arange(start, stop), data[start:stop])


def ingest_column(path: Path, name: str, data: np.ndarray, commit: bool) -> dict[str, Any]:
    """Ingest ``data`` into a new column of a new repository; time ingest and commit."""
    repo = new_repo(path)
    co = repo.checkout(write=True)
    try:
        col = co.add_ndarray_column(name, shape=data.shape[1:], dtype=data.dtype)
        ingest_s, _ = timed(lambda: ingest_batches(col, data, CHUNK))
        commit_s, cid = timed(lambda: co.commit(f"add {name}")) if commit else (None, None)
    finally:
        co.close()
        repo.close()
    return {"ingest_s": ingest_s, "commit_s": commit_s, "cid": cid}


def raw_pipeline(data: np.ndarray, path: Path) -> None:
    """The ingest ceiling: write the array with np.save and hash every sample."""
    np.save(path, data)
    for row in data.reshape(len(data), -1):
        hashlib.blake2b(row.data, digest_size=32).digest()


def build_scalar_repo(path: Path, n: int) -> str:
    """A repository with one int64 scalar column of ``n`` distinct records; its commit id."""
    repo = new_repo(path)
    co = repo.checkout(write=True)
    try:
        col = co.add_ndarray_column("values", shape=(), dtype="int64")
        ingest_batches(col, np.arange(n, dtype=np.int64), SCALAR_CHUNK)
        return co.commit(f"{n} scalars")
    finally:
        co.close()
        repo.close()


def single_record_commits(path: Path, n: int, count: int, rng: np.random.Generator) -> list[float]:
    """Change one random record and commit, ``count`` times; the commit times."""
    repo = tc.Repository(path)
    co = repo.checkout(write=True)
    times = []
    try:
        col = co["values"]
        for _ in range(count):
            col[int(rng.integers(n))] = np.int64(rng.integers(n, 2**62))
            seconds, _ = timed(lambda: co.commit("edit one record"))
            times.append(seconds)
    finally:
        co.close()
        repo.close()
    return times


def ensure_image_repo(ctx: Context) -> tuple[Path, str]:
    if ctx.image_repo is None:
        path = ctx.fresh_path("images")
        ctx.image_repo = (path, ingest_column(path, "images", ctx.images, commit=True)["cid"])
    return ctx.image_repo


def ensure_npy(ctx: Context) -> Path:
    if not ctx.npy_path.exists():
        np.save(ctx.npy_path, ctx.images)
    return ctx.npy_path


def ensure_big_repo(ctx: Context) -> tuple[Path, str]:
    if ctx.big_repo is None:
        path = ctx.fresh_path("scalars-big")
        seconds, cid = timed(lambda: build_scalar_repo(path, ctx.big))
        ctx.log(f"  built {ctx.big:,}-record scalar repository in {seconds:.1f} s")
        ctx.big_repo = (path, cid)
    return ctx.big_repo


# -- sections -----------------------------------------------------------------------


def bench_image_ingest(ctx: Context, report_ingest: bool, report_commit: bool) -> None:
    """Sections 1 (images) and 3: fresh repository per repeat, update() then commit()."""
    ingest, commits = [], []
    for _ in range(ctx.repeat):
        path = ctx.fresh_path("images")
        result = ingest_column(path, "images", ctx.images, commit=True)
        ingest.append(result["ingest_s"])
        commits.append(result["commit_s"])
        if ctx.image_repo is not None:
            remove(ctx.image_repo[0])
        ctx.image_repo = (path, result["cid"])
    rate = ctx.n / min(ingest)
    if report_ingest:
        ceiling_s = min(
            timed(lambda: raw_pipeline(ctx.images, ctx.npy_path))[0] for _ in range(ctx.repeat)
        )
        ceiling = ctx.n / ceiling_s
        report_ingest_rows(ctx, "images", rate, ceiling)
    if report_commit:
        seconds = min(commits)
        ctx.log(f"[commit] commit of {ctx.n:,} staged image records: {seconds * 1000:.1f} ms")
        ctx.add(time_row("commit", f"commit {ctx.n:,} staged images", seconds, TARGET_COMMIT_S))
        path, cid = ctx.image_repo
        first = min(first_batch_in_fresh_process(path, cid, seed) for seed in range(ctx.repeat))
        ctx.log(f"[commit] fresh process: open + first get_many(256): {first * 1000:.1f} ms")
        ctx.add(
            time_row(
                "commit",
                "open + first batch of the new commit, fresh process",
                first,
                TARGET_FIRST_BATCH_S,
            )
        )


def first_batch_in_fresh_process(path: Path, cid: str, seed: int) -> float:
    """Seconds from ``tc.Repository()`` to the first random get_many(256) (imports excluded)."""
    out = subprocess.run(
        [sys.executable, "-c", FIRST_BATCH_SNIPPET, str(path), cid, "images", str(seed)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["first_batch_s"])


def bench_label_ingest(ctx: Context) -> None:
    """Section 1 (labels): same as images, for the int64 scalar column."""
    times = []
    for _ in range(ctx.repeat):
        path = ctx.fresh_path("labels")
        times.append(ingest_column(path, "labels", ctx.labels, commit=False)["ingest_s"])
        remove(path)
    npy = ctx.scratch / "labels.npy"
    ceiling_s = min(timed(lambda: raw_pipeline(ctx.labels, npy))[0] for _ in range(ctx.repeat))
    report_ingest_rows(ctx, "labels", ctx.n / min(times), ctx.n / ceiling_s)


def report_ingest_rows(ctx: Context, what: str, rate: float, ceiling: float) -> None:
    ctx.log(
        f"[ingest] {what:<6} update(): {rate:>12,.0f} samples/s   "
        f"np.save+blake2b ceiling: {ceiling:>12,.0f} samples/s   ratio {rate / ceiling:.2f}x"
    )
    ctx.add(
        rate_row("ingest", f"ingest {what} update()", rate, TARGET_INGEST_RATE),
        ceiling_row(
            "ingest", f"ingest {what} update() vs raw", rate, ceiling, CEILING_INGEST_FRACTION
        ),
    )


def per_sample_ingest(path: Path, rows: list[np.ndarray], block: bool) -> float:
    repo = new_repo(path)
    co = repo.checkout(write=True)
    try:
        col = co.add_ndarray_column("images", shape=(28, 28), dtype="uint8")

        def write_all() -> None:
            if block:
                with col:
                    for k, row in enumerate(rows):
                        col[k] = row
            else:  # the loop users write first: buffered all the same, staged by flush()
                for k, row in enumerate(rows):
                    col[k] = row
                co.flush()

        seconds, _ = timed(write_all)
    finally:
        co.close()
        repo.close()
    return seconds


def bench_per_sample(ctx: Context) -> None:
    """Section 2: col[k] = v, plain and inside ``with col:`` (the final flush included)."""
    rows = list(ctx.images)
    for block, label in ((False, "col[k]=v"), (True, "col[k]=v in `with col:`")):
        times = []
        for _ in range(ctx.repeat):
            path = ctx.fresh_path("per-sample")
            times.append(per_sample_ingest(path, rows, block))
            remove(path)
        rate = ctx.n / min(times)
        ctx.log(f"[per-sample] {label}: {rate:,.0f} samples/s")
        ctx.add(rate_row("per-sample", f"ingest images {label}", rate, TARGET_PER_SAMPLE_RATE))


def bench_big_commit(ctx: Context) -> None:
    """Section 4: one-record commits on a --big column and on a 100k column."""
    rng = np.random.default_rng(SEED + 1)
    sizes = [(ctx.big, ensure_big_repo(ctx)[0])]
    if ctx.big > FLAT_RECORDS:
        small_path = ctx.fresh_path("scalars-small")
        build_scalar_repo(small_path, FLAT_RECORDS)
        sizes.insert(0, (FLAT_RECORDS, small_path))
    results = {}
    for n, path in sizes:
        medians = [
            statistics.median(single_record_commits(path, n, EDITS_PER_REPEAT, rng))
            for _ in range(ctx.repeat)
        ]
        results[n] = min(medians)
        ctx.log(
            f"[big-commit] 1-record commit on {n:>9,} records: {results[n] * 1000:.2f} ms"
            f" (median of {EDITS_PER_REPEAT}, best of {ctx.repeat})"
        )
        ctx.add(
            time_row(
                "big-commit", f"1-record commit, {n:,} records", results[n], TARGET_BIG_COMMIT_S
            )
        )
    if len(sizes) == 2:
        remove(sizes[0][1])
        ctx.log(
            f"[big-commit] {ctx.big:,} vs {FLAT_RECORDS:,} records: "
            f"{results[ctx.big] / results[FLAT_RECORDS]:.2f}x the time"
        )


def open_in_fresh_process(path: Path, cid: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", OPEN_SNIPPET, str(path), cid],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def open_in_process(path: Path, cid: str) -> tuple[float, float]:
    """(first checkout on a fresh Repository object, best of the following ones)."""
    repo = tc.Repository(path)
    try:
        times = []
        for _ in range(OPENS_PER_REPEAT):
            seconds, co = timed(lambda: repo.checkout(commit=cid))
            co.close()
            times.append(seconds)
    finally:
        repo.close()
    return times[0], min(times[1:])


def bench_open(ctx: Context) -> None:
    """Section 5: repo.checkout(commit=cid) of the --big commit."""
    path, cid = ensure_big_repo(ctx)
    fresh = [open_in_fresh_process(path, cid) for _ in range(ctx.repeat)]
    fresh_s = min(f["checkout_s"] for f in fresh)
    first, warm = zip(*(open_in_process(path, cid) for _ in range(ctx.repeat)), strict=True)
    ctx.log(
        f"[open] checkout of {ctx.big:,}-record commit: fresh process {fresh_s * 1000:.2f} ms"
        f" (tc.Repository() {min(f['repository_s'] for f in fresh) * 1000:.2f} ms,"
        f" import {min(f['import_s'] for f in fresh) * 1000:.0f} ms), in-process first "
        f"{min(first) * 1000:.2f} ms, warm {min(warm) * 1000:.2f} ms"
    )
    label = f"checkout {ctx.big:,}-record commit"
    ctx.add(
        time_row("open", f"{label}, fresh process", fresh_s, TARGET_OPEN_S),
        time_row("open", f"{label}, in-process", min(first), TARGET_OPEN_S),
    )


def read_pass(path: Path, cid: str, keys: list[int], batches: np.ndarray) -> dict[str, float]:
    """One pass of reads on a fresh Repository object: first get_many, per-sample, steady."""
    repo = tc.Repository(path)
    rc = repo.checkout(commit=cid)
    try:
        col = rc["images"]
        first_s, _ = timed(lambda: col.get_many(batches[0]))
        single_s, _ = timed(lambda: [col[k] for k in keys])
        # the first pass warms caches (and resolves the whole column once it pays off)
        warmup_s, _ = timed(lambda: [col.get_many(b) for b in batches])
        many_s, _ = timed(lambda: [col.get_many(b) for b in batches])
    finally:
        rc.close()
        repo.close()
    return {"first_s": first_s, "single_s": single_s, "warmup_s": warmup_s, "many_s": many_s}


def ceiling_pass(npy: Path, keys: list[int], batches: np.ndarray) -> dict[str, float]:
    arr = np.load(npy, mmap_mode="r")
    single_s, _ = timed(lambda: [np.array(arr[i]) for i in keys])
    many_s, _ = timed(lambda: [arr[b] for b in batches])
    return {"single_s": single_s, "many_s": many_s}


def check_reads(path: Path, cid: str, npy: Path, batch: np.ndarray) -> None:
    repo = tc.Repository(path)
    rc = repo.checkout(commit=cid)
    try:
        expected = np.load(npy, mmap_mode="r")[batch]
        if not np.array_equal(np.asarray(rc["images"].get_many(batch)), expected):
            raise AssertionError("get_many returned different rows than were ingested")
    finally:
        rc.close()
        repo.close()


def bench_reads(ctx: Context) -> None:
    """Section 6: per-sample reads and get_many on the N-image commit vs a memmap."""
    path, cid = ensure_image_repo(ctx)
    npy = ensure_npy(ctx)
    rng = np.random.default_rng(SEED + 2)
    keys = rng.integers(0, ctx.n, size=READ_KEYS).tolist()
    batches = rng.integers(0, ctx.n, size=(BATCHES, BATCH))
    check_reads(path, cid, npy, batches[-1])
    ours = [read_pass(path, cid, keys, batches) for _ in range(ctx.repeat)]
    raw = [ceiling_pass(npy, keys, batches) for _ in range(ctx.repeat)]
    single = len(keys) / min(r["single_s"] for r in ours)
    single_raw = len(keys) / min(r["single_s"] for r in raw)
    many = batches.size / min(r["many_s"] for r in ours)
    many_raw = batches.size / min(r["many_s"] for r in raw)
    first = min(r["first_s"] for r in ours)
    warmup = batches.size / min(r["warmup_s"] for r in ours)
    ctx.log(
        f"[reads] col[k]: {single:,.0f} samples/s (memmap np.array(arr[i]) "
        f"{single_raw:,.0f}/s, ratio {single / single_raw:.2f}x)"
    )
    ctx.log(
        f"[reads] get_many({BATCH}): first call {first * 1000:.2f} ms, steady "
        f"{many:,.0f} samples/s (memmap arr[idx] {many_raw:,.0f}/s, "
        f"ratio {many / many_raw:.2f}x)"
    )
    ctx.add(
        rate_row("reads", "read col[k]", single, TARGET_READ_RATE),
        ceiling_row("reads", "read col[k] vs memmap", single, single_raw),
        Row("reads", f"get_many({BATCH}) first call", first, "s"),
        Row("reads", f"get_many({BATCH}) first {BATCHES} calls (warm-up)", warmup, "/s"),
        rate_row("reads", f"get_many({BATCH}) steady", many, TARGET_GET_MANY_RATE),
        ceiling_row("reads", f"get_many({BATCH}) steady vs memmap", many, many_raw),
    )


def ceiling_verify(npy: Path) -> float:
    """Read the file and hash every row with hashlib: what a full verify must do."""
    t0 = time.perf_counter()
    with open(npy, "rb") as f:
        data = np.lib.format.read_array(f)
    view = memoryview(data.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
    step = data.nbytes // len(data)
    for i in range(0, len(view), step):
        hashlib.blake2b(view[i : i + step], digest_size=32).digest()
    return time.perf_counter() - t0


def bench_verify(ctx: Context) -> None:
    """Section 7: verify(full=True) of the N-image commit vs reading + hashing it."""
    path, _ = ensure_image_repo(ctx)
    npy = ensure_npy(ctx)
    ours, raw = [], []
    for _ in range(ctx.repeat):
        with tc.Repository(path) as repo:
            seconds, report = timed(lambda repo=repo: repo.verify(full=True))
        if not report.ok:
            raise AssertionError(f"verify found problems: {report.problems[:3]}")
        ours.append(seconds)
        raw.append(ceiling_verify(npy))
    rate, ceiling = ctx.n / min(ours), ctx.n / min(raw)
    ctx.log(
        f"[verify] verify(full=True): {rate:,.0f} samples/s (read + blake2b "
        f"{ceiling:,.0f}/s, ratio {rate / ceiling:.2f}x)"
    )
    ctx.add(ceiling_row("verify", "verify(full=True) vs read + hashlib", rate, ceiling, 0.5))


# -- driver -------------------------------------------------------------------------


def run_sections(ctx: Context, only: set[str]) -> None:
    if "ingest" in only or "commit" in only:
        bench_image_ingest(ctx, "ingest" in only, "commit" in only)
    if "ingest" in only:
        bench_label_ingest(ctx)
    if "per-sample" in only:
        bench_per_sample(ctx)
    if "big-commit" in only:
        bench_big_commit(ctx)
    if "open" in only:
        bench_open(ctx)
    if "reads" in only:
        bench_reads(ctx)
    if "verify" in only:
        bench_verify(ctx)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=200_000, help="image samples (default 200000)")
    parser.add_argument(
        "--big", type=int, default=1_000_000, help="records of the big column (default 1000000)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="repeats; the best is kept")
    parser.add_argument(
        "--dir", default=tempfile.gettempdir(), help="where to make the scratch directory"
    )
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.n < BATCH or args.big < 1 or args.repeat < 1:
        parser.error(f"--n must be >= {BATCH}; --big and --repeat >= 1")
    return args


def header(ctx: Context) -> str:
    return (
        f"tensorcask {tc.__version__} core benchmark: n={ctx.n:,} big={ctx.big:,} "
        f"repeat={ctx.repeat} | python {platform.python_version()} numpy {np.__version__} "
        f"| {os.cpu_count()} CPUs | scratch {ctx.scratch}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with scratch_dir(args.dir) as scratch:
        started = time.perf_counter()
        ctx = Context(args.n, args.big, args.repeat, scratch, quiet=args.json)
        ctx.log(header(ctx))
        run_sections(ctx, set(args.only or SECTIONS))
        elapsed = time.perf_counter() - started
        if args.json:
            print(
                json.dumps(
                    {
                        "config": vars(args),
                        "elapsed_s": elapsed,
                        "results": [r.to_dict() for r in ctx.rows],
                    },
                    indent=2,
                )
            )
        else:
            print(
                f"\n{render_table(ctx.rows, SECTIONS)}\n\nratio = speed relative to the reference "
                f"(>1 faster); total {elapsed:.0f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
