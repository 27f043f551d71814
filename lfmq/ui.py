"""The only module that imports rich: tables, progress bars and the one-line error."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

from lfmq.progress import Progress

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False) + "\n")


def error(message: str) -> None:
    """One line on stderr; the message is escaped (brackets in it are text, not rich markup)."""
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}", markup=True)


@contextmanager
def progress_bar(label: str, bytes_unit: bool = False) -> Iterator[Progress]:
    """The CLI's one adapter of lfmq.progress.Progress: a rich bar per `what` on a terminal (stderr), labelled
    "<label> <what>", counting bytes or steps; a no-op callback off a terminal, so pipes and logs stay clean. The bar
    has no refresh thread (one waking ten times a second would share the cores with the work it reports, and bench
    times that work): an update redraws it, at most ten times a second, and always for a new `what` or a finished one
    (convert and transfers report every megabyte)."""
    if not err.is_terminal:
        yield lambda what, done, total: None
        return
    count = DownloadColumn() if bytes_unit else TextColumn("{task.completed}/{task.total}")
    with RichProgress(TextColumn("{task.description}"), BarColumn(), count, TimeRemainingColumn(), console=err,
                      transient=True, auto_refresh=False) as bar:
        tasks: dict[str, Any] = {}
        drawn = 0.0   # when the bar was last drawn (time.monotonic)

        def update(what: str, done: int, total: int) -> None:
            nonlocal drawn
            new = what not in tasks
            if new:
                tasks[what] = bar.add_task(f"{label} {what}", total=total or None)
            now = time.monotonic()
            draw = new or (total > 0 and done >= total) or now - drawn >= 0.1   # total 0: not known
            bar.update(tasks[what], completed=done, total=total or None, refresh=draw)
            if draw:
                drawn = now

        yield update


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def show_convert(r: Any) -> None:
    note = "  [yellow](random weights: synthetic checkpoint)[/]" if r.synthetic else ""
    out.print(
        f"wrote {r.path} ({r.outtype.upper()}, {r.tensors} tensors, {r.parameters:,} parameters, "
        f"{human_bytes(r.bytes)}) in {r.seconds:.1f} s{note}"
    )
    for w in r.warnings:
        warn(w)


def show_synth(r: Any) -> None:
    out.print(
        f"wrote {r.path}: synthetic {r.preset} checkpoint, {r.parameters:,} parameters, {human_bytes(r.bytes)} "
        f"of weights, seed {r.seed} in {r.seconds:.1f} s"
    )
    out.print("[yellow]the weights are RANDOM: use it to measure speed and memory, not quality[/]")


def _rows(rows: list[tuple[str, str]]) -> None:
    """Aligned `key  value` lines: they wrap in a narrow terminal and stay whole in a pipe."""
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.print(f"[bold]{key:<{width}}[/]  {value}")


def show_inspect(info: Any) -> None:
    conv = [i for i, k in enumerate(info.layers) if k == "conv"]
    attn = [i for i, k in enumerate(info.layers) if k == "attention"]
    tok = info.tokenizer
    rows = [
        ("file", f"{info.path} ({human_bytes(info.bytes)}, {info.bits_per_weight:.2f} bits/weight)"),
        ("model", f"{info.name or '?'}  arch {info.architecture}  type {info.file_type or '?'}"),
    ]
    if info.synthetic:
        rows.append(("weights", "[yellow]RANDOM (lfmq synthetic checkpoint)[/]"))
    lora = info.adapter
    if lora.get("merged"):
        rows.append(("adapter", f"LoRA {lora['merged']} merged into the weights"))
    if lora.get("type"):  # a GGUF LoRA adapter: no layers, hparams or tokenizer of its own
        ranks = "/".join(map(str, lora["ranks"]))
        rows.append(("adapter", f"{lora['type']} for {lora.get('base') or '?'}: {lora['matrices']} matrices, rank "
                                f"{ranks}, alpha {lora['alpha']:g}"))
        rows.append(("tensors", f"{info.tensors} ({info.parameters:,} parameters): "
                                + ", ".join(f"{k} {v}" for k, v in info.types.items())))
        _rows(rows + [(k, str(v)) for k, v in info.provenance.items()])
        return
    rows += [
        ("layers", f"{len(info.layers)} blocks: {len(conv)} conv {conv}, {len(attn)} attention {attn}"),
        ("hparams", ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.hparams.items())),
        ("tensors", f"{info.tensors} ({info.parameters:,} parameters): " + ", ".join(f"{k} {v}" for k, v in info.types.items())),
        ("tokenizer", f"{tok.get('model')}/{tok.get('pre')}, {tok.get('tokens')} tokens, {tok.get('merges')} merges, "
                      f"bos {tok.get('bos_id')} eos {tok.get('eos_id')} pad {tok.get('pad_id')}, add_bos {tok.get('add_bos')}"),
        ("chat template", "yes" if info.chat_template else "[yellow]no (llama-cpp-python would fall back to llama-2)[/]"),
    ]
    rows += [(k, str(v)) for k, v in info.provenance.items()]
    _rows(rows)


def _table(headers: list[str], rows: list[list[str]], align: str) -> None:
    """A plain aligned table (align: one 'l' or 'r' per column): whole in a pipe, readable on a terminal."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(cells, widths, align)).rstrip()

    out.print(f"[bold]{line(headers)}[/]")
    for r in rows:
        out.print(line(r), markup=False)


