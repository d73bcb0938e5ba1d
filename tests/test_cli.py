"""The ``tensorcask`` command line, in-process through ``main`` and as a real subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import tensorcask as tc
from tensorcask.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAPE = (28, 28)


def _batch(start: int, count: int) -> np.ndarray:
    """Distinct images: every sample's bytes differ from every other's."""
    base = np.arange(SHAPE[0] * SHAPE[1], dtype=np.uint32).reshape(SHAPE)
    return np.stack(
        [((base * (i + 1) + i) % 251).astype(np.uint8) for i in range(start, start + count)]
    )


def _keys(start: int, count: int) -> list[str]:
    return [str(i) for i in range(start, start + count)]


# Holds a write checkout in another process until told to "commit" (it then
# tries to, and reports "committed" or "refused") or "close".
HOLDER_SCRIPT = """
import sys
import numpy as np
import tensorcask as tc

repo = tc.Repository(sys.argv[1])
co = repo.checkout(write=True)
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "commit":
        try:
            co["images"]["late"] = np.zeros((28, 28), dtype="uint8")
            co.commit("late")
            print("committed", flush=True)
        except tc.WriterLockError:
            print("refused", flush=True)
    else:
        break
try:
    co.close()
except tc.WriterLockError:
    pass
repo.close()
"""


class Holder:
    """A child process holding a write checkout of a repository."""

    def __init__(self, path: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER_SCRIPT, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.pid = self.proc.pid
        assert self.read() == "ready"

    def read(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def command(self, text: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write("close\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def writer_in_subprocess(path: Path) -> Iterator[Holder]:
    holder = Holder(path)
    try:
        yield holder
    finally:
        holder.close()


@pytest.fixture
def empty_repo(tmp_path: Path) -> Path:
    path = tmp_path / "r"
    tc.init(path, user_name="Ada", user_email="ada@example.org").close()
    return path


@pytest.fixture
def filled(empty_repo: Path) -> tuple[Path, list[str]]:
    """A repository with two commits on main; returns its path and ids newest first."""
    repo = tc.Repository(empty_repo)
    co = repo.checkout(write=True)
    assert isinstance(co, tc.WriteCheckout)
    col = co.add_ndarray_column("images", shape=SHAPE, dtype="uint8")
    col.update(_keys(0, 5), _batch(0, 5))
    first = co.commit("first commit")
    co["images"].update(_keys(5, 3), _batch(5, 3))
    second = co.commit("second commit\n\nwith a body")
    co.close()
    repo.close()
    return empty_repo, [second, first]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tensorcask: error: ")
    assert "Traceback" not in err
    return lines[0]


def run_subprocess(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "tensorcask", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# -- init ---------------------------------------------------------------------


def test_init_creates_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "new"
    code, out, err = run_cli(
        capsys, "init", str(target), "--user-name", "Ada", "--user-email", "ada@example.org"
    )
    assert (code, err) == (0, "")
    assert str(target) in out
    with tc.Repository(target) as repo:
        assert repo.config == {"user_name": "Ada", "user_email": "ada@example.org"}


def test_init_relative_to_C_and_default_identity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "-C", str(tmp_path), "--quiet", "init", "sub")
    assert (code, out) == (0, "")
    with tc.Repository(tmp_path / "sub") as repo:
        assert repo.config["user_name"] and repo.config["user_email"]


def test_init_into_non_empty_directory_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "full"
    target.mkdir()
    (target / "notes.txt").write_text("hello")
    code, out, err = run_cli(capsys, "init", str(target))
    assert code == 1 and out == ""
    assert "not empty" in assert_one_error_line(err)
    assert not (target / "TENSORCASK").exists()


def test_init_over_existing_repository_fails(
    empty_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "init", str(empty_repo))
    assert code == 1
    assert "already exists" in assert_one_error_line(err)


# -- status -------------------------------------------------------------------


def test_status_empty_repository(empty_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "-C", str(empty_repo), "status")
    assert (code, err) == (0, "")
    assert "On branch main" in out
    assert "no commits yet" in out
    assert "staged changes: none" in out
    assert "writer lock: free" in out

    code, out, _ = run_cli(capsys, "-C", str(empty_repo), "status", "--json")
    doc = json.loads(out)
    assert code == 0
    assert doc["branch"] == "main" and doc["head"] is None
    assert doc["staged_changes"] is False and doc["writer_lock"] is None


def test_status_non_empty_with_staged_changes(
    filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, ids = filled
    code, out, _ = run_cli(capsys, "-C", str(path), "status")
    assert code == 0
    assert f"head: {ids[0]}" in out and "staged changes: none" in out

    with tc.Repository(path) as repo, repo.checkout(write=True) as co:
        co["images"].update(["extra"], _batch(20, 1))
    code, out, _ = run_cli(capsys, "-C", str(path), "status", "--json")
    doc = json.loads(out)
    assert code == 0
    assert doc["head"] == ids[0] and doc["staged_changes"] is True


def test_status_shows_writer_lock_holder(
    filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = filled
    with writer_in_subprocess(path) as holder:
        code, out, _ = run_cli(capsys, "-C", str(path), "status")
        assert code == 0
        assert f"writer lock: held by pid {holder.pid} on host " in out
        code, out, _ = run_cli(capsys, "-C", str(path), "status", "--json")
        lock = json.loads(out)["writer_lock"]
        assert lock["pid"] == holder.pid and lock["host"] and lock["since"]
    code, out, _ = run_cli(capsys, "-C", str(path), "status")
    assert "writer lock: free" in out


def test_status_with_writer_in_this_process(
    filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = filled
    with tc.Repository(path) as repo, repo.checkout(write=True):
        code, out, _ = run_cli(capsys, "-C", str(path), "status")
    assert code == 0
    assert f"writer lock: held by pid {os.getpid()}" in out


# -- log ----------------------------------------------------------------------


def test_log_text(filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    path, ids = filled
    code, out, err = run_cli(capsys, "-C", str(path), "log")
    assert (code, err) == (0, "")
    assert out.index(f"commit {ids[0]}") < out.index(f"commit {ids[1]}")
    assert out.count("Author: Ada <ada@example.org>") == 2
    assert "    second commit\n" in out and "    with a body\n" in out
    assert "    first commit\n" in out
    assert "Date:   20" in out and "+00:00" in out


def test_log_oneline_and_limit(
    filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, ids = filled
    code, out, _ = run_cli(capsys, "-C", str(path), "log", "--oneline")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    short, message = lines[0].split(" ", 1)
    assert ids[0].startswith(short) and len(short) < 40 and message == "second commit"
    assert lines[1].endswith(" first commit")

    code, out, _ = run_cli(capsys, "-C", str(path), "log", "--oneline", "-n", "1")
    assert code == 0 and out.splitlines() == [lines[0]]


def test_log_json(filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    path, ids = filled
    code, out, _ = run_cli(capsys, "-C", str(path), "log", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["ref"] == "main"
    assert [c["id"] for c in doc["commits"]] == ids
    newest = doc["commits"][0]
    assert newest["parents"] == [ids[1]]
    assert newest["author"] == "Ada" and newest["email"] == "ada@example.org"
    assert newest["message"] == "second commit\n\nwith a body"
    with tc.Repository(path) as repo:
        assert newest["time"] == repo.log(limit=1)[0].time.isoformat()
    assert newest["time"].endswith("+00:00")


def test_log_ref_prefix_and_tag(
    filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, ids = filled
    code, out, _ = run_cli(capsys, "-C", str(path), "log", "--oneline", ids[1][:6].upper())
    assert code == 0 and len(out.splitlines()) == 1 and "first commit" in out
    with tc.Repository(path) as repo:
        repo.create_tag("v1", ids[1])
    code, out, _ = run_cli(capsys, "-C", str(path), "log", "v1", "--json")
    assert [c["id"] for c in json.loads(out)["commits"]] == [ids[1]]


def test_log_empty_repository(empty_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "-C", str(empty_repo), "log") == (0, "", "")


def test_log_unknown_ref(
    filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = filled
    code, out, err = run_cli(capsys, "-C", str(path), "log", "no-such-branch")
    assert code == 1 and out == ""
    line = assert_one_error_line(err)
    assert "no-such-branch" in line
    assert not line.startswith('tensorcask: error: "')  # KeyError quotes are stripped


def test_log_negative_limit_is_usage_error(
    filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = filled
    code, _, err = run_cli(capsys, "-C", str(path), "log", "-n", "-1")
    assert code == 2 and "usage:" in err


# -- summary, verify, gc ------------------------------------------------------


def test_summary(filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    path, ids = filled
    code, out, _ = run_cli(capsys, "-C", str(path), "summary")
    assert code == 0
    assert str(path) in out and ids[0] in out and "images" in out

    code, out, _ = run_cli(capsys, "-C", str(path), "summary", "--json")
    doc = json.loads(out)
    assert code == 0
    assert doc["head"]["id"] == ids[0] and doc["branches"] == {"main": ids[0]}
    assert doc["disk_usage_bytes"] > 0
    assert doc["columns"] == [
        {
            "name": "images",
            "kind": "ndarray",
            "dtype": "uint8",
            "shape": [28, 28],
            "max_shape": [28, 28],
            "count": 8,
        }
    ]


def test_summary_empty_repository(empty_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "-C", str(empty_repo), "summary", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["head"] is None and doc["columns"] == []


def test_verify_ok(filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    path, ids = filled
    code, out, err = run_cli(capsys, "-C", str(path), "verify", "--full")
    assert (code, err) == (0, "")
    assert "2 commits" in out and "ok" in out

    code, out, _ = run_cli(capsys, "-C", str(path), "verify", ids[1], "--json")
    doc = json.loads(out)
    assert code == 0
    assert doc["ok"] is True and doc["commits"] == 1 and doc["problems"] == []


def _flip_sample_byte(path: Path, sample: np.ndarray) -> None:
    """Flip the first byte of ``sample``'s stored bytes under data/memmap/."""
    needle = sample.tobytes()
    for file in sorted((path / "data" / "memmap").rglob("*")):
        if not file.is_file():
            continue
        data = bytearray(file.read_bytes())
        at = data.find(needle)
        if at >= 0:
            data[at] ^= 0xFF
            file.write_bytes(bytes(data))
            return
    raise AssertionError("sample bytes not found under data/memmap/")


