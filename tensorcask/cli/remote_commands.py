"""Remote commands of the ``tensorcask`` command line: remote, push, fetch, clone.

Porcelain over the remote API (SPEC §5), registered by :mod:`tensorcask.cli`
through :func:`add_remote_commands`: ``--json`` prints one JSON document on
stdout; a user error exits 1 with one line on stderr; transfers draw progress
bars on stderr when it is a terminal (not with ``--quiet``). ``verify
--remote NAME`` lives with ``verify`` in :mod:`.repo_commands`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import tensorcask as tc
from tensorcask.report import format_bytes

from ._common import (
    PROG,
    SHORT_ID,
    ProgressLine,
    add_command,
    base_dir,
    open_repo,
    out,
    parse_key,
    print_json,
    progress_bar,
)

__all__ = [
    "add_option_argument",
    "add_remote_commands",
    "cmd_clone",
    "cmd_fetch",
    "cmd_push",
    "cmd_remote_add",
    "cmd_remote_list",
    "cmd_remote_remove",
    "storage_option",
]

DEFAULT_REMOTE = "origin"

Transfer = Callable[[str, int, int], None]


# -- arguments ------------------------------------------------------------------


def storage_option(text: str) -> tuple[str, Any]:
    """An argparse ``type``: ``KEY=VALUE``, VALUE as JSON when it parses, else the string.

    ``anon=true`` gives ``True``, ``client_kwargs={"region_name":"us-east-1"}`` a dict,
    ``endpoint_url=http://127.0.0.1:9000`` the string.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def _options(pairs: Sequence[tuple[str, Any]] | None) -> dict[str, Any]:
    return dict(pairs or ())


def _is_local_path(url: str) -> bool:
    return "://" not in url and "::" not in url


def _absolute_url(args: argparse.Namespace, url: str) -> str:
    """A plain local path made absolute (relative to ``-C``/the cwd); URLs as given.

    The URL is remembered in the repository, so it must not depend on where a
    later command runs.
    """
    if not _is_local_path(url):
        return url
    path = Path(url).expanduser()
    return str(path if path.is_absolute() else (base_dir(args) / path).resolve())


