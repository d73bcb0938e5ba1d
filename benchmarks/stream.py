"""Benchmark of streaming datasets: torch loaders reading a commit straight from S3.

Run from the repository root (the library, torch and the ``s3`` extra installed)::

    python benchmarks/stream.py                    # defaults: --samples 200000 --big 1000000
    python benchmarks/stream.py --quick            # small sizes, under a minute
    python benchmarks/stream.py --only epoch cache # sections: open epoch cache side
    python benchmarks/stream.py --verbose          # also list every request of the opens
    python benchmarks/stream.py --profile          # also cProfile the streaming epochs
    python benchmarks/stream.py --json             # results as JSON on stdout

The remote is the counting moto S3 server of ``remote.py`` (its own process,
reached through s3fs with ``endpoint_url``; every request and its bytes are
counted server-side). Data is MNIST-shaped and seeded: ``uint8`` 28x28
images and ``int64`` labels, pushed with ``repo.push``; the loaders are
``tensorcask.loaders.torch.repo_dataset`` / ``repo_iterable_dataset`` given
the remote's URL.

Sections (``--only`` names):

``open``   a ``--big`` sample commit pushed; in a fresh ``python -c`` process,
           ``repo_dataset(url, commit=<full id>)`` (no cache) and its first batch of 256
           (``__getitems__(range(256))``): requests (target <= 20), wall time, and the
           open and the batch timed inside the process. Again after ``--pushes`` pushes
           of ``--small-append`` appended samples each, on the new head.
``epoch``  one epoch in key order of ``--samples`` samples through
           ``DataLoader(repo_iterable_dataset(url, batch_size=256), batch_size=256)`` in
           the process (``num_workers=0``, pieces kept in memory), next to raw s3fs
           ``cat_ranges`` of the same sample bytes batch by batch (target >= 0.8x);
           the same epoch with ``num_workers=2``.
``cache``  with a ``cache_dir``: an epoch fills the cache, then epochs from the cache
           next to the same loader over the local repository (target >= 0.9x), for the
           iterable dataset with ``num_workers`` 0 and 2 (new workers each epoch) and for
           ``repo_dataset`` in a shuffling ``DataLoader``.
``side``   LitData and MosaicML Streaming, when importable here or in ``--peer-python``:
           the same samples written in their formats to the same server, and one
           epoch streamed from it next to ours with a ``cache_dir``.

Timings are the best of ``--repeat``, ours and the reference alternating; request
counts are from the first run. The scratch directory and the server go at exit.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import importlib.util
import json
import os
import platform
import pstats
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import types
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import remote as rb
from report import Row, ceiling_row, remove, timed

SECTIONS = ("open", "epoch", "cache", "side")
COLUMNS = ["images", "labels"]
BATCH = 256
SEED = rb.SEED
MB = rb.MB
SHUFFLE_SEED = 17

TARGET_REQUESTS = 20  # open + first batch of a commit, however many samples
NEED_RAW = 0.8  # first epoch vs raw cat_ranges of the same bytes
NEED_LOCAL = 0.9  # an epoch from the cache vs the same loader over the local repository

PEERS = {"litdata": "LitData", "mosaic": "MosaicML Streaming"}
PEER_MODULES = {"litdata": "litdata", "mosaic": "streaming"}
PEER_PYTHON = "/tmp/bench-venv/bin/python"
PEER_REPEAT = 2  # epochs of each peer at most (MosaicML's take ~30 s each at the defaults)
SUBPROCESS_TIMEOUT = 900

# The fresh process of the `open` section: import, open a commit, read one batch.
PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
from tensorcask.loaders.torch import repo_dataset
t1 = time.perf_counter()
spec = json.loads(sys.argv[1])
ds = repo_dataset(spec["url"], spec["columns"], commit=spec["commit"],
                  storage_options=spec["options"])
t2 = time.perf_counter()
batch = ds.__getitems__(range(spec["batch"]))
t3 = time.perf_counter()
labels = sum(int(s[1]) for s in batch)
pixels = sum(int(s[0].sum(dtype=torch.int64)) for s in batch)
print(json.dumps({"import": t1 - t0, "open": t2 - t1, "batch": t3 - t2, "samples": len(ds),
                  "sums": [len(batch), labels, pixels], "commit": ds.commit}))
"""


class PeerFailed(RuntimeError):
    """A peer library's step failed (its log's tail is the message)."""


# -- context --------------------------------------------------------------------------


@dataclass
class Data:
    """The ``--samples`` data set: pushed to a bucket, and its local repository."""

    n: int
    path: Path
    url: str
    commit: str
    nbytes: int
    totals: tuple[int, int, int]  # samples, sum of labels, sum of pixels


@dataclass
class Missing:
    """A row that could not be measured (a peer library that is not installed)."""

    section: str
    metric: str
    why: str


