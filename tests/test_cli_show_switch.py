"""``tensorcask show``, ``tensorcask switch`` (and ``Repository.switch``), ``lock release``."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_one_error_line, run_cli, run_subprocess, writer_in_subprocess

import tensorcask as tc
from tensorcask.cli import show_commands
from tensorcask.layout import WRITER_LOCK_FILE

IMAGE = (np.arange(28 * 28) % 251).astype(np.uint8).reshape(28, 28)
BLOB = bytes(range(100))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A repository whose ``main`` holds int and str keys of every kind, one of them purged.

    ``images``: int key 0 (IMAGE), str key "1" (ones), str key "gone" (purged);
    ``labels``: int key 7 and str key "7" with different values; ``captions``,
    ``blobs`` and ``volume`` (600 float32 elements, with a NaN).
    """
    target = tmp_path / "repo"
    with tc.init(target, user_name="Ada", user_email="ada@example.org") as repo:
        with repo.checkout(write=True) as co:
            images = co.add_ndarray_column("images", shape=(28, 28), dtype="uint8")
            images.update({0: IMAGE, "1": np.ones((28, 28), np.uint8)})
            images["gone"] = np.full((28, 28), 9, np.uint8)
            co.add_ndarray_column("labels", shape=(), dtype="int64").update(
                {7: np.int64(70), "7": np.int64(-7)}
            )
            co.add_str_column("captions")["a"] = "a cat\non two lines"
            co.add_bytes_column("blobs")[0] = BLOB
            volume = np.arange(600, dtype=np.float32).reshape(6, 10, 10)
            volume[0, 0, 1] = np.nan
            co.add_ndarray_column("volume", shape=(6, 10, 10), dtype="float32")[0] = volume
            co.commit("first")
        repo.purge("images", ["gone"], reason="DMCA notice 42")
    return target


def cli(capsys: pytest.CaptureFixture[str], path: Path, *argv: str) -> tuple[int, str, str]:
    return run_cli(capsys, "-C", str(path), *argv)


def cli_error(capsys: pytest.CaptureFixture[str], path: Path, *argv: str) -> str:
    code, out, err = cli(capsys, path, *argv)
    assert code == 1, (out, err)
    return assert_one_error_line(err)


# -- show -------------------------------------------------------------------------


def test_show_array_text(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, path, "show", "main", "images", "0")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("images[0] at main (")
    assert "ndarray uint8 (28, 28), 784 bytes" in lines[0]
    with tc.Repository(path) as repo, repo.checkout() as co:
        assert lines[1] == f"digest {co['images'].digest(0)}"
    assert lines[2].startswith("array([[  0,   1,   2, ...,")  # summarised: 784 elements
    assert "dtype=uint8" in out and len(lines) < 15

    code, out, _ = cli(capsys, path, "-q", "show", "main", "images", "0", "--full")
    assert code == 0 and "..." not in out and out.startswith("array([[")
    assert " 27],\n" in out and len(out.splitlines()) >= 28


def test_show_int_and_str_keys(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, path, "show", "main", "labels", "7", "--json")
    assert code == 0 and json.loads(out)["key"] == 7 and json.loads(out)["value"] == 70
    code, out, _ = cli(capsys, path, "show", "main", "labels", "7", "--str-key", "--json")
    assert code == 0 and json.loads(out)["key"] == "7" and json.loads(out)["value"] == -7
    code, out, _ = cli(capsys, path, "-q", "show", "main", "labels", "7", "--str-key")
    assert out == "array(-7)\n"
    # "007" is not written as an int: it is the str key "007".
    assert "key '007' (str) is not in column 'labels'" in cli_error(
        capsys, path, "show", "main", "labels", "007"
    )


