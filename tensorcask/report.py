"""Human-readable reports about a repository (``summary``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .history.refs import HEADS

if TYPE_CHECKING:
    from .repository import Repository

__all__ = ["format_bytes", "render_summary"]


def format_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def render_summary(repo: Repository) -> str:
    """Path, disk use, branches, head commit and its columns."""
    branch = repo.current_branch
    with repo._db.read() as txn:
        head = repo._history.refs.get(txn, HEADS + branch)
    staged = repo.staged_branch == branch
    lines = [
        f"repository : {repo.path}",
        f"disk use   : {format_bytes(repo.disk_usage())}",
        f"branch     : {branch}" + ("  (staged changes pending)" if staged else ""),
        f"branches   : {len(repo.branches)}, tags: {len(repo.tags)}",
    ]
    if head is None:
        lines.append("head       : (no commits yet)")
        return "\n".join(lines)
    info = repo.log(head, limit=1)[0]
    lines += [
        f"head       : {info.id}",
        f"             {info.time:%Y-%m-%d %H:%M:%S} UTC  {info.author} <{info.email}>",
        f"             {info.message.splitlines()[0] if info.message else ''}",
        "columns    :",
    ]
    columns = repo._history.columns(head)
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
