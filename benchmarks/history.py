"""Performance benchmark of tensorcask history operations: diff, merge, branch creation.

Run from the repository root (the library must be importable, e.g. installed editable)::

    python benchmarks/history.py                  # defaults: --n 1000000 --small 100000 --repeat 3
    python benchmarks/history.py --n 200000       # quicker
    python benchmarks/history.py --only diff      # some sections only: diff merge branch
    python benchmarks/history.py --json           # results as JSON on stdout

Every measurement runs on a repository holding one ``int64`` scalar column of
N records (keys ``0..N-1``, value = key), built afresh for each size: ``--n``
and ``--small``, so each figure is shown at both sizes with its growth. A diff
or a merge should cost O(size of the change), not O(N): a figure whose change
size is fixed (one record, a branch) should stay flat as N grows, and one whose
change is 1% of N should grow no faster than the change (10x from 100k to 1M).

Sections (``--only`` names):

``diff``    ``repo.diff(a, b)`` of a commit rewriting N/100 random keys, and of a
            commit rewriting one key; each checked to report exactly those keys.
``merge``   ``repo.merge(theirs, into=ours)`` of two branches made from the same
            commit, each rewriting N/100 random keys (disjoint sets), so neither is
            an ancestor of the other: a three-way merge making a two-parent commit.
            The branches are rebuilt for every repeat; the merged commit is checked
            on a sample of keys from both sides and from the untouched ones.
``branch``  ``repo.create_branch(name, base="main")``, median of 20 calls.

Diffs and merges run on a freshly opened ``tc.Repository`` each repeat, so no
decoded page is cached from an earlier call (the OS file cache stays warm).
Each measurement is taken ``--repeat`` times and the best is kept. A row
passes when the figure meets its target at every size; its ratio is target /
time at the slower size (above 1: faster than the target). The scratch
directory (a new folder inside ``--dir``) is removed at exit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from report import remove, table_line, timed

import tensorcask as tc

SECTIONS = ("diff", "merge", "branch")
COLUMN = "x"
CHUNK = 100_000  # records per update() call
CHANGE_FRACTION = 100  # a "1%" change rewrites N // 100 records
BRANCHES_PER_REPEAT = 20  # create_branch calls per repeat (their median is kept)
VERIFY_SAMPLE = 256  # keys of each kind read back after a merge
SEED = 20240607

TARGET_DIFF_PERCENT_S = 0.100
TARGET_DIFF_ONE_S = 0.010
TARGET_MERGE_S = 1.0
TARGET_BRANCH_S = 0.005


# -- results ------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One row of the final table: what is timed, its target and its change size."""

    key: str
    section: str
    label: str
    target: float
    change: Callable[[int], int]
    """Records the measured change touches on an N-record column (0: none)."""


def percent(n: int) -> int:
    return n // CHANGE_FRACTION


METRICS = (
    Metric("diff-1pct", "diff", "diff, 1% of records changed", TARGET_DIFF_PERCENT_S, percent),
    Metric("diff-1", "diff", "diff, 1 record changed", TARGET_DIFF_ONE_S, lambda n: 1),
    Metric(
        "merge",
        "merge",
        "3-way merge, 1% changed per side",
        TARGET_MERGE_S,
        lambda n: 2 * percent(n),
    ),
    Metric(
        "branch",
        "branch",
        f"create_branch (median of {BRANCHES_PER_REPEAT})",
        TARGET_BRANCH_S,
        lambda n: 0,
    ),
)


@dataclass
class Result:
    """A metric's best time at each size."""

    metric: Metric
    seconds: dict[int, float] = field(default_factory=dict)

    @property
    def sizes(self) -> list[int]:
        return sorted(self.seconds)

    @property
    def growth(self) -> float | None:
        """Time at the largest size / time at the smallest."""
        sizes = self.sizes
        if len(sizes) < 2 or self.seconds[sizes[0]] <= 0:
            return None
        return self.seconds[sizes[-1]] / self.seconds[sizes[0]]

    @property
    def change_growth(self) -> float:
        """How much the change itself grew between the two sizes (1 for a fixed change)."""
        sizes = self.sizes
        small, big = (self.metric.change(s) for s in (sizes[0], sizes[-1]))
        return big / small if small > 0 else 1.0

    @property
    def growth_per_change(self) -> float | None:
        """Growth beyond the change's own growth: about 1 when cost follows the change."""
        growth = self.growth
        return None if growth is None else growth / self.change_growth

    @property
    def ratio(self) -> float | None:
        """Target / time at the slower size (> 1: faster than the target)."""
        worst = max(self.seconds.values(), default=0.0)
        return self.metric.target / worst if worst > 0 else None

    @property
    def status(self) -> str:
        ratio = self.ratio
        if ratio is None:
            return "-"
        return "PASS" if ratio >= 1.0 else "MISS"

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric.key,
            "section": self.metric.section,
            "label": self.metric.label,
            "unit": "s",
            "seconds": {str(n): s for n, s in sorted(self.seconds.items())},
            "changed_records": {str(n): self.metric.change(n) for n in self.sizes},
            "growth": self.growth,
            "change_growth": self.change_growth if len(self.sizes) > 1 else None,
            "growth_per_change": self.growth_per_change,
            "target": self.metric.target,
            "reference_kind": "target",
            "ratio": self.ratio,
            "status": self.status,
        }


