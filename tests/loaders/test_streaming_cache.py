"""Streaming datasets under stress: the cache folder's bound, several processes sharing
it, torn and damaged cache files, a reader killed with SIGKILL while it fills the cache,
damaged data packs on the remote, a server that fails requests (a real HTTP proxy in
front of moto), a filesystem that raises, and the number of requests a reader makes.

Everything goes through the public loaders against real components: moto's S3 server
through s3fs, ``file://`` folders, a threaded HTTP proxy on 127.0.0.1 and an fsspec
filesystem registered for the tests.
"""

from __future__ import annotations

import contextlib
import http.client
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fsspec
import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem

torch = pytest.importorskip("torch")

from test_remote import IDENTITY, _first_commit  # noqa: E402

import tensorcask as tc  # noqa: E402
from tensorcask.loaders.torch import repo_dataset, repo_iterable_dataset  # noqa: E402
from tensorcask.remote import transport  # noqa: E402

M = 300  # samples of the multi-piece data set: 64x64 images, ~1.2 MB, five pieces
SIDE = 64
IMAGES = np.random.default_rng(20240611).integers(0, 256, (M, SIDE, SIDE), dtype=np.uint8)
LABEL0 = 1000
LIMIT = 700_000  # bytes: the cache folder holds about two of the five image pieces


# -- the data sets -------------------------------------------------------------------


def _build(path: Path, n: int = M, side: int = SIDE) -> str:
    """A repository with ``n`` random ``side`` x ``side`` images and labels; the commit."""
    images = IMAGES if (n, side) == (M, SIDE) else _images(n, side)
    with tc.init(path, **IDENTITY) as repo, repo.checkout(write=True) as co:
        co.add_ndarray_column("images", shape=(side, side), dtype="uint8").update(
            list(range(n)), images
        )
        co.add_ndarray_column("labels", shape=(), dtype="int64").update(
            list(range(n)), LABEL0 + np.arange(n)
        )
        return co.commit("images")


def _images(n: int, side: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, side, side), dtype=np.uint8)


def _push(src: Path, url: str, options: dict[str, Any] | None = None) -> None:
    with tc.Repository(src) as repo:
        repo.add_remote("origin", url, **(options or {}))
        repo.push("origin", "main")


@dataclass
class Remote:
    url: str
    options: dict[str, Any] = field(default_factory=dict)
    commit: str = ""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    src = tmp_path_factory.mktemp("cache-src") / "src"
    return src, _build(src)


@pytest.fixture
def file_remote(built: tuple[Path, str], tmp_path: Path) -> Remote:
    """The multi-piece data set pushed to a fresh file:// folder (tests may damage it)."""
    src, commit = built
    url = (tmp_path / "remote").as_uri()
    copy = tmp_path / "src"
    shutil.copytree(src, copy)
    _push(copy, url)
    return Remote(url, {}, commit)


@pytest.fixture(scope="module")
def s3_remote(built: tuple[Path, str], request: pytest.FixtureRequest) -> Remote:
    """The multi-piece data set pushed to an S3 bucket (never damaged)."""
    src, commit = built
    server = request.getfixturevalue("s3_server")
    url = f"s3://{server.new_bucket()}/repo"
    copy = Path(str(src) + "-s3")
    shutil.copytree(src, copy)
    _push(copy, url, server.storage_options)
    return Remote(url, server.storage_options, commit)


def _check(samples: list[tuple[Any, ...]], keys: list[int]) -> None:
    """Assert samples of (images, labels) are those of ``keys``, exactly."""
    assert len(samples) == len(keys)
    for (image, label), k in zip(samples, keys, strict=True):
        assert int(label) == LABEL0 + k
        assert image.dtype == torch.uint8 and np.array_equal(image.numpy(), IMAGES[k])


