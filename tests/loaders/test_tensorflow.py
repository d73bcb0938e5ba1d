"""The tf.data adapter: element specs, order, shuffle, shard, strings, variable shapes, damage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import tensorcask as tc  # noqa: E402
from tensorcask.loaders.plan import epoch_order  # noqa: E402
from tensorcask.loaders.tensorflow import repo_dataset  # noqa: E402

N = 50
COLUMNS = ["images", "labels", "text", "vol"]
IMAGES = np.random.default_rng(0).integers(0, 256, size=(N, 4, 4), dtype=np.uint8)


def _vol(k: int) -> np.ndarray:
    return np.arange(k % 4 * 3, dtype=np.float32).reshape(k % 4, 3) + k


@pytest.fixture(scope="module")
def repo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tf") / "r"
    repo = tc.init(path, user_name="Ada", user_email="ada@example.org")
    co = repo.checkout(write=True)
    keys = np.arange(N)
    co.add_ndarray_column("images", shape=(4, 4), dtype="uint8").update(keys, IMAGES)
    co.add_ndarray_column("labels", shape=(), dtype="int64").update(keys, keys * 10)
    co.add_str_column("text").update({k: f"t{k}-é" for k in range(N)})
    vol = co.add_ndarray_column("vol", shape=(None, 3), dtype="float32")
    vol.update({k: _vol(k) for k in range(N)})
    co.commit("m")
    co.close()
    return path


def _labels(ds: Any) -> list[int]:
    return [int(s[0].numpy()) for s in ds]


def test_element_spec_is_exact(repo_path: Path) -> None:
    ds = repo_dataset(repo_path, COLUMNS)
    assert ds.element_spec == (
        tf.TensorSpec(shape=(4, 4), dtype=tf.uint8),
        tf.TensorSpec(shape=(), dtype=tf.int64),
        tf.TensorSpec(shape=(), dtype=tf.string),
        tf.TensorSpec(shape=(None, 3), dtype=tf.float32),
    )
    only = repo_dataset(repo_path, ["labels", "images"])
    assert only.element_spec == (
        tf.TensorSpec(shape=(), dtype=tf.int64),
        tf.TensorSpec(shape=(4, 4), dtype=tf.uint8),
    )
    repo = tc.Repository(repo_path)
    assert ds.commit == repo.branches["main"] and len(ds.commit) > 12


def test_a_full_pass_yields_the_written_data_in_key_order(repo_path: Path) -> None:
    ds = repo_dataset(repo_path, COLUMNS, batch_read=7)  # chunks end mid-way
    samples = list(ds)
    assert len(samples) == N
    for k, (image, label, text, vol) in enumerate(samples):
        assert np.array_equal(image.numpy(), IMAGES[k])
        assert image.dtype == tf.uint8 and label.numpy() == k * 10
        assert text.numpy() == f"t{k}-é".encode()
        assert vol.shape == (k % 4, 3) and np.array_equal(vol.numpy(), _vol(k))


def test_shuffle_is_a_seeded_permutation(repo_path: Path) -> None:
    first = _labels(repo_dataset(repo_path, ["labels"], shuffle=True, seed=3, batch_read=8))
    again = _labels(repo_dataset(repo_path, ["labels"], shuffle=True, seed=3))
    other = _labels(repo_dataset(repo_path, ["labels"], shuffle=True, seed=4))
    assert sorted(first) == [k * 10 for k in range(N)]
    assert first == again and first != other and sorted(other) == sorted(first)
    assert first == [int(i) * 10 for i in epoch_order(N, seed=3, epoch=0, shuffle=True)]
    assert first != sorted(first)


@pytest.mark.parametrize("shuffle", [False, True])
def test_shards_split_like_dataset_shard(repo_path: Path, shuffle: bool) -> None:
    whole = repo_dataset(repo_path, ["labels"], shuffle=shuffle, seed=5)
    seen: list[int] = []
    for index in range(3):
        shard = _labels(
            repo_dataset(repo_path, ["labels"], shuffle=shuffle, seed=5, shard=(index, 3))
        )
        assert shard == _labels(whole.shard(3, index))
        seen += shard
    assert sorted(seen) == [k * 10 for k in range(N)]
    with pytest.raises(ValueError):
        repo_dataset(repo_path, ["labels"], shard=(3, 3))
    with pytest.raises(TypeError):
        repo_dataset(repo_path, ["labels"], shard=3)  # type: ignore[arg-type]


def test_a_training_pipeline_runs(repo_path: Path) -> None:
    ds = repo_dataset(repo_path, ["images", "labels"])
    ds = ds.shuffle(100, seed=1).batch(16).prefetch(tf.data.AUTOTUNE)
    batches = list(ds)
    assert [int(b[0].shape[0]) for b in batches] == [16, 16, 16, 2]
    assert batches[0][0].shape == (16, 4, 4)
    labels = np.concatenate([b[1].numpy() for b in batches])
    images = np.concatenate([b[0].numpy() for b in batches])
    assert sorted(labels.tolist()) == [k * 10 for k in range(N)]
    for label, image in zip(labels, images, strict=True):  # pairs stay together
        k = int(label) // 10
        assert np.array_equal(image, IMAGES[k])


def test_keys_restrict_and_order(repo_path: Path) -> None:
    ds = repo_dataset(repo_path, ["labels", "vol", "text"], keys=[7, 2, 41])
    samples = list(ds)
    assert [int(s[0]) for s in samples] == [70, 20, 410]
    assert [s[1].shape for s in samples] == [(3, 3), (2, 3), (1, 3)]
    assert [s[2].numpy() for s in samples] == [b"t7-\xc3\xa9", b"t2-\xc3\xa9", b"t41-\xc3\xa9"]
    with pytest.raises(KeyError):
        repo_dataset(repo_path, ["labels"], keys=[N + 1])


def test_construction_errors(repo_path: Path) -> None:
    with pytest.raises(KeyError, match="nope"):
        repo_dataset(repo_path, ["labels", "nope"])
    with pytest.raises(ValueError):
        repo_dataset(repo_path, ["labels"], batch_read=0)
    with pytest.raises(ValueError):
        repo_dataset(repo_path, ["labels"], shuffle=True, seed=-1)


def test_pinned_commit_and_bytes_column(tmp_path: Path) -> None:
    repo = tc.init(tmp_path / "r", user_name="Ada", user_email="ada@example.org")
    co = repo.checkout(write=True)
    co.add_bytes_column("raw").update({0: b"\x00\xff", 1: b""})
    co.commit("one")
    ds = repo_dataset(repo, ["raw"], commit="main")
    co["raw"][2] = b"new"
    co.commit("two")
    co.close()
    assert ds.element_spec == (tf.TensorSpec(shape=(), dtype=tf.string),)
    assert [s[0].numpy() for s in ds] == [b"\x00\xff", b""]
    assert len(list(repo_dataset(repo, ["raw"]))) == 3


def test_a_corrupted_sample_raises_naming_column_and_key(tmp_path: Path) -> None:
    path = tmp_path / "r"
    repo = tc.init(path, user_name="Ada", user_email="ada@example.org")
    co = repo.checkout(write=True)
    rows = np.arange(12 * 16, dtype=np.uint8).reshape(12, 4, 4)
    co.add_ndarray_column("images", shape=(4, 4), dtype="uint8").update(np.arange(12), rows)
    co.commit("m")
    co.close()
    files = sorted(p for p in (path / "data" / "memmap").rglob("*") if p.is_file())
    assert files
    segment = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(segment.read_bytes())
    at = data.find(rows[9].tobytes())  # the row of key 9
    assert at >= 0
    data[at + 5] ^= 0xFF
    segment.write_bytes(bytes(data))
    ds = repo_dataset(path, ["images"], batch_read=4)
    with pytest.raises(tf.errors.OpError) as info:
        for _ in ds:
            pass
    message = str(info.value)
    assert "CorruptionError" in message and "'images'" in message and "key 9" in message
    assert not isinstance(info.value, tf.errors.OutOfRangeError)


def test_matches_the_torch_map_style_dataset(repo_path: Path) -> None:
    torch_loaders = pytest.importorskip("tensorcask.loaders.torch")
    tf_ds = repo_dataset(repo_path, COLUMNS)
    torch_ds = torch_loaders.repo_dataset(repo_path, COLUMNS, commit=tf_ds.commit)
    assert len(torch_ds) == N
    for i, sample in enumerate(tf_ds):
        expected = torch_ds[i]
        image, label, text, vol = sample
        assert np.array_equal(image.numpy(), expected[0].numpy())
        assert int(label.numpy()) == int(expected[1])
        assert text.numpy() == expected[2].encode("utf-8")
        assert vol.shape == tuple(expected[3].shape)
        assert np.array_equal(vol.numpy(), expected[3].numpy())


def test_other_backends_dtypes_and_variable_dims(tmp_path: Path) -> None:
    repo = tc.init(tmp_path / "r", user_name="Ada", user_email="ada@example.org")
    co = repo.checkout(write=True)
    flags = {k: np.array([k % 2 == 0, k % 3 == 0]) for k in range(9)}
    grids = {k: np.full((k % 3, k % 4 + 1), k, dtype=np.int16) for k in range(9)}
    co.add_ndarray_column("flags", shape=(2,), dtype="bool", backend="lmdb").update(flags)
    co.add_ndarray_column("grid", shape=(None, None), dtype="int16").update(grids)
    co.commit("m")
    co.close()
    ds = repo_dataset(repo, ["flags", "grid"], batch_read=4)
    assert ds.element_spec == (
        tf.TensorSpec(shape=(2,), dtype=tf.bool),
        tf.TensorSpec(shape=(None, None), dtype=tf.int16),
    )
    samples = list(ds)
    assert len(samples) == 9
    for k, (flag, grid) in enumerate(samples):
        assert np.array_equal(flag.numpy(), flags[k])
        assert grid.shape == grids[k].shape and np.array_equal(grid.numpy(), grids[k])
