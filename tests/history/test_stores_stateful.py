"""Object stores and refs containers against dict models, by random sequences of operations.

Each machine runs on the memory twin, on the local LMDB implementation and on a
remote over local files (packs and create-only ref logs).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tensorcask.history.objectstore import (
    Kind,
    LMDBObjectStore,
    MemoryObjectStore,
    ObjectStore,
    WriteBatch,
    kind_of,
)
from tensorcask.history.refs import LMDBRefs, MemoryRefs, RefsContainer
from tensorcask.remote.objects import RemoteObjectStore
from tensorcask.remote.refs import RemoteRefs
from tensorcask.remote.transport import open_transport
from tensorcask.storage.db import MetaDB

from .conformance import cid, commit_name, object_name

SETTINGS = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

Closer = Callable[[], None]


def memory_objects() -> tuple[ObjectStore, Closer]:
    return MemoryObjectStore(), lambda: None


def lmdb_objects() -> tuple[ObjectStore, Closer]:
    folder = Path(tempfile.mkdtemp(prefix="tc-objects-"))
    db = MetaDB(folder / "meta", create=True)

    def close() -> None:
        db.close()
        shutil.rmtree(folder, ignore_errors=True)

    return LMDBObjectStore(db), close


def remote_objects() -> tuple[ObjectStore, Closer]:
    folder = Path(tempfile.mkdtemp(prefix="tc-remote-objects-"))
    store = RemoteObjectStore(open_transport(folder.as_uri()))
    return store, lambda: shutil.rmtree(folder, ignore_errors=True)


def remote_refs() -> tuple[RefsContainer, Closer]:
    folder = Path(tempfile.mkdtemp(prefix="tc-remote-refs-"))
    refs = RemoteRefs(open_transport(folder.as_uri()))
    return refs, lambda: shutil.rmtree(folder, ignore_errors=True)


def memory_refs() -> tuple[RefsContainer, Closer]:
    return MemoryRefs(), lambda: None


def lmdb_refs() -> tuple[RefsContainer, Closer]:
    folder = Path(tempfile.mkdtemp(prefix="tc-refs-"))
    db = MetaDB(folder / "meta", create=True)

    def close() -> None:
        db.close()
        shutil.rmtree(folder, ignore_errors=True)

    return LMDBRefs(db), close


# -- objects -----------------------------------------------------------------

# A small pool, so that names repeat; leading bytes shared across kinds and names,
# so that prefixes select something.
NAME_POOL = [commit_name(i, lead) for lead in (b"\x00", b"\x01", b"\x01\x02") for i in (1, 2)] + [
    object_name(i, lead) for lead in (b"\x00", b"\x01", b"\x01\x02", b"\xff") for i in (1, 2)
]
NAMES = st.sampled_from(NAME_POOL)
PREFIXES = st.sampled_from([b"", b"\x00", b"\x01", b"\x01\x02", b"\x01\x03", b"\xff"]) | NAMES
KINDS: st.SearchStrategy[Kind] = st.sampled_from(["commit", "object"])


def data_of(name: bytes, variant: int) -> bytes:
    """The object stored under ``name`` (names are content hashes: one datum per name)."""
    return bytes([name[-1], name[0]]) * (variant % 4) + name[: variant % 3]


class ObjectStoreMachine(RuleBasedStateMachine):
    factory: Callable[[], tuple[ObjectStore, Closer]]

    def __init__(self) -> None:
        super().__init__()
        self.store, self.close = type(self).factory()
        self.model: dict[bytes, bytes] = {}
        self.variant = {name: i for i, name in enumerate(NAME_POOL)}

    def data(self, name: bytes) -> bytes:
        return data_of(name, self.variant[name])

    @rule(name=NAMES)
    def put(self, name: bytes) -> None:
        self.store.put(name, self.data(name))
        self.model[name] = self.data(name)

    @rule(names=st.lists(NAMES, max_size=8))
    def write_batch(self, names: list[bytes]) -> None:
        batch = WriteBatch()
        for name in names:
            batch.put(name, self.data(name))
        assert self.store.has_many(names) == [n in self.model for n in names]  # not yet
        self.store.write(batch)
        self.model.update((n, self.data(n)) for n in names)

    @rule(names=st.lists(NAMES, max_size=5))
    def delete_many(self, names: list[bytes]) -> None:
        existed = len({n for n in names if n in self.model})
        assert self.store.delete_many(names) == existed
        for name in names:
            self.model.pop(name, None)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete_and_store_anew(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.model)))
        assert self.store.delete_many([name]) == 1
        self.variant[name] += 1  # another datum: an unlikely hash collision, or a repair
        self.store.put(name, self.data(name))
        self.model[name] = self.data(name)

    @rule(name=NAMES)
    def get(self, name: bytes) -> None:
        assert self.store.get(name) == self.model.get(name)
        assert self.store.has(name) == (name in self.model)

    @rule(names=st.lists(NAMES, max_size=6))
    def get_many(self, names: list[bytes]) -> None:
        assert self.store.get_many(names) == [self.model.get(n) for n in names]
        assert self.store.has_many(names) == [n in self.model for n in names]

    @rule(kind=KINDS, prefix=PREFIXES)
    def names(self, kind: Kind, prefix: bytes) -> None:
        want = sorted(n for n in self.model if kind_of(n) == kind and n.startswith(prefix))
        assert list(self.store.names(kind, prefix)) == want

    @invariant()
    def listing_matches(self) -> None:
        for kind in ("commit", "object"):
            assert list(self.store.names(kind)) == sorted(
                n for n in self.model if kind_of(n) == kind
            )

    def teardown(self) -> None:
        self.close()


class MemoryObjectStoreMachine(ObjectStoreMachine):
    factory = staticmethod(memory_objects)


class LMDBObjectStoreMachine(ObjectStoreMachine):
    factory = staticmethod(lmdb_objects)


class RemoteObjectStoreMachine(ObjectStoreMachine):
    factory = staticmethod(remote_objects)


TestMemoryObjectStoreStateful = MemoryObjectStoreMachine.TestCase
TestMemoryObjectStoreStateful.settings = SETTINGS
TestLMDBObjectStoreStateful = LMDBObjectStoreMachine.TestCase
TestLMDBObjectStoreStateful.settings = SETTINGS
TestRemoteObjectStoreStateful = RemoteObjectStoreMachine.TestCase
TestRemoteObjectStoreStateful.settings = SETTINGS


# -- refs --------------------------------------------------------------------

REF_NAMES = st.sampled_from(
    [
        "heads/main",
        "heads/a",
        "heads/a/b",
        "heads/ab",
        "heads/ü/日本",
        "tags/v1",
        "tags/a",
        "tags/heads/x",
    ]
)
VALUES = st.integers(0, 4).map(cid)
REF_PREFIXES = st.sampled_from(["", "heads/", "tags/", "heads/a", "heads/a/", "heads/ü/", "x/"])


class RefsMachine(RuleBasedStateMachine):
    factory: Callable[[], tuple[RefsContainer, Closer]]

    def __init__(self) -> None:
        super().__init__()
        self.refs, self.close = type(self).factory()
        self.model: dict[str, str] = {}

    @rule(
        name=REF_NAMES,
        seen=st.booleans(),
        old=st.none() | VALUES,
        new=st.none() | VALUES,
    )
    def set_if_equals(self, name: str, seen: bool, old: str | None, new: str | None) -> None:
        if seen:  # the usual case: the caller saw the current value
            old = self.model.get(name)
        expected = self.model.get(name) == old
        assert self.refs.set_if_equals(name, old, new) is expected
        if expected:
            if new is None:
                self.model.pop(name, None)
            else:
                self.model[name] = new

    @rule(name=REF_NAMES)
    def delete(self, name: str) -> None:
        assert self.refs.delete(name) is (name in self.model)
        self.model.pop(name, None)

    @rule(name=REF_NAMES)
    def get(self, name: str) -> None:
        assert self.refs.get(name) == self.model.get(name)

    @rule(prefix=REF_PREFIXES)
    def listing(self, prefix: str) -> None:
        want = {n[len(prefix) :]: v for n, v in self.model.items() if n.startswith(prefix)}
        assert self.refs.listing(prefix) == want

    @invariant()
    def everything_listed(self) -> None:
        assert self.refs.listing() == self.model

    def teardown(self) -> None:
        self.close()


class MemoryRefsMachine(RefsMachine):
    factory = staticmethod(memory_refs)


class LMDBRefsMachine(RefsMachine):
    factory = staticmethod(lmdb_refs)


class RemoteRefsMachine(RefsMachine):
    factory = staticmethod(remote_refs)


TestMemoryRefsStateful = MemoryRefsMachine.TestCase
TestMemoryRefsStateful.settings = SETTINGS
TestLMDBRefsStateful = LMDBRefsMachine.TestCase
TestLMDBRefsStateful.settings = SETTINGS
TestRemoteRefsStateful = RemoteRefsMachine.TestCase
TestRemoteRefsStateful.settings = SETTINGS


def test_remote_commit_stored_again_after_delete_is_found(tmp_path: Path) -> None:
    """A pack written anew after a delete can bear the name of a pack read before."""
    store = RemoteObjectStore(open_transport((tmp_path / "remote").as_uri()))
    name = b"\0" * 19 + b"\1"  # a commit name
    batch = WriteBatch()
    batch.put(name, b"")
    store.write(batch)
    assert store.get(name) == b""  # its pack's commits are read (and remembered)
    assert store.delete_many([name]) == 1
    store.put(name, b"")  # the same pack again, by content
    assert store.get(name) == b""
    assert store.get_many([name]) == [b""]
