"""Text drawings of the commit graph, as ``tensorcask log --graph`` prints them.

:func:`render_graph` lays commits out in lanes the way ``git log --graph
--oneline`` does: one line per commit, newest first, ``*`` marking the
commit, ``|`` for a line of history passing by, ``\\`` where a merge commit
opens a line to its extra parent, and ``/`` (with ``_`` for a longer
horizontal run) where two lines of history meet at a common ancestor.

It is a pure function of its input, so it is tested without a repository.
The layout keeps a list of lanes, each the id of the commit that column is
waiting for:

- a commit takes the column of the first lane waiting for it (or opens a new
  column at the right); every other lane waiting for it merges into that
  column first, one connector line each (``|/``);
- its first parent continues in its column; each extra parent opens a new
  column just right of it (``|\\``), or joins the lane right of it when that
  lane already waits for the same parent;
- a root commit closes its column, and the columns right of it move left.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

__all__ = ["GraphCommit", "display_order", "render_graph"]

GraphCommit = tuple[str, tuple[str, ...], str]
"""``(id, parent ids, label)`` of one commit to draw."""


def _row(cells: dict[int, str], label: str = "") -> str:
    """A line from ``{character position: character}``, then the label."""
    width = max(cells) + 1 if cells else 0
    chars = [" "] * width
    for position, char in cells.items():
        chars[position] = char
    text = "".join(chars)
    return f"{text} {label}" if label else text.rstrip()


def _collapse(lanes: list[str], target: int, source: int) -> str:
    """Merge lane ``source`` into lane ``target`` (to its left); lanes after it move left."""
    cells = {2 * i: "|" for i in range(source)}
    for i in range(target, source - 1):
        cells[2 * i + 1] = "_"  # the line runs left under the lanes in between
    cells[2 * source - 1] = "/"
    for i in range(source + 1, len(lanes)):
        cells[2 * i - 1] = "/"
    del lanes[source]
    return _row(cells)


def _open_lane(lanes: list[str], column: int, parent: str) -> str:
    """Open a lane for ``parent`` right of ``column``; the lanes after it move right."""
    cells = {2 * i: "|" for i in range(column + 1)}
    cells[2 * column + 1] = "\\"
    for i in range(column + 1, len(lanes)):
        cells[2 * i + 1] = "\\"
    lanes.insert(column + 1, parent)
    return _row(cells)


def _join_lane(lanes: list[str], column: int) -> str:
    """Draw a line from ``column`` into the lane just right of it."""
    cells = {2 * i: "|" for i in range(len(lanes))}
    cells[2 * column + 1] = "\\"
    return _row(cells)


def _close_lane(lanes: list[str], column: int) -> str | None:
    """Close the lane of a root commit; the lanes after it move left."""
    del lanes[column]
    if column == len(lanes):
        return None
    cells = {2 * i: "|" for i in range(column)}
    for i in range(column, len(lanes)):
        cells[2 * i + 1] = "/"
    return _row(cells)


def render_graph(commits: Sequence[GraphCommit]) -> list[str]:
    """Draw the commit graph of ``commits`` like ``git log --graph --oneline``.

    Parameters
    ----------
    commits:
        ``(id, parents, label)`` per commit, in display order: newest first,
        each commit once and before all of its parents (``repo.log()``
        order; :func:`display_order` makes any list so). Parents missing from
        the list (a log cut short by ``limit``) keep their lane open to the
        last line.

    Returns
    -------
    list of str
        One line per commit (``*`` in its column, then a space and its
        label) and connector lines between them; no trailing whitespace.

    Raises
    ------
    ValueError
        If a commit appears twice, or after a child that lists it as a parent.

    Examples
    --------
    >>> render_graph([("m", ("b", "d"), "m"), ("d", ("a",), "d"),
    ...               ("b", ("a",), "b"), ("a", (), "a")])
    ['* m', '|\\\\', '| * d', '* | b', '|/', '* a']
    """
    lines: list[str] = []
    lanes: list[str] = []
    shown: set[str] = set()
    for commit_id, parents, label in commits:
        if commit_id in shown:
            raise ValueError(f"commit {commit_id} appears twice in the graph input")
        shown.add(commit_id)
        late = [p for p in parents if p in shown]
        if late:
            raise ValueError(
                f"commit {late[0]} appears before its child {commit_id}; "
                "pass commits children first (see display_order)"
            )
        if commit_id in lanes:
            column = lanes.index(commit_id)
            # every other lane waiting for this commit joins its column
            while commit_id in lanes[column + 1 :]:
                source = lanes.index(commit_id, column + 1)
                lines.append(_collapse(lanes, column, source))
        else:
            lanes.append(commit_id)
            column = len(lanes) - 1
        cells = {2 * i: "|" for i in range(len(lanes))}
        cells[2 * column] = "*"
        lines.append(_row(cells, label))
        if not parents:
            closed = _close_lane(lanes, column)
            if closed is not None:
                lines.append(closed)
            continue
        lanes[column] = parents[0]
        for parent in parents[1:]:
            if column + 1 < len(lanes) and lanes[column + 1] == parent:
                lines.append(_join_lane(lanes, column))
            else:
                lines.append(_open_lane(lanes, column, parent))
    return lines


def display_order(commits: Sequence[GraphCommit]) -> list[GraphCommit]:
    """``commits`` reordered so that every commit comes before its parents.

    Stable: the order is kept wherever it already is children first (as
    ``repo.log()`` gives it unless clocks went backwards), and otherwise the
    earliest listed commit that has no undrawn child goes next.
    """
    index = {c[0]: i for i, c in enumerate(commits)}
    if len(index) != len(commits):
        raise ValueError("a commit appears twice in the graph input")
    children = [0] * len(commits)
    for _, parents, _ in commits:
        for parent in set(parents):
            if parent in index:
                children[index[parent]] += 1
    ready = [i for i, count in enumerate(children) if count == 0]
    heapq.heapify(ready)
    out: list[GraphCommit] = []
    while ready:
        i = heapq.heappop(ready)
        out.append(commits[i])
        for parent in set(commits[i][1]):
            j = index.get(parent)
            if j is not None:
                children[j] -= 1
                if children[j] == 0:
                    heapq.heappush(ready, j)
    if len(out) != len(commits):
        raise ValueError("the commit graph has a cycle")
    return out