def _read_all(ds: Any, order: list[int] | None = None, batch: int = 32) -> None:
    """Read every sample of a 2-column dataset in ``order`` by batches, checking each."""
    order = list(range(len(ds))) if order is None else order
    for low in range(0, len(order), batch):
        keys = order[low : low + batch]
        _check(ds.__getitems__(keys), keys)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _pieces(cache: Path) -> list[Path]:
    """The cached piece files (``samples/<2 hex>/<pack>.<start>-<end>``)."""
    return sorted(
        p
        for p in (cache / "samples").glob("*/*")
        if p.is_file() and not p.parent.name.startswith(".")
    )


# -- 6. the cache's bound ------------------------------------------------------------


def _read_images(ds: Any, order: list[int]) -> None:
    """Read an images-only dataset one sample at a time, checking each."""
    for k in order:
        (image,) = ds[k]
        assert np.array_equal(image.numpy(), IMAGES[k]), k


def test_the_cache_folder_stays_within_its_bound(file_remote: Remote, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ds = repo_dataset(file_remote.url, ["images"], cache_dir=cache, cache_limit_bytes=LIMIT)
    shuffled = np.random.default_rng(1).permutation(M).tolist()
    for order in (list(range(M)), list(range(M)), shuffled):
        _read_images(ds, order)
        assert _folder_bytes(cache) <= LIMIT
    assert 1 <= len(_pieces(cache)) < 5  # it cached what the bound let it
    # A new reader of the folder (another job) reads right and keeps the bound.
    again = repo_dataset(file_remote.url, ["images"], cache_dir=cache, cache_limit_bytes=LIMIT)
    _read_images(again, shuffled[:100])
    assert _folder_bytes(cache) <= LIMIT


def test_the_memory_cache_stays_within_its_bound(file_remote: Remote) -> None:
    ds = repo_dataset(file_remote.url, ["images"], cache_limit_bytes=LIMIT)
    for order in (list(range(M)), np.random.default_rng(2).permutation(M).tolist()):
        _read_images(ds, order)
        assert 0 < ds.source.fetcher.cache.usage() <= LIMIT


@pytest.mark.parametrize("cached", [False, True])
def test_a_small_cache_reads_batches_of_two_columns_right(
    file_remote: Remote, tmp_path: Path, cached: bool
) -> None:
    cache = tmp_path / "cache" if cached else None
    ds = repo_dataset(
        file_remote.url, ["images", "labels"], cache_dir=cache, cache_limit_bytes=LIMIT
    )
    for order in (list(range(M)), np.random.default_rng(2).permutation(M).tolist()):
        _read_all(ds, order, batch=32)
        if cache is None:
            assert ds.source.fetcher.cache.usage() <= LIMIT
        else:
            assert _folder_bytes(cache) <= LIMIT


def _read_keys(url: str, cache: str, keys: list[int], passes: int) -> None:
    """A process reading ``keys`` (shuffled, ``passes`` times) through a shared folder."""
    ds = repo_dataset(url, ["images"], cache_dir=cache, cache_limit_bytes=LIMIT)
    rng = np.random.default_rng(keys[0])
    for _ in range(passes):
        _read_images(ds, rng.permutation(keys).tolist())


def test_two_processes_sharing_one_bounded_folder_read_right(
    file_remote: Remote, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("fork")
    halves = [list(range(0, M, 2)), list(range(1, M, 2))]  # both need every piece
    procs = [
        ctx.Process(target=_read_keys, args=(file_remote.url, str(cache), keys, 3))
        for keys in halves
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert _folder_bytes(cache) <= LIMIT
    assert not list((cache / "samples" / ".tmp").iterdir())  # no write left behind
    ds = repo_dataset(file_remote.url, ["images", "labels"], cache_dir=cache)
    _read_all(ds)


def _drain(loader: Any, labels_first: bool = False) -> tuple[list[int], list[BaseException]]:
    """Every batch of a DataLoader of (images, labels), checked: the keys and the errors.

    Draining lets the workers finish; an iterator dropped after a worker's error makes
    torch wait 5 s per worker at shutdown.
    """
    keys: list[int] = []
    errors: list[BaseException] = []
    batches = iter(loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return keys, errors
        except Exception as exc:
            errors.append(exc)
            continue
        labels, images = batch if labels_first else batch[::-1]
        mine = [int(v) - LABEL0 for v in labels]
        _check(list(zip(images, labels, strict=True)), mine)
        keys += mine


def test_dataloader_workers_share_a_bounded_folder(s3_remote: Remote, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    limit = 1_000_000
    ds = repo_dataset(
        s3_remote.url,
        ["images", "labels"],
        storage_options=s3_remote.options,
        cache_dir=cache,
        cache_limit_bytes=limit,
    )
    for epoch in range(2):
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size=10,
            shuffle=True,
            generator=torch.Generator().manual_seed(epoch),
            num_workers=2,
            multiprocessing_context="fork",
        )
        seen, errors = _drain(loader)
        assert errors == []
        assert sorted(seen) == list(range(M))
        assert _folder_bytes(cache) <= limit


# -- 7. killed and torn writes ---------------------------------------------------------


def test_temporary_files_are_never_read_and_stale_ones_are_swept(
    file_remote: Remote, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    ds = repo_dataset(file_remote.url, ["images", "labels"], cache_dir=cache)
    _read_all(ds)
    pieces = _pieces(cache)
    assert len(pieces) == 5  # the labels lie in the last piece of images
    tmp = cache / "samples" / ".tmp"
    # What killed writers leave: whole copies with their bodies damaged, under the
    # temporary names writers use, and under the pieces' own names.
    for i, piece in enumerate(pieces):
        data = bytearray(piece.read_bytes())
        data[len(data) // 2] ^= 0xFF
        (tmp / f"{uuid.uuid4().hex}.{40000 + i}").write_bytes(bytes(data))
        (tmp / piece.name).write_bytes(bytes(data[: len(data) // 3]))
        piece.unlink()
    stale = tmp / f"{uuid.uuid4().hex}.99999"
    stale.write_bytes(b"x" * 100)
    old = time.time() - 7200
    os.utime(stale, (old, old))
    fresh = repo_dataset(file_remote.url, ["images"], cache_dir=cache, cache_limit_bytes=LIMIT)
    order = np.random.default_rng(3).permutation(M).tolist()
    for k in order + order:  # evictions happen: stale temporary files are swept then
        assert np.array_equal(fresh[k][0].numpy(), IMAGES[k])
    assert fresh.source.fetcher.requests >= 5
    assert not stale.exists()
    left = sorted(p.name for p in tmp.iterdir())
    assert len(left) == 2 * len(pieces)  # recent ones may belong to live writers: kept
    _read_all(repo_dataset(file_remote.url, ["images", "labels"], cache_dir=cache))


def _damage(path: Path, how: str) -> None:
    """Damage a cache file by writing a new one in its place (a process that mapped the
    old one keeps reading the old bytes)."""
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "header only":
        data = data[:20]
    elif how == "empty":
        data = bytearray()
    elif how == "flipped body":
        data[len(data) - 7] ^= 0x01
    elif how == "flipped header":
        data[3] ^= 0x20
    else:
        raise AssertionError(how)
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(bytes(data))
    os.replace(tmp, path)


def test_torn_or_damaged_cache_files_are_dropped_and_fetched_again(
    file_remote: Remote, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    _read_all(repo_dataset(file_remote.url, ["images", "labels"], cache_dir=cache))
    pieces = _pieces(cache)
    assert len(pieces) == 5
    good = {p: p.read_bytes() for p in pieces}
    ways = ["truncated", "header only", "empty", "flipped body", "flipped header"]
    damaged = pieces[:4]
    for piece, how in zip(damaged, np.random.default_rng(4).permutation(ways), strict=False):
        _damage(piece, str(how))
    reader = repo_dataset(file_remote.url, ["images", "labels"], cache_dir=cache)
    shuffled = np.random.default_rng(4).permutation(M).tolist()
    _read_all(reader, shuffled, batch=50)
    # Each damaged file was fetched again (its body, give or take the file's header);
    # the intact one was not.
    fetched = reader.source.fetcher.bytes
    assert sum(len(good[p]) - 64 for p in damaged) <= fetched <= sum(map(len, good.values()))
    assert fetched < sum(len(good[p]) for p in damaged)
    assert {p: p.read_bytes() for p in _pieces(cache)} == good  # whole again
    again = repo_dataset(file_remote.url, ["images", "labels"], cache_dir=cache)
    _read_all(again)
    assert again.source.fetcher.requests == 0


_KILLED_READER = """
import sys
import numpy as np
from tensorcask.loaders.torch import repo_dataset
url, cache, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
ds = repo_dataset(url, ["images"], cache_dir=cache, cache_limit_bytes=limit)
rng = np.random.default_rng(0)
for n in range(1000):
    for k in rng.permutation(len(ds)).tolist():
        ds[k]
    print("pass", n, flush=True)
"""


def test_a_reader_killed_while_filling_the_cache_leaves_it_sound(
    file_remote: Remote, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_READER, file_remote.url, str(cache), str(LIMIT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # one whole pass: it is evicting and fetching now
        assert line.startswith("pass"), (line, child.stderr and child.stderr.read())
        tmp = cache / "samples" / ".tmp"
        for _ in range(100_000):  # kill it as soon as it is writing a piece, if we see it
            if any(tmp.iterdir()):
                break
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    # A fresh reader gets right samples from what the killed ones left.
    ds = repo_dataset(file_remote.url, ["images", "labels"], cache_dir=cache)
    _read_all(ds, np.random.default_rng(5).permutation(M).tolist())
    _read_all(ds)
    checker = repo_dataset(file_remote.url, ["images", "labels"], cache_dir=cache).source
    for piece in _pieces(cache):  # every named file is whole and passes its check
        assert checker.fetcher.cache.get(piece.name) is not None, piece


# -- 8. damaged data packs on the remote -----------------------------------------------


def _flip_in(data: bytearray, needle: bytes, at: int = 5) -> None:
    where = bytes(data).find(needle)
    assert where >= 0 and bytes(data).find(needle, where + 1) < 0
    data[where + at] ^= 0xFF


def test_a_damaged_sample_in_a_file_remote_raises_naming_it(
    file_remote: Remote, tmp_path: Path
) -> None:
    packs = list((Path(urlsplit(file_remote.url).path) / "data").glob("*.pack"))
    assert len(packs) == 1
    data = bytearray(packs[0].read_bytes())
    bad = 200
    _flip_in(data, IMAGES[bad].tobytes(), at=1000)
    packs[0].write_bytes(bytes(data))
    cache = tmp_path / "cache"

    ds = repo_dataset(file_remote.url, ["labels", "images"], cache_dir=cache)
    pattern = rf"column 'images', key {bad}\b"
    with pytest.raises(tc.CorruptionError, match=pattern) as info:
        ds[bad]
    assert info.value.column == "images" and info.value.key == bad
    assert file_remote.url in str(info.value)
    with pytest.raises(tc.CorruptionError, match=pattern):
        ds.__getitems__([bad - 1, bad, bad + 1])
    # Every other sample reads right, the damaged one's piece neighbours included.
    for low in range(0, M, 25):
        keys = [k for k in range(low, low + 25) if k != bad]
        _check([(i, label) for label, i in ds.__getitems__(keys)], keys)
    assert int(repo_dataset(file_remote.url, ["labels"])[bad][0]) == LABEL0 + bad
    # The damaged piece is not cached: it raises again, here and in a new reader.
    assert len(_pieces(cache)) == 4  # all but the damaged one
    with pytest.raises(tc.CorruptionError, match=pattern):
        ds[bad]
    fresh = repo_dataset(file_remote.url, ["images"], cache_dir=cache)
    with pytest.raises(tc.CorruptionError, match=pattern):
        fresh[bad]
    assert len(_pieces(cache)) == 4
    # The iterable dataset yields only right samples, then raises naming the damaged one.
    it = repo_iterable_dataset(
        file_remote.url, ["images", "labels"], cache_dir=cache, shuffle=True, seed=1
    )
    yielded: list[tuple[Any, ...]] = []
    with pytest.raises(tc.CorruptionError, match=pattern):
        for sample in it:
            yielded.append(sample)
    keys = [int(label) - LABEL0 for _, label in yielded]
    assert bad not in keys
    _check(yielded, keys)
    # Through DataLoader workers: one batch fails, naming the sample; the others are right.
    loader = torch.utils.data.DataLoader(
        ds, batch_size=20, num_workers=2, multiprocessing_context="fork"
    )
    seen, errors = _drain(loader, labels_first=True)
    assert sorted(seen) == [k for k in range(M) if not 200 <= k < 220]
    assert len(errors) == 1 and re.search(pattern, str(errors[0]))
    assert isinstance(errors[0], tc.CorruptionError)
    assert errors[0].column == "images" and errors[0].key == bad  # type: ignore[attr-defined]


def test_a_damaged_sample_in_an_s3_remote_raises_naming_it(
    s3_server: Any, s3_url: str, tmp_path: Path
) -> None:
    with tc.init(tmp_path / "src", **IDENTITY) as repo:
        with repo.checkout(write=True) as co:
            _first_commit(co, range(40))
            co.commit("first")
        repo.add_remote("origin", s3_url, **s3_server.storage_options)
        repo.push("origin", "main")
    admin = s3_server.filesystem()
    packs = [p for p in admin.find(s3_url.removeprefix("s3://") + "/data") if p.endswith(".pack")]
    assert len(packs) == 1
    data = bytearray(admin.cat_file(packs[0]))
    _flip_in(data, "name-7-é".encode(), at=2)
    admin.pipe_file(packs[0], bytes(data))

    columns = ["names", "labels", "images", "blobs"]
    for cache in (None, tmp_path / "cache"):
        ds = repo_dataset(
            s3_url, columns, storage_options=s3_server.storage_options, cache_dir=cache
        )
        for _ in range(2):
            with pytest.raises(tc.CorruptionError, match=r"column 'names', key 7\b") as info:
                ds[7]
            assert info.value.column == "names" and info.value.key == 7
        for k in [*range(7), *range(8, 40)]:
            name, label, _, blob = ds[k]
            assert (name, int(label), blob) == (
                f"name-{k}-é",
                LABEL0 + k,
                bytes([k % 256, 0, 255]) * (k % 5 + 1),
            )
        others = repo_dataset(
            s3_url, ["labels", "blobs"], storage_options=s3_server.storage_options
        )
        assert int(others[7][0]) == LABEL0 + 7
        if cache is not None:
            assert _pieces(cache) == []  # the only piece is damaged: nothing is cached


def test_a_data_pack_removed_from_the_remote_is_a_remote_error(
    file_remote: Remote, tmp_path: Path
) -> None:
    ds = repo_dataset(file_remote.url, ["labels", "images"], cache_dir=tmp_path / "cache")
    assert int(ds[0][0]) == LABEL0  # its pieces (the first and the last) are cached now
    (pack,) = (Path(urlsplit(file_remote.url).path) / "data").glob("*.pack")
    pack.unlink()
    assert int(ds[1][0]) == LABEL0 + 1  # what is cached still reads
    with pytest.raises(tc.RemoteError, match=re.escape(pack.stem)) as info:
        ds[M // 2]
    assert file_remote.url in str(info.value)


# -- 9a. a server that fails requests --------------------------------------------------

_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>1</RequestId></Error>"
)


class Proxy:
    """A threaded HTTP proxy on 127.0.0.1 in front of the moto server.

    It counts the requests it sees; with ``fail_every=k`` it answers every k-th GET
    itself, in turn with a 503 SlowDown and by closing the connection unanswered.
    """

    def __init__(self, upstream: str, fail_every: int = 0) -> None:
        up = urlsplit(upstream)
        self.upstream = (up.hostname or "127.0.0.1", up.port or 80)
        self.fail_every = fail_every
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str]] = []
        self.failed: list[str] = []
        self._gets = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def options(self, base: dict[str, Any]) -> dict[str, Any]:
        return {**base, "endpoint_url": self.endpoint_url}

    def count(self) -> int:
        with self.lock:
            return len(self.seen)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        fail = None
        with self.lock:
            self.seen.append((h.command, h.path))
            if h.command == "GET" and self.fail_every:
                self._gets += 1
                if self._gets % self.fail_every == 0:
                    fail = ("503", "drop")[len(self.failed) % 2]
                    self.failed.append(fail)
        if fail == "drop":
            h.close_connection = True
            return
        if fail == "503":
            h.send_response(503, "Slow Down")
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(_SLOW_DOWN)))
            h.end_headers()
            h.wfile.write(_SLOW_DOWN)
            return
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            conn.request(h.command, h.path, body=body, headers=dict(h.headers.items()))
            answer = conn.getresponse()
            payload = answer.read()
        finally:
            conn.close()
        h.send_response(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                h.send_header(name, value)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(payload)


@contextlib.contextmanager
def _proxy(server: Any, fail_every: int = 0) -> Iterator[Proxy]:
    proxy = Proxy(server.endpoint_url, fail_every)
    try:
        yield proxy
    finally:
        proxy.close()


def test_a_server_failing_every_third_request_still_yields_right_samples(
    s3_server: Any, s3_remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "BACKOFF", 0.001)
    with _proxy(s3_server, fail_every=3) as proxy:
        options = proxy.options(s3_remote.options)
        # botocore's own retries (with their long waits) off: the failures reach s3fs's
        # retries and tensorcask's
        options["config_kwargs"] = {"retries": {"max_attempts": 0}}
        ds = repo_dataset(s3_remote.url, ["images", "labels"], storage_options=options)
        assert ds.commit == s3_remote.commit
        _read_all(ds, np.random.default_rng(6).permutation(M).tolist(), batch=40)
        it = repo_iterable_dataset(
            s3_remote.url,
            ["images", "labels"],
            storage_options=options,
            cache_dir=tmp_path / "cache",
            shuffle=True,
            seed=2,
        )
        samples = list(it)
        _check(samples, [int(label) - LABEL0 for _, label in samples])
        assert sorted(int(label) - LABEL0 for _, label in samples) == list(range(M))
        assert "503" in proxy.failed and "drop" in proxy.failed


# -- 9b. the transport's retries, through a filesystem that raises ----------------------

_INJECTED: dict[str, list[str]] = {}  # token -> paths of the reads that raised
_FAIL_NEXT: dict[str, int] = {}  # token -> how many of the next reads raise
_LOCK = threading.Lock()


class FlakyFileSystem(LocalFileSystem):
    """Local files whose reads raise: the first ``fail_first`` reads, or every read of a
    data pack (``packs_only``), with ``error`` (reset, timeout, permission)."""

    protocol = ("tcflaky",)

    def __init__(
        self,
        token: str = "",
        fail_first: int = 0,
        error: str = "reset",
        packs_only: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.token = token
        self.error = error
        self.packs_only = packs_only
        _INJECTED.setdefault(token, [])
        _FAIL_NEXT.setdefault(token, fail_first)

    def _maybe_fail(self, path: str) -> None:
        if self.packs_only:
            fail = "/data/" in path and path.endswith(".pack")
        else:
            with _LOCK:
                fail = _FAIL_NEXT[self.token] > 0
                _FAIL_NEXT[self.token] -= fail
        if not fail:
            return
        _INJECTED[self.token].append(path)
        if self.error == "reset":
            raise ConnectionResetError(104, "Connection reset by peer (injected)")
        if self.error == "timeout":
            raise TimeoutError("read timed out (injected)")
        raise PermissionError(13, "Access Denied (injected)", path)

    def cat_file(self, path: str, start: Any = None, end: Any = None, **kwargs: Any) -> Any:
        self._maybe_fail(self._strip_protocol(path))
        return super().cat_file(path, start, end, **kwargs)

    def ls(self, path: str, detail: bool = False, **kwargs: Any) -> Any:
        self._maybe_fail(self._strip_protocol(path))
        return super().ls(path, detail=detail, **kwargs)


fsspec.register_implementation("tcflaky", FlakyFileSystem, clobber=True)


def _flaky(remote: Remote, **options: Any) -> tuple[str, dict[str, Any], str]:
    """The remote's URL on the flaky filesystem, its storage options and its token."""
    token = uuid.uuid4().hex
    url = "tcflaky://" + urlsplit(remote.url).path
    return url, {"token": token, **options}, token


@pytest.mark.parametrize("error", ["reset", "timeout"])
def test_transient_errors_are_retried(
    file_remote: Remote, error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "BACKOFF", 0.001)
    k = transport.READ_ATTEMPTS - 1  # one read fails this often in a row, then succeeds
    url, options, token = _flaky(file_remote, fail_first=k, error=error)
    ds = repo_dataset(url, ["images", "labels"], storage_options=options)
    assert ds.commit == file_remote.commit
    assert len(_INJECTED[token]) == k
    # Reads of the data packs fail too, then succeed.
    url, options, token = _flaky(file_remote, error=error)
    ds = repo_dataset(url, ["images", "labels"], storage_options=options)
    _FAIL_NEXT[token] = k  # armed once the dataset is made: its first sample reads fail
    _read_all(ds, batch=60)
    assert len(_INJECTED[token]) == k
    assert all(p.endswith(".pack") for p in _INJECTED[token])
    it = repo_iterable_dataset(url, ["images", "labels"], storage_options=options, shuffle=True)
    _FAIL_NEXT[token] = k
    samples = list(it)
    assert len(samples) == M
    _check(samples, [int(label) - LABEL0 for _, label in samples])


@pytest.mark.parametrize("error", ["reset", "timeout", "permission"])
def test_errors_that_persist_are_remote_errors_naming_url_and_object(
    file_remote: Remote, error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "BACKOFF", 0.001)
    attempts = 1 if error == "permission" else transport.READ_ATTEMPTS
    # From the first read: the dataset cannot be made.
    url, options, token = _flaky(file_remote, fail_first=10**9, error=error)
    with pytest.raises(tc.RemoteError) as info:
        repo_dataset(url, ["images", "labels"], storage_options=options)
    message = str(info.value)
    assert url in message and "tensorcask-remote.json" in message
    assert len(_INJECTED[token]) == attempts
    if attempts > 1:
        assert f"tried {attempts} times" in message
    # Only the data packs: the dataset is made, and reading a sample raises.
    url, options, token = _flaky(file_remote, packs_only=True, error=error)
    ds = repo_dataset(url, ["images", "labels"], storage_options=options)
    assert _INJECTED[token] == []
    with pytest.raises(tc.RemoteError) as info:
        ds[3]
    message = str(info.value)
    assert url in message
    pack = _INJECTED[token][0]
    assert re.search(r"data/[0-9a-f]{64}\.pack", pack) and pack in message
    assert len(_INJECTED[token]) == attempts
    it = repo_iterable_dataset(url, ["labels", "images"], storage_options=options)
    with pytest.raises(tc.RemoteError, match=re.escape(pack)):
        list(it)


# -- 10. requests: bounded to open a commit, by pieces to read it ----------------------


def test_opening_a_commit_costs_requests_independent_of_its_size(
    s3_server: Any, tmp_path: Path
) -> None:
    urls = {}
    for n in (50, 2000):
        src = tmp_path / f"src{n}"
        _build(src, n, side=16)
        urls[n] = f"s3://{s3_server.new_bucket()}/repo"
        _push(src, urls[n], s3_server.storage_options)
    counts = {}
    with _proxy(s3_server) as proxy:
        options = proxy.options(s3_server.storage_options)
        for n in (50, 2000):
            before = proxy.count()
            ds = repo_dataset(urls[n], ["images", "labels"], storage_options=options)
            first = ds.__getitems__(list(range(32)))
            counts[n] = proxy.count() - before
            expected = _images(n, 16)
            for k, (image, label) in enumerate(first):
                assert np.array_equal(image.numpy(), expected[k]) and int(label) == LABEL0 + k
        assert abs(counts[50] - counts[2000]) <= 1, (counts, proxy.seen)
        assert counts[2000] <= 16
        # A whole epoch in order: a few ranged reads per piece, not one per sample.
        ds = repo_dataset(urls[2000], ["images", "labels"], storage_options=options)
        before = proxy.count()
        expected = _images(2000, 16)
        for low in range(0, 2000, 50):
            batch = ds.__getitems__(list(range(low, low + 50)))
            assert all(
                np.array_equal(image.numpy(), expected[low + i])
                for i, (image, _) in enumerate(batch)
            )
        pieces = sum(len(t.pieces.piece_start) for t in ds.source.tables)
        assert ds.source.fetcher.requests <= pieces <= 10
        assert proxy.count() - before <= ds.source.fetcher.requests
        # Shuffled, each piece is still fetched once (they are kept).
        shuffled = repo_dataset(urls[2000], ["labels"], storage_options=options)
        order = np.random.default_rng(7).permutation(2000)
        for low in range(0, 2000, 50):
            got = [int(s[0]) - LABEL0 for s in shuffled.__getitems__(order[low : low + 50])]
            assert got == order[low : low + 50].tolist()
        assert shuffled.source.fetcher.requests <= len(shuffled.source.tables[0].pieces.piece_start)


# -- claims: readers sharing a folder fetch each piece once ---------------------------


def test_readers_sharing_a_folder_fetch_each_piece_once(
    file_remote: Remote, tmp_path: Path
) -> None:
    alone = repo_dataset(file_remote.url, ["images", "labels"], cache_dir=tmp_path / "alone")
    _read_all(alone, batch=M)
    once = alone.source.fetcher.bytes  # what every piece costs, fetched one time

    cache = tmp_path / "shared"
    readers = [
        repo_dataset(file_remote.url, ["images", "labels"], cache_dir=cache) for _ in range(3)
    ]
    start = threading.Barrier(len(readers))
    errors: list[BaseException] = []

    def read(ds: Any) -> None:
        try:
            start.wait()
            _read_all(ds, batch=M)  # every reader wants every piece at the same moment
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(ds,)) for ds in readers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert sum(ds.source.fetcher.bytes for ds in readers) == once
    assert not list((cache / "samples" / ".claims").iterdir())  # every claim released


def test_a_claim_whose_holder_died_is_taken_over(file_remote: Remote, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = repo_dataset(file_remote.url, ["images", "labels"], cache_dir=tmp_path / "probe")
    names = [
        table.pieces.name(p)
        for table in first.source.tables
        for p in range(len(table.pieces.piece_start))
    ]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    claims = cache / "samples" / ".claims"
    claims.mkdir(parents=True)
    for i, name in enumerate(names):
        path = claims / name
        if i % 2:
            path.write_text(dead.stdout.strip())  # a fetcher killed while fetching
        else:
            path.write_text(str(os.getpid()))  # alive, but hung for longer than a fetch can
            os.utime(path, (time.time() - 3600, time.time() - 3600))
    ds = repo_dataset(file_remote.url, ["images", "labels"], cache_dir=cache)
    began = time.monotonic()
    _read_all(ds, batch=M)
    assert time.monotonic() - began < 30  # taken over at once, not waited out
    assert not list(claims.iterdir())
