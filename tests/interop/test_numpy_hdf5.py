"""Imports of numpy (``.npy``, ``.npz``) and HDF5 files written by numpy and h5py.

Round trips through the public API, idempotent re-imports, bounded memory on a
multi-GB (sparse) HDF5 file, all-or-nothing on failure (also when the process
is killed mid-import), and clear errors for damaged or unsupported input.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import tensorcask as tc
from tensorcask.interop import ImportResult, arrays, import_source
from tensorcask.interop.source import Batch, ColumnSpec, Source

REPO_ROOT = Path(__file__).resolve().parents[2]


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def _nothing_happened(repo: tc.Repository) -> None:
    """No commit was made and nothing is left staged."""
    assert repo.branches == {}
    assert repo.staged_branch is None


# -- numpy ----------------------------------------------------------------------------


def test_npy_imports_one_column_keyed_0_to_n(repo: tc.Repository, tmp_path: Path) -> None:
    images = _images(40)
    path = tmp_path / "x.npy"
    np.save(path, images)

    res = import_source(repo, path, column="images")

    assert isinstance(res, ImportResult)
    assert res.committed and res.commit == repo.branches["main"]
    assert (res.source, res.columns, res.samples) == (str(path), {"images": 40}, 40)
    assert res.nbytes == images.nbytes
    assert repo.log()[0].message == f"import {path}"
    with repo.checkout() as co:
        col = co["images"]
        assert (col.kind, col.dtype, col.shape) == ("ndarray", np.dtype("uint8"), (28, 28))
        assert col.keys() == list(range(40))
        np.testing.assert_array_equal(col.get_many(list(range(40))), images)


def test_npy_column_defaults_to_the_stem_and_keeps_values_of_any_byte_order(
    repo: tc.Repository, tmp_path: Path
) -> None:
    values = np.arange(12, dtype=">f4").reshape(6, 2)
    np.save(tmp_path / "weights.npy", values)

    import_source(repo, tmp_path / "weights.npy", message="weights")

    assert repo.log()[0].message == "weights"
    with repo.checkout() as co:
        assert co["weights"].dtype == np.dtype("<f4")
        np.testing.assert_array_equal(co["weights"].get_many(list(range(6))), values)


def test_npz_gives_a_column_per_array_keyed_by_a_key_array(
    repo: tc.Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(arrays, "BATCH_BYTES", 4096)  # many blocks per member
    images = _images(50)
    labels = np.arange(50, dtype=np.int64) % 10
    ids = np.array([f"img-{i:03d}" for i in range(50)])
    captions = np.array([f"caption {i}" for i in range(50)])
    blobs = np.array([bytes([i, 0, i]) for i in range(50)], dtype="S3")
    np.savez_compressed(
        tmp_path / "set.npz", images=images, labels=labels, ids=ids, captions=captions, blobs=blobs
    )
    calls: list[tuple[str, int, int | None]] = []

    res = import_source(repo, tmp_path / "set.npz", keys="ids", progress=lambda *a: calls.append(a))

    assert res.columns == {"blobs": 50, "captions": 50, "images": 50, "labels": 50}
    keys = sorted(ids.tolist())
    with repo.checkout() as co:
        assert sorted(co.columns) == ["blobs", "captions", "images", "labels"]
        assert co["captions"].kind == "str" and co["blobs"].kind == "bytes"
        assert co["images"].keys() == keys
        np.testing.assert_array_equal(co["images"].get_many(list(ids)), images)
        np.testing.assert_array_equal(co["labels"].get_many(list(ids)), labels)
        assert co["captions"]["img-007"] == "caption 7"
        assert co["blobs"]["img-009"] == bytes([9, 0, 9])
    samples = [c for c in calls if c[0] == "import samples"]
    assert len(samples) > 4 and samples[-1] == ("import samples", 200, 200)
    assert ("commit", 0, None) in calls


def test_reimport_adds_nothing_and_a_changed_file_commits_the_change(
    repo: tc.Repository, tmp_path: Path
) -> None:
    images = _images(30)
    np.savez(tmp_path / "d.npz", images=images, labels=np.arange(30))
    first = import_source(repo, tmp_path / "d.npz")

    again = import_source(repo, tmp_path / "d.npz")

    assert not again.committed and again.commit == first.commit
    assert again.columns == first.columns
    assert len(repo.log()) == 1 and repo.staged_branch is None

    images[3] += 1
    np.savez(tmp_path / "d.npz", images=images, labels=np.arange(30))
    with pytest.raises(tc.CaskError, match=r"would change samples .* \(1 of column 'images'\)"):
        import_source(repo, tmp_path / "d.npz")
    assert len(repo.log()) == 1 and repo.staged_branch is None
    changed = import_source(repo, tmp_path / "d.npz", overwrite=True)
    assert changed.committed and (changed.added, changed.changed) == (0, 1)
    diff = repo.diff(first.commit, changed.commit)
    assert set(diff.columns) == {"images"} and diff.columns["images"].changed == {3}


def test_import_into_another_branch_and_an_existing_column(
    repo: tc.Repository, tmp_path: Path
) -> None:
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("images", shape=(28, 28), dtype="uint8").update([0], _images(1))
        co.commit("first")
    repo.create_branch("more")
    np.save(tmp_path / "images.npy", _images(5, seed=1))

    res = import_source(repo, tmp_path / "images.npy", branch="more", overwrite=True)

    assert res.commit == repo.branches["more"] != repo.branches["main"]
    assert (res.added, res.changed) == (4, 1)
    assert repo.current_branch == "main"  # the import did not switch branches
    with repo.checkout(branch="more") as co:
        assert len(co["images"]) == 5  # key 0 replaced, 1..4 added


def test_a_file_url_imports_as_a_local_path(repo: tc.Repository, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.arange(4, dtype=np.int32))
    res = import_source(repo, (tmp_path / "x.npy").as_uri())
    assert res.committed and res.columns == {"x": 4}


def test_existing_column_with_another_schema_is_refused(
    repo: tc.Repository, tmp_path: Path
) -> None:
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("images", shape=(28, 28), dtype="uint8").update([0], _images(1))
        head = co.commit("first")
    np.save(tmp_path / "images.npy", np.zeros((3, 28, 28), dtype=np.float32))

    with pytest.raises(tc.SchemaError) as info:
        import_source(repo, tmp_path / "images.npy")

    message = str(info.value)
    assert "'images'" in message and "uint8 (28, 28)" in message and "float32" in message
    assert repo.branches["main"] == head and repo.staged_branch is None


def test_staged_work_of_someone_else_is_not_mixed_in(repo: tc.Repository, tmp_path: Path) -> None:
    with repo.checkout(write=True) as co:
        co.add_str_column("notes")["a"] = "mine"
    np.save(tmp_path / "x.npy", np.arange(4))

    with pytest.raises(tc.CaskError, match=r"staged changes .*reset_staging_area"):
        import_source(repo, tmp_path / "x.npy")

    with repo.checkout(write=True) as co:
        assert co["notes"]["a"] == "mine"  # untouched
        assert "x" not in co.columns


# -- HDF5 -----------------------------------------------------------------------------


def _h5_file(path: Path) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    data = {
        "train.images": rng.integers(0, 256, (45, 28, 28), dtype=np.uint8),
        "train.labels": rng.integers(0, 10, 45).astype(np.int16),
        "meta.names": [f"näme {i}" for i in range(45)],
        "meta.tags": [b"tag-%d" % i for i in range(45)],
        "ragged": [rng.random(i % 4 + 1).astype(np.float32) for i in range(45)],
    }
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "train/images",
            data=data["train.images"],
            chunks=(7, 28, 28),
            compression="gzip",
            compression_opts=4,
        )
        f.create_dataset("train/labels", data=data["train.labels"], chunks=(16,), shuffle=True)
        names = f.create_dataset("meta/names", (45,), dtype=h5py.string_dtype("utf-8"))
        names[:] = data["meta.names"]
        tags = f.create_dataset("meta/tags", (45,), dtype=h5py.string_dtype("ascii"))
        tags[:] = data["meta.tags"]
        ragged = f.create_dataset("ragged", (45,), dtype=h5py.vlen_dtype(np.float32))
        for i, row in enumerate(data["ragged"]):
            ragged[i] = row
    return data


def test_hdf5_imports_every_dataset_compressed_chunked_strings_and_ragged(
    repo: tc.Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(arrays, "BATCH_BYTES", 8 * 28 * 28)  # blocks of one chunk
    data = _h5_file(tmp_path / "set.h5")

    res = import_source(repo, tmp_path / "set.h5")

    assert res.columns == dict.fromkeys(sorted(data), 45)
    keys = list(range(45))
    with repo.checkout() as co:
        np.testing.assert_array_equal(co["train.images"].get_many(keys), data["train.images"])
        assert co["train.labels"].dtype == np.dtype("int16")
        np.testing.assert_array_equal(co["train.labels"].get_many(keys), data["train.labels"])
        assert co["meta.names"].get_many(keys) == data["meta.names"]
        assert co["meta.tags"].kind == "bytes"
        assert co["meta.tags"].get_many(keys) == data["meta.tags"]
        assert co["ragged"].shape == (None,)
        for got, want in zip(co["ragged"].get_many(keys), data["ragged"], strict=True):
            np.testing.assert_array_equal(got, want)
    assert not import_source(repo, tmp_path / "set.h5").committed


def test_hdf5_one_dataset_renamed_with_a_key_dataset(repo: tc.Repository, tmp_path: Path) -> None:
    with h5py.File(tmp_path / "f.hdf5", "w") as f:
        f["group/x"] = np.arange(10.0)
        f["group/other"] = np.arange(3)
        f["ids"] = np.arange(100, 110, dtype=np.uint32)

    res = import_source(repo, tmp_path / "f.hdf5", dataset="/group/x", keys="/ids", column="x")

    assert res.columns == {"x": 10}
    assert repo.log()[0].message == f"import {tmp_path / 'f.hdf5'}:/group/x"
    with repo.checkout() as co:
        assert list(co.columns) == ["x"]
        assert co["x"].keys() == list(range(100, 110))
        assert co["x"][104] == 4.0


PEAK_RSS = """
def peak_rss():
    # VmHWM belongs to this program's memory map; ru_maxrss would carry the forking
    # parent's peak across exec
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_multi_gb_hdf5_imports_in_bounded_memory(tmp_path: Path) -> None:
    """A 2 GiB dataset (sparse on disk: unwritten chunks read as the fill value)."""
    n, side = 2048, 512
    with h5py.File(tmp_path / "big.h5", "w") as f:
        ds = f.create_dataset("volumes", (n, side, side), "float32", chunks=(4, side, side))
        ds[0], ds[n // 2], ds[n - 1] = 1.0, 2.0, 3.0
    assert (tmp_path / "big.h5").stat().st_size < 16 << 20
    script = PEAK_RSS + textwrap.dedent(
        f"""
        import tensorcask as tc
        from tensorcask.interop import import_source

        repo = tc.init("repo", user_name="Ada", user_email="ada@example.org")
        base = peak_rss()
        res = import_source(repo, "big.h5")
        peak = peak_rss()
        with repo.checkout() as co:
            assert float(co["volumes"][{n // 2}][0, 0]) == 2.0
            assert float(co["volumes"][1].max()) == 0.0
        print(res.samples, res.nbytes, peak - base)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    samples, nbytes, growth = map(int, done.stdout.split())
    assert (samples, nbytes) == (n, n * side * side * 4)
    assert growth < nbytes / 8, f"peak RSS grew by {growth / 2**20:.0f} MiB"


# -- failures: nothing committed, nothing staged ----------------------------------------


def _truncated_npy(tmp_path: Path) -> Path:
    path = tmp_path / "cut.npy"
    np.save(path, _images(20))
    path.write_bytes(path.read_bytes()[:-100])
    return path


def _object_npy(tmp_path: Path) -> Path:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return path


def _text(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_text("not what the suffix says")
    return path


def _npz(tmp_path: Path, **arrays: Any) -> Path:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


CASES: dict[str, tuple[Any, dict[str, Any], type[BaseException], str]] = {
    "truncated npy": (_truncated_npy, {}, ValueError, "cut.npy is truncated"),
    "object dtype": (_object_npy, {}, ValueError, "dtype object"),
    "not hdf5": (lambda p: _text(p, "f.h5"), {}, ValueError, "not a readable HDF5 file"),
    "not npz": (lambda p: _text(p, "f.npz"), {}, ValueError, "not a valid .npz"),
    "not npy": (lambda p: _text(p, "f.npy"), {}, ValueError, "not a readable .npy"),
    "unknown suffix": (lambda p: _text(p, "f.csv"), {}, ValueError, "suffix '.csv'"),
    "missing file": (lambda p: p / "nope.npz", {}, FileNotFoundError, "nope.npz"),
    "missing dataset": (
        lambda p: _npz(p, a=np.arange(3)),
        {"dataset": "b"},
        KeyError,
        "no array 'b'",
    ),
    "short key array": (
        lambda p: _npz(p, a=np.arange(3), k=np.arange(2)),
        {"keys": "k"},
        ValueError,
        "holds 2 keys but array 'a'",
    ),
    "duplicate keys": (
        lambda p: _npz(p, a=np.arange(3), k=np.array(["x", "y", "x"])),
        {"keys": "k"},
        ValueError,
        "key 'x' more than once",
    ),
    "float keys": (
        lambda p: _npz(p, a=np.arange(3), k=np.arange(3.0)),
        {"keys": "k"},
        TypeError,
        "keys must be ints >= 0 or strings",
    ),
    "column for many arrays": (
        lambda p: _npz(p, a=np.arange(3), b=np.arange(3)),
        {"column": "c"},
        ValueError,
        "holds 2 (a, b)",
    ),
    "raw for a file": (lambda p: _npz(p, a=np.arange(3)), {"raw": True}, ValueError, "--raw"),
    "scalar dataset": (
        lambda p: _scalar_h5(p),
        {},
        ValueError,
        "dataset '/answer' of",
    ),
}


def _scalar_h5(tmp_path: Path) -> Path:
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["answer"] = 42
        f["data"] = np.arange(5)
    return tmp_path / "s.h5"


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_raises_a_clear_error_and_commits_nothing(
    case: str, repo: tc.Repository, tmp_path: Path
) -> None:
    make, options, error, text = CASES[case]
    path = make(tmp_path)

    with pytest.raises(error) as info:
        import_source(repo, path, **options)

    assert text in (str(info.value.args[0]) if info.value.args else str(info.value))
    _nothing_happened(repo)


def test_a_damaged_hdf5_chunk_names_the_dataset_and_stages_nothing(
    repo: tc.Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(arrays, "BATCH_BYTES", 64 * 8)  # one chunk a block
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["a"] = np.arange(100)
        f.create_dataset("b", data=np.arange(640.0), chunks=(64,), compression="gzip")
        info = f["b"].id.get_chunk_info(3)
    with open(path, "r+b") as fp:  # garbage in the middle of chunk 3's deflate stream
        fp.seek(info.byte_offset + info.size // 2)
        fp.write(b"\xde\xad\xbe\xef" * 4)

    with pytest.raises(ValueError, match=r"dataset '/b' of .*d\.h5 could not be read at samples"):
        import_source(repo, path)

    _nothing_happened(repo)  # column 'a' was staged, then dropped


class _FailsMidway(Source):
    """Two columns; the second fails after its first batch."""

    description = "a source that fails"

    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def columns(self) -> list[ColumnSpec]:
        return [
            ColumnSpec("a", "ndarray", (2,), np.dtype("int32")),
            ColumnSpec("b", "str"),
        ]

    def batches(self) -> Any:
        yield Batch("a", np.arange(4), np.arange(8, dtype=np.int32).reshape(4, 2), 32)
        yield Batch("b", [0, 1], ["x", "y"], 2)
        if self.fail:
            raise OSError("the disk went away")
        yield Batch("b", [2], ["z"], 1)


def test_a_failure_midway_leaves_nothing_staged_and_a_rerun_succeeds(
    repo: tc.Repository,
) -> None:
    with pytest.raises(OSError, match="disk went away"):
        import_source(repo, _FailsMidway(fail=True))
    _nothing_happened(repo)

    res = import_source(repo, _FailsMidway(fail=False))

    assert res.columns == {"a": 4, "b": 3} and res.source == "a source that fails"
    with repo.checkout() as co:
        assert co["b"].get_many([0, 1, 2]) == ["x", "y", "z"]


KILLED_SCRIPT = """
import os, signal, sys
import tensorcask as tc
from tensorcask.interop import arrays, import_source

arrays.BATCH_BYTES = 28 * 28 * 10  # ten images a batch
batches = 0

def progress(phase, done, total):
    global batches
    if phase == "import samples":
        batches += 1
        if batches == 3:
            os.kill(os.getpid(), signal.SIGKILL)

import_source(tc.Repository(sys.argv[1]), sys.argv[2], progress=progress)
"""


def test_an_import_killed_midway_reruns_to_exactly_the_data_once(
    repo: tc.Repository, tmp_path: Path
) -> None:
    images = _images(60)
    np.savez(tmp_path / "d.npz", images=images, labels=np.arange(60))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_SCRIPT, str(repo.path), str(tmp_path / "d.npz")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert repo.branches == {} and repo.staged_branch == "main"  # its leftovers

    with pytest.warns(RuntimeWarning, match="taken over"):  # the dead writer's lock
        res = import_source(repo, tmp_path / "d.npz")

    assert res.committed and len(repo.log()) == 1 and repo.staged_branch is None
    with repo.checkout() as co:
        assert len(co["images"]) == 60 and len(co["labels"]) == 60
        np.testing.assert_array_equal(co["images"].get_many(list(range(60))), images)


def test_an_import_stages_only_what_the_branch_does_not_hold(
    repo: tc.Repository, tmp_path: Path
) -> None:
    images = _images(10)
    np.save(tmp_path / "first.npy", images[:6])
    import_source(repo, tmp_path / "first.npy", column="images")
    np.save(tmp_path / "all.npy", images)  # keys 0..5 unchanged, 6..9 new
    res = import_source(repo, tmp_path / "all.npy", column="images")
    assert res.committed and (res.added, res.changed) == (4, 0)
    diff = repo.diff(repo.log()[1].id, res.commit)
    assert diff.columns["images"].added == {6, 7, 8, 9} and not diff.columns["images"].changed
    again = import_source(repo, tmp_path / "all.npy", column="images")
    assert not again.committed and (again.added, again.changed) == (0, 0)
    assert repo.staged_branch is None and len(repo.log()) == 2
