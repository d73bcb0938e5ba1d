"""Zero the bytes LMDB no longer uses, so deleted values are physically gone.

LMDB never overwrites a page in place: a transaction that deletes or replaces
a value writes new copies of the pages it changes, and the old pages (leaf
pages with the value inline, overflow pages with a large one) go to LMDB's
freelist still holding their old bytes until a later transaction reuses them.
Live pages can hold deleted bytes too: LMDB writes whole pages, and the unused
middle of a page (between its node pointers and its nodes) keeps what a
deleted node, or the recycled buffer the page was built in, left there; the
unused tail of an overflow run keeps what a longer value overwritten in the
same transaction left. A deletion request is honoured only once all those
bytes are overwritten.

:func:`scrub_free_pages` overwrites them with zeros, reading and writing the
data file directly, under these rules:

* It holds LMDB's writer lock (an open write transaction, aborted at the end)
  throughout, so no writer commits or reuses a page meanwhile, and it writes
  nothing through LMDB.
* It zeroes only pages the freelist (LMDB's free database: transaction id ->
  list of the page numbers that transaction freed) lists, and of those only
  the ones freed by a transaction older than every active reader's snapshot
  (LMDB's own rule for reusing a page, ``mdb_find_oldest``); pages an older
  snapshot may still read are left for a later call. The file is synced
  first, so the newest meta page is durable and the pages the latest commit
  freed, reachable only from the previous meta page, are not needed again.
* Of live pages it zeroes only bytes LMDB never reads: the gap between a
  page's node pointers and its nodes, the tail of an overflow run after its
  value and the room after a freelist record's page numbers.
* It first walks every tree (the main database, each named database and the
  free database) from the current meta page and checks the freelist against
  them: a freed page out of range, listed twice or still in a tree, a page
  reached twice, or counts that disagree with the tree records raise
  :class:`~tensorcask.errors.CorruptionError` before anything is written.

The format read is LMDB 0.9's on a 64-bit little-endian machine (``pgno_t``
and ``txnid_t`` of 8 bytes, ``PAGEBASE`` 0). Duplicate-sorted databases are
walked but their inline sub-pages and fixed-size pages keep their slack.
"""

from __future__ import annotations

import bisect
import os
import struct
import time
from dataclasses import dataclass, field

import lmdb

from tensorcask.errors import CaskError, CorruptionError, ReadOnlyError
from tensorcask.layout import LMDB_DATA_FILE

__all__ = ["scrub_free_pages"]

_HEADER = struct.Struct("<QHHHH")  # mp_pgno, mp_pad, mp_flags, mp_lower, mp_upper
_OVERFLOW = struct.Struct("<QHHI")  # mp_pgno, mp_pad, mp_flags, mp_pages
_PAGEHDRSZ = 16
_META = struct.Struct("<II8xQ")  # mm_magic, mm_version, mm_address, mm_mapsize
# md_pad, md_flags, md_depth, md_branch_pages, md_leaf_pages, md_overflow_pages,
# md_entries, md_root
_DB = struct.Struct("<IHHQQQQQ")
_META_DBS = _PAGEHDRSZ + _META.size  # mm_dbs[FREE_DBI], then mm_dbs[MAIN_DBI]
_META_TAIL = struct.Struct("<QQ")  # mm_last_pg, mm_txnid
_META_TAIL_AT = _META_DBS + 2 * _DB.size
_NODE = struct.Struct("<HHHH")  # mn_lo, mn_hi, mn_flags, mn_ksize
_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")

_MAGIC = 0xBEEFC0DE
_DATA_VERSION = 1
_P_BRANCH, _P_LEAF, _P_OVERFLOW, _P_META, _P_LEAF2 = 0x01, 0x02, 0x04, 0x08, 0x20
_F_BIGDATA, _F_SUBDATA, _F_DUPDATA = 0x01, 0x02, 0x04
_MDB_DUPSORT = 0x04
_P_INVALID = (1 << 64) - 1
_MAX_DEPTH = 64
_POLL = 0.01


@dataclass(frozen=True, slots=True)
class _Tree:
    """An ``MDB_db`` record: where a B-tree starts and what it holds."""

    flags: int
    depth: int
    branch: int
    leaf: int
    overflow: int
    entries: int
    root: int

    @classmethod
    def unpack(cls, data: bytes | memoryview, at: int) -> _Tree:
        _, flags, depth, branch, leaf, overflow, entries, root = _DB.unpack_from(data, at)
        return cls(flags, depth, branch, leaf, overflow, entries, root)


@dataclass(frozen=True, slots=True)
class _Meta:
    psize: int
    free: _Tree
    main: _Tree
    last_pg: int
    txnid: int