@dataclass
class State:
    """What the sections share beyond ``rb.Context``."""

    ctx: rb.Context
    data: Data | None = None
    missing: list[Missing] = field(default_factory=list)
    raw_rate: float | None = None

    @property
    def args(self) -> argparse.Namespace:
        return self.ctx.args

    def log(self, text: str) -> None:
        self.ctx.log(text)

    def add(self, *rows: Row) -> None:
        self.ctx.add(*rows)

    def run(
        self,
        section: str,
        label: str,
        fn: Callable[[], Any],
        record: bool = True,
        trace: bool = False,
    ) -> tuple[rb.Op, Any]:
        """Time ``fn`` with the server's counts reset before; log it; keep it in the
        operations table when ``record``."""
        server = self.ctx.server
        server.reset()
        seconds, result = timed(fn)
        op = rb.Op(section, label, seconds, server.counts())
        if record:
            self.ctx.ops.append(op)
        self.log(f"  {label}: {seconds:.3f} s, {op.counts.brief()}")
        if trace:
            for line in op.counts.trace:
                self.log(f"      {line}")
        return op, result


def opts(state: State) -> dict[str, Any]:
    return state.ctx.server.storage_options


# -- data ---------------------------------------------------------------------------


def totals_of(images: np.ndarray, labels: np.ndarray) -> tuple[int, int, int]:
    return len(labels), int(labels.sum()), int(images.sum(dtype=np.int64))


def push_repo(
    state: State, section: str, stem: str, images: np.ndarray, labels: np.ndarray
) -> tuple[Any, Path, str, str]:
    """A local repository of ``images`` and ``labels`` pushed to a new bucket:
    (open repository, its path, the remote's URL, the commit id)."""
    path = state.ctx.fresh_path(stem)
    seconds, repo = timed(lambda: rb.build(path, {"images": images, "labels": labels}))
    state.log(f"  built the local repository in {seconds:.1f} s")
    url = f"s3://{state.ctx.new_bucket(stem)}/repo"
    repo.add_remote("origin", url, **opts(state))
    state.run(section, f"push: {len(labels):,} samples", lambda: repo.push("origin"))
    with repo.checkout() as rc:
        commit = rc.commit_id
    return repo, path, url, commit


def ensure_data(state: State) -> Data:
    """The ``--samples`` data set, built and pushed once."""
    if state.data is None:
        n = state.args.samples
        images, labels = rb.mnist(n, SEED)
        state.log(f"[data] {n:,} images + labels, {(images.nbytes + labels.nbytes) / MB:,.1f} MiB")
        repo, path, url, commit = push_repo(state, "epoch", "data", images, labels)
        repo.close()
        state.data = Data(
            n, path, url, commit, images.nbytes + labels.nbytes, totals_of(images, labels)
        )
    return state.data


# -- epochs -------------------------------------------------------------------------


def epoch(what: str, data: Data, loader: Iterable[Any]) -> float:
    """Seconds of one full epoch of ``loader``, checked against the data."""
    from loaders import consume

    seconds, totals = timed(lambda: consume(loader))
    if totals != data.totals:
        raise AssertionError(
            f"{what}: one epoch gave (samples, label sum, pixel sum) = {totals}, "
            f"expected {data.totals}"
        )
    return seconds


def stream_iterable(state: State, data: Data, **kwargs: Any) -> Any:
    from tensorcask.loaders.torch import repo_iterable_dataset

    return repo_iterable_dataset(
        data.url,
        COLUMNS,
        commit=data.commit,
        storage_options=opts(state),
        batch_size=BATCH,
        **kwargs,
    )


def loader(ds: Any, workers: int, shuffle: bool = False, seed: int = 0) -> Any:
    import torch
    from torch.utils.data import DataLoader

    if shuffle:
        torch.manual_seed(seed)
    return DataLoader(ds, batch_size=BATCH, num_workers=workers, shuffle=shuffle)


def best(state: State, label: str, times: list[float], n: int) -> float:
    shown = ", ".join(f"{n / s:,.0f}" for s in times)
    state.log(f"    {label}: {shown} samples/s")
    return n / min(times)


# -- section: open --------------------------------------------------------------------


