"""Bench reports: `report.json` (the whole run, as `lfmq bench --json` gives it), `report.md`, and `report.html`, one
self-contained page (inline CSS and SVG, nothing fetched) with the same sections and three plots."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lfmq.atomic import atomic_path, check_target
from lfmq.bench.run import BenchReport, test_name
from lfmq.devices.profiles import HOST, Profile, get_profile
from lfmq.bench.svgchart import Chart, Series, bar_chart, esc, short_number
from lfmq.errors import LfmqError, OutputExistsError

REPORT_FILES = ("report.json", "report.md", "report.html")
NUMERIC = re.compile(r"[-−+]?[\d.,]+( ?(± [\d.,]+|/ [\d.,]+|%|MiB|GiB|M|B|k))?|—")


def write_report(report: BenchReport, folder: str | Path, force: bool = False) -> list[Path]:
    """Write report.json, report.md and report.html into `folder`; existing report files need force."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder} is a file: give a folder for the report")
    targets = [folder / name for name in REPORT_FILES]
    for target in targets:  # refuse before writing anything, so a refusal leaves the folder as it was
        check_target(target, force)
    text = json.dumps(asdict(report), indent=2, default=str) + "\n"  # as `lfmq bench --json` prints it
    data = json.loads(text)  # render exactly what a reader of report.json gets
    facts = model_facts(data)
    contents = [text, render_markdown(data, facts), render_html(data, facts)]
    for target, content in zip(targets, contents):
        with atomic_path(target, force) as tmp:
            tmp.write_text(content, encoding="utf-8")
    return targets


@dataclass(frozen=True)
class ModelFacts:
    """What the model file itself says, when it is still there to read."""

    synthetic: bool | None = None
    n_attn: int | None = None
    n_layer: int | None = None


def model_facts(data: dict[str, Any]) -> dict[str, ModelFacts]:
    from lfmq.convert.writer import KEY_LFMQ_SYNTHETIC
    from lfmq.llama.gguf_index import tensor_index

    out = {}
    for path in _models(data):
        try:
            ix = tensor_index(path)
        except (LfmqError, OSError):
            out[path] = ModelFacts()
            continue
        arch = ix.get("general.architecture")
        kv = ix.get(f"{arch}.attention.head_count_kv")
        layers = kv if isinstance(kv, list) else [kv] * int(ix.get(f"{arch}.block_count", 0))
        out[path] = ModelFacts(bool(ix.get(KEY_LFMQ_SYNTHETIC, False)), sum(1 for k in layers if k), len(layers))
    return out


# ---- the content, shared by the markdown and the HTML ----

@dataclass(frozen=True)
class Table:
    head: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Pairs:
    items: list[tuple[str, str]]


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    blocks: list[str | Table | Pairs]   # a str is a paragraph of plain text


def _models(data: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(t["model_filename"] for t in data["tests"]))


def _name(path: str) -> str:
    return Path(path).name


def _quant(data: dict[str, Any], path: str) -> str:
    return next((t["model_type"].split() or ["?"])[-1] for t in data["tests"] if t["model_filename"] == path)


def _peak(data: dict[str, Any], path: str) -> dict[str, Any]:
    return max((t for t in data["tests"] if t["model_filename"] == path), key=lambda t: t["peak_rss_mb"])


def _pred(data: dict[str, Any], path: str) -> dict[str, Any] | None:
    return next((p for p in data.get("predictions", []) if p["model"] == _name(path)), None)


def _published(data: dict[str, Any]) -> list[dict[str, Any]]:
    return data["predictions"][0]["published"] if data.get("predictions") else []


def _profile(name: str) -> Profile | None:
    try:
        return get_profile(name)
    except LfmqError:
        return None


