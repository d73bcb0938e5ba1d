"""Columns with different key sets: every loader warns, naming per column what it leaves out.

SPEC §3: by default a dataset's samples are the keys present in every named
column; when the columns hold different key sets the dataset says so (a
``UserWarning`` naming, per column, how many of its samples are left out),
so a training run never sees silently fewer samples. Checked here for the
torch map-style and iterable datasets and the tf.data dataset, for int keys
and str keys (two code paths), pointing at the user's line, and never for
equal key sets or an explicit ``keys=``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tensorcask as tc

IDENTITY = {"user_name": "Ada", "user_email": "ada@example.org"}


@pytest.fixture(scope="module")
def repo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Int keys: images (sample k is [2k, 2k + 1]) and codes 0..9, labels 0..4 and 100.
    Str keys: names a..c (values A..C), tags b..e (values b"b"..b"e")."""
    path = tmp_path_factory.mktemp("keysets") / "r"
    with tc.init(path, **IDENTITY) as repo, repo.checkout(write=True) as co:
        co.add_ndarray_column("images", shape=(2,), dtype="int64").update(
            np.arange(10), np.arange(20).reshape(10, 2)
        )
        co.add_ndarray_column("labels", shape=(), dtype="int64").update(
            [0, 1, 2, 3, 4, 100], np.array([0, 1, 2, 3, 4, 100])
        )
        co.add_ndarray_column("codes", shape=(), dtype="int64").update(np.arange(10), np.arange(10))
        co.add_str_column("names").update({"a": "A", "b": "B", "c": "C"})
        co.add_bytes_column("tags").update({k: k.encode() for k in "bcde"})
        co.commit("columns with different key sets")
    return path


def _torch_map(path: Path, columns: list[str], **kw: Any) -> list[Any]:
    from tensorcask.loaders.torch import repo_dataset

    ds = repo_dataset(path, columns, **kw)
    return [_first(ds[i]) for i in range(len(ds))]


def _torch_iterable(path: Path, columns: list[str], **kw: Any) -> list[Any]:
    from tensorcask.loaders.torch import repo_iterable_dataset

    return [_first(s) for s in repo_iterable_dataset(path, columns, **kw)]


def _tf(path: Path, columns: list[str], **kw: Any) -> list[Any]:
    from tensorcask.loaders.tensorflow import repo_dataset

    return [_first(tuple(t.numpy() for t in s)) for s in repo_dataset(path, columns, **kw)]


def _first(sample: tuple[Any, ...]) -> Any:
    """A sample as the first number of its first column (str and bytes as they are)."""
    value = sample[0]
    return value if isinstance(value, str | bytes) else int(np.asarray(value).reshape(-1)[0])


def _utf8(value: Any) -> Any:
    """str samples as tf.data yields them (UTF-8 bytes); the torch datasets yield str."""
    return value.encode() if isinstance(value, str) else value


def _torch() -> None:
    pytest.importorskip("torch")


def _tensorflow() -> None:
    pytest.importorskip("tensorflow")


LOADERS: dict[str, tuple[Callable[[], None], Callable[..., list[Any]]]] = {
    "torch-map": (_torch, _torch_map),
    "torch-iterable": (_torch, _torch_iterable),
    "tf.data": (_tensorflow, _tf),
}


@pytest.fixture(params=sorted(LOADERS))
def load(request: pytest.FixtureRequest) -> Callable[..., list[Any]]:
    require, loader = LOADERS[request.param]
    require()
    return loader


# (columns, samples as the loader yields their first column, what the warning names)
CASES = [
    (["images", "labels"], [0, 2, 4, 6, 8], "5 of column 'images', 1 of column 'labels'"),
    (["labels", "images"], [0, 1, 2, 3, 4], "1 of column 'labels', 5 of column 'images'"),
    (["labels", "codes"], [0, 1, 2, 3, 4], "1 of column 'labels', 5 of column 'codes'"),
    (["names", "tags"], ["B", "C"], "1 of column 'names', 2 of column 'tags'"),
    (["tags", "names"], [b"b", b"c"], "2 of column 'tags', 1 of column 'names'"),
    (["images", "names"], [], "10 of column 'images', 3 of column 'names'"),
]


@pytest.mark.parametrize(("columns", "expected", "named"), CASES)
def test_different_key_sets_warn_naming_each_column(
    load: Callable[..., list[Any]],
    repo_path: Path,
    columns: list[str],
    expected: list[Any],
    named: str,
) -> None:
    message = (
        rf"the dataset has the {len(expected)} keys present in every column, "
        rf"leaving out {re.escape(named)}; pass keys= to choose them"
    )
    with pytest.warns(UserWarning, match=message) as caught:
        got = load(repo_path, columns)
    assert [w.filename for w in caught if "different keys" in str(w.message)] == [__file__]
    # exactly the samples of the keys every column holds, in key order
    assert [_utf8(g) for g in got] == [_utf8(e) for e in expected]


def test_equal_key_sets_or_keys_given_do_not_warn(
    load: Callable[..., list[Any]], repo_path: Path
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load(repo_path, ["images", "codes"]) == [2 * k for k in range(10)]
        assert load(repo_path, ["images"]) == [2 * k for k in range(10)]
        assert load(repo_path, ["labels", "images"], keys=[4, 0]) == [4, 0]
        assert [_utf8(g) for g in load(repo_path, ["names", "tags"], keys=["c"])] == [b"C"]