def probe(state: State, url: str, commit: str, label: str, expect: tuple[int, int, int]) -> None:
    """Open ``commit`` and read its first batch in fresh processes; rows for the best."""
    spec = {
        "url": url,
        "columns": COLUMNS,
        "commit": commit,
        "options": opts(state),
        "batch": BATCH,
    }

    def run_once() -> dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, "-c", PROBE, json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"the probe process failed:\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    runs = []
    first: rb.Op | None = None
    for attempt in range(state.args.repeat):
        op, out = state.run(
            "open",
            f"fresh process: {label}" + ("" if attempt == 0 else f" (repeat {attempt + 1})"),
            run_once,
            record=attempt == 0,
            trace=attempt == 0 and state.args.verbose,
        )
        if tuple(out["sums"]) != expect or out["commit"] != commit:
            raise AssertionError(f"the first batch is wrong: {out} (expected sums {expect})")
        state.log(
            f"    inside: import {out['import']:.3f} s, open {out['open']:.3f} s, "
            f"first batch {out['batch']:.3f} s ({out['samples']:,} samples)"
        )
        first = first or op
        runs.append((op.seconds, out))
    assert first is not None
    c = first.counts
    wall = min(seconds for seconds, _ in runs)

    def inside(what: str) -> float:
        return min(out[what] for _, out in runs)

    state.add(
        Row(
            "open",
            f"{label}: open + first batch, requests",
            c.requests,
            "req",
            TARGET_REQUESTS,
            "target",
            1.0,
        ),
        Row("open", f"{label}: bytes down", c.down, "B"),
        Row("open", f"{label}: wall (interpreter, imports, open, batch)", wall, "s"),
        Row("open", f"{label}: open, inside the process", inside("open"), "s"),
        Row("open", f"{label}: first batch, inside the process", inside("batch"), "s"),
    )


def bench_open(state: State) -> None:
    """Section 1: requests and time to open a big commit and read its first batch."""
    args = state.args
    big = args.big
    images, labels = rb.mnist(big, SEED + 10)
    state.log(f"[open] {big:,} images + labels, {(images.nbytes + labels.nbytes) / MB:,.1f} MiB")
    first = totals_of(images[:BATCH], labels[:BATCH])
    repo, path, url, commit = push_repo(state, "open", "big", images, labels)
    del images, labels
    try:
        probe(state, url, commit, f"{big:,}-sample commit", first)
        rng = np.random.default_rng(SEED + 11)
        size = big
        small = args.small_append
        for i in range(args.pushes):
            more = rng.integers(0, 256, size=(small, 28, 28), dtype=np.uint8)
            more_labels = rng.integers(0, 10, size=small).astype(np.int64)

            def append(co: Any, at: int = size, a: Any = more, b: Any = more_labels) -> None:
                rb.ingest(co["images"], a, at)
                rb.ingest(co["labels"], b, at)

            head = rb.write_commit(repo, f"append {small}", append)
            size += small
            state.run(
                "open",
                f"push {i + 1}/{args.pushes}: append {small:,}",
                lambda: repo.push("origin"),
                record=False,
            )
        if args.pushes:
            probe(state, url, head, f"after {args.pushes} more pushes ({size:,} samples)", first)
    finally:
        repo.close()
        remove(path)


# -- section: epoch -------------------------------------------------------------------


def raw_plan(source: Any, n: int) -> tuple[list[tuple[list[str], list[int], list[int]]], int]:
    """Per batch of 256 samples in key order: the byte ranges of their entries in the
    data packs (distinct, adjacent ones merged), from the dataset's piece maps; and the
    bytes they add up to."""
    packs = source.fetcher.packs
    plan: list[tuple[list[str], list[int], list[int]]] = []
    total = 0
    for low in range(0, n, BATCH):
        at = np.arange(low, min(low + BATCH, n))
        paths: list[str] = []
        starts: list[int] = []
        ends: list[int] = []
        for table, positions in zip(source.tables, source.index.positions, strict=True):
            pm = table.pieces
            records = at if positions is None else positions[at]
            piece = pm.record_piece[records]
            start = pm.piece_start[piece] + pm.record_rel[records]
            end = start + pm.record_size[records]
            pack_of = pm.piece_pack[piece].astype(np.int64)
            spans = np.unique(np.stack([pack_of, start, end], 1), axis=0)
            current: list[int] | None = None
            for pack, a, b in [*spans.tolist(), [-1, 0, 0]]:
                if current is not None and pack == current[0] and a <= current[2]:
                    current[2] = max(current[2], b)
                    continue
                if current is not None:
                    paths.append(packs.path(pm.packs[current[0]].decode(), ".pack"))
                    starts.append(current[1])
                    ends.append(current[2])
                    total += current[2] - current[1]
                current = [pack, a, b]
        plan.append((paths, starts, ends))
    return plan, total


def raw_epoch(state: State, plan: list[Any], total: int) -> Callable[[], float]:
    """One epoch of raw ``cat_ranges``, one call per batch, on a fresh filesystem."""
    fs = state.ctx.server.filesystem()
    fs.info(plan[0][0][0])  # the session exists before timing, as for the dataset

    def run() -> float:
        t0 = time.perf_counter()
        got = 0
        for paths, starts, ends in plan:
            got += sum(map(len, fs.cat_ranges(paths, starts, ends)))
        seconds = time.perf_counter() - t0
        if got != total:
            raise AssertionError(f"raw cat_ranges returned {got} bytes, expected {total}")
        return seconds

    return run


