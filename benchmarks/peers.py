"""Tensorcask next to its peers on the same MNIST-shaped data.

Run from the repository root (see the README section for the peers' virtualenv)::

    python benchmarks/peers.py                   # N=200,000, every importable system, median of 3
    python benchmarks/peers.py --n 20000 --repeat 1 --systems tensorcask litdata
    python benchmarks/peers.py --fsync --json > peers.json

Systems: tensorcask, Deep Lake v4 (``deeplake``), Icechunk 1.x + Zarr 3
(``icechunk``), LitData (``litdata``) and MosaicML Streaming (``streaming``);
one that is not importable is reported as "not installed". Data: N seeded
``uint8`` 28x28 images and ``int64`` labels 0-9, written in batches of 10,000
and committed (finalized) once. Every figure comes from a fresh subprocess
(``--worker SYSTEM --phase PHASE``) that prints one JSON line:

``raw``    the ceiling: ``np.save`` of both arrays, then ``os.fsync``.
``write``  ingest (commit / finalize included), with ``--fsync`` an fsync of every
           file afterwards, disk bytes, then a relabel of 2,000 random keys: the
           change and the commit timed apart (write-once formats: n/a).
``first``  open the dataset and read its first shuffled batch of 256 (imports excluded).
``epoch``  one shuffled pass in batches of 256, no workers, through the system's
           PyTorch-style loader or its fastest batch read. Each sample is identified
           by its pixels, so the pass is checked (every sample once, with its label)
           and its shuffle measured: the mean number of distinct 1,000-sample blocks
           a batch spans.

tensorcask and the raw ceiling run under ``--python`` (default ``.venv``), the
peers under ``--python-peers`` (default ``.venv-peers``). The scratch
directory (``--dir``) is removed at exit.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from report import remove, table_line


class Spec(NamedTuple):
    modules: tuple[str, ...]  # looked for, and imported before anything is timed
    dists: tuple[str, ...]  # whose versions are shown
    epoch: str  # how the epoch reads
    alt: str = ""  # how alt_X reads (shown for information)
    alt_batches: int | None = None  # batches alt_X reads (None: a full epoch)


SYSTEMS = {
    "tensorcask": Spec(
        ("tensorcask", "torch", "tensorcask.loaders.torch"),
        ("tensorcask",),
        "DataLoader(repo_dataset(...), batch_size=256, shuffle=True)",
        "Column.get_many gathers of a permutation",
    ),
    "deeplake": Spec(
        ("deeplake",),
        ("deeplake",),
        "column gathers ds['images'][idx], ds['labels'][idx] of a permutation",
        "DataLoader(ds.pytorch(), batch_size=256, shuffle=True)",
        20,  # one sample per __getitem__: slow
    ),
    "icechunk": Spec(
        ("icechunk", "zarr"),
        ("icechunk", "zarr"),
        "zarr .oindex[idx] of a permutation (chunks of 1,000 images, no codec)",
    ),
    "litdata": Spec(
        ("litdata",),
        ("litdata",),
        "StreamingDataLoader(StreamingDataset(dir, shuffle=True), batch_size=256)",
        "the same with item_shuffle_window='full' (a full permutation within each chunk)",
        20,  # decodes a 256-item window per sample: slow
    ),
    "streaming": Spec(
        ("streaming", "torch"),
        ("mosaicml-streaming",),
        "DataLoader(StreamingDataset(local=dir, shuffle=True), batch_size=256)",
    ),
}
ROOT = Path(__file__).resolve().parents[1]
SEED = 20240601
CHUNK = 10_000  # samples per write call
BATCH = 256
RELABEL = 2_000
BLOCK = 1_000  # shuffle quality: distinct blocks of this many samples per batch
ZARR_CHUNK = 1_000  # images per zarr chunk (784 KB)
MARK = "PEERS-RESULT "
CHILD_TIMEOUT = 1800
TORCHVISION_STUB = {  # what `import streaming` takes from torchvision (its vision datasets)
    "__init__.py": "from . import datasets, transforms\n",
    "datasets/__init__.py": "class VisionDataset: ...\n\n\nclass CIFAR10(VisionDataset): ...\n",
    "transforms/__init__.py": "from . import functional\n",
    "transforms/functional.py": "def to_tensor(pic):\n    raise NotImplementedError('stub')\n",
}

now = time.perf_counter


# -- data ------------------------------------------------------------------------------


def make_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    return images, rng.integers(0, 10, size=n).astype(np.int64)


def relabel_plan(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2,000 random keys and a new label for each, always different from the old one."""
    rng = np.random.default_rng(SEED + 1)
    keys = rng.choice(len(labels), size=min(RELABEL, len(labels)), replace=False)
    return keys, (labels[keys] + rng.integers(1, 10, size=len(keys))) % 10


