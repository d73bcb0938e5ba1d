"""Benchmark of the tensorcask training loaders, each figure next to its ceiling.

Run from the repository root (the library must be importable, e.g. installed editable)::

    python benchmarks/loaders.py                   # defaults: --n 200000 --big 2000000 --repeat 3
    python benchmarks/loaders.py --n 50000 --big 500000
    python benchmarks/loaders.py --only torch-map  # some sections only
    python benchmarks/loaders.py --json            # results as JSON on stdout

Data is MNIST-shaped and seeded: ``uint8`` 28x28 images and ``int64`` labels,
committed to a repository and saved as ``.npy`` files for the ceilings. Every
loader reads one full epoch, shuffled, in batches of 256 (checksums are always
verified by tensorcask). Each figure is printed next to a ceiling measured in
the same run (the same loop over the ``.npy`` files opened with
``np.load(..., mmap_mode="r")``, no version control) or a fixed target, with
their ratio. Ratios are always "speed relative to the reference": above 1 is
faster (or smaller, for memory). A ceiling row passes at the fraction it names.

Sections (``--only`` names):

``torch-map``   ``DataLoader(repo_dataset(...), batch_size=256, shuffle=True,
                num_workers=W)`` for each ``--workers`` W; ceiling: the same
                DataLoader over a memmap-backed map-style dataset whose
                ``__getitems__`` gathers the batch with one fancy index.
``torch-iter``  ``DataLoader(repo_iterable_dataset(..., shuffle=True, batch_size=256),
                batch_size=256, num_workers=W)``; ceiling: the map-style memmap
                ceiling with the same W.
``tf``          ``tensorflow.repo_dataset(..., shuffle=True).batch(256).prefetch(AUTOTUNE)``;
                ceiling: ``Dataset.range(n).shuffle(n).batch(256)`` mapped through a
                ``tf.numpy_function`` memmap gather; ``from_tensor_slices`` of the
                in-memory arrays shown for information.
``memory``      peak RSS (``VmHWM``) of each DataLoader worker after ``--batches``
                batches, on repositories of ``--n`` and ``--big`` samples (8x8 images
                and labels), measured in a fresh process; growth per sample between
                the two sizes, next to the memmap ceiling's.

Each speed is taken ``--repeat`` times (tensorcask and its ceiling alternating)
and the best is kept. Every timed epoch is checked: sample count and the sums
of all labels and all pixels must match the data. The scratch directory (a new
folder inside ``--dir``) is removed at exit.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from report import Row, ceiling_row, remove, render_table, timed
from torch.utils.data import DataLoader, Dataset

import tensorcask as tc

SECTIONS = ("torch-map", "torch-iter", "tf", "memory")
BATCH = 256  # batch size of every loader
CHUNK = 100_000  # samples per update() call when building repositories
SEED = 20240601  # data
SHUFFLE_SEED = 17  # loaders
MEMORY_SHAPE = (8, 8)  # image shape of the memory section's repositories

NEED_MAP = 0.7  # torch map-style vs the memmap ceiling
NEED_ITER = 0.8  # torch iterable vs the map-style memmap ceiling
NEED_TF = 0.7  # tf.data vs the numpy_function memmap ceiling
TARGET_GROWTH = 16.0  # bytes of worker peak RSS per sample, above the memmap ceiling's

COLUMNS = ["images", "labels"]
STATUS_FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem")


# -- results ------------------------------------------------------------------


# -- run context ----------------------------------------------------------------


@dataclass
class Data:
    """One data set: a committed repository and the same arrays as ``.npy`` files."""

    n: int
    repo: Path
    cid: str
    images_npy: Path
    labels_npy: Path
    totals: tuple[int, int, int]  # samples, sum of labels, sum of pixels


@dataclass
class Context:
    """Arguments, scratch space, the data sets and the results sections share."""

    n: int
    big: int
    repeat: int
    workers: list[int]
    batches: int
    scratch: Path
    quiet: bool
    rows: list[Row] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    main_data: Data | None = None
    map_ceilings: dict[int, float] = field(default_factory=dict)

    def log(self, text: str) -> None:
        print(text, file=sys.stderr if self.quiet else sys.stdout, flush=True)

    def add(self, *rows: Row) -> None:
        self.rows.extend(rows)


# -- data -------------------------------------------------------------------------


def make_arrays(n: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    return images, labels


def build_repo(path: Path, images: np.ndarray, labels: np.ndarray) -> str:
    """A repository with ``images`` and ``labels`` columns (keys 0..n-1); its commit id."""
    repo = tc.init(path, user_name="bench", user_email="bench@example.org")
    co = repo.checkout(write=True)
    try:
        for name, data in (("images", images), ("labels", labels)):
            col = co.add_ndarray_column(name, shape=data.shape[1:], dtype=str(data.dtype))
            for start in range(0, len(data), CHUNK):
                stop = min(start + CHUNK, len(data))
                col.update(np.arange(start, stop), data[start:stop])
        return co.commit(f"{len(images)} samples")
    finally:
        co.close()
        repo.close()


def make_data(ctx: Context, stem: str, n: int, shape: tuple[int, ...], seed: int) -> Data:
    images, labels = make_arrays(n, shape, seed)
    folder = ctx.scratch / stem
    folder.mkdir()
    images_npy, labels_npy = folder / "images.npy", folder / "labels.npy"
    np.save(images_npy, images)
    np.save(labels_npy, labels)
    seconds, cid = timed(lambda: build_repo(folder / "repo", images, labels))
    totals = (n, int(labels.sum()), int(images.sum(dtype=np.int64)))
    os.sync()  # no writeback of the fresh files competing with the timed reads
    ctx.log(
        f"  built {n:,}-sample repository ({'x'.join(map(str, shape))} images) in {seconds:.1f} s"
    )
    return Data(n, folder / "repo", cid, images_npy, labels_npy, totals)


def ensure_main_data(ctx: Context) -> Data:
    if ctx.main_data is None:
        ctx.main_data = make_data(ctx, "main", ctx.n, (28, 28), SEED)
    return ctx.main_data


# -- the ceiling dataset ----------------------------------------------------------


class MemmapDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The torch ceiling: images and labels gathered from ``np.load(mmap_mode="r")``.

    ``__getitems__`` does one fancy-index gather per array (in the order the
    sampler gave) and returns per-sample tuples of tensors, as the tensorcask
    dataset does, so that the collate work is the same. The arrays are opened
    lazily in the process that reads.
    """

    def __init__(self, images_npy: Path, labels_npy: Path) -> None:
        self.paths = (str(images_npy), str(labels_npy))
        self._arrays: tuple[int, np.ndarray, np.ndarray] | None = None
        self._n = len(np.load(images_npy, mmap_mode="r"))

    def __getstate__(self) -> dict[str, Any]:
        return {"paths": self.paths, "_arrays": None, "_n": self._n}

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None or self._arrays[0] != os.getpid():
            images, labels = (np.load(p, mmap_mode="r") for p in self.paths)
            self._arrays = (os.getpid(), images, labels)
        return self._arrays[1], self._arrays[2]

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self._open()
        at = np.asarray(indices, dtype=np.intp)
        batch = torch.from_numpy(np.asarray(images[at])).unbind(0)
        targets = torch.from_numpy(np.asarray(labels[at])).unbind(0)
        return list(zip(batch, targets, strict=True))


