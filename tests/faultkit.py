"""Helpers of the fault-injection tests (``test_fault_injection.py``).

Imported by the tests, and run as a script it is the child process that builds
the pristine repository and checks damaged copies of it::

    python faultkit.py build <repo> <recent_limit>
    python faultkit.py trials <job.json>

A flipped byte in an LMDB file may crash the process that reads it; the
checks therefore run here, in a child, one trial after the other. Every trial
prints ``@@{"start": id}`` before it starts and ``@@{"result": ...}`` when it
is done, so the parent knows which trial a dead child was running and starts
a new child for the rest.

The rule checked for every read: it returns exactly the stored value or
raises :class:`tensorcask.CorruptionError`; never a wrong value, never an
exception of another type. A damaged file under ``cache/`` is rebuildable:
every read must return the right value. A ``CorruptionError`` must not blame
an intact data or index file. ``verify(full=True, raise_on_error=False)``
must not raise, and must report ``ok=False`` when a read raised.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()

# -- the data set: every value is a pure function of its key --------------

PAIRED_N = 4200  # image/label keys: above the size at which get_many builds a column table
VAR_N = 48
TEXT_N = 48
BATCH = 700  # keys per update of image/label (several run compactions during the build)
BUILD_RECENT_LIMIT = 1000
LOADER_GROUPS = [["image", "label"], ["var"], ["text"]]


def image_value(k: int) -> np.ndarray:
    """A (4, 4) uint8 sample unique to key ``k``."""
    digest = hashlib.blake2b(f"image-{k}".encode(), digest_size=16).digest()
    return np.frombuffer(digest, np.uint8).reshape(4, 4).copy()


def label_value(k: int) -> np.ndarray:
    """A 0-d int64 label unique to key ``k`` (so a mispaired label is visible)."""
    return np.array(k * 7_919 + 1_000_003, dtype=np.int64)


def var_key(i: int) -> str:
    return f"v{i:03d}"


def var_value(i: int) -> np.ndarray:
    return np.arange(1 + i % 9, dtype=np.float64) * 0.25 + i * 1_000.5 + 0.123456789


def text_key(i: int) -> int | str:
    return i if i % 3 == 0 else f"t{i:03d}"


def text_value(i: int) -> str:
    return f"TEXT-{i:03d}-\u00e9t\u00e9-" + "xyz" * (i % 7)


def key_order(key: Any) -> tuple[bool, Any]:
    """The library's key order: ints before strs."""
    return (isinstance(key, str), key)


def expected_values() -> dict[str, dict[Any, Any]]:
    """Column -> key -> value of the head commit."""
    return {
        "image": {k: image_value(k) for k in range(PAIRED_N)},
        "label": {k: label_value(k) for k in range(PAIRED_N)},
        "var": {var_key(i): var_value(i) for i in range(VAR_N)},
        "text": {text_key(i): text_value(i) for i in range(TEXT_N)},
    }


def same(a: Any, b: Any) -> bool:
    if isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
    return type(a) is type(b) and a == b


def short(value: Any) -> str:
    if isinstance(value, np.ndarray):
        flat = value.ravel()[:6].tolist()
        return f"ndarray(dtype={value.dtype}, shape={value.shape}, first={flat})"
    text = repr(value)
    return text if len(text) < 120 else text[:117] + "..."


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


# -- building ---------------------------------------------------------------