def _f(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def sections(data: dict[str, Any], facts: dict[str, ModelFacts]) -> list[Section]:
    return [_build(data), _machine(data), _profile_section(data), _settings(data), _model_files(data, facts),
            _results(data), _predictions(data), _memory(data, facts)]


def _build(data: dict[str, Any]) -> Section:
    b = data["build"]
    return Section("build", "Build", [Pairs([
        ("llama.cpp", b.get("llama_cpp", "?")), ("llama-cpp-python", b.get("llama_cpp_python", "?")),
        ("libllama sha256 (first 16 hex digits)", b.get("libllama_sha256", "?")),
        ("CPU backend", b.get("system_info", "?")), ("lfmq", data["lfmq_version"])])])


def _machine(data: dict[str, Any]) -> Section:
    m = data["machine"]
    return Section("machine", "Machine", [Pairs([
        ("CPU", f"{m['cpu']} ({m['arch']}, {m['cpus']} logical CPUs available)"),
        ("ISA features", ", ".join(m["features"]) or "none detected"), ("OS", m["os"]), ("Python", m["python"])])])


def _profile_section(data: dict[str, Any]) -> Section:
    name, prof = data["profile"], _profile(data["profile"])
    items = [("profile", name)]
    if prof is not None:
        items += [("device", prof.title), ("CPU", str(prof.cpu.get("model", "?"))),
                  ("memory bandwidth", f"{prof.bandwidth_gbs:g} GB/s ({prof.memory.get('bandwidth_source', '?')})")]
    if name == HOST:
        note = "The profile is this machine: its predictions can be checked against the measurements."
    else:
        note = (f"The tests ran on this machine with the runtime settings of the {name} profile. They are not "
                f"measurements of that device: for the device, see the predictions and the published figures.")
    return Section("profile", "Profile", [Pairs(items), note])


def _settings(data: dict[str, Any]) -> Section:
    rows = [[str(t["n_threads"]), str(t["n_batch"]), str(t["n_ubatch"]), _yes(t["use_mmap"]), _yes(t["flash_attn"]),
             f"{t['type_k']} / {t['type_v']}", str(t["n_depth"]), str(len(t["samples_ns"]))] for t in data["tests"]]
    head = ["threads", "batch", "ubatch", "mmap", "flash attention", "KV cache types (K / V)", "depth", "repetitions"]
    return Section("settings", "Settings", [Table(head, [list(r) for r in dict.fromkeys(map(tuple, rows))])])


def _yes(v: bool | None) -> str:
    return "auto" if v is None else "yes" if v else "no"


def _model_files(data: dict[str, Any], facts: dict[str, ModelFacts]) -> Section:
    weights = {True: "random (lfmq synthetic)", False: "converted checkpoint", None: "unknown (file not found)"}
    rows = []
    for path in _models(data):
        t = next(t for t in data["tests"] if t["model_filename"] == path)
        rows.append([_name(path), t["model_type"], _size(t["file_bytes"]), _params(t["model_n_params"]),
                     t["model_sha256"], weights[facts.get(path, ModelFacts()).synthetic]])
    blocks: list[str | Table | Pairs] = [Table(["file", "type", "file size", "params", "sha256", "weights"], rows)]
    if any(f.synthetic for f in facts.values()):
        blocks.append("Models marked random are lfmq synthetic models: random weights in the LFM2 architecture. "
                      "Their speed and memory are real measurements for their shape; their output means nothing.")
    return Section("models", "Model files", blocks)


def _results(data: dict[str, Any]) -> Section:
    head = ["model", "size", "params", "threads", "test", "t/s", "TTFT ms", "load ms", "peak RSS MiB",
            "anon / file MiB at end", "file"]
    rows = [[t["model_type"], _size(t["model_size"]), _params(t["model_n_params"]), str(t["n_threads"]),
             test_name(t["n_prompt"], t["n_gen"], t["n_depth"]), f"{t['avg_ts']:.2f} ± {t['stddev_ts']:.2f}",
             _f(t["ttft_ms"]), _f(t["load_ms"]), _f(t["peak_rss_mb"]),
             f"{t['rss_anon_mb']:.1f} / {t['rss_file_mb']:.1f}", _name(t["model_filename"])] for t in data["tests"]]
    note = ("Measured on this machine, each case in a fresh process. t/s: mean ± standard deviation over the "
            "repetitions (pp: prompt tokens per second, processed in batches; tg: generated tokens per second, one "
            "at a time). TTFT: time to the first token of a chat-sized prompt from an empty context. Load: time to "
            "load the model. Peak RSS: the process's high-water mark (VmHWM). Anon / file: its anonymous and "
            "file-backed resident memory when the case ended, after the model was closed.")
    return Section("results", "Results", [Table(head, rows), note])


def _predictions(data: dict[str, Any]) -> Section:
    title, preds = "Predictions (not measurements)", data.get("predictions", [])
    if not preds:
        return Section("predictions", title, ["This report holds no predictions."])
    prof, eff = _profile(data["profile"]), preds[0]["efficiency"]
    text = (f"Predicted for {prof.title if prof else data['profile']}: decode from the memory bandwidth and the bytes "
            f"one token reads, prefill from the peak int8 compute at two operations per weight, scaled by "
            f"efficiencies ({_pct(eff['decode'])} of bandwidth, {_pct(eff['prefill'])} of compute) calibrated on the "
            f"profile's published figures ({eff['basis']}). Published figures are for the model they name, with "
            f"their own engine and conditions: context, not measurements of these files.")
    if data["profile"] != HOST:
        text += " This machine is not the profile's device: its measurements are in the results above, not here."
    runtime = prof.runtime if prof else {}
    setting = f"n_ctx {runtime.get('n_ctx', '?')}, ubatch {runtime.get('n_ubatch', '?')}"
    rows = []
    for path in _models(data):
        p = _pred(data, path)
        if p:
            rows.append([f"predicted for {p['profile']}", _name(path), _f(p["decode_tps"]), _f(p["prefill_tps"]),
                         _f(p["memory_total_mb"]), f"profile settings: {setting}", "lfmq prediction"])
        if data["profile"] == HOST:
            rows += _measured_rows(data, path)
    for pub in _published(data):
        rows.append([f"published: {pub['engine']}", f"{pub['model']} {pub['quant'] or '(type not stated)'}",
                     _f(pub["decode_tps"]), _f(pub["prefill_tps"]), _f(pub["memory_mb"]), pub["conditions"],
                     pub["source"]])
    head = ["figure", "model", "decode t/s", "prefill t/s", "memory MiB", "conditions", "source"]
    return Section("predictions", title, [text, Table(head, rows)])


def _threads(n: int) -> str:
    return f"{n} thread" + "s" * (n != 1)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.0%}"


