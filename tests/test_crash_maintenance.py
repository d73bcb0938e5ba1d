"""Crash safety of maintenance: ``kill -9`` during content-index merges and ``gc``.

Extends ``test_crash.py`` (which kills a writer at random moments of its
write/commit cycle) to the two maintenance paths that rewrite files:

* **index merges**: the child lowers ``RECENT_LIMIT`` and ``FANOUT`` so that
  the content index writes a run file every other commit and merges runs
  tier after tier; the parent kills it just after a compaction started (or at
  a random moment);
* **gc**: the child commits junk on a branch, deletes the branch, commits on
  ``main`` and runs ``repo.gc()``; the parent kills it while gc runs (or at a
  random moment).

After each kill the repository opens, every commit logged by the child (its
id is fsynced to a side log after ``commit()`` returned) is on ``main`` and
reads back bit-exact, at most one more (unlogged, complete) commit is there,
and ``verify(full=True)`` passes. At the end ``gc()`` runs to completion and
everything is checked again. Values are pure functions of the key, so the
parent knows what every commit must hold. ``TENSORCASK_CRASH_SEED`` replays a
data plan (kill timing stays random).
"""

from __future__ import annotations

import inspect
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np

import tensorcask as tc

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("TENSORCASK_CRASH_SEED", "314159"))
B = 40  # x keys each commit adds
RECENT_LIMIT = 64  # the child's content-index limit: a run file every other commit
FANOUT = 2  # the child's merge fan-out: merges cascade through the tiers
MERGE_ROUNDS = 8
GC_ROUNDS = 6
JUNK = 120  # samples the junk branch holds for gc to collect


def x_value(k):
    """The two int64 values of key ``k`` of column "x"."""
    return [k * 7_919 + 1, k * 104_729 - 3]


def s_value(n):
    """The str commit ``n`` stores under key ``f"s{n}"`` of column "s"."""
    return f"commit-{n}:" + "\u00e9\u2713" * (n % 5)


def junk_x(n, k):
    return [-(n * 1_000_003 + k), n]


CHILD_MAIN = r"""
import os
import sys
import time
import warnings

import numpy as np

import tensorcask as tc
import tensorcask.storage.index as index

mode, repo_path, log_path = sys.argv[1], sys.argv[2], sys.argv[3]
B, JUNK = int(sys.argv[4]), int(sys.argv[5])
index.RECENT_LIMIT = int(sys.argv[6])
index.FANOUT = int(sys.argv[7])


def mark(what):
    os.write(1, (what + "\n").encode())


# announce compactions and run writes (merges write runs too) to the parent
_compact = index.ContentIndex.compact


def compact(self, *args, **kwargs):
    mark("compact")
    started = time.monotonic()
    out = _compact(self, *args, **kwargs)
    mark(f"compact-done {time.monotonic() - started:.5f}")
    return out


index.ContentIndex.compact = compact
if hasattr(index, "write_run"):
    _write_run = index.write_run

    def write_run(*args, **kwargs):
        mark("run-write")
        out = _write_run(*args, **kwargs)
        mark("run-written")
        return out

    index.write_run = write_run

warnings.filterwarnings("ignore", message=".*taken over", category=RuntimeWarning)
repo = tc.Repository(repo_path)
co = repo.checkout(write=True)  # the current branch: drop what a killed writer staged
co.reset_staging_area()
co.close()
if repo.current_branch != "main":  # killed while on the junk branch
    repo.checkout(write=True, branch="main").close()
head = repo.log("main", limit=1)[0]
n = int(head.message.split()[1])
log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
mark("ready")
while True:
    n += 1
    if mode == "gc":
        if "junk" in repo.branches:
            repo.delete_branch("junk", force=True)
        repo.create_branch("junk", base="main")
        with repo.checkout(write=True, branch="junk") as co:
            keys = list(range(10**6, 10**6 + JUNK))
            co["x"].update(keys, np.array([junk_x(n, k) for k in keys], dtype=np.int64))
            for i in range(JUNK // 10):
                co["s"][f"junk{i}"] = f"junk {n} {i} " * 5
            co.commit(f"junk {n}")
    with repo.checkout(write=True, branch="main") as co:
        x = co["x"]
        for lo in (n * B, n * B + B // 2):  # two writes: compactions can hit between them
            keys = list(range(lo, lo + B // 2))
            x.update(keys, np.array([x_value(k) for k in keys], dtype=np.int64))
        co["s"][f"s{n}"] = s_value(n)
        cid = co.commit(f"commit {n}")
    os.write(log_fd, f"{n} {cid}\n".encode())
    os.fsync(log_fd)
    if mode == "gc":
        repo.delete_branch("junk", force=True)
        mark("gc")
        started = time.monotonic()
        repo.gc()
        mark(f"gc-done {time.monotonic() - started:.5f}")
"""


