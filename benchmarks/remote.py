"""Benchmark of tensorcask remotes on S3: time, requests and bytes of push, clone and fetch.

Run from the repository root (the library and the ``s3`` extra installed: s3fs, moto)::

    python benchmarks/remote.py                           # defaults: --samples 200000 --big 1000000
    python benchmarks/remote.py --samples 50000 --big 200000
    python benchmarks/remote.py --quick                   # small smoke run (a few seconds)
    python benchmarks/remote.py --profile                 # also cProfile a push and a clone
    python benchmarks/remote.py --trace --quick           # list every request of every operation
    python benchmarks/remote.py --json                    # results as JSON on stdout

The remote is a moto S3 server started by the script on 127.0.0.1, in a
process of its own (so it does not share the client's GIL), and reached
through s3fs with ``endpoint_url`` exactly as a user would
(``repo.add_remote("origin", "s3://bucket/repo", endpoint_url=..., ...)``).
The server's WSGI app is wrapped in a counting middleware that records every
request by type (GET, LIST = a GET on a bucket with a listing query, HEAD,
PUT, POST, DELETE), with the body bytes it received (``Content-Length``, else
the bytes read) and sent back, so request and byte counts are exact. One
change to moto: it reads an object's whole body for every GET, so a ranged
GET of a large pack would cost the pack's size; the server keeps each body
once read, so that a range costs what it returns, as on S3 (see
``_serve_ranges_cheaply``). Uploads are untouched.

Data is MNIST-shaped and seeded: ``uint8`` 28x28 images and ``int64`` labels.

Sections (``--only`` names):

``push``   ``repo.push`` of ``--samples`` images and labels (one commit) to an empty
           bucket; ceiling: ``fs.pipe`` of the same array bytes (one object per 256 MiB,
           like the packs) into another bucket. ``tc.clone`` (full) of that remote;
           ceiling: ``fs.cat`` of the raw objects. Objects in the bucket per 100k
           samples.
``big``    a ``--big`` sample image column pushed once (next to ``fs.pipe`` of its
           bytes unless ``--no-big-raw``), then a partial clone (history only)
           counted; then ``--pushes`` pushes of ``--small-append`` appended samples
           each, and a partial clone counted again; then an append of ``--append``
           samples and a change of 1% of the samples, each committed and pushed,
           with the bytes uploaded next to what changed (the new samples' bytes;
           for the 1% change also the record pages the new commit has and the old
           one lacks, found by comparing the two record trees locally); a last
           partial clone, and the objects in the bucket.

Every operation's requests and bytes are printed as a second table. Timings
are the best of ``--repeat`` for the push section (ours and the ceiling
alternating, fresh buckets each time); request counts are from the first.
The scratch directory (a new folder inside ``--dir``) is removed at exit, and
the server process with it.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import json
import os
import platform
import pstats
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from report import Row, ceiling_row, fmt_value, remove, timed

SECTIONS = ("push", "big")
KINDS = ("GET", "LIST", "HEAD", "PUT", "POST", "DELETE")
FOLDERS = ("data", "objects", "refs", "other")
CHUNK = 10_000  # samples per update() call
RAW_BLOB = 256 << 20  # bytes per raw object in the ceilings (the size of a sample pack)
SEED = 20240601
MB = 1 << 20
TRACE_LINES = 200  # requests listed per operation by --trace

NEED_PUSH = 0.8  # push and clone: at least this fraction of the raw s3fs speed
TARGET_OBJECTS_PER_100K = 100.0
APPEND_FACTOR = 1.5  # an incremental push uploads at most 1.5x what changed, plus 1 MB
APPEND_SLACK = 1 * MB


# -- the counting S3 server (runs in its own process: `remote.py --serve`) ------------------


class _CountingInput:
    """A WSGI input stream that counts the bytes read from it."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.count = 0

    def read(self, *args: Any) -> bytes:
        data = self._stream.read(*args)
        self.count += len(data)
        return data

    def readline(self, *args: Any) -> bytes:
        data = self._stream.readline(*args)
        self.count += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        n = self._stream.readinto(buffer)
        self.count += n or 0
        return n

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            self.count += len(line)
            yield line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _classify(environ: dict[str, Any]) -> tuple[str, str]:
    """(request type, folder of the object) of one S3 request (path-style addressing)."""
    method = environ["REQUEST_METHOD"].upper()
    path = environ.get("PATH_INFO", "")
    query = environ.get("QUERY_STRING", "")
    parts = [p for p in path.split("/") if p]
    if method == "GET" and len(parts) <= 1:  # a bucket: ListObjects(V2) and friends
        params = {q.split("=", 1)[0] for q in query.split("&") if q}
        kind = "LIST" if not params or params & {"list-type", "prefix", "delimiter"} else "GET"
    else:
        kind = method if method in KINDS else "POST"
    folder = next((p for p in parts[1:] if p in ("data", "objects", "refs")), "other")
    return kind, folder