def bench_epoch(state: State) -> None:
    """Section 2: first epoch from S3 in key order vs raw cat_ranges of the same bytes."""
    data = ensure_data(state)
    n = data.n
    limit = 2 * data.nbytes + 64 * MB
    state.log(f"[epoch] {n:,} samples in key order, memory cache of {limit / MB:,.0f} MiB")
    opened, ds = state.run(
        "epoch",
        f"open the {n:,}-sample commit (in-process, no cache)",
        lambda: stream_iterable(state, data, cache_limit_bytes=limit),
    )
    plan, total = raw_plan(ds.source, n)
    ds.source.close()
    state.log(
        f"  raw plan: {sum(len(p[0]) for p in plan):,} ranges in {len(plan):,} batches, "
        f"{total / MB:,.1f} MiB"
    )

    def ours(workers: int, attempt: int) -> float:
        ds = stream_iterable(state, data, cache_limit_bytes=limit)
        try:
            _, seconds = state.run(
                "epoch",
                f"first epoch from S3, num_workers={workers}",
                lambda: epoch("stream", data, loader(ds, workers)),
                record=attempt == 0,
            )
            if workers == 0:
                f = ds.source.fetcher
                state.log(f"    fetcher: {f.requests:,} ranged reads, {f.bytes / MB:,.1f} MiB")
        finally:
            ds.source.close()
        return seconds

    def raw(attempt: int) -> float:
        run = raw_epoch(state, plan, total)
        _, seconds = state.run(
            "epoch", "raw cat_ranges epoch (same bytes)", run, record=attempt == 0
        )
        return seconds

    times: dict[str, list[float]] = {"ours": [], "raw": [], "w2": []}
    for attempt in range(state.args.repeat):
        order = ("ours", "raw") if attempt % 2 == 0 else ("raw", "ours")
        for name in order:
            times[name].append(ours(0, attempt) if name == "ours" else raw(attempt))
        times["w2"].append(ours(2, attempt))
    rate = best(state, "tensorcask num_workers=0", times["ours"], n)
    raw_rate = best(state, "raw cat_ranges", times["raw"], n)
    w2 = best(state, "tensorcask num_workers=2", times["w2"], n)
    state.raw_rate = raw_rate
    state.add(
        ceiling_row(
            "epoch",
            f"first epoch of {n:,} from S3, num_workers=0, vs raw cat_ranges",
            rate,
            raw_rate,
            NEED_RAW,
        ),
        ceiling_row("epoch", "first epoch from S3, num_workers=2, vs raw cat_ranges", w2, raw_rate),
        Row("epoch", "open of the commit (in-process, before the epoch)", opened.seconds, "s"),
    )
    if state.args.profile:
        profile_epoch(state, data, limit)


def profile_epoch(state: State, data: Data, limit: int | None, **kwargs: Any) -> None:
    """cProfile the first epoch of a streaming dataset (num_workers=0) and, with a
    ``cache_dir``, its second epoch (from the cache)."""
    ds = stream_iterable(state, data, cache_limit_bytes=limit, **kwargs)
    where = "a cache_dir" if "cache_dir" in kwargs else "memory"
    labels = [f"first epoch from S3, num_workers=0, pieces kept in {where}"]
    if "cache_dir" in kwargs:
        labels.append("second epoch, from the cache_dir, num_workers=0")
    try:
        for label in labels:
            t0 = time.perf_counter()
            _, stats = rb.profiled(lambda: epoch("profile", data, loader(ds, 0)))
            state.log(f"  [profile] {label}: {time.perf_counter() - t0:.2f} s under cProfile")
            state.log(rb.top_lines(stats, 30))
            state.log(tottime_lines(stats, 20))
    finally:
        ds.source.close()


def profile_map(state: State, data: Data) -> None:
    """cProfile a shuffled epoch of ``repo_dataset`` from a filled cache_dir."""
    from tensorcask.loaders.torch import repo_dataset

    folder = state.ctx.fresh_path("cache")
    ds = repo_dataset(
        data.url, COLUMNS, commit=data.commit, storage_options=opts(state), cache_dir=folder
    )
    try:
        epoch("fill", data, loader(ds, 0, True, SHUFFLE_SEED))
        t0 = time.perf_counter()
        _, stats = rb.profiled(lambda: epoch("profile", data, loader(ds, 0, True, SHUFFLE_SEED)))
    finally:
        ds.source.close()
    label = "map-style, shuffled, second epoch from the cache_dir, num_workers=0"
    state.log(f"  [profile] {label}: {time.perf_counter() - t0:.2f} s under cProfile")
    state.log(rb.top_lines(stats, 30))
    state.log(tottime_lines(stats, 20))


def tottime_lines(stats: pstats.Stats, count: int) -> str:
    import io

    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(count)
    return out.getvalue()


# -- section: cache -------------------------------------------------------------------


