"""Import and export commands of the ``tensorcask`` command line.

``import SOURCE`` reads a ``.npy``/``.npz`` file, an HDF5 file, a Zarr store
(a folder or an fsspec URL) or an image folder into columns and commits it
once; ``export REF DEST`` writes a commit's columns to ``.npz``, ``.h5`` or
``.zarr``; ``verify-export PATH`` checks a Zarr export against the checksum
tree it carries and exits 1, listing every differing file, when it does not
match. Porcelain over :mod:`tensorcask.interop` (SPEC §8); local paths are
relative to ``-C`` like every path of the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

from tensorcask.interop import export, import_source, verify_export
from tensorcask.interop.util import Meter, Progress, is_url
from tensorcask.report import format_bytes

from ._common import (
    SHORT_ID,
    ProgressLine,
    add_command,
    base_dir,
    open_repo,
    out,
    print_error,
    print_json,
    progress_bar,
)
from .remote_commands import storage_option

__all__ = ["add_interop_commands", "cmd_export", "cmd_import", "cmd_verify_export"]


def _location(args: argparse.Namespace, text: str) -> str:
    """A URL as given; a relative local path taken from ``-C`` (when given)."""
    if is_url(text):
        return text
    path = Path(text).expanduser()
    if path.is_absolute() or not args.directory:
        return str(path)
    return os.path.normpath(base_dir(args) / path)


def _options(args: argparse.Namespace) -> dict[str, Any] | None:
    return dict(args.options) if args.options else None


_STEPS = {"commit": "committing", "check staged": "checking the staged changes"}


def _reporter(line: ProgressLine | None, verb: str) -> Progress | None:
    """Progress calls drawn as ``verb (bytes, rate, ETA): [bar] samples/total``."""
    if line is None:
        return None
    meter = Meter()

    def show(phase: str, done: int, total: int | None) -> None:
        meter(phase, done, total)
        if phase.endswith(" samples"):
            line(f"{verb} ({meter.describe()})", done, total)
        elif not phase.endswith(" bytes"):
            line(_STEPS.get(phase, phase), meter.samples)

    return show


def _columns_text(columns: dict[str, int]) -> str:
    return ", ".join(f"{name} ({count:,})" for name, count in columns.items()) or "no columns"


def cmd_import(args: argparse.Namespace) -> int:
    """Import a file, folder or store into columns, as one commit."""
    source = _location(args, args.source)
    with open_repo(args) as repo, progress_bar(args) as line:
        result = import_source(
            repo,
            source,
            column=args.column,
            keys=args.keys,
            dataset=args.dataset,
            raw=args.raw,
            branch=args.branch,
            message=args.message,
            storage_options=_options(args),
            progress=_reporter(line, "importing"),
            overwrite=args.overwrite,
        )
    if args.json:
        print_json(dataclasses.asdict(result))
    elif not args.quiet:
        columns = _columns_text(result.columns)
        if result.committed:
            changes = f"{result.added:,} added" + (
                f", {result.changed:,} changed" if result.changed else ""
            )
            out(
                f"imported {result.samples:,} samples ({format_bytes(result.nbytes)}; {changes}) "
                f"into {columns}: commit {result.commit[:SHORT_ID]}"
            )
        else:
            out(
                f"nothing new in {result.source}: {columns} already hold it; "
                f"head stays at {result.commit[:SHORT_ID]}"
            )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a commit's columns to .npz, .h5/.hdf5 or .zarr."""
    dest = _location(args, args.dest)
    with open_repo(args) as repo, progress_bar(args) as line:
        result = export(
            repo,
            args.ref,
            dest,
            args.columns,
            overwrite=args.force,
            storage_options=_options(args),
            progress=_reporter(line, "exporting"),
        )
    if args.json:
        print_json(dataclasses.asdict(result))
    elif not args.quiet:
        out(
            f"exported {result.samples:,} samples ({format_bytes(result.nbytes)}) of "
            f"{_columns_text(result.columns)} at {result.commit[:SHORT_ID]} to {result.path} "
            f"({result.format})"
        )
    return 0


def cmd_verify_export(args: argparse.Namespace) -> int:
    """Check a Zarr export against its checksum tree; exit 1 when a file differs."""
    path = _location(args, args.path)
    check = verify_export(path, storage_options=_options(args))
    differing = list(check.differing)
    if args.json:
        print_json(
            {
                "path": path,
                "ok": check.ok,
                "root": check.root,
                "expected_root": check.expected_root,
                "differing": differing,
                "changed": list(check.changed),
                "missing": list(check.missing),
                "extra": list(check.extra),
            }
        )
    elif check.ok:
        if not args.quiet:
            out(f"ok: {path} matches its checksum tree (root {check.root[:16]})")
    else:
        for how, paths in (
            ("changed", check.changed),
            ("missing", check.missing),
            ("extra", check.extra),
        ):
            for rel in paths:
                out(f"{how}: {rel}")
    if check.ok:
        return 0
    print_error(
        f"{path} does not match its checksum tree: {len(differing)} file(s) differ "
        f"(root {check.root[:16]}, expected {check.expected_root[:16]}); export it again"
    )
    return 1


def _add_storage_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "-o",
        "--storage-option",
        dest="options",
        action="append",
        type=storage_option,
        metavar="KEY=VALUE",
        help=f"an fsspec storage option for {what} (repeatable); VALUE is JSON when it "
        "parses (anon=true), else a string (endpoint_url=http://...)",
    )


def add_interop_commands(subs: Any) -> None:
    """Add ``import``, ``export`` and ``verify-export`` to ``subs``."""
    p = add_command(
        subs,
        "import",
        cmd_import,
        "import numpy, HDF5, Zarr or image data as one commit",
        True,
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="a .npy, .npz, .h5/.hdf5 file, a Zarr store (folder or URL such as "
        "s3://bucket/x.zarr) or a folder with one subfolder of images per class",
    )
    p.add_argument(
        "--column", metavar="NAME", help="column name for a one-array source (.npy: the stem)"
    )
    p.add_argument(
        "--keys",
        metavar="NAME",
        help="an array of the same file holding the sample keys (default 0..N-1)",
    )
    p.add_argument(
        "--dataset", metavar="PATH", help="import only this array or dataset (e.g. /group/x)"
    )
    p.add_argument(
        "--raw", action="store_true", help="image folders: keep the encoded bytes, undecoded"
    )
    p.add_argument(
        "--branch",
        metavar="B",
        help="branch to commit to (default: the current one, which stays current)",
    )
    p.add_argument("-m", "--message", metavar="MSG", help="commit message (default: import SOURCE)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="let the import change samples the branch already holds under the same keys "
        "(refused by default)",
    )
    _add_storage_options(p, "a URL source")

    p = add_command(subs, "export", cmd_export, "export a commit to .npz, .h5/.hdf5 or .zarr", True)
    p.add_argument("ref", metavar="REF", help="branch, tag or commit (prefix)")
    p.add_argument(
        "dest",
        metavar="DEST",
        help="the file or store to write; its suffix (.npz, .h5, .hdf5, .zarr) is the format",
    )
    p.add_argument("--columns", nargs="+", metavar="NAME", help="columns to export (default: all)")
    p.add_argument("--force", action="store_true", help="replace DEST if it exists")
    _add_storage_options(p, "a URL destination (.zarr)")

    p = add_command(
        subs,
        "verify-export",
        cmd_verify_export,
        "check a Zarr export against its checksum tree",
        True,
    )
    p.add_argument("path", metavar="PATH", help="the exported store (a folder or URL)")
    _add_storage_options(p, "a URL")