def _measured_rows(data: dict[str, Any], path: str) -> list[list[str]]:
    rows = []
    tests = [t for t in data["tests"] if t["model_filename"] == path]
    for threads in dict.fromkeys(t["n_threads"] for t in tests):
        mine = [t for t in tests if t["n_threads"] == threads]
        tg = next((t for t in mine if not t["n_prompt"]), None)
        pp = next((t for t in mine if t["n_prompt"]), None)
        names = ", ".join(test_name(t["n_prompt"], t["n_gen"], t["n_depth"]) for t in mine)
        rows.append(["measured on this machine", _name(path), _f(tg and tg["avg_ts"]), _f(pp and pp["avg_ts"]),
                     _f(max(t["peak_rss_mb"] for t in mine)), f"{names}, {_threads(threads)}", "this report"])
    return rows


def _memory(data: dict[str, Any], facts: dict[str, ModelFacts]) -> Section:
    rows = []
    for path in _models(data):
        p, peak = _pred(data, path), _peak(data, path)["peak_rss_mb"]
        if p:
            m = p["memory"]
            rows.append([_name(path), *(_f(m[k], 2) for k in ("weights_mb", "kv_cache_mb", "conv_state_mb",
                         "compute_mb", "overhead_mb")), _f(p["memory_total_mb"]), _f(peak),
                         f"{peak - p['memory_total_mb']:+.1f}"])
    layers = "; ".join(f"{_name(k)}: {f.n_attn} of {f.n_layer}" for k, f in facts.items() if f.n_layer)
    blocks: list[str | Table | Pairs] = [
        "The predicted budget is what llama.cpp allocates with the profile's settings. Weights: the tensors of the "
        "file (counted twice with mmap: the mapped pages and the repacked copy). KV cache: keys and values for "
        "every context position, in the attention layers only: LFM2 interleaves short-convolution layers with a "
        "few attention layers (LFM2-350M and LFM2-1.2B have 6 attention layers of 16) and the convolution layers "
        "keep no KV cache" + (f" (attention layers here: {layers})" if layers else "") + ". Conv state: the "
        "rolling state of the short convolutions, a few positions per convolution layer whatever the context "
        "length. Compute buffers: activations for one micro-batch and the logits. Process overhead: Python, "
        "llama.cpp's code and allocator slack, a fixed allowance. Measured peak: the benchmark process's VmHWM."]
    head = ["model", "weights", "KV cache", "conv state", "compute", "overhead", "predicted total", "measured peak",
            "measured − predicted"]
    if rows:
        blocks.insert(0, Table(head, rows))
        blocks.insert(1, "All figures in MiB.")
    return Section("memory", "Memory budget", blocks)


