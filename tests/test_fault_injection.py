"""Fault injection: single-byte flips in every kind of file, and the repros of issue 7.

The rule (SPEC §2, README: "loaders never yield silently wrong data"): after
any single flipped byte, every read of every sample, through single reads,
``get_many`` and the loaders, returns exactly the stored value or raises
:class:`tensorcask.CorruptionError`; never a wrong value, never another
exception type, never a crash. Files under ``cache/`` are derived data: a
flip there is rebuilt from the record trees, so every read returns the right
value. ``verify(full=True, raise_on_error=False)`` never raises and reports
``ok=False`` whenever a read raised.

The flips are checked in child processes (``faultkit.py``): a flip in an LMDB
file may crash the reader, which must be reported, not take pytest down.
Set ``TENSORCASK_FAULT_SEED`` to try other positions.
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tensorcask as tc
from tensorcask.loaders.core import RepoSource

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faultkit

SEED = int(os.environ.get("TENSORCASK_FAULT_SEED", "7"))
TRIAL_TIMEOUT = 15  # seconds without progress before a trial counts as hung (~1 s normally)
WORKERS = int(os.environ.get("TENSORCASK_FAULT_WORKERS", "2"))  # children at a time

# file kind -> (glob patterns relative to the repository, number of flips)
KINDS = {
    "memmap-segment": (["data/memmap/*.seg"], 12),
    "hdf5-file": (["data/hdf5/*.h5"], 18),
    "lmdb-data": (["data/lmdb/data.mdb"], 18),
    "index-run": (["index/*.run"], 18),
    "meta-lmdb": (["meta/data.mdb"], 24),
    "cache": (["cache/**/*"], 16),
}


# -- the pristine repository ---------------------------------------------------


def _build(path: Path, recent_limit: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(faultkit.SCRIPT), "build", str(path), str(recent_limit)],
        capture_output=True,
        text=True,
        env=faultkit.child_env(),
        timeout=300,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@")]
    assert proc.returncode == 0 and lines, (
        f"building the test repository failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    )
    manifest: dict[str, Any] = json.loads(lines[-1][2:])
    return manifest


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("pristine") / "repo"
    manifest = _build(path, faultkit.BUILD_RECENT_LIMIT)
    runs = list((path / "index").glob("*.run"))
    assert len(runs) >= 2, f"the build wrote {len(runs)} content-index runs, expected several"
    assert any(p.is_file() for p in (path / "cache").rglob("*")), "the loader pass cached nothing"
    return path, manifest


def _files(repo: Path, patterns: list[str]) -> list[Path]:
    found = sorted({p for pattern in patterns for p in repo.glob(pattern) if p.is_file()})
    return [p for p in found if p.stat().st_size > 0]


def _positions(path: Path, count: int, rng: random.Random) -> list[int]:
    """``count`` distinct offsets: some in the header, most on bytes that hold something."""
    data = np.frombuffer(path.read_bytes(), np.uint8)
    size = len(data)
    count = min(count, size)
    picks: set[int] = set()
    # format headers: the first 64 bytes (superblocks, magic, counts), the next 192,
    # and LMDB's second meta page
    heads = [range(min(size, 64)), range(min(size, 64), min(size, 256))]
    if path.suffix == ".mdb" and size > 4096 + 256:
        heads.append(range(4096, 4096 + 256))
    heads = [h for h in heads if len(h)]
    while len(picks) < max(1, count // 3):
        picks.add(rng.choice(rng.choice(heads)))
    nonzero = np.flatnonzero(data)
    while len(picks) < count:
        if nonzero.size and rng.random() < 0.8:
            picks.add(int(nonzero[rng.randrange(nonzero.size)]))
        else:
            picks.add(rng.randrange(size))
    return sorted(picks)


def _mask(rng: random.Random) -> int:
    return rng.choice([0x01, 0x10, 0x80, 0xFF, rng.randrange(1, 256)])


def _plan(repo: Path, patterns: list[str], count: int, seed: str) -> list[dict[str, Any]]:
    """Flips spread over every file of a kind (at least one per file)."""
    rng = random.Random(seed)
    files = _files(repo, patterns)
    assert files, f"the test repository has no file matching {patterns}"
    if len(files) > count:  # many small files (the cache): a sample of them
        files = sorted(rng.sample(files, count))
    per_file = max(1, count // len(files))
    trials = []
    for path in files:
        for offset in _positions(path, per_file, rng):
            trials.append(
                {
                    "id": len(trials),
                    "file": str(path.relative_to(repo)),
                    "offset": offset,
                    "mask": _mask(rng),
                }
            )
    return trials


# -- running trials in child processes ------------------------------------------


def _describe(trial: dict[str, Any]) -> str:
    return f"{trial['file']} @ {trial['offset']} ^ 0x{trial['mask']:02x}"


class _Child:
    """One child process working through a list of trials."""

    def __init__(self, slot: int, work: Path, job: dict[str, Any], trials: list[dict[str, Any]]):
        self.trials = trials
        self.job_path = work / f"job{slot}.json"
        self.job_path.write_text(json.dumps({**job, "trials": trials}))
        self.err_path = work / f"stderr{slot}.txt"
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-X",
                    "faulthandler",
                    str(faultkit.SCRIPT),
                    "trials",
                    str(self.job_path),
                ],
                stdout=subprocess.PIPE,
                stderr=err,
                env=faultkit.child_env(),
                bufsize=0,
            )
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        self.buffer = b""
        self.current: int | None = None
        self.step = "starting"
        self.done: set[int] = set()
        self.seen = time.monotonic()

    def lines(self) -> tuple[list[bytes], bool]:
        """Complete lines read now, and whether the child closed its output."""
        chunk = os.read(self.fd, 1 << 16)
        self.seen = time.monotonic()
        self.buffer += chunk
        *complete, self.buffer = self.buffer.split(b"\n")
        return complete, not chunk

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return self.err_path.read_text(errors="replace")


def run_flips(
    pristine: Path,
    commit: str,
    work: Path,
    trials: list[dict[str, Any]],
    *,
    torch: bool = False,
    orders: tuple[str, ...] = ("reads-first",),
) -> tuple[list[str], dict[str, int]]:
    """Run ``trials`` in WORKERS children (a new one after each crash); return the
    rule violations and counts."""
    by_id = {t["id"]: t for t in trials}
    failures: list[str] = []
    stats = {"trials": 0, "raised": 0, "read-right": 0, "crashed": 0}
    work.mkdir(parents=True, exist_ok=True)
    job = {
        "pristine": str(pristine),
        "work": str(work),
        "commit": commit,
        "opts": {"torch": torch, "orders": list(orders)},
    }
    children = {
        slot: _Child(slot, work, job, trials[slot::WORKERS])
        for slot in range(WORKERS)
        if trials[slot::WORKERS]
    }
    while children:
        by_fd = {child.fd: slot for slot, child in children.items()}
        ready, _, _ = select.select(list(by_fd), [], [], 1.0)
        finished = []
        for fd in ready:
            slot = by_fd[fd]
            child = children[slot]
            lines, closed = child.lines()
            for line in lines:
                if not line.startswith(b"@@"):
                    continue
                message = json.loads(line[2:])
                if "start" in message:
                    child.current = message["start"]
                    continue
                if "step" in message:
                    child.step = message["step"]
                    continue
                tid = message["result"]
                child.done.add(tid)
                child.current = None
                stats["trials"] += 1
                stats["raised" if message["raised"] else "read-right"] += 1
                failures += [f"{_describe(by_id[tid])}: {f}" for f in message["failures"]]
            if closed:
                finished.append((slot, False))
        for slot, child in children.items():
            if time.monotonic() - child.seen > TRIAL_TIMEOUT and (slot, False) not in finished:
                finished.append((slot, True))
        for slot, hung in finished:
            child = children.pop(slot)
            stderr = child.stop()
            code = child.proc.returncode
            if child.current is not None:
                stats["trials"] += 1
                stats["crashed"] += 1
                child.done.add(child.current)
                if hung:
                    why = f"hung for more than {TRIAL_TIMEOUT}s"
                elif code < 0:
                    why = f"the reader process died of {signal.Signals(-code).name}"
                else:
                    why = f"the reader process exited with {code}"
                failures.append(
                    f"{_describe(by_id[child.current])}: CRASH during {child.step}: {why}\n"
                    f"{stderr[-1500:]}"
                )
            elif code != 0 or hung:
                raise AssertionError(f"the trial process failed ({code}):\n{stderr[-3000:]}")
            rest = [t for t in child.trials if t["id"] not in child.done]
            if rest:
                children[slot] = _Child(slot, work, job, rest)
    return failures, stats


def _report(kind: str, failures: list[str], stats: dict[str, int]) -> str:
    shown = "\n".join(f"  - {f}" for f in failures[:25])
    more = f"\n  ... and {len(failures) - 25} more" if len(failures) > 25 else ""
    return f"{kind}: {len(failures)} violation(s) of the rule; {stats}\n{shown}{more}"


# -- 1. byte flips in every kind of file -----------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_byte_flip_raises_corruption_or_reads_right(
    pristine: tuple[Path, dict[str, Any]], tmp_path: Path, kind: str
) -> None:
    path, manifest = pristine
    patterns, count = KINDS[kind]
    trials = _plan(path, patterns, count, f"{SEED}/{kind}")
    failures, stats = run_flips(path, manifest["commit"], tmp_path / "work", trials)
    print(f"{kind}: {stats}")
    assert stats["trials"] == len(trials)
    assert not failures, _report(kind, failures, stats)


# LMDB keeps two meta pages and trusts the one with the larger transaction id
# (bytes 144..151 of each page, no checksum): a flip there can make it read an
# older snapshot, which must not pass for the repository's current state.
TXNID = [(page + 151, 0xFF) for page in (0, 4096)] + [(page + 144, 0x40) for page in (0, 4096)]


@pytest.mark.parametrize("lmdb_file", ["meta/data.mdb", "data/lmdb/data.mdb"])
def test_lmdb_meta_page_flip_is_never_a_silent_rollback(
    pristine: tuple[Path, dict[str, Any]], tmp_path: Path, lmdb_file: str
) -> None:
    path, manifest = pristine
    trials = [
        {"id": i, "file": lmdb_file, "offset": offset, "mask": mask}
        for i, (offset, mask) in enumerate(TXNID)
    ]
    failures, stats = run_flips(path, manifest["commit"], tmp_path / "work", trials)
    assert not failures, _report(f"{lmdb_file} meta pages", failures, stats)


# -- 2. issue 7, case 1: the column-table cache -----------------------------------


def _npy_body(path: Path) -> tuple[int, int]:
    """(start, item size) of an .npy file's array bytes; (0, 8) for other files."""
    data = path.read_bytes()
    if not data.startswith(b"\x93NUMPY"):
        return 0, 8
    major = data[6]
    if major == 1:
        start = 10 + int.from_bytes(data[8:10], "little")
    else:
        start = 12 + int.from_bytes(data[8:12], "little")
    header = data[:start].decode("latin1")
    itemsize = 8 if ("<u8" in header or "<i8" in header or "<f8" in header) else 4
    if "|u1" in header:
        itemsize = 1
    return start, itemsize


