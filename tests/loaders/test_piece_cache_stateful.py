"""The piece caches against a pure-Python model, driven by Hypothesis.

A cache may forget anything (it is only a cache) but must never answer with
bytes other than those put under a name, and must stay within its bound.
The disk cache is also damaged on disk (a flipped byte, a truncated file, a
torn temporary file left by a killed writer) and opened by a second instance
(another process sharing the folder): a damaged file is dropped, never read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tensorcask.streaming.cache import DiskCache, MemoryCache

NAMES = st.sampled_from(
    [f"{p}.{i * 100}-{i * 100 + 99}" for p in ("aa", "ab", "cd") for i in range(4)]
)
DATA = st.binary(min_size=1, max_size=3000)
LIMIT = 8000


def _files(root: Path) -> list[Path]:
    """The piece files (not the ledger, the lock, temporary files or claims)."""
    return [
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]


class _CacheModel(RuleBasedStateMachine):
    """Put and get on ``self.cache`` against ``self.model`` (what was put under a name)."""

    cache: DiskCache | MemoryCache

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, bytes] = {}

    @rule(name=NAMES, data=DATA)
    def put(self, name: str, data: bytes) -> None:
        # pieces are immutable: a name always holds the same bytes once put
        data = self.model.setdefault(name, data)
        self.cache.put(name, data)

    @rule(name=NAMES)
    def get(self, name: str) -> None:
        got = self.cache.get(name)
        if got is not None:
            assert bytes(got) == self.model[name]


class DiskCacheMachine(_CacheModel):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="tc-piece-cache-"))
        self.cache = DiskCache(self.root, LIMIT)

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    @rule(name=NAMES)
    def get_in_another_process(self, name: str) -> None:
        got = DiskCache(self.root, LIMIT).get(name)  # a fresh instance maps the file anew
        if got is not None:
            assert bytes(got) == self.model[name]

    @precondition(lambda self: bool(self.model))
    @rule(pick=st.integers(0, 100), at=st.integers(0, 10_000), truncate=st.booleans())
    def damage_a_file(self, pick: int, at: int, truncate: bool) -> None:
        files = _files(self.root)
        if not files:
            return
        path = files[pick % len(files)]
        raw = bytearray(path.read_bytes())
        if truncate:
            raw = raw[: at % max(len(raw), 1)]
        elif raw:
            raw[at % len(raw)] ^= 0x20
        path.write_bytes(bytes(raw))
        self.cache = DiskCache(self.root, LIMIT)  # mapped views of the old file are gone

    @rule(data=DATA)
    def leave_a_torn_temporary_file(self, data: bytes) -> None:
        (self.root / ".tmp" / f"killed.{os.getpid()}").write_bytes(data[: len(data) // 2])

    @invariant()
    def within_the_bound(self) -> None:
        assert sum(p.stat().st_size for p in _files(self.root)) <= LIMIT


class MemoryCacheMachine(_CacheModel):
    def __init__(self) -> None:
        super().__init__()
        self.cache = MemoryCache(LIMIT)

    @invariant()
    def within_the_bound(self) -> None:
        assert self.cache.usage() <= LIMIT


TestDiskCache = DiskCacheMachine.TestCase
TestDiskCache.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
TestMemoryCache = MemoryCacheMachine.TestCase
TestMemoryCache.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