def _title(data: dict[str, Any]) -> tuple[str, str]:
    n = len(_models(data))
    return (f"lfmq bench report: {data['profile']}",
            f"{data.get('created', '')} · lfmq {data['lfmq_version']} · {n} model{'s' * (n != 1)}, "
            f"{len(data['tests'])} tests")


# ---- markdown ----

def render_markdown(data: dict[str, Any], facts: dict[str, ModelFacts]) -> str:
    title, subtitle = _title(data)
    out = [f"# {_md(title)}", "", _md(subtitle)]
    for s in sections(data, facts):
        out += ["", "## " + _md(s.title)]
        for block in s.blocks:
            out += ["", _md_block(block)]
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    return re.sub(r"([\\`*|<>\[\]])", r"\\\1", str(text))


def _md_block(block: str | Table | Pairs) -> str:
    if isinstance(block, Pairs):
        return "\n".join(f"- **{_md(k)}**: {_md(v)}" for k, v in block.items)
    if isinstance(block, str):
        return _md(block)
    right = [all(NUMERIC.fullmatch(r[i]) for r in block.rows) for i in range(len(block.head))]
    lines = ["| " + " | ".join(_md(h) for h in block.head) + " |",
             "| " + " | ".join("---:" if r else "---" for r in right) + " |"]
    return "\n".join(lines + ["| " + " | ".join(_md(c) for c in row) + " |" for row in block.rows])


