"""The remote commands of the command line: remote, push, fetch, clone, verify --remote.

In-process through ``main`` against ``file://`` remotes under ``tmp_path``,
one round trip against the moto S3 server of ``conftest.py``, and one real
subprocess on a pseudo-terminal for the progress bars.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_cli import assert_one_error_line, run_cli

import tensorcask as tc

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAPE = (28, 28)


def _images(start: int, count: int) -> np.ndarray:
    """Distinct images: every sample's bytes differ from every other's."""
    base = np.arange(SHAPE[0] * SHAPE[1], dtype=np.uint32).reshape(SHAPE)
    return np.stack(
        [((base * (i + 1) + i) % 251).astype(np.uint8) for i in range(start, start + count)]
    )


def _commit(path: Path, start: int, count: int, message: str) -> str:
    """Add images and labels ``start .. start+count`` on main; the new commit id."""
    with tc.Repository(path) as repo, repo.checkout(write=True) as co:
        if "images" not in co.columns:
            co.add_ndarray_column("images", shape=SHAPE, dtype="uint8")
            co.add_str_column("labels")
        keys = list(range(start, start + count))
        co["images"].update(keys, _images(start, count))
        co["labels"].update(keys, [f"label {k}" for k in keys])
        return co.commit(message)


def _contents(path: Path, ref: str = "main") -> tuple[str, list[Any], Any, list[Any]]:
    """Head of ``ref``, its keys, stacked images and labels, read through the API."""
    with tc.Repository(path) as repo, repo.checkout(commit=ref) as co:
        keys = list(co["images"].keys())
        images = co["images"].get_many(keys)
        labels = [co["labels"][k] for k in keys]
        return repo.resolve(ref), keys, images, labels


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A repository with one commit (keys 0..5) and the tag v1 on main."""
    path = tmp_path / "source"
    tc.init(path, user_name="Ada", user_email="ada@example.org").close()
    _commit(path, 0, 6, "first")
    with tc.Repository(path) as repo:
        repo.create_tag("v1", "main")
    return path


@pytest.fixture
def remote_url(tmp_path: Path) -> str:
    return (tmp_path / "remotes" / "data.cask").as_uri()


@pytest.fixture
def pushed(source: Path, remote_url: str, capsys: pytest.CaptureFixture[str]) -> Path:
    """``source`` with the remote ``origin`` at ``remote_url``, main pushed to it."""
    assert run_cli(capsys, "-C", str(source), "remote", "add", "origin", remote_url)[0] == 0
    assert run_cli(capsys, "-C", str(source), "-q", "push")[0] == 0
    return source


# -- remote add / list / remove ------------------------------------------------------


