"""The ``tensorcask`` command line (also ``python -m tensorcask``).

Porcelain only: parse arguments, call the public API, format the result.
Every command that prints data takes ``--json`` and then prints exactly one
JSON document on stdout. User errors exit with status 1 and one line on
stderr; usage errors exit with status 2 (argparse's convention).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import tensorcask as tc
from tensorcask.graph import display_order, render_graph
from tensorcask.layout import FORMAT_FILE, WRITER_LOCK_FILE
from tensorcask.storage.lock import holder_is_dead, read_holder

__all__ = ["main"]

PROG = "tensorcask"
SHORT_ID = 10
USER_ERRORS: tuple[type[BaseException], ...] = (
    tc.CaskError,
    KeyError,
    ValueError,
    TypeError,
    OSError,  # includes PermissionError and FileNotFoundError
)

Handler = Callable[[argparse.Namespace], int]


# -- output helpers -------------------------------------------------------


def _out(text: str = "") -> None:
    print(text, file=sys.stdout)


def _json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=False), file=sys.stdout)


def _one_line(message: str) -> str:
    return "; ".join(part.strip() for part in message.splitlines() if part.strip())


def _message(exc: BaseException) -> str:
    # KeyError.__str__ quotes its argument: show the argument itself.
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


def _error(message: str) -> None:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _first_line(message: str) -> str:
    return message.splitlines()[0] if message else ""


# -- locating the repository ----------------------------------------------


def _base_dir(args: argparse.Namespace) -> Path:
    """The directory the command runs as if started in (``-C``, else the cwd)."""
    base = Path.cwd()
    for part in args.directory or ():
        base = base / part
    return base


def _find_root(start: Path) -> Path:
    for candidate in (start, *start.parents):
        if (candidate / FORMAT_FILE).is_file():  # the marker of a repository
            return candidate
    raise tc.RepositoryNotFoundError(
        f"not a tensorcask repository (or any parent directory): {start}; "
        "create one with `tensorcask init` or pass -C PATH"
    )


def _open(args: argparse.Namespace) -> tc.Repository:
    """Open the repository: ``-C PATH`` itself, else the cwd or a parent of it."""
    if args.directory:
        return tc.Repository(_base_dir(args))
    return tc.Repository(_find_root(Path.cwd()))


# -- commands ---------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    """Create a repository."""
    target = _base_dir(args) / args.path
    repo = tc.init(target, user_name=args.user_name, user_email=args.user_email)
    try:
        if not args.quiet:
            config = repo.config
            _out(
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
    with _open(args) as repo:
        branch = repo.current_branch
        head = repo.branches.get(branch)
        staged = repo.staged_branch
        holder = read_holder(repo.path / WRITER_LOCK_FILE)
        if args.json:
            _json(
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
        _out(f"On branch {branch}")
        _out(f"head: {head}" if head else "head: (no commits yet)")
        _out("staged changes: " + (f"pending on branch {staged}" if staged else "none"))
        _out("writer lock: " + (f"held by {_describe_holder(holder)}" if holder else "free"))
    return 0


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
        _out()
    _out(f"commit {info.id}")
    if len(info.parents) > 1:
        _out("Merge: " + " ".join(p[:SHORT_ID] for p in info.parents))
    _out(f"Author: {info.author} <{info.email}>")
    _out(f"Date:   {info.time.isoformat(timespec='seconds')}")
    _out()
    for line in info.message.splitlines() or [""]:
        _out(f"    {line}".rstrip())


def _graph(commits: list[tc.CommitInfo]) -> tuple[list[tc.CommitInfo], list[str]]:
    """The commits in drawing order (children first) and the graph's lines."""
    by_id: dict[str, tc.CommitInfo] = {c.id: c for c in commits}
    order = display_order(
        [(c.id, c.parents, f"{c.id[:SHORT_ID]} {_first_line(c.message)}") for c in commits]
    )
    return [by_id[commit_id] for commit_id, _, _ in order], render_graph(order)


def cmd_log(args: argparse.Namespace) -> int:
    """Show commits newest first (``--graph``: as a drawing of the commit graph)."""
    with _open(args) as repo:
        ref = args.ref if args.ref is not None else repo.current_branch
        commits = repo.log(args.ref, limit=args.limit)
    lines: list[str] = []
    if args.graph:
        commits, lines = _graph(commits)
    if args.json:
        doc: dict[str, Any] = {"ref": ref, "commits": [_commit_doc(c) for c in commits]}
        if args.graph:
            doc["graph"] = lines
        _json(doc)
    elif args.graph:
        for line in lines:
            _out(line)
    elif args.oneline:
        for info in commits:
            _out(f"{info.id[:SHORT_ID]} {_first_line(info.message)}")
    else:
        for i, info in enumerate(commits):
            _print_commit(info, first=i == 0)
    return 0


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
    with _open(args) as repo:
        if args.json:
            _json(_summary_doc(repo))
        else:
            _out(repo.summary())
    return 0


