"""Benchmark of purges: removing samples from every commit, next to a full copy of the data.

Run from the repository root (the library must be importable, e.g. installed editable)::

    python benchmarks/purge.py                    # 1,000,000 32x32x3 uint8 images + labels
    python benchmarks/purge.py --quick            # 100,000 samples, under two minutes
    python benchmarks/purge.py --backend hdf5     # the images in HDF5 segments instead of memmap
    python benchmarks/purge.py --profile          # also cProfile a third purge of other keys
    python benchmarks/purge.py --json             # results as JSON on stdout

The repository (seeded random ``uint8`` (32, 32, 3) images, every one distinct,
and ``int64`` labels 0-9) is committed in ``--commits`` commits of equal size,
written with ``col.update(keys, batch)`` in chunks. Building it dominates the
run, so it is kept in ``--workdir`` (default ``/tmp/tensorcask-bench-purge``)
and reused by later runs with the same sizes; each run works on a fresh copy
of it (removed at exit), so the kept one is never purged.

What is measured, each once (the full copy twice, the best kept):

``purge``          ``repo.purge("images", keys, reason=...)`` of ``--purge`` (100) random
                   keys: wall time, the report (tombstones, removed, bytes_removed), the bytes
                   written during the call (``/proc/self/io``: ``wchar``, what write calls
                   passed, and ``write_bytes``, page-cache pages dirtied for the disk), and
                   the files whose mtime changed (how many, their sizes).
``purge_content``  ``repo.purge_content(digests, reason=...)`` of the digests of
                   ``--purge`` other random keys, measured the same way.
``copy``           the ceiling a history-rewriting tool pays at least: a copy of every
                   file under ``<repo>/data`` (``shutil.copyfile``, which uses
                   ``sendfile``) into a scratch folder, then ``fsync`` of each copy (a purge
                   is durable when it returns, so the copy is made durable too).
``verify``         ``repo.verify()`` (records and commit chain, not ``full``) before and after.
``reads``          ``get_many`` of ``--reads`` (10,000) random unpurged keys, on two freshly
                   opened repositories before the purges and two after: the first call and
                   the best of 3 more each time, all checked equal. The first open before
                   builds the column tables; the first call after the purges is compared
                   with the second open before (tables loaded from ``cache/`` in both).

Dirty pages are flushed (``os.sync``) before every timed step, so a step never
pays for an earlier one's writes. The purged samples are checked to raise
``PurgedDataError`` in the first commit and the head after the purges.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import itertools
import json
import os
import platform
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from report import remove, scratch_dir, table_line, timed

import tensorcask as tc
from tensorcask.layout import DATA_DIR, LMDB_DATA_FILE

SHAPE = (32, 32, 3)
CHUNK = 10_000  # samples per update() call while building
SEED = 20240611
REASON = "benchmark: GDPR erasure request"
READ_REPEAT = 3
COPY_REPEAT = 2
BUILD_VERSION = 1  # bump when the built repository's contents change
PROFILE_LINES = 30


# -- measurements ---------------------------------------------------------------------


def proc_io() -> dict[str, int]:
    """This process's I/O counters (``/proc/self/io``); empty where there are none."""
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        out[name.strip()] = int(value)
    return out


def io_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if k in before}


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Relative path -> (mtime_ns, size, inode) of every file under ``root``."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(path)
                out[os.path.relpath(path, root)] = (st.st_mtime_ns, st.st_size, st.st_ino)
    return out


def is_segment(rel: str) -> bool:
    """Whether a path relative to the repository is a file of sample data (a memmap or
    HDF5 segment, the LMDB backend's data file)."""
    name = os.path.basename(rel)
    return rel.startswith(DATA_DIR + os.sep) and (
        name.endswith((".seg", ".h5")) or name == LMDB_DATA_FILE
    )


def tree_bytes(root: Path) -> int:
    return sum(size for _, size, _ in snapshot(root).values())


@dataclass
class Step:
    """One measured step: time, I/O counters, files changed."""

    label: str
    seconds: float
    io: dict[str, int]
    changed: dict[str, int] = field(default_factory=dict)  # relative path -> size after
    removed: list[str] = field(default_factory=list)
    result: Any = None

    def changed_under(self, top: str) -> dict[str, int]:
        return {p: s for p, s in self.changed.items() if p.split(os.sep, 1)[0] == top}

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "seconds": self.seconds,
            "io": self.io,
            "files_changed": self.changed,
            "files_removed": self.removed,
        }