def show_quantize(results: list[Any]) -> None:
    dry = results and results[0].dry_run
    rows = [[r.type, human_bytes(r.bytes), f"{r.bits_per_weight:.2f}", f"{r.seconds:.1f}", str(r.path or "(dry run)")]
            for r in results]
    _table(["type", "size", "bpw", "seconds", "file"], rows, "lrrrl")
    if dry:
        out.print("dry run: sizes the outputs would have; nothing was written")


def show_mix(r: Any, source: Any) -> None:
    """The mix `lfmq quantize --recipe auto` wrote, against its budget and the budget type's own KLD."""
    limit = f"{r.limit_bpw} bpw" if r.limit_bpw is not None else f"{r.limit_bytes:,} bytes"
    out.print(f"recipe auto within {r.budget} ({limit}): {human_bytes(r.bytes)} ({r.bytes:,} bytes), "
              f"{r.bits_per_weight:.2f} bpw, the {r.chosen} mix of {r.candidates} measured", markup=False)
    line = f"KLD {r.kld:.5f} on {r.calibration} ({r.chunks} chunks of {r.n_ctx})"
    if r.baseline_kld:
        line += f"; {r.baseline} {r.baseline_kld:.5f} ({100 * (r.kld / r.baseline_kld - 1):+.0f}%)"
    out.print(line, markup=False)
    out.print(f"wrote {r.path} and its mix {r.tensor_type_file} in {r.seconds:.1f} s; with llama.cpp alone:", markup=False)
    out.print(f"  llama-quantize --pure --tensor-type-file {r.tensor_type_file.name} {source} {r.path.name} "
              f"{r.file_type}", markup=False)


def show_imatrix(r: Any) -> None:
    out.print(f"wrote {r.path}: {r.entries} weights, {r.chunks} chunks of {r.chunk_size} tokens ({r.tokens:,} tokens) "
              f"from {r.dataset} in {r.seconds:.1f} s")