class CountingApp:
    """WSGI middleware: counts requests by type and body bytes in and out.

    ``GET /_bench/counts`` answers the counts as JSON; ``/_bench/reset``
    answers them and starts again from zero. Neither is counted.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.stats: dict[str, list[int]] = {}
        self.folders: dict[str, int] = {}
        self.ranged = 0
        self.trace: list[str] = []
        self.reset()

    def reset(self) -> None:
        self.stats = {k: [0, 0, 0] for k in KINDS}  # requests, bytes received, bytes sent
        self.folders = dict.fromkeys(FOLDERS, 0)  # PUT and POST body bytes by folder
        self.ranged = 0
        self.trace = []  # the first TRACE_LINES requests, for --trace

    def snapshot(self) -> dict[str, Any]:
        return {
            "stats": self.stats,
            "folders": self.folders,
            "ranged": self.ranged,
            "trace": self.trace,
        }

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO", "").startswith("/_bench/"):
            with self.lock:
                body = json.dumps(self.snapshot()).encode()
                if environ["PATH_INFO"] == "/_bench/reset":
                    self.reset()
            start_response(
                "200 OK",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        kind, folder = _classify(environ)
        ranged = kind == "GET" and "HTTP_RANGE" in environ
        counter = _CountingInput(environ["wsgi.input"])
        environ["wsgi.input"] = counter
        length = environ.get("CONTENT_LENGTH")
        status: list[str] = []

        def respond(code: str, headers: Any, *rest: Any) -> Any:
            status[:] = [code.split(" ", 1)[0]]
            return start_response(code, headers, *rest)

        result = self.app(environ, respond)
        query = environ.get("QUERY_STRING", "")
        what = f"{kind:<6} {environ['PATH_INFO']}{'?' + query if query else ''}"
        if ranged:
            what += f" [{environ['HTTP_RANGE']}]"
        return self._track(result, kind, folder, ranged, counter, length, what, status)

    def _track(
        self,
        result: Any,
        kind: str,
        folder: str,
        ranged: bool,
        counter: _CountingInput,
        length: str | None,
        what: str,
        status: list[str],
    ) -> Iterator[bytes]:
        sent = 0
        try:
            for chunk in result:
                sent += len(chunk)
                yield chunk
        finally:
            if hasattr(result, "close"):
                result.close()
            received = int(length) if length and length.isdigit() else counter.count
            with self.lock:
                row = self.stats[kind]
                row[0] += 1
                row[1] += received
                row[2] += sent
                if kind in ("PUT", "POST"):
                    self.folders[folder] += received
                self.ranged += ranged
                if len(self.trace) < TRACE_LINES:
                    code = status[0] if status else "?"
                    self.trace.append(f"{code} {what} up={received} down={sent}")


def _serve_ranges_cheaply() -> None:
    """Make a ranged GET cost what it returns, as on S3.

    moto reads an object's whole body (``FakeKey.value``) for every GET and
    slices the range out of it: a 3 MiB range of a 170 MiB object costs
    ~150 ms instead of ~20 ms, which would charge reading packs by ranges
    (clone, fetch_data) for the emulator's cost. Here the body is read once
    and kept; setting a new value drops it.
    """
    from moto.s3.models import FakeKey

    plain: Any = FakeKey.value

    def get(key: Any) -> bytes:
        kept = key.__dict__.get("_bench_value")
        if kept is None:
            kept = key.__dict__["_bench_value"] = plain.fget(key)
        return kept

    def put(key: Any, value: bytes) -> None:
        key.__dict__.pop("_bench_value", None)
        plain.fset(key, value)

    FakeKey.value = property(get, put)  # type: ignore[method-assign,assignment]


def serve() -> None:
    """Run the counting moto S3 server on an ephemeral port of 127.0.0.1; print the port."""
    import logging

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    _serve_ranges_cheaply()
    app = CountingApp(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, True, request_handler=MotoRequestHandler)

    def exit_with_parent() -> None:  # the parent holds our stdin: EOF means it is gone
        sys.stdin.buffer.read()
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    print(server.server_address[1], flush=True)
    server.serve_forever()


# -- the client side ----------------------------------------------------------------


@dataclass
class Counts:
    """Requests and bytes of one operation, as the server counted them."""

    stats: dict[str, list[int]]
    folders: dict[str, int]
    ranged: int
    trace: list[str] = field(default_factory=list)

    def n(self, kind: str) -> int:
        return self.stats[kind][0]

    @property
    def requests(self) -> int:
        return sum(v[0] for v in self.stats.values())

    @property
    def up(self) -> int:
        """Request body bytes (what the client uploaded)."""
        return sum(v[1] for v in self.stats.values())

    @property
    def down(self) -> int:
        """Response body bytes (what the client downloaded)."""
        return sum(v[2] for v in self.stats.values())

    def brief(self) -> str:
        kinds = " ".join(f"{k}={self.n(k)}" for k in KINDS if self.n(k))
        return (
            f"{self.requests} requests ({kinds or 'none'}; ranged GET={self.ranged}), "
            f"up {self.up / MB:,.2f} MiB, down {self.down / MB:,.2f} MiB"
        )


class Server:
    """The counting moto server, in a child process."""

    def __init__(self, log: Path) -> None:
        self._log = open(log, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve"],
            stdin=subprocess.PIPE,  # the server exits when this closes (when we exit)
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise RuntimeError(f"the moto server did not start; see {log}")
        self.endpoint_url = f"http://127.0.0.1:{int(line)}"

    @property
    def storage_options(self) -> dict[str, Any]:
        """What a user passes to reach this server (``add_remote(..., **options)``)."""
        return {
            "key": "testing",
            "secret": "testing",
            "endpoint_url": self.endpoint_url,
            "client_kwargs": {"region_name": "us-east-1"},
            "use_listings_cache": False,
        }

    def filesystem(self) -> Any:
        """A fresh s3fs filesystem on this server (no instance cache)."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)

    def _ask(self, what: str) -> Counts:
        with urllib.request.urlopen(f"{self.endpoint_url}/_bench/{what}", timeout=30) as r:
            return Counts(**json.loads(r.read()))

    def reset(self) -> None:
        self._ask("reset")

    def counts(self) -> Counts:
        """The counts since the last reset (and reset them)."""
        return self._ask("reset")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@dataclass