def bench_cache(state: State) -> None:
    """Section 3: epochs from a disk cache vs the same loader over the local repository."""
    from tensorcask.loaders.torch import repo_dataset, repo_iterable_dataset

    data = ensure_data(state)
    n = data.n
    repeat = state.args.repeat
    state.log(f"[cache] {n:,} samples; epochs from a cache_dir vs the local repository")
    local_iter = repo_iterable_dataset(data.path, COLUMNS, commit=data.commit, batch_size=BATCH)
    local_map = repo_dataset(data.path, COLUMNS, commit=data.commit)

    def compare(
        label: str, remote_ds: Any, local_ds: Any, workers: int, shuffle: bool, need: float
    ) -> None:
        _, fill = state.run(
            "cache",
            f"{label}: epoch 1 (fills the cache)",
            lambda: epoch("fill", data, loader(remote_ds, workers, shuffle, SHUFFLE_SEED)),
        )
        times: dict[str, list[float]] = {"cached": [], "local": []}
        for attempt in range(repeat):
            order = ("cached", "local") if attempt % 2 == 0 else ("local", "cached")
            seed = SHUFFLE_SEED + 1 + attempt
            for name in order:
                ds = remote_ds if name == "cached" else local_ds
                what = "epoch from the cache" if name == "cached" else "local repository"
                _, seconds = state.run(
                    "cache",
                    f"{label}: {what}",
                    lambda ds=ds, name=name, seed=seed: epoch(
                        name, data, loader(ds, workers, shuffle, seed)
                    ),
                    record=attempt == 0,
                )
                times[name].append(seconds)
        cached = best(state, f"{label} from the cache", times["cached"], n)
        local = best(state, f"{label} local", times["local"], n)
        state.add(
            Row("cache", f"{label}: epoch from the cache", cached, "/s", local, "local", need),
        )
        if workers == 0 and not shuffle:
            state.add(
                Row(
                    "cache",
                    f"{label}: epoch 1 filling the cache (vs raw cat_ranges)",
                    n / fill,
                    "/s",
                    state.raw_rate,
                    "ceiling",
                )
            )

    folders = [state.ctx.fresh_path("cache") for _ in range(3)]
    cases = [
        ("iterable, num_workers=0", 0, False, folders[0]),
        ("iterable, num_workers=2", 2, False, folders[1]),
    ]
    for label, workers, shuffle, folder in cases:
        ds = stream_iterable(state, data, cache_dir=folder)
        try:
            compare(label, ds, local_iter, workers, shuffle, NEED_LOCAL)
        finally:
            ds.source.close()
    ds = repo_dataset(
        data.url, COLUMNS, commit=data.commit, storage_options=opts(state), cache_dir=folders[2]
    )
    try:
        compare("map-style, shuffled, num_workers=0", ds, local_map, 0, True, NEED_LOCAL)
    finally:
        ds.source.close()
    if state.args.profile:
        profile_epoch(state, data, None, cache_dir=state.ctx.fresh_path("cache"))
        profile_map(state, data)


# -- section: side by side --------------------------------------------------------------


def peer_python(state: State, peer: str) -> str | None:
    """An interpreter where ``peer``'s package is installed (this one first), or None.

    Only looked up (``importlib.util.find_spec``), not imported: the write step imports
    it, and says so if that fails."""
    module = PEER_MODULES[peer]
    if importlib.util.find_spec(module) is not None:
        return sys.executable
    other = state.args.peer_python
    # venv interpreters are links to one binary: compare the links, not their targets
    if (
        not other
        or not os.path.exists(other)
        or os.path.abspath(other) == os.path.abspath(sys.executable)
    ):
        return None
    look = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    proc = subprocess.run([other, "-c", look], capture_output=True, timeout=SUBPROCESS_TIMEOUT)
    return other if proc.returncode == 0 else None


def run_peer(state: State, python: str, peer: str, spec: dict[str, Any]) -> Any:
    """``peer_main`` in ``python``; its result."""
    out = state.ctx.fresh_path(f"{peer}.json")
    log = state.ctx.fresh_path(f"{peer}.log")
    env = {**os.environ, **peer_env(state)}
    command = [python, os.path.abspath(__file__), "--peer", peer, "--peer-spec"]
    with open(log, "w") as f:
        proc = subprocess.run(
            [*command, json.dumps({**spec, "out": str(out)})],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=SUBPROCESS_TIMEOUT,
        )
    if proc.returncode != 0:
        raise PeerFailed(f"{PEERS[peer]} failed:\n{log.read_text()[-4000:]}")
    return json.loads(out.read_text())


