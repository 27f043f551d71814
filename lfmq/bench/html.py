"""report.html: one self-contained page (inline CSS and SVG, nothing fetched) with the sections of the Markdown report
and three plots (speed, peak memory, memory budget), rendered from a BenchReport alone."""

from __future__ import annotations

import re

from lfmq.bench.result import BenchReport
from lfmq.bench.sections import (NUMERIC, Pairs, Table, measured, models, name, peak, prediction_value, sections,
                                 threads, title, type_label)
from lfmq.bench.svgchart import Chart, Series, bar_chart, esc, short_number
from lfmq.devices.profiles import HOST, Published

SHA256 = re.compile(r"[0-9a-f]{64}")
SHOWN_HEX = 16  # a sha256 cell shows its first 16 hex digits; the whole digest is its tooltip and in report.md/json

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1f2328;
max-width:1120px;margin:2rem auto;padding:0 1.25rem;background:#fff}
h1{font-size:1.7rem;margin:0}h2{font-size:1.3rem;margin:2.2rem 0 .6rem;border-bottom:1px solid #d0d7de;
padding-bottom:.3rem}
.sub{color:#57606a;margin:.2rem 0 1rem}p{max-width:62rem}
.table{max-width:100%;overflow-x:auto;margin:.6rem 0}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #d0d7de;padding:.3rem .55rem;text-align:left;vertical-align:top}td{white-space:nowrap}
td.t{white-space:normal;min-width:12rem;overflow-wrap:anywhere}
th{background:#f6f8fa;font-weight:600}td.n{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
td.h{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.15rem 1.2rem;margin:.4rem 0}dt{font-weight:600}
dd{margin:0;overflow-wrap:anywhere}
.note{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:.5rem .8rem}
figure{margin:1.6rem 0}figure svg{width:100%;height:auto;display:block;font-family:inherit}
figcaption{font-size:13px;color:#57606a;margin-top:.3rem;max-width:62rem}
"""


def render_html(rep: BenchReport) -> str:
    heading, subtitle = title(rep)
    figures = {"results": [speed_figure(rep), peak_figure(rep)], "memory": [budget_figure(rep)]}
    body = [f"<h1>{esc(heading)}</h1>", f'<p class="sub">{esc(subtitle)}</p>']
    if rep.device.emulated:
        body.append(f'<p class="note">These tests ran under emulation ({esc(rep.device.kind)}): their speeds are not '
                    f'those of {esc(rep.device.name or "the device")}.</p>')
    synthetic = [m.synthetic for m in rep.models]
    if any(synthetic):
        which = "All models" if all(synthetic) else "Some models"
        body.append(f'<p class="note">{which} here have random weights (lfmq synthetic): their speed and memory '
                    'are real, their output is not.</p>')
    for s in sections(rep):
        body.append(f'<h2 id="{esc(s.key)}">{esc(s.title)}</h2>')
        body += [_html_block(b) for b in s.blocks] + figures.get(s.key, [])
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
            '<meta name="viewport" content="width=device-width, initial-scale=1"/>'
            f"<title>{esc(heading)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _html_block(block: str | Table | Pairs) -> str:
    if isinstance(block, Pairs):
        return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in block.items) + "</dl>"
    if isinstance(block, str):
        return f"<p>{esc(block)}</p>"
    head = "".join(f"<th>{esc(h)}</th>" for h in block.head)
    rows = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in block.rows)
    return f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def _cell(cell: str) -> str:
    if SHA256.fullmatch(cell):
        return f'<td class="h" title="{esc(cell)}">{esc(cell[:SHOWN_HEX])}…</td>'
    if NUMERIC.fullmatch(cell):
        return f'<td class="n">{esc(cell)}</td>'
    return f'<td class="t">{esc(cell)}</td>' if len(cell) > 32 else f"<td>{esc(cell)}</td>"


def _figure(chart: Chart, caption: str) -> str:
    return f"<figure>{bar_chart(chart)}<figcaption>{esc(caption)}</figcaption></figure>"


# ---- the three plots ----

MEASURED, PREDICTED, EMULATED = "#0072B2", "#E69F00", "#999999"
MARKERS = [("#D55E00", ""), ("#009E73", "7 4"), ("#CC79A7", "2 3"), ("#000000", "10 3 2 3")]


def speed_figure(rep: BenchReport) -> str:
    tests, profile = rep.tests, rep.profile.name
    many = len({t.n_threads for t in tests}) > 1
    groups = [[f"{type_label(rep, t.model_filename)} {t.name}", name(t.model_filename)]
              + ([threads(t.n_threads)] if many else []) for t in tests]
    label = measured(rep) + (" (host profile)" if profile == HOST and not rep.device.emulated else "")
    bars = Series(label, EMULATED if rep.device.emulated else MEASURED, [t.avg_ts for t in tests])
    predicted = Series(f"predicted for {profile} (not measured)", PREDICTED,
                       [prediction_value(rep.prediction(t.model_filename), t) for t in tests], light=True)
    markers = [Series(_published_label(p), color, [p.prefill_tps if t.n_prompt else p.decode_tps for t in tests],
                      dash=dash) for p, (color, dash) in zip(rep.profile.published, MARKERS)]
    chart = Chart("Speed: tokens per second", "tokens / s (log scale)", groups, [[bars], [predicted]], markers,
                  log=True)
    return _figure(chart, f"pp: prompt processing, tg: generation. Bars: {measured(rep)} (mean of the repetitions) "
                          f"and predicted for {profile}. Lines: figures published for {profile}, for the model they "
                          f"name, which may not be the model measured here. Logarithmic scale.")


def _published_label(p: Published) -> str:
    figures = [f"{short_number(v)} {what}" for v, what in ((p.prefill_tps, "pp"), (p.decode_tps, "tg")) if v]
    return f"published ({p.engine}): {p.model} {p.quant or ''}".strip() + f", {' / '.join(figures)} t/s"


def peak_figure(rep: BenchReport) -> str:
    peaks = [peak(rep, path) for path in models(rep)]
    anon = [t.rss_anon_mb for t in peaks]
    file = [t.rss_file_mb for t in peaks]
    rest = [max(t.peak_rss_mb - a - f, 0.0) for t, a, f in zip(peaks, anon, file)]
    slot = [Series("anonymous, resident at the end", MEASURED, anon),
            Series("file-backed, resident at the end", "#56B4E9", file),
            Series("rest of the peak (released before the end)", "#BBBBBB", rest)]
    total = Series(f"predicted total for {rep.profile.name}", "#D55E00",
                   [p.memory.total_mb if (p := rep.prediction(path)) else None for path in models(rep)])
    chart = Chart("Peak memory of each benchmark process", "MiB", _model_groups(rep, models(rep)), [slot], [total])
    return _figure(chart, "Bar height: the highest peak resident memory (VmHWM) among a model's tests; the bar is "
                          "split into what was still resident when the case ended and what was released before. "
                          "Line: the predicted total of the memory budget.")


BUDGET = [("weights_mb", "weights", "#0072B2"), ("kv_cache_mb", "KV cache (attention layers)", "#E69F00"),
          ("conv_state_mb", "conv state", "#009E73"), ("compute_mb", "compute buffers", "#CC79A7"),
          ("overhead_mb", "process overhead", "#BBBBBB")]


def budget_figure(rep: BenchReport) -> str:
    paths = [path for path in models(rep) if rep.prediction(path)]
    budgets = [rep.prediction(path).memory for path in paths]
    slot = [Series(f"{label} (predicted)", color, [getattr(m, key) for m in budgets]) for key, label, color in BUDGET]
    where = measured(rep).removeprefix("measured on ")
    top = Series(f"measured peak (VmHWM, {where})", "#4D4D4D", [peak(rep, p).peak_rss_mb for p in paths])
    chart = Chart(f"Memory budget predicted for {rep.profile.name} beside the measured peak", "MiB",
                  _model_groups(rep, paths), [slot, [top]])
    return _figure(chart, "Left bar: the predicted budget, stacked. Right bar: the measured peak resident memory. "
                          "The conv state is small and may not show at this scale.")


def _model_groups(rep: BenchReport, paths: list[str]) -> list[list[str]]:
    return [[type_label(rep, path), name(path)] for path in paths]
