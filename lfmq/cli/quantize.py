"""`lfmq quantize`, `lfmq imatrix` and `lfmq eval`: llama.cpp's quantizer, importance matrices, and the quality of
quantized models measured against their reference. The text files of -f are read by the library, not here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lfmq.cli.app import app
from lfmq.cli.options import ChunkCtx, Chunks, Force, GGUFPath, Json, TextFile, Threads
from lfmq.errors import UsageError


@app.command()
def quantize(
    model: GGUFPath,
    types: Annotated[Optional[str], typer.Option("-q", "--types", help="Types, comma-separated (Q4_K_M,Q8_0...), or "
                                                 "'ladder'.", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output folder, or a .gguf file for one "
                                                                          "type.")] = None,
    imatrix: Annotated[Optional[Path], typer.Option("--imatrix", help="Importance matrix (lfmq imatrix or "
                                                                      "llama-imatrix).")] = None,
    output_tensor_type: Annotated[Optional[str], typer.Option(help="Type of output.weight (the tied embedding "
                                                                   "otherwise).")] = None,
    token_embedding_type: Annotated[Optional[str], typer.Option(help="Type of token_embd.weight (also the LM head "
                                                                     "when tied).")] = None,
    tensor_type: Annotated[Optional[list[str]], typer.Option(help="REGEX=TYPE for matching tensors; repeatable.")] = None,
    pure: Annotated[bool, typer.Option(help="No k-quant mixes: every tensor the default type.")] = False,
    threads: Threads = None,
    dry_run: Annotated[bool, typer.Option(help="Only report the size each output would have.")] = False,
    allow_requantize: Annotated[bool, typer.Option(help="Accept an already-quantized input (quality suffers).")] = False,
    eval: Annotated[bool, typer.Option("--eval", help="Measure each output's quality against MODEL afterwards.")] = False,
    eval_chunks: Annotated[Optional[int], typer.Option(help="With --eval: at most this many 512-token chunks.")] = None,
    recipe: Annotated[Optional[str], typer.Option("--recipe", help="'auto': search a per-tensor mix with the least KL "
                                                   "divergence within --budget (instead of -q).")] = None,
    budget: Annotated[Optional[str], typer.Option("--budget", help="With --recipe: a type (Q4_K_M), bits per weight "
                                                   "(4.5) or bytes (250MB) the mix must fit.")] = None,
    file: TextFile = None,
    n_ctx: ChunkCtx = 512,
    chunks: Annotated[Optional[int], typer.Option("--chunks", help="With --recipe: at most this many calibration "
                                                   "chunks (default 16).")] = None,
    force: Force = False,
    json: Json = False,
) -> None:
    """Quantize a GGUF with llama.cpp's quantizer (Q4_0 ... Q8_0, k-quants, i-quants; -q ladder for the usual five)."""
    from lfmq import ui
    from lfmq.quantize import quantize as run
    from lfmq.quantize.eval import evaluate

    if recipe is not None or budget is not None:
        _recipe(model, types, recipe, budget, output, file, n_ctx, chunks, threads, imatrix, force, json, eval,
                eval_chunks)
        return
    if types is None:
        raise UsageError("give the types with -q (Q4_K_M, Q4_0,Q8_0 or ladder), or --recipe auto --budget Q4_K_M")
    if file is not None or chunks is not None or n_ctx != 512:
        raise UsageError("-f, -c and --chunks set the calibration text of --recipe auto; with -q they do nothing")
    with ui.progress_bar("quantizing") as progress:
        results = run(model, types, output, imatrix=imatrix, output_tensor_type=output_tensor_type,
                      token_embedding_type=token_embedding_type, tensor_type=tensor_type, pure=pure, threads=threads,
                      dry_run=dry_run, allow_requantize=allow_requantize, force=force, progress=progress)
    report = None
    if eval and not dry_run:
        with ui.progress_bar("evaluating") as progress:
            report = evaluate([r.path for r in results], model, threads=threads, chunks=eval_chunks,
                              progress=progress)
    if json:
        ui.print_json({"outputs": results, "eval": report})
    else:
        ui.show_quantize(results)
        if report:
            ui.show_eval(report)


def _recipe(model: Path, types: str | None, recipe: str | None, budget: str | None, output: Path | None,
            file: Path | None, n_ctx: int, chunks: int | None, threads: int | None, imatrix: Path | None,
            force: bool, json: bool, eval: bool, eval_chunks: int | None) -> None:
    from lfmq import ui
    from lfmq.quantize.eval import evaluate
    from lfmq.quantize.recipe import default_output, recipe_quantize

    if recipe != "auto":
        raise UsageError(f"--recipe {recipe}: the one recipe is 'auto'" if recipe else "--budget goes with --recipe auto")
    if budget is None:
        raise UsageError("--recipe auto needs --budget: a type (Q4_K_M), bits per weight (4.5) or bytes (250MB)")
    if types is not None or imatrix is not None:
        raise UsageError(f"--recipe auto chooses the types itself: drop {'-q' if types is not None else '--imatrix'}")
    with ui.progress_bar("searching") as progress:
        result = recipe_quantize(model, output or default_output(model, budget), budget, file=file, n_ctx=n_ctx,
                                 chunks=16 if chunks is None else chunks, threads=threads, force=force,
                                 progress=progress)
    report = None
    if eval:
        with ui.progress_bar("evaluating") as progress:
            report = evaluate([result.path], model, threads=threads, chunks=eval_chunks, progress=progress)
    if json:
        ui.print_json({"recipe": result, "eval": report})
    else:
        ui.show_mix(result, model)
        if report:
            ui.show_eval(report)


@app.command()
def imatrix(
    model: GGUFPath,
    file: TextFile = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Output file.")] = Path("imatrix.gguf"),
    chunks: Chunks = None,
    n_ctx: ChunkCtx = 512,
    threads: Threads = None,
    force: Force = False,
    json: Json = False,
) -> None:
    """Compute an importance matrix over calibration text (for --imatrix in lfmq quantize or llama-quantize)."""
    from lfmq import ui
    from lfmq.quantize.imatrix import compute_imatrix

    with ui.progress_bar("imatrix") as progress:
        result = compute_imatrix(model, output, file=file, chunks=chunks, n_ctx=n_ctx, threads=threads, force=force,
                                 progress=progress)
    ui.print_json(result) if json else ui.show_imatrix(result)


@app.command(name="eval")
def eval_models(
    models: Annotated[list[Path], typer.Argument(help="Quantized GGUF files to measure.", show_default=False)],
    reference: Annotated[Path, typer.Option("--reference", "-r", help="The unquantized model (F16/BF16/F32).",
                                            show_default=False)],
    file: TextFile = None,
    n_ctx: ChunkCtx = 512,
    chunks: Chunks = None,
    threads: Threads = None,
    task: Annotated[Optional[Path], typer.Option("--task", help="JSONL of tool-call and extraction cases: task "
                                                                "accuracy and agreement with the reference.")] = None,
    json: Json = False,
) -> None:
    """Perplexity, KL divergence and top-1 agreement of quantized models against their reference (and task agreement)."""
    from lfmq import ui
    from lfmq.quantize.eval import evaluate

    with ui.progress_bar("evaluating") as progress:
        report = evaluate(models, reference, file=file, n_ctx=n_ctx, chunks=chunks, threads=threads, task=task,
                          progress=progress)
    ui.print_json(report) if json else ui.show_eval(report)
