"""Crash safety: a writer killed with SIGKILL at random moments (SPEC §2).

A child process writes and commits in a loop; the parent kills it at a random
instant, then checks the repository against a pure-Python model:

* every commit the child reported (its id was fsynced to a side log *after*
  ``commit()`` returned) is on the branch and reads back bit-exact;
* the branch holds nothing else but at most one more commit (the interrupted
  one, which landed before its id was logged), and that one is complete too;
* ``verify(full=True)`` passes, also after ``gc()``;
* a new write checkout opens (the dead writer never blocks), and its staged
  view is the base commit plus a prefix of the interrupted cycle's writes.

Every value is a pure function of ``(seed, commit number, key)``, so the
parent recomputes what each commit must hold. Set ``TENSORCASK_CRASH_SEED``
to replay a failing run's data plan (kill timing stays random).
"""

from __future__ import annotations

import inspect
import json
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import tensorcask as tc

REPO_ROOT = Path(__file__).resolve().parents[1]

ITERATIONS = 25
SEED = int(os.environ.get("TENSORCASK_CRASH_SEED", "271828"))
GC_EVERY = 5  # run gc() (and re-verify) every this many iterations
OLD_SAMPLE = 8  # older commits read back at each iteration (5x that after gc)

X_POOL = 400  # int keys of the fixed-shape column "x"
S_POOL = 60  # keys of the str column "s" (ints and strs)

# --------------------------------------------------------------------------
# The data plan. These functions are pure (stdlib only) and are copied into
# the child's script with inspect.getsource, so parent and child share them.
# --------------------------------------------------------------------------


def x_value(tag, key):
    """The 8 int64 values stored under ``key`` in column "x" by write ``tag``."""
    base = tag * 1_000_003 + key * 7_919
    return [base + i * 104_729 for i in range(8)]


def s_value(tag, key):
    """The str stored under ``key`` in column "s" by write ``tag``."""
    return f"c{tag}:k{key!r}:" + "\u00e9\u2713x" * ((abs(tag) * 7 + len(str(key))) % 6)


def s_key(i):
    """Key number ``i`` of column "s": a mix of int and str keys."""
    return i if i % 3 == 0 else f"s{i:02d}"


def key_order(key):
    """Sort key for the library's order: ints before strs."""
    return (isinstance(key, str), key)


def plan_commit(seed, n, x_keys, s_keys, x_pool, s_pool):
    """The operations of commit ``n``, given the key sets of commit ``n - 1``.

    Ops: ("x", tag, keys, form) update of "x"; ("s", tag, key) single write of
    "s"; ("del_x", key) / ("del_s", key) deletions; ("reset",) reset the
    staging area. Junk writes (tag -n) made before a reset must never show up.
    """
    import random as _random

    rng = _random.Random(f"{seed}/{n}")
    ops = []
    if rng.random() < 0.2:
        junk = rng.sample(range(x_pool), rng.randint(1, 16))
        ops.append(("x", -n, junk, "batch"))
        ops.append(("s", -n, s_key(rng.randrange(s_pool))))
        if rng.random() < 0.5 and x_keys:
            ops.append(("del_x", rng.choice(sorted(x_keys))))
        ops.append(("reset",))
    x_now = set(x_keys)
    s_now = set(s_keys)
    for _ in range(rng.randint(1, 3)):
        keys = rng.sample(range(x_pool), rng.randint(1, 16))
        ops.append(("x", n, keys, "mapping" if rng.random() < 0.25 else "batch"))
        x_now.update(keys)
        for _ in range(rng.randint(0, 4)):
            key = s_key(rng.randrange(s_pool))
            ops.append(("s", n, key))
            s_now.add(key)
    for _ in range(rng.randint(0, 6)):
        if x_now:
            key = rng.choice(sorted(x_now))
            ops.append(("del_x", key))
            x_now.discard(key)
    for _ in range(rng.randint(0, 2)):
        if s_now:
            key = rng.choice(sorted(s_now, key=key_order))
            ops.append(("del_s", key))
            s_now.discard(key)
    return ops


def apply_op(base, state, op):
    """Apply one op to ``state`` (dicts key -> tag), in place; ``base`` for resets."""
    x, s = state
    kind = op[0]
    if kind == "x":
        for key in op[2]:
            x[key] = op[1]
    elif kind == "s":
        s[op[2]] = op[1]
    elif kind == "del_x":
        del x[op[1]]
    elif kind == "del_s":
        del s[op[1]]
    elif kind == "reset":
        x.clear()
        x.update(base[0])
        s.clear()
        s.update(base[1])
    else:
        raise AssertionError(f"unknown op {op!r}")