def peer_env(state: State) -> dict[str, str]:
    """How the peers reach the server: AWS variables (MosaicML reads S3_ENDPOINT_URL)."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "S3_ENDPOINT_URL": state.ctx.server.endpoint_url,
    }


def side_metric(peer: str) -> str:
    return f"first epoch from S3 (cache_dir), num_workers=0: tensorcask vs {PEERS[peer]}"


def bench_side(state: State) -> None:
    """Section 4: LitData and MosaicML Streaming, one epoch each from the same server."""
    data = ensure_data(state)
    n = data.n
    state.log(f"[side] {n:,} samples, one epoch streamed, num_workers=0, each with a local cache")
    found = {peer: peer_python(state, peer) for peer in PEERS}
    for peer, python in found.items():
        state.log(f"  {PEERS[peer]}: {python or 'not installed'}")
        if python is None:
            state.missing.append(Missing("side", side_metric(peer), "not installed"))
    if not any(found.values()):
        return
    times = []
    for attempt in range(state.args.repeat):
        ds = stream_iterable(state, data, cache_dir=state.ctx.fresh_path("side-cache"))
        try:
            _, seconds = state.run(
                "side",
                "tensorcask: first epoch with a cache_dir, num_workers=0",
                lambda ds=ds: epoch("stream", data, loader(ds, 0)),
                record=attempt == 0,
            )
        finally:
            ds.source.close()
        times.append(seconds)
    ours = best(state, "tensorcask", times, n)
    for peer, python in found.items():
        if python is None:
            continue
        try:
            side_peer(state, data, peer, python, ours)
        except PeerFailed as exc:
            state.log(str(exc))
            why = str(exc).strip().splitlines()[-1][:80]
            state.missing.append(Missing("side", side_metric(peer), f"failed: {why}"))


def side_peer(state: State, data: Data, peer: str, python: str, ours: float) -> None:
    """Write the data in ``peer``'s format, upload it, time its epochs: a row."""
    name = PEERS[peer]
    bucket = state.ctx.new_bucket(peer)
    spec = {
        "n": data.n,
        "seed": SEED,
        "dir": str(state.ctx.fresh_path(f"{peer}-out")),
        "scratch": str(state.ctx.scratch),
        "url": f"s3://{bucket}/{peer}",
        "endpoint": state.ctx.server.endpoint_url,
        "repeat": min(state.args.repeat, PEER_REPEAT),
    }
    try:
        state.ctx.server.reset()
        result = run_peer(state, python, peer, spec)
    finally:
        state.ctx.drop_bucket(bucket)
    for got in result["totals"]:
        if tuple(got) != data.totals:
            raise AssertionError(f"{name}: an epoch gave {got}, expected {data.totals}")
    version = f"{name} {result['version']}"
    state.log(f"  {version}: wrote {result['files']} files in {result['write']:.1f} s")
    upload = rb.Op(
        "side",
        f"{name}: upload {result['files']} files (boto3)",
        result["upload_s"],
        rb.Counts(**result["upload"]),
    )
    first = rb.Op(
        "side",
        f"{name}: first epoch, num_workers=0",
        result["seconds"][0],
        rb.Counts(**result["counts"]),
    )
    for op in (upload, first):
        state.ctx.ops.append(op)
        state.log(f"  {op.label}: {op.seconds:.3f} s, {op.counts.brief()}")
    theirs = best(state, name, result["seconds"], data.n)
    state.add(Row("side", side_metric(peer), ours, "/s", theirs, version))


# -- the peers' side (runs in an interpreter where they are installed) ------------------


def _no_torchvision() -> None:
    """Stand-ins for torchvision, which ``import streaming`` pulls in (its vision datasets)
    and MDS reading never uses: PyPI's torchvision wheels are CUDA builds that fail to
    import next to a CPU-only torch."""
    names = ("torchvision", "torchvision.datasets", "torchvision.transforms")
    mods = {name: types.ModuleType(name) for name in (*names, "torchvision.transforms.functional")}
    for name, mod in mods.items():
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mods["torchvision.datasets"].VisionDataset = object  # type: ignore[attr-defined]
    mods["torchvision.datasets"].CIFAR10 = object  # type: ignore[attr-defined]
    mods["torchvision.transforms.functional"].to_tensor = None  # type: ignore[attr-defined]
    mods["torchvision"].datasets = mods["torchvision.datasets"]  # type: ignore[attr-defined]
    mods["torchvision"].transforms = mods["torchvision.transforms"]  # type: ignore[attr-defined]
    mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]  # type: ignore[attr-defined]
    sys.modules.update(mods)


def _import_peer(peer: str) -> Any:
    if peer == "litdata":
        import litdata
        import litdata.streaming.downloader as downloader

        # obstore refuses plain http unless told; the emulator is http on 127.0.0.1
        downloader._OBSTORE_CLIENT_OPTIONS = {  # type: ignore[attr-defined]
            **downloader._OBSTORE_CLIENT_OPTIONS,  # type: ignore[attr-defined]
            "allow_http": True,
        }
        return litdata
    _no_torchvision()
    import streaming

    return streaming


