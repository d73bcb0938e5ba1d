"""Helpers shared by the command modules of the ``tensorcask`` command line.

Output (:func:`out`, :func:`print_json`, :func:`print_error`, the progress
line of :func:`progress_bar`), finding and opening the repository
(:func:`base_dir`, :func:`open_repo`) and argument helpers
(:func:`add_command`, :func:`common_options`, :func:`non_negative`).
Imports nothing from the rest of :mod:`tensorcask.cli`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tensorcask as tc
from tensorcask.layout import FORMAT_FILE
from tensorcask.report import format_bytes

__all__ = [
    "PROG",
    "SHORT_ID",
    "Handler",
    "ProgressLine",
    "add_command",
    "base_dir",
    "common_options",
    "non_negative",
    "one_line",
    "open_repo",
    "out",
    "print_error",
    "print_json",
    "progress_bar",
]

PROG = "tensorcask"
SHORT_ID = 10

Handler = Callable[[argparse.Namespace], int]


# -- output -------------------------------------------------------------------


def out(text: str = "") -> None:
    """Print one line on stdout."""
    print(text, file=sys.stdout)


def print_json(doc: Any) -> None:
    """Print ``doc`` as one JSON document on stdout."""
    print(json.dumps(doc, indent=2, sort_keys=False), file=sys.stdout)


def one_line(message: str) -> str:
    """``message`` on one line: its non-blank lines joined by ``"; "``."""
    return "; ".join(part.strip() for part in message.splitlines() if part.strip())


def print_error(message: str) -> None:
    """Print ``tensorcask: error: MESSAGE`` (on one line) on stderr."""
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr)


class ProgressLine:
    """One line on stderr, rewritten in place: ``phase: 1,234`` or, given a total,
    ``phase: [######------] 1,234/5,678`` (sizes in bytes with ``in_bytes``)."""

    WIDTH = 24

    def __init__(self) -> None:
        self.shown = False

    def __call__(
        self, phase: str, done: int, total: int | None = None, *, in_bytes: bool = False
    ) -> None:
        size = format_bytes if in_bytes else "{:,}".format
        if total is None:
            text = f"{phase}: {size(done)}"
        elif total <= 0:
            return  # nothing to do: no bar
        else:
            filled = self.WIDTH * min(done, total) // total
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            text = f"{phase}: [{bar}] {size(done)}/{size(total)}"
        self.shown = True
        sys.stderr.write(f"\r{text}\033[K")
        sys.stderr.flush()

    def clear(self) -> None:
        """Erase the line (if anything was shown)."""
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.shown = False


@contextmanager
def progress_bar(args: argparse.Namespace) -> Iterator[ProgressLine | None]:
    """A progress line on stderr, only on a terminal and without --quiet (else None)."""
    if args.quiet or not sys.stderr.isatty():
        yield None
        return
    line = ProgressLine()
    try:
        yield line
    finally:
        line.clear()


# -- locating the repository --------------------------------------------------


def base_dir(args: argparse.Namespace) -> Path:
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


def open_repo(args: argparse.Namespace) -> tc.Repository:
    """Open the repository: ``-C PATH`` itself, else the cwd or a parent of it."""
    if args.directory:
        return tc.Repository(base_dir(args))
    return tc.Repository(_find_root(Path.cwd()))


# -- argument parsing ---------------------------------------------------------


_INT_KEY = re.compile(r"0|[1-9][0-9]*")


def parse_key(text: str) -> int | str:
    """A sample key from the command line: an int when it is written as one (ASCII
    digits, no sign, no leading zero: ``7``, not ``007`` or ``+7``), else the str."""
    return int(text) if _INT_KEY.fullmatch(text) else text


def non_negative(text: str) -> int:
    """An argparse ``type``: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def common_options(json_output: bool) -> argparse.ArgumentParser:
    """Options every subcommand accepts (``--quiet`` may also follow the command)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    if json_output:
        parent.add_argument("--json", action="store_true", help="print one JSON document")
    return parent


def add_command(
    subs: Any, name: str, handler: Handler, help_text: str, json_output: bool = False
) -> argparse.ArgumentParser:
    """Add the subcommand ``name``, run by ``handler``, to the subparsers ``subs``."""
    parser: argparse.ArgumentParser = subs.add_parser(
        name, help=help_text, description=help_text, parents=[common_options(json_output)]
    )
    parser.set_defaults(handler=handler)
    return parser
