"""Reliability of remotes under races, kills and damage (real components, no mocks).

* Racing pushers: several clients (threads, then processes) push to one remote
  (local files and S3 through moto) at the same moments; the losers fetch,
  merge and push again. No commit and no key may be lost, and the remote must
  verify.
* Interrupted push: a child process pushing a repository commit by commit is
  killed with SIGKILL at random moments; the remote must always verify, a
  fresh clone must read back bit-exact whatever commit the remote's branch
  points at, and a new push must complete.
* Damage: a flipped byte, a truncated pack, a damaged index or a garbage ref
  version is refused by ``clone`` (nothing left behind) and ``fetch`` (local
  repository unchanged), and reported by ``verify_remote``.

Set ``TENSORCASK_REMOTE_SEED`` to replay the kill delays of a failing run.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tensorcask as tc
from tensorcask.remote.packs import decode_index, entry_key

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("TENSORCASK_REMOTE_SEED", "8675309"))
IDENTITY = {"user_name": "Racer", "user_email": "racer@example.org"}


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def _snapshot(repo: tc.Repository, ref: str) -> dict[str, dict[Any, tuple[str, tuple, bytes]]]:
    """Every column of ``ref``: key -> (dtype, shape, bytes) for arrays, (type, (), bytes) else."""
    out: dict[str, dict[Any, tuple[str, tuple, bytes]]] = {}
    with repo.checkout(commit=repo.resolve(ref)) as co:
        for name in co.columns:
            column = co[name]
            keys = list(column.keys())
            values = column.get_many(keys) if keys else []
            entries: dict[Any, tuple[str, tuple, bytes]] = {}
            for key, value in zip(keys, values, strict=True):
                if isinstance(value, np.ndarray):
                    entries[key] = (value.dtype.str, value.shape, value.tobytes())
                elif isinstance(value, str):
                    entries[key] = ("str", (), value.encode())
                else:
                    entries[key] = (type(value).__name__, (), bytes(value))
            out[name] = entries
    return out


def _state(repo: tc.Repository) -> tuple[dict[str, str], dict[str, str], str | None]:
    try:
        origin = repo.resolve("origin/main")
    except tc.RefNotFoundError:
        origin = None
    return dict(repo.branches), dict(repo.tags), origin


def _units(folder: Path) -> list[tuple[Path, Any]]:
    """Every index file of a folder of the remote (``.idx`` and ``.midx``), decoded."""
    return [
        (path, decode_index(path.name, path.read_bytes(), str(path)))
        for path in sorted(folder.iterdir())
        if path.suffix in (".idx", ".midx") and not path.name.startswith(".")
    ]


def _indexed_entries(root: Path) -> set[tuple[str, bytes]]:
    """(folder, name) of every entry some index of a local remote lists."""
    return {
        (folder, name)
        for folder in ("objects", "data")
        if (root / folder).is_dir()
        for _, index in _units(root / folder)
        for name in index.names()
    }


def _no_entry_lost(before: set[tuple[str, bytes]], root: Path, where: str) -> None:
    """Nothing removes an entry from a remote (consolidation moves entries, never drops them)."""
    lost = before - _indexed_entries(root)
    assert not lost, f"{where}: {len(lost)} entries the remote held are no longer indexed"


# -- racing pushers ---------------------------------------------------------


def _race_value(client: int, round_: int) -> np.ndarray:
    return np.array([client, round_, client * 1_000 + round_, -7 - client], dtype=np.int64)


def _seed_remote(tmp_path: Path, url: str, options: dict[str, Any]) -> str:
    """Create the remote: one commit holding the key ``seed``; its id."""
    seed = tc.init(tmp_path / "seed", **IDENTITY)
    try:
        with seed.checkout(write=True) as co:
            column = co.add_ndarray_column("v", shape=(4,), dtype="int64")
            column["seed"] = np.array([1, 2, 3, 4], dtype=np.int64)
            commit = co.commit("seed")
        seed.add_remote("origin", url, **options)
        seed.push("origin", "main")
    finally:
        seed.close()
    return commit


@dataclass
class _Tally:
    """What one racer did."""

    made: list[str] = field(default_factory=list)  # its commits and merge results
    keys: list[str] = field(default_factory=list)
    conflicts: int = 0
    pushed: list[str] = field(default_factory=list)  # the heads its successful pushes set


def _ref_log(url: str, options: dict[str, Any]) -> list[str]:
    """The versions of the remote's ``heads/main``, oldest first (``refs/heads/main~/``)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **options)
    folder = f"{root}/refs/heads/main~"
    fs.invalidate_cache()
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)]
    versions = sorted((n for n in names if len(n) == 16 and n.isdigit()), reverse=True)
    return [fs.cat_file(f"{folder}/{n}").decode().strip() for n in versions]