def _clone_dir(url: str) -> str:
    """The folder ``clone`` creates when not given one: the URL's last component."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    if not name or name.endswith(":") or name in (".", ".."):
        raise ValueError(f"cannot name a folder after {url!r}: pass PATH (clone URL PATH)")
    return name


# -- output -----------------------------------------------------------------------


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def _amounts(result: tc.PushResult | tc.FetchResult, verb: str) -> str:
    return (
        f"{_count(result.commits, 'commit')}, {_count(result.objects, 'history object')}, "
        f"{_count(result.samples, 'sample')}, {format_bytes(result.bytes)} {verb}"
    )


def _transfer(line: ProgressLine | None, verb: str) -> Transfer | None:
    """The ``progress(what, done, total)`` of a transfer, drawn on ``line``."""
    if line is None:
        return None
    shown = line

    def show(what: str, done: int, total: int) -> None:
        shown(f"{verb} {what}", done, total, in_bytes=what == "bytes")

    return show


# -- remote add / remove / list ---------------------------------------------------


def cmd_remote_list(args: argparse.Namespace) -> int:
    """List the remotes (name and URL)."""
    with open_repo(args) as repo:
        remotes = repo.remotes
    if args.json:
        print_json({"remotes": remotes})
        return 0
    width = max((len(name) for name in remotes), default=0)
    for name, url in sorted(remotes.items()):
        out(f"{name:<{width}}  {url}")
    return 0


def cmd_remote_add(args: argparse.Namespace) -> int:
    """Remember remote NAME at URL with its storage options (nothing is contacted)."""
    url = _absolute_url(args, args.url)
    with open_repo(args) as repo:
        repo.add_remote(args.name, url, **_options(args.options))
    if not args.quiet:
        out(f"added remote {args.name}: {url}")
    return 0


def cmd_remote_remove(args: argparse.Namespace) -> int:
    """Forget remote NAME and the ``NAME/<branch>`` refs fetched from it."""
    with open_repo(args) as repo:
        url = repo.remotes.get(args.name)
        repo.remove_remote(args.name)  # names the known remotes if NAME is not one
    if not args.quiet:
        out(f"removed remote {args.name} (was {url})")
    return 0


# -- push -------------------------------------------------------------------------


def cmd_push(args: argparse.Namespace) -> int:
    """Upload what the remote lacks of a branch, then move the remote branch."""
    with open_repo(args) as repo, progress_bar(args) as line:
        branch = args.branch if args.branch is not None else repo.current_branch
        try:
            result = repo.push(
                args.remote, branch, force=args.force, progress=_transfer(line, "pushing")
            )
        except tc.ConcurrentUpdateError as exc:
            raise tc.ConcurrentUpdateError(
                f"{exc}; on the command line: `{_prog(args)} fetch {args.remote} {branch}`, "
                f"`{_prog(args)} merge {args.remote}/{branch} --into {branch}` and push "
                f"again, or `{_prog(args)} push {args.remote} {branch} --force` to overwrite "
                "the remote branch"
            ) from None
    if args.json:
        print_json({"remote": args.remote, **dataclasses.asdict(result)})
    elif not args.quiet:
        tags = f"; tags: {', '.join(result.tags)}" if result.tags else ""
        purged = f"; removed {result.purged} purged sample(s)" if result.purged else ""
        out(
            f"pushed {result.branch} to {args.remote} at {result.commit[:SHORT_ID]} "
            f"({_amounts(result, 'uploaded')}{tags}{purged})"
        )
    return 0


def _prog(args: argparse.Namespace) -> str:
    """``tensorcask`` with the ``-C`` options this command ran with (for hints)."""
    return " ".join([PROG, *(f"-C {shlex.quote(part)}" for part in args.directory or ())])


# -- fetch ------------------------------------------------------------------------


def _fetch_data(args: argparse.Namespace) -> int:
    columns = args.columns or None
    keys = [parse_key(k) for k in args.keys] if args.keys else None
    with open_repo(args) as repo, progress_bar(args) as line:
        result = repo.fetch_data(
            args.remote, args.data, columns, keys, progress=_transfer(line, "fetching")
        )
    if args.json:
        print_json(
            {
                "remote": args.remote,
                "ref": args.data,
                "columns": columns,
                "keys": keys,
                **dataclasses.asdict(result),
            }
        )
    elif not args.quiet:
        out(
            f"fetched data of {args.data} from {args.remote}: "
            f"{_count(result.samples, 'sample')}, {format_bytes(result.bytes)} downloaded"
        )
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """Bring a remote's branches (history, and data unless a partial clone) and tags;
    with ``--data REF``, the samples of REF that are not here."""
    if args.data is not None:
        return _fetch_data(args)
    with open_repo(args) as repo, progress_bar(args) as line:
        result = repo.fetch(args.remote, args.branch, progress=_transfer(line, "fetching"))
    if args.json:
        print_json({"remote": args.remote, **dataclasses.asdict(result)})
    elif not args.quiet:
        heads = ", ".join(
            f"{args.remote}/{branch} {commit[:SHORT_ID]}"
            for branch, commit in sorted(result.heads.items())
        )
        tags = f"; new tags: {', '.join(result.tags)}" if result.tags else ""
        out(
            f"fetched from {args.remote}: {heads or 'no branches'} "
            f"({_amounts(result, 'downloaded')}{tags})"
        )
    return 0


def _check_fetch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Usage errors argparse cannot express (exit 2 through ``parser.error``)."""
    if args.data is None and (args.columns or args.keys):
        parser.error("--column and --key go with --data REF")
    if args.data is not None and args.branch is not None:
        parser.error("--data REF fetches the samples of REF: it takes no BRANCH")


# -- clone ------------------------------------------------------------------------


class _Tally:
    """Remembers the last count of each kind a transfer reported, and passes it on."""

    def __init__(self, then: Transfer | None) -> None:
        self.then = then
        self.counts: dict[str, int] = {}

    def __call__(self, what: str, done: int, total: int) -> None:
        self.counts[what] = done
        if self.then is not None:
            self.then(what, done, total)