def _litdata_items(spec: tuple[str, int, int]) -> Iterable[dict[str, Any]]:
    """LitData's ``optimize`` function: samples ``a:b`` of the saved arrays."""
    folder, a, b = spec
    images = np.load(os.path.join(folder, "images.npy"), mmap_mode="r")
    labels = np.load(os.path.join(folder, "labels.npy"), mmap_mode="r")
    for i in range(a, b):
        yield {"image": np.asarray(images[i]), "label": int(labels[i])}


def _server_counts(endpoint: str, what: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{endpoint}/_bench/{what}", timeout=30) as r:
        return json.loads(r.read())


def peer_main(peer: str, spec_text: str) -> int:
    """A peer library's run: write the data in its format, upload it, read it back
    ``repeat`` times; the result (times, checks, server counts) as JSON in ``spec["out"]``."""
    spec = json.loads(spec_text)
    module = _import_peer(peer)
    images, labels = rb.mnist(spec["n"], spec["seed"])
    out_dir = spec["dir"]
    t0 = time.perf_counter()
    _peer_write(peer, module, images, labels, out_dir, spec["scratch"])
    result: dict[str, Any] = {"version": module.__version__, "write": time.perf_counter() - t0}
    del images, labels
    result["files"], result["upload_s"], result["upload"] = _peer_upload(spec, out_dir)
    remove(Path(out_dir))
    seconds, totals, counts = [], [], []
    for _ in range(spec["repeat"]):
        cache = tempfile.mkdtemp(dir=spec["scratch"])
        batches = _peer_loader(peer, module, spec, cache)
        _server_counts(spec["endpoint"], "reset")
        t0 = time.perf_counter()
        totals.append(_peer_epoch(batches))
        seconds.append(time.perf_counter() - t0)
        counts.append(_server_counts(spec["endpoint"], "reset"))
        del batches
        remove(Path(cache))
    result.update(seconds=seconds, totals=totals, counts=counts[0])
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


def _peer_write(
    peer: str, module: Any, images: np.ndarray, labels: np.ndarray, out_dir: str, scratch: str
) -> None:
    n = len(labels)
    if peer == "litdata":
        arrays = tempfile.mkdtemp(dir=scratch)
        np.save(os.path.join(arrays, "images.npy"), images)
        np.save(os.path.join(arrays, "labels.npy"), labels)
        step = 20_000
        module.optimize(
            fn=_litdata_items,
            inputs=[(arrays, a, min(a + step, n)) for a in range(0, n, step)],
            output_dir=out_dir,
            chunk_bytes="64MB",
            num_workers=1,
            mode="overwrite",
        )
        remove(Path(arrays))
    else:
        columns = {"image": "ndarray:uint8:28,28", "label": "int64"}
        with module.MDSWriter(out=out_dir, columns=columns) as writer:
            for i in range(n):
                writer.write({"image": images[i], "label": labels[i]})


def _peer_upload(spec: dict[str, Any], out_dir: str) -> tuple[int, float, dict[str, Any]]:
    """Upload the written files with boto3 (both peers depend on it): (files, seconds,
    the server's counts)."""
    import boto3

    client = boto3.client("s3", endpoint_url=spec["endpoint"])
    bucket, prefix = spec["url"][len("s3://") :].split("/", 1)
    files = sorted(p for p in Path(out_dir).rglob("*") if p.is_file())
    _server_counts(spec["endpoint"], "reset")
    t0 = time.perf_counter()
    for path in files:
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(out_dir).as_posix()}")
    seconds = time.perf_counter() - t0
    return len(files), seconds, _server_counts(spec["endpoint"], "reset")


def _peer_loader(peer: str, module: Any, spec: dict[str, Any], cache: str) -> Iterable[Any]:
    if peer == "litdata":
        options = {
            "endpoint_url": spec["endpoint"],
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
            "region_name": "us-east-1",
        }
        ds = module.StreamingDataset(spec["url"], cache_dir=cache, storage_options=options)
        return module.StreamingDataLoader(ds, batch_size=BATCH, num_workers=0)
    from torch.utils.data import DataLoader

    ds = module.StreamingDataset(remote=spec["url"], local=cache, batch_size=BATCH, shuffle=False)
    return DataLoader(ds, batch_size=BATCH, num_workers=0)


def _peer_epoch(batches: Iterable[Any]) -> list[int]:
    import torch

    count = label_sum = pixel_sum = 0
    for batch in batches:
        count += len(batch["label"])
        label_sum += int(batch["label"].sum())
        pixel_sum += int(batch["image"].sum(dtype=torch.int64))
    return [count, label_sum, pixel_sum]


# -- output -----------------------------------------------------------------------------


def reference(row: Row) -> str:
    if row.ref is None:
        return "-"
    need = f" (need {row.need:.2f}x)" if row.need is not None else ""
    if row.ref_kind == "ceiling":
        return f"raw {rb.fmt(row.ref, row.unit)}{need}"
    if row.ref_kind == "target":
        sign = ">=" if row.higher_is_better else "<="
        return f"target {sign} {rb.fmt(row.ref, row.unit)}"
    return f"{row.ref_kind} {rb.fmt(row.ref, row.unit)}{need}"


