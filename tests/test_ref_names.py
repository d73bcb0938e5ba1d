"""Branch and tag names: git's rules, no name that reads as a commit id, the resolution order.

Regression tests for names that used to hide commits: a branch named like a
commit id made ``checkout(commit=id)`` and loaders read another commit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tensorcask as tc
from tensorcask.cli import main
from tensorcask.history.refs import HEADS, TAGS


def _commit(repo: tc.Repository, value: int, message: str) -> str:
    with repo.checkout(write=True) as co:
        if "x" not in co:
            co.add_ndarray_column("x", shape=(), dtype="int64")
        co["x"][0] = np.int64(value)
        return co.commit(message)


@pytest.fixture
def two(repo: tc.Repository) -> tuple[str, str]:
    """Two commits on main: ``x[0]`` is 0 in the first and 1 in the second."""
    return _commit(repo, 0, "c0"), _commit(repo, 1, "c1")


def _value(repo: tc.Repository, ref: str) -> int:
    with repo.checkout(commit=ref) as co:
        return int(co["x"][0])


def _legacy_ref(repo: tc.Repository, name: str, target: str) -> None:
    """Write a ref the way older versions allowed (no name rules)."""
    assert repo._parts.refs.set_if_equals(name, None, target)


# -- names that look like commit ids ---------------------------------------------------------


def test_branch_named_like_a_commit_id_is_refused(repo, two):
    c0, c1 = two
    with pytest.raises(ValueError, match="hex digits") as info:
        repo.create_branch(c0, base=c1)
    assert c0 in str(info.value)
    assert repo.branches == {"main": c1}
    assert repo.resolve(c0) == c0
    with repo.checkout(commit=c0) as co:
        assert co.commit_id == c0 and co["x"][0] == 0


def test_dataset_pinned_to_a_commit_id_reads_that_commit(repo, two):
    pytest.importorskip("torch")
    from tensorcask.loaders.torch import repo_dataset

    c0, c1 = two
    with pytest.raises(ValueError):
        repo.create_branch(c0, base=c1)
    ds = repo_dataset(repo, ["x"], commit=c0)
    assert ds.commit == c0
    assert int(ds[0][0]) == 0


@pytest.mark.parametrize("upper", [False, True])
def test_prefix_names_are_refused(repo, two, upper):
    c0, c1 = two
    six, eight = c0[:6], c0[:8]
    if upper:
        six, eight = six.upper(), eight.upper()
    with pytest.raises(ValueError, match="hex digits"):
        repo.create_branch(six, base=c1)
    with pytest.raises(ValueError, match="hex digits"):
        repo.create_tag(eight, c1)
    with pytest.raises(ValueError, match="hex digits"):
        repo.create_tag(c0, c1)
    assert repo.branches == {"main": c1} and repo.tags == {}
    assert repo.resolve(six) == repo.resolve(eight) == c0
    assert _value(repo, six) == 0


@pytest.mark.parametrize("name", ["abc", "f" * 41, "deadbeefX", "v" + "a" * 39, "cafe-1"])
def test_names_that_cannot_be_ids_are_fine(repo, two, name):
    _, c1 = two
    assert repo.create_branch(name) == c1
    assert repo.resolve(name) == c1


# -- git's rules -------------------------------------------------------------------------------

BAD_NAMES = [
    "",
    "..",
    "a..b",
    "HEAD",
    "@",
    "-x",
    "has space",
    " lead",
    "tab\there",
    "nl\n",
    "nul\x00",
    "del\x7f",
    "c1\x85",
    "a~1",
    "a^",
    "a:b",
    "what?",
    "star*",
    "a[b",
    "back\\slash",
    "a@{1}",
    "/a",
    "a/",
    "a//b",
    ".hidden",
    "a/.b",
    "x.lock",
    "a/x.lock/b",
    "end.",
    "x" * 256,
    "é" * 128,  # 256 UTF-8 bytes
    "lone\ud800",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_malformed_names_are_refused(repo, two, name):
    c0, c1 = two
    with pytest.raises(ValueError) as info:
        repo.create_branch(name)
    assert repr(name)[:40] in str(info.value) or name == ""
    assert not isinstance(info.value, UnicodeError)
    with pytest.raises(ValueError):
        repo.create_tag(name, c0)
    with pytest.raises(ValueError):
        repo.checkout(write=True, branch=name)
    assert repo.branches == {"main": c1} and repo.tags == {}
    assert repo.current_branch == "main"
    with repo.checkout(write=True) as co:  # the writer lock was not left behind
        assert co.branch == "main"


@pytest.mark.parametrize("name", ["dev", "feature/x", "a/b/c", "v1.0", "release-2024.01", "ünï"])
def test_git_style_names_are_accepted(repo, two, name):
    c0, c1 = two
    assert repo.create_branch(name, base=c0) == c0
    assert repo.create_tag(name + "-tag", c1) == c1
    assert repo.resolve(name) == c0 and repo.resolve(name + "-tag") == c1
    with repo.checkout(write=True, branch=name) as co:
        co["x"][0] = np.int64(7)
        head = co.commit("on " + name)
    assert repo.branches[name] == head and _value(repo, name) == 7
    assert repo.current_branch == name


def test_longest_name_is_accepted(repo, two):
    assert repo.create_branch("x" * 255) == two[1]


@pytest.mark.parametrize("name", [5, None, b"dev"])
def test_non_str_names_raise_type_error(repo, two, name):
    with pytest.raises(TypeError, match=type(name).__name__):
        repo.create_branch(name)
    with pytest.raises(TypeError, match=type(name).__name__):
        repo.create_tag(name, two[0])
    if name is not None:  # branch=None is the current branch
        with pytest.raises(TypeError, match=type(name).__name__):
            repo.checkout(write=True, branch=name)


def test_bad_first_branch_of_an_empty_repository(repo):
    with pytest.raises(ValueError, match="a b"):
        repo.checkout(write=True, branch="a b")
    assert repo.current_branch == "main"
    with repo.checkout(write=True, branch="first/one") as co:
        co.add_str_column("s")["k"] = "v"
        first = co.commit("first")
    assert repo.branches == {"first/one": first}


# -- clashes -----------------------------------------------------------------------------------


def test_tag_may_not_share_a_branch_name(repo, two):
    c0, c1 = two
    repo.create_branch("dev", base=c0)
    with pytest.raises(tc.CaskError, match="taken by a branch"):
        repo.create_tag("dev", c1)
    assert repo.tags == {}
    assert repo.resolve("dev") == c0


def test_branch_may_not_share_a_tag_name(repo, two):
    c0, c1 = two
    repo.create_tag("v1", c0)
    with pytest.raises(tc.CaskError, match="taken by a tag"):
        repo.create_branch("v1", base=c1)
    with pytest.raises(tc.CaskError, match="taken by a tag"):
        repo.checkout(write=True, branch="v1")
    assert repo.branches == {"main": c1} and repo.current_branch == "main"
    assert repo.resolve("v1") == c0


@pytest.mark.parametrize("kind", ["branch", "tag"])
def test_a_name_cannot_be_a_ref_and_a_folder_of_refs(repo, two, kind):
    c0, _ = two

    def create(name: str) -> str:
        return repo.create_branch(name, base=c0) if kind == "branch" else repo.create_tag(name, c0)

    create("a")
    create("x/y/z")
    for clash in ("a/b", "a/b/c", "x", "x/y"):
        with pytest.raises(tc.CaskError, match="folder of") as info:
            create(clash)
        assert not isinstance(info.value, ValueError)
    create("x/y2")
    create("ab")  # only whole components clash
    listed = repo.branches if kind == "branch" else repo.tags
    assert {"a", "x/y/z", "x/y2", "ab"} <= set(listed)
    assert not {"a/b", "a/b/c", "x", "x/y"} & set(listed)


def test_an_existing_name_is_still_reported_as_existing(repo, two):
    c0, _ = two
    repo.create_branch("dev", base=c0)
    repo.create_tag("t", c0)
    with pytest.raises(tc.CaskError, match="already exists"):
        repo.create_branch("dev")
    with pytest.raises(tc.CaskError, match="already exists"):
        repo.create_tag("t", c0)


# -- resolution order --------------------------------------------------------------------------


def test_full_id_wins_over_a_legacy_branch_and_tag_of_that_name(repo, two):
    c0, c1 = two
    _legacy_ref(repo, HEADS + c0, c1)
    _legacy_ref(repo, TAGS + c0.upper(), c1)
    assert repo.branches[c0] == c1
    for ref in (c0, c0.upper()):
        assert repo.resolve(ref) == c0
        assert _value(repo, ref) == 0


def test_branch_then_tag_then_prefix(repo, two):
    c0, c1 = two
    # names older versions let through: a branch and a tag "both", a prefix-like branch
    _legacy_ref(repo, HEADS + "both", c0)
    _legacy_ref(repo, TAGS + "both", c1)
    _legacy_ref(repo, TAGS + c1[:6], c0)
    assert repo.resolve("both") == c0  # branch before tag
    assert repo.resolve(c1[:6]) == c0  # tag before prefix
    assert repo.resolve(c1[:7]) == c1  # a prefix nothing else names
    # a 40-hex string that is no commit is looked up as a name
    ghost = "0" * 40 if not c0.startswith("0000") else "f" * 40
    _legacy_ref(repo, HEADS + ghost, c1)
    assert repo.resolve(ghost) == c1


def test_legacy_branch_names_stay_usable(repo, two):
    c0, _ = two
    _legacy_ref(repo, HEADS + "old name", c0)
    with repo.checkout(write=True, branch="old name") as co:
        co["x"][0] = np.int64(5)
        head = co.commit("still writable")
    assert repo.branches["old name"] == head and _value(repo, "old name") == 5
    assert repo.create_branch("renamed", base="old name") == head
    with repo.checkout(write=True, branch="main"):
        pass
    repo.delete_branch("old name")
    assert "old name" not in repo.branches


def test_resolve_with_a_lone_surrogate_is_not_found(repo, two):
    with pytest.raises(tc.RefNotFoundError):
        repo.resolve("x\ud800")


# -- command line ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["branch", "HEAD"], "'HEAD' is reserved"),
        (["branch", "a b"], "'a b'"),
        (["branch", "--", "-x"], "'-x'"),
        (["tag", "a..b"], "'..'"),
        (["tag", "x/.y"], "'.y'"),
        (["branch", "beef"], "hex digits"),
    ],
)
def test_cli_refuses_bad_names_with_one_line(
    repo: tc.Repository,
    two: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    expected: str,
) -> None:
    code = main(["-C", str(Path(repo.path)), *argv])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 1 and captured.out == ""
    assert len(lines) == 1 and lines[0].startswith("tensorcask: error: ")
    assert expected in lines[0]
    assert repo.branches == {"main": two[1]} and repo.tags == {}