def test_remote_add_list_remove(source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    C = ("-C", str(source))
    assert run_cli(capsys, *C, "remote") == (0, "", "")
    code, out, _ = run_cli(capsys, *C, "remote", "list", "--json")
    assert code == 0 and json.loads(out) == {"remotes": {}}

    code, out, err = run_cli(capsys, *C, "remote", "add", "backup", "../backup")
    assert (code, err) == (0, "")
    local = str(source.parent / "backup")  # a relative path is made absolute (from -C)
    assert out.strip() == f"added remote backup: {local}"
    options = [
        "-o",
        "anon=true",
        "-o",
        "endpoint_url=http://127.0.0.1:9000",
        "-o",
        'client_kwargs={"region_name": "us-east-1"}',
        "--option",
        "retries=3",
    ]
    code, _, err = run_cli(capsys, *C, "remote", "add", "s3", "s3://bucket/x", *options)
    assert (code, err) == (0, "")
    with tc.Repository(source) as repo:
        assert repo.config["remotes"]["s3"]["storage_options"] == {
            "anon": True,
            "endpoint_url": "http://127.0.0.1:9000",
            "client_kwargs": {"region_name": "us-east-1"},
            "retries": 3,
        }

    code, out, _ = run_cli(capsys, *C, "remote")
    assert code == 0
    assert out.splitlines() == [f"backup  {local}", "s3      s3://bucket/x"]
    expected = {"remotes": {"backup": local, "s3": "s3://bucket/x"}}
    for argv in (["remote", "--json"], ["remote", "list", "--json"], ["remote", "--json", "list"]):
        code, out, _ = run_cli(capsys, *C, *argv)
        assert code == 0 and json.loads(out) == expected

    code, _, err = run_cli(capsys, *C, "remote", "add", "s3", "s3://other")
    assert code == 1 and "'s3' already exists" in assert_one_error_line(err)
    code, _, err = run_cli(capsys, *C, "remote", "add", "x", "s3://b", "-o", "no-equals-sign")
    assert code == 2 and "KEY=VALUE" in err

    code, out, err = run_cli(capsys, *C, "remote", "remove", "s3")
    assert (code, err) == (0, "") and out.strip() == "removed remote s3 (was s3://bucket/x)"
    code, _, err = run_cli(capsys, *C, "remote", "remove", "s3")
    line = assert_one_error_line(err)
    assert code == 1 and "no remote named 's3'" in line and "backup" in line
    with tc.Repository(source) as repo:
        assert repo.remotes == {"backup": local}


# -- push, clone, fetch ---------------------------------------------------------------


def test_push_clone_fetch_round_trip(
    source: Path, remote_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = _contents(source)[0]
    assert run_cli(capsys, "-C", str(source), "remote", "add", "origin", remote_url)[0] == 0
    code, out, err = run_cli(capsys, "-C", str(source), "push")  # origin, the current branch
    assert (code, err) == (0, "")
    assert out.startswith(f"pushed main to origin at {head[:10]} ")
    assert "1 commit," in out and "12 samples" in out and "uploaded; tags: v1" in out

    code, out, err = run_cli(capsys, "-C", str(tmp_path), "clone", remote_url)
    assert (code, err) == (0, "")
    clone = tmp_path / "data.cask"  # the URL's last component
    assert f"clone of {remote_url} in {clone}: 1 branch (on main), 1 tag" in out
    assert "12 samples" in out
    got, want = _contents(clone), _contents(source)
    assert got[0] == want[0] and got[1] == want[1] and got[3] == want[3]
    np.testing.assert_array_equal(got[2], want[2])
    with tc.Repository(clone) as repo:
        assert repo.remotes == {"origin": remote_url}
        assert repo.tags == {"v1": head}

    second = _commit(source, 6, 4, "second")
    code, out, _ = run_cli(capsys, "-C", str(source), "push", "origin", "main", "--json")
    doc = json.loads(out)
    assert code == 0
    assert doc == {
        "remote": "origin",
        "branch": "main",
        "commit": second,
        "commits": 1,
        "objects": doc["objects"],
        "samples": 8,
        "bytes": doc["bytes"],
        "tags": [],
        "purged": 0,
    }
    assert doc["objects"] > 0 and doc["bytes"] > 0

    code, out, err = run_cli(capsys, "-C", str(clone), "fetch")
    assert (code, err) == (0, "")
    assert out.startswith(f"fetched from origin: origin/main {second[:10]} (1 commit, ")
    assert "8 samples" in out
    with tc.Repository(clone) as repo:
        assert repo.branches["main"] == head  # a fetch moves no local branch
    code, out, _ = run_cli(capsys, "-C", str(clone), "merge", "origin/main")
    assert code == 0 and second in out
    got, want = _contents(clone), _contents(source)
    assert got[0] == want[0] == second and got[1] == want[1] == list(range(10))
    np.testing.assert_array_equal(got[2], want[2])
    assert got[3] == want[3]

    code, out, _ = run_cli(capsys, "-C", str(clone), "fetch", "origin", "main", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["heads"] == {"main": second}
    assert (doc["commits"], doc["samples"], doc["tags"]) == (0, 0, [])


def test_partial_clone_then_fetch_data(
    pushed: Path, remote_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "partial"
    code, out, err = run_cli(
        capsys, "clone", remote_url, str(target), "--partial", "--user-name", "Bo", "--json"
    )
    assert (code, err) == (0, "")
    doc = json.loads(out)
    head = _contents(pushed)[0]
    assert doc["partial"] is True and doc["samples"] == 0 and doc["path"] == str(target)
    assert doc["branch"] == "main" and doc["branches"] == {"main": head}
    with tc.Repository(target) as repo:
        assert repo.config["user_name"] == "Bo"
        with repo.checkout() as co, pytest.raises(tc.DataNotLocalError, match="origin"):
            co["images"][3]

    code, out, err = run_cli(
        capsys, "-C", str(target), "fetch", "origin", "--data", "main", "--column", "images",
        "--key", "3",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out.startswith("fetched data of main from origin: 1 sample, ")
    with tc.Repository(target) as repo, repo.checkout() as co:
        np.testing.assert_array_equal(co["images"][3], _images(3, 1)[0])
        with pytest.raises(tc.DataNotLocalError):
            co["images"][4]
        with pytest.raises(tc.DataNotLocalError):
            co["labels"][3]

    code, out, _ = run_cli(capsys, "-C", str(target), "fetch", "--data", "v1", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["remote"] == "origin" and doc["ref"] == "v1"
    assert doc["columns"] is None and doc["keys"] is None and doc["samples"] == 11
    got, want = _contents(target), _contents(pushed)
    np.testing.assert_array_equal(got[2], want[2])
    assert got[3] == want[3]

    code, _, err = run_cli(capsys, "-C", str(target), "fetch", "--data", "main", "--column", "x")
    assert code == 1 and "no column 'x'" in assert_one_error_line(err)

    # A partial clone cannot push data it never fetched to a remote that lacks it.
    empty = (tmp_path / "empty-remote").as_uri()
    _commit(pushed, 6, 2, "second")
    assert run_cli(capsys, "-C", str(pushed), "-q", "push") == (0, "", "")
    with tc.Repository(target) as repo:
        repo.fetch("origin")  # a partial clone fetches history only
        repo.merge("origin/main", "main")
        repo.add_remote("elsewhere", empty)
    code, out, err = run_cli(capsys, "-C", str(target), "push", "elsewhere")
    assert code == 1 and out == ""
    assert "neither here nor on the remote" in assert_one_error_line(err)


def test_non_fast_forward_push_needs_force(
    pushed: Path, remote_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    assert run_cli(capsys, "-q", "clone", remote_url, str(other))[0] == 0
    theirs = _commit(other, 100, 1, "theirs")
    assert run_cli(capsys, "-C", str(other), "push")[0] == 0
    ours = _commit(pushed, 200, 1, "ours")

    code, out, err = run_cli(capsys, "-C", str(pushed), "push")
    line = assert_one_error_line(err)
    assert code == 1 and out == ""
    assert "not an ancestor" in line and "--force" in line
    assert f"tensorcask -C {pushed} fetch origin main" in line
    with tc.Repository(other) as repo:
        assert repo.resolve("origin/main") == theirs

    code, out, err = run_cli(capsys, "-C", str(pushed), "push", "origin", "main", "--force")
    assert (code, err) == (0, "") and ours[:10] in out
    code, out, _ = run_cli(capsys, "-C", str(other), "fetch", "--json")
    assert code == 0 and json.loads(out)["heads"] == {"main": ours}


def test_unknown_remote_and_usage_errors(
    pushed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    C = ("-C", str(pushed))
    for argv in (
        ["push", "nope"],
        ["fetch", "nope"],
        ["fetch", "nope", "--data", "main"],
        ["verify", "--remote", "nope"],
    ):
        code, out, err = run_cli(capsys, *C, *argv)
        line = assert_one_error_line(err)
        assert code == 1 and out == "", argv
        assert "no remote named 'nope'" in line and "origin" in line
    code, _, err = run_cli(capsys, *C, "push", "origin", "no-such-branch")
    assert code == 1 and "'no-such-branch'" in assert_one_error_line(err)
    code, _, err = run_cli(capsys, *C, "fetch", "origin", "no-such-branch")
    assert code == 1 and "'no-such-branch'" in assert_one_error_line(err)
    code, _, err = run_cli(capsys, "clone", (tmp_path / "nothing").as_uri(), str(tmp_path / "x"))
    assert code == 1 and "holds no tensorcask repository" in assert_one_error_line(err)
    assert not (tmp_path / "x").exists()
    code, _, err = run_cli(capsys, "-C", str(tmp_path), "clone", "s3://")
    assert code == 1 and "pass PATH" in assert_one_error_line(err)

    for argv in (
        ["fetch", "--key", "3"],
        ["fetch", "origin", "main", "--data", "main"],
        ["verify", "main", "--remote", "origin"],
        ["verify", "--full", "--remote", "origin"],
    ):
        code, _, err = run_cli(capsys, *C, *argv)
        assert code == 2 and "usage:" in err, argv


# -- verify --remote ----------------------------------------------------------------


def test_verify_remote(pushed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    C = ("-C", str(pushed))
    code, out, err = run_cli(capsys, *C, "verify", "--remote", "origin")
    assert (code, err) == (0, "")
    assert out.startswith("verified remote 'origin': 2 refs") and "12 samples" in out
    assert out.strip().endswith("ok")
    assert run_cli(capsys, *C, "verify", "--remote", "origin", "--quiet") == (0, "", "")

    packs = sorted((tmp_path / "remotes" / "data.cask" / "data").glob("*.pack"))
    assert packs
    data = bytearray(packs[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    packs[0].write_bytes(bytes(data))

    code, out, err = run_cli(capsys, *C, "verify", "--remote", "origin")
    line = assert_one_error_line(err)
    assert code == 1 and "problem" in out
    assert line.startswith("tensorcask: error: verification of remote 'origin' found ")
    assert packs[0].name in line
    code, out, _ = run_cli(capsys, *C, "verify", "--remote", "origin", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False and doc["remote"] == "origin"
    assert doc["problems"] and any(packs[0].name in p for p in doc["problems"])


# -- S3 (moto) -------------------------------------------------------------------------


def _option_args(options: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in options.items():
        args += ["-o", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return args


def test_s3_round_trip(
    source: Path,
    s3_server: Any,  # conftest.S3Server
    s3_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    options = _option_args(s3_server.storage_options)
    C = ("-C", str(source))
    assert run_cli(capsys, *C, "remote", "add", "origin", s3_url, *options)[0] == 0
    with tc.Repository(source) as repo:
        assert repo.config["remotes"]["origin"]["storage_options"] == s3_server.storage_options
    code, out, err = run_cli(capsys, *C, "push")
    assert (code, err) == (0, "") and "12 samples" in out

    target = tmp_path / "from-s3"
    code, out, err = run_cli(capsys, "clone", s3_url, str(target), *options)
    assert (code, err) == (0, ""), err
    got, want = _contents(target), _contents(source)
    assert got[0] == want[0] and got[1] == want[1] and got[3] == want[3]
    np.testing.assert_array_equal(got[2], want[2])

    second = _commit(source, 6, 2, "second")
    assert run_cli(capsys, *C, "-q", "push") == (0, "", "")
    code, out, _ = run_cli(capsys, "-C", str(target), "fetch", "--json")
    assert code == 0 and json.loads(out)["heads"] == {"main": second}
    assert run_cli(capsys, "-C", str(target), "verify", "--remote", "origin")[0] == 0


# -- progress bars ----------------------------------------------------------------------


def test_progress_bars_on_a_terminal_only(pushed: Path, remote_url: str, tmp_path: Path) -> None:
    import pty

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))

    def clone(*extra: str, stderr: Any) -> subprocess.CompletedProcess[bytes]:
        target = str(tmp_path / f"clone{len(list(tmp_path.glob('clone*')))}")
        command = [sys.executable, "-m", "tensorcask", "clone", remote_url, target, *extra]
        return subprocess.run(
            command, stdout=subprocess.PIPE, stderr=stderr, env=env, check=False, timeout=120
        )

    piped = clone(stderr=subprocess.PIPE)
    assert piped.returncode == 0 and piped.stderr == b""
    quiet = clone("--quiet", stderr=subprocess.PIPE)
    assert quiet.returncode == 0 and quiet.stderr == b"" and quiet.stdout == b""
    leader, follower = pty.openpty()
    try:
        on_tty = clone(stderr=follower)
    finally:
        os.close(follower)
    shown = os.read(leader, 65536).decode()
    os.close(leader)
    assert on_tty.returncode == 0
    assert "cloning samples: [########################] 12/12" in shown
    assert shown.endswith("\r\033[K")  # the line is erased at the end
    assert b"12 samples" in on_tty.stdout