@contextmanager
def _progress(args: argparse.Namespace) -> Iterator[Callable[[str, int], None] | None]:
    """A progress line on stderr, only on a terminal and without --quiet."""
    if args.quiet or not sys.stderr.isatty():
        yield None
        return
    shown = False

    def show(phase: str, count: int) -> None:
        nonlocal shown
        shown = True
        sys.stderr.write(f"\r{phase}: {count:,}")
        sys.stderr.flush()

    try:
        yield show
    finally:
        if shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-hash history (and with ``--full`` every stored byte); exit 1 on problems."""
    with _open(args) as repo, _progress(args) as progress:
        report = repo.verify(args.ref, full=args.full, raise_on_error=False, progress=progress)
    if args.json:
        _json(
            {
                "ok": report.ok,
                "ref": args.ref,
                "full": report.full,
                "commits": report.commits,
                "pages": report.pages,
                "samples": report.samples,
                "problems": list(report.problems),
            }
        )
    elif not report.ok or not args.quiet:
        _out(str(report))
    if report.ok:
        return 0
    _error(f"verification found {len(report.problems)} problem(s): {report.problems[0]}")
    return 1


def cmd_gc(args: argparse.Namespace) -> int:
    """Remove unreferenced data."""
    with _open(args) as repo, _progress(args) as progress:
        report = repo.gc(progress=progress)
    if args.json:
        _json(
            {
                "commits": report.commits,
                "objects": report.objects,
                "samples": report.samples,
                "segments": report.segments,
                "bytes_freed": report.bytes_freed,
            }
        )
    elif not args.quiet:
        _out(str(report))
    return 0


def cmd_lock_release(args: argparse.Namespace) -> int:
    """Force-release the writer lock."""
    with _open(args) as repo:
        holder = repo.force_release_writer_lock()
    if not args.quiet:
        if holder:
            _out(f"released the writer lock held by {_describe_holder(holder)}")
        else:
            _out("no writer lock was held")
    return 0


# -- argument parsing -------------------------------------------------------


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _common(json_output: bool) -> argparse.ArgumentParser:
    """Options every subcommand accepts (``--quiet`` may also follow the command)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    if json_output:
        parent.add_argument("--json", action="store_true", help="print one JSON document")
    return parent


def _add(
    subs: Any, name: str, handler: Handler, help_text: str, json_output: bool = False
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subs.add_parser(
        name, help=help_text, description=help_text, parents=[_common(json_output)]
    )
    parser.set_defaults(handler=handler)
    return parser


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Version control for tensor data that feeds training loops."
    )
    parser.add_argument(
        "-C",
        dest="directory",
        metavar="PATH",
        action="append",
        help="run as if started in PATH (the repository is PATH itself)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print less")
    parser.add_argument("--version", action="version", version=f"{PROG} {tc.__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _add(subs, "init", cmd_init, "create a repository")
    p.add_argument("path", nargs="?", default=".", metavar="PATH")
    p.add_argument("--user-name", metavar="N", help="author name (default: git, then env)")
    p.add_argument("--user-email", metavar="E", help="author email (default: git, then env)")

    _add(subs, "status", cmd_status, "show branch, head, staged changes, lock", True)

    p = _add(subs, "log", cmd_log, "show commit history", True)
    p.add_argument("ref", nargs="?", metavar="REF", help="branch, tag or commit (prefix)")
    p.add_argument("-n", "--max-count", dest="limit", type=_non_negative, metavar="LIMIT")
    p.add_argument("--oneline", action="store_true", help="short id and first line")
    p.add_argument("--graph", action="store_true", help="draw the commit graph (implies --oneline)")

    # imported here: cli_history uses this module's helpers
    from tensorcask.cli_history import add_history_commands

    add_history_commands(subs)

    _add(subs, "summary", cmd_summary, "describe the repository", True)

    p = _add(subs, "verify", cmd_verify, "check hashes of history and data", True)
    p.add_argument("ref", nargs="?", metavar="REF", help="check only what REF reaches")
    p.add_argument("--full", action="store_true", help="also re-hash every stored byte")

    _add(subs, "gc", cmd_gc, "remove unreferenced data", True)

    lock = subs.add_parser("lock", help="writer lock maintenance", parents=[_common(False)])
    lock_subs = lock.add_subparsers(dest="lock_command", metavar="ACTION", required=True)
    _add(lock_subs, "release", cmd_lock_release, "force-release the writer lock")
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace | int:
    try:
        args = _build_parser().parse_args(argv)
        check: Callable[[argparse.Namespace], None] | None = getattr(args, "check", None)
        if check is not None:  # usage rules argparse cannot express; exits 2
            check(args)
        return args
    except SystemExit as exc:  # usage error (2), --help or --version (0)
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)


def _run(handler: Handler, args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return handler(args)
        finally:
            for warning in caught:
                print(f"{PROG}: warning: {_one_line(str(warning.message))}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the ``tensorcask`` command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    int
        The exit status: 0 on success, 1 when the library reported a user
        error (one line on stderr, no traceback) or ``verify`` found problems,
        2 for a usage error, 130 when interrupted.

    Examples
    --------
    >>> main(["-C", "data/mnist-repo", "log", "--oneline", "-n", "3"])  # doctest: +SKIP
    0
    """
    parsed = _parse(argv)
    if isinstance(parsed, int):
        return parsed
    try:
        return _run(parsed.handler, parsed)
    except BrokenPipeError:  # e.g. `tensorcask log | head`: not an error worth a message
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except USER_ERRORS as exc:
        _error(_message(exc))
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
