"""The ``TENSORCASK`` format marker is checked before a repository is opened.

A newer format names both versions and the upgrade path; a damaged marker
names the file. Neither case writes anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import tensorcask as tc
from tensorcask.cli import main


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A closed repository with one commit."""
    target = tmp_path / "repo"
    repo = tc.init(target, user_name="Ada", user_email="ada@example.org")
    with repo, repo.checkout(write=True) as co:
        co.add_ndarray_column("x", shape=(), dtype="int64")[0] = np.int64(1)
        co.commit("one")
    return target


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root``: (size, mtime in ns)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            info = full.stat()
            out[str(full.relative_to(root))] = (info.st_size, info.st_mtime_ns)
    info = root.stat()
    out["."] = (info.st_size, info.st_mtime_ns)
    return out


def _open_refused(path: Path, text: bytes) -> tc.CaskError:
    (path / "TENSORCASK").write_bytes(text)
    before = _snapshot(path)
    with pytest.raises(tc.CaskError) as info:
        tc.Repository(path)
    with pytest.raises(tc.CaskError):
        tc.init(path, exist_ok=True)
    assert _snapshot(path) == before  # nothing written, meta/ untouched
    return info.value


def test_newer_format_names_versions_and_upgrade(path):
    error = _open_refused(path, b"tensorcask repository\nformat 999\n")
    message = str(error)
    assert "format 999" in message
    assert "format 1 at most" in message
    assert "pip install -U tensorcask" in message
    assert str(path) in message


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"garbage",
        b"\x00\xff\xfe binary",
        b"tensorcask repository\n",
        b"tensorcask repository\nformat\n",
        b"tensorcask repository\nformat one\n",
        b"tensorcask repository\nformat 0\n",
        b"tensorcask repository\nformat -1\n",
        b"tensorcask repository\nformat 1.5\n",
        b"some other tool\nformat 1\n",
    ],
)
def test_invalid_marker_names_the_file(path, text):
    message = str(_open_refused(path, text))
    assert str(path / "TENSORCASK") in message
    assert "not a valid tensorcask format marker" in message


def test_valid_marker_opens_and_reads(path):
    assert (path / "TENSORCASK").read_text() == "tensorcask repository\nformat 1\n"
    with tc.Repository(path) as repo, repo.checkout() as co:
        assert co["x"][0] == 1
    (path / "TENSORCASK").write_text("tensorcask repository\r\nformat 1\r\n")
    with tc.Repository(path) as repo:
        assert len(repo.log()) == 1


def test_marker_that_is_a_folder_is_no_repository(tmp_path):
    (tmp_path / "TENSORCASK").mkdir()
    with pytest.raises(tc.RepositoryNotFoundError):
        tc.Repository(tmp_path)


def test_cli_reports_a_newer_format_in_one_line(path, capsys):
    (path / "TENSORCASK").write_text("tensorcask repository\nformat 7\n")
    before = _snapshot(path)
    code = main(["-C", str(path), "log"])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 1 and captured.out == ""
    assert len(lines) == 1 and "format 7" in lines[0] and "pip install -U tensorcask" in lines[0]
    assert _snapshot(path) == before
