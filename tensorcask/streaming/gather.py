"""From pieces in hand to a batch: the samples' bytes gathered without a loop per sample.

A batch's records lie in a few pieces (reading in order) or in as many
pieces as records (shuffled). :func:`gather_rows` copies the payloads of a
fixed-shape column into one fresh ``(n, payload)`` array: per piece one
fancy index over a sliding-window view of the piece's bytes (a row at any
byte offset), or, when nearly every record has a piece of its own, one join
of the rows' slices. The entries' heads (dtype and shape) are gathered the
same way and compared with the column's, so an entry of another shape is
never read as this one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["distinct", "gather_rows"]

_PER_PIECE = 8  # records per piece from which one gather per piece beats one join


def _windows(view: memoryview, width: int) -> np.ndarray:
    """Every ``width``-byte run of ``view``: row ``i`` is bytes ``i .. i + width`` (a view)."""
    return np.ndarray((len(view) - width + 1, width), np.uint8, view, 0, (1, 1))


def distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)``, without a sort when ``values`` are
    already in order (a batch read in key order)."""
    if len(values) and (values[1:] >= values[:-1]).all():
        starts = np.flatnonzero(values[1:] != values[:-1]) + 1
        inverse = np.zeros(len(values), np.intp)
        inverse[starts] = 1
        return values[np.r_[0, starts]], np.cumsum(inverse)
    uniq, inverse = np.unique(values, return_inverse=True)
    return uniq, inverse.reshape(-1)


def gather_rows(
    views: Sequence[memoryview],
    inverse: np.ndarray,
    rel: np.ndarray,
    sizes: np.ndarray,
    head: bytes,
    body: int,
) -> np.ndarray | None:
    """The payloads of ``n`` entries as a ``(n, body)`` uint8 array, or None when some
    entry is not ``head`` followed by ``body`` bytes.

    Entry ``i`` lies in ``views[inverse[i]]`` at offset ``rel[i]``, ``sizes[i]``
    bytes long.
    """
    n = len(rel)
    width = len(head) + body
    if n == 0:
        return np.empty((0, body), np.uint8)
    if (sizes != width).any():
        return None
    if len(views) == 1:  # reading in order: one gather
        heads = _windows(views[0], max(len(head), 1))[rel][:, : len(head)]
        out = _windows(views[0], body)[rel + len(head)] if body else np.empty((n, 0), np.uint8)
    elif len(views) * _PER_PIECE <= n:
        heads = np.empty((n, len(head)), np.uint8)
        out = np.empty((n, body), np.uint8)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(views) + 1))
        for g, view in enumerate(views):
            rows = order[bounds[g] : bounds[g + 1]]
            at = rel[rows]
            heads[rows] = _windows(view, max(len(head), 1))[at][:, : len(head)]
            if body:
                out[rows] = _windows(view, body)[at + len(head)]
    else:  # about one piece per record (shuffled): one join
        spots = zip(inverse.tolist(), rel.tolist(), strict=True)
        entries = [views[g][r : r + width] for g, r in spots]
        raw = np.frombuffer(b"".join(entries), np.uint8).reshape(n, width)
        heads = raw[:, : len(head)]
        out = np.ascontiguousarray(raw[:, len(head) :])
    if not (heads == np.frombuffer(head, np.uint8)).all():
        return None
    return out
