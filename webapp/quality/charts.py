"""Server-rendered SVG line charts for the Quality page (no script, no inline style: the CSP
forbids both; colours come from classes styled in ``static/css/quality.css``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 320, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 28, 36


@dataclass
class Series:
    """One line: a name and y values (fractions 0..1, None for a gap) at the chart's x values."""

    name: str
    values: Sequence[float | None]
    reference: bool = False


def _x(i: int, n: int) -> float:
    inner = WIDTH - LEFT - RIGHT
    return LEFT + (inner * i / (n - 1) if n > 1 else inner / 2)


def _y(v: float, lo: float, hi: float) -> float:
    inner = HEIGHT - TOP - BOTTOM
    return TOP + inner * (1 - (v - lo) / (hi - lo))


def line_chart(
    title: str, x_labels: Sequence[str], series: Sequence[Series], x_title: str = "tolerance"
) -> Markup:
    """An accessible inline SVG: one polyline per series, y in percent, a title and axes."""
    values = [v for s in series for v in s.values if v is not None]
    # The y axis starts at a round figure under the lowest point: gridlines every 10 points
    # for a short range, every 20 for a long one.
    low = min(values) if values else 0.0
    step = 0.1 if low >= 0.5 else 0.2
    lo = max(0.0, math.floor(low / step - 1e-9) * step)
    hi = 1.0
    steps = max(1, round((hi - lo) / step))
    n = len(x_labels)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<text class="chart-title" x="{WIDTH / 2}" y="16" text-anchor="middle">{escape(title)}</text>',
    ]
    for i in range(steps + 1):
        v = lo + (hi - lo) * i / steps
        y = _y(v, lo, hi)
        parts.append(
            f'<line class="chart-grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        parts.append(
            f'<text class="chart-tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{100 * v:.0f}%</text>"
        )
    for i, label in enumerate(x_labels):
        parts.append(
            f'<text class="chart-tick" x="{_x(i, n):.1f}" y="{HEIGHT - BOTTOM + 16}" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    parts.append(
        f'<text class="chart-tick" x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 4}" '
        f'text-anchor="middle">{escape(x_title)}</text>'
    )
    colour = 0
    for s in series:
        cls = "series-ref" if s.reference else f"series-{colour % 6}"
        if not s.reference:
            colour += 1
        points = [(_x(i, n), _y(v, lo, hi)) for i, v in enumerate(s.values) if v is not None]
        if not points:
            continue
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(f'<g class="{cls}"><title>{escape(s.name)}</title>')
        parts.append(f'<polyline class="chart-line" points="{coords}"/>')
        for (x, y), v in zip(points, [v for v in s.values if v is not None], strict=True):
            parts.append(
                f'<circle class="chart-dot" cx="{x:.1f}" cy="{y:.1f}" r="3">'
                f"<title>{escape(s.name)}: {100 * v:.2f}%</title></circle>"
            )
        parts.append("</g>")
    parts.append("</svg>")
    return Markup("".join(parts))


def legend_classes(series: Sequence[Series]) -> list[tuple[str, str]]:
    """(name, CSS class) per series, in the colours the charts use."""
    out, colour = [], 0
    for s in series:
        if s.reference:
            out.append((s.name, "series-ref"))
        else:
            out.append((s.name, f"series-{colour % 6}"))
            colour += 1
    return out