def fmt_seconds(value: float) -> str:
    if value < 1.0:
        return f"{value * 1000:.2f} ms"
    return f"{value:.3f} s"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render_table(results: list[Result], sizes: list[int]) -> str:
    """One line per metric, the sizes side by side, as aligned text columns."""
    header = (
        "metric",
        *(f"N={n:,}" for n in sizes),
        "growth",
        "per change",
        "target",
        "ratio",
        "status",
    )
    cells = [
        (
            r.metric.label,
            *(fmt_seconds(r.seconds[n]) if n in r.seconds else "-" for n in sizes),
            fmt_ratio(r.growth),
            fmt_ratio(r.growth_per_change),
            f"<= {fmt_seconds(r.metric.target)}",
            fmt_ratio(r.ratio),
            r.status,
        )
        for r in results
    ]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    rule = tuple("-" * w for w in widths)
    return "\n".join(table_line(c, widths) for c in [header, rule, *cells])


# -- run context ----------------------------------------------------------------


@dataclass
class Context:
    """Arguments, scratch space and the results sections add to."""

    sizes: list[int]
    repeat: int
    scratch: Path
    quiet: bool
    results: dict[str, Result] = field(default_factory=dict)
    _serial: int = 0

    def fresh_path(self, stem: str) -> Path:
        self._serial += 1
        return self.scratch / f"{stem}-{self._serial}"

    def log(self, text: str) -> None:
        print(text, file=sys.stderr if self.quiet else sys.stdout, flush=True)

    def record(self, key: str, n: int, seconds: float) -> None:
        metric = next(m for m in METRICS if m.key == key)
        self.results.setdefault(key, Result(metric)).seconds[n] = seconds


def build_repo(path: Path, n: int) -> str:
    """A repository whose main holds ``n`` int64 records (value = key); the commit id."""
    repo = tc.init(path, user_name="bench", user_email="bench@example.org")
    co = repo.checkout(write=True, branch="main")
    try:
        col = co.add_ndarray_column(COLUMN, shape=(), dtype="int64")
        for start in range(0, n, CHUNK):
            stop = min(start + CHUNK, n)
            col.update(np.arange(start, stop), np.arange(start, stop, dtype=np.int64))
        return co.commit(f"{n} records")
    finally:
        co.close()
        repo.close()


def rewrite(repo: tc.Repository, branch: str, keys: np.ndarray, values: np.ndarray) -> str:
    """Write ``values`` under ``keys`` on ``branch`` and commit; the commit id."""
    co = repo.checkout(write=True, branch=branch)
    try:
        col = co[COLUMN]
        for start in range(0, len(keys), CHUNK):
            col.update(keys[start : start + CHUNK], values[start : start + CHUNK])
        return co.commit(f"rewrite {len(keys)} records")
    finally:
        co.close()


def cold_diff(path: Path, a: str, b: str) -> tuple[float, float, tc.Diff]:
    """(first diff on a fresh Repository, the same diff again, the diff)."""
    repo = tc.Repository(path)
    try:
        first, result = timed(lambda: repo.diff(a, b))
        again, _ = timed(lambda: repo.diff(a, b))
    finally:
        repo.close()
    return first, again, result


def check_diff(result: tc.Diff, keys: set[int], what: str) -> None:
    """The diff must report exactly ``keys`` changed in the column, and nothing else."""
    if set(result.columns) != {COLUMN} or result.added_columns or result.removed_columns:
        raise AssertionError(f"{what}: diff touches other columns: {result}")
    change = result.columns[COLUMN]
    if change.added or change.removed:
        raise AssertionError(
            f"{what}: diff reports {len(change.added)} added, {len(change.removed)} removed keys"
        )
    if set(change.changed) != keys:
        missing, extra = len(keys - change.changed), len(change.changed - keys)
        raise AssertionError(
            f"{what}: diff reports {len(change.changed)} changed keys, expected {len(keys)} "
            f"({missing} missing, {extra} extra)"
        )