def measure(label: str, root: Path | None, fn: Callable[[], Any]) -> Step:
    """Run ``fn`` once after flushing dirty pages; its time, I/O and the files it changed
    under ``root``."""
    os.sync()
    before = snapshot(root) if root is not None else {}
    io0 = proc_io()
    seconds, result = timed(fn)
    delta = io_delta(io0, proc_io())
    step = Step(label, seconds, delta, result=result)
    if root is not None:
        after = snapshot(root)
        step.changed = {p: st[1] for p, st in after.items() if before.get(p) != st}
        step.removed = sorted(set(before) - set(after))
    return step


# -- the repository -----------------------------------------------------------------------


@dataclass
class Built:
    """The kept repository and what its build recorded."""

    path: Path
    n: int
    commits: list[str]
    build_s: float
    reused: bool


def repo_name(args: argparse.Namespace) -> str:
    return f"repo-v{BUILD_VERSION}-n{args.n}-{args.backend}-c{args.commits}-s{SEED}"


def images_chunk(start: int, stop: int) -> np.ndarray:
    """Images of keys ``start:stop``: seeded random bytes (distinct with certainty, in practice)."""
    rng = np.random.default_rng([SEED, start])
    return rng.integers(0, 256, size=(stop - start, *SHAPE), dtype=np.uint8)


def labels_chunk(start: int, stop: int) -> np.ndarray:
    return (np.arange(start, stop, dtype=np.int64) * 7919) % 10


def build_repo(
    path: Path, n: int, commits: int, backend: str, log: Callable[[str], None]
) -> list[str]:
    """``n`` samples in ``commits`` commits of equal size appended on main; the commit ids."""
    repo = tc.init(path, user_name="bench", user_email="bench@example.org")
    ids = []
    try:
        bounds = np.linspace(0, n, commits + 1).astype(int)
        for c, (a, b) in enumerate(itertools.pairwise(bounds)):
            t0 = time.perf_counter()
            with repo.checkout(write=True, branch="main") as co:
                if c == 0:
                    images = co.add_ndarray_column(
                        "images", shape=SHAPE, dtype="uint8", backend=backend
                    )
                    labels = co.add_ndarray_column("labels", shape=(), dtype="int64")
                else:
                    images, labels = co["images"], co["labels"]
                for start in range(int(a), int(b), CHUNK):
                    stop = min(start + CHUNK, int(b))
                    keys = np.arange(start, stop)
                    images.update(keys, images_chunk(start, stop))
                    labels.update(keys, labels_chunk(start, stop))
                ids.append(co.commit(f"samples {a:,}-{b - 1:,}"))
            log(
                f"  commit {c + 1}/{commits}: {b - a:,} samples in {time.perf_counter() - t0:.1f} s"
            )
    finally:
        repo.close()
    return ids


def ensure_repo(args: argparse.Namespace, log: Callable[[str], None]) -> Built:
    """The kept repository for these sizes, built when missing (or ``--rebuild``)."""
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / repo_name(args)
    marker = path.with_suffix(".json")
    if marker.exists() and path.is_dir() and not args.rebuild:
        info = json.loads(marker.read_text())
        log(f"reusing {path} (built in {info['build_s']:.1f} s; --rebuild to build it again)")
        return Built(path, args.n, info["commits"], info["build_s"], True)
    marker.unlink(missing_ok=True)
    remove(path)
    log(
        f"building {path}: {args.n:,} samples ({args.n * np.prod(SHAPE) / 2**30:.2f} GiB of "
        f"images, {args.backend}) in {args.commits} commits"
    )
    seconds, commits = timed(lambda: build_repo(path, args.n, args.commits, args.backend, log))
    os.sync()
    marker.write_text(json.dumps({"commits": commits, "build_s": seconds, "n": args.n}))
    log(f"  built in {seconds:.1f} s")
    return Built(path, args.n, commits, seconds, False)


# -- steps ----------------------------------------------------------------------------------


def full_copy(data: Path, dest: Path) -> tuple[float, float]:
    """Copy every file under ``data`` into ``dest``, then fsync each: (copy s, fsync s)."""
    t0 = time.perf_counter()
    copies = []
    for dirpath, _, names in os.walk(data):
        target = dest / os.path.relpath(dirpath, data)
        target.mkdir(parents=True, exist_ok=True)
        for name in sorted(names):
            shutil.copyfile(os.path.join(dirpath, name), target / name)
            copies.append(target / name)
    t1 = time.perf_counter()
    for path in copies:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return t1 - t0, time.perf_counter() - t1


@dataclass
class Reads:
    first_s: float
    warm_s: float
    checksum: int


