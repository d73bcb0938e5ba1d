"""What the benchmark scripts share: result rows, the final table, timing helpers.

Each script prints every figure next to its ceiling (the same work in plain
numpy / hashlib / tf.data) or its target, with the ratio and PASS / MISS.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One line of the final table.

    ``unit`` is ``"/s"`` (a rate, higher is better), ``"s"`` (a time), ``"B"``
    or ``"B/sample"`` (memory; lower is better for all three). ``ref`` is the
    ceiling or target; ``need`` the ratio a row must reach to pass (None:
    informational).
    """

    section: str
    metric: str
    value: float
    unit: str
    ref: float | None = None
    ref_kind: str = ""
    need: float | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.unit == "/s"

    @property
    def ratio(self) -> float | None:
        """Speed relative to the reference (> 1: faster, or smaller, than it)."""
        if self.ref is None or self.value <= 0 or self.ref <= 0:
            return None
        return self.value / self.ref if self.higher_is_better else self.ref / self.value

    @property
    def status(self) -> str:
        if self.need is None or self.ref is None:
            return "-"
        if not self.higher_is_better:  # memory: also right when nothing grew (value <= 0)
            return "PASS" if self.value * self.need <= self.ref else "MISS"
        ratio = self.ratio
        return "PASS" if ratio is not None and ratio >= self.need else "MISS"

    def to_dict(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "metric": self.metric,
            "value": self.value,
            "unit": self.unit,
            "reference": self.ref,
            "reference_kind": self.ref_kind or None,
            "need_ratio": self.need,
            "ratio": self.ratio,
            "status": self.status,
        }


def ceiling_row(
    section: str, metric: str, rate: float, ceiling: float, need: float | None = None
) -> Row:
    return Row(section, metric, rate, "/s", ceiling, "ceiling", need)


def rate_row(section: str, metric: str, rate: float, target: float) -> Row:
    return Row(section, metric, rate, "/s", target, "target", 1.0)


def time_row(section: str, metric: str, seconds: float, target: float) -> Row:
    return Row(section, metric, seconds, "s", target, "target", 1.0)


def fmt_value(value: float, unit: str) -> str:
    """A value with its unit, readable."""
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "B":
        return f"{value / 2**20:,.1f} MiB"
    if unit == "B/sample":
        return f"{value:,.1f} B/sample"
    if unit == "s":
        return f"{value * 1000:.2f} ms" if value < 1.0 else f"{value:.3f} s"
    return f"{value:.3f} {unit}"


def fmt_ref(row: Row) -> str:
    if row.ref is None:
        return "-"
    if row.ref_kind == "ceiling":
        need = f" (need {row.need:.2f}x)" if row.need is not None else ""
        return f"ceiling {fmt_value(row.ref, row.unit)}{need}"
    sign = ">=" if row.higher_is_better else "<="
    return f"target {sign} {fmt_value(row.ref, row.unit)}"


def render_table(rows: list[Row], sections: Sequence[str]) -> str:
    """The rows in section order, as aligned text columns."""
    rows = sorted(rows, key=lambda r: sections.index(r.section))
    header = ("metric", "value", "ceiling/target", "ratio", "status")
    cells = [
        (
            r.metric,
            fmt_value(r.value, r.unit),
            fmt_ref(r),
            "-" if r.ratio is None else f"{r.ratio:.2f}x",
            r.status,
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    rule = tuple("-" * w for w in widths)
    return "\n".join(table_line(c, widths) for c in [header, rule, *cells])


def table_line(cells: tuple[str, ...], widths: list[int]) -> str:
    """First column left-aligned, the others right-aligned."""
    first = cells[0].ljust(widths[0])
    rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
    return "  ".join([first, *rest]).rstrip()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def scratch_dir(parent: str | Path | None, prefix: str = "tensorcask-bench-") -> Iterator[Path]:
    """A new scratch folder in ``parent``, removed at the end, on errors and on SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds to the removal
    scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield scratch
    finally:
        remove(scratch)
