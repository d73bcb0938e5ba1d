"""Repository commands of the ``tensorcask`` command line.

``init``, ``status`` and ``log`` (registered by :func:`add_repo_commands`);
``summary``, ``verify``, ``gc`` and ``lock release`` (registered by
:func:`add_maintenance_commands`). Two registration functions because the
help lists the history commands between the two groups.
"""

from __future__ import annotations

import argparse
import socket
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import tensorcask as tc
from tensorcask.graph import display_order, render_graph
from tensorcask.layout import WRITER_LOCK_FILE
from tensorcask.storage.lock import WriterLock, holder_is_dead, read_holder

from ._common import (
    SHORT_ID,
    add_command,
    base_dir,
    common_options,
    non_negative,
    open_repo,
    out,
    print_error,
    print_json,
    progress_bar,
)

__all__ = [
    "add_maintenance_commands",
    "add_repo_commands",
    "cmd_gc",
    "cmd_init",
    "cmd_lock_release",
    "cmd_log",
    "cmd_status",
    "cmd_summary",
    "cmd_verify",
]


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _first_line(message: str) -> str:
    return message.splitlines()[0] if message else ""


# -- init, status ---------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    """Create a repository."""
    target = base_dir(args) / args.path
    repo = tc.init(target, user_name=args.user_name, user_email=args.user_email)
    try:
        config = repo.config
        if args.json:
            print_json(
                {
                    "path": str(repo.path),
                    "branch": repo.current_branch,
                    "user_name": config.get("user_name"),
                    "user_email": config.get("user_email"),
                }
            )
        elif not args.quiet:
            out(
                f"Initialized empty tensorcask repository in {repo.path} "
                f"(author: {config.get('user_name')} <{config.get('user_email')}>)"
            )
    finally:
        repo.close()
    return 0


def _describe_holder(holder: dict[str, Any]) -> str:
    text = (
        f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')} "
        f"({holder.get('purpose')})"
    )
    return text + (" -- that process appears dead" if holder_is_dead(holder) else "")


def cmd_status(args: argparse.Namespace) -> int:
    """Show the current branch, head commit, staged changes and the writer lock."""
    with open_repo(args) as repo:
        branch = repo.current_branch
        head = repo.branches.get(branch)
        staged = repo.staged_branch
        holder = read_holder(repo.path / WRITER_LOCK_FILE)
        if args.json:
            print_json(
                {
                    "path": str(repo.path),
                    "branch": branch,
                    "head": head,
                    "staged_changes": staged is not None,
                    "staged_branch": staged,
                    "writer_lock": holder,
                }
            )
            return 0
        out(f"On branch {branch}")
        out(f"head: {head}" if head else "head: (no commits yet)")
        out("staged changes: " + (f"pending on branch {staged}" if staged else "none"))
        out("writer lock: " + (f"held by {_describe_holder(holder)}" if holder else "free"))
    return 0


# -- log ------------------------------------------------------------------------


def _commit_doc(info: tc.CommitInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "parents": list(info.parents),
        "author": info.author,
        "email": info.email,
        "time": _iso(info.time),
        "message": info.message,
    }


def _print_commit(info: tc.CommitInfo, first: bool) -> None:
    if not first:
        out()
    out(f"commit {info.id}")
    if len(info.parents) > 1:
        out("Merge: " + " ".join(p[:SHORT_ID] for p in info.parents))
    out(f"Author: {info.author} <{info.email}>")
    out(f"Date:   {info.time.isoformat(timespec='seconds')}")
    out()
    for line in info.message.splitlines() or [""]:
        out(f"    {line}".rstrip())


def _graph(commits: list[tc.CommitInfo]) -> tuple[list[tc.CommitInfo], list[str]]:
    """The commits in drawing order (children first) and the graph's lines."""
    by_id: dict[str, tc.CommitInfo] = {c.id: c for c in commits}
    order = display_order(
        [(c.id, c.parents, f"{c.id[:SHORT_ID]} {_first_line(c.message)}") for c in commits]
    )
    return [by_id[commit_id] for commit_id, _, _ in order], render_graph(order)


def cmd_log(args: argparse.Namespace) -> int:
    """Show commits newest first (``--graph``: as a drawing of the commit graph)."""
    with open_repo(args) as repo:
        ref = args.ref if args.ref is not None else repo.current_branch
        commits = repo.log(args.ref, limit=args.limit)
    lines: list[str] = []
    if args.graph:
        commits, lines = _graph(commits)
    if args.json:
        doc: dict[str, Any] = {"ref": ref, "commits": [_commit_doc(c) for c in commits]}
        if args.graph:
            doc["graph"] = lines
        print_json(doc)
    elif args.graph:
        for line in lines:
            out(line)
    elif args.oneline:
        for info in commits:
            out(f"{info.id[:SHORT_ID]} {_first_line(info.message)}")
    else:
        for i, info in enumerate(commits):
            _print_commit(info, first=i == 0)
    return 0


