"""Crash safety of purges: ``kill -9`` while ``purge`` / ``purge_content`` run (SPEC §6).

A purge records its tombstones and a journal of the locations to overwrite in
one metadata transaction, overwrites the bytes, then clears the journal; the
next purge or ``gc`` finishes a journal a crash left (``finish_pending``).

The repository has a fixed-shape memmap column ("img"), a variable-shape
HDF5 column ("var"), a gzip-compressed HDF5 column ("gz") and an LMDB str
column ("txt"), over three commits (values changed, keys added and deleted),
with some contents held by two keys. A child process runs a seeded plan of
purges (keys of one column, or contents by digest) and appends the number of
each purge to a side log (fsynced) once it returned. The parent kills it with
SIGKILL after a random delay, or just inside a purge, its metadata
transaction or its overwrite, then reopens the repository and checks:

* the tombstones are those of the logged purges, plus all or nothing of the
  one that was interrupted (its transaction committed or not);
* every sample of every commit that no tombstone covers reads back exactly,
  and every covered one raises ``PurgedDataError`` naming column and key;
* ``verify(full=True)`` passes;
* after ``gc()`` or another purge (which finish the interrupted one), the
  bytes of every purged content that no unpurged sample holds are in no file
  of the repository (a scan of every file, and of the decoded HDF5 data for
  the compressed column).

Values are pure functions of (column, source key, version), so the parent
knows every byte. ``TENSORCASK_CRASH_SEED`` replays a plan (kill timing stays
random).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tensorcask as tc
from tensorcask.storage import tombstones as stones

h5py = pytest.importorskip("h5py")

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("TENSORCASK_CRASH_SEED", "161803"))
ROUNDS = 30
K = 80  # keys 0..K-1 in the first commit
ADDED = range(K, K + 24)  # added by the second commit
CHANGED_2 = range(0, 16)  # new values in the second commit
DELETED_3 = range(20, 30)  # deleted by the third commit
CHANGED_3 = range(60, 70)  # new values in the third commit
SENTINELS = 40  # txt keys "sentinel-<n>": purged by the parent only
COLUMNS = ("img", "var", "gz", "txt")
PLAN_OPS = 400
LETTERS = "ghijklmnopqrstuvwxyz"  # no hex digit: never in a digest printed as text


# -- the data: pure functions of (column, key, version) -----------------------------


def _source(key: Any, version: int) -> Any:
    """The key whose content ``key`` holds: first-commit keys ending in 7 share key-1's."""
    if version == 1 and isinstance(key, int) and key % 10 == 7:
        return key - 1
    return key


def _stream(column: str, key: Any, version: int, n: int) -> bytes:
    seed = f"{column}/{_source(key, version)!r}/{version}".encode()
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.blake2b(seed + b"#%d" % i, digest_size=64).digest()
        i += 1
    return out[:n]


def value(column: str, key: Any, version: int) -> Any:
    src = _source(key, version)
    length = src if isinstance(src, int) else len(src)
    if column == "img":
        return np.frombuffer(_stream(column, key, version, 64), "<i8").copy()
    if column == "var":
        n = 3 + length % 8
        return np.frombuffer(_stream(column, key, version, 8 * n), "<i8").copy()
    if column == "gz":
        n = 1 + length % 5
        return np.frombuffer(_stream(column, key, version, 16 * n), "<i8").reshape(n, 2).copy()
    token = "".join(LETTERS[b % len(LETTERS)] for b in _stream(column, key, version, 16))
    return f"txt {src!r} v{version} {token} \u00e9"


def patterns(column: str, key: Any, version: int) -> list[bytes]:
    """8-byte words of the value that must not survive on disk once it is purged.

    Arrays: every element. str: the first 8 letters of its random token.
    """
    v = value(column, key, version)
    if column == "txt":
        return [v.split()[3][:8].encode()]
    raw = np.ascontiguousarray(v).tobytes()
    return [raw[i : i + 8] for i in range(0, len(raw), 8)]