# -- sections -----------------------------------------------------------------------


def bench_diff(ctx: Context, n: int, path: Path, base: str, rng: np.random.Generator) -> None:
    """Commit a 1% change then a 1-record change on main; time the diff of each."""
    keys = np.sort(rng.choice(n, percent(n), replace=False))
    one = int(rng.integers(n))
    repo = tc.Repository(path)
    try:
        step_s, percent_commit = timed(lambda: rewrite(repo, "main", keys, keys + n))
        one_commit = rewrite(repo, "main", np.array([one]), np.array([one + 2 * n]))
    finally:
        repo.close()
    ctx.log(f"  committed a {len(keys):,}-record change in {step_s:.2f} s")
    cases = (
        ("diff-1pct", base, percent_commit, set(keys.tolist()), f"{len(keys):,}-record change"),
        ("diff-1", percent_commit, one_commit, {one}, "1-record change"),
    )
    for key, a, b, expected, what in cases:
        first, again = [], []
        for _ in range(ctx.repeat):
            cold_s, warm_s, result = cold_diff(path, a, b)
            check_diff(result, expected, what)
            first.append(cold_s)
            again.append(warm_s)
        ctx.record(key, n, min(first))
        ctx.log(
            f"[diff] {n:>9,} records, {what}: {min(first) * 1000:.2f} ms "
            f"(second call on the same Repository {min(again) * 1000:.2f} ms)"
        )


def make_sides(path: Path, base: str, n: int, rng: np.random.Generator, tag: int) -> dict[str, Any]:
    """Two branches off ``base`` rewriting disjoint random N/100-key sets; their heads."""
    picked = rng.choice(n, 2 * percent(n), replace=False)
    ours_keys, theirs_keys = np.sort(picked[: percent(n)]), np.sort(picked[percent(n) :])
    ours, theirs = f"ours-{tag}", f"theirs-{tag}"
    repo = tc.Repository(path)
    try:
        repo.create_branch(ours, base=base)
        repo.create_branch(theirs, base=base)
        ours_head = rewrite(repo, ours, ours_keys, ours_keys + 2 * n)
        theirs_head = rewrite(repo, theirs, theirs_keys, theirs_keys + 3 * n)
    finally:
        repo.close()
    return {
        "ours": ours,
        "theirs": theirs,
        "heads": (ours_head, theirs_head),
        "ours_keys": ours_keys,
        "theirs_keys": theirs_keys,
        "picked": picked,
    }


def check_merge(
    repo: tc.Repository, merged: str, n: int, sides: dict[str, Any], rng: np.random.Generator
) -> None:
    """The merge commit has both heads as parents and, on a sample, both sides' values."""
    parents = repo.log(merged, limit=1)[0].parents
    if tuple(parents) != sides["heads"]:
        raise AssertionError(f"merge commit parents {parents} are not the two branch heads")
    untouched = rng.integers(0, n, size=4 * VERIFY_SAMPLE)
    untouched = untouched[~np.isin(untouched, sides["picked"])][:VERIFY_SAMPLE]
    samples = (
        ("ours", rng.choice(sides["ours_keys"], VERIFY_SAMPLE), 2 * n),
        ("theirs", rng.choice(sides["theirs_keys"], VERIFY_SAMPLE), 3 * n),
        ("untouched", untouched, 0),
    )
    rc = repo.checkout(commit=merged)
    try:
        col = rc[COLUMN]
        if len(col) != n:
            raise AssertionError(f"merged column holds {len(col):,} records, expected {n:,}")
        for what, keys, offset in samples:
            got = np.asarray(col.get_many(keys))
            if not np.array_equal(got, keys + offset):
                bad = int(np.count_nonzero(got != keys + offset))
                raise AssertionError(f"merged commit: {bad} of {len(keys)} {what} keys wrong")
    finally:
        rc.close()