# -- timed passes -------------------------------------------------------------------


def consume(batches: Iterable[Any], to_numpy: bool = False) -> tuple[int, int, int]:
    """Read every batch: (samples, sum of labels, sum of pixels)."""
    count = label_sum = pixel_sum = 0
    for images, labels in batches:
        if to_numpy:  # tf tensors
            images, labels = images.numpy(), labels.numpy()
            pixel_sum += int(images.sum(dtype=np.int64))
        else:
            pixel_sum += int(images.sum(dtype=torch.int64))
        count += len(labels)
        label_sum += int(labels.sum())
    return count, label_sum, pixel_sum


def major_faults() -> int:
    """Major page faults so far of this process and its reaped children (DataLoader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
    return own + resource.getrusage(resource.RUSAGE_CHILDREN).ru_majflt


def epoch_rate(what: str, data: Data, loader: Iterable[Any], tf: bool = False) -> tuple[float, int]:
    """Samples per second of one full epoch of ``loader`` (checked against the data),
    and the major page faults taken meanwhile (reads that went to disk)."""
    faults = major_faults()
    seconds, totals = timed(lambda: consume(loader, tf))
    faults = major_faults() - faults
    if totals != data.totals:
        raise AssertionError(
            f"{what}: one epoch gave (samples, label sum, pixel sum) = {totals}, "
            f"expected {data.totals}"
        )
    return data.n / seconds, faults


def best_rates(
    ctx: Context, data: Data, runs: dict[str, Callable[[int], Iterable[Any]]], tf: bool = False
) -> dict[str, float]:
    """Best epoch rate of each run over ``ctx.repeat`` repeats; the runs alternate."""
    rates: dict[str, list[tuple[float, int]]] = {name: [] for name in runs}
    for r in range(ctx.repeat):
        for name, make in runs.items():
            rates[name].append(epoch_rate(name, data, make(r), tf))
    for name, values in rates.items():
        shown = ", ".join(
            f"{rate:,.0f}" + (f" ({faults:,} major faults)" if faults else "")
            for rate, faults in values
        )
        ctx.log(f"    {name}: {shown} samples/s")
    return {name: max(rate for rate, _ in values) for name, values in rates.items()}


def torch_loaders() -> tuple[Any, str]:
    """The tensorcask torch adapter module, or None (with the reason) if it does not import."""
    try:
        from tensorcask.loaders import torch as adapter
    except Exception as exc:  # the adapter may be unfinished
        return None, f"tensorcask.loaders.torch does not import: {exc!r}"
    missing = [f for f in ("repo_dataset", "repo_iterable_dataset") if not hasattr(adapter, f)]
    if missing:
        return None, f"tensorcask.loaders.torch has no {', '.join(missing)}"
    return adapter, ""


def raw_map_loader(data: Data, workers: int) -> Callable[[int], Iterable[Any]]:
    ds = MemmapDataset(data.images_npy, data.labels_npy)

    def make(repeat: int) -> Iterable[Any]:
        torch.manual_seed(SHUFFLE_SEED + repeat)
        return DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers)

    return make


# -- sections -----------------------------------------------------------------------


def bench_torch_map(ctx: Context) -> None:
    """Section 1: map-style dataset in a shuffling DataLoader vs the memmap dataset."""
    data = ensure_main_data(ctx)
    adapter, why = torch_loaders()
    if adapter is None:
        ctx.missing.append(f"torch-map: {why}")
        ctx.log(f"[torch-map] skipped: {why}")
        return
    seconds, ds = timed(lambda: adapter.repo_dataset(data.repo, COLUMNS, commit=data.cid))
    ctx.log(f"[torch-map] repo_dataset() built in {seconds * 1000:.1f} ms: {ds!r}")
    check_map_dataset(ds, data)
    for workers in ctx.workers:

        def ours(repeat: int, workers: int = workers) -> Iterable[Any]:
            torch.manual_seed(SHUFFLE_SEED + repeat)
            return DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers)

        ctx.log(f"  [torch-map] W={workers}, one epoch per run, best of {ctx.repeat}:")
        rates = best_rates(
            ctx, data, {"repo_dataset": ours, "memmap": raw_map_loader(data, workers)}
        )
        rate, ceiling = rates["repo_dataset"], rates["memmap"]
        ctx.map_ceilings[workers] = ceiling
        ctx.log(
            f"[torch-map] W={workers}: repo_dataset {rate:,.0f} samples/s, memmap ceiling "
            f"{ceiling:,.0f} samples/s, ratio {rate / ceiling:.2f}x"
        )
        ctx.add(
            ceiling_row(
                "torch-map", f"torch map-style W={workers} vs memmap", rate, ceiling, NEED_MAP
            )
        )


def check_map_dataset(ds: Any, data: Data) -> None:
    """The dataset's batched fetch returns the ingested rows (untimed)."""
    at = np.random.default_rng(SEED + 1).permutation(data.n)[:BATCH]
    got = ds.__getitems__(at.tolist())
    want = MemmapDataset(data.images_npy, data.labels_npy).__getitems__(at.tolist())
    for (x, y), (wx, wy) in zip(got, want, strict=True):
        if not (torch.equal(x, wx) and torch.equal(y, wy)):
            raise AssertionError("repo_dataset returned different samples than were ingested")