def commit_states() -> list[dict[str, dict[Any, int]]]:
    """Per commit, per column: key -> version."""
    first = {k: 1 for k in range(K)}
    states = []
    c1 = {c: dict(first) for c in COLUMNS}
    c1["txt"].update({f"sentinel-{n}": 1 for n in range(SENTINELS)})
    states.append(c1)
    c2 = {c: dict(s) for c, s in c1.items()}
    for s in c2.values():
        s.update({k: 2 for k in CHANGED_2})
        s.update({k: 1 for k in ADDED})
    states.append(c2)
    c3 = {c: dict(s) for c, s in c2.items()}
    for s in c3.values():
        for k in DELETED_3:
            del s[k]
        s.update({k: 3 for k in CHANGED_3})
    states.append(c3)
    return states


def _build(path: Path) -> tuple[list[str], list[dict[str, dict[Any, str]]]]:
    """The repository; its commit ids and, per commit and column, key -> hex digest."""
    repo = tc.init(path, user_name="Crash Test", user_email="crash@example.org")
    states = commit_states()
    ids = []
    try:
        with repo.checkout(write=True) as co:
            co.add_ndarray_column("img", shape=(8,), dtype="int64")
            co.add_ndarray_column("var", shape=(None,), dtype="int64", max_shape=(16,))
            co.add_ndarray_column(
                "gz", shape=(None, 2), dtype="int64", max_shape=(8, 2), compression="gzip"
            )
            co.add_str_column("txt")
            previous: dict[str, dict[Any, int]] = {c: {} for c in COLUMNS}
            for n, state in enumerate(states):
                for column in COLUMNS:
                    col = co[column]
                    old, new = previous[column], state[column]
                    for key in [k for k in old if k not in new]:
                        del col[key]
                    changed = {k: v for k, v in new.items() if old.get(k) != v}
                    if changed:
                        col.update({k: value(column, k, v) for k, v in changed.items()})
                ids.append(co.commit(f"commit {n}"))
                previous = state
        digests = []
        for cid, state in zip(ids, states, strict=True):
            with repo.checkout(commit=cid) as rc:
                digests.append({c: {k: rc[c].digest(k) for k in state[c]} for c in COLUMNS})
    finally:
        repo.close()
    return ids, digests


def _plan(rng: random.Random, states: list[Any], digests: list[Any]) -> list[list[Any]]:
    """Purges for the child: ["keys", column, keys] or ["content", [digest, ...]]."""
    plan: list[list[Any]] = []
    for _ in range(PLAN_OPS):
        column = rng.choice(COLUMNS)
        keys = sorted(  # no sentinels, and a quarter of the keys never purged by key
            {k for s in states for k in s[column] if isinstance(k, int) and k % 4 != 3}
        )
        if rng.random() < 0.7:
            plan.append(["keys", column, rng.sample(keys, rng.randint(1, 3))])
        else:
            chosen = []
            for _ in range(rng.randint(1, 2)):
                n = rng.randrange(len(states))
                key = rng.choice(sorted(k for k in states[n][column] if k in keys))
                chosen.append(digests[n][column][key])
            plan.append(["content", chosen])
    return plan


# -- the child ----------------------------------------------------------------------

