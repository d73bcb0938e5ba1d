"""The rules every object store and refs container must pass, as inheritable test classes.

An implementation's test class subclasses :class:`ObjectStoreConformance` (and
provides :meth:`~ObjectStoreConformance.make_store`) or :class:`RefsConformance`
(and provides :meth:`~RefsConformance.make_refs`); both may override a
``close_*`` hook to release what the factory opened. ``tests/history/test_stores.py``
runs them against the memory twins and the local LMDB implementations; a
remote transport's tests subclass them the same way.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tensorcask.errors import CaskError
from tensorcask.history.objectstore import (
    COMMIT_NAME_BYTES,
    OBJECT_NAME_BYTES,
    ObjectStore,
    WriteBatch,
    kind_of,
)
from tensorcask.history.refs import HEADS, TAGS, RefsContainer

__all__ = [
    "NOT_COMMIT_IDS",
    "ObjectStoreConformance",
    "RefsConformance",
    "cid",
    "commit_name",
    "object_name",
]


def commit_name(i: int, lead: bytes = b"") -> bytes:
    """A 20-byte commit name: ``lead`` then ``i`` big-endian."""
    return lead + i.to_bytes(COMMIT_NAME_BYTES - len(lead), "big")


def object_name(i: int, lead: bytes = b"") -> bytes:
    """A 32-byte object name: ``lead`` then ``i`` big-endian."""
    return lead + i.to_bytes(OBJECT_NAME_BYTES - len(lead), "big")


def cid(i: int) -> str:
    """A commit id (40 lowercase hex digits) that encodes the counter ``i``."""
    return f"{i:040x}"


def run_threads(count: int, target: Callable[[int], None]) -> None:
    """Run ``target(0..count-1)`` in threads; re-raise the first error of any."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as error:  # reported to the test thread
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def _race(count: int, attempt: Callable[[int], bool]) -> list[bool]:
    """Run ``attempt(i)`` in ``count`` threads released together; their results."""
    barrier = threading.Barrier(count)
    results = [False] * count

    def racer(i: int) -> None:
        barrier.wait(timeout=30)
        results[i] = attempt(i)

    run_threads(count, racer)
    return results


BAD_LENGTHS = [0, 1, 19, 21, 31, 33, 40, 64]
NOT_COMMIT_IDS = [
    "abcd",
    "",
    "0" * 38,
    "0" * 42,
    "0" * 39,
    "zz" * 20,
    "0x" + "0" * 38,
    " " + "0" * 39,
]


