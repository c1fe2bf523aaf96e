"""Plots as inline SVG: a page that needs no network and no plotting library to be read.

Example::

    line_chart("availability", [[(t0, 1.0), (t1, 0.5), (t2, 1.0)]], y_label="share answered")
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

WIDTH, HEIGHT, PAD = 420, 140, 34
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
VERDICT_COLOURS = {"passed": "#2ca02c", "failed": "#d62728", "inconclusive": "#999999"}


def _scale(values: Sequence[float], lo: float, hi: float) -> tuple[float, float]:
    low, high = min(values), max(values)
    if high - low < 1e-9:  # one value: centre it
        low, high = low - 1, high + 1
    return low, (hi - lo) / (high - low)


def line_chart(title: str, series: Sequence[Sequence[tuple[float, float]]], y_label: str = "",
               names: Sequence[str] = (), relative_time: bool = True) -> str:
    """One chart; each series a list of (x, y). ``relative_time``: x axis in seconds from the first point."""
    points = [p for s in series for p in s if math.isfinite(p[1])]
    if len(points) < 2:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, xk = _scale(xs, PAD, WIDTH - 8)
    y0, yk = _scale(ys, 8, HEIGHT - 22)
    parts = [f'<svg class="plot" role="img" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{html.escape(title)}</title>',
             f'<rect x="{PAD}" y="8" width="{WIDTH - PAD - 8}" height="{HEIGHT - 30}" fill="#fafafa" stroke="#ddd"/>']
    for i, s in enumerate(series):
        pts = " ".join(f"{PAD + (x - x0) * xk:.1f},{HEIGHT - 22 - (y - y0) * yk:.1f}" for x, y in s if math.isfinite(y))
        if pts:
            colour = COLOURS[i % len(COLOURS)]
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{pts}"/>')
    low, high = min(ys), max(ys)
    span = max(xs) - min(xs)
    x_text = f"{span:.1f} s" if relative_time else ""
    parts += [f'<text x="2" y="16" font-size="10">{_fmt(high)}</text>',
              f'<text x="2" y="{HEIGHT - 22}" font-size="10">{_fmt(low)}</text>',
              f'<text x="{WIDTH - 60}" y="{HEIGHT - 6}" font-size="10">{html.escape(x_text)}</text>',
              f'<text x="{PAD}" y="{HEIGHT - 6}" font-size="10">{html.escape(y_label)}'
              f'{" — " + html.escape(", ".join(names)) if names else ""}</text>', "</svg>"]
    return "".join(parts)


def verdict_strip(title: str, verdicts: Sequence[str]) -> str:
    """One square per run, oldest first, coloured by verdict: the trend of nightly runs at a glance."""
    if not verdicts:
        return ""
    size = 12
    width = min(WIDTH, 8 + len(verdicts) * (size + 2))
    cells = "".join(f'<rect x="{4 + i * (size + 2)}" y="4" width="{size}" height="{size}" '
                    f'fill="{VERDICT_COLOURS.get(v, "#999")}"><title>{html.escape(v)}</title></rect>'
                    for i, v in enumerate(verdicts[-((WIDTH - 8) // (size + 2)):]))
    return (f'<svg class="plot strip" role="img" width="{width}" height="{size + 8}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{html.escape(title)}</title>{cells}</svg>')


def _fmt(value: float) -> str:
    return f"{value:.3g}"