CHILD = r"""
import json
import os
import sys
import time
import warnings

import tensorcask as tc
import tensorcask.purge as purge_module
from tensorcask.storage.content import ContentStore

repo_path, plan_path, log_path = sys.argv[1], sys.argv[2], sys.argv[3]


def mark(what):
    os.write(1, (what + "\n").encode())


_record = purge_module.record_operation


def record_operation(*args, **kwargs):
    out = _record(*args, **kwargs)
    mark("record")  # the transaction commits when the caller's `with` exits
    return out


purge_module.record_operation = record_operation
_scrub = ContentStore.scrub


def scrub(self, locations):
    if not locations:
        return _scrub(self, locations)
    mark("scrub")
    started = time.monotonic()
    out = _scrub(self, locations)
    mark(f"scrub-done {time.monotonic() - started:.5f}")
    return out


ContentStore.scrub = scrub
with open(plan_path) as f:
    plan = json.load(f)
with open(log_path) as f:
    done = len(f.read().splitlines())
warnings.filterwarnings("ignore", message=".*taken over", category=RuntimeWarning)
repo = tc.Repository(repo_path)
log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
mark("ready")
for i in range(done, len(plan)):
    op = plan[i]
    mark(f"purge {i}")
    started = time.monotonic()
    if op[0] == "keys":
        repo.purge(op[1], op[2], reason=f"plan {i}")
    else:
        repo.purge_content(op[1], reason=f"plan {i}")
    mark(f"purge-done {time.monotonic() - started:.5f}")
    os.write(log_fd, f"{i}\n".encode())
    os.fsync(log_fd)
mark("exhausted")
time.sleep(600)
"""


class Killer:
    """Runs the child and kills it: at random, or inside a purge, a record or a scrub."""

    def __init__(self, repo: Path, plan: Path, log: Path, err: Path, rng: random.Random):
        self.repo, self.plan, self.log, self.err, self.rng = repo, plan, log, err, rng
        self.durations: dict[str, list[float]] = {"purge": [], "scrub": []}
        self.kills: dict[str, int] = {}

    def round(self, where: str) -> str:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        with open(self.err, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(self.repo), str(self.plan), str(self.log)],
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                bufsize=0,
            )
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        how = self.rng.choice(["random", "purge", "record", "scrub", "scrub"])
        skip = self.rng.randrange(3)
        est = {p: float(np.median(d)) if d else 0.02 for p, d in self.durations.items()}
        buffer, markers, kill_at = b"", [], None
        deadline = time.monotonic() + 60
        try:
            while True:
                now = time.monotonic()
                if kill_at is not None and now >= kill_at:
                    break
                wait = min(deadline, kill_at or deadline) - now
                assert wait > 0, f"{where}: no kill point reached ({how}; {markers[-5:]})"
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
                    phase = line.split()[0]
                    if phase in ("purge-done", "scrub-done"):
                        self.durations[phase[:-5]].append(float(line.split()[1]))
                    if kill_at is not None:
                        continue
                    if line == "exhausted":
                        kill_at = time.monotonic()
                    elif how == "random" and line == "ready":
                        kill_at = time.monotonic() + self.rng.uniform(0.02, 0.3)
                    elif phase == how:
                        if skip == 0:
                            spread = {"purge": est["purge"], "scrub": est["scrub"]}.get(how, 0.002)
                            kill_at = time.monotonic() + self.rng.uniform(0, spread)
                        skip -= 1
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            ready, _, _ = select.select([fd], [], [], 0)
            rest = os.read(fd, 1 << 16) if ready else b""
            markers += [ln.decode() for ln in (buffer + rest).split(b"\n") if ln]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL, (
            f"{where}: the child exited with {proc.returncode} before it was killed:\n"
            f"{self.err.read_text(errors='replace')[-3000:]}"
        )
        self.kills[how] = self.kills.get(how, 0) + 1
        return f"{how} kill, last marker {markers[-1] if markers else 'nothing'!r}"


# -- the parent's model and checks ---------------------------------------------------