def bench_merge(ctx: Context, n: int, path: Path, base: str, rng: np.random.Generator) -> None:
    """Per repeat: two fresh diverging branches, then a timed merge on a fresh Repository."""
    times, build = [], []
    for tag in range(ctx.repeat):
        t0 = time.perf_counter()
        sides = make_sides(path, base, n, rng, tag)
        build.append(time.perf_counter() - t0)
        repo = tc.Repository(path)
        try:
            t0 = time.perf_counter()
            merged = repo.merge(sides["theirs"], into=sides["ours"])
            times.append(time.perf_counter() - t0)
            check_merge(repo, merged, n, sides, rng)
        finally:
            repo.close()
    ctx.record("merge", n, min(times))
    ctx.log(
        f"[merge] {n:>9,} records, {percent(n):,} changed per side: {min(times) * 1000:.1f} ms "
        f"(building both branches took {min(build):.2f} s)"
    )


def bench_branch(ctx: Context, n: int, path: Path) -> None:
    """Median of BRANCHES_PER_REPEAT create_branch calls, best of the repeats."""
    medians = []
    repo = tc.Repository(path)
    try:
        for r in range(ctx.repeat):
            names = [f"branch-{r}-{i}" for i in range(BRANCHES_PER_REPEAT)]
            times = []
            for name in names:
                t0 = time.perf_counter()
                repo.create_branch(name, base="main")
                times.append(time.perf_counter() - t0)
            medians.append(statistics.median(times))
            heads = repo.branches
            if any(heads.get(name) != heads["main"] for name in names):
                raise AssertionError("a created branch does not point at main's head")
    finally:
        repo.close()
    ctx.record("branch", n, min(medians))
    ctx.log(f"[branch] {n:>9,} records: create_branch {min(medians) * 1000:.3f} ms (median)")


def bench_size(ctx: Context, n: int, only: set[str]) -> None:
    """All selected sections on a fresh N-record repository, removed afterwards."""
    path = ctx.fresh_path(f"history-{n}")
    try:
        build_s, base = timed(lambda: build_repo(path, n))
        ctx.log(f"  built a {n:,}-record repository in {build_s:.1f} s")
        rng = np.random.default_rng(SEED + n)
        if "branch" in only:
            bench_branch(ctx, n, path)
        if "merge" in only:
            bench_merge(ctx, n, path, base, rng)
        if "diff" in only:
            bench_diff(ctx, n, path, base, rng)
    finally:
        remove(path)


# -- driver -------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--n", type=int, default=1_000_000, help="records of the column (default 1000000)"
    )
    parser.add_argument(
        "--small",
        type=int,
        default=100_000,
        help="records of the comparison column (default 100000; 0: --n only)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="repeats; the best is kept")
    parser.add_argument(
        "--dir", default=tempfile.gettempdir(), help="where to make the scratch directory"
    )
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.n < 4 * CHANGE_FRACTION or args.repeat < 1:
        parser.error(f"--n must be >= {4 * CHANGE_FRACTION} and --repeat >= 1")
    if args.small and args.small < 4 * CHANGE_FRACTION:
        parser.error(f"--small must be 0 or >= {4 * CHANGE_FRACTION}")
    return args


def header(ctx: Context) -> str:
    return (
        f"tensorcask {tc.__version__} history benchmark: sizes "
        f"{', '.join(f'{n:,}' for n in ctx.sizes)} records, repeat={ctx.repeat} "
        f"| python {platform.python_version()} numpy {np.__version__} "
        f"| {os.cpu_count()} CPUs | scratch {ctx.scratch}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the scratch dir is removed
    scratch = Path(tempfile.mkdtemp(prefix="tensorcask-bench-", dir=args.dir))
    sizes = sorted({args.n, args.small} - {0})
    only = set(args.only or SECTIONS)
    try:
        started = time.perf_counter()
        ctx = Context(sizes, args.repeat, scratch, quiet=args.json)
        ctx.log(header(ctx))
        for n in sizes:
            bench_size(ctx, n, only)
        elapsed = time.perf_counter() - started
        results = [ctx.results[m.key] for m in METRICS if m.key in ctx.results]
        if args.json:
            print(
                json.dumps(
                    {
                        "config": vars(args),
                        "sizes": sizes,
                        "elapsed_s": elapsed,
                        "results": [r.to_dict() for r in results],
                    },
                    indent=2,
                )
            )
        else:
            print(
                f"\n{render_table(results, sizes)}\n\n"
                "growth = time at the largest N / at the smallest; per change = growth divided "
                "by the change's own growth\n(~1: cost follows the change, not N). ratio = "
                f"target / time at the slower size (>1 faster); total {elapsed:.0f} s"
            )
    finally:
        remove(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