@dataclass(slots=True)
class _Survey:
    """Everything read from the file before anything is written."""

    fd: int
    path: str
    meta: _Meta
    size: int
    live: set[int] = field(default_factory=set)  # branch and leaf pages
    runs: list[tuple[int, int]] = field(default_factory=list)  # overflow: (first, count)
    freed: dict[int, list[int]] = field(default_factory=dict)
    slack: list[tuple[int, int]] = field(default_factory=list)  # (offset, length)

    def damaged(self, why: str) -> CorruptionError:
        return CorruptionError(
            f"the LMDB data file in {self.path} is inconsistent ({why}); nothing was "
            "scrubbed: check the environment (mdb_stat, a compacting copy) before retrying",
            path=self.path,
        )

    def read(self, pgno: int, count: int = 1) -> bytes:
        if pgno < 2 or pgno + count - 1 > self.meta.last_pg:
            raise self.damaged(f"page {pgno} (+{count}) is outside pages 2-{self.meta.last_pg}")
        return self.pread(pgno * self.meta.psize, count * self.meta.psize)

    def pread(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise self.damaged(f"bytes {offset}-{offset + length} lie past the end of the file")
        return data

    def claim(self, pgno: int) -> None:
        if pgno in self.live:
            raise self.damaged(f"page {pgno} is reached twice")
        self.live.add(pgno)

    def unused(self, offset: int, data: bytes) -> None:
        """Note bytes LMDB never reads for zeroing, unless they are zero already."""
        if data.count(0) != len(data):
            self.slack.append((offset, len(data)))

    def walk(self, tree: _Tree, name: str, *, free: bool = False, counted: bool = True) -> None:
        """Claim every page of ``tree``, checking them against its record."""
        if tree.root == _P_INVALID:
            if tree.depth or tree.branch or tree.leaf or tree.overflow or tree.entries:
                raise self.damaged(f"the empty {name} database has pages or entries")
            return
        if not 1 <= tree.depth <= _MAX_DEPTH:
            raise self.damaged(f"the {name} database has depth {tree.depth}")
        counts = [0, 0, 0, 0]  # branch, leaf, overflow pages; entries
        psize = self.meta.psize
        stack = [(tree.root, 1)]
        while stack:
            pgno, level = stack.pop()
            page = self.read(pgno)
            self.claim(pgno)
            number, _, flags, lower, upper = _HEADER.unpack_from(page)
            expected = _P_BRANCH if level < tree.depth else _P_LEAF
            if number != pgno or not flags & expected:
                raise self.damaged(
                    f"page {pgno} of the {name} database is not a {expected:#x} page"
                )
            if not _PAGEHDRSZ <= lower <= upper <= psize or lower % 2:
                raise self.damaged(f"page {pgno} has bounds {lower}-{upper}")
            counts[level == tree.depth] += 1
            if flags & _P_LEAF2:  # keys only (a duplicate-sorted database), no pages
                counts[3] += (lower - _PAGEHDRSZ) // 2
                continue
            self.unused(pgno * psize + lower, page[lower:upper])
            for i in range((lower - _PAGEHDRSZ) // 2):
                (ptr,) = _U16.unpack_from(page, _PAGEHDRSZ + 2 * i)
                if ptr < upper or ptr + _NODE.size > psize:
                    raise self.damaged(f"node {i} of page {pgno} lies at {ptr}")
                lo, hi, node_flags, ksize = _NODE.unpack_from(page, ptr)
                start = ptr + _NODE.size + ksize
                if start > psize:
                    raise self.damaged(f"the key of node {i} of page {pgno} overruns it")
                if level < tree.depth:
                    stack.append((lo | hi << 16 | node_flags << 32, level + 1))
                    continue
                counts[3] += 1
                counts[2] += self.leaf_node(
                    page, pgno, start, lo | hi << 16, node_flags, ksize, free
                )
        if counted and not tree.flags & _MDB_DUPSORT:  # duplicates' trees count apart
            found = (tree.branch, tree.leaf, tree.overflow, tree.entries)
            if tuple(counts) != found:
                raise self.damaged(f"the {name} database holds {counts}, its record says {found}")

    def leaf_node(
        self, page: bytes, pgno: int, start: int, dsize: int, flags: int, ksize: int, free: bool
    ) -> int:
        """Take in one leaf node's data; return how many overflow pages it has."""
        psize = self.meta.psize
        pages = 0
        if flags & _F_BIGDATA:
            if flags & (_F_SUBDATA | _F_DUPDATA) or start + 8 > psize:
                raise self.damaged(f"a node of page {pgno} has flags {flags:#x}")
            (first,) = _U64.unpack_from(page, start)
            number, _, ov_flags, pages = _OVERFLOW.unpack_from(self.read(first))
            if number != first or not ov_flags & _P_OVERFLOW:
                raise self.damaged(f"page {first}, of a value on page {pgno}, is no overflow page")
            if pages < (_PAGEHDRSZ - 1 + dsize) // psize + 1:
                raise self.damaged(
                    f"the {pages} overflow pages at {first} cannot hold {dsize} bytes"
                )
            self.read(first + pages - 1)  # the whole run lies in the file
            self.runs.append((first, pages))
            at = first * psize + _PAGEHDRSZ
            tail = at + dsize
            self.unused(tail, self.pread(tail, (first + pages) * psize - tail))
            data = self.pread(at, dsize) if free else b""
        else:
            if start + dsize > psize:
                raise self.damaged(f"a node of page {pgno} overruns it")
            at = pgno * psize + start
            data = page[start : start + dsize]
        if free:
            self.freelist_record(page, pgno, start - ksize, ksize, at, data)
        elif flags & _F_SUBDATA:
            if len(data) != _DB.size:
                raise self.damaged(f"a database record on page {pgno} has {len(data)} bytes")
            kind = "duplicates" if flags & _F_DUPDATA else "named"
            tree = _Tree.unpack(data, 0)
            self.walk(tree, f"{kind} (on page {pgno})", counted=not flags & _F_DUPDATA)
        return pages

    def freelist_record(
        self, page: bytes, pgno: int, key_at: int, ksize: int, at: int, data: bytes
    ) -> None:
        if ksize != 8:
            raise self.damaged(f"a freelist key on page {pgno} has {ksize} bytes")
        (txnid,) = _U64.unpack_from(page, key_at)
        count = _U64.unpack_from(data)[0] if len(data) >= 8 else -1
        if not 1 <= txnid <= self.meta.txnid or not 0 <= count <= len(data) // 8 - 1:
            raise self.damaged(f"the freelist record of transaction {txnid} is malformed")
        end = 8 * (count + 1)
        self.freed[txnid] = list(struct.unpack_from(f"<{count}Q", data, 8))
        self.unused(at + end, data[end:])  # room reserved, never filled

    def check(self) -> None:
        """Raise unless live pages and free pages are all distinct."""
        self.runs.sort()
        starts = [first for first, _ in self.runs]
        for (first, count), (after, _) in zip(self.runs, self.runs[1:], strict=False):
            if first + count > after:
                raise self.damaged(f"the overflow pages at {first} and {after} overlap")
        for pgno in self.live:
            if self.in_run(starts, pgno):
                raise self.damaged(f"page {pgno} is both a tree page and an overflow page")
        seen: set[int] = set()
        for txnid, pages in self.freed.items():
            for pgno in pages:
                if not 2 <= pgno <= self.meta.last_pg:
                    raise self.damaged(f"transaction {txnid} freed page {pgno}, out of range")
                if pgno in self.live or self.in_run(starts, pgno):
                    raise self.damaged(f"free page {pgno} (of transaction {txnid}) is in use")
                if pgno in seen:
                    raise self.damaged(f"page {pgno} is listed free twice")
                seen.add(pgno)

    def in_run(self, starts: list[int], pgno: int) -> bool:
        i = bisect.bisect_right(starts, pgno) - 1
        return i >= 0 and pgno < self.runs[i][0] + self.runs[i][1]


def scrub_free_pages(env: lmdb.Environment, *, timeout: float = 30.0) -> int:
    """Overwrite with zeros every page of ``env``'s data file that LMDB holds as
    free and no reader can still see; return the number of pages zeroed
    (fsynced before returning).

    Free pages that a reader's snapshot may still read are waited for, polling,
    up to ``timeout`` seconds, then left for a later call. Unused bytes of live
    pages are zeroed as well (not counted); pages already zero are not
    rewritten (not counted). The call holds ``env``'s writer lock throughout,
    waits included, so writers wait for it, and it must not be made while
    this thread has a write transaction open.
    Raises :class:`CorruptionError` (writing nothing) if the file's trees and
    freelist disagree, :class:`ReadOnlyError` for a read-only environment and
    :class:`CaskError` when the reader table cannot be read.
    """
    flags = env.flags()
    path = env.path()
    if flags["readonly"]:
        raise ReadOnlyError(f"the LMDB environment {path} is open read-only; cannot scrub it")
    data_file = os.path.join(path, LMDB_DATA_FILE) if flags["subdir"] else path
    env.reader_check()
    txn = env.begin(write=True)
    try:
        env.sync(True)
        fd = os.open(data_file, os.O_RDWR | os.O_CLOEXEC)
        try:
            survey = _survey(fd, data_file, env, txn)
            bound = _wait_for_readers(env, survey, timeout)
            return _zero(survey, bound)
        finally:
            os.close(fd)
    finally:
        txn.abort()


def _survey(fd: int, path: str, env: lmdb.Environment, txn: lmdb.Transaction) -> _Survey:
    meta = _current_meta(fd, path, env.stat()["psize"])
    info = env.info()
    if (meta.txnid, meta.last_pg) != (txn.id() - 1, info["last_pgno"]) or (
        meta.txnid != info["last_txnid"]
    ):
        raise CorruptionError(
            f"the meta page of the LMDB data file in {path} (transaction {meta.txnid}, last "
            f"page {meta.last_pg}) is not the one its environment holds (transaction "
            f"{info['last_txnid']}, last page {info['last_pgno']}); was it replaced?",
            path=path,
        )
    survey = _Survey(fd, path, meta, os.fstat(fd).st_size)
    survey.walk(meta.main, "main")
    survey.walk(meta.free, "free", free=True)
    survey.check()
    return survey


def _current_meta(fd: int, path: str, psize: int) -> _Meta:
    """The valid meta page (page 0 or 1) with the larger transaction id."""
    metas = []
    for page in (0, 1):
        data = os.pread(fd, _META_TAIL_AT + _META_TAIL.size, page * psize)
        if len(data) < _META_TAIL_AT + _META_TAIL.size:
            continue
        flags = _HEADER.unpack_from(data)[2]
        magic, version, _ = _META.unpack_from(data, _PAGEHDRSZ)
        free = _Tree.unpack(data, _META_DBS)
        if magic != _MAGIC or version != _DATA_VERSION or not flags & _P_META:
            continue
        if _DB.unpack_from(data, _META_DBS)[0] != psize:  # mm_psize
            continue
        last_pg, txnid = _META_TAIL.unpack_from(data, _META_TAIL_AT)
        metas.append(_Meta(psize, free, _Tree.unpack(data, _META_DBS + _DB.size), last_pg, txnid))
    if not metas:
        raise CorruptionError(
            f"the LMDB data file in {path} has no valid meta page of page size {psize}",
            path=path,
        )
    return max(metas, key=lambda meta: meta.txnid)


def _oldest_reader(env: lmdb.Environment) -> int | None:
    """The oldest snapshot an active reader holds, or None without readers.

    ``env.readers()`` is LMDB's ``mdb_reader_list``: a header line, then
    ``pid thread txnid`` per reader slot in use, ``-`` for an idle one.
    """
    text = env.readers()
    if text.strip() == "(no reader locks)":
        raise CaskError(
            f"the LMDB environment {env.path()} is open without its lock file, so which "
            "snapshots its readers hold is unknown; nothing was scrubbed"
        )
    oldest: int | None = None
    for line in text.splitlines():
        words = line.split()
        if (
            not words
            or words == ["pid", "thread", "txnid"]
            or line.strip() == "(no active readers)"
        ):
            continue
        if len(words) != 3 or not words[0].isdigit() or not (words[2] == "-" or words[2].isdigit()):
            raise CaskError(
                f"cannot tell which snapshots the readers of {env.path()} hold "
                f"(reader table {text!r}); nothing was scrubbed"
            )
        if words[2] != "-":
            oldest = int(words[2]) if oldest is None else min(oldest, int(words[2]))
    return oldest


def _wait_for_readers(env: lmdb.Environment, survey: _Survey, timeout: float) -> int:
    """The bound below which freed-by ids are safe to zero, once readers allow
    all of them or ``timeout`` has passed.

    LMDB reuses a page freed by transaction ``t`` only when ``t`` is older
    than every reader's snapshot: a reader of snapshot ``r`` may read pages
    freed by ``r`` or later. Without readers every free page qualifies, the
    latest commit's too: the sync under the writer lock made its meta page
    durable, so the older meta page that still reaches them is never chosen.
    """
    newest = max(survey.freed, default=0)
    deadline = time.monotonic() + timeout
    while True:
        env.reader_check()
        oldest = _oldest_reader(env)
        bound = survey.meta.txnid + 1 if oldest is None else min(oldest, survey.meta.txnid + 1)
        if newest < bound or time.monotonic() >= deadline:
            return bound
        time.sleep(_POLL)


def _zero(survey: _Survey, bound: int) -> int:
    psize = survey.meta.psize
    zeros = bytes(psize)
    zeroed = 0
    for txnid, pages in survey.freed.items():
        if txnid >= bound:
            continue
        for pgno in pages:
            offset = pgno * psize
            length = min(psize, survey.size - offset)
            if length <= 0:  # allocated but never written: nothing on disk
                continue
            if os.pread(survey.fd, length, offset) != zeros[:length]:
                _write_zeros(survey.fd, offset, length)
                zeroed += 1
    for offset, length in survey.slack:
        _write_zeros(survey.fd, offset, length)
    os.fsync(survey.fd)
    return zeroed


def _write_zeros(fd: int, offset: int, length: int) -> None:
    zeros = memoryview(bytes(length))
    while zeros:
        written = os.pwrite(fd, zeros, offset)
        zeros, offset = zeros[written:], offset + written