class Model:
    """What every commit holds and what each planned purge tombstones."""

    def __init__(self, ids: list[str], digests: list[dict[str, dict[Any, str]]]) -> None:
        self.ids = ids
        self.states = commit_states()
        self.digests = digests
        # digest -> the (column, key, version) samples holding it, in any commit
        self.holders: dict[str, set[tuple[str, Any, int]]] = {}
        for state, by_column in zip(self.states, digests, strict=True):
            for column, keys in by_column.items():
                for key, digest in keys.items():
                    self.holders.setdefault(digest, set()).add((column, key, state[column][key]))

    def entries(self, op: list[Any]) -> set[tuple[Any, ...]]:
        """The tombstones ``op`` makes: ("key", column, key, digest) or ("content", digest)."""
        if op[0] == "content":
            return {("content", d) for d in op[1]}
        column, keys = op[1], op[2]
        return {
            ("key", column, key, self.digests[n][column][key])
            for n in range(len(self.ids))
            for key in keys
            if key in self.digests[n][column]
        }

    def purged(self, tombs: set[tuple[Any, ...]], column: str, key: Any, digest: str) -> bool:
        return ("content", digest) in tombs or ("key", column, key, digest) in tombs

    def covered(self, tombs: set[tuple[Any, ...]], entry: tuple[Any, ...]) -> bool:
        """Whether the sample or content of ``entry`` is purged (by its own tombstone, or
        one of its content)."""
        return entry in tombs or ("content", entry[-1]) in tombs

    def gone(self, tombs: set[tuple[Any, ...]]) -> set[str]:
        """Tombstoned digests that no unpurged sample holds: their bytes must be gone."""
        out = set()
        for t in tombs:
            digest = t[-1]
            if all(self.purged(tombs, c, k, digest) for c, k, _ in self.holders[digest]):
                out.add(digest)
        return out


def _tombstone_set(repo: tc.Repository) -> set[tuple[Any, ...]]:
    out: set[tuple[Any, ...]] = set()
    for t in repo.tombstones():
        assert t.lifted is None, t
        out.add(
            ("content", t.digest) if t.kind == "content" else ("key", t.column, t.key, t.digest)
        )
    return out


def _logged(path: Path) -> int:
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):  # a torn last line: the purge was not logged
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    lines = complete.decode().split()
    assert [int(x) for x in lines] == list(range(len(lines))), lines[-5:]
    return len(lines)


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, str):
        return got == want
    return (
        isinstance(got, np.ndarray)
        and got.dtype == want.dtype
        and got.shape == want.shape
        and got.tobytes() == want.tobytes()
    )


