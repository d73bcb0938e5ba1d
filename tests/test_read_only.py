"""Read-only repositories: another user's files, a read-only mount, ``read_only=True``.

Tests run as root in CI, and root ignores permission bits, so the reading
side of a repository "owned by another user" runs in a subprocess as the
user ``nobody`` (uid 65534) when the tests run as root; otherwise the
repository is made unwritable with ``chmod -R a-w``. Either way the reader
checks every read path bit-exact, that every write raises ``ReadOnlyError``
naming the repository, and the test then checks that nothing in the
repository changed.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tensorcask as tc
from tensorcask.errors import ReadOnlyError

N = 12
LABEL0 = 1000
COLUMNS = ["images", "labels", "names", "blobs"]
NOBODY = 65534


def _image(k: int) -> np.ndarray:
    return ((np.arange(16) + 7 * k) % 256).astype(np.uint8).reshape(4, 4)


def _var(k: int) -> np.ndarray:
    return (np.arange(k % 4 + 1, dtype=np.float32) + k) / 3


def _name(k: int) -> str:
    return f"s{k}"


def _blob(k: int) -> bytes:
    return bytes([k % 256]) * (k % 3 + 1)


DATA = "\n".join(
    [f"N = {N}", f"LABEL0 = {LABEL0}", f"COLUMNS = {COLUMNS!r}"]
    + [inspect.getsource(f) for f in (_image, _var, _name, _blob)]
)

# The reading side: every read path, every write (expected to fail), the CLI.
READER = (
    """
import contextlib, io, json, os, sys
import numpy as np
import torch
from torch.utils.data import DataLoader
import tensorcask as tc
from tensorcask.cli import main
from tensorcask.loaders.torch import repo_dataset, repo_iterable_dataset
"""
    + DATA
    + """
path, mode, user = sys.argv[1], sys.argv[2], int(sys.argv[3])
if user >= 0:
    # The interpreter may live where that user cannot read (under /root, say),
    # so exec as that user may fail: load what the run needs, then drop root.
    import numpy.random, tensorcask.report, tensorcask.cli.history_commands, tensorcask.access
    for _ in DataLoader(list(range(4)), batch_size=2, num_workers=2,
                        multiprocessing_context="fork"):
        pass
    os.setgroups([])
    os.setgid(user)
    os.setuid(user)
    assert os.geteuid() == user and not os.access(path, os.W_OK)
out = {}
repo = tc.Repository(path, read_only=mode == "explicit")
out["read_only"] = repo.read_only
co = repo.checkout()
exact = []
for k in range(N):
    exact.append(bool(
        np.array_equal(co["images"][k], _image(k)) and co["images"][k].dtype == np.uint8
        and int(co["labels"][k]) == LABEL0 + k and co["names"][k] == _name(k)
        and co["blobs"][k] == _blob(k) and np.array_equal(co["var"][k], _var(k))
    ))
stacked = co["images"].get_many(list(range(N)))
exact.append(bool(np.array_equal(stacked, np.stack([_image(k) for k in range(N)]))))
out["exact"] = exact
out["dev_label0"] = int(repo.checkout(branch="dev")["labels"][0])
out["tag_label0"] = int(repo.checkout(commit="v1")["labels"][0])
out["log"] = [c.message for c in repo.log()]
out["log_dev"] = [c.message for c in repo.log("dev")]
out["diff"] = sorted(repo.diff("main", "dev").columns["labels"].changed)
report = repo.verify(full=True)
out["verify"] = [report.ok, report.samples]
out["summary"] = path in repo.summary()
out["branches"] = sorted(repo.branches)

def keys_of(batch):
    images, labels, names, blobs = batch
    keys = [int(v) - LABEL0 for v in labels.tolist()]
    assert list(names) == [_name(k) for k in keys], names
    assert list(blobs) == [_blob(k) for k in keys], blobs
    for i, k in enumerate(keys):
        assert np.array_equal(images[i].numpy(), _image(k)), k
    return keys

source = repo if mode == "explicit" else path
for workers in (0, 2):
    context = "fork" if workers else None
    ds = repo_dataset(source, COLUMNS)
    loader = DataLoader(ds, batch_size=5, num_workers=workers, multiprocessing_context=context)
    out[f"map_{workers}"] = sorted(k for batch in loader for k in keys_of(batch))
    it = repo_iterable_dataset(source, COLUMNS, shuffle=True, seed=3)
    loader = DataLoader(it, batch_size=5, num_workers=workers, multiprocessing_context=context)
    out[f"iter_{workers}"] = sorted(k for batch in loader for k in keys_of(batch))

def attempt(call):
    try:
        call()
    except Exception as exc:
        return [type(exc).__name__, str(exc)]
    return ["no error", ""]