def show_eval(rep: Any) -> None:
    rows = []
    tasks = getattr(rep, "task_file", None) is not None
    for m in [rep.reference, *rep.models]:
        is_ref = m is rep.reference
        rows.append([
            (m.file_type or "?").removeprefix("MOSTLY_").removeprefix("ALL_") + (" (ref)" if is_ref else ""),
            human_bytes(m.bytes), f"{m.bits_per_weight:.2f}", f"{m.ppl:.3f} ± {m.ppl_error:.3f}",
            "-" if is_ref else f"{m.delta_ppl:+.3f}", "-" if is_ref else f"{m.kld_mean:.5f}",
            "-" if is_ref else f"{m.kld_p99:.5f}", "-" if is_ref else f"{100 * m.top1_agreement:.1f}%",
        ] + (_task_cells(m.task, is_ref) if tasks else []))
    heads = ["model", "size", "bpw", "PPL", "ΔPPL", "KLD mean", "KLD p99", "same top-1"]
    heads += ["task ok", "calls", "fields", "same answer"] if tasks else []
    _table(heads, rows, "lrrrrrrr" + ("rrrr" if tasks else ""))
    out.print(f"{rep.tokens_scored:,} tokens scored in {rep.chunks} chunks of {rep.n_ctx} ({rep.text}), {rep.seconds:.1f} s")
    if tasks:
        t = rep.reference.task
        out.print(f"{t.cases} task cases ({rep.task_file}: {t.call_cases} tool calls, {t.extract_cases} extractions), "
                  f"greedy; {rep.task_seconds:.1f} s of the total", markup=False)
    if rep.synthetic:
        warn("random-weight (synthetic) models: these numbers exercise the measurement, they say nothing about quality")


def _task_cells(t: Any, is_ref: bool) -> list[str]:
    """Task columns: right answers, exact calls, extraction fields, and agreement with the reference's answers."""
    same = "-" if is_ref else f"{100 * t.agreement:.1f}% ({t.flips} flips)"
    return [f"{100 * t.correct:.1f}%", f"{100 * t.call_exact:.1f}%", f"{100 * t.field_agreement:.1f}%", same]


# -- runtime: generate, chat, extract ---------------------------------------------------------------------------

RANDOM_WEIGHTS = "RANDOM weights (lfmq synth): the model's text is noise; parsing, grammars and state handling are real"


def show_model(m: Any) -> None:
    """One line on stderr about the loaded model, and the random-weights label when it is synthetic."""
    template = "from the GGUF" if m.template_source == "gguf" else "lfmq's built-in LFM2.5"
    err.print(f"[dim]{m.path.name}: n_ctx {m.n_ctx}, {m.settings.threads} threads, chat template {template}[/]")
    if m.synthetic:
        warn(RANDOM_WEIGHTS)


def stream_text(text: str) -> None:
    """Model text goes to stdout raw (no markup), as it arrives."""
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()


def show_stats(stats: Any) -> None:
    if stats is None:
        out.print("no turn yet")
        return
    out.print(f"prompt {stats.prompt_tokens} tokens ({stats.prompt_evaluated} evaluated, {stats.prompt_reused} reused) "
              f"in {stats.prompt_seconds:.2f} s, {stats.prompt_tps:.0f} tok/s; answer {stats.generated_tokens} tokens "
              f"in {stats.generate_seconds:.2f} s, {stats.generate_tps:.1f} tok/s ({stats.finish_reason})")


class ReplyPrinter:
    """Streams an answer to the terminal as lfmq's streaming parser splits it: prose raw on stdout as it comes,
    `<think>` reasoning dimmed (or not at all with show_reasoning=False), tool-call blocks never (show_reply_end
    lists the parsed calls, or warns of a malformed block). Call it with each piece of text, then finish()."""

    def __init__(self, tools: Any = None, show_reasoning: bool = True) -> None:
        from lfmq.runtime.toolstream import ReplyParser

        self.parser = ReplyParser(tools)
        self.show_reasoning = show_reasoning
        self._in_reasoning = False

    def __call__(self, text: str) -> None:
        self._show(self.parser.feed(text))

    def finish(self) -> None:
        self._show(self.parser.finish())

    def _show(self, events: list[Any]) -> None:
        from lfmq.runtime.toolstream import ContentEvent, ReasoningEvent

        for ev in events:
            if isinstance(ev, ReasoningEvent) and self.show_reasoning:
                out.print(f"[dim]{escape(ev.text)}[/]", end="")
                self._in_reasoning = True
            elif isinstance(ev, ContentEvent):
                if self._in_reasoning:   # the thinking is over: the answer starts on a line of its own
                    stream_text("\n")
                    self._in_reasoning = False
                stream_text(ev.text)