def read_pass(path: Path, head: str, keys: np.ndarray) -> Reads:
    """``get_many(keys)`` on a freshly opened repository: first call, then best of 3."""
    os.sync()
    repo = tc.Repository(path)
    try:
        with repo.checkout(commit=head) as rc:
            col = rc["images"]
            first_s, batch = timed(lambda: col.get_many(keys))
            checksum = int(np.asarray(batch).sum(dtype=np.int64))
            warm = []
            for _ in range(READ_REPEAT):
                seconds, _ = timed(lambda: col.get_many(keys))
                warm.append(seconds)
    finally:
        repo.close()
    return Reads(first_s, min(warm), checksum)


def read_passes(
    path: Path, head: str, keys: np.ndarray, when: str, log: Callable[[str], None]
) -> list[Reads]:
    """Two :func:`read_pass` in a row. The first open of the new copy builds the column
    tables (none are cached yet); later opens load them from ``cache/`` (a purge moves no
    row, so they stay valid)."""
    passes = []
    for i in range(2):
        r = read_pass(path, head, keys)
        log(
            f"[reads] {when}, fresh open {i + 1}: get_many({len(keys):,}) first call "
            f"{fmt_seconds(r.first_s)}, again {fmt_seconds(r.warm_s)} (best of {READ_REPEAT})"
        )
        passes.append(r)
    return passes


def check_purged(repo: tc.Repository, commits: list[str], keys: list[int], what: str) -> None:
    """Each purged key raises PurgedDataError in the commit that added it and the head."""
    for commit in (commits[0], commits[-1]):
        with repo.checkout(commit=commit) as rc:
            col = rc["images"]
            for k in keys:
                if k not in col:
                    continue
                try:
                    col[k]
                except tc.PurgedDataError:
                    continue
                raise AssertionError(f"{what}: key {k} still reads in commit {commit[:12]}")


def profiled(fn: Callable[[], Any]) -> tuple[Any, str]:
    profiler = cProfile.Profile()
    result = profiler.runcall(fn)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(PROFILE_LINES)
    return result, out.getvalue()


# -- output -----------------------------------------------------------------------------------


def fmt_bytes(value: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:,.2f} {unit}"
    return f"{value:,.0f} B"


def fmt_seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1.0 else f"{value:.3f} s"


def fmt_share(value: float, ref: float) -> str:
    if ref <= 0:
        return "-"
    share = value / ref
    return f"{share:.2e}" if 0 < share < 1e-3 else f"{share:.4f}"


@dataclass
class Line:
    """A row of the table: a value, its reference, value / reference, and the speed-up."""

    metric: str
    value: str
    reference: str = "-"
    share: str = "-"
    ratio: str = "-"

    def cells(self) -> tuple[str, ...]:
        return (self.metric, self.value, self.reference, self.share, self.ratio)


def time_line(metric: str, seconds: float, ref_label: str, ref: float) -> Line:
    return Line(
        metric,
        fmt_seconds(seconds),
        f"{ref_label} {fmt_seconds(ref)}",
        fmt_share(seconds, ref),
        f"{ref / seconds:,.1f}x" if seconds > 0 else "-",
    )


def bytes_line(metric: str, value: int, ref_label: str, ref: int) -> Line:
    return Line(
        metric,
        fmt_bytes(value),
        f"{ref_label} {fmt_bytes(ref)}",
        fmt_share(value, ref),
        f"{ref / value:,.0f}x" if value > 0 else "-",
    )


def render(lines: list[Line]) -> str:
    header = ("metric", "value", "reference", "value/ref", "ratio")
    rows = [header, *(line.cells() for line in lines)]
    widths = [max(len(c[i]) for c in rows) for i in range(len(header))]
    rule = tuple("-" * w for w in widths)
    return "\n".join(table_line(c, widths) for c in [header, rule, *rows[1:]])


def purge_lines(step: Step, what: str, copy: Step, data_bytes: int, segments: int) -> list[Line]:
    """The rows of one purge: time, report, bytes written, files modified."""
    report = step.result
    touched = {p: size for p, size in step.changed.items() if is_segment(p)}
    other = {p: size for p, size in step.changed.items() if p not in touched}
    lines = [
        time_line(f"{what}: time", step.seconds, "full copy", copy.seconds),
        Line(
            f"{what}: tombstones / removed / kept",
            f"{report.tombstones} / {report.removed} / {report.kept}",
        ),
        bytes_line(f"{what}: bytes_removed (report)", report.bytes_removed, "data/", data_bytes),
    ]
    for key in ("wchar", "write_bytes"):
        if key in step.io:
            lines.append(
                bytes_line(f"{what}: bytes written ({key})", step.io[key], "copy", copy.io[key])
            )
    lines += [
        Line(
            f"{what}: segment files modified",
            f"{len(touched)} of {segments}",
            f"their size {fmt_bytes(sum(touched.values()))}",
        ),
        Line(
            f"{what}: other files modified",
            f"{len(other)}",
            f"their size {fmt_bytes(sum(other.values()))}",
        ),
    ]
    return lines


