"""Human-readable reports about a repository (``summary``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .history.objects import ColumnRoot, CommitInfo

__all__ = ["format_bytes", "render_summary"]


def format_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def render_summary(
    *,
    path: Path,
    disk_use: int,
    branch: str,
    staged: bool,
    branches: int,
    tags: int,
    head: CommitInfo | None,
    columns: Mapping[str, ColumnRoot],
) -> str:
    """Path, disk use, branches, head commit and its columns."""
    lines = [
        f"repository : {path}",
        f"disk use   : {format_bytes(disk_use)}",
        f"branch     : {branch}" + ("  (staged changes pending)" if staged else ""),
        f"branches   : {branches}, tags: {tags}",
    ]
    if head is None:
        lines.append("head       : (no commits yet)")
        return "\n".join(lines)
    lines += [
        f"head       : {head.id}",
        f"             {head.time:%Y-%m-%d %H:%M:%S} UTC  {head.author} <{head.email}>",
        f"             {head.message.splitlines()[0] if head.message else ''}",
        "columns    :",
    ]
    if not columns:
        lines.append("  (none)")
    width = max((len(n) for n in columns), default=0)
    for name, root in sorted(columns.items()):
        schema = root.schema
        if schema.kind == "ndarray":
            shape = (
                "(" + ", ".join("None" if d is None else str(d) for d in schema.shape or ()) + ")"
            )
            detail = f"ndarray {schema.dtype} {shape} [{schema.backend}]"
        else:
            detail = schema.kind
        lines.append(f"  {name:<{width}}  {root.count:>10,} samples  {detail}")
    return "\n".join(lines)