class Op:
    """One measured operation: its time, requests and bytes."""

    section: str
    label: str
    seconds: float
    counts: Counts


@dataclass
class Context:
    """Arguments, scratch space, the server, and what the sections report."""

    args: argparse.Namespace
    scratch: Path
    server: Server
    rows: list[Row] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _serial: int = 0

    def fresh_path(self, stem: str) -> Path:
        self._serial += 1
        return self.scratch / f"{stem}-{self._serial}"

    def new_bucket(self, stem: str) -> str:
        self._serial += 1
        name = f"{stem}-{self._serial}"
        self.server.filesystem().call_s3("create_bucket", Bucket=name)
        return name

    def drop_bucket(self, name: str) -> None:
        """Remove a bucket and its objects (frees the server's memory and disk)."""
        with contextlib.suppress(FileNotFoundError):
            self.server.filesystem().rm(name, recursive=True)

    def log(self, text: str) -> None:
        print(text, file=sys.stderr if self.args.json else sys.stdout, flush=True)

    def add(self, *rows: Row) -> None:
        self.rows.extend(rows)

    def measure(self, section: str, label: str, fn: Callable[[], Any]) -> tuple[Op, Any]:
        """Run ``fn`` with the server's counts reset before; record its time and counts."""
        self.server.reset()
        seconds, result = timed(fn)
        op = Op(section, label, seconds, self.server.counts())
        self.ops.append(op)
        self.log(f"  {label}: {seconds:.3f} s, {op.counts.brief()}")
        if self.args.trace:
            for line in op.counts.trace:
                self.log(f"      {line}")
        return op, result

    def bucket_objects(self, bucket: str) -> int:
        """Objects in a bucket (the listing is not counted against any operation)."""
        found = len(self.server.filesystem().find(bucket))
        self.server.reset()
        return found


# -- data and repositories ------------------------------------------------------------