def test_show_missing_key_hints_at_the_other_type(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = cli_error(capsys, path, "show", "main", "images", "1")
    assert "key 1 (int) is not in column 'images' at main" in message
    assert "it has the str key '1': add --str-key" in message
    message = cli_error(capsys, path, "show", "main", "images", "0", "--str-key")
    assert "key '0' (str) is not in column 'images'" in message
    assert "it has the int key 0: leave out --str-key" in message
    message = cli_error(capsys, path, "show", "main", "images", "99")
    assert "key 99 (int) is not in column 'images' at main (" in message
    assert "--str-key" not in message


def test_show_missing_column_and_ref(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    message = cli_error(capsys, path, "show", "main", "pixels", "0")
    assert "no column 'pixels' at main" in message
    assert "(columns: blobs, captions, images, labels, volume)" in message
    assert "'nope'" in cli_error(capsys, path, "show", "nope", "images", "0")


def test_show_purged_sample_names_the_reason(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = cli_error(capsys, path, "show", "main", "images", "gone")
    assert "purged" in message and "DMCA notice 42" in message and "'gone'" in message


def test_show_str_and_bytes(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, path, "show", "main", "captions", "a")
    assert code == 0
    assert out.splitlines()[0].endswith("str, 18 characters (18 bytes as UTF-8)")
    assert out.endswith("\na cat\non two lines\n")  # as is
    code, out, _ = cli(capsys, path, "-q", "show", "main", "captions", "a")
    assert out == "a cat\non two lines\n"

    code, out, _ = cli(capsys, path, "show", "main", "blobs", "0")
    lines = out.splitlines()
    assert code == 0 and lines[0].endswith("bytes, 100 bytes")
    assert lines[2].startswith("00000000  00 01 02 03")
    assert lines[-1].startswith("... 36 more bytes")
    code, out, _ = cli(capsys, path, "-q", "show", "main", "blobs", "0", "--full")
    assert out.splitlines()[-1].startswith("00000060  60 61 62 63") and "more bytes" not in out


def test_show_json(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with tc.Repository(path) as repo:
        head = repo.branches["main"]
    code, out, _ = cli(capsys, path, "show", head[:8], "images", "0", "--json")
    doc = json.loads(out)
    assert code == 0
    assert doc["ref"] == head[:8] and doc["commit"] == head
    assert (doc["column"], doc["key"], doc["kind"]) == ("images", 0, "ndarray")
    assert (doc["dtype"], doc["shape"], doc["nbytes"]) == ("uint8", [28, 28], 784)
    assert len(doc["digest"]) == 64 and doc["encoding"] == "list"
    assert np.array_equal(np.array(doc["value"], dtype=np.uint8), IMAGE)

    doc = json.loads(cli(capsys, path, "show", "main", "blobs", "0", "--json")[1])
    assert doc["encoding"] == "base64" and base64.b64decode(doc["value"]) == BLOB
    assert doc["dtype"] is None and doc["shape"] is None

    doc = json.loads(cli(capsys, path, "show", "main", "captions", "a", "--json")[1])
    assert (doc["kind"], doc["encoding"], doc["value"]) == ("str", "text", "a cat\non two lines")

    out = cli(capsys, path, "show", "main", "volume", "0", "--json")[1]
    assert "NaN" not in out  # strict JSON: non-finite floats as strings
    assert json.loads(out)["value"][0][0][:3] == [0.0, "nan", 2.0]


def test_show_json_leaves_out_big_values_unless_full(
    path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(show_commands, "JSON_VALUE_LIMIT", 1000)
    doc = json.loads(cli(capsys, path, "show", "main", "volume", "0", "--json")[1])
    assert doc["value"] is None and doc["value_omitted"] and doc["nbytes"] == 2400
    doc = json.loads(cli(capsys, path, "show", "main", "volume", "0", "--json", "--full")[1])
    assert not doc["value_omitted"] and len(doc["value"]) == 6


def test_show_out_writes_each_kind(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, path, "show", "main", "images", "0", "--out", "img.npy")
    assert code == 0 and out.strip().endswith(f"to {path / 'img.npy'}")
    assert np.array_equal(np.load(path / "img.npy"), IMAGE)
    cli(capsys, path, "show", "main", "blobs", "0", "--out", "blob.bin")
    assert (path / "blob.bin").read_bytes() == BLOB
    code, out, _ = cli(capsys, path, "show", "main", "captions", "a", "--out", "a.txt", "--json")
    assert json.loads(out)["out"] == str(path / "a.txt")
    assert (path / "a.txt").read_text(encoding="utf-8") == "a cat\non two lines"
    # an existing file is replaced only with --force
    message = cli_error(capsys, path, "show", "main", "blobs", "0", "--out", "a.txt")
    assert "a.txt exists" in message and "--force" in message
    assert (path / "a.txt").read_text(encoding="utf-8") == "a cat\non two lines"
    cli(capsys, path, "show", "main", "blobs", "0", "--out", "a.txt", "--force")
    assert (path / "a.txt").read_bytes() == BLOB


def test_show_reads_committed_data_at_the_ref(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with tc.Repository(path) as repo:
        first = repo.branches["main"]
        with repo.checkout(write=True) as co:
            co["labels"][7] = np.int64(71)
            co.commit("relabel")
            co["labels"][7] = np.int64(72)  # staged only
    assert json.loads(cli(capsys, path, "show", "main", "labels", "7", "--json")[1])["value"] == 71
    assert json.loads(cli(capsys, path, "show", first, "labels", "7", "--json")[1])["value"] == 70


def test_show_usage_error(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, path, "show", "main", "images")[0] == 2


def test_show_subprocess(path: Path) -> None:
    result = run_subprocess("-C", str(path), "show", "main", "captions", "a", "-q", cwd=path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "a cat\non two lines\n", "")
    result = run_subprocess("-C", str(path), "show", "main", "images", "1", cwd=path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert assert_one_error_line(result.stderr).endswith("add --str-key")


# -- switch: the API ----------------------------------------------------------------


def test_switch_sets_the_current_branch(path: Path) -> None:
    with tc.Repository(path) as repo:
        head = repo.branches["main"]
        repo.create_branch("dev")
        repo.switch("dev")
        assert repo.current_branch == "dev"
        with repo.checkout(write=True) as co:  # the default branch of writers
            assert co.branch == "dev"
            co["labels"][7] = np.int64(1)
            dev_head = co.commit("on dev")
        assert repo.branches["main"] == head
        assert repo.log()[0].id == dev_head  # and of log
        repo.switch("dev")  # already there: nothing to do
        repo.switch("main")
        assert repo.current_branch == "main" and repo.log()[0].id == head


def test_switch_create(path: Path) -> None:
    with tc.Repository(path) as repo:
        head = repo.branches["main"]
        repo.switch("feature/x", create=True)
        assert repo.current_branch == "feature/x" and repo.branches["feature/x"] == head
        with pytest.raises(tc.CaskError, match="already exists"):
            repo.switch("main", create=True)
        with pytest.raises(ValueError):
            repo.switch("bad..name", create=True)
        assert repo.current_branch == "feature/x"


def test_switch_unknown_branch(path: Path) -> None:
    with tc.Repository(path) as repo:
        with pytest.raises(tc.RefNotFoundError) as info:
            repo.switch("dev")
        message = str(info.value)
        assert "'dev'" in message and "`tensorcask branch dev`" in message
        assert "branches: main" in message
        assert repo.current_branch == "main"
        with pytest.raises(TypeError):
            repo.switch(3)  # type: ignore[arg-type]


def test_switch_in_a_repository_without_commits(tmp_path: Path) -> None:
    with tc.init(tmp_path / "r", user_name="Ada", user_email="ada@example.org") as repo:
        with pytest.raises(tc.RefNotFoundError, match="no commits yet"):
            repo.switch("dev")
        repo.switch("dev", create=True)  # the first commit creates it
        assert repo.current_branch == "dev" and repo.branches == {}
        with repo.checkout(write=True) as co:
            co.add_str_column("names")["a"] = "x"
            head = co.commit("first")
        assert repo.branches == {"dev": head}


def test_switch_refused_while_another_branch_has_staged_changes(path: Path) -> None:
    with tc.Repository(path) as repo:
        repo.create_branch("dev")
        with repo.checkout(write=True) as co:
            co["labels"][7] = np.int64(5)  # staged on main, left staged
        with pytest.raises(tc.CaskError) as info:
            repo.switch("dev")
        message = str(info.value)
        assert "'main' has uncommitted staged changes" in message
        assert "commit" in message and "reset" in message and "'dev'" in message
        repo.switch("main")  # the branch of the staged changes: fine
        assert repo.current_branch == "main" and repo.staged_branch == "main"
        with repo.checkout(write=True) as co:
            co.reset_staging_area()
        repo.switch("dev")
        assert repo.current_branch == "dev"


def test_switch_refused_while_a_writer_is_open(path: Path) -> None:
    with tc.Repository(path) as repo:
        repo.create_branch("dev")
        with repo.checkout(write=True), pytest.raises(tc.WriterLockError, match="this process"):
            repo.switch("dev")
        with (
            writer_in_subprocess(path) as holder,
            pytest.raises(tc.WriterLockError, match=f"pid {holder.pid}"),
        ):
            repo.switch("dev")
        assert repo.current_branch == "main"
        repo.switch("dev")


def test_switch_read_only(path: Path) -> None:
    with tc.Repository(path) as repo:
        repo.create_branch("dev")
    with tc.Repository(path, read_only=True) as repo:
        with pytest.raises(tc.ReadOnlyError):
            repo.switch("dev")
        assert repo.current_branch == "main"


# -- switch: the command line ---------------------------------------------------------


def test_cli_switch(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with tc.Repository(path) as repo:
        head = repo.branches["main"]
    code, out, err = cli(capsys, path, "switch", "-c", "dev")
    assert (code, out, err) == (0, f"switched to a new branch dev at {head[:10]}\n", "")
    code, out, _ = cli(capsys, path, "checkout", "main", "--json")
    assert json.loads(out) == {"branch": "main", "previous": "dev", "head": head, "created": False}
    assert cli(capsys, path, "switch", "main")[1] == "already on branch main\n"
    assert cli(capsys, path, "switch", "dev")[1] == f"switched to branch dev at {head[:10]}\n"
    assert json.loads(cli(capsys, path, "status", "--json")[1])["branch"] == "dev"
    assert json.loads(cli(capsys, path, "log", "--json")[1])["ref"] == "dev"
    assert cli(capsys, path, "-q", "switch", "main")[1] == ""


def test_cli_switch_errors(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    message = cli_error(capsys, path, "switch", "nope")
    assert "no branch named 'nope'" in message and "tensorcask branch nope" in message
    cli(capsys, path, "branch", "dev")
    with tc.Repository(path) as repo, repo.checkout(write=True) as co:
        co["labels"][7] = np.int64(5)
    message = cli_error(capsys, path, "switch", "dev")
    assert "'main' has uncommitted staged changes" in message
    with writer_in_subprocess(path) as holder:
        assert f"pid {holder.pid}" in cli_error(capsys, path, "switch", "dev")
    assert cli(capsys, path, "switch")[0] == 2


# -- lock release -------------------------------------------------------------------


def _write_holder(path: Path, pid: int, host: str) -> dict[str, object]:
    """A holder record as the writer lock writes it (holder gone, so no flock held)."""
    info: dict[str, object] = {
        "pid": pid,
        "host": host,
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
        "purpose": "write checkout of branch 'main'",
    }
    (path / WRITER_LOCK_FILE).write_text(json.dumps(info) + "\n")
    return info


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _lock_is_free(path: Path) -> bool:
    with tc.Repository(path) as repo, repo.checkout(write=True):
        return True


def test_lock_release_refuses_a_live_holder(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with writer_in_subprocess(path) as holder:
        message = cli_error(capsys, path, "lock", "release")
        assert f"pid {holder.pid} on host {socket.gethostname()} since " in message
        assert "alive" in message and "--force" in message
        code, out, err = cli(capsys, path, "lock", "release", "--force", "--json")
        doc = json.loads(out)
        assert (code, err) == (0, "")
        assert doc["released"] and doc["forced"] and not doc["holder_dead"]
        assert doc["holder"]["pid"] == holder.pid
        assert _lock_is_free(path)
        assert holder.command("commit") == "refused"


def test_lock_release_refuses_this_process(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with tc.Repository(path) as repo, repo.checkout(write=True):
        assert f"pid {os.getpid()}" in cli_error(capsys, path, "lock", "release")


def test_lock_release_of_a_dead_holder(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pid = _dead_pid()
    _write_holder(path, pid, socket.gethostname())
    code, out, err = cli(capsys, path, "lock", "release")
    assert (code, err) == (0, "")
    assert f"released the writer lock held by pid {pid}" in out and "appears dead" in out
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing was left behind to take over
        assert _lock_is_free(path)


def test_lock_release_never_breaks_a_lock_taken_since_its_holder_was_read(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The holder record names a dead process, but the lock is held (a writer took it
    over between the look and the release): the release is refused, the lock stays."""
    with tc.Repository(path) as repo, repo.checkout(write=True) as co:
        dead = _dead_pid()
        with open(path / WRITER_LOCK_FILE, "r+") as f:  # the record, not the flock, is stale
            f.truncate(0)
            f.write(json.dumps({"pid": dead, "host": socket.gethostname(), "since": "x"}))
        message = cli_error(capsys, path, "lock", "release")
        assert f"pid {dead}" in message and "--force" in message
        # still the writer: its lock was not broken
        co.add_ndarray_column("x", shape=(), dtype="int64").update([0], np.zeros(1, np.int64))
        co.commit("still the writer")


def test_lock_release_of_a_holder_on_another_host(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_holder(path, 4242, "gpu-node-17.example")
    message = cli_error(capsys, path, "lock", "release")
    assert "pid 4242 on host gpu-node-17.example" in message
    assert "cannot be checked from here" in message and "--force" in message
    code, out, _ = cli(capsys, path, "lock", "release", "--force")
    assert code == 0 and "released the writer lock held by pid 4242" in out
    assert cli(capsys, path, "lock", "release")[1] == "no writer lock was held\n"


def test_lock_release_without_a_lock(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, path, "lock", "release") == (0, "no writer lock was held\n", "")
    doc = json.loads(cli(capsys, path, "lock", "release", "--json")[1])
    assert doc == {"released": False, "holder": None, "holder_dead": False, "forced": False}


def test_init_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        capsys, "-C", str(tmp_path), "init", "r", "--user-name", "Ada", "--user-email", "a@b.c"
    )
    assert code == 0
    code, out, _ = run_cli(capsys, "-C", str(tmp_path), "init", "s", "--json", "--user-name", "Bo")
    doc = json.loads(out)
    assert code == 0 and doc["path"] == str(tmp_path / "s") and doc["branch"] == "main"
    assert doc["user_name"] == "Bo"