def bench_torch_iter(ctx: Context) -> None:
    """Section 2: iterable dataset (shuffles itself) vs the map-style memmap ceiling."""
    data = ensure_main_data(ctx)
    adapter, why = torch_loaders()
    if adapter is None:
        ctx.missing.append(f"torch-iter: {why}")
        ctx.log(f"[torch-iter] skipped: {why}")
        return
    seconds, it = timed(
        lambda: adapter.repo_iterable_dataset(
            data.repo, COLUMNS, commit=data.cid, shuffle=True, seed=SHUFFLE_SEED, batch_size=BATCH
        )
    )
    ctx.log(f"[torch-iter] repo_iterable_dataset() built in {seconds * 1000:.1f} ms: {it!r}")
    for workers in ctx.workers:

        def ours(repeat: int, workers: int = workers) -> Iterable[Any]:
            it.set_epoch(repeat)
            return DataLoader(it, batch_size=BATCH, num_workers=workers)

        runs: dict[str, Callable[[int], Iterable[Any]]] = {"repo_iterable_dataset": ours}
        if workers not in ctx.map_ceilings:
            runs["memmap"] = raw_map_loader(data, workers)
        ctx.log(f"  [torch-iter] W={workers}, one epoch per run, best of {ctx.repeat}:")
        rates = best_rates(ctx, data, runs)
        ceiling = ctx.map_ceilings.setdefault(workers, rates.get("memmap", 0.0))
        rate = rates["repo_iterable_dataset"]
        ctx.log(
            f"[torch-iter] W={workers}: repo_iterable_dataset {rate:,.0f} samples/s, "
            f"map-style memmap ceiling {ceiling:,.0f} samples/s, ratio {rate / ceiling:.2f}x"
        )
        ctx.add(
            ceiling_row(
                "torch-iter", f"torch iterable W={workers} vs memmap", rate, ceiling, NEED_ITER
            )
        )