def mnist(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    return images, labels


def new_repo(path: Path) -> Any:
    import tensorcask as tc

    return tc.init(path, user_name="bench", user_email="bench@example.org")


def ingest(col: Any, data: np.ndarray, first_key: int = 0) -> None:
    for start in range(0, len(data), CHUNK):
        stop = min(start + CHUNK, len(data))
        col.update(np.arange(first_key + start, first_key + stop), data[start:stop])


def build(path: Path, columns: dict[str, np.ndarray]) -> Any:
    """A new repository with ``columns`` in one commit; it stays open."""
    repo = new_repo(path)
    with repo.checkout(write=True) as co:
        for name, data in columns.items():
            col = co.add_ndarray_column(name, shape=data.shape[1:], dtype=data.dtype)
            ingest(col, data)
        co.commit(f"{len(next(iter(columns.values()))):,} samples")
    return repo


def append_rows(co: Any, data: np.ndarray, at: int) -> None:
    """Append ``data`` to the ``images`` column of a write checkout, keys from ``at``."""
    ingest(co["images"], data, at)


def write_commit(repo: Any, message: str, edit: Callable[[Any], None]) -> str:
    with repo.checkout(write=True) as co:
        edit(co)
        return co.commit(message)


def raw_blobs(arrays: list[np.ndarray]) -> list[bytes]:
    """The arrays' bytes as objects of at most RAW_BLOB bytes each (built before timing)."""
    out = []
    for arr in arrays:
        data = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        out += [data[i : i + RAW_BLOB].tobytes() for i in range(0, len(data), RAW_BLOB)]
    return out


def new_pages(repo: Any, column: str, old: str, new: str) -> tuple[int, int, int]:
    """(pages, bytes) of ``column``'s record pages in commit ``new`` but not ``old``; all pages.

    Found by listing both record trees in full, independently of what push walks.
    """
    history = repo._parts.history  # a benchmark may look inside
    tree = history.tree
    before = {p.hash for p in tree.pages(history.columns(old)[column].tree)}
    count = size = total = 0
    for page in tree.pages(history.columns(new)[column].tree):
        total += 1
        if page.hash not in before:
            count += 1
            size += len(page.data)
    return count, size, total


def check_samples(repo: Any, column: str, expected: np.ndarray, keys: np.ndarray) -> None:
    with repo.checkout() as rc:
        got = np.asarray(rc[column].get_many(keys))
    if not np.array_equal(got, expected[keys]):
        raise AssertionError(f"{column}: the clone returned different samples than were pushed")


# -- profiling --------------------------------------------------------------------------

# (what, where the function is defined (a substring of its file's path), its name): the
# phases of a push and of a clone. Rows for functions that did not run are left out.
PHASES = (
    ("push: whole", "remote/sync.py", "push"),
    ("push: reachability walk", "history/reach.py", "reachable"),
    ("push: _locate_samples (local index, sort)", "remote/sync.py", "_locate_samples"),
    ("push: _upload_samples", "remote/sync.py", "_upload_samples"),
    ("push:   _nbytes (progress totals)", "remote/sync.py", "_nbytes"),
    ("push:   local locate_many", "tensorcask/", "locate_many"),
    ("push:   local fetch (read samples)", "storage/content.py", "fetch"),
    ("push:   encode_sample", "remote/samples.py", "encode_sample"),
    ("push:   PackSet.write", "remote/pack", "write"),
    ("push:     encode_pack", "remote/packs.py", "encode_pack"),
    ("push:     pack_id (blake2b)", "remote/packs.py", "pack_id"),
    ("push:     decode_index", "remote/packs.py", "decode_index"),
    ("push:     Transport.put (upload)", "remote/transport.py", "put"),
    ("push: local history get_many", "tensorcask/", "get_many"),
    ("push: remote refs (listing, set_if_equals)", "remote/refs.py", "set_if_equals"),
    ("push: consolidate", "remote/pack", "consolidate"),
    ("clone: fetch", "remote/sync.py", "fetch"),
    ("clone: reachability walk", "history/reach.py", "reachable"),
    ("clone: _store_samples", "remote/sync.py", "_store_samples"),
    ("clone:   PackSet.locate", "remote/pack", "locate"),
    ("clone:   PackSet.read", "remote/pack", "read"),
    ("clone:     Transport.cat_ranges (download)", "remote/transport.py", "cat_ranges"),
    ("clone:     Transport.cat_many (download)", "remote/transport.py", "cat_many"),
    ("clone:   decode_many (hash check)", "remote/samples.py", "decode_many"),
    ("clone:   store append", "storage/content.py", "append"),
    ("clone:   store publish", "storage/content.py", "publish"),
)


def profiled(fn: Callable[[], Any]) -> tuple[Any, pstats.Stats]:
    prof = cProfile.Profile()
    result = prof.runcall(fn)
    return result, pstats.Stats(prof)


def phase_lines(stats: pstats.Stats, prefix: str) -> list[str]:
    """Cumulative seconds of the phases whose label starts with ``prefix``."""
    table: dict[tuple[str, str], float] = {}
    for (filename, _, name), (_, _, _, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "tensorcask" in filename:
            key = (filename.replace(os.sep, "/"), name)
            table[key] = table.get(key, 0.0) + cum
    lines = []
    for label, suffix, name in PHASES:
        if not label.startswith(prefix):
            continue
        # the largest match: the outermost of nested functions of one name
        seconds = max((c for (f, n), c in table.items() if n == name and suffix in f), default=0)
        if seconds:
            lines.append(f"    {label:<44} {seconds:8.3f} s")
    return lines


def top_lines(stats: pstats.Stats, count: int = 25) -> str:
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("cumulative").print_stats(count)
    return out.getvalue()


# -- sections -----------------------------------------------------------------------------


def bench_push(ctx: Context) -> None:
    """Section 1: push of N samples and full clone, each next to raw s3fs; objects per 100k."""
    import tensorcask as tc

    n = ctx.args.samples
    images, labels = mnist(n, SEED)
    nbytes = images.nbytes + labels.nbytes
    ctx.log(f"[push] {n:,} images + labels, {nbytes / MB:,.1f} MiB of sample bytes")
    path = ctx.fresh_path("source")
    seconds, repo = timed(lambda: build(path, {"images": images, "labels": labels}))
    ctx.log(f"  built the local repository in {seconds:.1f} s")
    blobs = raw_blobs([images, labels])
    raw_fs = ctx.server.filesystem()
    ours_s, raw_s = [], []
    bucket = raw_bucket = ""
    try:
        for attempt in range(ctx.args.repeat):
            for old in (bucket, raw_bucket):
                if old:
                    ctx.drop_bucket(old)
            bucket, raw_bucket = ctx.new_bucket("push"), ctx.new_bucket("raw")
            raw_fs.ls(raw_bucket)  # the session exists before timing, as for our remote
            url = f"s3://{bucket}/repo"
            if "origin" in repo.remotes:
                repo.remove_remote("origin")
            repo.add_remote("origin", url, **ctx.server.storage_options)
            label = "push" if attempt == 0 else f"push (repeat {attempt + 1})"
            op, result = ctx.measure("push", f"{label}: {n:,} samples", lambda: repo.push("origin"))
            ours_s.append(op.seconds)
            if attempt == 0:
                ctx.log(
                    f"  PushResult: {result.samples:,} samples, {result.objects:,} history "
                    f"objects, {result.bytes / MB:,.1f} MiB"
                )
            paths = [f"{raw_bucket}/blob-{i:04d}" for i in range(len(blobs))]
            raw_op, _ = ctx.measure(
                "push",
                f"raw fs.pipe: {len(blobs)} object(s), {nbytes / MB:,.1f} MiB",
                functools.partial(raw_fs.pipe, dict(zip(paths, blobs, strict=True))),
            )
            raw_s.append(raw_op.seconds)
        ctx.add(
            ceiling_row(
                "push",
                f"push {n:,} samples (images+labels) vs raw fs.pipe",
                n / min(ours_s),
                n / min(raw_s),
                NEED_PUSH,
            )
        )
        objects = ctx.bucket_objects(bucket)
        per_100k = objects / (n / 100_000)
        ctx.log(f"  {objects} objects in the bucket: {per_100k:.1f} per 100k samples")
        ctx.add(
            Row(
                "push",
                "objects on the remote per 100k samples",
                per_100k,
                "objects",
                TARGET_OBJECTS_PER_100K,
                "target",
                1.0,
            )
        )
        if ctx.args.profile:
            profile_push(ctx, repo, n)

        # full clone vs raw cat
        clone_path = ctx.fresh_path("clone")
        op, clone = ctx.measure(
            "push",
            f"clone (full): {n:,} samples",
            lambda: tc.clone(url, clone_path, storage_options=ctx.server.storage_options),
        )
        try:
            keys = np.random.default_rng(SEED + 1).integers(0, n, size=min(n, 500))
            check_samples(clone, "images", images, keys)
            check_samples(clone, "labels", labels, keys)
        finally:
            clone.close()
        remove(clone_path)
        raw_fs = ctx.server.filesystem()
        raw_fs.ls(raw_bucket)
        raw_op, got = ctx.measure(
            "push",
            f"raw fs.cat: {len(paths)} object(s)",
            lambda: raw_fs.cat(paths),
        )
        if sum(len(v) for v in got.values()) != nbytes:
            raise AssertionError("raw fs.cat returned the wrong number of bytes")
        del got
        ctx.add(
            ceiling_row(
                "push",
                f"clone (full) {n:,} samples vs raw fs.cat",
                n / op.seconds,
                n / raw_op.seconds,
                NEED_PUSH,
            )
        )
        if ctx.args.profile:
            clone_path = ctx.fresh_path("clone")
            clone, stats = profiled(
                lambda: tc.clone(url, clone_path, storage_options=ctx.server.storage_options)
            )
            clone.close()
            remove(clone_path)
            ctx.log("  [profile] clone (full), cumulative seconds under cProfile:")
            for line in phase_lines(stats, "clone"):
                ctx.log(line)
            ctx.log(top_lines(stats))
    finally:
        repo.close()
        remove(path)
        for old in (bucket, raw_bucket):
            if old:
                ctx.drop_bucket(old)


def profile_push(ctx: Context, repo: Any, n: int) -> None:
    bucket = ctx.new_bucket("profile")
    repo.add_remote("profile", f"s3://{bucket}/repo", **ctx.server.storage_options)
    try:
        t0 = time.perf_counter()
        _, stats = profiled(lambda: repo.push("profile", "main"))
        ctx.log(
            f"  [profile] push of {n:,} samples under cProfile: {time.perf_counter() - t0:.2f} s"
        )
        for line in phase_lines(stats, "push"):
            ctx.log(line)
        ctx.log(top_lines(stats))
    finally:
        repo.remove_remote("profile")
        ctx.drop_bucket(bucket)
        ctx.server.reset()


def bench_big(ctx: Context) -> None:
    """Sections 2 and 3: a big image column; partial clones; incremental pushes."""
    import tensorcask as tc

    args = ctx.args
    big = args.big
    images, _ = mnist(big, SEED + 10)
    ctx.log(f"[big] {big:,} images, {images.nbytes / MB:,.1f} MiB")
    path = ctx.fresh_path("big")
    t0 = time.perf_counter()
    repo = build(path, {"images": images})
    ctx.log(f"  built the local repository in {time.perf_counter() - t0:.1f} s")
    bucket = ctx.new_bucket("big")
    url = f"s3://{bucket}/repo"
    opts = ctx.server.storage_options
    rng = np.random.default_rng(SEED + 11)
    size = big
    try:
        repo.add_remote("origin", url, **opts)
        op, _ = ctx.measure("big", f"push: {big:,} samples", lambda: repo.push("origin"))
        if args.big_raw:
            raw_bucket = ctx.new_bucket("raw-big")
            raw_fs = ctx.server.filesystem()
            raw_fs.ls(raw_bucket)
            blobs = raw_blobs([images])
            paths = [f"{raw_bucket}/blob-{i:04d}" for i in range(len(blobs))]
            raw_op, _ = ctx.measure(
                "big",
                f"raw fs.pipe: {len(blobs)} object(s), {images.nbytes / MB:,.1f} MiB",
                lambda: raw_fs.pipe(dict(zip(paths, blobs, strict=True))),
            )
            del blobs
            ctx.drop_bucket(raw_bucket)
            ctx.add(
                ceiling_row(
                    "big",
                    f"push {big:,} samples (images) vs raw fs.pipe",
                    big / op.seconds,
                    big / raw_op.seconds,
                    NEED_PUSH,
                )
            )
        else:
            ctx.add(Row("big", f"push {big:,} samples (images)", big / op.seconds, "/s"))
        del images

        def partial_clone(label: str) -> Op:
            clone_path = ctx.fresh_path("partial")
            op, clone = ctx.measure(
                "big",
                f"partial clone ({label}): {size:,} records",
                lambda: tc.clone(url, clone_path, partial=True, storage_options=opts),
            )
            try:
                with clone.checkout() as rc:
                    if len(rc["images"]) != size:
                        raise AssertionError("the partial clone has the wrong number of records")
            finally:
                clone.close()
            remove(clone_path)
            return op

        first = partial_clone("after the first push")

        # --pushes small appends, each committed and pushed
        small = args.small_append
        small_ops = []
        for i in range(args.pushes):
            batch = rng.integers(0, 256, size=(small, 28, 28), dtype=np.uint8)
            at = size
            write_commit(repo, f"append {small}", functools.partial(append_rows, data=batch, at=at))
            size += small
            op, _ = ctx.measure(
                "big", f"push {i + 1}/{args.pushes}: append {small:,}", lambda: repo.push("origin")
            )
            small_ops.append(op)
        later = partial_clone(f"after {args.pushes} more pushes")
        pushes_done = 1 + args.pushes
        for op, when in ((first, "1 push"), (later, f"{pushes_done} pushes")):
            c = op.counts
            ctx.add(
                Row(
                    "big",
                    f"partial clone {big:,}-record commit after {when}: requests",
                    c.requests,
                    "req",
                ),
                Row("big", f"partial clone after {when}: bytes down", c.down, "B"),
                Row("big", f"partial clone after {when}: time", op.seconds, "s"),
            )
        growth = (later.counts.requests - first.counts.requests) / max(args.pushes, 1)
        ctx.log(
            f"  partial clone requests: {first.counts.requests} after 1 push, "
            f"{later.counts.requests} after {pushes_done} pushes ({growth:+.1f} per push)"
        )
        ctx.add(Row("big", "partial clone: extra requests per push", growth, "req"))
        mean_up = sum(o.counts.up for o in small_ops) / max(len(small_ops), 1)
        ctx.add(
            Row(
                "big",
                f"push of {small:,} appended samples: bytes up (mean of {len(small_ops)})",
                mean_up,
                "B",
                APPEND_FACTOR * small * 784 + APPEND_SLACK,
                "target",
                1.0,
            )
        )

        # append --append samples, commit, push
        n_new = args.append
        batch = rng.integers(0, 256, size=(n_new, 28, 28), dtype=np.uint8)
        at = size
        head_before = _head(repo)
        head_after = write_commit(
            repo, f"append {n_new}", lambda co: ingest(co["images"], batch, at)
        )
        size += n_new
        op, _ = ctx.measure("big", f"push: append {n_new:,} to {at:,}", lambda: repo.push("origin"))
        new_bytes = batch.nbytes
        pages, page_bytes, _ = new_pages(repo, "images", head_before, head_after)
        ctx.log(
            f"  append: new sample bytes {new_bytes / MB:.2f} MiB, new record pages {pages} "
            f"({page_bytes / MB:.2f} MiB); uploaded {op.counts.up / MB:.2f} MiB "
            f"(data/ {op.counts.folders['data'] / MB:.2f}, objects/ "
            f"{op.counts.folders['objects'] / MB:.2f}, refs/ {op.counts.folders['refs']} B)"
        )
        ctx.add(
            Row(
                "big",
                f"push of {n_new:,} appended samples: bytes up",
                op.counts.up,
                "B",
                APPEND_FACTOR * new_bytes + APPEND_SLACK,
                "target",
                1.0,
            )
        )

        # change 1% of the samples at random
        n_change = max(1, size // 100)
        keys = np.sort(rng.choice(size, size=n_change, replace=False))
        values = rng.integers(0, 256, size=(n_change, 28, 28), dtype=np.uint8)
        head_before = _head(repo)
        head_after = write_commit(
            repo, f"change {n_change}", lambda co: co["images"].update(keys, values)
        )
        op, _ = ctx.measure(
            "big", f"push: change {n_change:,} of {size:,} (1%)", lambda: repo.push("origin")
        )
        pages, page_bytes, total_pages = new_pages(repo, "images", head_before, head_after)
        changed = values.nbytes + page_bytes
        ctx.log(
            f"  1% change: changed sample bytes {values.nbytes / MB:.2f} MiB, record pages "
            f"{pages} of {total_pages} new ({page_bytes / MB:.2f} MiB); uploaded "
            f"{op.counts.up / MB:.2f} MiB (data/ {op.counts.folders['data'] / MB:.2f}, objects/ "
            f"{op.counts.folders['objects'] / MB:.2f})"
        )
        ctx.add(
            Row(
                "big",
                f"push of a 1% change ({n_change:,} samples): bytes up",
                op.counts.up,
                "B",
                APPEND_FACTOR * changed + APPEND_SLACK,
                "target",
                1.0,
            ),
            Row("big", "  of which changed samples' bytes", values.nbytes, "B"),
            Row("big", f"  of which new record pages ({pages} of {total_pages})", page_bytes, "B"),
        )
        last = partial_clone(f"after {pushes_done + 2} pushes")
        ctx.add(
            Row(
                "big",
                f"partial clone after {pushes_done + 2} pushes (1% change last): requests",
                last.counts.requests,
                "req",
            ),
            Row(
                "big",
                f"partial clone after {pushes_done + 2} pushes: bytes down",
                last.counts.down,
                "B",
            ),
        )
        objects = ctx.bucket_objects(bucket)
        ctx.log(f"  {objects} objects in the bucket after {pushes_done + 2} pushes")
        ctx.add(
            Row(
                "big",
                f"objects on the remote per 100k samples ({size:,}, {pushes_done + 2} pushes)",
                objects / (size / 100_000),
                "objects",
                TARGET_OBJECTS_PER_100K,
                "target",
                1.0,
            )
        )
    finally:
        repo.close()
        remove(path)
        ctx.drop_bucket(bucket)


def _head(repo: Any) -> str:
    with repo.checkout() as rc:
        return rc.commit_id


# -- output -----------------------------------------------------------------------------


def fmt(value: float, unit: str) -> str:
    if unit == "req":
        return f"{value:,.1f}" if value != int(value) else f"{int(value):,}"
    if unit == "objects":
        return f"{value:,.1f}"
    return fmt_value(value, unit)


def markdown_rows(rows: list[Row]) -> str:
    lines = [
        "| metric | value | reference | ratio | status |",
        "|---|---:|---:|---:|:---:|",
    ]
    for r in rows:
        if r.ref is None:
            ref = "-"
        elif r.ref_kind == "ceiling":
            ref = f"raw {fmt(r.ref, r.unit)} (need {r.need:.2f}x)"
        else:
            sign = ">=" if r.higher_is_better else "<="
            ref = f"target {sign} {fmt(r.ref, r.unit)}"
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        lines.append(f"| {r.metric} | {fmt(r.value, r.unit)} | {ref} | {ratio} | {r.status} |")
    return "\n".join(lines)


def markdown_ops(ops: list[Op]) -> str:
    head = ["operation", "time", *KINDS, "(ranged GET)", "requests", "up", "down"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for op in ops:
        c = op.counts
        cells = [
            op.label,
            f"{op.seconds:.3f} s",
            *(f"{c.n(k):,}" for k in KINDS),
            f"{c.ranged:,}",
            f"{c.requests:,}",
            f"{c.up / MB:,.2f} MiB",
            f"{c.down / MB:,.2f} MiB",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def command_line(argv: list[str] | None) -> str:
    return " ".join(["python", "benchmarks/remote.py", *(sys.argv[1:] if argv is None else argv)])


# -- driver -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--samples", type=int, default=200_000, help="samples of the push section (200000)"
    )
    parser.add_argument(
        "--big", type=int, default=1_000_000, help="samples of the big column (1000000)"
    )
    parser.add_argument(
        "--append", type=int, default=10_000, help="samples appended in one push (10000)"
    )
    parser.add_argument(
        "--small-append", type=int, default=1_000, help="samples per small push (1000)"
    )
    parser.add_argument("--pushes", type=int, default=10, help="small pushes (10)")
    parser.add_argument(
        "--no-big-raw",
        dest="big_raw",
        action="store_false",
        help="skip the raw fs.pipe of the big column (saves its upload time)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="push section repeats (best kept)")
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--profile", action="store_true", help="cProfile a push and a clone")
    parser.add_argument(
        "--trace", action="store_true", help=f"list each operation's first {TRACE_LINES} requests"
    )
    parser.add_argument(
        "--dir", default=tempfile.gettempdir(), help="where to make the scratch directory"
    )
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.big = min(args.samples, 5_000), min(args.big, 20_000)
        args.append, args.small_append = min(args.append, 1_000), min(args.small_append, 100)
        args.pushes = min(args.pushes, 3)
    if min(args.samples, args.big, args.append, args.small_append, args.repeat) < 1:
        parser.error("sizes and --repeat must be >= 1")
    return args


def header(args: argparse.Namespace) -> str:
    import moto
    import s3fs

    import tensorcask as tc

    return (
        f"tensorcask {tc.__version__} remote benchmark: samples={args.samples:,} "
        f"big={args.big:,} append={args.append:,} pushes={args.pushes}x{args.small_append:,} "
        f"| python {platform.python_version()} numpy {np.__version__} s3fs {s3fs.__version__} "
        f"moto {moto.__version__} | {os.cpu_count()} CPUs"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve()
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so scratch and server go
    scratch = Path(tempfile.mkdtemp(prefix="tensorcask-bench-remote-", dir=args.dir))
    server = Server(scratch / "server.log")
    try:
        started = time.perf_counter()
        ctx = Context(args, scratch, server)
        ctx.log(header(args))
        ctx.log(f"moto S3 server at {server.endpoint_url} (pid {server.proc.pid})")
        only = set(args.only or SECTIONS)
        if "push" in only:
            bench_push(ctx)
        if "big" in only:
            bench_big(ctx)
        elapsed = time.perf_counter() - started
        if args.json:
            print(
                json.dumps(
                    {
                        "config": vars(args),
                        "elapsed_s": elapsed,
                        "results": [r.to_dict() for r in ctx.rows],
                        "operations": [
                            {
                                "section": o.section,
                                "label": o.label,
                                "seconds": o.seconds,
                                "requests": {k: o.counts.n(k) for k in KINDS},
                                "ranged_get": o.counts.ranged,
                                "bytes_up": o.counts.up,
                                "bytes_down": o.counts.down,
                                "put_bytes_by_folder": o.counts.folders,
                            }
                            for o in ctx.ops
                        ],
                    },
                    indent=2,
                )
            )
        else:
            print(
                f"\n{markdown_rows(ctx.rows)}\n\n{markdown_ops(ctx.ops)}\n\n"
                f"ratio = speed relative to the reference (>1 faster or smaller); "
                f"total {elapsed:.0f} s\n\n    {command_line(argv)}"
            )
    finally:
        server.stop()
        remove(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