def test_verify_full_finds_flipped_byte(
    filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = filled
    _flip_sample_byte(path, _batch(3, 1)[0])  # the sample of key "3"

    code, out, err = run_cli(capsys, "-C", str(path), "verify", "--full")
    assert code == 1
    assert "problem" in out and "'images'" in out and "'3'" in out
    line = assert_one_error_line(err)
    assert "'images'" in line and "'3'" in line

    code, out, _ = run_cli(capsys, "-C", str(path), "verify", "--full", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False
    assert len(doc["problems"]) == 1 and "'images'" in doc["problems"][0]


def test_verify_unknown_ref(
    filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = filled
    code, _, err = run_cli(capsys, "-C", str(path), "verify", "nope")
    assert code == 1 and "'nope'" in assert_one_error_line(err)


def test_gc(filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = filled
    code, out, _ = run_cli(capsys, "-C", str(path), "gc")
    assert code == 0 and out.startswith("removed ")
    code, out, _ = run_cli(capsys, "-C", str(path), "gc", "--json")
    doc = json.loads(out)
    assert code == 0
    assert set(doc) == {"commits", "objects", "samples", "segments", "bytes_freed"}
    assert doc["commits"] == 0
    code, out, _ = run_cli(capsys, "-C", str(path), "verify", "--full")
    assert code == 0


def test_gc_while_writer_open_fails(
    filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = filled
    with writer_in_subprocess(path) as holder:
        code, _, err = run_cli(capsys, "-C", str(path), "gc")
    assert code == 1
    assert f"pid {holder.pid}" in assert_one_error_line(err)


# -- lock release ---------------------------------------------------------------


def test_lock_release(filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = filled
    with writer_in_subprocess(path) as holder:
        code, out, err = run_cli(capsys, "-C", str(path), "lock", "release")
        assert code == 1 and f"pid {holder.pid}" in assert_one_error_line(err)  # alive
        code, out, err = run_cli(capsys, "-C", str(path), "lock", "release", "--force")
        assert (code, err) == (0, "")
        assert f"released the writer lock held by pid {holder.pid} on host " in out
        with tc.Repository(path) as repo, repo.checkout(write=True):
            pass  # the lock is free again
        assert holder.command("commit") == "refused"  # the old holder can no longer commit
    code, out, _ = run_cli(capsys, "-C", str(path), "lock", "release")
    assert code == 0 and "no writer lock was held" in out


def test_lock_release_with_writer_in_this_process(
    filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = filled
    with tc.Repository(path) as repo:
        co = repo.checkout(write=True)
        assert isinstance(co, tc.WriteCheckout)
        try:
            code, out, _ = run_cli(capsys, "-C", str(path), "lock", "release", "--force")
            assert code == 0
            assert f"released the writer lock held by pid {os.getpid()}" in out
            with pytest.raises(tc.WriterLockError):
                co["images"]["late"] = _batch(30, 1)[0]
                co.commit("late")
        finally:
            co.close()


# -- locating the repository ----------------------------------------------------


def test_C_path_that_is_not_a_repository(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "-C", str(tmp_path), "status")
    assert code == 1 and out == ""
    assert str(tmp_path) in assert_one_error_line(err)


def test_C_does_not_search_parents(
    filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = filled
    code, _, err = run_cli(capsys, "-C", str(path / "data"), "status")
    assert code == 1
    assert_one_error_line(err)


def test_searches_parent_directories(
    filled: tuple[Path, list[str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, ids = filled
    monkeypatch.chdir(path / "data" / "memmap")
    code, out, _ = run_cli(capsys, "status", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["path"] == str(path) and doc["head"] == ids[0]
    code, out, _ = run_cli(capsys, "log", "--oneline", "-n", "1")
    assert code == 0 and "second commit" in out


def test_outside_any_repository(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "log")
    assert code == 1
    assert "not a tensorcask repository" in assert_one_error_line(err)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (KeyError("no column 'x' in this checkout"), "no column 'x' in this checkout"),
        (ValueError("bad key\nsecond line"), "bad key; second line"),
        (TypeError("wrong type"), "wrong type"),
        (PermissionError("read-only"), "read-only"),
    ],
)
def test_library_errors_become_one_line(
    filled: tuple[Path, list[str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    expected: str,
) -> None:
    path, _ = filled

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(tc.Repository, "log", fail)
    code, out, err = run_cli(capsys, "-C", str(path), "log")
    assert code == 1 and out == ""
    assert assert_one_error_line(err) == f"tensorcask: error: {expected}"


# -- global options and usage -----------------------------------------------------


def test_version_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"tensorcask {tc.__version__}"
    code, _, err = run_cli(capsys)
    assert code == 2 and "usage:" in err
    code, _, err = run_cli(capsys, "frobnicate")
    assert code == 2 and "invalid choice" in err
    code, _, err = run_cli(capsys, "lock")
    assert code == 2


def test_quiet_after_command(
    filled: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = filled
    assert run_cli(capsys, "-C", str(path), "verify", "--quiet") == (0, "", "")
    assert run_cli(capsys, "-C", str(path), "-q", "gc") == (0, "", "")


# -- through a real subprocess ------------------------------------------------------


def test_subprocess_success(filled: tuple[Path, list[str]], tmp_path: Path) -> None:
    path, ids = filled
    result = run_subprocess("-C", str(path), "log", "--oneline", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert [line.split()[0] for line in result.stdout.splitlines()] == [
        i[: len(result.stdout.split()[0])] for i in ids
    ]


def test_subprocess_unknown_ref(filled: tuple[Path, list[str]], tmp_path: Path) -> None:
    path, _ = filled
    result = run_subprocess("log", "nope-ref", cwd=path / "data")
    assert result.returncode == 1
    assert "nope-ref" in assert_one_error_line(result.stderr)
    assert result.stdout == ""


def test_subprocess_not_a_repository(tmp_path: Path) -> None:
    result = run_subprocess("-C", str(tmp_path), "status", "--json", cwd=tmp_path)
    assert result.returncode == 1
    assert_one_error_line(result.stderr)


def test_subprocess_init_non_empty(tmp_path: Path) -> None:
    (tmp_path / "junk").write_text("x")
    result = run_subprocess("init", "--user-name", "Ada", cwd=tmp_path)
    assert result.returncode == 1
    assert "not empty" in assert_one_error_line(result.stderr)


def test_subprocess_usage_error(tmp_path: Path) -> None:
    result = run_subprocess("log", "--no-such-option", cwd=tmp_path)
    assert result.returncode == 2
    assert "usage:" in result.stderr and "Traceback" not in result.stderr


def test_subprocess_status_shows_other_process_holder(
    filled: tuple[Path, list[str]], tmp_path: Path
) -> None:
    path, _ = filled
    with tc.Repository(path) as repo, repo.checkout(write=True):
        result = run_subprocess("-C", str(path), "status", "--json", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["writer_lock"]["pid"] == os.getpid()
        result = run_subprocess("-C", str(path), "gc", cwd=tmp_path)
        assert result.returncode == 1
        assert "held by" in assert_one_error_line(result.stderr)


def test_progress_shows_on_a_terminal_only(tmp_path: Path) -> None:
    import pty

    path = tmp_path / "r"
    repo = tc.init(path, user_name="Ada", user_email="ada@example.org")
    co = repo.checkout(write=True)
    co.add_ndarray_column("x", shape=(), dtype="int64").update(np.arange(9000), np.arange(9000))
    co.commit("9000 samples")
    co.close()
    repo.close()
    command = [sys.executable, "-m", "tensorcask", "-C", str(path), "verify", "--full"]
    piped = subprocess.run(command, capture_output=True, text=True, check=False)
    assert piped.returncode == 0 and piped.stderr == ""
    leader, follower = pty.openpty()
    tty_run = subprocess.run(command, stdout=subprocess.PIPE, stderr=follower, check=False)
    os.close(follower)
    shown = os.read(leader, 4096).decode()
    os.close(leader)
    assert tty_run.returncode == 0
    assert "verifying samples: 9,000" in shown
    assert "re-reading samples: 9,000" in shown
    quiet = subprocess.run([*command, "--quiet"], capture_output=True, check=False)
    assert quiet.stderr == b""