# --------------------------------------------------------------------------
# The child: opens the writer and commits until it is killed.
# --------------------------------------------------------------------------

CHILD_MAIN = r"""
import json
import os
import sys
import warnings

import numpy as np

import tensorcask as tc

repo_path, log_path, state_path, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
x_pool, s_pool = int(sys.argv[5]), int(sys.argv[6])
with open(state_path) as f:
    saved = json.load(f)
n = saved["n"]
state = ({k: t for k, t in saved["x"]}, {k: t for k, t in saved["s"]})
print("ready", flush=True)

warnings.filterwarnings("ignore", message=".*taken over", category=RuntimeWarning)
repo = tc.Repository(repo_path)
co = repo.checkout(write=True)
co.reset_staging_area()  # a killed predecessor may have left staged writes
head = repo.log(limit=1)[0]
if head.message != f"commit {n}":
    sys.exit(f"child: expected head 'commit {n}', found {head.message!r} ({head.id})")
log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
while True:
    n += 1
    ops = plan_commit(seed, n, state[0], state[1], x_pool, s_pool)
    x, s = co["x"], co["s"]
    for op in ops:
        kind = op[0]
        if kind == "x":
            tag, keys, form = op[1], op[2], op[3]
            rows = np.array([x_value(tag, k) for k in keys], dtype=np.int64)
            if form == "batch":
                x.update(keys, rows)
            else:
                x.update(dict(zip(keys, rows)))
        elif kind == "s":
            s[op[2]] = s_value(op[1], op[2])
            s.flush()  # staged durably now: the model checks staging in write order
        elif kind == "del_x":
            del x[op[1]]
        elif kind == "del_s":
            del s[op[1]]
        elif kind == "reset":
            co.reset_staging_area()
            x, s = co["x"], co["s"]
    cid = co.commit(f"commit {n}")
    os.write(log_fd, f"{n} {cid}\n".encode())
    os.fsync(log_fd)
    base = (dict(state[0]), dict(state[1]))
    for op in ops:
        apply_op(base, state, op)
"""


def _child_script() -> str:
    parts = [
        textwrap.dedent(inspect.getsource(f))
        for f in (x_value, s_value, s_key, key_order, plan_commit, apply_op)
    ]
    return CHILD_MAIN.replace(
        "import tensorcask as tc\n", "import tensorcask as tc\n\n" + "\n\n".join(parts), 1
    )


SCRIPT = _child_script()


# --------------------------------------------------------------------------
# The parent's model and checks.
# --------------------------------------------------------------------------

State = tuple[dict[Any, int], dict[Any, int]]