def bench_tf(ctx: Context) -> None:
    """Section 3: the tf.data source vs a numpy_function memmap gather pipeline."""
    data = ensure_main_data(ctx)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        from tensorcask.loaders.tensorflow import repo_dataset as tf_repo_dataset
    except Exception as exc:  # the adapter may be unfinished
        tf_repo_dataset = None
        why = f"tensorcask.loaders.tensorflow.repo_dataset does not import: {exc!r}"
        ctx.missing.append(f"tf: {why}")
        ctx.log(f"[tf] tensorcask adapter skipped: {why}")
    autotune = tf.data.AUTOTUNE
    images = np.load(data.images_npy, mmap_mode="r")
    labels = np.load(data.labels_npy, mmap_mode="r")

    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(images[idx]), np.asarray(labels[idx])

    def raw(repeat: int) -> Iterable[Any]:
        return (
            tf.data.Dataset.range(data.n)
            .shuffle(data.n, seed=SHUFFLE_SEED + repeat)
            .batch(BATCH)
            .map(
                lambda idx: tf.numpy_function(gather, [idx], [tf.uint8, tf.int64]),
                num_parallel_calls=autotune,
            )
            .prefetch(autotune)
        )

    in_memory = (np.load(data.images_npy), np.load(data.labels_npy))

    def slices(repeat: int) -> Iterable[Any]:
        return (
            tf.data.Dataset.from_tensor_slices(in_memory)
            .shuffle(data.n, seed=SHUFFLE_SEED + repeat)
            .batch(BATCH)
        )

    runs: dict[str, Callable[[int], Iterable[Any]]] = {}
    if tf_repo_dataset is not None:

        def ours(repeat: int) -> Iterable[Any]:
            # a new seed per repeat, as the ceilings reshuffle per repeat
            ds = tf_repo_dataset(
                data.repo, COLUMNS, commit=data.cid, shuffle=True, seed=SHUFFLE_SEED + repeat
            )
            return ds.batch(BATCH).prefetch(autotune)

        runs["tf repo_dataset"] = ours
    runs["numpy_function memmap"] = raw
    runs["from_tensor_slices"] = slices
    ctx.log(f"  [tf] one epoch per run, best of {ctx.repeat}:")
    rates = best_rates(ctx, data, runs, tf=True)
    ceiling = rates["numpy_function memmap"]
    if tf_repo_dataset is not None:
        rate = rates["tf repo_dataset"]
        ctx.log(
            f"[tf] repo_dataset {rate:,.0f} samples/s, numpy_function memmap ceiling "
            f"{ceiling:,.0f} samples/s, ratio {rate / ceiling:.2f}x"
        )
        ctx.add(ceiling_row("tf", "tf.data repo_dataset vs memmap", rate, ceiling, NEED_TF))
    ctx.log(f"[tf] from_tensor_slices (in memory): {rates['from_tensor_slices']:,.0f} samples/s")
    ctx.add(
        Row("tf", "tf.data numpy_function memmap (ceiling)", ceiling, "/s"),
        Row("tf", "tf.data from_tensor_slices, in memory", rates["from_tensor_slices"], "/s"),
    )


