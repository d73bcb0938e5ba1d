"""``tensorcask purge`` and ``tensorcask tombstones``: samples and contents made
unreadable in every commit from the command line, and the audit trail of it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_one_error_line, run_cli, run_subprocess

import tensorcask as tc

KEYS: list[int | str] = [0, 1, 2, 3, 7, "a", "b"]


def _sample(i: int) -> np.ndarray:
    """A distinct 4-byte sample for every ``i``."""
    return (np.arange(4, dtype=np.uint8) + 4 * i).astype(np.uint8)


@pytest.fixture
def purgeable(tmp_path: Path) -> tuple[Path, list[str]]:
    """A repository with two commits on main and a branch ``dev``; (path, ids newest first).

    Column ``images`` holds int and str keys (distinct contents); the str key
    ``"7"`` exists next to the int key ``7``.
    """
    path = tmp_path / "r"
    with tc.init(path, user_name="Ada", user_email="ada@example.org") as repo:
        with repo.checkout(write=True) as co:
            col = co.add_ndarray_column("images", shape=(4,), dtype="uint8")
            col.update(KEYS, np.stack([_sample(i) for i in range(len(KEYS))]))
            first = co.commit("first")
            co["images"]["7"] = _sample(50)
            second = co.commit("second")
        repo.create_branch("dev", "main")
    return path, [second, first]


def _read(path: Path, key: int | str, commit: str | None = None) -> np.ndarray:
    with tc.Repository(path) as repo, repo.checkout(commit=commit) as co:
        value: np.ndarray = co["images"][key]
        return value


def _stones(path: Path) -> list[tc.Tombstone]:
    with tc.Repository(path) as repo:
        return repo.tombstones()


# -- purge COLUMN KEY... ------------------------------------------------------------


def test_purge_keys_makes_them_unreadable_in_every_commit(
    purgeable: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, ids = purgeable
    code, out, err = run_cli(
        capsys, "-C", str(path), "purge", "images", "7", "a", "--reason", "GDPR ticket 4711"
    )
    assert (code, err) == (0, "")
    assert out.startswith("purged 2 sample(s) or content(s); removed 2 content(s)")

    for commit in ids:  # every commit, the history unchanged
        for key in (7, "a"):
            with pytest.raises(tc.PurgedDataError, match="GDPR ticket 4711") as info:
                _read(path, key, commit)
            assert "purged" in str(info.value) and info.value.key == key
    # "7" on the command line is the int key 7: the str key "7" and the rest stay readable.
    np.testing.assert_array_equal(_read(path, "7"), _sample(50))
    np.testing.assert_array_equal(_read(path, 1), _sample(1))

    code, out, _ = run_cli(capsys, "-C", str(path), "log", "--json")
    assert code == 0 and [c["id"] for c in json.loads(out)["commits"]] == ids
    assert run_cli(capsys, "-C", str(path), "-q", "verify", "--full") == (0, "", "")

    stones = _stones(path)
    assert [(s.kind, s.column, s.key, s.reason) for s in stones] == [
        ("key", "images", 7, "GDPR ticket 4711"),
        ("key", "images", "a", "GDPR ticket 4711"),
    ]


def test_purge_keys_json(
    purgeable: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = purgeable
    code, out, err = run_cli(
        capsys, "-C", str(path), "purge", "images", "1", "b", "--reason", " why ", "--json"
    )
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc == {
        "column": "images",
        "keys": [1, "b"],
        "reason": "why",
        "tombstones": 2,
        "already": 0,
        "removed": 2,
        "kept": 0,
        "bytes_removed": doc["bytes_removed"],
        "branches": {},
    }
    assert doc["bytes_removed"] > 0

    # Purging a purged key again: nothing more to do, and the report says so.
    code, out, _ = run_cli(
        capsys, "-C", str(path), "purge", "images", "1", "--reason", "again", "--json"
    )
    assert code == 0
    doc = json.loads(out)
    assert (doc["tombstones"], doc["already"], doc["removed"]) == (0, 1, 0)


def test_purge_keeps_content_other_keys_hold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "r"
    with (
        tc.init(path, user_name="Ada", user_email="ada@example.org") as repo,
        repo.checkout(write=True) as co,
    ):
        col = co.add_ndarray_column("images", shape=(4,), dtype="uint8")
        col.update([0, 1], np.stack([_sample(3), _sample(3)]))  # the same content
        co.commit("twins")
    code, out, _ = run_cli(capsys, "-C", str(path), "purge", "images", "0", "--reason", "r")
    assert code == 0
    assert "1 content(s) kept: samples that were not purged hold them" in out
    np.testing.assert_array_equal(_read(path, 1), _sample(3))
    with pytest.raises(tc.PurgedDataError):
        _read(path, 0)


def test_purge_quiet_prints_nothing(
    purgeable: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = purgeable
    assert run_cli(capsys, "-C", str(path), "purge", "images", "2", "--reason", "r", "-q") == (
        0,
        "",
        "",
    )
    assert [s.key for s in _stones(path)] == [2]


def test_purge_remove_from_branch(
    purgeable: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, ids = purgeable
    code, out, err = run_cli(
        capsys, "-C", str(path), "purge", "images", "3", "--reason", "erasure",
        "--remove-from-branch", "main", "--remove-from-branch", "dev", "--json",
    )  # fmt: skip
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["tombstones"] == 1 and sorted(doc["branches"]) == ["dev", "main"]
    with tc.Repository(path) as repo:
        assert repo.branches == doc["branches"]
        for branch in ("main", "dev"):
            info = repo.log(branch, limit=1)[0]
            assert "Purge 1 key(s) of column images (erasure)" in info.message
            with repo.checkout(branch=branch) as co:
                assert 3 not in co["images"] and 2 in co["images"]
    with pytest.raises(tc.PurgedDataError, match="erasure"):
        _read(path, 3, ids[0])  # the old commit still lists it, unreadable

    # The text report names the new commits.
    code, out, _ = run_cli(
        capsys, "-C", str(path), "purge", "images", "2", "--reason", "more",
        "--remove-from-branch", "main",
    )  # fmt: skip
    assert code == 0
    with tc.Repository(path) as repo:
        head = repo.branches["main"]
    assert f"deleted the purged keys on branch 'main': commit {head[:12]}" in out


# -- purge --content DIGEST... --------------------------------------------------------


def test_purge_content(
    purgeable: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, ids = purgeable
    with tc.Repository(path) as repo, repo.checkout() as co:
        digest = co["images"].digest(0)
    assert len(digest) == 64

    code, out, err = run_cli(
        capsys, "-C", str(path), "purge", "--content", digest, "--reason", "DMCA 118", "--json"
    )
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["digests"] == [digest] and doc["reason"] == "DMCA 118"
    assert (doc["tombstones"], doc["removed"], doc["branches"]) == (1, 1, {})
    assert "column" not in doc
    for commit in ids:
        with pytest.raises(tc.PurgedDataError, match="DMCA 118"):
            _read(path, 0, commit)
    np.testing.assert_array_equal(_read(path, 1), _sample(1))

    # Storing the content again is refused (the content itself is tombstoned).
    with (
        tc.Repository(path) as repo,
        repo.checkout(write=True) as co,
        pytest.raises(tc.PurgedDataError),
    ):
        co["images"]["new"] = _sample(0)

    code, out, _ = run_cli(
        capsys, "-C", str(path), "purge", "--content", digest, "--reason", "again"
    )
    assert code == 0 and "purged 0 sample(s) or content(s) (1 purged before)" in out


def test_purge_content_several_digests_text(
    purgeable: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = purgeable
    with tc.Repository(path) as repo, repo.checkout() as co:
        digests = [co["images"].digest(k) for k in (1, 2)]
    code, out, err = run_cli(
        capsys, "-C", str(path), "purge", "--content", *digests, "--reason", "takedown"
    )
    assert (code, err) == (0, "")
    assert out.startswith("purged 2 sample(s) or content(s); removed 2 content(s)")
    assert {s.digest for s in _stones(path)} == set(digests)


# -- tombstones ---------------------------------------------------------------------


def test_tombstones_empty(
    purgeable: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = purgeable
    assert run_cli(capsys, "-C", str(path), "tombstones") == (0, "", "")
    code, out, _ = run_cli(capsys, "-C", str(path), "tombstones", "--json")
    assert code == 0 and json.loads(out) == {"tombstones": []}


def test_tombstones_table_and_json(
    purgeable: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = purgeable
    with tc.Repository(path) as repo, repo.checkout() as co:
        digest = co["images"].digest(0)
        key_digest = co["images"].digest("b")
    assert (
        run_cli(capsys, "-C", str(path), "-q", "purge", "images", "b", "--reason", "GDPR 1")[0] == 0
    )
    assert (
        run_cli(capsys, "-C", str(path), "-q", "purge", "--content", digest, "--reason", "DMCA")[0]
        == 0
    )

    code, out, err = run_cli(capsys, "-C", str(path), "tombstones")
    assert (code, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split() == ["WHEN", "WHO", "KIND", "COLUMN", "KEY", "DIGEST", "REASON", "LIFTED"]
    assert len(rows) == 2
    assert "Ada <ada@example.org>" in rows[0] and "Ada <ada@example.org>" in rows[1]
    assert "key" in rows[0].split() and "images" in rows[0].split() and "'b'" in rows[0]
    assert key_digest[:16] in rows[0] and key_digest[:17] not in rows[0]
    assert rows[0].split()[-2:] == ["1", "-"]  # reason "GDPR 1", not lifted
    assert "content" in rows[1].split() and digest[:16] in rows[1]
    assert rows[1].split()[-2:] == ["DMCA", "-"]
    # The columns line up under the header.
    assert rows[0].index(key_digest[:16]) == rows[1].index(digest[:16]) == header.index("DIGEST")

    code, out, _ = run_cli(capsys, "-C", str(path), "tombstones", "--json")
    assert code == 0
    docs = json.loads(out)["tombstones"]
    when = docs[0]["when"]
    assert docs == [
        {
            "kind": "key",
            "digest": key_digest,
            "column": "images",
            "key": "b",
            "reason": "GDPR 1",
            "who": "Ada <ada@example.org>",
            "when": when,
            "lifted": None,
        },
        {
            "kind": "content",
            "digest": digest,
            "column": None,
            "key": None,
            "reason": "DMCA",
            "who": "Ada <ada@example.org>",
            "when": docs[1]["when"],
            "lifted": None,
        },
    ]
    assert when.endswith("Z") and "T" in when


def test_tombstones_show_a_lifted_tombstone(
    purgeable: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = purgeable
    with tc.Repository(path) as repo, repo.checkout() as co:
        digest = co["images"].digest(0)
    assert (
        run_cli(capsys, "-C", str(path), "-q", "purge", "--content", digest, "--reason", "x")[0]
        == 0
    )
    with tc.Repository(path) as repo, repo.checkout(write=True, allow_purged=True) as co:
        co["images"]["again"] = _sample(0)
        co.commit("stored again")
    code, out, _ = run_cli(capsys, "-C", str(path), "tombstones", "--json")
    assert code == 0
    (doc,) = json.loads(out)["tombstones"]
    assert doc["lifted"] is not None and "Ada <ada@example.org>" in doc["lifted"]
    code, out, _ = run_cli(capsys, "-C", str(path), "tombstones")
    assert code == 0 and out.splitlines()[1].endswith(doc["lifted"])


def test_content_purged_twice_then_stored_again_is_readable(
    purgeable: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = purgeable
    with tc.Repository(path) as repo, repo.checkout() as co:
        digest = co["images"].digest(0)
    for reason in ("first", "second"):
        argv = ["-C", str(path), "-q", "purge", "--content", digest, "--reason", reason]
        assert run_cli(capsys, *argv)[0] == 0
    code, out, _ = run_cli(capsys, "-C", str(path), "tombstones", "--json")
    assert code == 0 and len(json.loads(out)["tombstones"]) == 1  # the report said "already"
    with tc.Repository(path) as repo, repo.checkout(write=True, allow_purged=True) as co:
        co["images"]["again"] = _sample(0)
        co.commit("stored again")
    np.testing.assert_array_equal(_read(path, "again"), _sample(0))


# -- errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["purge", "images", "1"], "the following arguments are required: --reason"),
        (["purge", "images", "1", "--reason", "  "], "--reason must not be empty"),
        (["purge", "images", "1", "--reason", ""], "--reason must not be empty"),
        (["purge", "--reason", "r"], "give COLUMN KEY... (samples) or --content DIGEST..."),
        (["purge", "images", "--reason", "r"], "purge images needs at least one KEY"),
        (
            ["purge", "images", "1", "--content", "ab" * 32, "--reason", "r"],
            "not both",
        ),
        (
            ["purge", "--content", "ab" * 32, "--reason", "r", "--remove-from-branch", "main"],
            "--remove-from-branch goes with COLUMN KEY...",
        ),
        (["tombstones", "extra"], "unrecognized arguments: extra"),
    ],
)
def test_usage_errors(
    purgeable: tuple[Path, list[str]],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    expected: str,
) -> None:
    path, _ = purgeable
    code, out, err = run_cli(capsys, "-C", str(path), *argv)
    assert code == 2 and out == ""
    assert "usage:" in err and expected in err and "Traceback" not in err
    assert _stones(path) == []


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["purge", "images", "1", "99", "--reason", "r"],
            "column 'images' has no key 99 in any commit or in the staging area; "
            "nothing was purged",
        ),
        (["purge", "labels", "1", "--reason", "r"], "column 'labels' is in no commit"),
        (
            ["purge", "images", "1", "--reason", "r", "--remove-from-branch", "nope"],
            "no branch 'nope'",
        ),
        (["purge", "--content", "3f9a", "--reason", "r"], "'3f9a' is not a content digest"),
    ],
)
def test_user_errors_are_one_line_and_purge_nothing(
    purgeable: tuple[Path, list[str]],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    expected: str,
) -> None:
    path, _ = purgeable
    code, out, err = run_cli(capsys, "-C", str(path), *argv)
    assert code == 1 and out == ""
    assert expected in assert_one_error_line(err)
    assert _stones(path) == []
    np.testing.assert_array_equal(_read(path, 1), _sample(1))


def test_purge_while_a_writer_holds_the_lock(
    purgeable: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = purgeable
    with tc.Repository(path) as repo, repo.checkout(write=True):
        code, _, err = run_cli(capsys, "-C", str(path), "purge", "images", "1", "--reason", "r")
    assert code == 1
    assert f"pid {os.getpid()}" in assert_one_error_line(err)
    assert _stones(path) == []


def test_outside_any_repository(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for argv in (["tombstones"], ["purge", "images", "1", "--reason", "r"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 1
        assert "not a tensorcask repository" in assert_one_error_line(err)


# -- help and a real subprocess -------------------------------------------------------


def test_help_mentions_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "purge" in out and "tombstones" in out
    code, out, _ = run_cli(capsys, "purge", "--help")
    assert code == 0
    for text in ("COLUMN", "KEY", "--content", "--reason", "--remove-from-branch", "--json"):
        assert text in out
    code, out, _ = run_cli(capsys, "tombstones", "--help")
    assert code == 0 and "--json" in out


def test_subprocess_purge_and_tombstones(purgeable: tuple[Path, list[str]]) -> None:
    path, _ = purgeable
    result = run_subprocess("purge", "images", "0", "--reason", "erasure", cwd=path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout.startswith("purged 1 sample(s)")
    result = run_subprocess("tombstones", "--json", cwd=path)
    assert result.returncode == 0, result.stderr
    assert [d["key"] for d in json.loads(result.stdout)["tombstones"]] == [0]
    result = run_subprocess("purge", "images", "0", cwd=path)
    assert result.returncode == 2 and "--reason" in result.stderr