# -- summary --------------------------------------------------------------------


def _shape(shape: Sequence[int | None] | None) -> list[int | None] | None:
    return None if shape is None else list(shape)


def _columns_doc(repo: tc.Repository, head: str | None) -> list[dict[str, Any]]:
    if head is None:
        return []
    with repo.checkout(commit=head) as co:
        return [
            {
                "name": name,
                "kind": column.kind,
                "dtype": None if column.dtype is None else str(column.dtype),
                "shape": _shape(column.shape),
                "max_shape": _shape(column.max_shape),
                "count": len(column),
            }
            for name, column in sorted(co.columns.items())
        ]


def _summary_doc(repo: tc.Repository) -> dict[str, Any]:
    branch = repo.current_branch
    head = repo.branches.get(branch)
    infos = repo.log(head, limit=1) if head else []
    return {
        "path": str(repo.path),
        "disk_usage_bytes": repo.disk_usage(),
        "branch": branch,
        "staged_changes": repo.staged_branch is not None,
        "branches": repo.branches,
        "tags": repo.tags,
        "head": _commit_doc(infos[0]) if infos else None,
        "columns": _columns_doc(repo, head),
    }


def cmd_summary(args: argparse.Namespace) -> int:
    """Describe the repository."""
    with open_repo(args) as repo:
        if args.json:
            print_json(_summary_doc(repo))
        else:
            out(repo.summary())
    return 0


# -- verify, gc, lock release ---------------------------------------------------


def _verify_remote(args: argparse.Namespace) -> int:
    """``verify --remote NAME``: re-hash everything remote NAME holds; exit 1 on problems."""
    with open_repo(args) as repo, progress_bar(args) as progress:
        report = repo.verify_remote(args.remote, raise_on_error=False, progress=progress)
    doc = {
        "ok": report.ok,
        "remote": report.remote,
        "refs": report.refs,
        "packs": report.packs,
        "objects": report.objects,
        "samples": report.samples,
        "bytes": report.bytes,
        "problems": list(report.problems),
    }
    return _outcome(args, doc, str(report), f"verification of remote {report.remote!r}")


def _outcome(args: argparse.Namespace, doc: dict[str, Any], text: str, what: str) -> int:
    """Print a verification report (``doc`` with --json, else ``text``); its exit status."""
    problems = doc["problems"]
    if args.json:
        print_json(doc)
    elif problems or not args.quiet:
        out(text)
    if not problems:
        return 0
    print_error(f"{what} found {len(problems)} problem(s): {problems[0]}")
    return 1


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-hash history (and with ``--full`` every stored byte); exit 1 on problems.

    With ``--remote NAME``: re-hash everything that remote holds instead.
    """
    if args.remote is not None:
        return _verify_remote(args)
    with open_repo(args) as repo, progress_bar(args) as progress:
        report = repo.verify(args.ref, full=args.full, raise_on_error=False, progress=progress)
    doc = {
        "ok": report.ok,
        "ref": args.ref,
        "full": report.full,
        "commits": report.commits,
        "pages": report.pages,
        "samples": report.samples,
        "problems": list(report.problems),
    }
    return _outcome(args, doc, str(report), "verification")


def _check_verify(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Usage errors argparse cannot express (exit 2 through ``parser.error``)."""
    if args.remote is not None and (args.ref is not None or args.full):
        parser.error("--remote checks the whole remote: it takes neither REF nor --full")


def cmd_gc(args: argparse.Namespace) -> int:
    """Remove unreferenced data."""
    with open_repo(args) as repo, progress_bar(args) as progress:
        report = repo.gc(progress=progress)
    if args.json:
        print_json(
            {
                "commits": report.commits,
                "objects": report.objects,
                "samples": report.samples,
                "segments": report.segments,
                "bytes_freed": report.bytes_freed,
            }
        )
    elif not args.quiet:
        out(str(report))
    return 0


