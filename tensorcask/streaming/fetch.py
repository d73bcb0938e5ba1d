"""Getting pieces: from the cache, else by parallel ranged reads, checked before use.

:class:`PieceFetcher` serves a batch's pieces. Those in the cache come from
it; the rest are read with one ``cat_ranges`` call (every range of the
batch in flight together), neighbouring pieces of a pack merged into one
range. Each downloaded piece is checked, every entry against its name,
before it is cached or used. A piece that fails is returned marked
damaged (and never cached): the reader then checks each sample it wants
from it alone, so damage to one entry fails only the samples it hits.

:meth:`PieceFetcher.prefetch` starts the same work for later batches on a
background thread; a piece being fetched is fetched once, whoever asks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import CorruptionError
from ..remote.packset import PackSet
from .cache import PieceCache
from .table import remote_gone

__all__ = ["MERGE_GAP", "MAX_RANGE", "Piece", "PieceFetcher", "Wanted"]

#: Pieces of one pack closer than this are read as one range.
MERGE_GAP = 1 << 16
#: A merged range grows to at most this many bytes.
MAX_RANGE = 16 << 20
#: Seconds to wait for a piece another process is fetching before fetching it too.
_AWAIT = 60.0
#: Prefetch jobs queued at most; beyond, prefetch requests are dropped (reads catch up).
PREFETCH_DEPTH = 4


@dataclass(frozen=True)
class Wanted:
    """A piece to get: its cache name, pack, byte range, and how to check it."""

    name: str
    pack: str
    start: int
    end: int
    check: Callable[[bytes], None]


@dataclass(frozen=True)
class Piece:
    """A piece's bytes; ``damaged`` is the error of its check when it failed."""

    data: memoryview
    damaged: CorruptionError | None = None