def set_limit():
    repo.table_cache_limit = 1

writes = {
    "checkout_write": lambda: repo.checkout(write=True),
    "switch_branch": lambda: repo.checkout(write=True, branch="dev"),
    "new_branch_checkout": lambda: repo.checkout(write=True, branch="other"),
    "create_branch": lambda: repo.create_branch("new"),
    "create_tag": lambda: repo.create_tag("v2", "main"),
    "delete_branch": lambda: repo.delete_branch("dev", force=True),
    "merge": lambda: repo.merge("dev", into="main"),
    "gc": lambda: repo.gc(),
    "force_release_writer_lock": lambda: repo.force_release_writer_lock(),
    "column_write": lambda: co["labels"].__setitem__(0, np.int64(5)),
}
if hasattr(type(repo), "table_cache_limit"):
    writes["table_cache_limit"] = set_limit
out["writes"] = {name: attempt(call) for name, call in writes.items()}
out["current_branch"] = repo.current_branch

def cli(*args):
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["-C", path, *args])
    return [code, stdout.getvalue(), stderr.getvalue()]

if mode != "explicit":
    reads = [["status"], ["log"], ["summary"], ["verify", "--full"], ["diff", "main", "dev"],
             ["branch"], ["tag"], ["log", "--json", "dev"]]
    out["cli_reads"] = [cli(*args) for args in reads]
    out["cli_log"] = json.loads(out["cli_reads"][-1][1])["commits"][0]["message"]
    out["cli_writes"] = [cli(*args) for args in
                         [["branch", "x"], ["tag", "t3"], ["gc"], ["lock", "release"],
                          ["merge", "dev"], ["branch", "-D", "dev"]]]
repo.close()
print(json.dumps(out))
"""
)


def _build(path: Path) -> None:
    """Two commits on ``main`` and ``dev`` (label 0 changed), a tag, ``main`` current."""
    repo = tc.init(path, user_name="Ada", user_email="ada@example.org")
    keys = np.arange(N)
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("images", shape=(4, 4), dtype="uint8").update(
            keys, np.stack([_image(k) for k in range(N)])
        )
        co.add_ndarray_column("labels", shape=(), dtype="int64").update(keys, LABEL0 + keys)
        co.add_str_column("names").update({k: _name(k) for k in range(N)})
        co.add_bytes_column("blobs").update({k: _blob(k) for k in range(N)})
        co.add_ndarray_column("var", shape=(None,), dtype="float32", compression="gzip").update(
            {k: _var(k) for k in range(N)}
        )
        co.commit("first")
    repo.create_tag("v1", "main")
    repo.create_branch("dev")
    with repo.checkout(write=True, branch="dev") as co:
        co["labels"][0] = np.int64(999)
        co.commit("relabel")
    repo.checkout(write=True, branch="main").close()
    # One column's table cached on disk by its owner, the others not: a
    # read-only reader uses the first and builds the others in memory.
    from tensorcask.loaders.core import RepoSource

    RepoSource(repo, ["labels"]).read([0])
    repo.close()


def _snapshot(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, tuple[int, int, int]]:
    """Every entry under ``root``: (mode, size, mtime_ns); directories' size left out."""
    found: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if name in skip:
                continue
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size
            found[os.path.relpath(full, root)] = (st.st_mode, size, st.st_mtime_ns)
    return found


def _chmod_tree(root: Path, *, add: int = 0, remove: int = 0) -> None:
    """``chmod -R``: ``add`` bits to files (and search bits to directories), ``remove`` bits."""
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, (stat.S_IMODE(os.lstat(dirpath).st_mode) | add | 0o111) & ~remove)
        for name in filenames:
            full = os.path.join(dirpath, name)
            os.chmod(full, (stat.S_IMODE(os.lstat(full).st_mode) | add) & ~remove)


@pytest.fixture(scope="module")
def shared() -> Iterator[Path]:
    """A repository other users may read but not write (0755 directories up to /)."""
    base = Path(tempfile.mkdtemp(prefix="tensorcask-ro-"))
    base.chmod(0o755)
    path = base / "repo"
    _build(path)
    if os.geteuid() == 0:
        _chmod_tree(path, add=0o444)  # a+rX: readable by nobody, writable by root only
    else:
        _chmod_tree(path, remove=0o222)  # a-w
    try:
        yield path
    finally:
        _chmod_tree(base, add=0o200)
        shutil.rmtree(base, ignore_errors=True)