def _check_ref_versions(
    url: str, options: dict[str, Any], seed_commit: str, tallies: list[_Tally], complete: bool
) -> list[str]:
    """Each successful push made one version of the remote's main (all of them if
    ``complete``, else at least the pushes the racers saw succeed); the versions."""
    log = _ref_log(url, options)
    assert log[0] == seed_commit
    pushed = sorted(h for t in tallies for h in t.pushed)
    if complete:
        assert sorted(log[1:]) == pushed, "the ref's versions are not the successful pushes"
    else:
        overwritten = set(pushed) - set(log[1:])
        assert not overwritten, f"successful pushes {overwritten} left no version of the ref"
    return log


def _check_race_outcome(
    tmp_path: Path,
    url: str,
    options: dict[str, Any],
    seed_commit: str,
    tallies: list[_Tally],
    values: dict[str, np.ndarray],
) -> None:
    """The remote's main holds every commit and every key of every racer; it verifies."""
    final = tc.clone(url, tmp_path / "final", storage_options=options, **IDENTITY)
    try:
        report = final.verify_remote("origin", raise_on_error=False)
        assert report.ok, str(report)
        history = {info.id for info in final.log("main")}
        assert seed_commit in history
        # Every successful push made exactly one version of the ref, each a fast-forward
        # of the one before: no push overwrote another one's.
        log = _check_ref_versions(url, options, seed_commit, tallies, complete=True)
        assert log[-1] == final.branches["main"]
        for older, newer in itertools.pairwise(log):
            assert older in {info.id for info in final.log(newer)}, f"{newer} is no fast-forward"
        for i, tally in enumerate(tallies):
            lost = [c for c in tally.made if c not in history]
            assert not lost, f"client {i}: commits {lost} are not on the remote's main"
        snapshot = _snapshot(final, "main")["v"]
        expected = {"seed": np.array([1, 2, 3, 4], dtype=np.int64), **values}
        assert sorted(snapshot) == sorted(expected), "the remote's main lost or gained keys"
        for key, value in expected.items():
            assert snapshot[key] == (value.dtype.str, value.shape, value.tobytes()), key
        assert final.verify(full=True).ok
    finally:
        final.close()


def _race_threads(
    tmp_path: Path, url: str, options: dict[str, Any], clients: int, rounds: int
) -> None:
    seed_commit = _seed_remote(tmp_path, url, options)
    repos = [
        tc.clone(url, tmp_path / f"client{i}", storage_options=options, **IDENTITY)
        for i in range(clients)
    ]
    tallies = [_Tally() for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients, timeout=120)

    def work(i: int) -> None:
        repo, tally = repos[i], tallies[i]
        try:
            for n in range(rounds):
                barrier.wait()  # every client commits and pushes at the same moment
                key = f"client{i}-round{n}"
                with repo.checkout(write=True) as co:
                    co["v"][key] = _race_value(i, n)
                    tally.made.append(co.commit(f"client {i} round {n}"))
                tally.keys.append(key)
                for _ in range(50):
                    try:
                        tally.pushed.append(repo.push("origin").commit)
                        break
                    except tc.ConcurrentUpdateError:
                        tally.conflicts += 1
                        repo.fetch("origin", "main")
                        tally.made.append(repo.merge("origin/main", "main"))
                else:
                    raise AssertionError(f"client {i} never got round {n} pushed")
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not any(t.is_alive() for t in threads), "a racer hangs"
        real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
        _check_ref_versions(url, options, seed_commit, tallies, complete=not errors)
        if real:
            raise real[0]
        assert not errors, errors
    finally:
        for repo in repos:
            repo.close()
    values = {
        f"client{i}-round{n}": _race_value(i, n) for i in range(clients) for n in range(rounds)
    }
    assert sorted(values) == sorted(k for t in tallies for k in t.keys)
    _check_race_outcome(tmp_path, url, options, seed_commit, tallies, values)
    conflicts = sum(t.conflicts for t in tallies)
    assert conflicts > 0, "no push ever lost a race: the test did not test anything"


