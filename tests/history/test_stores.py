"""Object stores and refs containers: the conformance rules on each implementation, then
what is particular to the local LMDB ones, and history running on the memory twins."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import tensorcask
from tensorcask.errors import RefNotFoundError
from tensorcask.history.objects import ColumnRoot, ColumnSchema
from tensorcask.history.objectstore import (
    LMDBObjectStore,
    MemoryObjectStore,
    ObjectStore,
    WriteBatch,
)
from tensorcask.history.refs import HEADS, LMDBRefs, MemoryRefs, RefsContainer
from tensorcask.history.store import History
from tensorcask.storage.db import MetaDB

from .conformance import (
    NOT_COMMIT_IDS,
    ObjectStoreConformance,
    RefsConformance,
    cid,
    commit_name,
    object_name,
)

REPO_ROOT = Path(tensorcask.__file__).resolve().parent.parent


def open_meta(tmp_path: Path) -> MetaDB:
    return MetaDB(tmp_path / "meta", create=True)


# -- the conformance rules on each implementation ---------------------------


class TestMemoryObjectStore(ObjectStoreConformance):
    def make_store(self, tmp_path: Path) -> ObjectStore:
        return MemoryObjectStore()

    @pytest.mark.parametrize("length", [0, 19, 33])
    def test_a_name_of_a_wrong_length_is_refused_by_reads(
        self, store: ObjectStore, length: int
    ) -> None:
        super().test_a_name_of_a_wrong_length_is_refused_by_reads(store, length)

    @pytest.mark.parametrize("length", [0, 19, 33])
    def test_a_name_of_a_wrong_length_is_refused_by_delete_many(
        self, store: ObjectStore, length: int
    ) -> None:
        super().test_a_name_of_a_wrong_length_is_refused_by_delete_many(store, length)


class TestLMDBObjectStore(ObjectStoreConformance):
    def make_store(self, tmp_path: Path) -> ObjectStore:
        return LMDBObjectStore(open_meta(tmp_path))

    def close_store(self, store: ObjectStore) -> None:
        assert isinstance(store, LMDBObjectStore)
        store.db.close()


class TestMemoryRefs(RefsConformance):
    def make_refs(self, tmp_path: Path) -> RefsContainer:
        return MemoryRefs()

    @pytest.mark.parametrize("value", NOT_COMMIT_IDS)
    def test_set_if_equals_refuses_a_value_that_is_not_a_commit_id(
        self, refs: RefsContainer, value: str
    ) -> None:
        super().test_set_if_equals_refuses_a_value_that_is_not_a_commit_id(refs, value)

    def test_an_uppercase_commit_id_is_refused_or_stored_in_lowercase(
        self, refs: RefsContainer
    ) -> None:
        super().test_an_uppercase_commit_id_is_refused_or_stored_in_lowercase(refs)


class TestLMDBRefs(RefsConformance):
    def make_refs(self, tmp_path: Path) -> RefsContainer:
        return LMDBRefs(open_meta(tmp_path))

    def close_refs(self, refs: RefsContainer) -> None:
        assert isinstance(refs, LMDBRefs)
        refs.db.close()

    @pytest.mark.parametrize(
        "value",  # LMDBRefs refuses what bytes.fromhex refuses, and stores the rest
        NOT_COMMIT_IDS,
    )
    def test_set_if_equals_refuses_a_value_that_is_not_a_commit_id(
        self, refs: RefsContainer, value: str
    ) -> None:
        super().test_set_if_equals_refuses_a_value_that_is_not_a_commit_id(refs, value)

    def test_the_current_branch_is_not_a_ref(self, refs: RefsContainer) -> None:
        assert isinstance(refs, LMDBRefs)
        assert refs.current_branch() == "main"
        refs.set_if_equals("heads/dev", None, cid(1))
        refs.set_current_branch("dev")
        assert refs.current_branch() == "dev"
        assert refs.listing() == {"heads/dev": cid(1)}
        assert refs.listing("H") == {}
        refs.set_current_branch("unborn")  # made by its first commit
        assert refs.current_branch() == "unborn"
        with pytest.raises(tensorcask.errors.CaskError):
            refs.set_current_branch("dev/x")  # a folder of an existing branch
        assert refs.current_branch() == "unborn"


# -- the local store and refs in one transaction -----------------------------


class Refused(Exception):
    pass


@pytest.fixture
def local(tmp_path: Path) -> Iterator[tuple[MetaDB, LMDBObjectStore, LMDBRefs]]:
    db = open_meta(tmp_path)
    try:
        yield db, LMDBObjectStore(db), LMDBRefs(db)
    finally:
        db.close()


def _batch(count: int) -> WriteBatch:
    batch = WriteBatch()
    for i in range(count):
        batch.put(object_name(i), b"page %d" % i)
    batch.put(commit_name(1), b"the commit")
    return batch


def test_a_refused_ref_move_rolls_back_the_objects_of_its_transaction(
    local: tuple[MetaDB, LMDBObjectStore, LMDBRefs],
) -> None:
    db, objects, refs = local
    assert refs.set_if_equals("heads/main", None, cid(1))
    batch = _batch(20)
    names = [name for name, _ in batch.items()]
    with pytest.raises(Refused), db.write():
        objects.write(batch)
        assert all(objects.has_many(names))  # the open transaction sees its writes
        if not refs.set_if_equals("heads/main", cid(7), cid(2)):  # stale: refused
            raise Refused
    assert objects.has_many(names) == [False] * len(names)
    assert list(objects.names("object")) == [] and list(objects.names("commit")) == []
    assert refs.get("heads/main") == cid(1)
    with db.write():  # the handle is usable afterwards, and a good move commits both
        objects.write(batch)
        assert refs.set_if_equals("heads/main", cid(1), cid(2))
    assert all(objects.has_many(names)) and refs.get("heads/main") == cid(2)


def test_an_error_after_a_ref_move_rolls_back_the_move_and_the_objects(
    local: tuple[MetaDB, LMDBObjectStore, LMDBRefs],
) -> None:
    db, objects, refs = local
    batch = _batch(3)
    with pytest.raises(Refused), db.write():
        objects.write(batch)
        assert refs.set_if_equals("heads/main", None, cid(1))
        assert refs.delete("heads/main") is True
        assert refs.set_if_equals("heads/main", None, cid(2))
        assert objects.delete_many([object_name(0)]) == 1
        raise Refused
    assert refs.get("heads/main") is None and refs.listing() == {}
    assert list(objects.names("object")) == []


def test_other_threads_see_a_joined_write_only_once_it_commits(
    local: tuple[MetaDB, LMDBObjectStore, LMDBRefs],
) -> None:
    db, objects, refs = local
    seen: list[tuple[bool, str | None]] = []

    def look() -> None:
        seen.append((objects.has(commit_name(1)), refs.get("heads/main")))

    with db.write():
        objects.write(_batch(2))
        refs.set_if_equals("heads/main", None, cid(1))
        inside = threading.Thread(target=look)
        inside.start()
        inside.join()
    after = threading.Thread(target=look)
    after.start()
    after.join()
    assert seen == [(False, None), (True, cid(1))]


RACER = """
import sys, time
from pathlib import Path
from tensorcask.history.refs import LMDBRefs
from tensorcask.storage.db import MetaDB

