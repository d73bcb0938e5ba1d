"""``tensorcask import``, ``export`` and ``verify-export``, in-process and as a subprocess."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_cli import assert_one_error_line, run_cli, run_subprocess

import tensorcask as tc
from tensorcask.interop.util import Meter, format_duration

zarr = pytest.importorskip("zarr")

N = 24


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with an empty repository ``repo`` and ``data/train.npz`` beside it."""
    tc.init(tmp_path / "repo", user_name="Ada", user_email="ada@example.org").close()
    (tmp_path / "data").mkdir()
    rng = np.random.default_rng(2)
    np.savez(
        tmp_path / "data" / "train.npz",
        images=rng.integers(0, 256, (N, 28, 28), dtype=np.uint8),
        labels=np.arange(N, dtype=np.int64) % 10,
    )
    return tmp_path


def test_import_then_reimport(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = str(workdir / "repo")
    code, out, err = run_cli(capsys, "-C", repo, "import", "../data/train.npz", "-m", "MNIST")
    assert (code, err) == (0, "")
    with tc.Repository(repo) as r:
        head = r.branches["main"]
        assert r.log()[0].message == "MNIST"
    assert out == (
        f"imported {2 * N} samples (18.6 KiB; {2 * N} added) into images ({N}), labels ({N}): "
        f"commit {head[:10]}\n"
    )

    code, out, err = run_cli(capsys, "-C", repo, "import", "../data/train.npz", "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc == {
        "commit": head,
        "committed": False,
        "source": str(workdir / "data" / "train.npz"),
        "columns": {"images": N, "labels": N},
        "samples": 2 * N,
        "nbytes": N * 28 * 28 + N * 8,
        "added": 0,
        "changed": 0,
    }
    code, out, _ = run_cli(capsys, "-C", repo, "import", "../data/train.npz")
    assert out.startswith("nothing new in ") and f"head stays at {head[:10]}" in out


def test_an_import_that_would_change_samples_needs_overwrite(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second file with keys 0..N-1 must not silently replace the first one's samples."""
    repo = str(workdir / "repo")
    np.save(workdir / "data" / "part1.npy", np.arange(5, dtype=np.int64))
    np.save(workdir / "data" / "part2.npy", np.arange(100, 105, dtype=np.int64))
    run_cli(capsys, "-C", repo, "import", "../data/part1.npy", "--column", "p", "-q")
    code, out, err = run_cli(capsys, "-C", repo, "import", "../data/part2.npy", "--column", "p")
    assert code == 1 and out == ""
    assert "would change samples" in err and "5 of column 'p'" in err and "--overwrite" in err
    with tc.Repository(repo) as r:
        assert r.staged_branch is None and len(r.log()) == 1
        assert r.checkout()["p"].get_many(list(range(5))).tolist() == [0, 1, 2, 3, 4]
    code, out, err = run_cli(
        capsys, "-C", repo, "import", "../data/part2.npy", "--column", "p", "--overwrite"
    )
    assert (code, err) == (0, "") and "0 added, 5 changed" in out
    with tc.Repository(repo) as r:
        assert r.checkout()["p"].get_many(list(range(5))).tolist() == [100, 101, 102, 103, 104]


def test_import_one_hdf5_dataset_to_a_branch(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = str(workdir / "repo")
    run_cli(capsys, "-C", repo, "import", "../data/train.npz", "-q")
    with tc.Repository(repo) as r:
        r.create_branch("extra")
    with h5py.File(workdir / "data" / "set.h5", "w") as f:
        f["group/x"] = np.arange(6.0)
        f["group/ids"] = np.array([b"a", b"b", b"c", b"d", b"e", b"f"])

    code, out, err = run_cli(
        capsys, "-C", repo, "import", str(workdir / "data" / "set.h5"), "--dataset", "/group/x",
        "--keys", "group/ids", "--column", "x", "--branch", "extra", "--json",
    )  # fmt: skip

    assert code == 0, err
    assert json.loads(out)["columns"] == {"x": 6}
    with tc.Repository(repo) as r, r.checkout(branch="extra") as co:
        assert co["x"]["c"] == 2.0


def test_export_and_verify_export(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = str(workdir / "repo")
    run_cli(capsys, "-C", repo, "import", "../data/train.npz", "-q")

    code, out, err = run_cli(capsys, "-C", repo, "export", "main", "../out.zarr", "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["format"] == "zarr" and doc["columns"] == {"images": N, "labels": N}
    np.testing.assert_array_equal(
        zarr.open_group(workdir / "out.zarr", mode="r")["labels"][...], np.arange(N) % 10
    )

    code, out, err = run_cli(capsys, "-C", repo, "export", "main", "../out.zarr")
    assert code == 1 and "already exists" in assert_one_error_line(err)
    code, out, err = run_cli(
        capsys, "-C", repo, "export", "main", "../out.zarr", "--force", "--columns", "labels"
    )
    assert code == 0 and out.startswith(f"exported {N} samples (192 B) of labels ({N}) at ")
    assert out.rstrip().endswith(f"to {workdir / 'out.zarr'} (zarr)")

    code, out, err = run_cli(capsys, "verify-export", str(workdir / "out.zarr"))
    assert (code, err) == (0, "") and out.startswith("ok: ")

    chunk = workdir / "out.zarr" / "labels" / "c" / "0"
    data = chunk.read_bytes()
    chunk.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    (workdir / "out.zarr" / "stray").write_text("x")
    code, out, err = run_cli(capsys, "verify-export", str(workdir / "out.zarr"))
    assert code == 1
    assert out.splitlines() == ["changed: labels/c/0", "extra: stray"]
    assert "2 file(s) differ" in assert_one_error_line(err)
    code, out, _ = run_cli(capsys, "verify-export", str(workdir / "out.zarr"), "--json")
    doc = json.loads(out)
    assert code == 1 and not doc["ok"] and doc["differing"] == ["labels/c/0", "stray"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["import", "../data/nope.npz"], "no such file or folder"),
        (["import", "../data/train.npz", "--column", "x"], "holds 2 (images, labels)"),
        (["import", "../data/train.npz", "--raw"], "--raw (raw=True) does not apply"),
        (
            ["import", "../data/train.npz", "-o", "anon=true"],
            "--storage-option (storage_options) does not apply",
        ),
        (["import", "../data/train.npz", "--dataset", "x"], "no array 'x'"),
        (["export", "main", "../out.csv"], "suffix '.csv'"),
        (["export", "nope", "../out.h5"], "nope"),
        (["verify-export", "../data"], "no checksum manifest"),
    ],
)
def test_errors_are_one_line(
    workdir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    run_cli(capsys, "-C", str(workdir / "repo"), "import", "../data/train.npz", "-q")
    code, out, err = run_cli(capsys, "-C", str(workdir / "repo"), *argv)
    assert code == 1 and out == ""
    assert message in assert_one_error_line(err)


def test_import_an_image_folder_decoded_and_raw(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = pytest.importorskip("PIL.Image")
    folder = workdir / "data" / "pets"
    for label, name in enumerate(("cat", "dog")):
        (folder / name).mkdir(parents=True)
        for i in range(2):
            pixels = np.full((5, 4), 10 * label + i, dtype=np.uint8)
            image.fromarray(pixels).save(folder / name / f"{i}.png")
    repo = str(workdir / "repo")

    code, out, err = run_cli(capsys, "-C", repo, "import", "../data/pets", "--json")

    assert code == 0, err
    assert json.loads(out)["columns"] == {"images": 4, "labels": 4, "classes": 2}
    with tc.Repository(repo) as r, r.checkout() as co:
        assert co["images"].shape == (5, 4)
        assert int(co["labels"]["dog%2F1.png"]) == 1
        assert int(co["images"]["dog%2F1.png"][0, 0]) == 11
    code, _, err = run_cli(capsys, "-C", repo, "import", "../data/pets/", "--raw")
    assert code == 1  # the images column holds decoded arrays, not bytes
    assert "column 'images' exists on branch 'main' as ndarray uint8 (5, 4)" in err
    assert "brings bytes" in err

    raw = str(workdir / "raw")
    tc.init(raw, user_name="Ada", user_email="ada@example.org").close()
    code, out, err = run_cli(capsys, "-C", raw, "import", "../data/pets/", "--raw", "-q")
    assert (code, out, err) == (0, "", "")
    with tc.Repository(raw) as r, r.checkout() as co:
        assert co["images"].kind == "bytes"
        assert co["images"]["cat%2F0.png"] == (folder / "cat" / "0.png").read_bytes()
    code, _, err = run_cli(capsys, "-C", repo, "import", "../data/pets", "--column", "x")
    assert code == 1 and "--column does not apply to image folders" in err


def test_progress_line_on_a_terminal(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = run_cli(capsys, "-C", str(workdir / "repo"), "import", "../data/train.npz")
    assert code == 0 and out.startswith("imported ")
    assert "\rimporting (" in err and f"{2 * N}/{2 * N}" in err and "\033[K" in err
    assert err.endswith("\r\033[K")  # the line is erased at the end

    code, _, err = run_cli(capsys, "-C", str(workdir / "repo"), "-q", "export", "main", "../o.h5")
    assert (code, err) == (0, "")  # --quiet: no progress


def test_progress_meter_rate_and_eta() -> None:
    now = [0.0]
    meter = Meter(clock=lambda: now[0])
    now[0] = 2.0
    meter("import samples", 50, 200)
    meter("import bytes", 10 << 20, 40 << 20)
    assert meter.describe() == "10.0 MiB of 40.0 MiB, 5.0 MiB/s, ETA 6s"
    assert [format_duration(s) for s in (0.4, 61, 3725)] == ["0s", "1m01s", "1h02m"]


def test_import_and_export_in_a_subprocess(workdir: Path) -> None:
    done = run_subprocess("-C", "repo", "import", "../data/train.npz", "--json", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["committed"] is True
    done = run_subprocess("-C", "repo", "export", "main", "out.h5", cwd=workdir)
    assert done.returncode == 0, done.stderr
    with h5py.File(workdir / "repo" / "out.h5", "r") as f:
        assert f["images"].shape == (N, 28, 28)