class PieceFetcher:
    """Pieces of one remote's data packs, through a cache.

    Parameters
    ----------
    packs:
        The remote's data folder.
    cache:
        Where checked pieces are kept.
    """

    def __init__(self, packs: PackSet, cache: PieceCache) -> None:
        self.packs = packs
        self.cache = cache
        self._inflight: dict[str, Future[Piece]] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._queued = 0
        self._idle = 0  # prefetch jobs in a row that found every piece cached already
        self._asked = 0
        self.requests = 0  # ranged reads issued by this process ...
        self.bytes = 0  # ... and the bytes they returned

    def get(self, wanted: Sequence[Wanted]) -> dict[str, Piece]:
        """Every wanted piece, by name (fetching what the cache lacks, in parallel)."""
        out: dict[str, Piece] = {}
        waits: dict[str, Future[Piece]] = {}
        mine, elsewhere = self._claim(wanted, out, waits)
        if mine:
            self._download(mine)
        if elsewhere:
            self._await(elsewhere)
        for w, future in (*mine, *elsewhere):
            out[w.name] = future.result()
        for name, future in waits.items():
            out[name] = future.result()
        return out

    def worth_prefetching(self) -> bool:
        """Whether prefetching helps now: not while the last jobs found every piece
        cached (an epoch read from the cache), though one in eight still looks."""
        self._asked += 1
        return self._idle < 2 or self._asked % 8 == 0

    def prefetch(self, wanted: Iterable[Wanted]) -> None:
        """Start fetching pieces on a background thread (dropped when enough is queued)."""
        with self._lock:
            if self._queued >= PREFETCH_DEPTH:
                return
            self._queued += 1
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="tensorcask-prefetch")
            pool = self._pool
        pool.submit(self._prefetch, list(wanted))

    def _prefetch(self, wanted: list[Wanted]) -> None:
        try:
            mine, elsewhere = self._claim(wanted, {}, {})
            self._idle = 0 if mine or elsewhere else self._idle + 1
            if mine:
                self._download(mine)
            if elsewhere:
                self._await(elsewhere)
        finally:
            with self._lock:
                self._queued -= 1

    def _claim(
        self, wanted: Sequence[Wanted], out: dict[str, Piece], waits: dict[str, Future[Piece]]
    ) -> tuple[list[tuple[Wanted, Future[Piece]]], list[tuple[Wanted, Future[Piece]]]]:
        """Sort ``wanted`` into cached (``out``), being fetched by this process (``waits``),
        ours to fetch, and being fetched by another process sharing the cache (the last
        two returned, each with the future its readers wait on)."""
        mine: list[tuple[Wanted, Future[Piece]]] = []
        elsewhere: list[tuple[Wanted, Future[Piece]]] = []
        seen: set[str] = set()
        for w in wanted:
            if w.name in seen:
                continue
            seen.add(w.name)
            data = self.cache.get(w.name)
            if data is not None:
                out[w.name] = Piece(data)
                continue
            with self._lock:
                future = self._inflight.get(w.name)
                if future is not None:
                    waits[w.name] = future
                    continue
                future = self._inflight[w.name] = Future()
            if not self.cache.claim(w.name):
                elsewhere.append((w, future))
                continue
            # Another process may have put the piece and dropped its claim between our
            # look and our claim: look again, or we would fetch it a second time.
            data = self.cache.get(w.name)
            if data is None:
                mine.append((w, future))
            else:
                self.cache.release(w.name)
                out[w.name] = piece = Piece(data)
                self._settle(w.name, future, piece)
        return mine, elsewhere

    def _await(self, elsewhere: list[tuple[Wanted, Future[Piece]]]) -> None:
        """Wait for pieces other processes fetch into the shared cache; fetch those whose
        claim goes without the piece appearing (its fetcher failed, or could not cache it)."""
        pending = elsewhere
        deadline = time.monotonic() + _AWAIT
        pause = 0.002
        while pending:
            left = []
            for w, future in pending:
                data = self.cache.get(w.name)
                if data is not None:
                    self._settle(w.name, future, Piece(data))
                elif self.cache.claimed(w.name) and time.monotonic() < deadline:
                    left.append((w, future))
                else:
                    self.cache.claim(w.name)
                    self._download([(w, future)])
            pending = left
            if pending:
                time.sleep(pause)
                pause = min(pause * 2, 0.05)

    def _download(self, mine: list[tuple[Wanted, Future[Piece]]]) -> None:
        """Read, check and cache ``mine``, settling their futures (with the error if the
        read fails: every reader waiting on them gets it)."""
        try:
            ranges = _merged([w for w, _ in mine])
            futures = {w.name: f for w, f in mine}
            paths = [self.packs.path(r[0].pack, ".pack") for r in ranges]
            starts = [r[0].start for r in ranges]
            ends = [max(w.end for w in r) for r in ranges]
            self.requests += len(ranges)
            try:
                blocks = self.packs.transport.cat_ranges(paths, starts, ends)
            except FileNotFoundError as exc:
                raise remote_gone(self.packs.transport.url, str(exc)) from exc
            self.bytes += sum(map(len, blocks))
            for group, start, block in zip(ranges, starts, blocks, strict=True):
                view = memoryview(block)
                for w in group:
                    self._settle(w.name, futures[w.name], self._checked(w, view, start))
        except BaseException as exc:
            for w, future in mine:
                if not future.done():
                    future.set_exception(exc)
                    self._forget(w.name, future)
            if not isinstance(exc, Exception):
                raise
        finally:
            for w, _ in mine:
                self.cache.release(w.name)

    def _checked(self, w: Wanted, block: memoryview, start: int) -> Piece:
        piece = bytes(block[w.start - start : w.end - start])
        try:
            w.check(piece)
        except CorruptionError as exc:
            return Piece(memoryview(piece), exc)
        self.cache.put(w.name, piece)
        return Piece(memoryview(piece))

    def _settle(self, name: str, future: Future[Piece], piece: Piece) -> None:
        future.set_result(piece)
        self._forget(name, future)

    def _forget(self, name: str, future: Future[Piece]) -> None:
        with self._lock:
            if self._inflight.get(name) is future:
                del self._inflight[name]

    def close(self) -> None:
        """Stop the prefetch thread (pending prefetches finish first)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


def _merged(wanted: list[Wanted]) -> list[list[Wanted]]:
    """``wanted`` grouped into ranges: pieces of one pack, in order, close together."""
    ranges: list[list[Wanted]] = []
    for w in sorted(wanted, key=lambda w: (w.pack, w.start)):
        if ranges:
            last = ranges[-1]
            end = max(x.end for x in last)
            if (
                last[0].pack == w.pack
                and w.start - end <= MERGE_GAP
                and w.end - last[0].start <= MAX_RANGE
            ):
                last.append(w)
                continue
        ranges.append([w])
    return ranges
