"""History commands of the ``tensorcask`` command line: branch, tag, diff, merge.

Porcelain over the public API, registered by :mod:`tensorcask.cli` through
:func:`add_history_commands`: ``--json`` prints one JSON document on stdout;
a user error exits 1 with one line on stderr.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

import tensorcask as tc

from ._common import SHORT_ID, add_command, open_repo, out, print_json

__all__ = ["add_history_commands", "cmd_branch", "cmd_diff", "cmd_merge", "cmd_tag"]

Key = int | str


def _sorted_keys(keys: Iterable[Key]) -> list[Key]:
    """Keys in repository order: ints (numerically) before strs."""
    return sorted(keys, key=lambda k: (isinstance(k, str), k))


def _quiet(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "quiet", False))


# -- branch -----------------------------------------------------------------


def _list_branches(repo: tc.Repository, as_json: bool) -> None:
    branches = repo.branches
    current = repo.current_branch
    if as_json:
        print_json({"current": current, "branches": branches})
        return
    names = sorted(set(branches) | {current})
    width = max(len(name) for name in names)
    for name in names:
        head = branches.get(name)
        shown = head[:SHORT_ID] if head else "(no commits yet)"
        out(f"{'*' if name == current else ' '} {name:<{width}}  {shown}")


def cmd_branch(args: argparse.Namespace) -> int:
    """List branches, create one at a ref, or delete one (``-d``, ``-D`` forces)."""
    with open_repo(args) as repo:
        if args.name is None:
            _list_branches(repo, args.json)
            return 0
        if args.delete or args.force_delete:
            head = repo.delete_branch(args.name, force=args.force_delete)
            if args.json:
                print_json({"branch": args.name, "head": head, "deleted": True})
            elif not _quiet(args):
                out(f"deleted branch {args.name} (was {head[:SHORT_ID]})")
            return 0
        head = repo.create_branch(args.name, args.base)
    if args.json:
        print_json({"branch": args.name, "head": head, "created": True})
    elif not _quiet(args):
        out(f"created branch {args.name} at {head[:SHORT_ID]}")
    return 0


def _check_branch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Usage errors argparse cannot express (exit 2 through ``parser.error``)."""
    if args.delete and args.force_delete:
        parser.error("-d and -D are mutually exclusive")
    if (args.delete or args.force_delete) and (args.name is None or args.base is not None):
        parser.error("-d/-D take exactly one branch NAME")


# -- tag ----------------------------------------------------------------------


def cmd_tag(args: argparse.Namespace) -> int:
    """List tags, or create the immutable tag NAME for REF."""
    with open_repo(args) as repo:
        if args.name is None:
            tags = repo.tags
            if args.json:
                print_json({"tags": tags})
            else:
                width = max((len(name) for name in tags), default=0)
                for name, target in sorted(tags.items()):
                    out(f"{name:<{width}}  {target[:SHORT_ID]}")
            return 0
        ref = args.ref if args.ref is not None else repo.current_branch
        target = repo.create_tag(args.name, ref)
    if args.json:
        print_json({"tag": args.name, "commit": target, "created": True})
    elif not _quiet(args):
        out(f"created tag {args.name} at {target[:SHORT_ID]}")
    return 0


# -- diff -----------------------------------------------------------------------


def _diff_doc(diff: tc.Diff, a: str, b: str, a_id: str, b_id: str) -> dict[str, Any]:
    return {
        "a": a,
        "b": b,
        "a_id": a_id,
        "b_id": b_id,
        "changed": bool(diff),
        "added_columns": sorted(diff.added_columns),
        "removed_columns": sorted(diff.removed_columns),
        "schema_changed": sorted(diff.schema_changed),
        "columns": {
            name: {
                "added": _sorted_keys(change.added),
                "removed": _sorted_keys(change.removed),
                "changed": _sorted_keys(change.changed),
            }
            for name, change in sorted(diff.columns.items())
        },
    }


def _print_diff(diff: tc.Diff, with_keys: bool) -> None:
    if not diff:
        out("no changes")
        return
    for name in sorted(diff.added_columns):
        out(f"+ column {name}")
    for name in sorted(diff.removed_columns):
        out(f"- column {name}")
    for name in sorted(diff.schema_changed):
        out(f"~ column {name}: schema changed")
    for name, change in sorted(diff.columns.items()):
        out(
            f"{name}: {len(change.added)} added, {len(change.removed)} removed, "
            f"{len(change.changed)} changed"
        )
        if with_keys:
            for sign, keys in (("+", change.added), ("-", change.removed), ("~", change.changed)):
                for key in _sorted_keys(keys):
                    out(f"  {sign} {key!r}")