# -- memory ---------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """The memory fields of ``/proc/<pid>/status``, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in STATUS_FIELDS:
                out[name] = int(rest.split()[0]) * 1024  # kB
    return out


def record_pid(folder: str, worker_id: int) -> None:
    """``worker_init_fn``: leave this worker's pid where the probe finds it."""
    Path(folder, f"worker-{worker_id}").write_text(str(os.getpid()))


def memory_probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: ``spec["batches"]`` batches of one DataLoader, then
    read each (still running) worker's ``/proc/<pid>/status``."""
    kind, workers = spec["kind"], spec["workers"]
    if kind == "memmap":
        ds: Any = MemmapDataset(Path(spec["images_npy"]), Path(spec["labels_npy"]))
    else:
        from tensorcask.loaders import torch as adapter

        if kind == "map":
            ds = adapter.repo_dataset(spec["repo"], COLUMNS, commit=spec["cid"])
        else:
            ds = adapter.repo_iterable_dataset(
                spec["repo"],
                COLUMNS,
                commit=spec["cid"],
                shuffle=True,
                seed=SHUFFLE_SEED,
                batch_size=BATCH,
            )
    pids = Path(tempfile.mkdtemp(prefix="pids-", dir=spec["scratch"]))
    loader = DataLoader(
        ds,
        batch_size=BATCH,
        shuffle=kind != "iter",
        num_workers=workers,
        worker_init_fn=functools.partial(record_pid, str(pids)),
    )
    batches: Iterator[Any] = iter(loader)
    seen = 0
    for _ in range(spec["batches"]):
        try:
            seen += len(next(batches)[1])
        except StopIteration:
            break
    status = [proc_status(int(p.read_text())) for p in sorted(pids.iterdir())]
    main = proc_status(os.getpid())
    del batches  # shuts the workers down
    remove(pids)
    return {"samples": seen, "workers": status, "main": main}