def test_racing_pusher_threads_file(tmp_path: Path) -> None:
    _race_threads(tmp_path, f"file://{tmp_path}/remote", {}, clients=3, rounds=8)


def test_racing_pusher_threads_s3(tmp_path: Path, s3_server: Any, s3_url: str) -> None:
    _race_threads(tmp_path, s3_url, s3_server.storage_options, clients=2, rounds=8)


RACER = r"""
import json, sys, time, traceback
from pathlib import Path
import numpy as np
import tensorcask as tc

url, options, path, sync = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
me, clients, rounds = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
made, keys, pushed, conflicts = [], [], [], 0
try:
    repo = tc.clone(url, path, storage_options=options, user_name=f"P{me}", user_email="p@x.org")
    for n in range(rounds):
        (sync / f"{n}-{me}").touch()  # a barrier: wait until every racer reached round n
        deadline = time.monotonic() + 60
        while len(list(sync.glob(f"{n}-*"))) < clients:
            if (sync / "abort").exists():
                raise SystemExit(f"racer {me}: another racer failed")
            if time.monotonic() > deadline:
                raise SystemExit(f"racer {me}: barrier of round {n} timed out")
            time.sleep(0.001)
        key = f"proc{me}-round{n}"
        with repo.checkout(write=True) as co:
            co["v"][key] = np.array([me, n, me * 1000 + n, -7 - me], dtype=np.int64)
            made.append(co.commit(f"process {me} round {n}"))
        keys.append(key)
        for _ in range(50):
            try:
                pushed.append(repo.push("origin").commit)
                break
            except tc.ConcurrentUpdateError:
                conflicts += 1
                repo.fetch("origin", "main")
                made.append(repo.merge("origin/main", "main"))
        else:
            raise SystemExit(f"racer {me} never got round {n} pushed")
    repo.close()
except BaseException as exc:
    (sync / "abort").touch()
    print(json.dumps({"pushed": pushed, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
    raise
doc = {"made": made, "keys": keys, "conflicts": conflicts, "pushed": pushed}
print(json.dumps(doc), flush=True)
"""


@pytest.mark.slow
def test_racing_pusher_processes_s3(tmp_path: Path, s3_server: Any, s3_url: str) -> None:
    clients, rounds = 3, 4
    options = s3_server.storage_options
    seed_commit = _seed_remote(tmp_path, s3_url, options)
    sync = tmp_path / "sync"
    sync.mkdir()
    racers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RACER,
                s3_url,
                json.dumps(options),
                str(tmp_path / f"proc{i}"),
                str(sync),
                str(i),
                str(clients),
                str(rounds),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_child_env(),
            cwd=tmp_path,
        )
        for i in range(clients)
    ]
    try:
        results = [racer.communicate(timeout=240) for racer in racers]
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()
    docs = [json.loads(out.strip().splitlines()[-1]) if out.strip() else {} for out, _ in results]
    tallies = [
        _Tally(d.get("made", []), d.get("keys", []), d.get("conflicts", 0), d.get("pushed", []))
        for d in docs
    ]
    failed = [r.returncode for r in racers] != [0] * clients
    _check_ref_versions(s3_url, options, seed_commit, tallies, complete=not failed)
    assert not failed, [err[-3000:] for _, err in results]
    values = {f"proc{i}-round{n}": _race_value(i, n) for i in range(clients) for n in range(rounds)}
    assert sorted(values) == sorted(k for t in tallies for k in t.keys)
    _check_race_outcome(tmp_path, s3_url, options, seed_commit, tallies, values)
    assert sum(t.conflicts for t in tallies) > 0, "no push ever lost a race"