def build(path: Path, recent_limit: int) -> dict[str, Any]:
    """Build the pristine repository (two commits), read it once through the
    loaders so that ``cache/`` is populated, and return its manifest."""
    import tensorcask as tc
    import tensorcask.storage.index as index
    from tensorcask.loaders.core import RepoSource

    index.RECENT_LIMIT = recent_limit  # the content index writes run files (and merges them)
    repo = tc.init(path, user_name="Ada", user_email="ada@example.org")
    try:
        with repo.checkout(write=True) as co:
            image = co.add_ndarray_column("image", shape=(4, 4), dtype="uint8")
            label = co.add_ndarray_column("label", shape=(), dtype="int64")
            var = co.add_ndarray_column("var", shape=(None,), dtype="float64")
            text = co.add_str_column("text")
            half = PAIRED_N // 2
            for start in range(0, half, BATCH):
                keys = np.arange(start, min(start + BATCH, half))
                image.update(keys, np.stack([image_value(int(k)) for k in keys]))
                label.update(keys, np.stack([label_value(int(k)) for k in keys]))
            var.update({var_key(i): var_value(i) for i in range(VAR_N // 2)})
            for i in range(TEXT_N // 2):
                text[text_key(i)] = text_value(i)
            first = co.commit("first half")
            for start in range(half, PAIRED_N, BATCH):
                keys = np.arange(start, min(start + BATCH, PAIRED_N))
                image.update(keys, np.stack([image_value(int(k)) for k in keys]))
                label.update(keys, np.stack([label_value(int(k)) for k in keys]))
            var.update({var_key(i): var_value(i) for i in range(VAR_N // 2, VAR_N)})
            for i in range(TEXT_N // 2, TEXT_N):
                text[text_key(i)] = text_value(i)
            head = co.commit("second half")
        # a first pass through the loaders and batched reads populates cache/
        for group in LOADER_GROUPS:
            source = RepoSource(repo, group, commit=head)
            source.read(np.arange(len(source)))
        with repo.checkout(commit=head) as rc:
            for name, values in expected_values().items():
                rc[name].get_many(list(values))
        report = repo.verify(full=True, raise_on_error=False)
        assert report.ok, f"the pristine repository does not verify: {report}"
    finally:
        repo.close()
    return {"commit": head, "first": first}


# -- checking one (damaged) repository ---------------------------------------


class Checker:
    """Reads everything of one repository and records what breaks the rule."""

    MAX_PER_COLUMN = 3  # failures reported per column and read path

    def __init__(self, path: Path, damaged: str, commit: str) -> None:
        self.path = path
        self.real = os.path.realpath(path)
        self.damaged = damaged
        self.commit = commit
        self.failures: list[str] = []
        self.raised: list[str] = []  # reads that raised CorruptionError

    def caught(self, what: str, exc: BaseException) -> None:
        import tensorcask as tc

        if isinstance(exc, tc.CorruptionError):
            self.raised.append(what)
            if self.damaged.startswith("cache/"):
                self.failures.append(
                    f"{what}: CorruptionError although only a rebuildable cache file was "
                    f"damaged (it must be rebuilt and the read right): {str(exc)[:300]}"
                )
                return
            blamed = self._blamed(exc)
            if blamed is not None:
                self.failures.append(
                    f"{what}: CorruptionError blames the intact file {blamed}: {str(exc)[:300]}"
                )
            return
        kind = type(exc)
        name = (
            kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
        )
        self.failures.append(f"{what}: {name} escaped (not CorruptionError): {str(exc)[:300]}")

    def _blamed(self, exc: Any) -> str | None:
        """The intact data or index file an error names, if it names one."""
        if not exc.path:
            return None
        rel = os.path.relpath(os.path.realpath(exc.path), self.real)
        top = rel.split(os.sep, 1)[0]
        if top in ("data", "index") and rel != self.damaged and os.path.isfile(exc.path):
            return rel
        return None

    def attempt(self, what: str, read: Callable[[], Any]) -> tuple[bool, Any]:
        try:
            return True, read()
        except Exception as exc:  # the rule: CorruptionError or nothing
            self.caught(what, exc)
            return False, None

    def wrong(self, what: str, got: Any, want: Any) -> None:
        self.failures.append(f"WRONG VALUE {what}: got {short(got)}, expected {short(want)}")

    # -- the read paths ------------------------------------------------------

    @staticmethod
    def step(what: str) -> None:
        """Tell the parent which read path runs (named if this trial hangs or crashes)."""
        print("@@" + json.dumps({"step": what}), flush=True)

    def run(self, *, use_torch: bool, verify_first: bool) -> None:
        import tensorcask as tc

        ok, repo = self.attempt("Repository(path)", lambda: tc.Repository(self.path))
        if not ok:
            return
        try:
            self.step("branches")
            ok, branches = self.attempt("repo.branches", lambda: repo.branches)
            if ok and branches.get("main") != self.commit:
                self.failures.append(
                    f"WRONG VALUE repo.branches['main'] is {branches.get('main')!r}, expected the "
                    f"head {self.commit!r}: the repository silently shows another state"
                )
            if verify_first:
                self.verify(repo)
            self.single_reads(repo)
            self.batched_reads(repo)
            self.loader_reads(repo)
            if use_torch:
                self.torch_reads(repo)
            self.verify(repo)
        finally:
            try:
                repo.close()
            except Exception as exc:
                self.failures.append(f"repo.close(): {type(exc).__name__}: {exc}")

    def single_reads(self, repo: Any) -> None:
        ok, rc = self.attempt("checkout(commit=...)", lambda: repo.checkout(commit=self.commit))
        if not ok:
            return
        with rc:
            for name, values in expected_values().items():
                self.step(f"single reads of {name!r}")
                ok, col = self.attempt(f"rc[{name!r}]", lambda name=name: rc[name])
                if not ok:
                    continue
                before = len(self.failures)
                for key, want in values.items():
                    ok, got = self.attempt(f"{name}[{key!r}]", lambda key=key, col=col: col[key])
                    if ok and not same(got, want):
                        self.wrong(f"{name}[{key!r}] (single read)", got, want)
                    if len(self.failures) - before >= self.MAX_PER_COLUMN:
                        break

    def batched_reads(self, repo: Any) -> None:
        ok, rc = self.attempt("checkout(commit=...)", lambda: repo.checkout(commit=self.commit))
        if not ok:
            return
        with rc:
            for name, values in expected_values().items():
                self.step(f"get_many of {name!r}")
                keys = list(values)
                what = f"{name}.get_many(all {len(keys)} keys)"
                ok, got = self.attempt(what, lambda name=name, keys=keys: rc[name].get_many(keys))
                if ok:
                    self.compare(what, keys, got, values)
                # a second, smaller batch: the table path once the table exists
                few = keys[:: max(1, len(keys) // 50)]
                what = f"{name}.get_many({len(few)} keys)"
                ok, got = self.attempt(what, lambda name=name, few=few: rc[name].get_many(few))
                if ok:
                    self.compare(what, few, got, values)

    def compare(self, what: str, keys: list[Any], got: Any, values: dict[Any, Any]) -> None:
        want = [values[k] for k in keys]
        if isinstance(got, np.ndarray):
            if not same(got, np.stack(want)):
                if got.shape[:1] == (len(keys),):
                    for k, a, b in zip(keys, got, want, strict=True):
                        if not same(np.asarray(a), b):
                            self.wrong(f"{what} at key {k!r}", a, b)
                            return
                self.wrong(what, got, np.stack(want))
            return
        if not isinstance(got, list) or len(got) != len(want):
            self.wrong(what, got, want)
            return
        for k, a, b in zip(keys, got, want, strict=True):
            if not same(a, b):
                self.wrong(f"{what} at key {k!r}", a, b)
                return

    def loader_reads(self, repo: Any) -> None:
        from tensorcask.loaders.core import RepoSource

        values = expected_values()
        for group in LOADER_GROUPS:
            what = f"RepoSource({group})"
            self.step(what)
            ok, source = self.attempt(
                what, lambda group=group: RepoSource(repo, group, self.commit)
            )
            if not ok:
                continue
            keys = sorted(set.intersection(*(set(values[c]) for c in group)), key=key_order)
            ok, count = self.attempt(f"len({what})", lambda source=source: len(source))
            if not ok:
                continue
            if count != len(keys):
                self.failures.append(f"WRONG VALUE {what}: {count} samples, expected {len(keys)}")
                continue
            ok, got_keys = self.attempt(
                f"{what}.index.key(i)",
                lambda source=source, count=count: [source.index.key(i) for i in range(count)],
            )
            if ok and got_keys != keys:
                bad = next(i for i, (a, b) in enumerate(zip(got_keys, keys, strict=True)) if a != b)
                self.failures.append(
                    f"WRONG VALUE {what}: sample {bad} has key {got_keys[bad]!r}, expected "
                    f"{keys[bad]!r}"
                )
            # in batches: a damaged sample must not take healthy batches down with it
            for start in range(0, count, 1050):
                at = np.arange(start, min(start + 1050, count))
                part = f"{what}.read([{start}:{start + len(at)}])"
                ok, got = self.attempt(part, lambda source=source, at=at: source.read(at))
                if ok:
                    for name, column in zip(group, got, strict=True):
                        chosen = [keys[i] for i in at]
                        self.compare(f"{part} column {name!r}", chosen, column, values[name])

    def torch_reads(self, repo: Any) -> None:
        from torch.utils.data import DataLoader

        from tensorcask.loaders.torch import repo_dataset

        values = expected_values()
        what = "DataLoader(repo_dataset(['image', 'label']))"
        self.step(what)
        ok, ds = self.attempt(what, lambda: repo_dataset(repo, ["image", "label"], self.commit))
        if not ok:
            return
        keys = sorted(values["label"])
        loader = DataLoader(ds, batch_size=600, num_workers=0)
        seen = 0

        def batches() -> list[Any]:
            return list(loader)

        ok, got = self.attempt(what, batches)
        if not ok:
            return
        for images, labels in got:
            for image, label in zip(images.numpy(), labels.numpy(), strict=True):
                if seen >= len(keys):
                    self.failures.append(f"WRONG VALUE {what}: more than {len(keys)} samples")
                    return
                key = keys[seen]
                if not same(image, values["image"][key]) or not same(
                    np.asarray(label), values["label"][key]
                ):
                    pair = {int(v): k for k, v in values["label"].items()}.get(int(label))
                    self.failures.append(
                        f"WRONG VALUE {what}: sample {seen} (key {key}) yields label {int(label)} "
                        f"(the label of key {pair}) with an image "
                        f"{'right' if same(image, values['image'][key]) else 'wrong'} for key {key}"
                    )
                    return
                seen += 1
        if seen != len(keys):
            self.failures.append(f"WRONG VALUE {what}: {seen} samples, expected {len(keys)}")

    def verify(self, repo: Any) -> None:
        self.step("verify(full=True)")
        try:
            report = repo.verify(full=True, raise_on_error=False)
        except Exception as exc:
            self.failures.append(
                f"verify(full=True, raise_on_error=False) raised {type(exc).__name__}: "
                f"{str(exc)[:300]}"
            )
            return
        if self.raised and report.ok and not self.damaged.startswith("cache/"):
            self.failures.append(
                f"verify(full=True) reports ok although a read raised CorruptionError "
                f"({self.raised[0]})"
            )


def flip(path: Path, offset: int, mask: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ mask]))


def run_trials(job_path: Path) -> None:
    job = json.loads(job_path.read_text())
    pristine = Path(job["pristine"])
    work = Path(job["work"])
    commit = job["commit"]
    opts = job["opts"]
    warnings.simplefilter("ignore")  # rebuilt caches may warn; the rule is about values
    for trial in job["trials"]:
        print("@@" + json.dumps({"start": trial["id"]}), flush=True)
        started = time.monotonic()
        failures: list[str] = []
        raised = 0
        for order in opts["orders"]:  # "reads-first" and/or "verify-first"
            Checker.step(f"copy and flip ({order})")
            copy = work / f"t{trial['id']}-{order}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(pristine, copy)
            flip(copy / trial["file"], trial["offset"], trial["mask"])
            checker = Checker(copy, trial["file"], commit)
            checker.run(use_torch=opts["torch"], verify_first=order == "verify-first")
            failures += [f"[{order}] {f}" for f in checker.failures]
            raised += len(checker.raised)
            shutil.rmtree(copy, ignore_errors=True)
        result = {
            "result": trial["id"],
            "failures": failures,
            "raised": raised,
            "seconds": round(time.monotonic() - started, 3),
        }
        print("@@" + json.dumps(result), flush=True)


def main(argv: list[str]) -> None:
    if argv[1] == "build":
        manifest = build(Path(argv[2]), int(argv[3]))
        print("@@" + json.dumps(manifest), flush=True)
    elif argv[1] == "trials":
        run_trials(Path(argv[2]))
    else:
        raise SystemExit(f"unknown mode {argv[1]!r}")


if __name__ == "__main__":
    main(sys.argv)
