"""The ``tensorcask`` command line (also ``python -m tensorcask``).

Porcelain only: parse arguments, call the public API, format the result.
Every command that prints data takes ``--json`` and then prints exactly one
JSON document on stdout. User errors exit with status 1 and one line on
stderr; usage errors exit with status 2 (argparse's convention).

This module builds the parser from the command modules and runs it; the
imports form a tree: this module -> :mod:`.repo_commands`,
:mod:`.history_commands`, :mod:`.stream_commands`, :mod:`.purge_commands`,
:mod:`.interop_commands` -> :mod:`.remote_commands` -> :mod:`._common`. Nothing below
imports this module.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence

import tensorcask as tc

from ._common import PROG, Handler, one_line, print_error
from .history_commands import add_history_commands
from .interop_commands import add_interop_commands
from .purge_commands import add_purge_commands
from .remote_commands import add_remote_commands
from .repo_commands import add_maintenance_commands, add_repo_commands
from .show_commands import add_show_commands
from .stream_commands import add_stream_commands

__all__ = ["main"]

USER_ERRORS: tuple[type[BaseException], ...] = (
    tc.CaskError,
    KeyError,
    ValueError,
    TypeError,
    OSError,  # includes PermissionError and FileNotFoundError
    ImportError,  # an optional dependency missing: its message names what to install
)


def _message(exc: BaseException) -> str:
    # KeyError.__str__ quotes its argument: show the argument itself.
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


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
    # The order here is the order of the commands in --help.
    add_repo_commands(subs)  # init, status, log
    add_history_commands(subs)  # branch, tag, diff, merge
    add_show_commands(subs)  # switch, show
    add_maintenance_commands(subs)  # summary, verify, gc, lock release
    add_interop_commands(subs)  # import, export, verify-export
    add_remote_commands(subs)  # remote, push, fetch, clone
    add_stream_commands(subs)  # warm
    add_purge_commands(subs)  # purge, tombstones
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
                print(f"{PROG}: warning: {one_line(str(warning.message))}", file=sys.stderr)


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
        print_error(_message(exc))
        return 1
    except KeyboardInterrupt:
        print_error("interrupted")
        return 130
