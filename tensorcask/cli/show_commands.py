"""Commands of the ``tensorcask`` command line that look at one place: ``switch``, ``show``.

``tensorcask switch BRANCH`` (alias ``checkout``) sets the repository's
current branch, porcelain over :meth:`tensorcask.Repository.switch`;
``tensorcask show REF COLUMN KEY`` prints one sample (or writes it with
``--out FILE``). Registered by :mod:`tensorcask.cli` through
:func:`add_show_commands`.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

import tensorcask as tc
from tensorcask.report import format_bytes

from ._common import (
    SHORT_ID,
    Handler,
    add_command,
    base_dir,
    common_options,
    open_repo,
    out,
    parse_key,
    print_json,
)

__all__ = ["add_show_commands", "cmd_show", "cmd_switch"]

Key = int | str
Value = np.ndarray | str | bytes

# Samples up to this size go into `show --json` whole; larger ones need --full.
JSON_VALUE_LIMIT = 1 << 20
# Arrays with more elements print summarised (first and last EDGE_ITEMS per axis).
PRINT_THRESHOLD = 256
EDGE_ITEMS = 3
# Bytes shown of a bytes sample without --full.
BYTES_PREVIEW = 64
HEX_ROW = 16


# -- switch -----------------------------------------------------------------------


def cmd_switch(args: argparse.Namespace) -> int:
    """Set the current branch (``--create``: a new one at the current head)."""
    with open_repo(args) as repo:
        previous = repo.current_branch
        repo.switch(args.branch, create=args.create)
        head = repo.branches.get(args.branch)
    if args.json:
        print_json(
            {
                "branch": args.branch,
                "previous": previous,
                "head": head,
                "created": bool(args.create),
            }
        )
        return 0
    if args.quiet:
        return 0
    at = f" at {head[:SHORT_ID]}" if head else " (no commits yet)"
    if args.create:
        out(f"switched to a new branch {args.branch}{at}")
    elif previous == args.branch:
        out(f"already on branch {args.branch}")
    else:
        out(f"switched to branch {args.branch}{at}")
    return 0


# -- show: finding the sample -------------------------------------------------------


def _key_text(key: Key) -> str:
    return f"{key!r} ({type(key).__name__})"


def _column(co: tc.ReadCheckout, name: str, where: str) -> tc.Column:
    columns = co.columns
    if name not in columns:
        known = ", ".join(sorted(columns)) or "none"
        raise KeyError(f"no column {name!r} at {where} (columns: {known})")
    return columns[name]


def _check_key(column: tc.Column, key: Key, where: str) -> None:
    if key in column:
        return
    message = f"key {_key_text(key)} is not in column {column.name!r} at {where}"
    if isinstance(key, int) and str(key) in column:
        message += f"; it has the str key {str(key)!r}: add --str-key"
    elif isinstance(key, str) and parse_key(key) != key and parse_key(key) in column:
        message += f"; it has the int key {parse_key(key)}: leave out --str-key"
    raise KeyError(message)


# -- show: printing -----------------------------------------------------------------


def _nbytes(value: Value) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    return len(value.encode("utf-8")) if isinstance(value, str) else len(value)


def _describe(value: Value) -> str:
    if isinstance(value, np.ndarray):
        return f"ndarray {value.dtype} {tuple(value.shape)}, {value.nbytes:,} bytes"
    if isinstance(value, str):
        return f"str, {len(value):,} characters ({_nbytes(value):,} bytes as UTF-8)"
    return f"bytes, {len(value):,} bytes"


def _array_text(value: np.ndarray, full: bool) -> str:
    width = shutil.get_terminal_size((100, 24)).columns
    threshold = sys.maxsize if full else PRINT_THRESHOLD
    with np.printoptions(threshold=threshold, edgeitems=EDGE_ITEMS, linewidth=width):
        return np.array_repr(value)


def _hexdump(data: bytes, full: bool) -> list[str]:
    shown = data if full else data[:BYTES_PREVIEW]
    lines = []
    for offset in range(0, len(shown), HEX_ROW):
        row = shown[offset : offset + HEX_ROW]
        hexes = " ".join(f"{b:02x}" for b in row)
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in row)
        lines.append(f"{offset:08x}  {hexes:<{HEX_ROW * 3 - 1}}  |{text}|")
    if len(shown) < len(data):
        lines.append(
            f"... {len(data) - len(shown):,} more bytes (--full shows them, --out FILE writes them)"
        )
    return lines


def _print_value(value: Value, full: bool) -> None:
    if isinstance(value, np.ndarray):
        out(_array_text(value, full))
    elif isinstance(value, str):
        out(value)
    else:
        for line in _hexdump(value, full):
            out(line)


# -- show: writing and JSON -----------------------------------------------------------


def _write(value: Value, path: Path, *, force: bool) -> None:
    """Write the sample to ``path`` whole (a temporary file beside it, then renamed),
    never over an existing file unless ``force``."""
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to replace it")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(value, np.ndarray):
            with tmp.open("wb") as f:
                np.save(f, value, allow_pickle=False)
        elif isinstance(value, str):
            tmp.write_text(value, encoding="utf-8")
        else:
            tmp.write_bytes(value)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _finite(item: Any) -> Any:
    """A float as JSON can hold it: non-finite ones as the strings nan, inf, -inf."""
    if isinstance(item, float) and not math.isfinite(item):
        return str(item)
    return item


def _plain(item: Any) -> Any:
    """Nested lists of ``ndarray.tolist()`` as strict JSON (complex numbers as [re, im])."""
    if isinstance(item, list):
        return [_plain(x) for x in item]
    if isinstance(item, complex):
        return [_finite(item.real), _finite(item.imag)]
    return _finite(item)


def _json_value(value: Value) -> tuple[Any, str]:
    """The value as JSON and how it is encoded there."""
    if isinstance(value, np.ndarray):
        return _plain(value.tolist()), "list"
    if isinstance(value, str):
        return value, "text"
    return base64.b64encode(value).decode("ascii"), "base64"


def _show_doc(
    args: argparse.Namespace, commit: str, key: Key, kind: str, value: Value, digest: str
) -> dict[str, Any]:
    nbytes = _nbytes(value)
    included = args.full or nbytes <= JSON_VALUE_LIMIT
    encoded, encoding = _json_value(value) if included else (None, None)
    dtype, shape = None, None
    if isinstance(value, np.ndarray):
        dtype, shape = str(value.dtype), list(value.shape)
    return {
        "ref": args.ref,
        "commit": commit,
        "column": args.column,
        "key": key,
        "kind": kind,
        "dtype": dtype,
        "shape": shape,
        "nbytes": nbytes,
        "digest": digest,
        "encoding": encoding,
        "value": encoded,
        "value_omitted": not included,
    }


def _print_show_json(doc: dict[str, Any]) -> None:
    """Print ``doc`` like :func:`print_json`, its ``value`` last and on one line.

    An array's nested list, one element a line, would run to a line per element.
    """
    fields = {name: item for name, item in doc.items() if name != "value"}
    head = json.dumps(fields, indent=2).removesuffix("\n}")
    value = json.dumps(doc["value"], allow_nan=False)
    out(f'{head},\n  "value": {value}\n}}')


def _where(ref: str, commit: str) -> str:
    """How messages name the commit: the ref, and the short id unless the ref is one."""
    if commit.startswith(ref.lower()):
        return ref
    return f"{ref} ({commit[:SHORT_ID]})"


def cmd_show(args: argparse.Namespace) -> int:
    """Print (or with ``--out`` write) the sample KEY of COLUMN at REF."""
    key: Key = args.key if args.str_key else parse_key(args.key)
    with open_repo(args) as repo:
        commit = repo.resolve(args.ref)
        where = _where(args.ref, commit)
        with repo.checkout(commit=commit) as co:
            column = _column(co, args.column, where)
            _check_key(column, key, where)
            kind = column.kind
            digest = column.digest(key)
            value: Value = column[key]
    target = None if args.out is None else (base_dir(args) / args.out).resolve()
    if target is not None:
        _write(value, target, force=args.force)
    if args.json:
        doc = _show_doc(args, commit, key, kind, value, digest)
        if target is not None:
            doc["out"] = str(target)
        _print_show_json(doc)
        return 0
    name = f"{args.column}[{key!r}]"
    if target is not None:
        if not args.quiet:
            out(f"wrote {name} ({_describe(value)}) to {target}")
        return 0
    if not args.quiet:
        out(f"{name} at {where}: {_describe(value)}")
        out(f"digest {digest}")
    _print_value(value, args.full)
    return 0


# -- registration -------------------------------------------------------------------


def _add_aliased(
    subs: Any, name: str, aliases: list[str], handler: Handler, help_text: str, description: str
) -> argparse.ArgumentParser:
    """Like :func:`add_command` (with ``--json``), for a command with other names."""
    parser: argparse.ArgumentParser = subs.add_parser(
        name,
        aliases=aliases,
        help=help_text,
        description=description,
        parents=[common_options(True)],
    )
    parser.set_defaults(handler=handler)
    return parser


def add_show_commands(subs: Any) -> None:
    """Add ``switch`` (alias ``checkout``) and ``show`` to the subcommand parsers ``subs``."""
    p = _add_aliased(
        subs,
        "switch",
        ["checkout"],
        cmd_switch,
        "set the current branch",
        "set the current branch: the default of write checkouts, log, status and merge; "
        "refused while another branch has staged changes or a writer is open",
    )
    p.add_argument("branch", metavar="BRANCH", help="an existing branch (a new one with -c)")
    p.add_argument(
        "-c", "--create", action="store_true", help="create BRANCH at the current head first"
    )

    p = add_command(
        subs,
        "show",
        cmd_show,
        "print one sample (or write it to a file with --out)",
        True,
    )
    p.add_argument("ref", metavar="REF", help="branch, tag or commit (prefix)")
    p.add_argument("column", metavar="COLUMN", help="the column's name")
    p.add_argument(
        "key", metavar="KEY", help="the sample's key: an int when written as one (7, not 007)"
    )
    p.add_argument(
        "--str-key",
        action="store_true",
        help="KEY is a str even when written as an int (--str-key 7 is the key '7')",
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help="write the sample to FILE (.npy for arrays, raw bytes, UTF-8 text)",
    )
    p.add_argument("--force", action="store_true", help="with --out: replace FILE if it exists")
    p.add_argument(
        "--full",
        action="store_true",
        help=f"print every element and byte; in --json, values over "
        f"{format_bytes(JSON_VALUE_LIMIT)} too",
    )