def run_probe(ctx: Context, spec: dict[str, Any]) -> dict[str, Any]:
    spec = {
        **spec,
        "scratch": str(ctx.scratch),
        "workers": max(ctx.workers),
        "batches": ctx.batches,
    }
    out = subprocess.run(
        [sys.executable, __file__, "--probe", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory probe {spec['kind']} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_memory(ctx: Context) -> None:
    """Section 4: peak RSS of DataLoader workers at --n and --big samples."""
    workers = max(ctx.workers)
    if workers == 0:
        ctx.log("[memory] skipped: needs --workers with a value > 0")
        return
    adapter, why = torch_loaders()
    kinds = ["memmap"]
    if adapter is None:
        ctx.missing.append(f"memory: {why}")
        ctx.log(f"[memory] tensorcask datasets skipped: {why}")
    else:
        kinds = ["map", "iter", "memmap"]
    sizes = [ctx.n, ctx.big]
    data = {
        n: make_data(ctx, f"memory-{n}", n, MEMORY_SHAPE, SEED + 2 + i) for i, n in enumerate(sizes)
    }
    if adapter is not None:  # the first open saves the column tables; measure later opens
        for d in data.values():
            adapter.repo_dataset(d.repo, COLUMNS, commit=d.cid)
    peak: dict[tuple[str, int], dict[str, float]] = {}
    for n in sizes:
        d = data[n]
        spec = {
            "repo": str(d.repo),
            "cid": d.cid,
            "images_npy": str(d.images_npy),
            "labels_npy": str(d.labels_npy),
        }
        for kind in kinds:
            result = run_probe(ctx, {**spec, "kind": kind})
            worst = {f: max(w.get(f, 0) for w in result["workers"]) for f in STATUS_FIELDS}
            peak[kind, n] = worst
            ctx.log(
                f"[memory] {kind:<6} n={n:>9,}: {len(result['workers'])} workers after "
                f"{result['samples']:,} samples, worst VmHWM {worst['VmHWM'] / 2**20:.1f} MiB "
                f"(now RssAnon {worst['RssAnon'] / 2**20:.1f} MiB, RssFile "
                f"{worst['RssFile'] / 2**20:.1f} MiB); main process VmHWM "
                f"{result['main']['VmHWM'] / 2**20:.1f} MiB"
            )
    grown = sizes[1] - sizes[0]

    def growth(kind: str, what: str) -> float:
        return (peak[kind, sizes[1]][what] - peak[kind, sizes[0]][what]) / grown

    def row(metric: str, value: float, unit: str = "B/sample", target: bool = False) -> Row:
        if target:
            return Row("memory", metric, value, unit, TARGET_GROWTH, "target", 1.0)
        return Row("memory", metric, value, unit)

    raw_growth = growth("memmap", "VmHWM")
    names = {"map": "map-style", "iter": "iterable", "memmap": "memmap"}
    for kind in kinds:
        name, ours = names[kind], kind != "memmap"
        hwm, anon = growth(kind, "VmHWM"), growth(kind, "RssAnon")
        ctx.log(
            f"[memory] {name}: worker peak RSS grows {hwm:.1f} B/sample "
            f"(anonymous memory {anon:.1f} B/sample) from n={sizes[0]:,} to n={sizes[1]:,}"
        )
        ctx.add(
            *(row(f"{name} worker peak RSS, n={n:,}", peak[kind, n]["VmHWM"], "B") for n in sizes)
        )
        ctx.add(row(f"{name} worker peak RSS growth per sample", hwm))
        if ours:
            ctx.add(
                row(f"{name} worker peak RSS growth over memmap's", hwm - raw_growth, target=True)
            )
        ctx.add(row(f"{name} worker anon memory growth per sample", anon, target=ours))
    for d in data.values():
        remove(d.repo.parent)


# -- driver -------------------------------------------------------------------------


def run_sections(ctx: Context, only: set[str]) -> None:
    # tf last: it is imported only there, and forking DataLoader workers from a
    # process running TensorFlow's thread pools is asking for trouble
    if "torch-map" in only:
        bench_torch_map(ctx)
    if "torch-iter" in only:
        bench_torch_iter(ctx)
    if "memory" in only:
        bench_memory(ctx)
    if "tf" in only:
        bench_tf(ctx)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=200_000, help="samples (default 200000)")
    parser.add_argument(
        "--big",
        type=int,
        default=2_000_000,
        help="samples of the memory section's big repository (default 2000000)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="repeats; the best is kept")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[0, 2],
        help="DataLoader num_workers values (default 0 2; memory uses the largest)",
    )
    parser.add_argument(
        "--batches",
        type=int,
        default=400,
        help="batches read before the memory section reads worker RSS (default 400)",
    )
    parser.add_argument(
        "--dir", default=tempfile.gettempdir(), help="where to make the scratch directory"
    )
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one memory probe
    args = parser.parse_args(argv)
    if args.probe is None and (
        args.n < BATCH
        or args.big <= args.n
        or args.repeat < 1
        or args.batches < 1
        or min(args.workers) < 0
    ):
        parser.error(f"--n must be >= {BATCH}, --big > --n, --repeat and --batches >= 1")
    return args


def header(ctx: Context) -> str:
    return (
        f"tensorcask {tc.__version__} loaders benchmark: n={ctx.n:,} big={ctx.big:,} "
        f"repeat={ctx.repeat} workers={ctx.workers} | python {platform.python_version()} "
        f"numpy {np.__version__} torch {torch.__version__} | {os.cpu_count()} CPUs "
        f"| scratch {ctx.scratch}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe is not None:
        print(json.dumps(memory_probe(json.loads(args.probe))))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the scratch dir is removed
    scratch = Path(tempfile.mkdtemp(prefix="tensorcask-bench-", dir=args.dir))
    try:
        started = time.perf_counter()
        ctx = Context(
            args.n, args.big, args.repeat, args.workers, args.batches, scratch, quiet=args.json
        )
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
                        "missing": ctx.missing,
                    },
                    indent=2,
                )
            )
        else:
            missing = "".join(f"\nnot measured: {m}" for m in ctx.missing)
            print(
                f"\n{render_table(ctx.rows, SECTIONS)}\n\nratio = speed relative to the reference "
                f"(>1 faster; for memory, >1 smaller); total {elapsed:.0f} s{missing}"
            )
    finally:
        remove(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