def spans(n: int) -> Iterator[tuple[int, int]]:
    for a in range(0, n, CHUNK):
        yield a, min(a + CHUNK, n)


def first8(images: Any) -> np.ndarray:
    """Each image's first 8 pixels as one uint64: random pixels make it an id."""
    flat = np.asarray(images).reshape(len(images), -1)
    return np.ascontiguousarray(flat[:, :8]).view("<u8").ravel()


def expected_blocks(n: int) -> float:
    """Mean distinct blocks a batch of a uniform shuffle spans (hypergeometric)."""
    j = np.arange(min(BATCH, n))
    total = 0.0
    for start in range(0, n, BLOCK):
        size = min(BLOCK, n - start)
        total += 1.0 - float(np.prod(np.clip((n - size - j) / (n - j), 0.0, None)))
    return total


def gathered(
    keep: Any, perm: np.ndarray, read: Callable[[np.ndarray], tuple[Any, Any]]
) -> Iterator[tuple[Any, Any]]:
    """``read`` of each batch of ``perm``; ``keep`` holds the open dataset alive."""
    for a in range(0, len(perm), BATCH):
        yield read(perm[a : a + BATCH])


# -- the systems (worker side) ---------------------------------------------------------
# write_X(path, images, labels); relabel_X(path, keys, values) -> (change s, commit s);
# load_X(path, seed) and alt_X(path, seed) -> iterable of (images, labels) batches.


