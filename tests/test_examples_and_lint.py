"""The examples run end to end, and the code base passes its own lint and type checks."""

from __future__ import annotations

import shutil
import subprocess
import sys
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


def test_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    assert blocks, "the README should show the API"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)


def _trained_losses(script: str, tmp_path: Path, *args: str) -> list[float]:
    """Run a training example on a small repository; return its loss per epoch."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--path", str(tmp_path / "r"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("training from commit ")
    return [float(line.split("loss ")[1].split()[0]) for line in lines if "loss" in line]


def test_train_torch_example_runs(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    losses = _trained_losses(
        "train_torch.py", tmp_path, "--n", "600", "--epochs", "2", "--workers", "1"
    )
    assert len(losses) == 2 and losses[1] < losses[0]  # it learns


def test_train_tf_example_runs(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    losses = _trained_losses("train_tf.py", tmp_path, "--n", "600", "--epochs", "2")
    assert len(losses) == 2 and losses[1] < losses[0]
