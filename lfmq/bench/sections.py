"""The content of a bench report, shared by its Markdown and HTML renderings: titled sections of paragraphs, tables
and key/value pairs, built from a BenchReport alone (no GGUF is re-read, no profile looked up again)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lfmq.bench.result import BenchReport, Test, test_name
from lfmq.devices.predict import Prediction
from lfmq.devices.profiles import HOST

NUMERIC = re.compile(r"[-−+]?[\d.,]+( ?(± [\d.,]+|/ [\d.,]+|%|MiB|GiB|M|B|k))?|—")


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


# ---- what the renderings say about every model and measurement ----

def models(rep: BenchReport) -> list[str]:
    """The model files, in the order of the tests."""
    return list(dict.fromkeys(t.model_filename for t in rep.tests))


def name(path: str) -> str:
    return Path(path).name


def type_label(rep: BenchReport, path: str) -> str:
    """The file type as presets spell it (Q4_K_M, Q5_K_M: llama.cpp's description says "Q4_K - Medium" for both)."""
    meta = rep.meta(path)
    if meta is not None and meta.type_name:
        return meta.type_name
    desc = next(t.model_type for t in rep.tests if t.model_filename == path).split()
    return " ".join(desc[2:]) or " ".join(desc) or "?"  # "lfm2 350M Q4_K - Medium": after architecture and size


def peak(rep: BenchReport, path: str) -> Test:
    return max((t for t in rep.tests if t.model_filename == path), key=lambda t: t.peak_rss_mb)


def measured(rep: BenchReport) -> str:
    """How every rendering labels this report's measurements: an emulated run is never a device's speed."""
    d = rep.device
    if d.emulated:
        return f"emulated ({d.kind}), not a speed of {d.name or 'the device'}"
    return "measured on " + ("this machine" if d.kind == "local" else f"{d.name or 'the device'} ({d.kind})")


def on_profile_device(rep: BenchReport) -> bool:
    """Whether the measurements were taken on the device the profile describes, so the predictions can be checked."""
    if rep.device.emulated:
        return False
    return rep.profile.name == HOST if rep.device.kind == "local" else True


def num(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def threads(n: int) -> str:
    return f"{n} thread" + "s" * (n != 1)


def pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.0%}"


def yes(v: bool | None) -> str:
    return "auto" if v is None else "yes" if v else "no"


def title(rep: BenchReport) -> tuple[str, str]:
    n = len(models(rep))
    emulated = " (emulated: not a device speed)" if rep.device.emulated else ""
    return (f"lfmq bench report: {rep.profile.name}{emulated}",
            f"{rep.created} · lfmq {rep.lfmq_version} · {n} model{'s' * (n != 1)}, {len(rep.tests)} tests")


# ---- the sections ----

def sections(rep: BenchReport) -> list[Section]:
    return [_build(rep), _machine(rep), _profile(rep), _settings(rep), _model_files(rep), _results(rep),
            _predictions(rep), _memory(rep)]


def _build(rep: BenchReport) -> Section:
    b = rep.build
    items = [("llama.cpp", b.llama_cpp), ("llama-cpp-python", b.llama_cpp_python),
             ("libllama sha256 (first 16 hex digits)", b.libllama_sha256), ("CPU backend", b.system_info),
             ("lfmq", rep.lfmq_version)]
    items += [(f"device build: {k}", str(v)) for k, v in rep.device.build.items()]
    return Section("build", "Build", [Pairs(items)])


def _machine(rep: BenchReport) -> Section:
    m, d = rep.machine, rep.device
    items = [("CPU", f"{m.cpu} ({m.arch}, {m.cpus} logical CPUs available)"),
             ("ISA features", ", ".join(m.features) or "none detected"), ("OS", m.os), ("Python", m.python)]
    if d.kind != "local" or d.emulated:
        items = [("tests ran on", f"{d.name or 'a device'} over {d.kind}" + (", EMULATED" if d.emulated else "")),
                 ("device ISA features", ", ".join(d.features) or "not recorded")] + \
                [(f"driving machine: {k}", v) for k, v in items]
    blocks: list[str | Table | Pairs] = [Pairs(items)]
    if d.emulated:
        blocks.append("The tests ran under emulation: their speeds are the emulator's on this machine and say nothing "
                      "about the device. Their results check that the build runs, not how fast.")
    return Section("machine", "Machine", blocks)


def _profile(rep: BenchReport) -> Section:
    prof = rep.profile
    bandwidth = f"{round(prof.bandwidth_gbs, 1):g} GB/s, {prof.memory.get('bandwidth_source', 'source not recorded')}"
    items = [("profile", prof.name), ("device", prof.title), ("CPU", str(prof.cpu.get("model", "?"))),
             ("memory bandwidth", bandwidth)]
    if on_profile_device(rep):
        where = "this machine" if rep.device.kind == "local" else "the device the tests ran on"
        note = f"The profile is {where}: its predictions can be checked against the measurements."
    elif rep.device.emulated:
        note = (f"The tests ran under emulation with the runtime settings of the {prof.name} profile. They are not "
                f"measurements of that device: for the device, see the predictions and the published figures.")
    else:
        note = (f"The tests ran on this machine with the runtime settings of the {prof.name} profile. They are not "
                f"measurements of that device: for the device, see the predictions and the published figures.")
    return Section("profile", "Profile", [Pairs(items), note])


def _settings(rep: BenchReport) -> Section:
    rows = [[str(t.n_threads), str(t.n_batch), str(t.n_ubatch), yes(t.use_mmap), yes(t.flash_attn),
             f"{t.type_k} / {t.type_v}", str(t.n_depth), str(len(t.samples_ns))] for t in rep.tests]
    head = ["threads", "batch", "ubatch", "mmap", "flash attention", "KV cache types (K / V)", "depth", "repetitions"]
    return Section("settings", "Settings", [Table(head, [list(r) for r in dict.fromkeys(map(tuple, rows))])])


def _model_files(rep: BenchReport) -> Section:
    weights = {True: "random (lfmq synthetic)", False: "converted checkpoint", None: "unknown (not recorded)"}
    rows, synthetic = [], False
    for path in models(rep):
        t = next(t for t in rep.tests if t.model_filename == path)
        meta = rep.meta(path)
        synthetic |= bool(meta and meta.synthetic)
        rows.append([name(path), t.model_type, size(t.file_bytes), params(t.model_n_params), t.model_sha256,
                     weights[meta.synthetic if meta else None]])
    blocks: list[str | Table | Pairs] = [Table(["file", "type", "file size", "params", "sha256", "weights"], rows)]
    if synthetic:
        blocks.append("Models marked random are lfmq synthetic models: random weights in the LFM2 architecture. "
                      "Their speed and memory are real measurements for their shape; their output means nothing.")
    return Section("models", "Model files", blocks)


def _results(rep: BenchReport) -> Section:
    head = ["model", "size", "params", "threads", "test", "t/s", "TTFT ms", "load ms", "peak RSS MiB",
            "anon / file MiB at end", "file"]
    rows = [[t.model_type, size(t.model_size), params(t.model_n_params), str(t.n_threads), t.name,
             f"{t.avg_ts:.2f} ± {t.stddev_ts:.2f}", num(t.ttft_ms), num(t.load_ms), num(t.peak_rss_mb),
             f"{t.rss_anon_mb:.1f} / {t.rss_file_mb:.1f}", name(t.model_filename)] for t in rep.tests]
    where = measured(rep)
    note = (f"{where[0].upper() + where[1:]}, each case in a fresh process. t/s: mean ± standard deviation over the "
            "repetitions (pp: prompt tokens per second, processed in batches; tg: generated tokens per second, one "
            "at a time). TTFT: time to the first token of a chat-sized prompt from an empty context. Load: time to "
            "load the model. Peak RSS: the process's high-water mark (VmHWM). Anon / file: its anonymous and "
            "file-backed resident memory when the case ended, after the model was closed.")
    return Section("results", "Results", [Table(head, rows), note])


def _predictions(rep: BenchReport) -> Section:
    heading, preds, prof = "Predictions (not measurements)", rep.predictions, rep.profile
    if not preds:
        return Section("predictions", heading, ["This report holds no predictions."])
    eff = preds[0].efficiency
    text = (f"Predicted for {prof.title}: decode from the memory bandwidth and the bytes one token reads, prefill "
            f"from the peak int8 compute at two operations per weight, scaled by efficiencies ({pct(eff.decode)} of "
            f"bandwidth, {pct(eff.prefill)} of compute) calibrated on the profile's published figures ({eff.basis}). "
            f"Published figures are for the model they name, with their own engine and conditions: context, not "
            f"measurements of these files.")
    if not on_profile_device(rep):
        text += (" This machine is not the profile's device: its measurements are in the results above, not here."
                 if rep.device.kind == "local" and not rep.device.emulated else
                 " These measurements were not taken on the profile's device: they are in the results above, not here.")
    setting = f"n_ctx {prof.runtime.get('n_ctx', '?')}, ubatch {prof.runtime.get('n_ubatch', '?')}"
    rows = []
    for path in models(rep):
        p = rep.prediction(path)
        if p:
            rows.append([f"predicted for {p.profile}", name(path), num(p.decode_tps), num(p.prefill_tps),
                         num(p.memory.total_mb), f"profile settings: {setting}", "lfmq prediction"])
        if on_profile_device(rep):
            rows += _measured_rows(rep, path)
    for pub in prof.published:
        rows.append([f"published: {pub.engine}", f"{pub.model} {pub.quant or '(type not stated)'}",
                     num(pub.decode_tps), num(pub.prefill_tps), num(pub.memory_mb), pub.conditions, pub.source])
    head = ["figure", "model", "decode t/s", "prefill t/s", "memory MiB", "conditions", "source"]
    return Section("predictions", heading, [text, Table(head, rows)])


def _measured_rows(rep: BenchReport, path: str) -> list[list[str]]:
    rows = []
    tests = [t for t in rep.tests if t.model_filename == path]
    for n in dict.fromkeys(t.n_threads for t in tests):
        mine = [t for t in tests if t.n_threads == n]
        tg = next((t for t in mine if not t.n_prompt), None)
        pp = next((t for t in mine if t.n_prompt), None)
        names = ", ".join(test_name(t.n_prompt, t.n_gen, t.n_depth) for t in mine)
        rows.append([measured(rep), name(path), num(tg and tg.avg_ts), num(pp and pp.avg_ts),
                     num(max(t.peak_rss_mb for t in mine)), f"{names}, {threads(n)}", "this report"])
    return rows


def _memory(rep: BenchReport) -> Section:
    rows = []
    for path in models(rep):
        p, top = rep.prediction(path), peak(rep, path).peak_rss_mb
        if p:
            m = p.memory
            rows.append([name(path), *(num(v, 2) for v in (m.weights_mb, m.kv_cache_mb, m.conv_state_mb, m.compute_mb,
                                                         m.overhead_mb)),
                         num(m.total_mb), num(top), f"{top - m.total_mb:+.1f}"])
    layers = "; ".join(f"{name(str(m.path))}: {m.n_attn} of {m.n_layer}" for m in rep.models if m.n_layer)
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


def prediction_value(p: Prediction | None, test: Test) -> float | None:
    """The predicted figure a test is compared with: prefill for a pp test, decode for a tg test."""
    if p is None:
        return None
    return p.prefill_tps if test.n_prompt else p.decode_tps