def _read(path: Path, mode: str, *, other_user: bool) -> dict[str, Any]:
    user = NOBODY if other_user and os.geteuid() == 0 else -1
    done = subprocess.run(
        [sys.executable, "-c", READER, str(path), mode, str(user)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=path.parent,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def _check_reads(out: dict[str, Any]) -> None:
    assert out["read_only"] is True
    assert out["exact"] == [True] * (N + 1)
    assert out["dev_label0"] == 999
    assert out["tag_label0"] == LABEL0
    assert out["log"] == ["first"]
    assert out["log_dev"] == ["relabel", "first"]
    assert out["diff"] == [0]
    ok, samples = out["verify"]
    assert ok and samples >= 5 * N
    assert out["summary"] is True
    assert out["branches"] == ["dev", "main"]
    for name in ("map_0", "map_2", "iter_0", "iter_2"):
        assert out[name] == list(range(N)), name
    assert out["current_branch"] == "main"


def _check_writes(out: dict[str, Any], path: Path, reason: str) -> None:
    writes = out["writes"]
    assert len(writes) >= 10
    for name, (kind, message) in writes.items():
        assert kind == "ReadOnlyError", (name, kind, message)
        if name != "column_write":  # a read checkout's own rule, with its own message
            assert str(path) in message, (name, message)
            assert reason in message, (name, message)


def test_repository_of_another_user_opens_read_only(shared: Path) -> None:
    before = _snapshot(shared)
    out = _read(shared, "auto", other_user=True)
    _check_reads(out)
    reason = "is not writable by"
    _check_writes(out, shared, reason)
    assert "writable copy" in out["writes"]["checkout_write"][1]
    for code, stdout, stderr in out["cli_reads"]:
        assert (code, stderr) == (0, ""), stdout
    assert out["cli_log"] == "relabel"
    for code, _, stderr in out["cli_writes"]:
        assert code == 1 and "read-only" in stderr and reason in stderr, stderr
    assert _snapshot(shared) == before


@contextlib.contextmanager
def _read_only_mount(source: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only bind mount needs root")
    target = Path(tempfile.mkdtemp(prefix="tensorcask-mnt-"))
    try:
        done = subprocess.run(
            ["mount", "-o", "bind,ro", str(source), str(target)], capture_output=True, timeout=30
        )
        if done.returncode != 0:
            pytest.skip(f"cannot bind-mount here: {done.stderr.decode(errors='replace')}")
        try:
            if os.access(target, os.W_OK):  # older kernels ignore ro on the first bind
                subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], timeout=30)
            if os.access(target, os.W_OK):
                pytest.skip("the bind mount is not read-only here")
            yield target
        finally:
            subprocess.run(["umount", str(target)], capture_output=True, timeout=60)
    finally:
        with contextlib.suppress(OSError):
            target.rmdir()


def test_repository_on_a_read_only_mount_opens_read_only(shared: Path) -> None:
    before = _snapshot(shared)
    with _read_only_mount(shared.parent) as mounted:
        path = mounted / shared.name
        out = _read(path, "auto", other_user=False)  # as root: only the mount stops writes
    _check_reads(out)
    _check_writes(out, path, "is on a read-only file system")
    for code, stdout, stderr in out["cli_reads"]:
        assert (code, stderr) == (0, ""), stdout
    assert _snapshot(shared) == before


def test_explicit_read_only_on_a_writable_repository(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    _build(path)
    # lock.mdb is LMDB's reader table: a read-only handle on a writable
    # repository still registers its readers there, to coordinate with writers.
    before = _snapshot(path, skip=("lock.mdb",))
    out = _read(path, "explicit", other_user=False)
    _check_reads(out)
    _check_writes(out, path, "read_only=True")
    assert _snapshot(path, skip=("lock.mdb",)) == before


def test_read_only_handle_and_writer_share_a_process(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    _build(path)
    reader = tc.Repository(path, read_only=True)
    assert reader.read_only and "read-only" in repr(reader)
    with pytest.raises(ReadOnlyError, match="read_only=True"):
        reader.checkout(write=True)
    writer = tc.Repository(path)
    assert not writer.read_only
    with writer.checkout(write=True) as co:
        co["labels"][1] = np.int64(7)
        commit = co.commit("after")
    assert reader.log()[0].id == commit  # the read-only handle sees new commits
    with reader.checkout() as co:
        assert int(co["labels"][1]) == 7
    with pytest.raises(ReadOnlyError, match=str(path)):
        reader.create_branch("b")
    reader.close()
    writer.close()


def test_read_only_is_keyword_only(tmp_path: Path) -> None:
    tc.init(tmp_path / "repo").close()
    with pytest.raises(TypeError):
        tc.Repository(tmp_path / "repo", True)  # type: ignore[misc]
    repo = tc.Repository(tmp_path / "repo", read_only=False)
    assert repo.read_only is False
    repo.close()
