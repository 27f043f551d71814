"""The only module that imports rich: tables, progress bars and the one-line error."""

from __future__ import annotations

import dataclasses
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

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
    err.print(f"[bold red]error:[/] {message}", markup=True)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}", markup=True)


@contextmanager
def progress_bar(label: str, bytes_unit: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on a terminal (stderr); a no-op callback otherwise, so pipes and logs stay clean."""
    if not err.is_terminal:
        yield lambda done, total: None
        return
    columns = [TextColumn("{task.description}"), BarColumn()]
    columns += [DownloadColumn()] if bytes_unit else [TextColumn("{task.completed}/{task.total}")]
    with Progress(*columns, TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


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


@contextmanager
def step_bar(label: str) -> Iterator[Callable[[str, int, int], None]]:
    """A bar for counted steps (tensors, chunks); the callback takes (what, done, total). Silent off a terminal."""
    if not err.is_terminal:
        yield lambda what, done, total: None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(f"{label} {what}", total=total)
            bar.update(tasks[what], completed=done, total=total)

        yield update


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


def show_imatrix(r: Any) -> None:
    out.print(f"wrote {r.path}: {r.entries} weights, {r.chunks} chunks of {r.chunk_size} tokens ({r.tokens:,} tokens) "
              f"from {r.dataset} in {r.seconds:.1f} s")


def show_eval(rep: Any) -> None:
    rows = []
    for m in [rep.reference, *rep.models]:
        is_ref = m is rep.reference
        rows.append([
            (m.file_type or "?").removeprefix("MOSTLY_").removeprefix("ALL_") + (" (ref)" if is_ref else ""),
            human_bytes(m.bytes), f"{m.bits_per_weight:.2f}", f"{m.ppl:.3f} ± {m.ppl_error:.3f}",
            "-" if is_ref else f"{m.delta_ppl:+.3f}", "-" if is_ref else f"{m.kld_mean:.5f}",
            "-" if is_ref else f"{m.kld_p99:.5f}", "-" if is_ref else f"{100 * m.top1_agreement:.1f}%",
        ])
    _table(["model", "size", "bpw", "PPL", "ΔPPL", "KLD mean", "KLD p99", "same top-1"], rows, "lrrrrrrr")
    out.print(f"{rep.tokens_scored:,} tokens scored in {rep.chunks} chunks of {rep.n_ctx} ({rep.text}), {rep.seconds:.1f} s")
    if rep.synthetic:
        warn("random-weight (synthetic) models: these numbers exercise the measurement, they say nothing about quality")