def markdown_rows(rows: list[Row], missing: list[Missing]) -> str:
    order = {s: i for i, s in enumerate(SECTIONS)}
    lines = ["| metric | value | reference | ratio | status |", "|---|---:|---:|---:|:---:|"]
    entries: list[tuple[int, tuple[str, ...]]] = []
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        cells = (r.metric, rb.fmt(r.value, r.unit), reference(r), ratio, r.status)
        entries.append((order[r.section], cells))
    for m in missing:
        entries.append((order[m.section], (m.metric, m.why, "-", "-", "-")))
    for _, cells in sorted(entries, key=lambda e: e[0]):
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def command_line(argv: list[str] | None) -> str:
    return shlex.join(["python", "benchmarks/stream.py", *(sys.argv[1:] if argv is None else argv)])


def header(args: argparse.Namespace) -> str:
    import moto
    import s3fs
    import torch

    import tensorcask as tc

    return (
        f"tensorcask {tc.__version__} streaming benchmark: samples={args.samples:,} "
        f"big={args.big:,} pushes={args.pushes}x{args.small_append:,} repeat={args.repeat} "
        f"| python {platform.python_version()} numpy {np.__version__} torch {torch.__version__} "
        f"s3fs {s3fs.__version__} moto {moto.__version__} | {os.cpu_count()} CPUs"
    )


# -- driver -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--samples", type=int, default=200_000, help="samples of the epoch sections (200000)"
    )
    parser.add_argument(
        "--big", type=int, default=1_000_000, help="samples of the open section's commit (1000000)"
    )
    parser.add_argument("--pushes", type=int, default=10, help="pushes before the second open (10)")
    parser.add_argument(
        "--small-append", type=int, default=1_000, help="samples appended per push (1000)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="repeats; the best is kept (3)")
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="list every request of the opens"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the streaming epochs")
    parser.add_argument(
        "--peer-python",
        default=PEER_PYTHON,
        help=f"another interpreter to look for LitData and MosaicML Streaming in ({PEER_PYTHON})",
    )
    parser.add_argument(
        "--dir", default=tempfile.gettempdir(), help="where to make the scratch directory"
    )
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--peer", choices=sorted(PEERS), help=argparse.SUPPRESS)
    parser.add_argument("--peer-spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.big = min(args.samples, 10_000), min(args.big, 20_000)
        args.pushes, args.small_append = min(args.pushes, 3), min(args.small_append, 100)
        args.repeat = min(args.repeat, 2)
    if min(args.samples, args.big, args.small_append, args.repeat) < 1 or args.pushes < 0:
        parser.error("sizes and --repeat must be >= 1, --pushes >= 0")
    if args.samples < BATCH or args.big < BATCH:
        parser.error(f"--samples and --big must be >= {BATCH}")
    args.trace = args.verbose  # what rb.Context reads
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.peer:
        return peer_main(args.peer, args.peer_spec)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so scratch and server go
    scratch = Path(tempfile.mkdtemp(prefix="tensorcask-bench-stream-", dir=args.dir))
    server = rb.Server(scratch / "server.log")
    try:
        started = time.perf_counter()
        state = State(rb.Context(args, scratch, server))
        state.log(f"$ {command_line(argv)}")
        state.log(header(args))
        state.log(f"moto S3 server at {server.endpoint_url} (pid {server.proc.pid})")
        only = set(args.only or SECTIONS)
        for name, run in (
            ("open", bench_open),
            ("epoch", bench_epoch),
            ("cache", bench_cache),
            ("side", bench_side),
        ):
            if name in only:
                run(state)
        elapsed = time.perf_counter() - started
        ctx = state.ctx
        if args.json:
            print(
                json.dumps(
                    {
                        "command": command_line(argv),
                        "config": vars(args),
                        "elapsed_s": elapsed,
                        "results": [r.to_dict() for r in ctx.rows],
                        "missing": [vars(m) for m in state.missing],
                        "operations": [
                            {
                                "section": o.section,
                                "label": o.label,
                                "seconds": o.seconds,
                                "requests": {k: o.counts.n(k) for k in rb.KINDS},
                                "ranged_get": o.counts.ranged,
                                "bytes_up": o.counts.up,
                                "bytes_down": o.counts.down,
                            }
                            for o in ctx.ops
                        ],
                    },
                    indent=2,
                )
            )
        else:
            print(
                f"\n{markdown_rows(ctx.rows, state.missing)}\n\n{rb.markdown_ops(ctx.ops)}\n\n"
                f"ratio = speed relative to the reference (>1 faster, or fewer requests); "
                f"total {elapsed:.0f} s\n\n    {command_line(argv)}"
            )
    finally:
        server.stop()
        with contextlib.suppress(OSError):
            remove(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
