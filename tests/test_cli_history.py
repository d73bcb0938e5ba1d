"""History commands of the command line: branch, tag, diff, merge and ``log --graph``.

Histories are built through the public API; the commands run in-process
through ``main`` (and twice as a real subprocess). ``render_graph`` is tested
on its own with exact drawings of small commit graphs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pytest

import tensorcask as tc
from tensorcask.cli import main
from tensorcask.graph import display_order, render_graph

REPO_ROOT = Path(__file__).resolve().parents[1]
SHORT = 10

Key = int | str


# -- helpers ------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_subprocess(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "tensorcask", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tensorcask: error: ")
    assert "Traceback" not in err
    return lines[0]


def commit(
    repo: tc.Repository,
    branch: str,
    message: str,
    values: Mapping[Key, int] | None = None,
    delete: Iterable[Key] = (),
) -> str:
    """Write ``values`` to (and delete keys from) column ``x`` on ``branch``; commit."""
    co = repo.checkout(write=True, branch=branch)
    try:
        if "x" not in co.columns:
            co.add_ndarray_column("x", shape=(), dtype="int64")
        for key, value in (values or {}).items():
            co["x"][key] = np.int64(value)
        for key in delete:
            del co["x"][key]
        return co.commit(message)
    finally:
        co.close()


def head(path: Path, branch: str) -> str:
    with tc.Repository(path) as repo:
        return repo.branches[branch]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """An empty repository."""
    target = tmp_path / "r"
    tc.init(target, user_name="Ada", user_email="ada@example.org").close()
    return target


@pytest.fixture
def forked(path: Path) -> dict[str, str]:
    """main: base -> m1; dev (from base): d1. No conflicts between them.

    ``base`` has keys 0, 1, 2; dev adds 3 and changes 1; main adds "a" and
    removes 2. The current branch is main. Returns the commit ids by name.
    """
    with tc.Repository(path) as repo:
        base = commit(repo, "main", "base", {0: 0, 1: 1, 2: 2})
        repo.create_branch("dev")
        d1 = commit(repo, "dev", "dev: add 3, change 1", {3: 3, 1: 11})
        m1 = commit(repo, "main", "main: add a, drop 2", {"a": 5}, delete=[2])
    return {"base": base, "d1": d1, "m1": m1}


# -- render_graph ---------------------------------------------------------------------


def graph(*commits: tuple[str, tuple[str, ...]]) -> list[str]:
    """Draw commits labelled with their own ids."""
    return render_graph([(c, parents, c) for c, parents in commits])


def test_graph_empty() -> None:
    assert render_graph([]) == []


def test_graph_linear() -> None:
    assert graph(("c", ("b",)), ("b", ("a",)), ("a", ())) == ["* c", "* b", "* a"]


def test_graph_one_merge() -> None:
    assert graph(("m", ("b", "d")), ("d", ("a",)), ("b", ("a",)), ("a", ())) == [
        "* m",
        "|\\",
        "| * d",
        "* | b",
        "|/",
        "* a",
    ]
    # the same graph with the first parent's commit listed first
    assert graph(("m", ("b", "d")), ("b", ("a",)), ("d", ("a",)), ("a", ())) == [
        "* m",
        "|\\",
        "* | b",
        "| * d",
        "|/",
        "* a",
    ]


def test_graph_two_merges() -> None:
    # dev merged into main twice: m1 = (b, d), then m2 = (c, e) with e on top of d
    assert graph(
        ("m2", ("c", "e")),
        ("c", ("m1",)),
        ("e", ("d",)),
        ("m1", ("b", "d")),
        ("d", ("a",)),
        ("b", ("a",)),
        ("a", ()),
    ) == [
        "* m2",
        "|\\",
        "* | c",
        "| * e",
        "* | m1",
        "|\\|",  # m1's second parent is the commit the lane beside it waits for
        "| * d",
        "* | b",
        "|/",
        "* a",
    ]


def test_graph_criss_cross() -> None:
    # b and c both fork from a; m1 = (b, c) on main, m2 = (c, b) on dev; m3 merges them
    assert graph(
        ("m3", ("m1", "m2")),
        ("m2", ("c", "b")),
        ("m1", ("b", "c")),
        ("c", ("a",)),
        ("b", ("a",)),
        ("a", ()),
    ) == [
        "* m3",
        "|\\",
        "| * m2",
        "| |\\",
        "* | | m1",
        "|\\| |",
        "| * | c",
        "|_|/",  # the lane in column 2 runs under column 1 into column 0
        "* | b",
        "|/",
        "* a",
    ]


def test_graph_unmerged_branches() -> None:
    # two branch heads (as a log of several branches lists them), not merged yet
    assert graph(("d", ("b",)), ("c", ("b",)), ("b", ("a",)), ("a", ())) == [
        "* d",
        "| * c",
        "|/",
        "* b",
        "* a",
    ]
    # three heads, the newest on the oldest fork point
    assert graph(("z", ("a",)), ("y", ("b",)), ("x", ("b",)), ("b", ("a",)), ("a", ())) == [
        "* z",
        "| * y",
        "| | * x",
        "| |/",
        "| * b",
        "|/",
        "* a",
    ]


def test_graph_unrelated_roots() -> None:
    assert graph(("x", ("r1",)), ("y", ("r2",)), ("r1", ()), ("r2", ())) == [
        "* x",
        "| * y",
        "* | r1",
        " /",  # r1 ends its line; r2's line moves left
        "* r2",
    ]


def test_graph_octopus() -> None:
    assert graph(
        ("o", ("a", "b", "c")), ("c", ("r",)), ("b", ("r",)), ("a", ("r",)), ("r", ())
    ) == [
        "* o",
        "|\\",
        "|\\ \\",
        "| * | c",
        "| | * b",
        "* | | a",
        "|/ /",
        "|/",
        "* r",
    ]


def test_graph_truncated_log_keeps_lanes_open() -> None:
    # parents beyond the listed commits (log -n 2) keep their lanes to the end
    assert graph(("m", ("b", "d")), ("d", ("a",))) == ["* m", "|\\", "| * d"]


def test_graph_rejects_bad_order() -> None:
    with pytest.raises(ValueError, match="before its child"):
        graph(("a", ()), ("b", ("a",)))
    with pytest.raises(ValueError, match="twice"):
        graph(("b", ("a",)), ("b", ("a",)))


def test_display_order_puts_children_first_and_is_stable() -> None:
    commits = [("a", (), "a"), ("c", ("b",), "c"), ("b", ("a",), "b"), ("d", ("b",), "d")]
    assert [c[0] for c in display_order(commits)] == ["c", "d", "b", "a"]
    ordered = [("c", ("b",), "c"), ("b", ("a",), "b"), ("a", (), "a")]
    assert display_order(ordered) == ordered
    with pytest.raises(ValueError, match="cycle"):
        display_order([("a", ("b",), "a"), ("b", ("a",), "b")])


# -- log --graph ------------------------------------------------------------------------


def test_log_graph_of_a_merge(
    path: Path, forked: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "-C", str(path), "merge", "dev", "-m", "merge dev")
    assert (code, err) == (0, "")
    merged = head(path, "main")
    code, out, err = run_cli(capsys, "-C", str(path), "log", "--graph")
    assert (code, err) == (0, "")
    ids = {name: commit_id[:SHORT] for name, commit_id in forked.items()}
    assert out.splitlines() == [
        f"* {merged[:SHORT]} merge dev",
        "|\\",
        f"* | {ids['m1']} main: add a, drop 2",
        f"| * {ids['d1']} dev: add 3, change 1",
        "|/",
        f"* {ids['base']} base",
    ]
    # --oneline is allowed with --graph and changes nothing
    assert run_cli(capsys, "-C", str(path), "log", "--graph", "--oneline")[1] == out
    code, out, _ = run_cli(capsys, "-C", str(path), "log", "dev", "--graph", "--json")
    doc = json.loads(out)
    assert code == 0
    assert [c["id"] for c in doc["commits"]] == [forked["d1"], forked["base"]]
    assert doc["graph"] == [f"* {ids['d1']} dev: add 3, change 1", f"* {ids['base']} base"]


def test_log_graph_limit_and_empty(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "-C", str(path), "log", "--graph") == (0, "", "")
    with tc.Repository(path) as repo:
        for i in range(3):
            commit(repo, "main", f"c{i}", {i: i})
    code, out, _ = run_cli(capsys, "-C", str(path), "log", "--graph", "-n", "2")
    assert code == 0
    lines = out.splitlines()
    assert [line[:2] for line in lines] == ["* ", "* "]
    assert [line.split(" ", 2)[2] for line in lines] == ["c2", "c1"]


# -- branch ---------------------------------------------------------------------------


def test_branch_list(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "-C", str(path), "branch") == (0, "* main  (no commits yet)\n", "")
    with tc.Repository(path) as repo:
        first = commit(repo, "main", "first", {0: 0})
        repo.create_branch("feature")
    code, out, err = run_cli(capsys, "-C", str(path), "branch")
    assert (code, err) == (0, "")
    assert out.splitlines() == [f"  feature  {first[:SHORT]}", f"* main     {first[:SHORT]}"]
    code, out, _ = run_cli(capsys, "-C", str(path), "branch", "--json")
    assert code == 0
    assert json.loads(out) == {"current": "main", "branches": {"feature": first, "main": first}}


def test_branch_create(
    path: Path, forked: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "-C", str(path), "branch", "topic")
    assert (code, err) == (0, "")
    assert out == f"created branch topic at {forked['m1'][:SHORT]}\n"
    # from any ref: a branch, a tag, a commit prefix
    run_cli(capsys, "-C", str(path), "branch", "from-dev", "dev")
    run_cli(capsys, "-C", str(path), "tag", "v0", forked["base"])
    run_cli(capsys, "-C", str(path), "branch", "from-tag", "v0")
    code, out, _ = run_cli(
        capsys, "-C", str(path), "branch", "from-prefix", forked["d1"][:6], "--json"
    )
    assert code == 0
    assert json.loads(out) == {"branch": "from-prefix", "head": forked["d1"], "created": True}
    with tc.Repository(path) as repo:
        branches = repo.branches
        assert repo.current_branch == "main"  # creating a branch does not switch to it
    assert branches["topic"] == forked["m1"]
    assert branches["from-dev"] == branches["from-prefix"] == forked["d1"]
    assert branches["from-tag"] == forked["base"]
    # the current branch's marker
    code, out, _ = run_cli(capsys, "-C", str(path), "branch")
    assert [line for line in out.splitlines() if line.startswith("*")] == [
        f"* main         {forked['m1'][:SHORT]}"
    ]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["branch", "dev"], "already exists"),
        (["branch", "new", "no-such-ref"], "no-such-ref"),
        (["branch", "bad..name"], "bad..name"),
        (["branch", "dev/x"], "folder of branches"),
        (["branch", "-d", "no-such-branch"], "no-such-branch"),
        (["branch", "-d", "main"], "current branch"),
        (["branch", "-D", "main"], "current branch"),
        (["branch", "-d", "dev"], "not merged"),
    ],
)
def test_branch_errors(
    path: Path,
    forked: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    expected: str,
) -> None:
    before = head(path, "main"), head(path, "dev")
    code, out, err = run_cli(capsys, "-C", str(path), *argv)
    assert code == 1 and out == ""
    assert expected in one_error_line(err)
    assert (head(path, "main"), head(path, "dev")) == before


def test_branch_delete(
    path: Path, forked: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # -D deletes an unmerged branch
    code, out, err = run_cli(capsys, "-C", str(path), "branch", "-D", "dev")
    assert (code, err) == (0, "")
    assert out == f"deleted branch dev (was {forked['d1'][:SHORT]})\n"
    # -d deletes a branch whose head another branch contains
    run_cli(capsys, "-C", str(path), "branch", "old", forked["base"])
    code, out, _ = run_cli(capsys, "-C", str(path), "branch", "-d", "old", "--json")
    assert code == 0
    assert json.loads(out) == {"branch": "old", "head": forked["base"], "deleted": True}
    with tc.Repository(path) as repo:
        assert set(repo.branches) == {"main"}


def test_branch_delete_after_merge(
    path: Path, forked: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(capsys, "-C", str(path), "merge", "dev")[0] == 0
    code, _, err = run_cli(capsys, "-C", str(path), "branch", "-d", "dev")
    assert (code, err) == (0, "")


@pytest.mark.parametrize(
    "argv", [["branch", "-d"], ["branch", "-D"], ["branch", "-d", "a", "b"], ["branch", "-dD", "a"]]
)
def test_branch_usage_errors(
    path: Path, forked: dict[str, str], capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run_cli(capsys, "-C", str(path), *argv)
    assert code == 2 and out == "" and "usage:" in err


# -- tag ----------------------------------------------------------------------------


def test_tag(path: Path, forked: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "-C", str(path), "tag") == (0, "", "")
    code, out, err = run_cli(capsys, "-C", str(path), "tag", "v1", forked["base"][:8])
    assert (code, err) == (0, "")
    assert out == f"created tag v1 at {forked['base'][:SHORT]}\n"
    code, out, _ = run_cli(capsys, "-C", str(path), "tag", "release-2", "dev", "--json")
    assert code == 0
    assert json.loads(out) == {"tag": "release-2", "commit": forked["d1"], "created": True}
    run_cli(capsys, "-C", str(path), "tag", "head")  # default: the current branch
    code, out, _ = run_cli(capsys, "-C", str(path), "tag")
    assert code == 0
    assert out.splitlines() == [
        f"head       {forked['m1'][:SHORT]}",
        f"release-2  {forked['d1'][:SHORT]}",
        f"v1         {forked['base'][:SHORT]}",
    ]
    code, out, _ = run_cli(capsys, "-C", str(path), "tag", "--json")
    assert json.loads(out) == {
        "tags": {"head": forked["m1"], "release-2": forked["d1"], "v1": forked["base"]}
    }
    # a tag is a ref like any other
    code, out, _ = run_cli(capsys, "-C", str(path), "log", "v1", "--oneline")
    assert code == 0 and out == f"{forked['base'][:SHORT]} base\n"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["tag", "v1", "dev"], "already exists"),  # immutable, even to the same commit
        (["tag", "v1", "main"], "already exists"),
        (["tag", "v2", "no-such-ref"], "no-such-ref"),
        (["tag", "bad tag", "main"], "bad tag"),
        (["tag", "dev", "main"], "taken by a branch"),
    ],
)
def test_tag_errors(
    path: Path,
    forked: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    expected: str,
) -> None:
    with tc.Repository(path) as repo:
        repo.create_tag("v1", "main")
    code, out, err = run_cli(capsys, "-C", str(path), *argv)
    assert code == 1 and out == ""
    assert expected in one_error_line(err)
    with tc.Repository(path) as repo:
        assert repo.tags == {"v1": forked["m1"]}


# -- diff -----------------------------------------------------------------------------


def test_diff_text(path: Path, forked: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    # main -> dev: dev has 2 (main dropped it) and 3, lacks "a", and 1 differs
    code, out, err = run_cli(capsys, "-C", str(path), "diff", "main", "dev")
    assert (code, err) == (0, "")
    assert out == "x: 2 added, 1 removed, 1 changed\n"
    code, out, _ = run_cli(capsys, "-C", str(path), "diff", "main", "dev", "--keys")
    assert code == 0
    assert out.splitlines() == [
        "x: 2 added, 1 removed, 1 changed",
        "  + 2",
        "  + 3",
        "  - 'a'",
        "  ~ 1",
    ]
    # the other way round, with a commit prefix and a branch
    code, out, _ = run_cli(capsys, "-C", str(path), "diff", forked["d1"][:7], "main", "--keys")
    assert out.splitlines() == [
        "x: 1 added, 2 removed, 1 changed",
        "  + 'a'",
        "  - 2",
        "  - 3",
        "  ~ 1",
    ]


def test_diff_sorts_keys(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with tc.Repository(path) as repo:
        first = commit(repo, "main", "one key", {"z": 0})
        second = commit(repo, "main", "more keys", {10: 1, 2: 2, "b": 3, "10": 4})
    code, out, _ = run_cli(capsys, "-C", str(path), "diff", first, second, "--keys")
    assert code == 0
    assert out.splitlines() == [
        "x: 4 added, 0 removed, 0 changed",
        "  + 2",
        "  + 10",
        "  + '10'",
        "  + 'b'",
    ]
    code, out, _ = run_cli(capsys, "-C", str(path), "diff", first, second, "--json")
    assert json.loads(out)["columns"]["x"]["added"] == [2, 10, "10", "b"]


def test_diff_no_changes(
    path: Path, forked: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(capsys, "-C", str(path), "tag", "v1", "main")
    assert run_cli(capsys, "-C", str(path), "diff", "main", "v1") == (0, "no changes\n", "")
    code, out, _ = run_cli(capsys, "-C", str(path), "diff", "main", "v1", "--json")
    doc = json.loads(out)
    assert code == 0
    assert doc["changed"] is False and doc["columns"] == {}
    assert doc["a_id"] == doc["b_id"] == forked["m1"]


def test_diff_json(path: Path, forked: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "-C", str(path), "diff", "main", "dev", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "a": "main",
        "b": "dev",
        "a_id": forked["m1"],
        "b_id": forked["d1"],
        "changed": True,
        "added_columns": [],
        "removed_columns": [],
        "schema_changed": [],
        "columns": {"x": {"added": [2, 3], "removed": ["a"], "changed": [1]}},
    }


def test_diff_columns(
    path: Path, forked: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with tc.Repository(path) as repo:
        co = repo.checkout(write=True, branch="main")
        try:
            co.add_str_column("y")["k"] = "text"
            co.delete_column("x")
            last = co.commit("swap columns")
        finally:
            co.close()
    code, out, _ = run_cli(capsys, "-C", str(path), "diff", forked["m1"], last)
    assert code == 0
    assert out.splitlines() == [
        "+ column y",
        "- column x",
        "x: 0 added, 3 removed, 0 changed",
        "y: 1 added, 0 removed, 0 changed",
    ]
    code, out, _ = run_cli(capsys, "-C", str(path), "diff", forked["m1"], last, "--json")
    doc = json.loads(out)
    assert doc["added_columns"] == ["y"] and doc["removed_columns"] == ["x"]
    assert doc["columns"] == {
        "x": {"added": [], "removed": [0, 1, "a"], "changed": []},
        "y": {"added": ["k"], "removed": [], "changed": []},
    }


def test_diff_schema_change(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with tc.Repository(path) as repo:
        first = commit(repo, "main", "int64", {0: 0})
        co = repo.checkout(write=True)
        try:
            co.delete_column("x")
            co.add_ndarray_column("x", shape=(), dtype="float32")["0"] = np.float32(1)
            second = co.commit("float32")
        finally:
            co.close()
    code, out, _ = run_cli(capsys, "-C", str(path), "diff", first, second)
    assert code == 0
    assert out.splitlines()[0] == "~ column x: schema changed"
    doc = json.loads(run_cli(capsys, "-C", str(path), "diff", first, second, "--json")[1])
    assert doc["schema_changed"] == ["x"]


def test_diff_unknown_ref(
    path: Path, forked: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "-C", str(path), "diff", "main", "nope")
    assert code == 1 and out == ""
    assert "'nope'" in one_error_line(err)
    code, _, err = run_cli(capsys, "-C", str(path), "diff", "main")
    assert code == 2 and "usage:" in err


# -- merge ------------------------------------------------------------------------------


def test_merge_fast_forward_and_up_to_date(
    path: Path, forked: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(capsys, "-C", str(path), "branch", "behind", forked["base"])
    code, out, err = run_cli(capsys, "-C", str(path), "merge", "main", "--into", "behind")
    assert (code, err) == (0, "")
    assert out == f"fast-forward to {forked['m1']}\n"
    assert head(path, "behind") == forked["m1"]
    code, out, _ = run_cli(capsys, "-C", str(path), "merge", "main", "--into", "behind")
    assert (code, out) == (0, "already up to date\n")
    # an ancestor of the branch is already merged
    code, out, _ = run_cli(capsys, "-C", str(path), "merge", forked["base"][:8])
    assert (code, out) == (0, "already up to date\n")
    code, out, _ = run_cli(capsys, "-C", str(path), "merge", "main", "--into", "behind", "--json")
    assert json.loads(out) == {
        "source": "main",
        "into": "behind",
        "result": "up-to-date",
        "head": forked["m1"],
    }
    with tc.Repository(path) as repo:
        assert len(repo.log("behind")) == 2  # no merge commit was made


def test_merge_real(path: Path, forked: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "-C", str(path), "merge", "dev", "-m", "bring dev in")
    assert (code, err) == (0, "")
    merged = head(path, "main")
    assert out == f"merged into main: {merged}\n"
    with tc.Repository(path) as repo:
        info = repo.log(limit=1)[0]
        assert info.parents == (forked["m1"], forked["d1"])
        assert info.message == "bring dev in"
        assert repo.branches["dev"] == forked["d1"]  # the source does not move
        with repo.checkout(commit=merged) as co:
            x = co["x"]
            assert {k: int(x[k]) for k in x} == {0: 0, 1: 11, 3: 3, "a": 5}
    # and back into dev: a fast-forward now
    code, out, _ = run_cli(capsys, "-C", str(path), "merge", "main", "--into", "dev", "--json")
    assert code == 0
    assert json.loads(out) == {
        "source": "main",
        "into": "dev",
        "result": "fast-forward",
        "head": merged,
    }


def test_merge_into_current_branch_by_default(
    path: Path, forked: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with tc.Repository(path) as repo:
        repo.checkout(write=True, branch="dev").close()  # dev becomes the current branch
    code, out, _ = run_cli(capsys, "-C", str(path), "merge", "main", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["into"] == "dev" and doc["result"] == "merge"
    assert head(path, "main") == forked["m1"]
    with tc.Repository(path) as repo:
        assert repo.log("dev", limit=1)[0].message == "Merge main into dev"


@pytest.fixture
def conflicting(path: Path, forked: dict[str, str]) -> dict[str, str]:
    """``forked`` plus conflicting changes: key 0 on both sides, key 1 changed/deleted."""
    with tc.Repository(path) as repo:
        d2 = commit(repo, "dev", "dev: 0 -> 100", {0: 100, "new": 1})
        m2 = commit(repo, "main", "main: 0 -> 200, drop 1", {0: 200, "new": 2}, delete=[1])
    return {**forked, "d2": d2, "m2": m2}


def test_merge_conflict(
    path: Path, conflicting: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "-C", str(path), "merge", "dev")
    assert code == 1
    assert out.splitlines() == [
        "CONFLICT (both_changed): x[0]",
        "CONFLICT (changed_deleted): x[1]",
        "CONFLICT (both_added): x['new']",
    ]
    line = one_error_line(err)
    assert "3 conflict(s)" in line and "'dev'" in line and "nothing was written" in line
    assert head(path, "main") == conflicting["m2"]
    assert head(path, "dev") == conflicting["d2"]


def test_merge_conflict_json(
    path: Path, conflicting: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "-C", str(path), "merge", "dev", "--json")
    assert code == 1
    assert "conflict" in one_error_line(err)
    doc = json.loads(out)
    assert doc["result"] == "conflict" and doc["head"] == conflicting["m2"]
    assert doc["source"] == "dev" and doc["into"] == "main"
    assert [(c["column"], c["key"], c["kind"]) for c in doc["conflicts"]] == [
        ("x", 0, "both_changed"),
        ("x", 1, "changed_deleted"),
        ("x", "new", "both_added"),
    ]
    deleted = doc["conflicts"][1]
    assert deleted["ours"] is None and deleted["base"] and deleted["theirs"]
    assert deleted["base"] != deleted["theirs"]


def test_merge_column_conflict(
    path: Path, forked: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with tc.Repository(path) as repo:
        co = repo.checkout(write=True, branch="main")
        try:
            co.delete_column("x")
            co.commit("drop x")
        finally:
            co.close()
    code, out, err = run_cli(capsys, "-C", str(path), "merge", "dev")
    assert code == 1
    assert out == "CONFLICT (column_deleted): x\n"
    one_error_line(err)
    code, out, _ = run_cli(capsys, "-C", str(path), "merge", "dev", "--json")
    assert [(c["column"], c["key"]) for c in json.loads(out)["conflicts"]] == [("x", None)]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["merge", "no-such-ref"], "no-such-ref"),
        (["merge", "dev", "--into", "no-such-branch"], "no-such-branch"),
    ],
)
def test_merge_errors(
    path: Path,
    forked: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    expected: str,
) -> None:
    code, out, err = run_cli(capsys, "-C", str(path), *argv)
    assert code == 1 and out == ""
    assert expected in one_error_line(err)


def test_merge_refused_with_staged_changes(
    path: Path, forked: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with tc.Repository(path) as repo:
        co = repo.checkout(write=True, branch="main")
        co["x"][9] = np.int64(9)
        co.close()  # staged changes survive closing
    code, out, err = run_cli(capsys, "-C", str(path), "merge", "dev")
    assert code == 1 and out == ""
    assert "staged changes" in one_error_line(err)


# -- through a real subprocess -------------------------------------------------------------


def test_subprocess_merge_conflict(path: Path, conflicting: dict[str, str], tmp_path: Path) -> None:
    result = run_subprocess("merge", "dev", cwd=path)
    assert result.returncode == 1
    assert len(result.stdout.splitlines()) == 3
    assert all(line.startswith("CONFLICT (") for line in result.stdout.splitlines())
    assert "conflict" in one_error_line(result.stderr)


def test_subprocess_branch_merge_and_graph(
    path: Path, forked: dict[str, str], tmp_path: Path
) -> None:
    result = run_subprocess("-C", str(path), "merge", "dev", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("merged into main: ")
    result = run_subprocess("-C", str(path), "log", "--graph", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    assert [line.split(" ")[0] for line in result.stdout.splitlines()] == [
        "*",
        "|\\",
        "*",
        "|",
        "|/",
        "*",
    ]
    result = run_subprocess("-C", str(path), "branch", "-d", "main", cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert "current branch" in one_error_line(result.stderr)