class Model:
    """Expected contents of commit ``n`` for every ``n``, computed on demand."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.states: list[State] = [({}, {})]

    def ops(self, n: int) -> list[tuple[Any, ...]]:
        x, s = self.state(n - 1)
        return plan_commit(self.seed, n, x, s, X_POOL, S_POOL)

    def state(self, n: int) -> State:
        while len(self.states) <= n:
            m = len(self.states)
            base = self.states[m - 1]
            current: State = (dict(base[0]), dict(base[1]))
            for op in self.ops(m):
                apply_op(base, current, op)
            self.states.append(current)
        return self.states[n]

    def staged_candidates(self, n: int) -> list[State]:
        """Every staged view a writer killed during cycle ``n + 1`` may leave behind."""
        base = self.state(n)
        current: State = (dict(base[0]), dict(base[1]))
        out = [(dict(current[0]), dict(current[1]))]
        for op in self.ops(n + 1):
            apply_op(base, current, op)
            out.append((dict(current[0]), dict(current[1])))
        return out


def _read_view(checkout: Any) -> tuple[list[Any], np.ndarray, list[Any], list[str], int, int]:
    x, s = checkout["x"], checkout["s"]
    xk = x.keys()
    xv = x.get_many(xk)
    sk = s.keys()
    sv = s.get_many(sk)
    return xk, xv, sk, sv, len(x), len(s)


def _expected_view(state: State) -> tuple[list[Any], np.ndarray, list[Any], list[str]]:
    x, s = state
    xk = sorted(x)
    xv = np.array([x_value(x[k], k) for k in xk], dtype=np.int64).reshape(len(xk), 8)
    sk = sorted(s, key=key_order)
    sv = [s_value(s[k], k) for k in sk]
    return xk, xv, sk, sv


def _views_equal(got: tuple[Any, ...], state: State) -> bool:
    xk, xv, sk, sv, nx, ns = got
    exk, exv, esk, esv = _expected_view(state)
    return (
        xk == exk
        and sk == esk
        and nx == len(exk)
        and ns == len(esk)
        and isinstance(xv, np.ndarray)
        and xv.dtype == np.int64
        and xv.shape == exv.shape
        and xv.tobytes() == exv.tobytes()
        and sv == esv
    )


def _describe_diff(got: tuple[Any, ...], state: State) -> str:
    xk, xv, sk, sv, nx, ns = got
    exk, exv, esk, esv = _expected_view(state)
    lines = []
    if xk != exk:
        lines.append(
            f"x keys: extra {sorted(set(xk) - set(exk))[:10]}, "
            f"missing {sorted(set(exk) - set(xk))[:10]}"
        )
    elif xv.tobytes() != exv.tobytes():
        bad = [k for k, a, b in zip(xk, xv, exv, strict=True) if a.tobytes() != b.tobytes()]
        lines.append(f"x values differ at keys {bad[:10]}")
    if sk != esk:
        lines.append(f"s keys: got {sk[:10]}..., expected {esk[:10]}...")
    elif sv != esv:
        bad = [k for k, a, b in zip(sk, sv, esv, strict=True) if a != b]
        lines.append(f"s values differ at keys {bad[:10]}")
    if (nx, ns) != (len(exk), len(esk)):
        lines.append(f"len() gives {(nx, ns)}, expected {(len(exk), len(esk))}")
    return "; ".join(lines) or "views differ"


def _read_side_log(path: Path) -> list[tuple[int, str]]:
    """The complete lines of the side log; a torn last line is cut off the file."""
    data = path.read_bytes() if path.exists() else b""
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    out = []
    for line in complete.decode().splitlines():
        n, cid = line.split()
        out.append((int(n), cid))
    return out


def _run_child_and_kill(
    rng: random.Random,
    repo_path: Path,
    log_path: Path,
    state_path: Path,
    stderr_path: Path,
    where: str,
) -> float:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SCRIPT,
                str(repo_path),
                str(log_path),
                str(state_path),
                str(SEED),
                str(X_POOL),
                str(S_POOL),
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else b""
        assert line == b"ready\n", (
            f"{where}: child did not start: {line!r}\n{stderr_path.read_text(errors='replace')}"
        )
        delay = rng.uniform(0.05, 0.6)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, (
        f"{where}: the writer exited on its own (code {proc.returncode}) before it was killed:\n"
        f"{stderr_path.read_text(errors='replace')}"
    )
    return delay


def _check_commits(
    repo: tc.Repository,
    model: Model,
    logged: dict[int, str],
    where: str,
    read_back: Callable[[int], bool],
) -> tuple[int, str]:
    """Check the branch against the side log and the model; return the head's number and id.

    Every commit's id, message and parents are checked; the contents of those
    for which ``read_back(n)`` is true are read back and compared bit for bit.
    """
    log = repo.log()
    ids = [c.id for c in log]
    assert len(set(ids)) == len(ids), f"{where}: repo.log() repeats commits"
    by_id = {c.id: c for c in log}
    for n, cid in sorted(logged.items()):
        assert cid in by_id, f"{where}: logged commit {n} ({cid}) is missing from repo.log()"
        assert by_id[cid].message == f"commit {n}", (
            f"{where}: commit {cid} has message {by_id[cid].message!r}, expected 'commit {n}'"
        )
    last = max(logged)
    extra = [c for c in log if c.id not in set(logged.values())]
    assert len(extra) <= 1, (
        f"{where}: repo.log() holds {len(extra)} commits that were never logged: "
        f"{[(c.id, c.message) for c in extra]}"
    )
    if extra:
        assert extra[0].id == log[0].id, (
            f"{where}: the unlogged commit {extra[0].id} is not the head"
        )
        assert extra[0].message == f"commit {last + 1}", (
            f"{where}: unlogged head {extra[0].id} has message {extra[0].message!r}, "
            f"expected 'commit {last + 1}'"
        )
    head_n = last + len(extra)
    assert len(log) == head_n + 1, f"{where}: log has {len(log)} commits, expected {head_n + 1}"
    for i, info in enumerate(log):
        n = head_n - i
        assert info.message == f"commit {n}", f"{where}: log[{i}] is {info.message!r}"
        parents = (log[i + 1].id,) if i + 1 < len(log) else ()
        assert tuple(info.parents) == parents, f"{where}: commit {n} has parents {info.parents}"
        if not read_back(n):
            continue
        with repo.checkout(commit=info.id) as rc:
            got = _read_view(rc)
            assert _views_equal(got, model.state(n)), (
                f"{where}: commit {n} ({info.id}) does not read back as written: "
                f"{_describe_diff(got, model.state(n))}"
            )
            # single reads too, not only the batched path
            xk, sk = got[0], got[2]
            for k in xk[:: max(1, len(xk) // 5)]:
                want = np.array(x_value(model.state(n)[0][k], k), dtype=np.int64)
                assert rc["x"][k].tobytes() == want.tobytes(), f"{where}: commit {n}, x[{k!r}]"
            for k in sk[:: max(1, len(sk) // 5)]:
                assert rc["s"][k] == s_value(model.state(n)[1][k], k), (
                    f"{where}: commit {n}, s[{k!r}]"
                )
    return head_n, log[0].id


def _check_staged(repo: tc.Repository, model: Model, head_n: int, where: str) -> bool:
    """A new writer opens, and sees the head plus a prefix of the killed cycle.

    Returns whether the killed writer left staged writes behind.
    """
    co = repo.checkout(write=True)
    try:
        got = _read_view(co)
        candidates = model.staged_candidates(head_n)
        matches = [i for i, c in enumerate(candidates) if _views_equal(got, c)]
        assert matches, (
            f"{where}: the staged view left by the killed writer is not the head commit plus a "
            f"prefix of its writes (vs. head: {_describe_diff(got, candidates[0])})"
        )
        return 0 not in matches
    finally:
        co.close()


def test_sigkilled_writer_never_damages_commits(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    repo_path = tmp_path / "repo"
    log_path = tmp_path / "commits.log"
    state_path = tmp_path / "state.json"
    stderr_path = tmp_path / "child.stderr"
    model = Model(SEED)

    repo = tc.init(repo_path, user_name="Crash Test", user_email="crash@example.org")
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("x", shape=(8,), dtype="int64")
        co.add_str_column("s")
        first = co.commit("commit 0")
    repo.close()
    logged = {0: first}
    log_path.write_text(f"0 {first}\n")
    head_n = 0
    started = time.monotonic()
    unlogged_landed = staged_left = 0

    for iteration in range(ITERATIONS):
        where = f"seed {SEED}, iteration {iteration}"
        x_state, s_state = model.state(head_n)
        state_path.write_text(
            json.dumps({"n": head_n, "x": list(x_state.items()), "s": list(s_state.items())})
        )
        delay = _run_child_and_kill(rng, repo_path, log_path, state_path, stderr_path, where)

        entries = _read_side_log(log_path)
        for n, cid in entries:
            assert logged.get(n, cid) == cid, f"{where}: side log names two ids for commit {n}"
            logged[n] = cid
        assert sorted(logged) == list(range(len(logged))), f"{where}: side log has gaps"
        where += f" (killed after {delay:.3f}s, {len(logged) - 1} commits logged)"

        # Read back every commit made since the last check, the previous head and
        # a random sample of older ones (a bigger one after gc), and all of them
        # at the end. verify(full=True) re-hashes every stored byte each time.
        gc_now = iteration % GC_EVERY == GC_EVERY - 1
        full = iteration == ITERATIONS - 1
        older = OLD_SAMPLE * (5 if gc_now else 1)
        sample = set(rng.sample(range(head_n + 1), min(older, head_n + 1)))
        previous = head_n

        def read_back(
            n: int, full: bool = full, low: int = previous, old: set[int] = sample
        ) -> bool:
            return full or n >= low or n in old

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*taken over", category=RuntimeWarning)
            repo = tc.Repository(repo_path)
            try:
                head_n, head_id = _check_commits(repo, model, logged, where, read_back)
                report = repo.verify(full=True)
                assert report.ok, f"{where}: verify failed: {report}"
                if gc_now:
                    repo.gc()
                    report = repo.verify(full=True)
                    assert report.ok, f"{where}: verify after gc failed: {report}"
                    after_gc = _check_commits(repo, model, logged, where + " after gc", read_back)
                    assert after_gc == (head_n, head_id), f"{where}: gc changed the branch head"
                staged_left += _check_staged(repo, model, head_n, where)
            finally:
                repo.close()
        # The interrupted commit landed before its id was logged and checked out
        # complete: from now on it is an ordinary earlier commit.
        unlogged_landed += head_n not in logged
        logged.setdefault(head_n, head_id)

    elapsed = time.monotonic() - started
    print(
        f"seed {SEED}: {ITERATIONS} kills, {head_n} commits, {unlogged_landed} interrupted "
        f"commits landed before being logged, {staged_left} kills left staged writes, "
        f"{elapsed:.1f}s"
    )
    # The run must actually have exercised commits (not only killed idle writers).
    assert head_n >= ITERATIONS, f"seed {SEED}: only {head_n} commits in {ITERATIONS} runs"
    assert elapsed < 300, f"seed {SEED}: the crash loop took {elapsed:.0f}s"