# ---- HTML ----

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1f2328;
max-width:1120px;margin:2rem auto;padding:0 1.25rem;background:#fff}
h1{font-size:1.7rem;margin:0}h2{font-size:1.3rem;margin:2.2rem 0 .6rem;border-bottom:1px solid #d0d7de;
padding-bottom:.3rem}
.sub{color:#57606a;margin:.2rem 0 1rem}p{max-width:62rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:13px}
th,td{border:1px solid #d0d7de;padding:.3rem .55rem;text-align:left;vertical-align:top}td{white-space:nowrap}
td.t{white-space:normal;min-width:12rem}
th{background:#f6f8fa;font-weight:600}td.n{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
td.h{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11.5px;word-break:break-all;min-width:16rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1.2rem;margin:.4rem 0}dt{font-weight:600}dd{margin:0}
.note{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:.5rem .8rem}
figure{margin:1.6rem 0}figure svg{width:100%;height:auto;display:block;font-family:inherit}
figcaption{font-size:13px;color:#57606a;margin-top:.3rem;max-width:62rem}
"""


def render_html(data: dict[str, Any], facts: dict[str, ModelFacts]) -> str:
    title, subtitle = _title(data)
    figures = {"results": [speed_figure(data), peak_figure(data)], "memory": [budget_figure(data)]}
    body = [f"<h1>{esc(title)}</h1>", f'<p class="sub">{esc(subtitle)}</p>']
    synthetic = [f.synthetic for f in facts.values()]
    if any(synthetic):
        which = "All models" if all(synthetic) else "Some models"
        body.append(f'<p class="note">{which} here have random weights (lfmq synthetic): their speed and memory '
                    'are real, their output is not.</p>')
    for s in sections(data, facts):
        body.append(f'<h2 id="{esc(s.key)}">{esc(s.title)}</h2>')
        body += [_html_block(b) for b in s.blocks] + figures.get(s.key, [])
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
            '<meta name="viewport" content="width=device-width, initial-scale=1"/>'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _html_block(block: str | Table | Pairs) -> str:
    if isinstance(block, Pairs):
        return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in block.items) + "</dl>"
    if isinstance(block, str):
        return f"<p>{esc(block)}</p>"
    head = "".join(f"<th>{esc(h)}</th>" for h in block.head)
    rows = "".join("<tr>" + "".join(f"<td{_cell_class(c)}>{esc(c)}</td>" for c in row) + "</tr>" for row in block.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _cell_class(cell: str) -> str:
    if re.fullmatch(r"[0-9a-f]{64}", cell):
        return ' class="h"'
    if NUMERIC.fullmatch(cell):
        return ' class="n"'
    return ' class="t"' if len(cell) > 32 else ""


def _figure(chart: Chart, caption: str) -> str:
    return f"<figure>{bar_chart(chart)}<figcaption>{esc(caption)}</figcaption></figure>"


# ---- the three plots ----

MEASURED, PREDICTED = "#0072B2", "#E69F00"
MARKERS = [("#D55E00", ""), ("#009E73", "7 4"), ("#CC79A7", "2 3"), ("#000000", "10 3 2 3")]


def speed_figure(data: dict[str, Any]) -> str:
    tests, profile = data["tests"], data["profile"]
    many = len({t["n_threads"] for t in tests}) > 1
    kinds = ["prefill_tps" if t["n_prompt"] else "decode_tps" for t in tests]
    groups = [[f"{_quant(data, t['model_filename'])} {test_name(t['n_prompt'], t['n_gen'], t['n_depth'])}",
               _name(t["model_filename"])] + ([_threads(t["n_threads"])] if many else []) for t in tests]
    preds = [(_pred(data, t["model_filename"]) or {}).get(k) for t, k in zip(tests, kinds)]
    measured = Series("measured on this machine" + (" (host profile)" if profile == HOST else ""), MEASURED,
                      [t["avg_ts"] for t in tests])
    predicted = Series(f"predicted for {profile} (not measured)", PREDICTED, preds, light=True)
    markers = [Series(_published_label(p), color, [p[k] for k in kinds], dash=dash)
               for p, (color, dash) in zip(_published(data), MARKERS)]
    chart = Chart("Speed: tokens per second", "tokens / s (log scale)", groups, [[measured], [predicted]], markers,
                  log=True)
    return _figure(chart, f"pp: prompt processing, tg: generation. Bars: measured on this machine (mean of the "
                          f"repetitions) and predicted for {profile}. Lines: figures published for {profile}, for "
                          f"the model they name, which may not be the model measured here. Logarithmic scale.")


def _published_label(p: dict[str, Any]) -> str:
    figures = [f"{short_number(v)} {what}" for v, what in ((p["prefill_tps"], "pp"), (p["decode_tps"], "tg")) if v]
    return f"published ({p['engine']}): {p['model']} {p['quant'] or ''}".strip() + f", {' / '.join(figures)} t/s"


def peak_figure(data: dict[str, Any]) -> str:
    peaks = [_peak(data, path) for path in _models(data)]
    anon = [t["rss_anon_mb"] for t in peaks]
    file = [t["rss_file_mb"] for t in peaks]
    rest = [max(t["peak_rss_mb"] - a - f, 0.0) for t, a, f in zip(peaks, anon, file)]
    slot = [Series("anonymous, resident at the end", MEASURED, anon),
            Series("file-backed, resident at the end", "#56B4E9", file),
            Series("rest of the peak (released before the end)", "#BBBBBB", rest)]
    total = Series(f"predicted total for {data['profile']}", "#D55E00",
                   [(_pred(data, path) or {}).get("memory_total_mb") for path in _models(data)])
    chart = Chart("Peak memory of each benchmark process", "MiB", _model_groups(data), [slot], [total])
    return _figure(chart, "Bar height: the highest peak resident memory (VmHWM) among a model's tests; the bar is "
                          "split into what was still resident when the case ended and what was released before. "
                          "Line: the predicted total of the memory budget.")


BUDGET = [("weights_mb", "weights", "#0072B2"), ("kv_cache_mb", "KV cache (attention layers)", "#E69F00"),
          ("conv_state_mb", "conv state", "#009E73"), ("compute_mb", "compute buffers", "#CC79A7"),
          ("overhead_mb", "process overhead", "#BBBBBB")]


def budget_figure(data: dict[str, Any]) -> str:
    models = [path for path in _models(data) if _pred(data, path)]
    preds = [_pred(data, path)["memory"] for path in models]
    slot = [Series(f"{label} (predicted)", color, [m[key] for m in preds]) for key, label, color in BUDGET]
    peak = Series("measured peak (VmHWM, this machine)", "#4D4D4D", [_peak(data, p)["peak_rss_mb"] for p in models])
    chart = Chart(f"Memory budget predicted for {data['profile']} beside the measured peak", "MiB",
                  _model_groups(data, models), [slot, [peak]])
    return _figure(chart, "Left bar: the predicted budget, stacked. Right bar: the measured peak resident memory. "
                          "The conv state is small and may not show at this scale.")


def _model_groups(data: dict[str, Any], models: list[str] | None = None) -> list[list[str]]:
    return [[_quant(data, path), _name(path)] for path in (models if models is not None else _models(data))]