def show_reply_end(reply: Any) -> None:
    """After a streamed answer: end the line, then (on stderr) how it ended if not naturally, and its tool calls."""
    sys.stdout.write("\n")
    reason = reply.stats.finish_reason if reply.stats else "interrupted"
    if reason == "interrupted":
        err.print(f"[yellow]{escape('[stopped]')}[/]")
    elif reason in ("length", "context"):
        err.print(f"[yellow]{escape('[cut: max_tokens reached]' if reason == 'length' else '[cut: context full]')}[/]")
    for call in reply.tool_calls:
        args = json.dumps(call.arguments, ensure_ascii=False)
        err.print(f"[cyan]tool call[/] {escape(call.name)} {escape(args)}")
    if reply.tool_error:
        warn(escape(f"malformed tool call: {reply.tool_error}"))


def notice(message: str) -> None:
    out.print(f"[dim]{escape(message)}[/]")


def show_extract_summary(s: Any) -> None:
    err.print(f"extracted {s.ok} of {s.total} inputs ({s.failed} failed) -> {s.output}")


def show_profiles(profiles: list[Any]) -> None:
    rows = [[p.name, p.title, p.cpu["arch"], str(p.cpu["cores"]), f"{p.memory['bandwidth_gbs']:g} GB/s",
             ", ".join(p.recommend.get("types", []))] for p in profiles]
    rows.append(["host", "this machine (built at run time)", "", "", "", ""])
    _table(["name", "device", "arch", "cores", "bandwidth", "recommended"], rows, "llrrrl")


def _fmt(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:,.0f} {unit}"


def show_profile(p: Any, prediction: Any = None) -> None:
    rt = p.runtime
    rows = [
        ("device", f"{p.title} ({p.kind})"),
        ("cpu", f"{p.cpu['model']}; {p.cpu['arch']} {p.cpu.get('isa', '')}"),
        ("features", ", ".join(p.cpu.get("features", [])) + (f"; lacks {', '.join(p.cpu['lacks'])}" if p.cpu.get("lacks") else "")),
        ("memory", f"{p.memory['size_gb']} GB {p.memory.get('type', '')}, {p.memory['bandwidth_gbs']:g} GB/s ({p.memory.get('bandwidth_source', '')})"),
        ("build", p.build.get("cmake_args", "")),
        ("runtime", f"threads {rt.get('threads')}, n_batch {rt.get('n_batch')}, n_ubatch {rt.get('n_ubatch')}, "
                    f"mmap {rt.get('use_mmap')}, flash_attn {rt.get('flash_attn')}, KV {rt.get('type_k')}/{rt.get('type_v')}, "
                    f"n_ctx {rt.get('n_ctx')}"),
        ("recommended", f"{', '.join(p.recommend.get('types', []))}: {p.recommend.get('reason', '')}"),
    ]
    for pub in p.published:
        rows.append(("published", f"{pub.model} {pub.quant or ''}: decode {_fmt(pub.decode_tps, 'tok/s')}, prefill "
                                  f"{_fmt(pub.prefill_tps, 'tok/s')}, memory {_fmt(pub.memory_mb, 'MB')} "
                                  f"[{pub.engine}; {pub.conditions}; {pub.source}]"))
    if prediction is not None:
        m = prediction.memory
        rows.append(("PREDICTED", f"{prediction.model}: decode {_fmt(prediction.decode_tps, 'tok/s')}, prefill "
                                  f"{_fmt(prediction.prefill_tps, 'tok/s')}, memory {m.total_mb:,.0f} MB (weights "
                                  f"{m.weights_mb:,.0f}, KV {m.kv_cache_mb:,.0f}, conv {m.conv_state_mb:,.1f}, compute "
                                  f"{m.compute_mb:,.0f}, process {m.overhead_mb:,.0f}) - a prediction, not a measurement"))
        rows.append(("calibration", prediction.efficiency.basis))
    _rows(rows)


