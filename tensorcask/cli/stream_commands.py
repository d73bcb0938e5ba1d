"""Streaming commands of the ``tensorcask`` command line: ``warm``.

``tensorcask warm URL --column C ... --cache-dir DIR`` fetches a commit's
samples from a remote into a streaming cache folder before a training job
starts, so that the job's loaders (given the same URL and ``cache_dir``)
read at local speed from the first epoch. Porcelain over
:func:`tensorcask.loaders.sources.warm_cache`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from tensorcask.loaders.sources import warm_cache
from tensorcask.report import format_bytes

from ._common import SHORT_ID, add_command, base_dir, out, print_json, progress_bar
from .remote_commands import add_option_argument

__all__ = ["add_stream_commands", "cmd_warm"]


def _url(args: argparse.Namespace) -> str:
    """The URL as given, or a local folder (relative to ``-C``/the cwd) as a file URL."""
    if "://" in args.url:
        return str(args.url)
    path = Path(args.url).expanduser()
    return (path if path.is_absolute() else base_dir(args) / path).resolve().as_uri()


def _size(text: str) -> int:
    """An argparse ``type``: a byte count, with an optional K/M/G/T suffix (powers of 1024)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = units.get(raw[-1:], 1)
    number = raw[:-1] if raw[-1:] in units else raw
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a size like 20G or 512M, got {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a cache bound must be positive, got {text!r}")
    return value


def cmd_warm(args: argparse.Namespace) -> int:
    """Fetch a commit's samples of some columns into a streaming cache folder."""
    cache_dir = Path(args.cache_dir).expanduser()
    if not cache_dir.is_absolute():
        cache_dir = base_dir(args) / cache_dir
    with progress_bar(args) as line:

        def show(done: int, total: int) -> None:
            if line is not None:
                line("caching samples", done, total)

        result = warm_cache(
            _url(args),
            args.columns,
            args.commit,
            cache_dir=cache_dir,
            storage_options=dict(args.options or ()) or None,
            cache_limit_bytes=args.cache_limit,
            progress=show,
        )
    if args.json:
        print_json({"url": _url(args), "columns": args.columns, **dataclasses.asdict(result)})
    elif not args.quiet:
        out(
            f"cached {result.samples:,} samples of {', '.join(args.columns)} at "
            f"{result.commit[:SHORT_ID]} in {cache_dir}: {format_bytes(result.bytes)} downloaded "
            f"in {result.requests:,} request{'' if result.requests == 1 else 's'}; the cache "
            f"holds {format_bytes(result.cached)} "
            f"of {format_bytes(result.limit)}"
        )
    return 0


def add_stream_commands(subs: Any) -> None:
    """Add ``warm`` to ``subs``."""
    p = add_command(
        subs, "warm", cmd_warm, "fetch a remote commit's samples into a streaming cache", True
    )
    p.add_argument("url", metavar="URL", help="the remote (s3://bucket/prefix, a folder, ...)")
    p.add_argument(
        "--column",
        dest="columns",
        action="append",
        required=True,
        metavar="NAME",
        help="a column to cache (repeatable)",
    )
    p.add_argument("--commit", metavar="REF", help="commit, branch or tag (default: main)")
    p.add_argument(
        "--cache-dir", required=True, metavar="DIR", help="the loaders' cache_dir (shared)"
    )
    p.add_argument(
        "--cache-limit",
        type=_size,
        metavar="SIZE",
        help="the cache's bound, e.g. 20G (default 16G; the loaders' cache_limit_bytes)",
    )
    add_option_argument(p)
