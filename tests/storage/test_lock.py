"""The writer lock, exercised with real processes (no mocks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tensorcask.errors import CaskError, WriterLockError
from tensorcask.storage.lock import WriterLock, force_release, holder_is_dead, read_holder

REPO_ROOT = Path(__file__).resolve().parents[2]

# Takes the lock, says "ready", then waits for a line on stdin: "check" makes
# it call check_owned() and report through stdout and its exit code.
HOLDER_SCRIPT = """
import sys
from tensorcask.errors import WriterLockError
from tensorcask.storage.lock import WriterLock

lock = WriterLock(sys.argv[1])
lock.acquire("test holder")
print("ready", flush=True)
command = sys.stdin.readline().strip()
if command == "check":
    try:
        lock.check_owned()
    except WriterLockError as e:
        print("lost:", e, flush=True)
        lock.release()
        sys.exit(3)
    print("owned", flush=True)
lock.release()
"""


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    return tmp_path / "writer.lock"


@pytest.fixture
def spawn_holder(lock_path: Path) -> Iterator[Callable[[], subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def spawn() -> subprocess.Popen[str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER_SCRIPT, str(lock_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"lock holder did not start: {line!r}\n{err}")
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_acquire_release_reacquire(lock_path: Path) -> None:
    lock = WriterLock(lock_path)
    assert not lock.held
    lock.acquire()
    assert lock.held
    info = lock.holder()
    assert info is not None
    assert info["pid"] == os.getpid()
    assert info["host"] == socket.gethostname()
    assert info["purpose"] == "write checkout"
    assert "T" in info["since"] and info["since"].endswith("+00:00")
    lock.check_owned()
    lock.release()
    assert not lock.held

    # A clean release leaves nothing stale behind: no takeover warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lock.acquire("again")
    again = read_holder(lock_path)
    assert again is not None and again["purpose"] == "again" and again["pid"] == os.getpid()
    lock.release()


def test_context_manager(lock_path: Path) -> None:
    with WriterLock(lock_path) as lock:
        assert lock.held
        with pytest.raises(WriterLockError):
            WriterLock(lock_path).acquire()
    assert not lock.held
    WriterLock(lock_path).acquire()


def test_second_acquire_in_same_process_fails(lock_path: Path) -> None:
    first = WriterLock(lock_path)
    first.acquire()
    second = WriterLock(lock_path)
    with pytest.raises(WriterLockError) as excinfo:
        second.acquire()
    message = str(excinfo.value)
    assert f"pid {os.getpid()}" in message
    assert socket.gethostname() in message
    assert "force_release_writer_lock" in message
    assert "tensorcask lock release" in message
    assert not second.held
    # The failed attempt must not have disturbed the holder.
    first.check_owned()
    assert read_holder(lock_path) is not None
    # Nor may the same instance take it twice.
    with pytest.raises(WriterLockError):
        first.acquire()
    first.release()
    second.acquire()
    second.release()


def test_other_process_holds_then_dies(
    lock_path: Path, spawn_holder: Callable[[], subprocess.Popen[str]]
) -> None:
    holder = spawn_holder()
    with pytest.raises(WriterLockError) as excinfo:
        WriterLock(lock_path).acquire()
    message = str(excinfo.value)
    assert f"pid {holder.pid}" in message
    assert socket.gethostname() in message
    assert "test holder" in message

    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    stale = read_holder(lock_path)
    assert stale is not None and stale["pid"] == holder.pid
    assert holder_is_dead(stale)

    lock = WriterLock(lock_path)
    with pytest.warns(RuntimeWarning, match=rf"pid {holder.pid}\b.*taken over"):
        lock.acquire()
    assert lock.holder()["pid"] == os.getpid()  # type: ignore[index]
    lock.release()


def test_force_release_while_other_process_holds(
    lock_path: Path, spawn_holder: Callable[[], subprocess.Popen[str]]
) -> None:
    holder = spawn_holder()
    with pytest.raises(WriterLockError):
        WriterLock(lock_path).acquire()

    previous = force_release(lock_path)
    assert previous is not None and previous["pid"] == holder.pid
    assert read_holder(lock_path) is None

    lock = WriterLock(lock_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fresh file: nothing stale to report
        lock.acquire("new writer")
    lock.check_owned()

    out, err = holder.communicate("check\n", timeout=60)
    assert holder.returncode == 3, (out, err)
    assert out.startswith("lost:") and "force-released" in out
    # The old holder's release must not clear the new holder's information.
    info = lock.holder()
    assert info is not None and info["pid"] == os.getpid() and info["purpose"] == "new writer"
    lock.check_owned()
    lock.release()


def test_force_release_in_same_process(lock_path: Path) -> None:
    old = WriterLock(lock_path)
    old.acquire()
    assert force_release(lock_path)["pid"] == os.getpid()  # type: ignore[index]
    with pytest.raises(WriterLockError, match="force-released"):
        old.check_owned()
    new = WriterLock(lock_path)
    new.acquire()
    old.release()
    assert new.holder() is not None
    new.check_owned()
    new.release()


def test_force_release_without_holder(lock_path: Path) -> None:
    assert force_release(lock_path) is None
    assert lock_path.exists() and read_holder(lock_path) is None
    assert [p.name for p in lock_path.parent.iterdir()] == ["writer.lock"]


def test_release_is_idempotent(lock_path: Path) -> None:
    lock = WriterLock(lock_path)
    lock.release()
    lock.acquire()
    lock.release()
    lock.release()
    assert lock.holder() is None
    assert read_holder(lock_path) is None
    with pytest.raises(WriterLockError, match="not held"):
        lock.check_owned()


def test_error_is_a_permission_error(lock_path: Path) -> None:
    with WriterLock(lock_path), pytest.raises(PermissionError) as excinfo:
        WriterLock(lock_path).acquire()
    assert isinstance(excinfo.value, CaskError)


def test_forked_child_cannot_release_parents_lock(lock_path: Path) -> None:
    lock = WriterLock(lock_path)
    lock.acquire()
    pid = os.fork()
    if pid == 0:  # child: its inherited copy is already dropped
        code = 0 if not lock.held else 1
        lock.release()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    lock.check_owned()
    assert lock.holder()["pid"] == os.getpid()  # type: ignore[index]
    with pytest.raises(WriterLockError):
        WriterLock(lock_path).acquire()
    lock.release()


def test_holder_is_dead() -> None:
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    assert not holder_is_dead(me)
    assert not holder_is_dead(None)
    assert not holder_is_dead({**me, "pid": 0})
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    gone = {"pid": proc.pid, "host": socket.gethostname()}
    assert holder_is_dead(gone)
    assert not holder_is_dead({**gone, "host": socket.gethostname() + ".elsewhere"})