def _body_u8(path: Path) -> np.ndarray:
    start, _ = _npy_body(path)
    body = path.read_bytes()[start:]
    return np.frombuffer(body[: len(body) // 8 * 8], "<u8")


def _key_arrays(files: list[Path]) -> list[Path]:
    """Cache files holding the int keys 0, 1, 2, ... (whatever the cache layout)."""
    found = []
    for path in files:
        values = _body_u8(path)
        if len(values) >= 64 and (np.diff(values[:64].astype(np.int64)) == 1).all():
            found.append(path)
    return found or [p for p in files if "key" in p.name.lower()]


def _low_bit_flips(
    repo: Path, files: list[Path], rng: random.Random, per_file: int, limit: int
) -> list[dict[str, Any]]:
    """Flip low bits of elements of each file's body: values stay plausible (a key
    becomes a neighbouring key, a row a neighbouring row), the nasty case."""
    trials: list[dict[str, Any]] = []
    for path in files:
        start, itemsize = _npy_body(path)
        count = (path.stat().st_size - start) // itemsize
        if count <= 0:
            continue
        elements = [count - 1, count // 2, *(rng.randrange(count) for _ in range(per_file))]
        for e in sorted(set(elements[:per_file])):
            trials.append(
                {
                    "id": len(trials),
                    "file": str(path.relative_to(repo)),
                    "offset": start + e * itemsize,  # little-endian: the lowest byte
                    "mask": rng.choice([0x01, 0x02, 0x04]),
                }
            )
    if len(trials) > limit:
        trials = rng.sample(trials, limit)
    return [{**t, "id": i} for i, t in enumerate(trials)]


def test_case1_flipped_cached_keys_never_mispair(
    pristine: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """A low bit flipped in a cached key array (key 4199 becomes 4198, ...): the
    DataLoader, single reads and get_many stay right (no mispaired label, no raw
    KeyError). Once reads first, once verify(full=True) first."""
    path, manifest = pristine
    keys = _key_arrays(_files(path, ["cache/**/*"]))
    assert keys, "no cached key array found under cache/"
    trials = _low_bit_flips(path, keys, random.Random(f"{SEED}/keys"), per_file=4, limit=8)
    failures, stats = run_flips(
        path,
        manifest["commit"],
        tmp_path / "work",
        trials,
        torch=True,
        orders=("reads-first", "verify-first"),
    )
    assert not failures, _report("cached keys", failures, stats)


def test_case1_flipped_cached_locations_never_blame_intact_data(
    pristine: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Plausible flips in every other cached file (rows, segments, checksums,
    digests, manifests): reads stay right, nothing blames an intact data file."""
    path, manifest = pristine
    cached = _files(path, ["cache/**/*"])
    others = [p for p in cached if p not in set(_key_arrays(cached))] or cached
    trials = _low_bit_flips(path, others, random.Random(f"{SEED}/rows"), per_file=1, limit=10)
    failures, stats = run_flips(path, manifest["commit"], tmp_path / "work", trials, torch=True)
    assert not failures, _report("cached locations", failures, stats)


def _du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def test_case1_cache_of_many_related_commits_stays_bounded(tmp_path: Path) -> None:
    """Reading 32 commits that each append 5 samples: cache/ holds far less than
    32 whole tables (tables of related commits share what did not change)."""
    base, step, commits = 2000, 5, 32

    def value(k: int) -> np.ndarray:
        return (np.arange(64, dtype=np.float32) + k * 0.5).astype(np.float32)

    repo = tc.init(tmp_path / "repo", user_name="Ada", user_email="ada@example.org")
    ids = []
    try:
        with repo.checkout(write=True) as co:
            x = co.add_ndarray_column("x", shape=(64,), dtype="float32")
            x.update(np.arange(base), np.stack([value(k) for k in range(base)]))
            ids.append(co.commit("base"))
            for c in range(1, commits):
                keys = np.arange(base + (c - 1) * step, base + c * step)
                x.update(keys, np.stack([value(int(k)) for k in keys]))
                ids.append(co.commit(f"append {c}"))
        cache = tmp_path / "repo" / "cache"

        def read(n: int) -> None:
            source = RepoSource(repo, ["x"], commit=ids[n])
            count = base + n * step
            assert len(source) == count
            (got,) = source.read(np.arange(count))
            want = np.stack([value(k) for k in range(count)])
            assert got.tobytes() == want.tobytes(), f"commit {n} reads back wrong"

        read(commits - 1)
        one_table = _du(cache)
        for n in range(commits - 1):
            read(n)
        total = _du(cache)
        data = _du(tmp_path / "repo" / "data")
    finally:
        repo.close()
    assert total <= 6 * one_table + (64 << 10), (
        f"reading {commits} related commits left {total} bytes under cache/ "
        f"({total / max(one_table, 1):.1f} x the {one_table} bytes one table takes; "
        f"data: {data} bytes): tables of related commits must share what did not change"
    )


# -- 2. issue 7, case 4: one damaged index-run entry -------------------------------

# Offsets inside one label location relative to its b"memmap" tail, for the
# encoding of the time of writing (version u8, segment u32, offset u64,
# checksum u64, ndim u8, then "memmap\0<i8"). Whatever the encoding, each of
# these bytes lies inside the location bytes of one entry.
RUN_FIELDS = {
    "version": -22,
    "segment": -21,
    "row": -17,
    "checksum": -9,
    "backend": 1,
    "dtype": 8,
}
LABEL_TAIL = b"memmap\x00<i8"


def _damage_run_entry(repo: Path, field: str) -> Path:
    """Flip one byte of one label entry's location in a run file; return the run."""
    rng = random.Random(f"{SEED}/run/{field}")
    for run in sorted((repo / "index").glob("*.run")):
        data = bytearray(run.read_bytes())
        hits = []
        at = data.find(LABEL_TAIL)
        while at >= 0:
            hits.append(at)
            at = data.find(LABEL_TAIL, at + 1)
        if len(hits) > 2:
            at = hits[rng.randrange(1, len(hits) - 1)] + RUN_FIELDS[field]
            data[at] ^= 0x02 if field == "backend" else 0x44  # "memmap" -> "meomap"
            run.write_bytes(bytes(data))
            return run
    raise AssertionError("no run file holds label locations")


def _named_run(err: tc.CorruptionError, run: Path) -> bool:
    return bool(err.path) and os.path.realpath(str(err.path)) == os.path.realpath(run)


@pytest.mark.parametrize("field", list(RUN_FIELDS))
def test_case4_damaged_run_entry_is_confined_and_named(
    pristine: tuple[Path, dict[str, Any]], tmp_path: Path, field: str
) -> None:
    path, manifest = pristine
    commit = manifest["commit"]
    repo_path = tmp_path / "repo"
    shutil.copytree(path, repo_path)
    shutil.rmtree(repo_path / "cache")  # tables are built from the damaged index below
    run = _damage_run_entry(repo_path, field)
    labels = faultkit.expected_values()["label"]
    keys = sorted(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        repo = tc.Repository(repo_path)
        try:
            # single reads, per-key path (a fresh checkout never builds a table for these)
            damaged = []
            with repo.checkout(commit=commit) as rc:
                col = rc["label"]
                for k in keys:
                    try:
                        got = col[k]
                    except tc.CorruptionError as err:
                        damaged.append(k)
                        assert err.column == "label" and err.key == k, (
                            f"{field}: the error names column {err.column!r}, key {err.key!r}, "
                            f"expected 'label', {k}: {err}"
                        )
                        assert _named_run(err, run) and run.name in str(err), (
                            f"{field}: the error for key {k} does not name the damaged run "
                            f"{run.name} (path={err.path!r}): {err}"
                        )
                    except Exception as err:
                        raise AssertionError(
                            f"{field}: label[{k}] raised {type(err).__name__}, not "
                            f"CorruptionError: {err}"
                        ) from err
                    else:
                        assert faultkit.same(got, labels[k]), f"{field}: label[{k}] is {got!r}"
            assert len(damaged) <= 1, (
                f"{field}: one damaged run entry broke {len(damaged)} keys: {damaged[:10]}"
            )
            healthy = [k for k in keys if k not in damaged]
            want = np.stack([labels[k] for k in healthy])

            # batched reads: the damaged key is named, healthy keys read right
            with repo.checkout(commit=commit) as rc:
                col = rc["label"]
                if damaged:
                    with pytest.raises(tc.CorruptionError) as caught:
                        col.get_many(keys)
                    assert caught.value.key == damaged[0] and _named_run(caught.value, run), (
                        f"{field}: get_many names key {caught.value.key!r}, path "
                        f"{caught.value.path!r}: {caught.value}"
                    )
                got = col.get_many(healthy)
                assert faultkit.same(got, want), f"{field}: get_many(healthy keys) is wrong"

            # the loader builds the column table; healthy keys keep reading right
            source = RepoSource(repo, ["label"], commit=commit, keys=healthy)
            (got,) = source.read(np.arange(len(healthy)))
            assert faultkit.same(got, want), f"{field}: the loader reads healthy keys wrong"
            paired = RepoSource(repo, ["image", "label"], commit=commit)
            for start in range(0, len(paired), 700):
                at = np.arange(start, min(start + 700, len(paired)))
                batch_keys = [keys[i] for i in at]
                try:
                    _, got = paired.read(at)
                except tc.CorruptionError as err:
                    assert any(k in damaged for k in batch_keys), (
                        f"{field}: loader batch {start}.. has no damaged key but raised: {err}"
                    )
                    assert err.key in damaged and _named_run(err, run), (
                        f"{field}: loader error names key {err.key!r}, path {err.path!r}: {err}"
                    )
                else:
                    assert faultkit.same(got, np.stack([labels[k] for k in batch_keys])), (
                        f"{field}: loader batch {start}.. reads wrong labels"
                    )

            # after the table was built: fast, right reads of healthy keys
            with repo.checkout(commit=commit) as rc:
                col = rc["label"]
                got = col.get_many(healthy)  # large enough to use the column table
                assert faultkit.same(got, want), f"{field}: get_many after the table is wrong"
                started = time.monotonic()
                for k in healthy[::20]:
                    assert faultkit.same(col[k], labels[k]), f"{field}: label[{k}] after table"
                elapsed = time.monotonic() - started
                assert elapsed < 5, (
                    f"{field}: {len(healthy[::20])} single reads of healthy keys took "
                    f"{elapsed:.1f}s once the table was built"
                )
                for k in damaged:
                    with pytest.raises(tc.CorruptionError) as caught:
                        col[k]
                    assert _named_run(caught.value, run), f"{field}: {caught.value}"

            # verify reports the damage instead of raising
            try:
                report = repo.verify(full=True, raise_on_error=False)
            except Exception as err:
                raise AssertionError(
                    f"{field}: verify(full=True, raise_on_error=False) raised "
                    f"{type(err).__name__}: {err}"
                ) from err
            assert not report.ok, f"{field}: verify does not report the damaged run {run.name}"
            text = "\n".join(report.problems)
            assert run.name in text or any(f"key {k!r}" in text for k in damaged), (
                f"{field}: verify's problems name neither the run {run.name} nor the key: "
                f"{report.problems[:5]}"
            )
        finally:
            repo.close()