meta, go, me, races, moves = Path(sys.argv[1]), Path(sys.argv[2]), *map(int, sys.argv[3:])
db = MetaDB(meta)
refs = LMDBRefs(db)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
wins = [i for i in range(races) if refs.set_if_equals(f"heads/race{i}", None, f"{me:040x}")]
applied = []
for _ in range(moves):
    while True:
        old = refs.get("heads/counter")
        new = (0 if old is None else int(old, 16)) + 1
        if refs.set_if_equals("heads/counter", old, f"{new:040x}"):
            applied.append(new)
            break
db.close()
print(",".join(map(str, wins)) + "|" + ",".join(map(str, applied)), flush=True)
"""


def test_processes_racing_on_one_ref_have_exactly_one_winner(tmp_path: Path) -> None:
    processes, races, moves = 3, 12, 8
    open_meta(tmp_path).close()
    go = tmp_path / "go"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    racers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RACER,
                str(tmp_path / "meta"),
                str(go),
                str(p + 1),
                str(races),
                str(moves),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for p in range(processes)
    ]
    try:
        for racer in racers:
            assert racer.stdout is not None
            line = racer.stdout.readline()
            assert line == "ready\n", racer.communicate(timeout=30)
        go.touch()
        results = [racer.communicate(timeout=60) for racer in racers]
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()
    assert [r.returncode for r in racers] == [0] * processes, [err for _, err in results]
    wins: list[list[int]] = []
    applied: list[int] = []
    for out, _ in results:
        won, moved = out.strip().split("|")
        wins.append([int(i) for i in won.split(",") if i])
        applied += [int(n) for n in moved.split(",") if n]
    db = MetaDB(tmp_path / "meta")
    try:
        refs = LMDBRefs(db)
        for i in range(races):
            winners = [p for p in range(processes) if i in wins[p]]
            assert len(winners) == 1, (i, wins)
            assert refs.get(f"heads/race{i}") == cid(winners[0] + 1)
        assert refs.get("heads/counter") == cid(processes * moves)
        assert sorted(applied) == list(range(1, processes * moves + 1))
    finally:
        db.close()


# -- history on the memory twins ---------------------------------------------


def test_history_runs_on_the_memory_twins() -> None:
    history = History(MemoryObjectStore(), MemoryRefs())
    schema = ColumnSchema(kind="ndarray", dtype="<i8", shape=(3,))
    items = [(b"key%04d" % i, bytes([i % 256]) * 32) for i in range(300)]

    batch = WriteBatch()
    root = history.tree.with_batch(batch).build(items)
    first_columns = {"x": ColumnRoot(schema, root, len(items))}
    first = history.new_commit(
        batch,
        parents=(),
        columns=first_columns,
        author="Ada",
        email="ada@example.org",
        message="one",
    )
    assert not history.objects.has(bytes.fromhex(first.id))  # nothing before write
    with pytest.raises(RefNotFoundError):
        history.commit(first.id)
    history.objects.write(batch)
    assert history.refs.set_if_equals(HEADS + "main", None, first.id)

    assert history.resolve("main") == first.id
    assert history.resolve(first.id) == first.id
    assert history.resolve(first.id[:6]) == first.id
    assert history.resolve(first.id[:7].upper()) == first.id
    assert history.columns(first.id) == first_columns
    assert history.commit(first.id) == first
    assert list(history.tree.items(root)) == items

    batch = WriteBatch()
    edits = [(b"key0000", None), (b"key9999", b"\xee" * 32)]
    new_root = history.tree.with_batch(batch).update(root, edits)
    second_columns = {
        "x": ColumnRoot(schema, new_root, len(items)),
        "y": ColumnRoot(schema, root, len(items)),
    }
    second = history.new_commit(
        batch,
        parents=(first.id,),
        columns=second_columns,
        author="Ada",
        email="ada@example.org",
        message="two",
    )
    history.objects.write(batch)
    assert not history.refs.set_if_equals(HEADS + "main", None, second.id)
    assert history.refs.set_if_equals(HEADS + "main", first.id, second.id)
    assert history.refs.set_if_equals("tags/v1", None, first.id)

    assert history.resolve("main") == second.id
    assert history.resolve("v1") == first.id
    assert history.commit(second.id).parents == (first.id,)
    assert history.commit(second.id).time_us > first.time_us
    assert history.columns(second.id) == second_columns
    assert history.columns(None) == {}
    assert list(history.tree.items(new_root)) == [*items[1:], (b"key9999", b"\xee" * 32)]
    assert len(list(history.objects.names("commit"))) == 2
    with pytest.raises(RefNotFoundError):
        history.resolve("nothing")
