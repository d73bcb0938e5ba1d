"""Damaged files on disk, and malformed input (SPEC §2, "Rules").

Stored bytes are damaged the way a disk or a careless ``rm`` damages them (a
flipped byte, a truncated or missing file) and every read path must notice:
a :class:`~tensorcask.CorruptionError` naming the column, the key and the
file, never silently wrong data nor a numpy / OS error of another type. Other
samples keep reading fine, and ``verify(full=True)`` reports exactly the
damaged samples.

Malformed input must write nothing at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tensorcask as tc

REPO_ROOT = Path(__file__).resolve().parents[1]
N = 12  # samples per column


def fixed_value(k: int) -> np.ndarray:
    """A (4, 4) int64 sample whose bytes occur nowhere else in the repository."""
    return (np.arange(16, dtype=np.int64) * 1_000_003 + k * 7_777_777 + 123_456_789).reshape(4, 4)


def var_value(k: int) -> np.ndarray:
    """A variable-length float64 sample (3 + k elements), unique bytes."""
    return np.arange(3 + k, dtype=np.float64) * 0.5 + k * 1000.25 + 0.123456789


def text_value(k: int) -> str:
    """A str sample carrying a marker that occurs nowhere else."""
    return f"MARKER-{k:03d}-\u00e9t\u00e9-payload-{'xyz' * k}"


FIXED_KEYS = list(range(N))
VAR_KEYS = [f"v{k:02d}" for k in range(N)]
TEXT_KEYS = [f"t{k:02d}" for k in range(N)]


@dataclass
class Built:
    path: Path
    commit: str

    def expected(self, column: str) -> dict[Any, Any]:
        if column == "fixed":
            return {k: fixed_value(k) for k in FIXED_KEYS}
        if column == "var":
            return {key: var_value(k) for k, key in enumerate(VAR_KEYS)}
        return {key: text_value(k) for k, key in enumerate(TEXT_KEYS)}


def _build(path: Path) -> Built:
    repo = tc.init(path, user_name="Ada", user_email="ada@example.org")
    try:
        with repo.checkout(write=True) as co:
            fixed = co.add_ndarray_column("fixed", shape=(4, 4), dtype="int64")
            var = co.add_ndarray_column("var", shape=(None,), dtype="float64")
            text = co.add_str_column("text")
            fixed.update(FIXED_KEYS, np.stack([fixed_value(k) for k in FIXED_KEYS]))
            var.update({key: var_value(k) for k, key in enumerate(VAR_KEYS)})
            for k, key in enumerate(TEXT_KEYS):
                text[key] = text_value(k)
            commit = co.commit("three backends")
    finally:
        repo.close()
    return Built(path, commit)


@pytest.fixture
def built(tmp_path: Path) -> Built:
    return _build(tmp_path / "repo")


Opener = Callable[[], tc.Repository]


@pytest.fixture
def opened(built: Built) -> Iterator[Opener]:
    """Opens the built repository afresh (after the test damaged it); closed at teardown."""
    repos: list[tc.Repository] = []

    def open_() -> tc.Repository:
        repos.append(tc.Repository(built.path))
        return repos[-1]

    yield open_
    for repo in repos:
        repo.close()


def _files(directory: Path, suffix: str) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(suffix))


def _flip_inside(path: Path, needle: bytes, *, unique: bool) -> int:
    """Flip one byte in the middle of every occurrence of ``needle`` in ``path``.

    Returns the number of occurrences. ``unique`` asserts there is exactly one
    (LMDB may keep stale copies of a page; all of them are damaged then).
    """
    data = bytearray(path.read_bytes())
    found = []
    start = data.find(needle)
    while start >= 0:
        found.append(start)
        start = data.find(needle, start + 1)
    assert found, f"{needle[:40]!r} not found in {path}"
    if unique:
        assert len(found) == 1, f"{needle[:40]!r} occurs {len(found)} times in {path}"
    for at in found:
        data[at + len(needle) // 2] ^= 0x5A
    with open(path, "r+b") as f:
        f.write(bytes(data))
        f.flush()
        os.fsync(f.fileno())
    return len(found)


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
    return type(a) is type(b) and a == b


def _assert_names(err: BaseException, column: str, key: Any, path: Path | None) -> None:
    """The error names column, key (attributes and message) and file (attribute and message)."""
    assert isinstance(err, tc.CorruptionError), f"{type(err).__name__}: {err}"
    message = str(err)
    assert err.column == column, f".column is {err.column!r}: {message}"
    assert err.key == key and type(err.key) is type(key), f".key is {err.key!r}: {message}"
    assert repr(column) in message or column in message, message
    assert repr(key) in message, message
    if path is not None:
        assert err.path is not None, f".path is None: {message}"
        assert os.path.realpath(err.path) == os.path.realpath(path), f".path is {err.path!r}"
        assert str(path) in message or os.path.realpath(path) in message, message


# (column, damaged key, backend folder, file suffix)
CASES = [
    pytest.param("fixed", 5, "memmap", ".seg", id="memmap-fixed-shape"),
    pytest.param("var", "v07", "hdf5", ".h5", id="hdf5-variable-shape"),
    pytest.param("text", "t03", "lmdb", "data.mdb", id="lmdb-str"),
]


def _damage(built: Built, column: str, key: Any, folder: str, suffix: str) -> Path:
    value = built.expected(column)[key]
    needle = value.encode("utf-8") if isinstance(value, str) else value.tobytes()
    files = _files(built.path / "data" / folder, suffix)
    assert files, f"no {suffix} file under data/{folder}"
    holders = [p for p in files if needle in p.read_bytes()]
    assert len(holders) == 1, f"sample bytes found in {holders}"
    _flip_inside(holders[0], needle, unique=folder != "lmdb")
    return holders[0]


@pytest.mark.parametrize(("column", "bad", "folder", "suffix"), CASES)
def test_flipped_byte_is_detected_and_named(
    built: Built, opened: Opener, column: str, bad: Any, folder: str, suffix: str
) -> None:
    damaged = _damage(built, column, bad, folder, suffix)
    repo = opened()

    with repo.checkout(commit=built.commit) as rc:
        col = rc[column]
        with pytest.raises(tc.CorruptionError) as caught:
            col[bad]
        _assert_names(caught.value, column, bad, damaged)

        # every other sample of every column still reads, bit-exact
        for name in ("fixed", "var", "text"):
            for key, want in built.expected(name).items():
                if (name, key) != (column, bad):
                    assert _same(rc[name][key], want), f"{name}[{key!r}] changed"

        # a batched read that includes the damaged key names it
        keys = list(built.expected(column))
        with pytest.raises(tc.CorruptionError) as caught:
            col.get_many(keys)
        _assert_names(caught.value, column, bad, damaged)
        with pytest.raises(tc.CorruptionError) as caught:
            col.get_many([bad])
        _assert_names(caught.value, column, bad, damaged)
        others = [k for k in keys if k != bad]
        got = col.get_many(others)
        want = [built.expected(column)[k] for k in others]
        if column == "fixed":
            assert _same(got, np.stack(want))
        else:
            assert len(got) == len(want)
            assert all(_same(a, b) for a, b in zip(got, want, strict=True))
        # get() must not turn corruption into a default
        with pytest.raises(tc.CorruptionError):
            col.get(bad)

    # a write checkout reads the same stored bytes: same error
    with repo.checkout(write=True) as co, pytest.raises(tc.CorruptionError) as caught:
        co[column][bad]
    _assert_names(caught.value, column, bad, damaged)

    report = repo.verify(full=True, raise_on_error=False)
    assert not report.ok
    assert len(report.problems) == 1, report.problems
    assert repr(column) in report.problems[0] or column in report.problems[0]
    assert repr(bad) in report.problems[0], report.problems
    with pytest.raises(tc.CorruptionError):
        repo.verify(full=True)


def test_two_damaged_samples_are_both_reported(built: Built, opened: Opener) -> None:
    _damage(built, "fixed", 2, "memmap", ".seg")
    _damage(built, "text", "t09", "lmdb", "data.mdb")
    repo = opened()
    report = repo.verify(full=True, raise_on_error=False)
    assert not report.ok
    assert len(report.problems) == 2, report.problems
    text = "\n".join(report.problems)
    assert "'fixed', key 2:" in text and "'text', key 't09'" in text, text


# -- truncated and missing files -----------------------------------------


def _segment(built: Built) -> Path:
    (segment,) = _files(built.path / "data" / "memmap", ".seg")
    return segment


@pytest.mark.parametrize("cut", ["mid-row", "whole-rows", "empty"])
def test_truncated_memmap_segment_raises_cask_error(built: Built, opened: Opener, cut: str) -> None:
    segment = _segment(built)
    row = fixed_value(0).nbytes
    size = segment.stat().st_size
    assert size == N * row
    keep_rows = {"mid-row": N - 3, "whole-rows": N - 3, "empty": 0}[cut]
    new_size = keep_rows * row + (row // 2 if cut == "mid-row" else 0)
    os.truncate(segment, new_size)
    lost = FIXED_KEYS[keep_rows:]
    repo = opened()
    with repo.checkout(commit=built.commit) as rc:
        col = rc["fixed"]
        for key in lost:
            with pytest.raises(tc.CaskError) as caught:
                col[key]
            _assert_names(caught.value, "fixed", key, segment)
        for key in FIXED_KEYS[:keep_rows]:
            assert _same(col[key], fixed_value(key))
        with pytest.raises(tc.CaskError) as caught:
            col.get_many(FIXED_KEYS)
        _assert_names(caught.value, "fixed", lost[0], segment)
        if keep_rows:
            got = col.get_many(FIXED_KEYS[:keep_rows])
            assert _same(got, np.stack([fixed_value(k) for k in FIXED_KEYS[:keep_rows]]))
        # the other backends are untouched
        for key, want in built.expected("var").items():
            assert _same(rc["var"][key], want)
    report = repo.verify(full=True, raise_on_error=False)
    assert not report.ok
    assert len(report.problems) == len(lost), report.problems
    for key, problem in zip(lost, sorted(report.problems, key=_key_in_problem), strict=True):
        assert f"key {key!r}" in problem, problem


def _key_in_problem(problem: str) -> int:
    return int(problem.split("key ", 1)[1].split(":", 1)[0])


def test_missing_memmap_segment_raises_cask_error(built: Built, opened: Opener) -> None:
    segment = _segment(built)
    segment.unlink()
    repo = opened()
    with repo.checkout(commit=built.commit) as rc:
        with pytest.raises(tc.CaskError) as caught:
            rc["fixed"][3]
        _assert_names(caught.value, "fixed", 3, segment)
        with pytest.raises(tc.CaskError) as caught:
            rc["fixed"].get_many([0, 1])
        _assert_names(caught.value, "fixed", 0, segment)
        assert rc["text"]["t01"] == text_value(1)
    report = repo.verify(full=True, raise_on_error=False)
    assert len(report.problems) == N, report.problems


def test_truncated_hdf5_file_raises_cask_error(built: Built, opened: Opener) -> None:
    (h5,) = _files(built.path / "data" / "hdf5", ".h5")
    last = VAR_KEYS[-1]
    at = h5.read_bytes().find(built.expected("var")[last].tobytes())
    assert at > 0
    os.truncate(h5, at + 8)  # cut inside the last sample
    repo = opened()
    with repo.checkout(commit=built.commit) as rc:
        with pytest.raises(tc.CaskError) as caught:
            rc["var"][last]
        _assert_names(caught.value, "var", last, h5)
        for key in VAR_KEYS[:-1]:
            try:
                value = rc["var"][key]
            except tc.CaskError as err:
                _assert_names(err, "var", key, h5)
            else:  # samples before the cut may survive; they must then be right
                assert _same(value, built.expected("var")[key]), key
        assert rc["fixed"].get_many(FIXED_KEYS).shape == (N, 4, 4)
    report = repo.verify(full=True, raise_on_error=False)
    assert not report.ok
    assert any(f"key {last!r}" in p for p in report.problems), report.problems


# Reads a row (so the reader maps the segment), truncates the file under it,
# then reads rows that are gone: must raise CaskError, not kill the process.
TRUNCATE_WHILE_MAPPED = textwrap.dedent(
    """
    import os
    import sys

    import tensorcask as tc

    repo = tc.Repository(sys.argv[1])
    segment, last = sys.argv[2], int(sys.argv[3])
    rc = repo.checkout(commit=sys.argv[4])
    col = rc["big"]
    col[last]  # maps the whole segment
    os.truncate(segment, 4096)
    failures = 0
    for read in (lambda: col[last], lambda: col.get_many([0, last])):
        try:
            read()
        except tc.CaskError as err:
            if err.key != last or err.column != "big":
                print("error does not name column 'big' and key", last, ":", err.column, err.key)
                failures += 1
        except BaseException as err:
            print("not a CaskError:", type(err).__name__, err)
            failures += 1
        else:
            print("read of a truncated row returned data")
            failures += 1
    print("done", flush=True)
    sys.exit(1 if failures else 0)
    """
)


def test_segment_truncated_while_mapped_raises_not_crashes(tmp_path: Path) -> None:
    rows = 2000  # 2000 rows of 128 bytes: the segment spans many pages
    repo = tc.init(tmp_path / "repo", user_name="Ada", user_email="ada@example.org")
    try:
        with repo.checkout(write=True) as co:
            big = co.add_ndarray_column("big", shape=(4, 4), dtype="int64")
            big.update(list(range(rows)), np.stack([fixed_value(k) for k in range(rows)]))
            commit = co.commit("big")
    finally:
        repo.close()
    (segment,) = _files(tmp_path / "repo" / "data" / "memmap", ".seg")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [
            sys.executable,
            "-X",
            "faulthandler",
            "-c",
            TRUNCATE_WHILE_MAPPED,
            str(tmp_path / "repo"),
            str(segment),
            str(rows - 1),
            commit,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, (
        f"reader process exited with {proc.returncode} (-7 is SIGBUS: the stale memory map "
        f"was read past the end of the truncated file)\nstdout: {proc.stdout}\n"
        f"stderr: {proc.stderr[-2000:]}"
    )


# -- malformed input writes nothing ---------------------------------------


def _data_files(path: Path) -> dict[str, int]:
    out = {}
    for root, _, files in os.walk(path / "data"):
        for name in files:
            if name.endswith((".lock", "lock.mdb")):
                continue
            full = os.path.join(root, name)
            out[os.path.relpath(full, path)] = os.path.getsize(full)
    return out


def _view(co: Any) -> dict[str, dict[Any, bytes]]:
    out: dict[str, dict[Any, bytes]] = {}
    for name in co.columns:
        col = co[name]
        out[name] = {
            k: (v.encode() if isinstance(v, str) else v.tobytes() + str(v.shape).encode())
            for k, v in ((k, col[k]) for k in col.keys())  # noqa: SIM118 (Column.keys())
        }
        assert len(col) == len(out[name])
    return out


@pytest.fixture
def writer(built: Built) -> Iterator[tuple[Built, Any]]:
    repo = tc.Repository(built.path)
    co = repo.checkout(write=True)
    try:
        yield built, co
    finally:
        co.close()
        repo.close()


def _bad_fixed_batches() -> list[Any]:
    good = [fixed_value(1000 + i) for i in range(1000)]
    wrong_dtype = [*good[:999], good[999].astype(np.float64)]
    wrong_shape = [*good[:999], np.zeros((4, 5), dtype=np.int64)]
    wrong_rank = [*good[:999], np.zeros(16, dtype=np.int64)]
    not_array = [*good[:999], "sixteen"]
    stacked_wrong_dtype = np.stack(good).astype(np.int32)
    stacked_wrong_rows = np.stack(good)[:, :3, :]
    return [
        wrong_dtype,
        wrong_shape,
        wrong_rank,
        not_array,
        stacked_wrong_dtype,
        stacked_wrong_rows,
    ]


@pytest.mark.parametrize(
    "batch_index",
    range(6),
    ids=["dtype", "shape", "rank", "not-array", "stacked-dtype", "stacked-shape"],
)
@pytest.mark.parametrize("staged_before", [False, True], ids=["clean", "with-staged"])
def test_bad_value_in_a_batch_writes_nothing(
    writer: tuple[Built, Any], batch_index: int, staged_before: bool
) -> None:
    built, co = writer
    if staged_before:
        co["fixed"][900] = fixed_value(900)
        co["text"]["staged"] = "staged"
    before_view = _view(co)
    before_files = _data_files(built.path)
    batch = _bad_fixed_batches()[batch_index]
    keys = [1000 + i for i in range(1000)]
    with pytest.raises(tc.SchemaError):
        co["fixed"].update(keys, batch)
    assert _view(co) == before_view
    assert _data_files(built.path) == before_files
    for key in (1000, 1500, 1999):
        assert key not in co["fixed"]
    if not staged_before:
        with pytest.raises(tc.CaskError, match="nothing to commit"):
            co.commit("must be empty")


@pytest.mark.parametrize("form", ["mapping", "keys-and-values"])
def test_bad_value_in_a_str_batch_writes_nothing(writer: tuple[Built, Any], form: str) -> None:
    built, co = writer
    before_view = _view(co)
    before_files = _data_files(built.path)
    keys = [f"new{i:04d}" for i in range(1000)]
    values: list[Any] = [f"value {i}" for i in range(999)] + [b"bytes, not str"]
    with pytest.raises(tc.SchemaError):
        if form == "mapping":
            co["text"].update(dict(zip(keys, values, strict=True)))
        else:
            co["text"].update(keys, values)
    assert _view(co) == before_view
    assert _data_files(built.path) == before_files
    with pytest.raises(tc.CaskError, match="nothing to commit"):
        co.commit("must be empty")


@pytest.mark.parametrize(
    ("bad_key", "error"),
    [(True, TypeError), (1.5, TypeError), ("a/b", ValueError), ("", ValueError), (-1, ValueError)],
    ids=["bool", "float", "slash", "empty", "negative"],
)
def test_bad_key_in_a_batch_writes_nothing(
    writer: tuple[Built, Any], bad_key: Any, error: type[Exception]
) -> None:
    built, co = writer
    before_view = _view(co)
    before_files = _data_files(built.path)
    keys: list[Any] = [2000 + i for i in range(999)] + [bad_key]
    with pytest.raises(error):
        co["fixed"].update(keys, np.stack([fixed_value(2000 + i) for i in range(1000)]))
    with pytest.raises(error):
        co["text"].update(dict.fromkeys(keys, "x"))
    assert _view(co) == before_view
    assert _data_files(built.path) == before_files
    with pytest.raises(tc.CaskError, match="nothing to commit"):
        co.commit("must be empty")


def test_length_mismatch_writes_nothing(writer: tuple[Built, Any]) -> None:
    built, co = writer
    before_view = _view(co)
    before_files = _data_files(built.path)
    batch = np.stack([fixed_value(3000 + i) for i in range(999)])
    with pytest.raises(ValueError):
        co["fixed"].update([3000 + i for i in range(1000)], batch)
    with pytest.raises(ValueError):
        co["var"].update([f"w{i}" for i in range(10)], [var_value(i) for i in range(9)])
    assert _view(co) == before_view
    assert _data_files(built.path) == before_files
