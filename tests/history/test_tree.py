"""The record tree against a dict model, with tiny pages so trees grow several levels."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorcask.history import tree as tree_module
from tensorcask.history.objectstore import WriteBatch
from tensorcask.history.tree import EMPTY_ROOT, RecordTree

KEYS = st.integers(0, 400).map(lambda i: i.to_bytes(4, "big"))
VALUES = st.binary(min_size=32, max_size=32)
EDITS = st.dictionaries(KEYS, st.none() | VALUES, max_size=120)


class Store:
    """Pages by hash, persisted the way a commit persists them."""

    def __init__(self) -> None:
        self.pages: dict[bytes, bytes] = {}

    def tree(self) -> RecordTree:
        return RecordTree(self.pages.__getitem__).with_batch(WriteBatch())

    def flush(self, tree: RecordTree) -> None:
        assert tree.batch is not None
        self.pages.update(tree.batch.items())
        tree.batch = WriteBatch()


@pytest.fixture(autouse=True)
def tiny_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tree_module, "_MASK", 7)  # pages of ~8 entries


@settings(max_examples=150, deadline=None)
@given(st.lists(EDITS, min_size=1, max_size=6))
def test_updates_match_a_dict_and_do_not_depend_on_history(batches: list[dict]) -> None:
    store = Store()
    model: dict[bytes, bytes] = {}
    root = EMPTY_ROOT
    for batch in batches:
        tree = store.tree()
        root = tree.update(root, sorted(batch.items()))
        store.flush(tree)
        for key, value in batch.items():
            if value is None:
                model.pop(key, None)
            else:
                model[key] = value
        assert list(tree.items(root)) == sorted(model.items())
        assert tree.count(root) == len(model)
        fresh = store.tree()
        assert fresh.build(sorted(model.items())) == root  # same records, same root
        for key in list(model)[:10]:
            assert tree.get(root, key) == model[key]
        assert tree.get_many(root, [b"\xff" * 4]) == [None]


@settings(max_examples=100, deadline=None)
@given(EDITS, EDITS)
def test_diff_reports_exactly_the_differing_records(a_edits: dict, b_edits: dict) -> None:
    store = Store()
    tree = store.tree()
    a = {k: v for k, v in a_edits.items() if v is not None}
    b = dict(a)
    for key, value in b_edits.items():
        if value is None:
            b.pop(key, None)
        else:
            b[key] = value
    root_a, root_b = tree.build(sorted(a.items())), tree.build(sorted(b.items()))
    store.flush(tree)
    only_a, only_b = store.tree().diff(root_a, root_b)
    assert {k for k in only_a if k not in only_b} == set(a) - set(b)
    assert {k for k in only_b if k not in only_a} == set(b) - set(a)
    changed = {k for k in set(only_a) & set(only_b) if only_a[k] != only_b[k]}
    assert changed == {k for k in set(a) & set(b) if a[k] != b[k]}


@pytest.mark.parametrize("n", [1, 2, 9, 80, 700])
def test_deleting_everything_gives_the_empty_tree(n: int) -> None:
    store = Store()
    tree = store.tree()
    items = [(i.to_bytes(4, "big"), bytes(32)) for i in range(n)]
    root = tree.build(items)
    store.flush(tree)
    assert tree.update(root, [(k, None) for k, _ in items]) == EMPTY_ROOT
    assert tree.update(root, [(k, None) for k, _ in items[: n // 2]]) == store.tree().build(
        items[n // 2 :]
    )