def write_tensorcask(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    import tensorcask as tc

    with (
        tc.init(path, user_name="bench", user_email="bench@example.org") as repo,
        repo.checkout(write=True) as co,
    ):
        im = co.add_ndarray_column("images", shape=(28, 28), dtype="uint8")
        lb = co.add_ndarray_column("labels", shape=(), dtype="int64")
        for a, b in spans(len(labels)):
            im.update(np.arange(a, b), images[a:b])
            lb.update(np.arange(a, b), labels[a:b])
        co.commit("ingest")


def relabel_tensorcask(path: Path, keys: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    import tensorcask as tc

    with tc.Repository(path) as repo, repo.checkout(write=True) as co:
        t0 = now()
        co["labels"].update(keys, values)
        t1 = now()
        co.commit("relabel 1%")
        return t1 - t0, now() - t1


def load_tensorcask(path: Path, seed: int) -> Iterable[Any]:
    import torch
    from torch.utils.data import DataLoader

    from tensorcask.loaders.torch import repo_dataset

    ds = repo_dataset(str(path), ["images", "labels"])
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=BATCH, shuffle=True, generator=gen, num_workers=0)


def alt_tensorcask(path: Path, seed: int) -> Iterable[Any]:
    import tensorcask as tc

    repo = tc.Repository(path, read_only=True)
    co = repo.checkout()
    images, labels = co["images"], co["labels"]
    perm = np.random.default_rng(seed).permutation(len(labels))
    return gathered((repo, co), perm, lambda i: (images.get_many(i), labels.get_many(i)))


def write_deeplake(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    import deeplake

    ds = deeplake.create(f"file://{path}")
    ds.add_column("images", deeplake.types.Array(deeplake.types.UInt8(), shape=[28, 28]))
    ds.add_column("labels", deeplake.types.Int64())
    for a, b in spans(len(labels)):
        ds.append({"images": images[a:b], "labels": labels[a:b]})
    ds.commit("ingest")


def relabel_deeplake(path: Path, keys: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    import deeplake

    ds = deeplake.open(f"file://{path}")
    column = ds["labels"]
    t0 = now()
    for key, value in zip(keys.tolist(), values.tolist(), strict=True):
        column[key] = value  # Column.__setitem__ takes an int or a slice only
    t1 = now()
    ds.commit("relabel 1%")
    return t1 - t0, now() - t1


def load_deeplake(path: Path, seed: int) -> Iterable[Any]:
    import deeplake

    ds = deeplake.open_read_only(f"file://{path}")
    images, labels = ds["images"], ds["labels"]  # valid only while `ds` lives
    perm = np.random.default_rng(seed).permutation(len(ds))
    return gathered(ds, perm, lambda i: (images[i.tolist()], labels[i.tolist()]))


def alt_deeplake(path: Path, seed: int) -> Iterable[Any]:
    import deeplake
    import torch
    from torch.utils.data import DataLoader

    ds = deeplake.open_read_only(f"file://{path}")
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(ds.pytorch(), batch_size=BATCH, shuffle=True, generator=gen)
    return ((b["images"], b["labels"]) for b in loader)


def write_icechunk(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    import icechunk
    import zarr

    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)))
    session = repo.writable_session("main")
    root = zarr.group(store=session.store)
    im = root.create_array(
        "images", shape=images.shape, chunks=(ZARR_CHUNK, 28, 28), dtype="uint8", compressors=None
    )
    lb = root.create_array(
        "labels", shape=labels.shape, chunks=(CHUNK,), dtype="int64", compressors=None
    )
    for a, b in spans(len(labels)):
        im[a:b] = images[a:b]
        lb[a:b] = labels[a:b]
    session.commit("ingest")


def relabel_icechunk(path: Path, keys: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    import icechunk
    import zarr

    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
    session = repo.writable_session("main")
    labels = zarr.open_group(store=session.store, mode="r+")["labels"]
    t0 = now()
    labels.vindex[keys] = values
    t1 = now()
    session.commit("relabel 1%")
    return t1 - t0, now() - t1


def load_icechunk(path: Path, seed: int) -> Iterable[Any]:
    import icechunk
    import zarr

    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
    group = zarr.open_group(store=repo.readonly_session(branch="main").store, mode="r")
    images, labels = group["images"], group["labels"]
    perm = np.random.default_rng(seed).permutation(labels.shape[0])
    return gathered(repo, perm, lambda i: (images.oindex[i], labels.oindex[i]))


_LITDATA_DATA: list[np.ndarray] = []  # the arrays, for optimize's forked worker


def _litdata_samples(span: tuple[int, int]) -> Iterator[dict[str, Any]]:
    images, labels = _LITDATA_DATA
    for i in range(*span):
        yield {"image": images[i], "label": int(labels[i])}


def write_litdata(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    import litdata

    _LITDATA_DATA[:] = [images, labels]
    litdata.optimize(
        fn=_litdata_samples,
        inputs=list(spans(len(labels))),
        output_dir=str(path),
        chunk_bytes="64MB",
        num_workers=1,
        start_method="fork",
        verbose=False,
    )


def load_litdata(path: Path, seed: int, **options: Any) -> Iterable[Any]:
    import litdata

    ds = litdata.StreamingDataset(str(path), shuffle=True, seed=seed, **options)
    loader = litdata.StreamingDataLoader(ds, batch_size=BATCH, num_workers=0)
    return ((b["image"], b["label"]) for b in loader)


def alt_litdata(path: Path, seed: int) -> Iterable[Any]:
    return load_litdata(path, seed, item_shuffle_window="full")


def write_streaming(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    from streaming import MDSWriter

    columns = {"image": "ndarray:uint8:28,28", "label": "int64"}
    with MDSWriter(out=str(path), columns=columns) as writer:
        for a, b in spans(len(labels)):
            for i in range(a, b):  # MDSWriter takes one sample at a time
                writer.write({"image": images[i], "label": labels[i]})


def load_streaming(path: Path, seed: int) -> Iterable[Any]:
    from streaming import StreamingDataset
    from torch.utils.data import DataLoader

    ds = StreamingDataset(local=str(path), batch_size=BATCH, shuffle=True, shuffle_seed=seed)
    return ((b["image"], b["label"]) for b in DataLoader(ds, batch_size=BATCH, num_workers=0))


def system_fn(kind: str, system: str) -> Callable[..., Any] | None:
    """``write_X`` / ``relabel_X`` / ``load_X`` / ``alt_X`` of system X; None if it has none."""
    return globals().get(f"{kind}_{system}")


# -- the worker ------------------------------------------------------------------------


def import_system(system: str, scratch: Path) -> str:
    """Import the system's modules. ``import streaming`` imports torchvision, whose PyPI
    wheels are CUDA builds that fail next to CPU torch: a stub stands in for it then."""
    note = ""
    if system == "streaming":
        try:
            importlib.import_module("torchvision")
        except Exception:
            for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
                del sys.modules[name]
            stub = Path(tempfile.mkdtemp(prefix="torchvision-stub-", dir=scratch))
            for rel, text in TORCHVISION_STUB.items():
                (stub / "torchvision" / rel).parent.mkdir(parents=True, exist_ok=True)
                (stub / "torchvision" / rel).write_text(text)
            sys.path.insert(0, str(stub))
            note = "torchvision stub"
    for module in SYSTEMS[system].modules:
        importlib.import_module(module)
    return note


def fsync_tree(root: Path) -> float:
    t0 = now()
    for dirpath, _, files in os.walk(root):
        for name in [*files, "."]:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return now() - t0


def disk_bytes(root: Path) -> int:
    """Bytes allocated on disk (what ``du`` counts) under ``root``."""
    return sum(p.lstat().st_blocks * 512 for p in root.rglob("*") if not p.is_dir())


def check_batches(
    batches: list[tuple[np.ndarray, np.ndarray]], images: np.ndarray, labels: np.ndarray, full: bool
) -> tuple[list[str], float]:
    """Problems found (a full pass yields every sample once, with its label) and the mean
    number of distinct blocks a full batch spans. ``batches``: (image ids, labels)."""
    keys = first8(images)
    order = np.argsort(keys)
    ids = np.concatenate([b[0] for b in batches])
    idx = order[np.clip(np.searchsorted(keys[order], ids), 0, len(keys) - 1)]
    problems = []
    if not (keys[idx] == ids).all():
        problems.append("some samples are not in the data")
    if not (labels[idx] == np.concatenate([b[1] for b in batches])).all():
        problems.append("some labels differ from the data's")
    if full and not (np.bincount(idx, minlength=len(keys)) == 1).all():
        problems.append(f"{len(ids):,} samples read, not each of {len(keys):,} once")
    bounds = itertools.pairwise(np.cumsum([0, *(len(b[0]) for b in batches)]))
    blocks = [len(np.unique(idx[a:b] // BLOCK)) for a, b in bounds if b - a == BATCH]
    return problems, float(np.mean(blocks)) if blocks else float("nan")


def read_pass(
    open_batches: Callable[[], Iterable[Any]],
    limit: int | None,
    images: np.ndarray,
    labels: np.ndarray,
) -> tuple[float, int, list[str], float]:
    """Open the dataset and read ``limit`` batches (None: all): seconds (the open
    included), samples, problems, blocks per batch."""
    t0 = now()
    batches = itertools.islice(open_batches(), limit)
    got = [(first8(x), np.asarray(y).ravel()) for x, y in batches]
    seconds = now() - t0
    problems, blocks = check_batches(got, images, labels, full=limit is None)
    return seconds, sum(len(g[1]) for g in got), problems, blocks


def worker(args: argparse.Namespace) -> dict[str, Any]:
    system, path = args.worker, Path(args.path)
    warnings.filterwarnings("ignore")
    images, labels = make_data(args.n)
    if system == "raw":
        path.mkdir(parents=True)
        t0 = now()
        np.save(path / "images.npy", images)
        np.save(path / "labels.npy", labels)
        return {"save_s": now() - t0, "fsync_s": fsync_tree(path)}
    t0 = now()
    out: dict[str, Any] = {"note": import_system(system, path.parent), "import_s": now() - t0}
    out["versions"] = {d: importlib.metadata.version(d) for d in SYSTEMS[system].dists}
    keys, values = relabel_plan(labels)
    relabel = system_fn("relabel", system)
    if args.phase == "write":
        write: Callable[..., None] = system_fn("write", system)  # type: ignore[assignment]
        t0 = now()
        write(path, images, labels)
        out["ingest_s"] = now() - t0
        out["fsync_s"] = fsync_tree(path) if args.fsync else None
        out["disk"] = disk_bytes(path)
        if relabel:
            out["change_s"], out["commit_s"] = relabel(path, keys, values)
            out["disk_after_relabel"] = disk_bytes(path)
        return out
    if relabel:
        labels[keys] = values
    load: Callable[..., Iterable[Any]] = system_fn("load", system)  # type: ignore[assignment]
    if args.phase == "first":
        seconds, _, out["problems"], _ = read_pass(lambda: load(path, SEED), 1, images, labels)
        return {**out, "first_s": seconds}
    seconds, count, out["problems"], out["blocks"] = read_pass(
        lambda: load(path, SEED), None, images, labels
    )
    out["epoch_rate"] = count / seconds
    if alt := system_fn("alt", system):
        limit = SYSTEMS[system].alt_batches
        seconds, count, problems, blocks = read_pass(lambda: alt(path, SEED), limit, images, labels)
        out["alt"] = {"rate": count / seconds, "blocks": blocks}
        out["problems"] += [f"{SYSTEMS[system].alt}: {p}" for p in problems]
    return out


# -- the parent ------------------------------------------------------------------------


class ChildError(RuntimeError):
    pass


def run_child(python: str, system: str, phase: str, path: Path, args: argparse.Namespace) -> Any:
    """Run one worker in a fresh process; its JSON result."""
    cmd = [python, str(Path(__file__).resolve()), "--worker", system, "--phase", phase]
    cmd += ["--path", str(path), "--n", str(args.n), *(["--fsync"] if args.fsync else [])]
    env = {**os.environ, "LITDATA_DISABLE_VERSION_CHECK": "1"}  # else LitData asks PyPI
    env["TMPDIR"] = str(path.parent / "tmp")  # the peers' lock files and caches go with scratch
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=CHILD_TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        raise ChildError(f"{phase}: no result in {CHILD_TIMEOUT} s") from exc
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ChildError(f"{phase}: exit {proc.returncode}: {tail}")
    return json.loads(lines[-1][len(MARK) :])


def installed(python: str, system: str) -> bool:
    code = "import importlib.util as u, sys; sys.exit(None in map(u.find_spec, sys.argv[1:]))"
    cmd = [python, "-c", code, *SYSTEMS[system].modules]
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Numbers: the median over the runs; anything else: the first run's."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in runs)
    if "alt" in out:
        out["alt"] = {k: statistics.median(r["alt"][k] for r in runs) for k in out["alt"]}
    out["problems"] = sorted({p for r in runs for p in r["problems"]})
    return out


def bench_system(system: str, python: str, scratch: Path, args: argparse.Namespace) -> Any:
    runs = []
    for r in range(args.repeat):
        path = scratch / f"{system}-{r}"
        run: dict[str, Any] = {"problems": []}
        for phase in ("write", "first", "epoch"):
            result = run_child(python, system, phase, path, args)
            run |= {**result, "problems": run["problems"] + result.get("problems", [])}
        remove(path)
        run["ingest_rate"] = args.n / run["ingest_s"]
        run["durable_rate"] = args.n / (run["ingest_s"] + (run["fsync_s"] or 0.0))
        rates = f"ingest {run['ingest_rate']:,.0f}/s, epoch {run['epoch_rate']:,.0f}/s"
        log(args, f"  {system} run {r + 1}: {rates}")
        runs.append(run)
    return {"status": "ok", "python": python, **median_of(runs)}


def bench_raw(scratch: Path, args: argparse.Namespace) -> dict[str, float]:
    runs = []
    for r in range(args.repeat):
        runs.append(run_child(args.python, "raw", "write", scratch / f"raw-{r}", args))
        remove(scratch / f"raw-{r}")
    raw = {k: statistics.median(r[k] for r in runs) for k in ("save_s", "fsync_s")}
    return {**raw, "rate": args.n / (raw["save_s"] + raw["fsync_s"])}


def log(args: argparse.Namespace, text: str) -> None:
    print(text, file=sys.stderr if args.json else sys.stdout, flush=True)


def fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "n/a" if value is None else format(value * scale, spec)


def render(results: dict[str, Any], raw_rate: float, args: argparse.Namespace) -> str:
    basis = "durable_rate" if args.fsync else "ingest_rate"
    tc_rate = results.get("tensorcask", {}).get(basis)
    header = ("system", "ingest/s", *(["+fsync/s"] if args.fsync else []), "x raw", "x tc")
    header += ("relabel ms", "commit ms", "epoch/s", "blocks", "1st batch ms", "disk x")
    rows, failed = [header], []
    for system, r in results.items():
        if r["status"] != "ok":
            failed.append((system, r["status"] + (f": {r['error']}" if "error" in r else "")))
            continue
        durable = [fmt(r["durable_rate"], ",.0f")] if args.fsync else []
        rows.append(
            (
                system,
                fmt(r["ingest_rate"], ",.0f"),
                *durable,
                fmt(r[basis] / raw_rate, ".2f"),
                fmt(r[basis] / tc_rate if tc_rate else None, ".2f"),
                fmt(r.get("change_s"), ".1f", 1e3),
                fmt(r.get("commit_s"), ".1f", 1e3),
                fmt(r["epoch_rate"], ",.0f"),
                fmt(r["blocks"], ".1f"),
                fmt(r["first_s"], ".1f", 1e3),
                fmt(r["disk"] / (args.n * (28 * 28 + 8)), ".2f"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    rows.insert(1, tuple("-" * w for w in widths))
    lines = [table_line(row, widths) for row in rows]
    return "\n".join(lines + [f"{s.ljust(widths[0])}  {why}" for s, why in failed])


def summary(results: dict[str, Any], raw: dict[str, float], args: argparse.Namespace) -> str:
    basis = "durable_rate" if args.fsync else "ingest_rate"
    ok = {s: r for s, r in results.items() if r["status"] == "ok"}
    lines = [
        f"raw: np.save of images + labels {raw['save_s']:.3f} s + fsync {raw['fsync_s']:.3f} s"
        f" = {raw['rate']:,.0f} samples/s; x raw and x tc compare "
        + ("ingest + fsync" if args.fsync else "ingest"),
        f"blocks: mean distinct {BLOCK}-sample blocks per batch of {BATCH}; "
        f"a uniform shuffle gives {expected_blocks(args.n):.1f}",
    ]
    peers = {s: r for s, r in ok.items() if s != "tensorcask"}
    if "tensorcask" in ok:
        tc = ok["tensorcask"]
        lines.append(f"tensorcask ingest: {tc[basis] / raw['rate']:.2f}x raw")
        for what, key in (("ingest", basis), ("epoch", "epoch_rate"), ("first batch", "first_s")):
            if peers:
                sign = -1 if key == "first_s" else 1
                best = max(peers, key=lambda s, k=key, g=sign: g * peers[s][k])  # type: ignore[misc]
                ratio = (tc[key] / peers[best][key]) ** sign
                lines.append(f"tensorcask {what}: {ratio:.2f}x the fastest peer ({best})")
    for system, r in ok.items():
        versions = ", ".join(f"{d} {v}" for d, v in r["versions"].items())
        where = Path(r["python"]).parent.parent.name + (f", {r['note']}" if r["note"] else "")
        lines.append(f"{system}: {versions} ({where}); import {r['import_s']:.2f} s")
        lines.append(f"  epoch: {SYSTEMS[system].epoch}")
        if "alt" in r:
            spec, alt = SYSTEMS[system], r["alt"]
            part = f", first {spec.alt_batches} batches" if spec.alt_batches else ""
            lines.append(
                f"  also: {spec.alt}{part}: {alt['rate']:,.0f}/s, blocks {alt['blocks']:.1f}"
            )
        if "disk_after_relabel" in r:
            grew = (r["disk_after_relabel"] - r["disk"]) / 2**10
            lines.append(f"  disk: {r['disk'] / 2**20:,.1f} MiB, +{grew:,.0f} KiB after relabel")
        lines += [f"  CHECK FAILED: {p}" for p in r["problems"]]
    return "\n".join(lines)


def default_python(venv: str) -> str:
    path = ROOT / venv / "bin" / "python"
    return str(path) if path.exists() else sys.executable


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="samples (default 200,000)")
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    parser.add_argument("--repeat", type=int, default=3, help="runs per system (median kept)")
    parser.add_argument("--dir", type=Path, help="where the scratch directory is made")
    parser.add_argument("--fsync", action="store_true", help="fsync every file after ingest")
    parser.add_argument("--json", action="store_true", help="results as JSON on stdout")
    parser.add_argument("--python", default=default_python(".venv"), help="for tensorcask, raw")
    parser.add_argument("--python-peers", default=default_python(".venv-peers"), help="for peers")
    parser.add_argument("--worker", choices=[*SYSTEMS, "raw"], help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=["write", "first", "epoch"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(MARK + json.dumps(worker(args)), flush=True)
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="tensorcask-peers-", dir=args.dir))
    try:
        (scratch / "tmp").mkdir()
        log(args, f"peers: n={args.n:,} repeat={args.repeat} fsync={args.fsync} in {scratch}")
        raw = bench_raw(scratch, args)
        results: dict[str, Any] = {}
        for system in args.systems:
            python = args.python if system == "tensorcask" else args.python_peers
            if not installed(python, system):
                results[system] = {"status": "not installed", "python": python}
                log(args, f"  {system}: not installed in {python}")
                continue
            try:
                results[system] = bench_system(system, python, scratch, args)
            except ChildError as exc:
                results[system] = {"status": "error", "error": str(exc), "python": python}
                log(args, f"  {system}: error: {exc}")
        if args.json:
            report = {"n": args.n, "repeat": args.repeat, "fsync": args.fsync, "raw": raw}
            report |= {"expected_blocks": expected_blocks(args.n), "systems": results}
            print(json.dumps(report, indent=2))
        else:
            print(f"\n{render(results, raw['rate'], args)}\n\n{summary(results, raw, args)}")
    finally:
        remove(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