def cmd_clone(args: argparse.Namespace) -> int:
    """Copy the repository at URL into a new repository at PATH; its remote is ``origin``."""
    url = _absolute_url(args, args.url)
    target = base_dir(args) / (args.path if args.path is not None else _clone_dir(url))
    with progress_bar(args) as line:
        tally = _Tally(_transfer(line, "cloning"))
        repo = tc.clone(
            url,
            target,
            partial=args.partial,
            storage_options=_options(args.options),
            user_name=args.user_name,
            user_email=args.user_email,
            progress=tally,
        )
    with repo:
        doc = {
            "url": url,
            "path": str(repo.path),
            "partial": args.partial,
            "branch": repo.current_branch,
            "branches": repo.branches,
            "tags": repo.tags,
            "objects": tally.counts.get("objects", 0),
            "samples": tally.counts.get("samples", 0),
        }
    if args.json:
        print_json(doc)
    elif not args.quiet:
        kind = "partial clone (history only)" if args.partial else "clone"
        out(
            f"{kind} of {url} in {doc['path']}: "
            f"{_count(len(doc['branches']), 'branch', 'branches')} (on {doc['branch']}), "
            f"{_count(len(doc['tags']), 'tag')}, {_count(doc['objects'], 'history object')}, "
            f"{_count(doc['samples'], 'sample')}"
        )
    return 0


# -- registration -------------------------------------------------------------------


def add_option_argument(p: argparse.ArgumentParser) -> None:
    """Add ``-o KEY=VALUE`` (storage options, repeatable) to a command."""
    p.add_argument(
        "-o",
        "--option",
        dest="options",
        action="append",
        type=storage_option,
        metavar="KEY=VALUE",
        help="a storage option for fsspec (repeatable); VALUE is JSON when it parses "
        "(anon=true, client_kwargs={...}), else a string (endpoint_url=http://...)",
    )


def add_remote_commands(subs: Any) -> None:
    """Add ``remote`` (add, remove, list), ``push``, ``fetch`` and ``clone`` to ``subs``."""
    remote = add_command(subs, "remote", cmd_remote_list, "list, add or remove remotes", True)
    remote_subs = remote.add_subparsers(dest="remote_command", metavar="ACTION")
    p = add_command(remote_subs, "add", cmd_remote_add, "remember a remote (any fsspec URL)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("url", metavar="URL", help="s3://bucket/prefix, file:///path, a local path, ...")
    add_option_argument(p)
    p = add_command(remote_subs, "remove", cmd_remote_remove, "forget a remote")
    p.add_argument("name", metavar="NAME")
    p = add_command(remote_subs, "list", cmd_remote_list, "list remotes (the default)")
    # --json may come before `list` (`remote --json list`): do not reset it here.
    p.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document"
    )

    p = add_command(subs, "push", cmd_push, "upload a branch to a remote", True)
    p.add_argument(
        "remote", nargs="?", default=DEFAULT_REMOTE, metavar="REMOTE", help="default: origin"
    )
    p.add_argument("branch", nargs="?", metavar="BRANCH", help="default: the current branch")
    p.add_argument("--force", action="store_true", help="overwrite a remote branch that moved")

    p = add_command(subs, "fetch", cmd_fetch, "download branches, tags or data of a remote", True)
    p.add_argument(
        "remote", nargs="?", default=DEFAULT_REMOTE, metavar="REMOTE", help="default: origin"
    )
    p.add_argument("branch", nargs="?", metavar="BRANCH", help="default: every branch")
    p.add_argument("--data", metavar="REF", help="fetch the samples of REF (a partial clone)")
    p.add_argument(
        "--column", dest="columns", action="append", metavar="C", help="with --data (repeatable)"
    )
    p.add_argument(
        "--key",
        dest="keys",
        action="append",
        metavar="K",
        help="with --data (repeatable; an int when it parses as one)",
    )
    fetch_parser = p
    p.set_defaults(check=lambda args: _check_fetch(args, fetch_parser))

    p = add_command(subs, "clone", cmd_clone, "copy a remote repository into a new one", True)
    p.add_argument("url", metavar="URL")
    p.add_argument("path", nargs="?", metavar="PATH", help="default: the URL's last component")
    p.add_argument("--partial", action="store_true", help="history only; data on demand")
    add_option_argument(p)
    p.add_argument("--user-name", metavar="N", help="author name (default: git, then env)")
    p.add_argument("--user-email", metavar="E", help="author email (default: git, then env)")
