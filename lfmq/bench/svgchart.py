"""A small SVG bar chart for the bench report: groups of side-by-side bars (stacked when a slot holds several
series), marker lines for published and predicted figures, linear or log scale. Text is escaped; nothing external."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Callable


def esc(text: Any) -> str:
    """Text made safe for HTML and SVG: markup characters and quotes escaped."""
    return html.escape(str(text), quote=True)


@dataclass(frozen=True)
class Series:
    """One quantity across the groups of a chart: a bar (segment), or a marker line."""

    label: str
    color: str
    values: list[float | None]
    light: bool = False   # pale fill and dashed outline: a prediction, not a measurement
    dash: str = ""        # a marker's dash pattern


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    groups: list[list[str]]        # label lines under each group
    slots: list[list[Series]]      # bars side by side within a group; the series of one slot are stacked
    markers: list[Series] = field(default_factory=list)
    log: bool = False


W, LEFT, RIGHT, PLOT_H, CHAR_W, MIN_GROUP_W = 1000, 74, 16, 270, 7.2, 120  # CHAR_W: a wide 12 px sans-serif


@dataclass(frozen=True)
class Scale:
    lo: float
    hi: float
    log: bool
    ticks: list[float]

    def frac(self, v: float) -> float:
        if self.log:
            return (math.log10(max(v, self.lo)) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        return (v - self.lo) / (self.hi - self.lo)


def make_scale(values: list[float], log: bool) -> Scale:
    vals = [v for v in values if v and v > 0] or [1.0]
    if log:
        lo_e, hi_e = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
        lo_e -= 10.0 ** lo_e == min(vals)  # a bar at the floor would have no height
        hi_e = max(hi_e, lo_e + 1)
        return Scale(10.0 ** lo_e, 10.0 ** hi_e, True, [10.0 ** e for e in range(lo_e, hi_e + 1)])
    raw = max(vals) / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    n = math.ceil(max(vals) / step - 1e-9)
    return Scale(0.0, n * step, False, [i * step for i in range(n + 1)])


def short_number(v: float) -> str:
    if v >= 1e4:
        return f"{v / 1e3:.0f}k"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k".replace(".0k", "k")
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def bar_chart(c: Chart) -> str:
    """An SVG bar chart; groups that do not fit one row at a readable width wrap into more rows on one scale."""
    legend, legend_h = _legend(list({s.label: s for slot in c.slots for s in slot}.values()), c.markers)
    per_row = max(1, min(len(c.groups), int((W - LEFT - RIGHT) // MIN_GROUP_W)))
    rows = [range(i, min(i + per_row, len(c.groups))) for i in range(0, len(c.groups), per_row)] or [range(0)]
    row_h = PLOT_H + 16 * max((len(g) for g in c.groups), default=1) + 26
    head = 36 + legend_h
    totals = [sum(s.values[i] or 0 for s in slot) for slot in c.slots for i in range(len(c.groups))]
    scale = make_scale(totals + [v for s in c.markers + [s for sl in c.slots for s in sl] for v in s.values if v],
                       c.log)
    parts = [f'<svg viewBox="0 0 {W} {head + len(rows) * row_h}" role="img" aria-label="{esc(c.title)}" '
             f'font-size="12"><title>{esc(c.title)}</title>',
             f'<text x="{LEFT}" y="20" font-size="15" font-weight="600">{esc(c.title)}</text>',
             f'<g transform="translate({LEFT},34)">{legend}</g>']
    gw = (W - LEFT - RIGHT) / per_row
    for r, idx in enumerate(rows):
        top = head + r * row_h
        y = _y(scale, top + PLOT_H)
        parts.append(_axis(scale, y, c.unit, top, top + PLOT_H))
        parts += [_group(c, i, LEFT + k * gw, gw, y, top + PLOT_H) for k, i in enumerate(idx)]
    if not c.groups:
        parts.append(f'<text x="{(LEFT + W) / 2}" y="{head + PLOT_H / 2}" text-anchor="middle">no data</text>')
    return "".join(parts) + "</svg>"


def _y(scale: Scale, bottom: float) -> Callable[[float], float]:
    return lambda v: bottom - scale.frac(v) * (PLOT_H - 20)  # 20 px of headroom for the value labels


def _legend(bars: list[Series], markers: list[Series]) -> tuple[str, int]:
    parts, x, row = [], 0.0, 0
    for s, marker in [(s, False) for s in bars] + [(s, True) for s in markers]:
        w = 26 + len(s.label) * CHAR_W
        if x and x + w > W - LEFT - RIGHT:
            x, row = 0.0, row + 1
        yy = row * 20
        swatch = (f'<line x1="{x:.0f}" x2="{x + 18:.0f}" y1="{yy + 7}" y2="{yy + 7}" {_stroke(s)}/>' if marker
                  else f'<rect x="{x:.0f}" y="{yy}" width="14" height="14" {_fill(s)}/>')
        parts.append(swatch + f'<text x="{x + 22:.0f}" y="{yy + 11}">{esc(s.label)}</text>')
        x += w + 16
    return "".join(parts), (row + 1) * 20 + 8


def _fill(s: Series) -> str:
    if s.light:
        return f'fill="{s.color}" fill-opacity="0.3" stroke="{s.color}" stroke-width="1.5" stroke-dasharray="4 2"'
    return f'fill="{s.color}"'


def _stroke(s: Series) -> str:
    return f'stroke="{s.color}" stroke-width="3"' + (f' stroke-dasharray="{s.dash}"' if s.dash else "")


def _axis(scale: Scale, y: Callable[[float], float], unit: str, top: float, bottom: float) -> str:
    parts = []
    for t in scale.ticks:
        parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#e1e4e8"/>'
                     f'<text x="{LEFT - 8}" y="{y(t) + 4:.1f}" text-anchor="end" fill="#444">{short_number(t)}</text>')
    mid = (top + bottom) / 2
    parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{bottom}" y2="{bottom}" stroke="#57606a"/>'
                 f'<line x1="{LEFT}" x2="{LEFT}" y1="{top}" y2="{bottom}" stroke="#57606a"/>'
                 f'<text transform="translate(16,{mid:.0f}) rotate(-90)" text-anchor="middle" fill="#444">'
                 f"{esc(unit)}</text>")
    return "".join(parts)


def _group(c: Chart, i: int, x0: float, gw: float, y: Callable[[float], float], bottom: float) -> str:
    n = len(c.slots)
    bw = min(56.0, gw * 0.7 / n)
    gap = min(8.0, bw * 0.15)
    start = x0 + (gw - n * bw - (n - 1) * gap) / 2
    parts = []
    for j, slot in enumerate(c.slots):
        x, total = start + j * (bw + gap), 0.0
        for s in slot:
            v = s.values[i]
            if v and v > 0:
                parts.append(f'<rect x="{x:.1f}" y="{y(total + v):.1f}" width="{bw:.1f}" '
                             f'height="{max(y(total) - y(total + v), 0):.1f}" {_fill(s)}>'
                             f"<title>{esc(s.label)}: {v:,.2f}</title></rect>")
                total += v
        if total > 0 and bw >= 22:
            parts.append(f'<text x="{x + bw / 2:.1f}" y="{y(total) - 5:.1f}" text-anchor="middle" font-size="11" '
                         f'fill="#333">{short_number(total)}</text>')
    for s in c.markers:
        v = s.values[i]
        if v and v > 0:
            parts.append(f'<line x1="{x0 + gw * 0.08:.1f}" x2="{x0 + gw * 0.92:.1f}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                         f"{_stroke(s)}><title>{esc(s.label)}: {v:,.2f}</title></line>")
    for k, line in enumerate(c.groups[i]):
        look = 'font-weight="600"' if k == 0 else 'fill="#444"'
        parts.append(f'<text x="{x0 + gw / 2:.1f}" y="{bottom + 18 + 16 * k}" text-anchor="middle" {look}>'
                     f"<title>{esc(line)}</title>{esc(_fit(line, gw))}</text>")
    return "".join(parts)


def _fit(text: str, width: float) -> str:
    """Shorten a label in the middle so that it fits its group."""
    n = int(width / CHAR_W) - 2
    return text if len(text) <= n else text[: (n - 1) // 2] + "…" + text[-(n - 1 - (n - 1) // 2):]