class ObjectStoreConformance:
    """Rules every :class:`ObjectStore` must pass. Subclass as ``Test<Name>ObjectStore``."""

    # -- hooks -----------------------------------------------------------

    def make_store(self, tmp_path: Path) -> ObjectStore:
        """A new, empty store (``tmp_path`` is the test's own folder)."""
        raise NotImplementedError

    def close_store(self, store: ObjectStore) -> None:
        """Release what :meth:`make_store` opened."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[ObjectStore]:
        store = self.make_store(tmp_path)
        try:
            yield store
        finally:
            self.close_store(store)

    # -- round trips -----------------------------------------------------

    def test_put_get_round_trip_of_both_kinds(self, store: ObjectStore) -> None:
        commit, obj = commit_name(7), object_name(7)
        store.put(commit, b"a commit")
        store.put(obj, b"an object")
        assert store.get(commit) == b"a commit"
        assert store.get(obj) == b"an object"
        assert type(store.get(commit)) is bytes
        assert store.has(commit) and store.has(obj)

    def test_a_commit_and_an_object_with_the_same_leading_bytes_are_distinct(
        self, store: ObjectStore
    ) -> None:
        lead = bytes(range(1, 21))
        commit, obj = lead, lead + bytes(12)
        store.put(commit, b"commit")
        assert store.get(obj) is None and not store.has(obj)
        store.put(obj, b"object")
        assert (store.get(commit), store.get(obj)) == (b"commit", b"object")
        assert list(store.names("commit")) == [commit]
        assert list(store.names("object")) == [obj]

    def test_get_of_an_absent_name_is_none(self, store: ObjectStore) -> None:
        assert store.get(commit_name(1)) is None
        assert store.get(object_name(1)) is None
        assert not store.has(commit_name(1)) and not store.has(object_name(1))
        store.put(commit_name(1), b"x")
        assert store.get(commit_name(2)) is None
        assert store.get(object_name(1)) is None

    @pytest.mark.parametrize(
        "data",
        [b"", b"\x00", bytes(range(256)) * 3, os.urandom(1 << 20)],
        ids=["empty", "nul", "all-bytes", "1MiB"],
    )
    def test_stored_bytes_come_back_exactly(self, store: ObjectStore, data: bytes) -> None:
        store.put(object_name(1), data)
        batch = WriteBatch()
        batch.put(commit_name(1), data)
        store.write(batch)
        for name in (object_name(1), commit_name(1)):
            got = store.get(name)
            assert type(got) is bytes and got == data
            assert store.has(name)  # empty data is still stored
        assert store.get_many([commit_name(1), object_name(1)]) == [data, data]

    def test_get_many_and_has_many_keep_order(self, store: ObjectStore) -> None:
        present = {commit_name(2): b"c2", object_name(5): b"o5", object_name(1): b"o1"}
        for name, data in present.items():
            store.put(name, data)
        asked = [
            object_name(5),
            commit_name(1),
            object_name(1),
            commit_name(2),
            object_name(3),
            object_name(5),  # twice
            commit_name(9),
        ]
        assert store.get_many(asked) == [present.get(n) for n in asked]
        assert store.has_many(asked) == [n in present for n in asked]
        assert store.get_many([]) == [] and store.has_many([]) == []
        assert store.get_many(tuple(asked[:2])) == [b"o5", None]

    # -- batches ---------------------------------------------------------

    def test_write_stores_the_whole_batch_and_nothing_before(self, store: ObjectStore) -> None:
        batch = WriteBatch()
        objects = {commit_name(i): b"c%d" % i for i in range(10)}
        objects |= {object_name(i): b"o%d" % i * i for i in range(30)}
        for name, data in objects.items():
            batch.put(name, data)
        names = list(objects)
        assert store.has_many(names) == [False] * len(names)
        assert store.get_many(names) == [None] * len(names)
        assert list(store.names("commit")) == [] and list(store.names("object")) == []
        store.write(batch)
        assert store.get_many(names) == list(objects.values())
        assert list(store.names("commit")) == sorted(n for n in names if len(n) == 20)
        assert list(store.names("object")) == sorted(n for n in names if len(n) == 32)

    def test_writing_the_same_objects_twice_is_harmless(self, store: ObjectStore) -> None:
        batch = WriteBatch()
        batch.put(commit_name(1), b"c")
        batch.put(object_name(1), b"o")
        batch.put(object_name(1), b"o")
        assert len(batch) == 2
        store.write(batch)
        store.write(batch)
        store.put(object_name(1), b"o")
        again = WriteBatch()
        again.put(object_name(1), b"o")
        again.put(object_name(2), b"p")
        store.write(again)
        assert store.get_many([commit_name(1), object_name(1), object_name(2)]) == [
            b"c",
            b"o",
            b"p",
        ]
        assert list(store.names("object")) == [object_name(1), object_name(2)]
        assert list(store.names("commit")) == [commit_name(1)]

    def test_an_empty_batch_writes_nothing(self, store: ObjectStore) -> None:
        store.write(WriteBatch())
        assert list(store.names("commit")) == [] and list(store.names("object")) == []

    # -- listing ---------------------------------------------------------

    def test_names_lists_one_kind_sorted_and_honours_prefix(self, store: ObjectStore) -> None:
        commits = [commit_name(i, lead) for lead in (b"\x02", b"\x01", b"\xff") for i in (9, 3)]
        objects = [
            object_name(i, lead) for lead in (b"\x01\x00", b"\x01\x01", b"\x80") for i in (4, 2)
        ]
        for name in commits + objects:  # not in order
            store.put(name, name[:3])
        assert list(store.names("commit")) == sorted(commits)
        assert list(store.names("object")) == sorted(objects)
        assert list(store.names("commit", b"")) == sorted(commits)
        assert list(store.names("commit", b"\x01")) == sorted(c for c in commits if c[0] == 1)
        assert list(store.names("object", b"\x01")) == sorted(o for o in objects if o[0] == 1)
        assert list(store.names("object", b"\x01\x01")) == sorted(
            o for o in objects if o[:2] == b"\x01\x01"
        )
        assert list(store.names("commit", commits[0])) == [commits[0]]  # a whole name
        assert list(store.names("object", objects[0])) == [objects[0]]
        assert list(store.names("commit", b"\x03")) == []
        assert list(store.names("object", b"\x02")) == []
        assert list(store.names("object", b"\xff")) == []  # commits only start with ff
        assert list(store.names("commit", b"\x80")) == []  # objects only start with 80
        assert list(store.names("commit", b"\xff" * 21)) == []  # longer than any commit

    def test_names_of_an_empty_store(self, store: ObjectStore) -> None:
        assert list(store.names("commit")) == []
        assert list(store.names("object", b"\x00")) == []

    def test_names_may_be_consumed_while_writing(self, store: ObjectStore) -> None:
        for i in range(20):
            store.put(object_name(i), b"x")
        seen = []
        for name in store.names("object"):
            seen.append(name)
            store.delete_many([name])
            store.put(object_name(100 + len(seen)), b"y")
        assert seen == [object_name(i) for i in range(20)]
        assert list(store.names("object")) == [object_name(101 + i) for i in range(20)]

    # -- names of the wrong length ---------------------------------------

    @pytest.mark.parametrize("length", BAD_LENGTHS)
    def test_a_name_of_a_wrong_length_is_refused_by_batches_and_put(
        self, store: ObjectStore, length: int
    ) -> None:
        name = b"\x01" * length
        with pytest.raises(ValueError):
            kind_of(name)
        batch = WriteBatch()
        with pytest.raises(ValueError):
            batch.put(name, b"data")
        assert len(batch) == 0
        with pytest.raises(ValueError):
            store.put(name, b"data")
        assert list(store.names("commit")) == [] and list(store.names("object")) == []

    @pytest.mark.parametrize("length", BAD_LENGTHS)
    def test_a_name_of_a_wrong_length_is_refused_by_reads(
        self, store: ObjectStore, length: int
    ) -> None:
        name = b"\x01" * length
        with pytest.raises(ValueError):
            store.get(name)
        with pytest.raises(ValueError):
            store.get_many([commit_name(1), name])
        with pytest.raises(ValueError):
            store.has(name)
        with pytest.raises(ValueError):
            store.has_many([name])

    @pytest.mark.parametrize("length", BAD_LENGTHS)
    def test_a_name_of_a_wrong_length_is_refused_by_delete_many(
        self, store: ObjectStore, length: int
    ) -> None:
        with pytest.raises(ValueError):
            store.delete_many([b"\x01" * length])

    # -- deleting --------------------------------------------------------

    def test_delete_many_removes_and_counts_what_existed(self, store: ObjectStore) -> None:
        keep, gone = (
            [commit_name(1), object_name(1)],
            [commit_name(2), object_name(2), object_name(3)],
        )
        for name in keep + gone:
            store.put(name, name[-1:])
        absent = [commit_name(9), object_name(9)]
        assert store.delete_many(iter(gone + absent + [gone[0]])) == 3  # a generator, a repeat
        assert store.has_many(gone) == [False] * 3
        assert store.get_many(keep) == [b"\x01", b"\x01"]
        assert list(store.names("commit")) == [commit_name(1)]
        assert list(store.names("object")) == [object_name(1)]
        assert store.delete_many(gone) == 0
        assert store.delete_many([]) == 0
        store.put(gone[0], b"back")  # a deleted name may be stored again
        assert store.get(gone[0]) == b"back"

    # -- threads ---------------------------------------------------------

    def test_concurrent_writers_lose_nothing(self, store: ObjectStore) -> None:
        threads, rounds = 6, 8

        def data_of(name: bytes) -> bytes:
            return name * (1 + name[-1] % 3)

        def writer(t: int) -> None:
            for r in range(rounds):
                batch = WriteBatch()
                names = [object_name(t * 1000 + r * 10 + j, b"\x07") for j in range(3)]
                names.append(commit_name(t * 1000 + r))
                for name in names:
                    batch.put(name, data_of(name))
                store.write(batch)
                single = object_name(t * 1000 + r, b"\x08")
                store.put(single, data_of(single))
                # what this thread wrote is visible to it at once
                assert store.get_many([*names, single]) == [data_of(n) for n in [*names, single]]

        run_threads(threads, writer)
        commits = sorted(commit_name(t * 1000 + r) for t in range(threads) for r in range(rounds))
        objects = sorted(
            [
                object_name(t * 1000 + r * 10 + j, b"\x07")
                for t in range(threads)
                for r in range(rounds)
                for j in range(3)
            ]
            + [object_name(t * 1000 + r, b"\x08") for t in range(threads) for r in range(rounds)]
        )
        assert list(store.names("commit")) == commits
        assert list(store.names("object")) == objects
        assert store.get_many(commits + objects) == [data_of(n) for n in commits + objects]


class RefsConformance:
    """Rules every :class:`RefsContainer` must pass. Subclass as ``Test<Name>Refs``."""

    # -- hooks -----------------------------------------------------------

    def make_refs(self, tmp_path: Path) -> RefsContainer:
        """A new, empty container (``tmp_path`` is the test's own folder)."""
        raise NotImplementedError

    def close_refs(self, refs: RefsContainer) -> None:
        """Release what :meth:`make_refs` opened."""

    @pytest.fixture
    def refs(self, tmp_path: Path) -> Iterator[RefsContainer]:
        refs = self.make_refs(tmp_path)
        try:
            yield refs
        finally:
            self.close_refs(refs)

    # -- reading and compare-and-swap -------------------------------------

    def test_get_of_an_absent_ref_is_none(self, refs: RefsContainer) -> None:
        assert refs.get("heads/main") is None
        assert refs.listing() == {}
        refs.set_if_equals("heads/main", None, cid(1))
        assert refs.get("heads/mai") is None and refs.get("heads/main/x") is None
        assert refs.get("tags/main") is None

    def test_set_if_equals_creates_moves_and_deletes(self, refs: RefsContainer) -> None:
        assert refs.set_if_equals("heads/main", None, cid(1)) is True
        assert refs.get("heads/main") == cid(1)
        assert refs.set_if_equals("heads/main", cid(1), cid(2)) is True
        assert refs.get("heads/main") == cid(2)
        assert refs.set_if_equals("heads/main", cid(2), cid(2)) is True  # to itself
        assert refs.get("heads/main") == cid(2)
        assert refs.set_if_equals("heads/main", cid(2), None) is True
        assert refs.get("heads/main") is None
        assert refs.listing() == {}
        assert refs.set_if_equals("heads/main", None, cid(3)) is True  # made again
        assert refs.get("heads/main") == cid(3)

    def test_values_are_full_lowercase_commit_ids(self, refs: RefsContainer) -> None:
        value = "0123456789abcdef0123456789abcdef01234567"
        refs.set_if_equals("heads/main", None, value)
        got = refs.get("heads/main")
        assert got == value and isinstance(got, str)
        assert refs.listing("heads/") == {"main": value}

    def test_set_if_equals_refuses_a_stale_old_value(self, refs: RefsContainer) -> None:
        assert refs.set_if_equals("heads/main", cid(1), cid(2)) is False  # absent, given a value
        assert refs.get("heads/main") is None
        assert refs.set_if_equals("heads/main", cid(1), None) is False
        assert refs.get("heads/main") is None
        refs.set_if_equals("heads/main", None, cid(5))
        assert refs.set_if_equals("heads/main", None, cid(6)) is False  # present, given None
        assert refs.set_if_equals("heads/main", cid(4), cid(6)) is False  # another value
        assert refs.set_if_equals("heads/main", cid(4), None) is False
        assert refs.get("heads/main") == cid(5)
        assert refs.listing() == {"heads/main": cid(5)}

    @pytest.mark.parametrize("value", NOT_COMMIT_IDS)
    def test_set_if_equals_refuses_a_value_that_is_not_a_commit_id(
        self, refs: RefsContainer, value: str
    ) -> None:
        refs.set_if_equals("heads/main", None, cid(1))
        with pytest.raises(ValueError):
            refs.set_if_equals("heads/main", cid(1), value)
        with pytest.raises(ValueError):
            refs.set_if_equals("heads/new", None, value)
        assert refs.get("heads/main") == cid(1)
        assert refs.get("heads/new") is None
        assert refs.listing() == {"heads/main": cid(1)}

    def test_an_uppercase_commit_id_is_refused_or_stored_in_lowercase(
        self, refs: RefsContainer
    ) -> None:
        value = "ABCDEF0123456789ABCDEF0123456789ABCDEF01"
        try:
            refs.set_if_equals("heads/main", None, value)
        except ValueError:
            assert refs.get("heads/main") is None
            return
        assert refs.get("heads/main") == value.lower()
        assert refs.listing() == {"heads/main": value.lower()}

    def test_set_if_equals_on_an_absent_ref_from_none_to_none(self, refs: RefsContainer) -> None:
        assert refs.set_if_equals("heads/main", None, None) is True
        assert refs.get("heads/main") is None and refs.listing() == {}

    def test_refs_are_independent(self, refs: RefsContainer) -> None:
        refs.set_if_equals("heads/a", None, cid(1))
        refs.set_if_equals("tags/a", None, cid(2))
        refs.set_if_equals("heads/a", cid(1), cid(3))
        assert refs.get("tags/a") == cid(2)
        refs.set_if_equals("tags/a", cid(2), None)
        assert refs.get("heads/a") == cid(3)

    def test_delete_returns_whether_the_ref_existed(self, refs: RefsContainer) -> None:
        assert refs.delete("heads/main") is False
        refs.set_if_equals("heads/main", None, cid(1))
        refs.set_if_equals("heads/other", None, cid(2))
        assert refs.delete("heads/main") is True
        assert refs.get("heads/main") is None
        assert refs.delete("heads/main") is False
        assert refs.listing() == {"heads/other": cid(2)}

    # -- listing ---------------------------------------------------------

    def test_listing_strips_the_prefix_and_lists_only_under_it(self, refs: RefsContainer) -> None:
        made = {
            "heads/main": cid(1),
            "heads/feature/x": cid(2),
            "heads/feature/y/z": cid(3),
            "heads/featurex": cid(4),
            "tags/v1": cid(5),
            "tags/heads/odd": cid(6),
        }
        for name, value in made.items():
            assert refs.set_if_equals(name, None, value)
        assert refs.listing() == made
        assert refs.listing("") == made
        assert refs.listing(HEADS) == {
            "main": cid(1),
            "feature/x": cid(2),
            "feature/y/z": cid(3),
            "featurex": cid(4),
        }
        assert refs.listing(TAGS) == {"v1": cid(5), "heads/odd": cid(6)}
        assert refs.listing("heads/feature/") == {"x": cid(2), "y/z": cid(3)}
        assert refs.listing("heads/feature") == {"/x": cid(2), "/y/z": cid(3), "x": cid(4)}
        assert refs.listing("heads/main") == {"": cid(1)}
        assert refs.listing("heads/nothing/") == {}
        assert refs.listing("remotes/") == {}
        assert refs.listing("\U0010ffff") == {}

    def test_names_with_slashes_and_unicode(self, refs: RefsContainer) -> None:
        names = ["heads/feature/ümlaut/ß", "heads/日本/語", "tags/emoji-\U0001f600", "heads/é"]
        for i, name in enumerate(names):
            assert refs.set_if_equals(name, None, cid(i))
        for i, name in enumerate(names):
            assert refs.get(name) == cid(i)
        assert refs.get("heads/e\u0301") is None  # no normalisation: a different name
        assert refs.listing("heads/feature/") == {"ümlaut/ß": cid(0)}
        assert refs.listing("heads/日本/") == {"語": cid(1)}
        assert refs.listing(TAGS) == {"emoji-\U0001f600": cid(2)}
        assert refs.listing() == {name: cid(i) for i, name in enumerate(names)}
        assert refs.set_if_equals("heads/日本/語", cid(1), cid(9))
        assert refs.delete("heads/é") is True
        assert refs.listing(HEADS) == {"feature/ümlaut/ß": cid(0), "日本/語": cid(9)}

    # -- new names -------------------------------------------------------

    def test_check_new_refuses_a_branch_named_like_a_tag_and_vice_versa(
        self, refs: RefsContainer
    ) -> None:
        refs.set_if_equals("tags/v1", None, cid(1))
        refs.set_if_equals("heads/dev", None, cid(2))
        with pytest.raises(CaskError, match="tag"):
            refs.check_new(HEADS, "v1")
        with pytest.raises(CaskError, match="branch"):
            refs.check_new(TAGS, "dev")
        refs.check_new(TAGS, "v2")
        refs.check_new(HEADS, "dev2")
        refs.check_new(HEADS, "dev")  # the name itself existing is the caller's check
        refs.check_new(TAGS, "v1")

    def test_check_new_refuses_a_name_and_its_folder(self, refs: RefsContainer) -> None:
        refs.set_if_equals("heads/a", None, cid(1))
        refs.set_if_equals("heads/x/y", None, cid(2))
        for name in ("a/b", "a/b/c"):  # a branch is a folder of the new one
            with pytest.raises(CaskError):
                refs.check_new(HEADS, name)
        for name in ("x", "x/y/z"):  # the new one would be a folder of a branch (or inside it)
            with pytest.raises(CaskError):
                refs.check_new(HEADS, name)
        # names that merely share a string prefix, and the other kind, are fine
        for name in ("ab", "a-b", "x/yz", "x/z", "xy"):
            refs.check_new(HEADS, name)
        for name in ("a/b", "x", "a/b/c"):
            refs.check_new(TAGS, name)
        refs.set_if_equals("tags/t/u", None, cid(3))
        with pytest.raises(CaskError):
            refs.check_new(TAGS, "t")
        with pytest.raises(CaskError):
            refs.check_new(TAGS, "t/u/v")
        refs.check_new(HEADS, "t")

    @pytest.mark.parametrize(
        "name",
        [
            "",
            "a..b",
            "-x",
            "a b",
            "x/",
            "/x",
            "a//b",
            "x.lock",
            ".hidden",
            "HEAD",
            "@",
            "a~1",
            "a:b",
            "what?",
            "deadbeef",
            "0" * 40,
            "x" * 256,
        ],
    )
    @pytest.mark.parametrize("prefix", [HEADS, TAGS])
    def test_check_new_refuses_malformed_names(
        self, refs: RefsContainer, prefix: str, name: str
    ) -> None:
        with pytest.raises(ValueError):
            refs.check_new(prefix, name)

    @pytest.mark.parametrize("name", [None, 12, b"main", ["main"]])
    def test_check_new_refuses_names_that_are_not_str(
        self, refs: RefsContainer, name: object
    ) -> None:
        with pytest.raises(TypeError):
            refs.check_new(HEADS, name)  # type: ignore[arg-type]

    # -- races -----------------------------------------------------------

    @pytest.mark.parametrize("start", [None, cid(10**6)], ids=["absent", "present"])
    def test_of_racers_that_saw_the_same_value_exactly_one_wins(
        self, refs: RefsContainer, start: str | None
    ) -> None:
        racers, rounds = 8, 4
        for r in range(rounds):
            name = f"heads/race{r}"
            if start is not None:
                refs.set_if_equals(name, None, start)

            def attempt(i: int, name: str = name) -> bool:
                return refs.set_if_equals(name, start, cid(i + 1))

            won = _race(racers, attempt)
            assert won.count(True) == 1, won
            assert refs.get(name) == cid(won.index(True) + 1)

    def test_retrying_movers_each_apply_every_move_exactly_once(self, refs: RefsContainer) -> None:
        movers, moves = 5, 6
        name = "heads/counter"
        applied: list[list[int]] = [[] for _ in range(movers)]
        barrier = threading.Barrier(movers)

        def mover(i: int) -> None:
            barrier.wait(timeout=30)
            for _ in range(moves):
                while True:
                    old = refs.get(name)
                    new = (0 if old is None else int(old, 16)) + 1
                    if refs.set_if_equals(name, old, cid(new)):
                        applied[i].append(new)
                        break

        run_threads(movers, mover)
        assert refs.get(name) == cid(movers * moves)
        assert all(len(a) == moves for a in applied)
        assert sorted(n for a in applied for n in a) == list(range(1, movers * moves + 1))