def _child_script() -> str:
    parts = [textwrap.dedent(inspect.getsource(f)) for f in (x_value, s_value, junk_x)]
    return CHILD_MAIN.replace(
        "import tensorcask.storage.index as index\n",
        "import tensorcask.storage.index as index\n\n" + "\n\n".join(parts) + "\n",
        1,
    )


SCRIPT = _child_script()


# -- the parent -----------------------------------------------------------------


def _init(path: Path, log_path: Path) -> dict[int, str]:
    repo = tc.init(path, user_name="Crash Test", user_email="crash@example.org")
    try:
        assert repo.current_branch == "main"
        with repo.checkout(write=True) as co:
            x = co.add_ndarray_column("x", shape=(2,), dtype="int64")
            co.add_str_column("s")
            x.update(list(range(B)), np.array([x_value(k) for k in range(B)], dtype=np.int64))
            co["s"]["s0"] = s_value(0)
            first = co.commit("commit 0")
    finally:
        repo.close()
    log_path.write_text(f"0 {first}\n")
    return {0: first}


class Killer:
    """Starts the child and kills it at a chosen moment; remembers phase timings."""

    def __init__(self, mode: str, repo: Path, log: Path, err: Path, rng: random.Random):
        self.mode, self.repo, self.log, self.err, self.rng = mode, repo, log, err, rng
        self.durations: list[float] = []  # of the targeted phase, as the child reports them
        self.in_phase = 0  # kills that landed inside the targeted phase
        self.kills = 0

    def round(self, where: str) -> str:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        args = [str(B), str(JUNK), str(RECENT_LIMIT), str(FANOUT)]
        with open(self.err, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", SCRIPT, self.mode, str(self.repo), str(self.log), *args],
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                bufsize=0,
            )
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        phase, done = ("compact", "compact-done") if self.mode == "merge" else ("gc", "gc-done")
        random_kill = self.rng.random() < 0.25
        skip = self.rng.randrange(3)
        est = float(np.median(self.durations)) if self.durations else 0.01
        buffer, markers, deadline, kill_at = b"", [], time.monotonic() + 60, None
        inside = False
        try:
            while True:
                now = time.monotonic()
                if kill_at is not None and now >= kill_at:
                    break
                wait = min(deadline, kill_at or deadline) - now
                assert wait > 0, f"{where}: the child never reached a {phase!r} ({markers[-5:]})"
                ready, _, _ = select.select([fd], [], [], wait)
                if not ready:
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise AssertionError(
                        f"{where}: the child exited on its own ({proc.wait()}) before it was "
                        f"killed:\n{self.err.read_text(errors='replace')[-3000:]}"
                    )
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in (ln.decode() for ln in lines):
                    markers.append(line)
                    if line == phase:
                        inside = True
                    elif line.startswith(done):
                        inside = False
                        self.durations.append(float(line.split()[1]))
                    if kill_at is not None:
                        continue
                    if random_kill and line == "ready":
                        kill_at = time.monotonic() + self.rng.uniform(0.05, 0.8)
                    elif not random_kill and line == phase:
                        if skip == 0:
                            kill_at = time.monotonic() + self.rng.uniform(0, est)
                        skip -= 1
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            # markers the child wrote before it died
            ready, _, _ = select.select([fd], [], [], 0)
            rest = os.read(fd, 1 << 16) if ready else b""
            for line in (ln.decode() for ln in (buffer + rest).split(b"\n") if ln):
                markers.append(line)
                if line == phase:
                    inside = True
                elif line.startswith(done):
                    inside = False
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL, (
            f"{where}: the child exited with {proc.returncode} before it was killed:\n"
            f"{self.err.read_text(errors='replace')[-3000:]}"
        )
        self.kills += 1
        self.in_phase += inside
        last = markers[-1] if markers else "nothing"
        return f"{'random' if random_kill else 'targeted'} kill, last marker {last!r}"


def _read_side_log(path: Path) -> dict[int, str]:
    """The complete lines of the side log; a torn last line is cut off the file."""
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    out = {}
    for line in complete.decode().splitlines():
        n, cid = line.split()
        out[int(n)] = cid
    return out


