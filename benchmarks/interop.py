"""Import and export throughput (``tensorcask.interop``), each figure next to its ceiling.

Run from the repository root (the library and zarr must be importable)::

    python benchmarks/interop.py                     # --n 200000 --repeat 3 --big-gib 2
    python benchmarks/interop.py --n 50000 --big-gib 1
    python benchmarks/interop.py --only import       # sections: import export memory
    python benchmarks/interop.py --json              # results as JSON on stdout

Data is MNIST-shaped and seeded: ``uint8`` 28x28 images and ``int64`` labels,
written once per format by numpy (``np.savez``), h5py (chunks of 1,024 rows)
and zarr-python (v3, chunks of 1,024 rows).

Sections (``--only`` names):

``import``  ``import_source(repo, FILE)`` into a fresh repository (one commit), per
            format, against the peer library (numpy / h5py / zarr-python) reading the
            same arrays alone: need 0.7x. Beside it, informational, the same work done
            by hand with the public API (read the arrays with the peer library,
            ``col.update(keys, array)`` each, commit): the import machinery's own cost.
``export``  ``export(repo, "main", DEST)`` per format, against the peer library writing
            the same arrays and keys alone (``np.savez``, h5py ``create_dataset``, zarr
            ``create_array`` with the same chunks): need 0.7x. Beside it,
            informational, ``get_many`` of every key then the peer library's write.
``memory``  a sparse ``--big-gib`` GiB HDF5 file (unwritten chunks read as the fill
            value, so it costs little disk) imported in a fresh process; its peak RSS
            growth must stay under a quarter of the file's logical size.

Rates count samples (one image with its label) and MB of sample bytes (10^6).
Each measurement is taken ``--repeat`` times and the best kept; the scratch
directory (a new folder inside ``--dir``) is removed at exit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zarr
from report import Row, ceiling_row, remove, render_table, scratch_dir, timed

import tensorcask as tc
from tensorcask.interop import export, import_source

SECTIONS = ("import", "export", "memory")
FORMATS = ("npz", "hdf5", "zarr")
SUFFIX = {"npz": ".npz", "hdf5": ".h5", "zarr": ".zarr"}
PEERS = {"npz": "numpy", "hdf5": "h5py", "zarr": "zarr-python"}
CHUNK_ROWS = 1024
SEED = 20261204
NEED = 0.7
MEMORY_SHARE = 4  # peak RSS growth must stay under the file size / 4
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Context:
    n: int
    repeat: int
    big_gib: float
    scratch: Path
    quiet: bool
    rows: list[Row] = field(default_factory=list)
    images: np.ndarray = field(init=False)
    labels: np.ndarray = field(init=False)
    _serial: int = 0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(SEED)
        self.images = rng.integers(0, 256, size=(self.n, 28, 28), dtype=np.uint8)
        self.labels = rng.integers(0, 10, size=self.n).astype(np.int64)

    @property
    def nbytes(self) -> int:
        return int(self.images.nbytes + self.labels.nbytes)

    def fresh(self, stem: str) -> Path:
        self._serial += 1
        return self.scratch / f"{stem}-{self._serial}"

    def new_repo(self) -> tc.Repository:
        return tc.init(self.fresh("repo"), user_name="Bench", user_email="bench@example.org")

    def log(self, text: str) -> None:
        print(text, file=sys.stderr if self.quiet else sys.stdout, flush=True)

    def best(self, fn: Callable[[], Any], cleanup: Callable[[], None] | None = None) -> float:
        times = []
        for _ in range(self.repeat):
            seconds, _ = timed(fn)
            times.append(seconds)
            if cleanup is not None:
                cleanup()
        return min(times)

    def rate_rows(self, section: str, what: str, seconds: float, ceiling_s: float) -> None:
        """Rows against the by-hand ceiling (informational: the machinery's own cost)."""
        self.rows.append(
            ceiling_row(
                section, f"{what} samples/s vs by hand", self.n / seconds, self.n / ceiling_s
            )
        )
        self.rows.append(
            ceiling_row(
                section,
                f"{what} MB/s vs by hand",
                self.nbytes / seconds / 1e6,
                self.nbytes / ceiling_s / 1e6,
            )
        )


# -- the peers ------------------------------------------------------------------------


def write_peer(fmt: str, path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` the way a user of numpy / h5py / zarr-python would."""
    if fmt == "npz":
        np.savez(path, **arrays)
    elif fmt == "hdf5":
        with h5py.File(path, "w") as f:
            for name, a in arrays.items():
                f.create_dataset(name, data=a, chunks=(min(CHUNK_ROWS, len(a)), *a.shape[1:]))
    else:
        root = zarr.open_group(path, mode="w", zarr_format=3)
        for name, a in arrays.items():
            root.create_array(
                name, data=a, chunks=(min(CHUNK_ROWS, len(a)), *a.shape[1:]), write_data=True
            )


def read_peer(fmt: str, path: Path) -> dict[str, np.ndarray]:
    """Every array of a file, read whole by numpy / h5py / zarr-python."""
    if fmt == "npz":
        with np.load(path) as z:
            return {name: z[name] for name in z.files}
    if fmt == "hdf5":
        with h5py.File(path, "r") as f:
            return {name: f[name][...] for name in f}
    root = zarr.open_group(path, mode="r")
    return {name: root[name][...] for name in root.array_keys()}


# -- sections -------------------------------------------------------------------------


def bench_import(ctx: Context) -> None:
    for fmt in FORMATS:
        path = ctx.scratch / f"mnist{SUFFIX[fmt]}"
        write_peer(fmt, path, {"images": ctx.images, "labels": ctx.labels})

        def ours(path: Path = path) -> None:
            with ctx.new_repo() as repo:
                res = import_source(repo, path)
                assert res.committed and res.samples == 2 * ctx.n

        def by_hand(fmt: str = fmt, path: Path = path) -> None:
            arrays = read_peer(fmt, path)
            with ctx.new_repo() as repo, repo.checkout(write=True) as co:
                keys = np.arange(ctx.n)
                co.add_ndarray_column("images", shape=(28, 28), dtype="uint8").update(
                    keys, arrays["images"]
                )
                co.add_ndarray_column("labels", shape=(), dtype="int64").update(
                    keys, arrays["labels"]
                )
                co.commit(f"import {path}")

        read_s = ctx.best(lambda fmt=fmt, path=path: read_peer(fmt, path))
        ours_s = ctx.best(ours)
        hand_s = ctx.best(by_hand)
        ctx.rate_rows("import", f"import {fmt}", ours_s, hand_s)
        alone = f"import {fmt} vs {PEERS[fmt]} reading alone"
        ctx.rows.append(ceiling_row("import", alone, ctx.n / ours_s, ctx.n / read_s, NEED))
        ctx.log(
            f"import {fmt}: {ours_s:.3f} s (by hand {hand_s:.3f} s, peer read alone {read_s:.3f} s)"
        )


def bench_export(ctx: Context) -> None:
    repo = ctx.new_repo()
    with repo.checkout(write=True) as co:
        keys = np.arange(ctx.n)
        co.add_ndarray_column("images", shape=(28, 28), dtype="uint8").update(keys, ctx.images)
        co.add_ndarray_column("labels", shape=(), dtype="int64").update(keys, ctx.labels)
        co.commit("mnist")
    try:
        for fmt in FORMATS:
            dest = ctx.scratch / f"out{SUFFIX[fmt]}"

            def clear(dest: Path = dest) -> None:
                remove(dest) if dest.is_dir() else dest.unlink(missing_ok=True)

            def ours(dest: Path = dest) -> None:
                res = export(repo, "main", dest)
                assert res.samples == 2 * ctx.n

            def by_hand(fmt: str = fmt, dest: Path = dest) -> None:
                with repo.checkout() as rc:
                    arrays = {}
                    for name in ("images", "labels"):
                        col = rc[name]
                        keys = col.keys()
                        arrays[name] = col.get_many(keys)
                        arrays[f"{name}.keys"] = np.array(keys, dtype=np.int64)
                write_peer(fmt, dest, arrays)

            peer = {"images": ctx.images, "labels": ctx.labels}

            def peer_write(fmt: str = fmt, dest: Path = dest, peer: Any = peer) -> None:
                write_peer(fmt, dest, peer)

            write_s = ctx.best(peer_write, clear)
            ours_s = ctx.best(ours, clear)
            hand_s = ctx.best(by_hand, clear)
            ctx.rate_rows("export", f"export {fmt}", ours_s, hand_s)
            ctx.rows.append(
                ceiling_row(
                    "export",
                    f"export {fmt} vs {PEERS[fmt]} writing alone",
                    ctx.n / ours_s,
                    ctx.n / write_s,
                    NEED,
                )
            )
            ctx.log(
                f"export {fmt}: {ours_s:.3f} s (by hand {hand_s:.3f} s, "
                f"peer write alone {write_s:.3f} s)"
            )
    finally:
        repo.close()


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    import tensorcask as tc
    from tensorcask.interop import import_source

    def peak_rss():
        # VmHWM belongs to this program's memory map; ru_maxrss would carry the
        # (large) parent's peak across fork and exec
        try:
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    repo = tc.init("repo", user_name="Bench", user_email="bench@example.org")
    base = peak_rss()
    t0 = time.perf_counter()
    res = import_source(repo, "big.h5")
    seconds = time.perf_counter() - t0
    peak = peak_rss()
    print(json.dumps({"bytes": res.nbytes, "seconds": seconds, "growth": peak - base,
                      "peak": peak}))
    """
)


def bench_memory(ctx: Context) -> None:
    side = 512
    n = max(1, int(ctx.big_gib * 2**30 / (side * side * 4)))
    folder = ctx.fresh("big")
    folder.mkdir()
    with h5py.File(folder / "big.h5", "w") as f:  # written here: the importer starts clean
        ds = f.create_dataset("volumes", (n, side, side), "float32", chunks=(4, side, side))
        for i in range(0, n, max(1, n // 16)):
            ds[i] = float(i)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    remove(folder)
    doc = json.loads(done.stdout)
    target = doc["bytes"] / MEMORY_SHARE
    ctx.rows.append(
        Row("memory", "large HDF5 import: peak RSS growth", doc["growth"], "B", target, "", 1.0)
    )
    rate = doc["bytes"] / doc["seconds"] / 1e6
    ctx.rows.append(Row("memory", "large HDF5 import: MB/s", rate, "/s"))
    ctx.log(
        f"memory: imported {doc['bytes'] / 2**30:.1f} GiB in {doc['seconds']:.1f} s, "
        f"peak RSS grew {doc['growth'] / 2**20:.0f} MiB (peak {doc['peak'] / 2**20:.0f} MiB)"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=200_000, help="MNIST-shaped samples")
    p.add_argument("--repeat", type=int, default=3, help="repeats per figure (best kept)")
    p.add_argument("--big-gib", type=float, default=2.0, help="logical size of the large file")
    p.add_argument("--only", nargs="+", choices=SECTIONS, help="run these sections only")
    p.add_argument("--dir", help="where to make the scratch directory")
    p.add_argument("--json", action="store_true", help="print results as JSON on stdout")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runners = {"import": bench_import, "export": bench_export, "memory": bench_memory}
    with scratch_dir(args.dir) as scratch:
        started = time.perf_counter()
        ctx = Context(args.n, args.repeat, args.big_gib, scratch, quiet=args.json)
        ctx.log(f"n={args.n}, repeat={args.repeat}, cpus={os.cpu_count()}")
        for section in SECTIONS:
            if not args.only or section in args.only:
                runners[section](ctx)
        elapsed = time.perf_counter() - started
        if args.json:
            doc = {
                "config": vars(args),
                "elapsed_s": elapsed,
                "results": [r.to_dict() for r in ctx.rows],
            }
            print(json.dumps(doc, indent=2))
        else:
            print(
                f"\n{render_table(ctx.rows, SECTIONS)}\n\nratio = speed relative to the reference "
                f"(>1 faster); total {elapsed:.0f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
