"""Purge commands of the ``tensorcask`` command line: ``purge`` and ``tombstones``.

``tensorcask purge COLUMN KEY... --reason TEXT`` tombstones samples in every
commit and removes their bytes; ``tensorcask purge --content DIGEST...
--reason TEXT`` does the same for contents under any key; ``tensorcask
tombstones`` lists every tombstone (the audit trail). Porcelain over
:meth:`tensorcask.Repository.purge`, :meth:`~tensorcask.Repository.purge_content`
and :meth:`~tensorcask.Repository.tombstones` (SPEC §6).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import tensorcask as tc

from ._common import add_command, one_line, open_repo, out, parse_key, print_json

__all__ = ["add_purge_commands", "cmd_purge", "cmd_tombstones"]

DIGEST_PREFIX = 16


# -- purge ----------------------------------------------------------------------


def cmd_purge(args: argparse.Namespace) -> int:
    """Purge samples (COLUMN KEY...) or contents (``--content``) from every commit."""
    doc: dict[str, Any]
    with open_repo(args) as repo:
        if args.digests:
            report = repo.purge_content(args.digests, reason=args.reason)
            doc = {"digests": args.digests}
        else:
            keys = [parse_key(k) for k in args.keys]
            report = repo.purge(
                args.column,
                keys,
                reason=args.reason,
                remove_from_branches=args.branches or (),
            )
            doc = {"column": args.column, "keys": keys}
    if args.json:
        print_json({**doc, "reason": args.reason.strip(), **dataclasses.asdict(report)})
    elif not args.quiet:
        out(str(report))
    return 0


def _check_purge(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Usage errors argparse cannot express (exit 2 through ``parser.error``)."""
    if args.digests and args.column is not None:
        parser.error("give either COLUMN KEY... or --content DIGEST..., not both")
    if not args.digests and args.column is None:
        parser.error("give COLUMN KEY... (samples) or --content DIGEST... (contents)")
    if args.column is not None and not args.keys:
        parser.error(f"purge {args.column} needs at least one KEY")
    if args.digests and args.branches:
        parser.error("--remove-from-branch goes with COLUMN KEY..., not with --content")
    if not args.reason.strip():
        parser.error("--reason must not be empty: it is kept in the tombstones")


# -- tombstones -------------------------------------------------------------------


def _tombstone_doc(stone: tc.Tombstone) -> dict[str, Any]:
    return {
        "kind": stone.kind,
        "digest": stone.digest,
        "column": stone.column,
        "key": stone.key,
        "reason": stone.reason,
        "who": stone.who,
        "when": stone.when,
        "lifted": stone.lifted,
    }


def _row(stone: tc.Tombstone) -> list[str]:
    return [
        stone.when,
        one_line(stone.who),
        stone.kind,
        "-" if stone.column is None else stone.column,
        "-" if stone.key is None else repr(stone.key),
        stone.digest[:DIGEST_PREFIX],
        one_line(stone.reason),
        "-" if stone.lifted is None else one_line(stone.lifted),
    ]


def cmd_tombstones(args: argparse.Namespace) -> int:
    """List every tombstone in purge order, lifted ones included."""
    with open_repo(args) as repo:
        stones = repo.tombstones()
    if args.json:
        print_json({"tombstones": [_tombstone_doc(stone) for stone in stones]})
        return 0
    if not stones:
        return 0
    rows = [["WHEN", "WHO", "KIND", "COLUMN", "KEY", "DIGEST", "REASON", "LIFTED"]]
    rows += [_row(stone) for stone in stones]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out("  ".join(f"{cell:<{width}}" for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


# -- registration -------------------------------------------------------------------


def add_purge_commands(subs: Any) -> None:
    """Add ``purge`` and ``tombstones`` to ``subs``."""
    p = add_command(
        subs, "purge", cmd_purge, "make samples or contents unreadable in every commit", True
    )
    p.add_argument("column", nargs="?", metavar="COLUMN", help="the column of the KEYs")
    p.add_argument(
        "keys", nargs="*", metavar="KEY", help="keys to purge (an int when it parses as one)"
    )
    p.add_argument(
        "--content",
        dest="digests",
        action="extend",
        nargs="+",
        metavar="DIGEST",
        help="purge these contents (64 hex digits) under any key, instead of COLUMN KEY...",
    )
    p.add_argument(
        "--reason", required=True, metavar="TEXT", help="why (kept in the tombstones; required)"
    )
    p.add_argument(
        "--remove-from-branch",
        dest="branches",
        action="append",
        metavar="BRANCH",
        help="also commit the deletion of the keys on BRANCH (repeatable)",
    )
    purge_parser = p
    p.set_defaults(check=lambda args: _check_purge(args, purge_parser))

    add_command(
        subs, "tombstones", cmd_tombstones, "list purged samples and contents (audit trail)", True
    )