def describe_files(step: Step) -> str:
    """The files a step modified, with their sizes, for the log."""
    names = [f"{p} ({fmt_bytes(size)})" for p, size in sorted(step.changed.items())]
    names += [f"{p} (removed)" for p in step.removed]
    return ", ".join(names) or "none"


# -- driver ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="samples (1000000)")
    parser.add_argument(
        "--commits", type=int, default=4, help="commits the samples are split into (4)"
    )
    parser.add_argument("--purge", type=int, default=100, help="samples per purge (100)")
    parser.add_argument("--reads", type=int, default=10_000, help="keys per get_many (10000)")
    parser.add_argument(
        "--backend",
        choices=("memmap", "hdf5"),
        default="memmap",
        help="storage of the images (memmap)",
    )
    parser.add_argument("--quick", action="store_true", help="100,000 samples (under two minutes)")
    parser.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), "tensorcask-bench-purge"),
        help="where the built repository is kept between runs, and the scratch copies go",
    )
    parser.add_argument("--rebuild", action="store_true", help="build the kept repository again")
    parser.add_argument(
        "--profile", action="store_true", help="also cProfile a third purge of other keys"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.n = min(args.n, 100_000)
    if args.commits < 1 or args.purge < 1 or args.reads < 1:
        parser.error("--commits, --purge and --reads must be >= 1")
    if args.n < args.commits or args.n < 3 * args.purge + args.reads:
        parser.error("--n must be >= --commits and >= 3 * --purge + --reads")
    return args


def header(args: argparse.Namespace) -> str:
    return (
        f"tensorcask {tc.__version__} purge benchmark: n={args.n:,} images {SHAPE} uint8 "
        f"({args.backend}) + int64 labels, {args.commits} commits, purges of {args.purge} "
        f"| python {platform.python_version()} numpy {np.__version__} | {os.cpu_count()} CPUs"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    started = time.perf_counter()
    log(header(args))
    built = ensure_repo(args, log)
    with scratch_dir(args.workdir, prefix="run-") as scratch:
        return run(args, built, scratch, log, started)


def run(
    args: argparse.Namespace,
    built: Built,
    scratch: Path,
    log: Callable[[str], None],
    started: float,
) -> int:
    work = scratch / "repo"
    seconds, _ = timed(lambda: shutil.copytree(built.path, work, symlinks=True))
    os.sync()
    log(f"working copy {work} made in {seconds:.1f} s")
    data = work / DATA_DIR
    data_bytes, repo_bytes = tree_bytes(data), tree_bytes(work)
    segments = [p for p in snapshot(work) if is_segment(p)]
    log(
        f"  data/ {fmt_bytes(data_bytes)} ({len(segments)} segment files); the whole "
        f"repository {fmt_bytes(repo_bytes)}"
    )
    head = built.commits[-1]

    rng = np.random.default_rng(SEED + args.n)
    picked = rng.choice(args.n, 3 * args.purge + args.reads, replace=False)
    purge_keys = sorted(picked[: args.purge].tolist())
    content_keys = sorted(picked[args.purge : 2 * args.purge].tolist())
    profile_keys = sorted(picked[2 * args.purge : 3 * args.purge].tolist())
    read_keys = np.sort(picked[3 * args.purge :])

    # reads and verify before
    before = read_passes(work, head, read_keys, "before the purges", log)
    repo = tc.Repository(work)
    steps: dict[str, Step] = {}
    profile_text = ""
    try:
        steps["verify-before"] = measure("verify before", None, repo.verify)
        log(f"[verify] before: {fmt_seconds(steps['verify-before'].seconds)}")
        with repo.checkout(commit=head) as rc:
            digests = [rc["images"].digest(k) for k in content_keys]

        # the ceiling: a full copy of data/, best of COPY_REPEAT
        copies = []
        for i in range(COPY_REPEAT):
            dest = scratch / f"copy-{i}"
            step = measure("full copy", None, functools.partial(full_copy, data, dest))
            copy_s, fsync_s = step.result
            log(
                f"[copy] {i + 1}/{COPY_REPEAT}: {fmt_seconds(step.seconds)} (copyfile "
                f"{fmt_seconds(copy_s)}, fsync {fmt_seconds(fsync_s)}), "
                f"wchar {fmt_bytes(step.io.get('wchar', 0))}, "
                f"write_bytes {fmt_bytes(step.io.get('write_bytes', 0))}"
            )
            copies.append(step)
            remove(dest)
        copy = min(copies, key=lambda s: s.seconds)
        copy_only = min(s.result[0] for s in copies)

        # the purges
        purges: tuple[tuple[str, str, Callable[[], Any]], ...] = (
            ("purge", "keys", lambda: repo.purge("images", purge_keys, reason=REASON)),
            ("purge_content", "digests", lambda: repo.purge_content(digests, reason=REASON)),
        )
        for key, what, fn in purges:
            step = steps[key] = measure(key, work, fn)
            log(f"[{key}] {args.purge} {what}: {fmt_seconds(step.seconds)}: {step.result}")
            log(f"  files modified: {describe_files(step)}")
        for key, expect in (("purge", purge_keys), ("purge_content", content_keys)):
            report = steps[key].result
            if report.tombstones != len(expect) or report.removed != len(expect):
                raise AssertionError(f"{key}: unexpected report {report}")
        check_purged(repo, built.commits, purge_keys, "purge")
        check_purged(repo, built.commits, content_keys, "purge_content")
        if args.profile:
            seconds, (_, profile_text) = timed(
                lambda: profiled(lambda: repo.purge("images", profile_keys, reason=REASON))
            )
            log(
                f"[profile] a purge of {args.purge} other keys under cProfile: "
                f"{fmt_seconds(seconds)}"
            )

        steps["verify-after"] = measure("verify after", None, repo.verify)
        log(f"[verify] after: {fmt_seconds(steps['verify-after'].seconds)}")
    finally:
        repo.close()

    after = read_passes(work, head, read_keys, "after the purges", log)
    if {r.checksum for r in before + after} != {before[0].checksum}:
        raise AssertionError("unpurged samples read differently after the purges")

    elapsed = time.perf_counter() - started
    if args.json:
        print(
            json.dumps(
                {
                    "config": vars(args),
                    "data_bytes": data_bytes,
                    "repo_bytes": repo_bytes,
                    "build_s": built.build_s,
                    "build_reused": built.reused,
                    "copy": [s.to_dict() for s in copies],
                    "steps": {k: s.to_dict() for k, s in steps.items()},
                    "reports": {k: vars(steps[k].result) for k in ("purge", "purge_content")},
                    "reads": {
                        "before": [vars(r) for r in before],
                        "after": [vars(r) for r in after],
                    },
                    "elapsed_s": elapsed,
                },
                indent=2,
                default=str,
            )
        )
        return 0
    lines: list[Line] = [
        Line("samples / data/ size", f"{args.n:,}", f"data/ {fmt_bytes(data_bytes)}"),
        Line(
            "full copy of data/ (copyfile + fsync)",
            fmt_seconds(copy.seconds),
            f"copyfile alone {fmt_seconds(copy_only)}",
        ),
    ]
    for key, what in (("purge", "purge"), ("purge_content", "purge_content")):
        lines += purge_lines(steps[key], f"{what} {args.purge}", copy, data_bytes, len(segments))
    lines += [
        time_line(
            "verify() after the purges",
            steps["verify-after"].seconds,
            "before",
            steps["verify-before"].seconds,
        ),
    ]
    rates = (
        (
            "first call, first open after the purges",
            before[1].first_s,  # the first open before built the tables; this one loads them
            after[0].first_s,
        ),
        (
            f"again (best of {READ_REPEAT}, of 2 opens)",
            min(r.warm_s for r in before),
            min(r.warm_s for r in after),
        ),
    )
    for label, ref, seconds in rates:
        lines.append(
            Line(
                f"get_many({args.reads:,}) {label}",
                f"{args.reads / seconds:,.0f}/s",
                f"before {args.reads / ref:,.0f}/s",
                "-",
                f"{ref / seconds:.2f}x",
            )
        )
    built_how = "reused" if built.reused else "built"
    print(
        f"\n{render(lines)}\n\n"
        "value/ref = the figure as a fraction of its reference; ratio = reference / figure "
        "(>1: faster or fewer bytes than the full copy; for reads and verify, >1: faster "
        f"than before the purges).\nrepository {built_how} ({built.build_s:.0f} s to build); "
        f"total {elapsed:.0f} s"
    )
    if profile_text:
        print(f"\ncProfile of a purge of {args.purge} other keys (cumulative):\n{profile_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