def _check_reads(
    repo: tc.Repository,
    model: Model,
    tombs: set[tuple[Any, ...]],
    where: str,
    deferred: list[str],
) -> int:
    """Unpurged samples read back exactly; purged ones raise PurgedDataError. Returns
    how many purged samples were read."""
    refused = 0
    for n, cid in enumerate(model.ids):
        with repo.checkout(commit=cid) as rc:
            for column in COLUMNS:
                col = rc[column]
                state = model.states[n][column]
                digests = model.digests[n][column]
                keys = sorted(state, key=lambda k: (isinstance(k, str), k))
                assert col.keys() == keys, f"{where}: commit {n} {column}: keys changed"
                readable = [k for k in keys if not model.purged(tombs, column, k, digests[k])]
                got = col.get_many(readable)
                got = list(got) if isinstance(got, np.ndarray) else got
                bad = [
                    k
                    for k, g in zip(readable, got, strict=True)
                    if not _same(g, value(column, k, state[k]))
                ]
                assert not bad, (
                    f"{where}: commit {n}, column {column}: samples that were never purged "
                    f"read back wrong: keys {bad[:8]}"
                )
                for k in readable[:: max(1, len(readable) // 6)]:
                    assert _same(col[k], value(column, k, state[k])), (
                        f"{where}: commit {n}, {column}[{k!r}] (single read) is wrong"
                    )
                for k in keys:
                    if k in readable:
                        continue
                    refused += 1
                    try:
                        col[k]
                    except tc.PurgedDataError as exc:
                        assert (exc.column, exc.key) == (column, k), (
                            f"{where}: commit {n}: the error for purged {column}[{k!r}] names "
                            f"{exc.column}[{exc.key!r}]: {exc}"
                        )
                    except tc.CorruptionError as exc:
                        deferred.append(
                            f"{where}: commit {n}: purged {column}[{k!r}] raised "
                            f"CorruptionError, not PurgedDataError: {exc}"
                        )
                    else:
                        raise AssertionError(f"{where}: commit {n}: purged {column}[{k!r}] read")
    return refused


def _scan(
    repo_path: Path, model: Model, tombs: set[tuple[Any, ...]]
) -> dict[str, list[tuple[str, str]]]:
    """Every file of the repository (and the decoded HDF5 data): relative path -> the
    (digest, column) of tombstoned contents whose bytes are still there."""
    gone = model.gone(tombs)
    words: dict[bytes, tuple[str, str]] = {}
    for digest in gone:
        column, key, version = sorted(model.holders[digest], key=repr)[0]
        for word in patterns(column, key, version):
            words[word] = (digest, column)
    if not words:
        return {}
    wanted = np.frombuffer(b"".join(sorted(words)), "<u8")
    found: dict[str, list[tuple[str, str]]] = {}

    def look(name: str, data: bytes) -> None:
        hits: set[bytes] = set()
        for shift in range(8):
            count = (len(data) - shift) // 8
            if count <= 0:
                continue
            arr = np.frombuffer(data, "<u8", count=count, offset=shift)
            for v in np.unique(arr[np.isin(arr, wanted)]).tolist():
                hits.add(np.array(v, "<u8").tobytes())
        if hits:
            found[name] = sorted({words[w] for w in hits})

    for dirpath, _, files in os.walk(repo_path):
        for f in files:
            path = Path(dirpath, f)
            look(str(path.relative_to(repo_path)), path.read_bytes())
            if f.endswith(".h5"):
                with h5py.File(path, "r") as h5:
                    look(f"{path.relative_to(repo_path)} (decoded)", h5["data"][:].tobytes())
    return found


@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:.*taken over:RuntimeWarning")  # a killed child's lock
def test_kill_during_purges_loses_nothing_and_leaves_no_purged_bytes(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    repo_path = tmp_path / "repo"
    ids, digests = _build(repo_path)
    model = Model(ids, digests)
    plan = _plan(random.Random(f"{SEED}/plan"), model.states, digests)
    plan_path, log_path = tmp_path / "plan.json", tmp_path / "done.log"
    plan_path.write_text(json.dumps(plan))
    log_path.write_text("")
    killer = Killer(repo_path, plan_path, log_path, tmp_path / "child.stderr", rng)
    # The scan sees stored bytes: before any purge it finds every content (the "gz"
    # ones in the decoded HDF5 data only), each in the files of its backend.
    found: dict[str, set[str]] = {}
    for name, hits in _scan(repo_path, model, {("content", d) for d in model.holders}).items():
        for digest, column in hits:
            found.setdefault(column, set()).add(digest)
            home = {"img": "memmap", "var": "hdf5", "gz": "hdf5", "txt": "lmdb"}[column]
            assert name.startswith(os.path.join("data", home)), (name, column)
            assert column != "gz" or name.endswith("(decoded)"), name
    for column in COLUMNS:
        held = {d for d, h in model.holders.items() if any(c == column for c, _, _ in h)}
        assert found.get(column) == held, f"the scan misses {column} contents"
    expected = [model.entries(op) for op in plan]
    sentinels: set[tuple[Any, ...]] = set()
    deferred: list[str] = []  # failures that do not stop the crash loop; asserted at the end
    lmdb_leaks: dict[str, list[tuple[str, str]]] = {}
    journal_left = interrupted_recorded = refused = 0
    started = time.monotonic()

    for r in range(ROUNDS):
        where = f"seed {SEED}, round {r}"
        where += f" ({killer.round(where)}"
        where += (
            ")" if not r else f"; the last round ended with {'a purge' if r % 2 == 0 else 'gc'})"
        )
        logged = _logged(log_path)
        repo = tc.Repository(repo_path)
        try:
            with repo._parts.db.read() as txn:
                journal_left += bool(stones.pending(repo._parts.db, txn))
            tombs = _tombstone_set(repo)
            uncovered = [
                (i, e) for i in range(logged) for e in expected[i] if not model.covered(tombs, e)
            ]
            assert not uncovered, (
                f"{where}: samples of completed purges not purged: {uncovered[:4]}"
            )
            planned = set().union(sentinels, *expected[:logged])
            prior = tombs & planned
            extra = tombs - planned
            if logged < len(plan):
                # the interrupted purge: its transaction committed all its tombstones, or none
                new = expected[logged] - prior  # a key purge records its samples even
                # where their content is purged already (it outlives a lifted content purge)
                assert not extra or extra == new, (
                    f"{where}: tombstones of no completed purge: {sorted(extra - new)[:4]}; "
                    f"of the interrupted purge {len(extra & new)} of {len(new)}"
                )
                interrupted_recorded += bool(extra)
            else:
                assert not extra, f"{where}: unexpected tombstones {sorted(extra)[:4]}"
            refused += _check_reads(repo, model, tombs, where, deferred)
            report = repo.verify(full=True, raise_on_error=False)
            assert report.ok, f"{where}: verify(full=True) fails:\n{report}"
            if r % 2:  # another purge finishes the interrupted one first
                sentinel = f"sentinel-{r}"
                repo.purge("txt", [sentinel], reason="sentinel")
                sentinels.add(("key", "txt", sentinel, model.digests[0]["txt"][sentinel]))
            else:
                repo.gc()
            tombs = _tombstone_set(repo)
            with repo._parts.db.read() as txn:
                assert not stones.pending(repo._parts.db, txn), f"{where}: journal not finished"
        finally:
            repo.close()
        for name, leaks in _scan(repo_path, model, tombs).items():
            if name.startswith(os.path.join("data", "lmdb")):
                lmdb_leaks.setdefault(name, []).extend(leaks)
                continue
            raise AssertionError(
                f"{where}: after {'a purge' if r % 2 else 'gc'}, {name} still holds the bytes "
                f"of {len(leaks)} purged content(s): {leaks[:4]}"
            )

    # at the end: a last gc, everything once more
    repo = tc.Repository(repo_path)
    try:
        repo.gc()
        tombs = _tombstone_set(repo)
        refused += _check_reads(repo, model, tombs, "after the final gc", deferred)
        report = repo.verify(full=True, raise_on_error=False)
        assert report.ok, f"after the final gc: verify(full=True) fails:\n{report}"
    finally:
        repo.close()
    for name, leaks in _scan(repo_path, model, tombs).items():
        assert name.startswith(os.path.join("data", "lmdb")), (
            f"after the final gc, {name} still holds the bytes of purged contents: {leaks[:4]}"
        )
        lmdb_leaks.setdefault(name, []).extend(leaks)
    elapsed = time.monotonic() - started
    print(
        f"seed {SEED}: kills {killer.kills}, {_logged(log_path)} purges logged, "
        f"{len(tombs)} tombstones, {interrupted_recorded} interrupted purges had recorded "
        f"their tombstones, {journal_left} kills left a journal, {refused} purged reads, "
        f"{len(lmdb_leaks)} LMDB files with leaks, "
        f"purge {np.median(killer.durations['purge']):.3f}s, {elapsed:.1f}s"
    )
    problems = []
    if deferred:
        problems.append(
            f"{len(deferred)} reads of purged samples raised the wrong error, e.g.:\n"
            + "\n".join(deferred[:3])
        )
    if lmdb_leaks:
        problems.append(
            "purged bytes survive in the LMDB data environment (free pages not scrubbed): "
            + "; ".join(
                f"{n}: {len(set(v))} content(s), e.g. {v[0]}" for n, v in lmdb_leaks.items()
            )
        )
    assert not problems, "\n\n".join(problems)
    assert journal_left >= 1, "no kill landed between a purge's record and the end of its scrub"
    assert _logged(log_path) >= 3, "the child completed fewer than 3 purges"
