"""Zeroing LMDB's free pages: real environments, raw scans of ``data.mdb``.

Every value is its own 16-byte token (a fixed marker, then random bytes)
repeated, so a raw scan of the data file for the marker tells whether any copy
of a deleted value survives anywhere.
"""

from __future__ import annotations

import random
import re
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from tensorcask.errors import CorruptionError, ReadOnlyError
from tensorcask.layout import LMDB_DATA_FILE
from tensorcask.storage.lmdb_pages import scrub_free_pages

TOKEN = 16
MARKER = b"\xa5\x5a\xc3\x3c"
SMALL = (TOKEN * 2, 600)  # inline in leaf pages
LARGE = (4097, 40_000)  # on overflow pages


class Store:
    """An environment opened as tensorcask opens one, with two named databases."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self.reopen()

    def reopen(self) -> None:
        self.env = lmdb.open(
            str(self.path),
            subdir=True,
            map_size=1 << 40,
            max_dbs=2,
            sync=False,
            readonly=self.readonly,
        )
        self.data = self.env.open_db(b"data", create=not self.readonly)
        self.meta = self.env.open_db(b"meta", create=not self.readonly)

    def file(self) -> bytes:
        return (self.path / LMDB_DATA_FILE).read_bytes()

    def read_all(self, txn: lmdb.Transaction | None = None) -> dict[bytes, bytes]:
        if txn is None:
            with self.env.begin(db=self.data) as own:
                return self.read_all(own)
        return {bytes(k): bytes(v) for k, v in txn.cursor(db=self.data)}


def value(rng: random.Random, size: int) -> bytes:
    token = MARKER + rng.randbytes(TOKEN - len(MARKER))
    return (token * (size // TOKEN + 1))[:size]


def found(image: bytes, values: list[bytes]) -> list[bytes]:
    """Those of ``values`` of which a token, whole, is in ``image``."""
    tokens = {image[m.start() : m.start() + TOKEN] for m in re.finditer(re.escape(MARKER), image)}
    return [v for v in values if v[:TOKEN] in tokens]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "env")
    yield opened
    opened.env.close()  # closing twice is harmless


def fill(
    store: Store, rng: random.Random, small: int, large: int, prefix: bytes = b"k"
) -> dict[bytes, bytes]:
    """Write values under new keys in several transactions; return them."""
    model: dict[bytes, bytes] = {}
    sizes = [rng.randint(*SMALL) for _ in range(small)] + [
        rng.randint(*LARGE) for _ in range(large)
    ]
    rng.shuffle(sizes)
    for start in range(0, len(sizes), 50):
        with store.env.begin(write=True, db=store.data) as txn:
            for size in sizes[start : start + 50]:
                key = prefix + b"%06d" % len(model)
                model[key] = value(rng, size)
                txn.put(key, model[key])
            txn.put(b"round", b"%d" % start, db=store.meta)
    return model


def delete_some(store: Store, rng: random.Random, model: dict[bytes, bytes]) -> list[bytes]:
    """Delete about half the values, small and large, in one transaction."""
    doomed = sorted(k for k in model if rng.random() < 0.5)
    with store.env.begin(write=True, db=store.data) as txn:
        for key in doomed:
            assert txn.delete(key)
    return [model.pop(key) for key in doomed]


def test_scrub_erases_deleted_small_and_large_values(store: Store, tmp_path: Path) -> None:
    rng = random.Random(1)
    model = fill(store, rng, small=400, large=40)
    deleted = delete_some(store, rng, model)
    assert any(len(v) < 4096 for v in deleted) and any(len(v) > 4096 for v in deleted)
    assert found(store.file(), deleted) == deleted  # the old pages still hold every one

    assert scrub_free_pages(store.env) > 0

    assert found(store.file(), deleted) == []
    assert found(store.file(), list(model.values())) == list(model.values())
    assert store.read_all() == model
    assert scrub_free_pages(store.env) == 0  # nothing left; zero pages are not rewritten

    # The environment stays consistent: more work, a reopen, a compacting copy.
    model.update(fill(store, rng, small=50, large=5, prefix=b"more"))
    deleted += delete_some(store, rng, model)
    scrub_free_pages(store.env)
    store.env.close()
    store.reopen()
    assert store.read_all() == model
    assert found(store.file(), deleted) == []
    (tmp_path / "copy").mkdir()
    store.env.copy(str(tmp_path / "copy"), compact=True)
    copy = Store(tmp_path / "copy")
    try:
        assert copy.read_all() == model
        with copy.env.begin(write=True, db=copy.data) as txn:
            txn.put(b"after-copy", b"x" * 9000)
        assert copy.read_all()[b"after-copy"] == b"x" * 9000
    finally:
        copy.env.close()


def test_an_old_reader_keeps_the_pages_it_can_see(store: Store) -> None:
    rng = random.Random(3)
    model = fill(store, rng, small=200, large=20)
    before = dict(model)
    reader = store.env.begin(db=store.data)  # a snapshot from before the deletion
    deleted = delete_some(store, rng, model)

    started = time.monotonic()
    scrub_free_pages(store.env, timeout=0.05)
    assert time.monotonic() - started >= 0.05  # it waited for the reader, then gave up

    assert found(store.file(), deleted) == deleted
    assert store.read_all(reader) == before  # the reader's pages are intact
    assert store.read_all() == model
    reader.abort()

    assert scrub_free_pages(store.env, timeout=0.05) > 0
    assert found(store.file(), deleted) == []
    assert store.read_all() == model


def test_waits_for_a_reader_that_moves_on(store: Store) -> None:
    rng = random.Random(4)
    model = fill(store, rng, small=100, large=10)
    holding, release = threading.Event(), threading.Event()
    seen: list[dict[bytes, bytes]] = []

    def read() -> None:
        with store.env.begin(db=store.data) as txn:
            holding.set()
            release.wait(10)
            seen.append(store.read_all(txn))

    thread = threading.Thread(target=read)
    thread.start()
    holding.wait(10)
    before = dict(model)
    deleted = delete_some(store, rng, model)
    threading.Timer(0.2, release.set).start()
    started = time.monotonic()
    assert scrub_free_pages(store.env, timeout=20) > 0
    assert 0.15 < time.monotonic() - started < 10  # returned once the reader ended
    thread.join()
    assert seen == [before]  # read in full just before its transaction ended
    assert found(store.file(), deleted) == []
    assert store.read_all() == model


def test_random_workloads_keep_live_data_and_leave_no_deleted_bytes(store: Store) -> None:
    rng = random.Random(5)
    model: dict[bytes, bytes] = {}
    gone: list[bytes] = []
    for round_ in range(20):
        reader = store.env.begin(db=store.data) if round_ % 4 == 3 else None
        seen = dict(model)
        for _ in range(rng.randint(1, 4)):
            with store.env.begin(write=True, db=store.data) as txn:
                for _ in range(rng.randint(1, 80)):
                    key = b"k%04d" % rng.randrange(300)
                    if key in model and rng.random() < 0.4:
                        txn.delete(key)
                        gone.append(model.pop(key))
                    else:
                        large = rng.random() < 0.15
                        data = value(rng, rng.randint(*(LARGE if large else SMALL)))
                        txn.put(key, data)
                        if key in model:
                            gone.append(model[key])  # overwritten: gone as well
                        model[key] = data
        if reader is not None:
            scrub_free_pages(store.env, timeout=0)
            assert store.read_all(reader) == seen
            reader.abort()
        scrub_free_pages(store.env, timeout=0)
        assert store.read_all() == model
        image = store.file()
        assert found(image, gone) == []
        assert found(image, list(model.values())) == list(model.values())


def test_a_deep_freelist_with_records_on_overflow_pages(store: Store) -> None:
    rng = random.Random(8)
    model = fill(store, rng, small=1500, large=150)
    reader = store.env.begin(db=store.data)  # no freed page is reused meanwhile
    deleted = []
    for key in rng.sample(sorted(k for k, v in model.items() if len(v) < 4096), 300):
        with store.env.begin(write=True, db=store.data) as txn:  # a freelist record each
            txn.delete(key)
        deleted.append(model.pop(key))
    with store.env.begin(write=True, db=store.data) as txn:  # one record of ~1000 pages
        for key in [k for k, v in model.items() if len(v) > 4096]:
            txn.delete(key)
            deleted.append(model.pop(key))
    image = store.file()
    meta = current_meta(image, store.env.stat()["psize"])
    free_depth, free_overflow = struct.unpack_from("<H16xQ", image, meta + FREE_DEPTH_AT)
    assert free_depth >= 2 and free_overflow > 0  # branch pages, and an IDL on overflow pages

    scrub_free_pages(store.env, timeout=0)  # what the reader cannot see
    assert found(store.file(), deleted) == deleted
    reader.abort()
    assert scrub_free_pages(store.env, timeout=0) > 1000
    assert found(store.file(), deleted) == []
    assert store.read_all() == model


# The current meta page's offsets (LMDB 0.9, 64-bit): a 16-byte page header,
# then mm_magic, mm_version, mm_address, mm_mapsize and two 48-byte MDB_db
# records (free at 40, main at 88: md_pad, md_flags, md_depth, then the page
# counts, md_entries and md_root); mm_txnid at 144.
FREE_DEPTH_AT, FREE_ROOT_AT, MAIN_ROOT_AT, TXNID_AT = 46, 80, 128, 144


def current_meta(image: bytes | bytearray, psize: int) -> int:
    """The offset of the meta page LMDB uses: the one with the larger txnid."""
    ids = [struct.unpack_from("<Q", image, page * psize + TXNID_AT)[0] for page in (0, 1)]
    return psize * (ids[1] > ids[0])


def point_free_root_past_the_end(image: bytearray, psize: int) -> None:
    struct.pack_into(
        "<Q", image, current_meta(image, psize) + FREE_ROOT_AT, len(image) // psize + 9
    )


def point_free_root_at_main_root(image: bytearray, psize: int) -> None:
    meta = current_meta(image, psize)
    image[meta + FREE_ROOT_AT : meta + FREE_ROOT_AT + 8] = image[
        meta + MAIN_ROOT_AT : meta + MAIN_ROOT_AT + 8
    ]


def list_main_root_as_free(image: bytearray, psize: int) -> None:
    """Rewrite the first page number of the first freelist record (inline in
    the free database's root leaf) as the main database's root page."""
    meta = current_meta(image, psize)
    (free_root,) = struct.unpack_from("<Q", image, meta + FREE_ROOT_AT)
    page = free_root * psize
    assert struct.unpack_from("<H", image, page + 10)[0] & 0x02  # a leaf page
    (node,) = struct.unpack_from("<H", image, page + 16)
    flags, ksize = struct.unpack_from("<HH", image, page + node + 4)
    assert not flags & 0x01  # inline, not on overflow pages
    idl = page + node + 8 + ksize
    assert struct.unpack_from("<Q", image, idl)[0] >= 1
    image[idl + 8 : idl + 16] = image[meta + MAIN_ROOT_AT : meta + MAIN_ROOT_AT + 8]


@pytest.mark.parametrize(
    "corrupt",
    [point_free_root_past_the_end, point_free_root_at_main_root, list_main_root_as_free],
)
def test_an_inconsistent_freelist_is_refused_untouched(
    store: Store, tmp_path: Path, corrupt: object
) -> None:
    rng = random.Random(6)
    model = fill(store, rng, small=100, large=4)
    delete_some(store, rng, model)
    store.env.close()
    damaged = tmp_path / "damaged"
    shutil.copytree(store.path, damaged)
    data_file = damaged / LMDB_DATA_FILE
    image = bytearray(data_file.read_bytes())
    psize = struct.unpack_from("<I", image, 40)[0]
    corrupt(image, psize)  # type: ignore[operator]
    data_file.write_bytes(image)

    env = Store(damaged)
    try:
        with pytest.raises(CorruptionError) as raised:
            scrub_free_pages(env.env, timeout=0)
        assert raised.value.path == str(data_file)
        assert str(data_file) in str(raised.value)
        assert data_file.read_bytes() == image
    finally:
        env.env.close()


def test_a_read_only_environment_is_refused(store: Store, tmp_path: Path) -> None:
    fill(store, random.Random(7), small=10, large=1)
    store.env.close()
    readonly = Store(store.path, readonly=True)
    try:
        with pytest.raises(ReadOnlyError):
            scrub_free_pages(readonly.env)
    finally:
        readonly.env.close()