def _refusal(holder: dict[str, Any], lock_file: Path) -> str:
    """Why ``lock release`` without --force leaves the lock of ``holder`` alone."""
    who = _describe_holder(holder)
    if holder.get("host") != socket.gethostname():
        why = (
            f"that host is not this one ({socket.gethostname()}), so whether the holder "
            "is still alive cannot be checked from here"
        )
    else:
        why = "that process is alive"
    return (
        f"the writer lock {lock_file} is held by {who} and {why}; let it finish or close its "
        "checkout, or, if it is stuck or gone, run `tensorcask lock release --force` "
        "(its later commits then fail)"
    )


def _release_dead(lock_file: Path, holder: dict[str, Any]) -> dict[str, Any]:
    """Clear the lock of a holder found dead by taking the lock and letting it go: if
    a new writer took it over meanwhile, taking it fails and its lock stays."""
    probe = WriterLock(lock_file)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "taken over": what we want
            probe.acquire("lock release")
    except tc.WriterLockError:
        now = read_holder(lock_file)
        if now is not None and not holder_is_dead(now):
            raise tc.WriterLockError(_refusal(now, lock_file)) from None
        raise tc.WriterLockError(
            f"the writer lock {lock_file} names {_describe_holder(holder)}, which is gone, "
            "but the lock itself is held: another process took it since; let it finish, or "
            "run `tensorcask lock release --force` if it is stuck"
        ) from None
    probe.release()
    return holder


def cmd_lock_release(args: argparse.Namespace) -> int:
    """Release the writer lock: at once when its holder is provably dead, else with --force."""
    with open_repo(args) as repo:
        if repo.read_only:
            repo.force_release_writer_lock()  # raises ReadOnlyError, saying why
        lock_file = repo.path / WRITER_LOCK_FILE
        holder = read_holder(lock_file)
        dead = holder_is_dead(holder)
        if holder is not None and not dead and not args.force:
            raise tc.WriterLockError(_refusal(holder, lock_file))
        released = None
        if args.force:
            released = repo.force_release_writer_lock()
        elif holder is not None:
            released = _release_dead(lock_file, holder)
    if args.json:
        print_json(
            {
                "released": released is not None,
                "holder": released,
                "holder_dead": dead,
                "forced": bool(args.force) and released is not None and not dead,
            }
        )
    elif not args.quiet:
        if released:
            out(f"released the writer lock held by {_describe_holder(released)}")
        else:
            out("no writer lock was held")
    return 0


# -- registration ---------------------------------------------------------------


def add_repo_commands(subs: Any) -> None:
    """Add ``init``, ``status`` and ``log`` to the subcommand parsers ``subs``."""
    p = add_command(subs, "init", cmd_init, "create a repository", True)
    p.add_argument(
        "path", nargs="?", default=".", metavar="PATH", help="where (default: here); new or empty"
    )
    p.add_argument("--user-name", metavar="N", help="author name (default: git, then env)")
    p.add_argument("--user-email", metavar="E", help="author email (default: git, then env)")

    add_command(subs, "status", cmd_status, "show branch, head, staged changes, lock", True)

    p = add_command(subs, "log", cmd_log, "show commit history", True)
    p.add_argument("ref", nargs="?", metavar="REF", help="branch, tag or commit (prefix)")
    p.add_argument(
        "-n", "--max-count", dest="limit", type=non_negative, metavar="LIMIT", help="at most LIMIT"
    )
    p.add_argument("--oneline", action="store_true", help="short id and first line")
    p.add_argument("--graph", action="store_true", help="draw the commit graph (implies --oneline)")


def add_maintenance_commands(subs: Any) -> None:
    """Add ``summary``, ``verify``, ``gc`` and ``lock release`` to ``subs``."""
    add_command(subs, "summary", cmd_summary, "describe the repository", True)

    p = add_command(subs, "verify", cmd_verify, "check hashes of history and data", True)
    p.add_argument("ref", nargs="?", metavar="REF", help="check only what REF reaches")
    p.add_argument("--full", action="store_true", help="also re-hash every stored byte")
    p.add_argument("--remote", metavar="NAME", help="re-hash everything remote NAME holds instead")
    verify_parser = p
    p.set_defaults(check=lambda args: _check_verify(args, verify_parser))

    add_command(subs, "gc", cmd_gc, "remove unreferenced data", True)

    lock = subs.add_parser(
        "lock",
        help="writer lock maintenance",
        description="writer lock maintenance",
        parents=[common_options(False)],
    )
    lock_subs = lock.add_subparsers(dest="lock_command", metavar="ACTION", required=True)
    p = add_command(
        lock_subs,
        "release",
        cmd_lock_release,
        "release the writer lock of a dead holder (a live one only with --force)",
        True,
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="release it even while its holder lives (or runs on another host); "
        "the holder's later commits then fail",
    )