def cmd_diff(args: argparse.Namespace) -> int:
    """Show how to go from commit A to commit B; exit 0 whether or not they differ."""
    with open_repo(args) as repo:
        a_id, b_id = repo.resolve(args.a), repo.resolve(args.b)
        diff = repo.diff(a_id, b_id)
    if args.json:
        print_json(_diff_doc(diff, args.a, args.b, a_id, b_id))
    else:
        _print_diff(diff, args.keys)
    return 0


# -- merge ----------------------------------------------------------------------


def _conflict_doc(conflict: tc.Conflict) -> dict[str, Any]:
    return {
        "column": conflict.column,
        "key": conflict.key,
        "kind": conflict.kind,
        "base": conflict.base,
        "ours": conflict.ours,
        "theirs": conflict.theirs,
    }


def _conflict_line(conflict: tc.Conflict) -> str:
    where = conflict.column if conflict.key is None else f"{conflict.column}[{conflict.key!r}]"
    return f"CONFLICT ({conflict.kind}): {where}"


def cmd_merge(args: argparse.Namespace) -> int:
    """Merge SOURCE into a branch (default: the current one).

    Prints the outcome; on conflicts prints every conflict on stdout, then
    exits 1 with the error on stderr, having written nothing.
    """
    with open_repo(args) as repo:
        into = args.into if args.into is not None else repo.current_branch
        theirs = repo.resolve(args.source)
        before = repo.branches.get(into)
        try:
            head = repo.merge(args.source, into=into, message=args.message)
        except tc.MergeConflictError as exc:
            conflicts = [c for c in exc.conflicts if isinstance(c, tc.Conflict)]
            if args.json:
                print_json(
                    {
                        "source": args.source,
                        "into": into,
                        "result": "conflict",
                        "head": before,
                        "conflicts": [_conflict_doc(c) for c in conflicts],
                    }
                )
            else:
                for conflict in conflicts:
                    out(_conflict_line(conflict))
            raise  # main() prints the one-line error and exits 1
    if head == before:
        result, text = "up-to-date", "already up to date"
    elif head == theirs:
        result, text = "fast-forward", f"fast-forward to {head}"
    else:
        result, text = "merge", f"merged into {into}: {head}"
    if args.json:
        print_json({"source": args.source, "into": into, "result": result, "head": head})
    elif not _quiet(args):
        out(text)
    return 0


# -- registration -------------------------------------------------------------------


def add_history_commands(subs: Any) -> None:
    """Add ``branch``, ``tag``, ``diff`` and ``merge`` to the subcommand parsers ``subs``."""
    p = add_command(subs, "branch", cmd_branch, "list, create or delete branches", True)
    p.add_argument("name", nargs="?", metavar="NAME", help="branch to create (or delete)")
    p.add_argument("base", nargs="?", metavar="BASE", help="ref to start at (default: current)")
    p.add_argument("-d", "--delete", action="store_true", help="delete a merged branch")
    p.add_argument(
        "-D", dest="force_delete", action="store_true", help="delete a branch even if unmerged"
    )
    branch_parser = p
    p.set_defaults(check=lambda args: _check_branch(args, branch_parser))

    p = add_command(subs, "tag", cmd_tag, "list tags or create one (tags are immutable)", True)
    p.add_argument("name", nargs="?", metavar="NAME", help="tag to create")
    p.add_argument("ref", nargs="?", metavar="REF", help="commit to tag (default: current)")

    p = add_command(subs, "diff", cmd_diff, "show changes from commit A to commit B", True)
    p.add_argument("a", metavar="A", help="branch, tag or commit (prefix)")
    p.add_argument("b", metavar="B", help="branch, tag or commit (prefix)")
    p.add_argument("--keys", action="store_true", help="list the keys, not only counts")

    p = add_command(subs, "merge", cmd_merge, "merge a ref into a branch", True)
    p.add_argument("source", metavar="SOURCE", help="branch, tag or commit to merge")
    p.add_argument("--into", metavar="BRANCH", help="branch to merge into (default: current)")
    p.add_argument("-m", "--message", metavar="MESSAGE", help="message of a merge commit")
