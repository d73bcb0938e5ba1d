"""docs/cli.md runs: every ``console`` block, in order, as one session in a temp dir.

A block's ``$ tensorcask ...`` lines run through :func:`tensorcask.cli.main`
(those of the first block as real ``python -m tensorcask`` processes) and must
exit 0; the lines under a command, if any, are its expected stdout, with
``...`` matching anything (doctest's ELLIPSIS, whitespace normalised).
``$ cd DIR`` changes the session's directory. The input files the page
says the session assumes are made here.
"""

from __future__ import annotations

import doctest
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tensorcask.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "cli.md"
BLOCK = re.compile(r"^```console\n(.*?)^```$", re.DOTALL | re.MULTILINE)
N = 100


@dataclass
class Command:
    line: int  # in the page, for messages
    argv: list[str]
    expected: list[str] = field(default_factory=list)


def _commands(block: str, first_line: int) -> list[Command]:
    commands: list[Command] = []
    for offset, text in enumerate(block.splitlines()):
        if text.startswith("$ "):
            commands.append(Command(first_line + offset, shlex.split(text[2:])))
        else:
            assert commands, f"docs/cli.md:{first_line + offset}: output before any command"
            commands[-1].expected.append(text)
    return commands


def _blocks() -> list[list[Command]]:
    text = PAGE.read_text(encoding="utf-8")
    return [
        _commands(match.group(1), text.count("\n", 0, match.start(1)) + 1)
        for match in BLOCK.finditer(text)
    ]


def _make_inputs(root: Path) -> None:
    """The files the page's session assumes (see "An example session")."""
    h5py = pytest.importorskip("h5py")
    image_module = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    data = root / "data"
    data.mkdir()
    np.savez(
        data / "train.npz",
        images=rng.integers(0, 256, (N, 28, 28), dtype=np.uint8),
        labels=np.arange(N, dtype=np.int64) % 10,
    )
    np.save(data / "x.npy", rng.standard_normal((N, 16)).astype(np.float32))
    with h5py.File(data / "set.h5", "w") as f:
        f["group/x"] = rng.standard_normal((N, 4))
        f["group/y"] = np.arange(N, dtype=np.int32)
    for label in ("cat", "dog"):
        folder = data / "images" / label
        folder.mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            image_module.fromarray(pixels).save(folder / f"{i}.png")


def _check(command: Command, code: int, out: str, err: str) -> None:
    where = f"docs/cli.md:{command.line}: $ {shlex.join(command.argv)}"
    assert code == 0, f"{where}\nexit status {code}\nstdout:\n{out}\nstderr:\n{err}"
    if not command.expected:
        return
    want = "\n".join(command.expected) + "\n"
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    assert doctest.OutputChecker().check_output(want, out, flags), (
        f"{where}\nexpected:\n{want}got:\n{out}"
    )


def _in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _subprocess(argv: list[str]) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "tensorcask", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr


def test_the_page_has_a_session() -> None:
    blocks = _blocks()
    assert len(blocks) >= 5
    programs = {c.argv[0] for block in blocks for c in block}
    assert programs == {"tensorcask", "cd"}, programs
    verbs = {c.argv[1] for block in blocks for c in block if c.argv[0] == "tensorcask"}
    verbs |= {c.argv[3] for block in blocks for c in block if c.argv[1:2] == ["-C"]}
    for verb in ("init", "import", "status", "log", "switch", "show", "diff", "merge"):
        assert verb in verbs, verb
    for verb in ("export", "verify-export", "remote", "push", "clone", "purge", "lock"):
        assert verb in verbs, verb


def test_cli_page_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _make_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    for number, block in enumerate(_blocks()):
        for command in block:
            if command.argv[0] == "cd":
                assert len(command.argv) == 2, command
                monkeypatch.chdir(Path.cwd() / command.argv[1])
                continue
            args = command.argv[1:]
            # The first block goes through the real entry point, the rest in process.
            result = _subprocess(args) if number == 0 else _in_process(args, capsys)
            _check(command, *result)