# -- interrupted push -------------------------------------------------------

SHAPE = (64, 64)
PER_COMMIT = 2000  # samples of 4 KiB per commit
COMMITS_PER_ROUND = 3
KILL_ROUNDS = 5

PUSHER = r"""
import sys, time
import tensorcask as tc

repo = tc.Repository(sys.argv[1])
plan = sys.argv[2].split(",")
print("ready", flush=True)
for commit in plan:
    repo.merge(commit, "main")  # a fast-forward: main moves one commit at a time
    repo.push("origin", "main")
    print("pushed", commit, flush=True)
print("done", flush=True)
time.sleep(600)
"""


def _image_block(commit_number: int) -> np.ndarray:
    rng = np.random.default_rng([SEED, commit_number])
    return rng.integers(0, 256, size=(PER_COMMIT, *SHAPE), dtype=np.uint8)


def _add_commits(repo: tc.Repository, first: int, count: int) -> list[str]:
    """Commits ``first .. first + count - 1`` on branch ``work``, each with new samples."""
    made = []
    for number in range(first, first + count):
        keys = range(number * PER_COMMIT, (number + 1) * PER_COMMIT)
        with repo.checkout(write=True, branch="work") as co:
            co["img"].update(keys, _image_block(number))
            for k in keys[:: PER_COMMIT // 20]:
                co["name"][k] = f"sample {k} of commit {number} \u00e9"
            made.append(co.commit(f"commit {number}"))
    return made


def _run_pusher_and_kill(
    repo_path: Path, plan: list[str], delay: float, log: Path
) -> tuple[list[str], bool]:
    """Start the pusher, kill it ``delay`` s after it is ready; the commits it reported pushed."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", PUSHER, str(repo_path), ",".join(plan)],
            stdout=subprocess.PIPE,
            stderr=err,
            env=_child_env(),
        )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else b""
        assert line == b"ready\n", f"pusher did not start: {line!r}\n{log.read_text()}"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"the pusher exited on its own ({proc.returncode}):\n{log.read_text()}"
    )
    lines = out.decode().splitlines()
    pushed = [line.split()[1] for line in lines if line.startswith("pushed ")]
    return pushed, "done" in lines


@pytest.mark.slow
def test_push_killed_at_random_moments_leaves_a_consistent_remote(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    url = f"file://{tmp_path}/remote"
    local = tmp_path / "local"
    repo = tc.init(local, **IDENTITY)
    try:
        with repo.checkout(write=True) as co:
            co.add_ndarray_column("img", shape=SHAPE, dtype="uint8")
            co.add_str_column("name")
            co.commit("columns")
        repo.create_branch("work", "main")
        (baseline,) = _add_commits(repo, 0, 1)
        repo.merge(baseline, "main")
        repo.add_remote("origin", url)
        started = time.perf_counter()
        repo.push("origin", "main")
        per_push = time.perf_counter() - started
        remote_root = tmp_path / "remote"
        remote_head = baseline
        number = 1
        interrupted = 0
        for round_ in range(KILL_ROUNDS):
            plan = _add_commits(repo, number, COMMITS_PER_ROUND)
            number += COMMITS_PER_ROUND
            repo.close()

            window = max(0.3, per_push * COMMITS_PER_ROUND * 1.5)
            delay = rng.uniform(0.0, window)
            where = f"round {round_} (kill {delay:.3f} s after start, seed {SEED})"
            indexed = _indexed_entries(remote_root)
            pushed, done = _run_pusher_and_kill(local, plan, delay, tmp_path / f"err{round_}")
            interrupted += not done
            _no_entry_lost(indexed, remote_root, where)

            repo = tc.Repository(local)
            assert repo.verify(full=True).ok, where
            report = repo.verify_remote("origin", raise_on_error=False)
            assert report.ok, f"{where}: {report}"

            check = tc.clone(url, tmp_path / f"check{round_}", **IDENTITY)
            try:
                head = check.branches["main"]
                # The remote's main is the old head or one of the commits pushed since, and
                # never behind a push the child saw complete.
                line = [remote_head, *plan]
                assert head in line, f"{where}: the remote's main is at unknown {head}"
                if pushed:
                    assert line.index(head) >= line.index(pushed[-1]), where
                assert check.verify(full=True).ok, where
                got = _snapshot(check, "main")
                assert got == _snapshot(repo, head), f"{where}: clone differs from {head}"
                commits_in = int(check.log("main", limit=1)[0].message.split()[1]) + 1
                assert len(got["img"]) == PER_COMMIT * commits_in, where

                # Push again from the same local repository: it completes, and the remote
                # then equals the local main.
                indexed = _indexed_entries(remote_root)
                repo.push("origin", "main")
                _no_entry_lost(indexed, remote_root, f"{where}, the new push")
                local_main = repo.branches["main"]
                check.fetch("origin", "main")
                assert check.resolve("origin/main") == local_main, where
                report = repo.verify_remote("origin", raise_on_error=False)
                assert report.ok, f"{where}, after the new push: {report}"
                remote_head = local_main
            finally:
                check.close()

        assert interrupted > 0, "every pusher finished before it was killed: nothing tested"
        # Finally push everything and clone it whole.
        repo.merge("work", "main")
        indexed = _indexed_entries(remote_root)
        repo.push("origin", "main")
        _no_entry_lost(indexed, remote_root, "the last push")
        final = tc.clone(url, tmp_path / "final", **IDENTITY)
        try:
            assert final.branches["main"] == repo.branches["main"]
            got = _snapshot(final, "main")
            assert got == _snapshot(repo, "main")
            assert len(got["img"]) == PER_COMMIT * number
            for commit_number in (0, number - 1):
                block = _image_block(commit_number)
                for i in (0, PER_COMMIT - 1):
                    key = commit_number * PER_COMMIT + i
                    assert got["img"][key][2] == block[i].tobytes()
        finally:
            final.close()
        assert repo.verify_remote("origin").ok
    finally:
        repo.close()


# -- damage -----------------------------------------------------------------


@dataclass
class _Damaged:
    """A remote with two commits, and a clone taken after the first."""

    root: Path
    url: str
    source: tc.Repository
    clone: tc.Repository
    second: str  # the commit the clone lacks
    new_data_pack: Path  # the sample pack the second push added


def _make_remote(tmp_path: Path) -> _Damaged:
    root = tmp_path / "remote"
    url = f"file://{root}"
    source = tc.init(tmp_path / "source", **IDENTITY)
    rng = np.random.default_rng(SEED)
    with source.checkout(write=True) as co:
        co.add_ndarray_column("x", shape=(16,), dtype="int64")
        co.add_str_column("s")
        co["x"].update(range(300), rng.integers(-(10**9), 10**9, size=(300, 16)))
        for k in range(0, 300, 10):
            co["s"][k] = f"text {k}"
        co.commit("one")
    source.add_remote("origin", url)
    source.push("origin", "main")
    clone = tc.clone(url, tmp_path / "clone", **IDENTITY)
    before = set((root / "data").glob("*.pack"))
    with source.checkout(write=True) as co:
        co["x"].update(range(300, 600), rng.integers(-(10**9), 10**9, size=(300, 16)))
        co["s"][301] = "a new text"
        second = co.commit("two")
    source.push("origin", "main")
    (new_data_pack,) = set((root / "data").glob("*.pack")) - before  # sample packs stay put
    return _Damaged(root, url, source, clone, second, new_data_pack)


def _find_entry(folder: Path, name: bytes) -> tuple[Path, Path, int, int]:
    """The index file, pack, offset and size of entry ``name``."""
    key = np.array([entry_key(name)], f"S{len(entry_key(name))}")
    for path, index in _units(folder):
        (at,) = index.find(key).tolist()
        if at >= 0:
            pack = index.packs[int(index.entry_pack[at])][0]
            return path, folder / f"{pack}.pack", int(index.offsets[at]), int(index.sizes[at])
    raise AssertionError(f"no index of {folder} lists {name.hex()}")


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def _flip_data_sample(d: _Damaged) -> Path:
    # Entries follow each other to the end of the pack: the last byte is sample bytes.
    _flip(d.new_data_pack, d.new_data_pack.stat().st_size - 1)
    return d.new_data_pack


def _truncate_data_pack(d: _Damaged) -> Path:
    os.truncate(d.new_data_pack, d.new_data_pack.stat().st_size - 100)
    return d.new_data_pack


def _flip_history_pack(d: _Damaged) -> Path:
    # The second commit's own object: the clone lacks it, so a fetch must read it.
    _, pack, offset, size = _find_entry(d.root / "objects", bytes.fromhex(d.second))
    _flip(pack, offset + size // 2)
    return pack


def _damage_data_index(d: _Damaged) -> Path:
    (idx,) = [
        p
        for p, index in _units(d.root / "data")
        if any(f"{pack}.pack" == d.new_data_pack.name for pack, _ in index.packs)
    ]
    _flip(idx, idx.stat().st_size // 2)
    return idx


def _damage_history_index(d: _Damaged) -> Path:
    idx, _, _, _ = _find_entry(d.root / "objects", bytes.fromhex(d.second))
    idx.write_bytes(idx.read_bytes()[:-40])
    return idx


def _garbage_ref(d: _Damaged) -> Path:
    newest = sorted((d.root / "refs" / "heads" / "main~").iterdir())[0]
    newest.write_bytes(b"\x00\xffnot a commit id at all\n")
    return newest


DAMAGE: dict[str, Callable[[_Damaged], Path]] = {
    "data-sample-byte": _flip_data_sample,
    "data-pack-truncated": _truncate_data_pack,
    "history-pack-byte": _flip_history_pack,
    "data-index": _damage_data_index,
    "history-index": _damage_history_index,
    "ref-garbage": _garbage_ref,
}


@pytest.fixture
def damaged(request: pytest.FixtureRequest, tmp_path: Path):
    d = _make_remote(tmp_path)
    try:
        yield d, DAMAGE[request.param](d)
    finally:
        d.source.close()
        d.clone.close()


@pytest.mark.parametrize("damaged", list(DAMAGE), indirect=True)
def test_damaged_remote_is_refused_by_clone_and_fetch(
    damaged: tuple[_Damaged, Path], tmp_path: Path
) -> None:
    d, _ = damaged
    target = tmp_path / "new-clone"
    with pytest.raises(tc.CorruptionError) as caught:
        tc.clone(d.url, target, **IDENTITY)
    assert str(d.root) in str(caught.value), "the error does not say which remote is damaged"
    assert not target.exists(), "a failed clone left files behind"

    empty = tmp_path / "empty-folder"  # a clone into an existing empty folder leaves it empty
    empty.mkdir()
    with pytest.raises(tc.CorruptionError):
        tc.clone(d.url, empty, **IDENTITY)
    assert list(empty.iterdir()) == []

    before = _state(d.clone)
    data_before = _snapshot(d.clone, "main")
    with pytest.raises(tc.CorruptionError):
        d.clone.fetch("origin")
    assert _state(d.clone) == before
    assert _snapshot(d.clone, "main") == data_before
    assert d.clone.verify(full=True).ok


@pytest.mark.parametrize(
    "damaged",
    [name for name in DAMAGE],
    indirect=True,
)
def test_damaged_remote_is_reported_by_verify_remote(damaged: tuple[_Damaged, Path]) -> None:
    d, path = damaged
    report = d.clone.verify_remote("origin", raise_on_error=False)
    assert not report.ok
    named = [p for p in report.problems if str(path) in p]
    assert named, f"no problem names {path}: {report.problems}"
    with pytest.raises(tc.CorruptionError):
        d.clone.verify_remote("origin")


def test_ref_to_a_commit_the_remote_lacks_is_refused(tmp_path: Path) -> None:
    """A ref version holding a well-formed id of a commit that is not there."""
    d = _make_remote(tmp_path)
    try:
        newest = sorted((d.root / "refs" / "heads" / "main~").iterdir())[0]
        newest.write_bytes(b"ab" * 20 + b"\n")
        target = tmp_path / "new-clone"
        # The remote is damaged, though the library calls it a missing ref.
        with pytest.raises((tc.CorruptionError, tc.RefNotFoundError)):
            tc.clone(d.url, target, **IDENTITY)
        assert not target.exists()
        before = _state(d.clone)
        with pytest.raises((tc.CorruptionError, tc.RefNotFoundError)):
            d.clone.fetch("origin")
        assert _state(d.clone) == before
        assert d.clone.verify(full=True).ok
        report = d.clone.verify_remote("origin", raise_on_error=False)
        assert not report.ok
        assert any("abababababab" in p for p in report.problems), report.problems
    finally:
        d.source.close()
        d.clone.close()


def test_damaged_ref_is_repaired_by_a_forced_push(tmp_path: Path) -> None:
    d = _make_remote(tmp_path)
    try:
        _garbage_ref(d)
        with pytest.raises(tc.CorruptionError, match="force=True"):
            d.clone.fetch("origin")
        d.source.push("origin", "main", force=True)
        d.clone.fetch("origin")
        assert d.clone.resolve("origin/main") == d.source.branches["main"]
        assert d.source.verify_remote("origin").ok
    finally:
        d.source.close()
        d.clone.close()


def test_a_damaged_ref_does_not_block_other_branches(tmp_path: Path) -> None:
    d = _make_remote(tmp_path)
    try:
        d.source.create_branch("dev", "main")
        d.source.push("origin", "dev")
        _garbage_ref(d)  # main's newest version
        d.clone.fetch("origin", "dev")  # another branch still fetches
        assert d.clone.resolve("origin/dev") == d.source.branches["dev"]
        with pytest.raises(tc.CorruptionError, match="force=True"):
            d.clone.fetch("origin", "main")
        with pytest.raises(tc.CorruptionError, match="force=True"):
            d.source.push("origin", "main")  # not without force: we cannot tell what it held
        d.source.create_tag("v1", "dev")
        pushed = d.source.push("origin", "dev")  # pushes (and tags) go on beside it
        assert pushed.tags == ["v1"]
        report = d.source.verify_remote("origin", raise_on_error=False)
        assert not report.ok and any("main" in p for p in report.problems), report.problems
    finally:
        d.source.close()
        d.clone.close()


def test_damaged_data_pack_on_s3_is_refused(tmp_path: Path, s3_server: Any, s3_url: str) -> None:
    options = s3_server.storage_options
    fs = s3_server.filesystem()
    root = s3_url[len("s3://") :]
    source = tc.init(tmp_path / "source", **IDENTITY)
    rng = np.random.default_rng(SEED)
    try:
        with source.checkout(write=True) as co:
            co.add_ndarray_column("x", shape=(16,), dtype="int64")
            co["x"].update(range(100), rng.integers(0, 10**9, size=(100, 16)))
            co.commit("one")
        source.add_remote("origin", s3_url, **options)
        source.push("origin", "main")
        clone = tc.clone(s3_url, tmp_path / "clone", storage_options=options, **IDENTITY)
        try:
            before = set(fs.ls(f"{root}/data", refresh=True))
            with source.checkout(write=True) as co:
                co["x"].update(range(100, 200), rng.integers(0, 10**9, size=(100, 16)))
                co.commit("two")
            source.push("origin", "main")
            fs.invalidate_cache()
            (pack,) = [
                p for p in set(fs.ls(f"{root}/data", refresh=True)) - before if p.endswith(".pack")
            ]
            data = bytearray(fs.cat_file(pack))
            data[len(data) // 2] ^= 0x5A  # past the 8-byte magic, every byte is in an entry
            fs.pipe(pack, bytes(data))

            target = tmp_path / "new-clone"
            with pytest.raises(tc.CorruptionError):
                tc.clone(s3_url, target, storage_options=options, **IDENTITY)
            assert not target.exists()
            state, snapshot = _state(clone), _snapshot(clone, "main")
            with pytest.raises(tc.CorruptionError):
                clone.fetch("origin")
            assert _state(clone) == state
            assert _snapshot(clone, "main") == snapshot
            assert clone.verify(full=True).ok
            report = clone.verify_remote("origin", raise_on_error=False)
            assert not report.ok
            assert any(pack in p for p in report.problems), report.problems
        finally:
            clone.close()
    finally:
        source.close()


# -- consolidation never loses an entry ---------------------------------------


def _commit_samples(repo: tc.Repository, keys: range, seed: int) -> str:
    with repo.checkout(write=True) as co:
        if "x" not in co.columns:
            co.add_ndarray_column("x", shape=(8,), dtype="int64")
        values = np.random.default_rng(seed).integers(0, 10**9, size=(len(keys), 8))
        co["x"].update(keys, values)
        return co.commit(f"{len(keys)} samples from seed {seed}")


def test_consolidation_after_an_interrupted_one_keeps_the_history(tmp_path: Path) -> None:
    """The state a push killed inside its consolidation leaves: the merged history pack
    is written, one of the packs it replaces is not removed yet. The next consolidation
    must not lose what they hold."""
    url = f"file://{tmp_path}/remote"
    objects = tmp_path / "remote" / "objects"
    a = tc.init(tmp_path / "a", **IDENTITY)
    try:
        a.add_remote("origin", url)
        _commit_samples(a, range(300), 1)
        a.push("origin", "main")
        first = {p.name: p.read_bytes() for p in objects.iterdir()}
        _commit_samples(a, range(300), 2)  # every key again: as many new objects as before
        a.push("origin", "main")
        if set(first) & {p.name for p in objects.iterdir()}:
            raise RuntimeError("precondition: the second push did not consolidate history")
        for name, data in first.items():  # the first pack, as if its removal never happened
            (objects / name).write_bytes(data)
        assert a.verify_remote("origin", raise_on_error=False).ok
        a.create_branch("feature", "main")
        a.push("origin", "feature")  # uploads nothing; consolidates again
        report = a.verify_remote("origin", raise_on_error=False)
        assert report.ok, str(report)
        c = tc.clone(url, tmp_path / "c", **IDENTITY)
        assert _snapshot(c, "main") == _snapshot(a, "main")
        c.close()
    finally:
        a.close()


def test_pushing_samples_the_remote_already_has_keeps_its_index(tmp_path: Path) -> None:
    """A second repository pushes exactly the samples of an earlier push."""
    url = f"file://{tmp_path}/remote"
    a = tc.init(tmp_path / "a", **IDENTITY)
    a.add_remote("origin", url)
    _commit_samples(a, range(100), 1)
    a.push("origin", "main")
    _commit_samples(a, range(100, 160), 2)
    a.push("origin", "main")  # the two sample indexes are merged into one .midx
    other = tc.init(tmp_path / "other", **IDENTITY)
    other.add_remote("origin", url)
    _commit_samples(other, range(100), 1)  # the same 100 samples: the same sample pack
    other.create_branch("other", "main")
    other.push("origin", "other")
    try:
        report = a.verify_remote("origin", raise_on_error=False)
        assert report.ok, str(report)
        c = tc.clone(url, tmp_path / "c", **IDENTITY)
        assert _snapshot(c, "main") == _snapshot(a, "main")
        c.close()
    finally:
        a.close()
        other.close()
