"""The examples run end to end, and the code base passes its own lint and type checks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_example_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "quickstart.py"),
            "--path",
            str(tmp_path / "r"),
            "--n",
            "500",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"repository: {tmp_path / 'r'}" in result.stdout.splitlines()
    assert "still reads the original bytes" in result.stdout
    assert ": ok" in result.stdout  # the full verification passed


def _tool(name: str) -> list[str]:
    if (
        shutil.which(name) is None
        and subprocess.run(
            [sys.executable, "-m", name, "--version"], capture_output=True, check=False
        ).returncode
    ):
        pytest.skip(f"{name} is not installed")
    return [sys.executable, "-m", name]


def test_ruff_lint_and_format_clean() -> None:
    ruff = _tool("ruff")
    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run(
            [*ruff, *args], cwd=ROOT, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean() -> None:
    mypy = _tool("mypy")
    result = subprocess.run(
        mypy, cwd=ROOT, capture_output=True, text=True, check=False, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """The ```python blocks of a markdown page: (line of the block's first line, code)."""
    text = page.read_text()
    return [
        (text.count("\n", 0, m.start(1)) + 1, m.group(1))
        for m in re.finditer(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    ]


def run_python_blocks(page: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run a page's python blocks in order in one namespace, in ``workdir`` (blocks share
    state, as a reader runs them); return how many ran. Tracebacks point at the page's
    lines. A loader that leaves samples out (columns with different key sets) is an
    error unless the page catches the warning itself."""
    blocks = python_blocks(page)
    monkeypatch.chdir(workdir)
    namespace: dict[str, object] = {"__name__": "__main__"}
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "the columns hold different keys", UserWarning)
        for line, block in blocks:
            code = compile("\n" * (line - 1) + block, str(page), "exec")
            exec(code, namespace)
    return len(blocks)


def test_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_python_blocks(ROOT / "README.md", tmp_path, monkeypatch), "show the API"


def test_guide_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/guide.md runs top to bottom in an empty directory, offline (a file:// remote)."""
    pytest.importorskip("torch")
    pytest.importorskip("tensorflow")
    assert run_python_blocks(ROOT / "docs" / "guide.md", tmp_path, monkeypatch) >= 20


def _trained_losses(script: str, tmp_path: Path, n: int, *args: str) -> list[float]:
    """Run a training example on a small repository of ``n`` samples (the repository
    path given as the positional PATH); return its loss per epoch."""
    path = tmp_path / "r"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), str(path), "--n", str(n), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("training from commit ")
    assert f"({n} samples" in lines[0]  # it trains on every sample it wrote
    assert "different keys" not in result.stderr  # no loader warning of left-out samples
    assert f"repository: {path}" in lines and (path / "TENSORCASK").exists()
    return [float(line.split("loss ")[1].split()[0]) for line in lines if "loss" in line]


def test_train_torch_example_runs(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    losses = _trained_losses("train_torch.py", tmp_path, 600, "--epochs", "2", "--workers", "1")
    assert len(losses) == 2 and losses[1] < losses[0]  # it learns


def test_train_tf_example_runs(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    losses = _trained_losses("train_tf.py", tmp_path, 600, "--epochs", "2")
    assert len(losses) == 2 and losses[1] < losses[0]