def show_detection(d: Any) -> None:
    rows = [("this machine", f"{d.host['model']}, {d.host['arch']}, {d.host['cores']} CPUs"),
            ("features", ", ".join(d.host["features"]) or "-"),
            ("llama.cpp", d.system_info)]
    if d.best is None:
        rows.append(("closest profile", f"none for {d.host['arch']}: use --profile host"))
    for name, lacking in d.matches.items():
        mark = "closest: " if name == d.best else ""
        rows.append((name, mark + ("has every feature of this profile" if not lacking else "lacks " + ", ".join(lacking))))
    _rows(rows)


def show_recipe(r: Any) -> None:
    out.print(f"[bold]{r.title}[/] ({r.profile})")
    if r.notes:
        out.print(r.notes)
    for i, (what, commands) in enumerate(r.steps, 1):
        out.print(f"\n[bold]{i}. {what}[/]")
        out.print(commands, markup=False)


def show_build(r: Any) -> None:
    """A device bundle: where it is, whether this call compiled it or took it from the cache, and its files."""
    m = r.manifest
    how = "taken from the cache" if r.cached else f"compiled in {r.seconds:.0f} s"
    out.print(f"{r.bundle}: {m.get('profile')} ({m.get('target')}), {how}", markup=False)
    for name, f in m.get("files", {}).items():
        out.print(f"  {name}  {human_bytes(f['bytes'])}  sha256 {f['sha256']}", markup=False)


def wrote(path: Path | str) -> None:
    """A file a command wrote besides its result: on stderr, so that stdout can carry --json."""
    err.print(f"wrote {escape(str(path))}")


def show_bench(rep: Any) -> None:
    """A BenchReport: one row per test, the predictions (labelled), the profile as used, the build."""
    from lfmq.bench.sections import measured

    rows = []
    for t in rep.tests:
        rows.append([Path(t.model_filename).name, t.model_type, str(t.n_threads), t.name,
                     f"{t.avg_ts:.2f} ± {t.stddev_ts:.2f}", f"{t.ttft_ms:.0f}", f"{t.load_ms:.0f}",
                     f"{t.peak_rss_mb:.0f} ({t.rss_anon_mb:.0f}+{t.rss_file_mb:.0f})",
                     f"{t.peak_rss_mb * 2**20 / t.file_bytes:.2f}x"])
    _table(["model", "type", "threads", "test", "t/s", "TTFT ms", "load ms", "peak MB (anon+file)", "peak/file"],
           rows, "llrlrrrrr")
    if rep.device.emulated:
        warn(f"{measured(rep)}: these speeds check the build, they are not the device's")
    else:
        out.print(measured(rep))
    for p in rep.predictions:
        out.print(f"predicted on {p.profile} (not measured): {p.model} decode {_fmt(p.decode_tps, 'tok/s')}, prefill "
                  f"{_fmt(p.prefill_tps, 'tok/s')}, memory {p.memory.total_mb:,.0f} MB")
    prof, b = rep.profile, rep.build
    out.print(f"profile {prof.name}: memory bandwidth {prof.bandwidth_gbs:.1f} GB/s, "
              f"{prof.memory.get('bandwidth_source', 'source not recorded')}", markup=False)
    out.print(f"build: llama-cpp-python {b.llama_cpp_python} (llama.cpp {b.llama_cpp}, libllama {b.libllama_sha256})",
              markup=False)


def show_compare(rows: list[Any]) -> None:
    """compare()'s rows: B's speed and peak memory beside A's, and the ratios B / A."""
    _table(["model", "test", "threads", "A t/s", "B t/s", "B/A", "A peak MB", "B peak MB", "B/A"],
           [[r.model, r.test, str(r.threads), f"{r.a_ts:.2f}", f"{r.b_ts:.2f}", f"{r.ts_ratio:.3f}",
             f"{r.a_rss_mb:.0f}", f"{r.b_rss_mb:.0f}", f"{r.rss_ratio:.3f}"] for r in rows], "llrrrrrrr")