def _check_commit(repo: tc.Repository, n: int, cid: str, where: str) -> None:
    with repo.checkout(commit=cid) as rc:
        x, s = rc["x"], rc["s"]
        keys = x.keys()
        want_keys = list(range((n + 1) * B))
        assert keys == want_keys, (
            f"{where}: commit {n} ({cid[:12]}) has {len(keys)} x keys, expected {len(want_keys)} "
            f"(missing {sorted(set(want_keys) - set(keys))[:5]}, "
            f"extra {sorted(set(keys) - set(want_keys))[:5]})"
        )
        got = x.get_many(keys)
        want = np.array([x_value(k) for k in keys], dtype=np.int64)
        if got.dtype != want.dtype or got.tobytes() != want.tobytes():
            bad = [k for k, a, b in zip(keys, got, want, strict=True) if a.tobytes() != b.tobytes()]
            raise AssertionError(f"{where}: commit {n}: x values differ at keys {bad[:10]}")
        for k in keys[:: max(1, len(keys) // 7)]:
            assert x[k].tobytes() == np.array(x_value(k), np.int64).tobytes(), (
                f"{where}: commit {n}: x[{k}] (single read) is wrong"
            )
        s_keys = [f"s{i}" for i in range(n + 1)]
        assert sorted(s.keys()) == sorted(s_keys), f"{where}: commit {n}: s keys {s.keys()[:5]}"
        assert s.get_many(s_keys) == [s_value(i) for i in range(n + 1)], (
            f"{where}: commit {n}: s values differ"
        )


def _check(repo_path: Path, logged: dict[int, str], where: str, *, gc: bool = False) -> None:
    """Every logged commit is on main and reads back bit-exact; verify passes.

    Registers an interrupted commit that landed (the unlogged head) in ``logged``.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*taken over", category=RuntimeWarning)
        repo = tc.Repository(repo_path)
    try:
        if gc:
            repo.gc()
        log = repo.log("main")
        by_id = {c.id: c for c in log}
        for n, cid in sorted(logged.items()):
            assert cid in by_id, f"{where}: logged commit {n} ({cid}) is missing from main"
            assert by_id[cid].message == f"commit {n}", f"{where}: {cid} is {by_id[cid].message!r}"
        extra = [c for c in log if c.id not in set(logged.values())]
        last = max(logged)
        assert len(extra) <= 1, f"{where}: unlogged commits on main: {[c.message for c in extra]}"
        if extra:
            assert extra[0].id == log[0].id and extra[0].message == f"commit {last + 1}", (
                f"{where}: unexpected unlogged commit {extra[0].message!r} ({extra[0].id})"
            )
            logged[last + 1] = extra[0].id
        assert len(log) == len(logged), f"{where}: main has {len(log)} commits, {len(logged)} known"
        for i, info in enumerate(log):
            parents = (log[i + 1].id,) if i + 1 < len(log) else ()
            assert tuple(info.parents) == parents, f"{where}: {info.message} has wrong parents"
        for n, cid in sorted(logged.items()):
            _check_commit(repo, n, cid, where)
        report = repo.verify(full=True, raise_on_error=False)
        assert report.ok, f"{where}: verify(full=True) fails:\n{report}"
    finally:
        repo.close()


def _crash_loop(tmp_path: Path, mode: str, rounds: int) -> Killer:
    rng = random.Random(f"{SEED}/{mode}")
    repo_path = tmp_path / "repo"
    log_path = tmp_path / "commits.log"
    logged = _init(repo_path, log_path)
    killer = Killer(mode, repo_path, log_path, tmp_path / "child.stderr", rng)
    for r in range(rounds):
        where = f"{mode} round {r} (seed {SEED})"
        how = killer.round(where)
        where += f", {how}"
        for n, cid in _read_side_log(log_path).items():
            assert logged.get(n, cid) == cid, f"{where}: the side log names two ids for {n}"
            logged[n] = cid
        _check(repo_path, logged, where)
    _check(repo_path, logged, f"{mode}: after a final gc", gc=True)
    print(
        f"{mode}: {killer.kills} kills, {killer.in_phase} inside the targeted phase, "
        f"{len(logged)} commits, phase durations {killer.durations[:8]}"
    )
    return killer


def test_kill_during_index_compaction_and_merges(tmp_path: Path) -> None:
    killer = _crash_loop(tmp_path, "merge", MERGE_ROUNDS)
    runs = list((tmp_path / "repo" / "index").glob("*.run"))
    assert runs, "the index never wrote a run file: compaction was not exercised"
    assert killer.in_phase >= 2, (
        f"only {killer.in_phase} of {killer.kills} kills landed inside a compaction/merge"
    )


def test_kill_during_gc(tmp_path: Path) -> None:
    killer = _crash_loop(tmp_path, "gc", GC_ROUNDS)
    assert killer.in_phase >= 2, f"only {killer.in_phase} of {killer.kills} kills landed in gc"
