"""The `lfmq` command: thin Typer commands around library functions, one error boundary."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from lfmq.errors import LfmqError

app = typer.Typer(
    help="LFM2 / LFM2.5 from Hugging Face checkpoints to fast, verified llama.cpp deployments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# shared options, declared once
Force = Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
GGUFPath = Annotated[Path, typer.Argument(help="A GGUF model file.", show_default=False)]


def _version(value: bool) -> None:
    if value:
        from lfmq import __version__

        typer.echo(f"lfmq {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """LFM2 / LFM2.5 from Hugging Face checkpoints to fast, verified llama.cpp deployments."""


@app.command()
def convert(
    src: Annotated[str, typer.Argument(help="Checkpoint folder or Hub repo id (e.g. LiquidAI/LFM2.5-350M).", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="Output .gguf (default: <name>-<TYPE>.gguf here).")] = None,
    outtype: Annotated[str, typer.Option(help="auto (keep the checkpoint's precision), f32, f16, bf16 or q8_0.")] = "auto",
    revision: Annotated[Optional[str], typer.Option(help="Hub branch, tag or commit.")] = None,
    force: Force = False,
    json: Json = False,
) -> None:
    """Convert an LFM2 / LFM2.5 Hugging Face checkpoint to GGUF."""
    from lfmq import ui
    from lfmq.convert import convert as run

    with ui.progress_bar("converting") as progress:
        result = run(src, out, outtype=outtype, revision=revision, force=force, progress=progress)
    ui.print_json(result) if json else ui.show_convert(result)


@app.command()
def synth(
    preset: Annotated[str, typer.Argument(help="lfm2.5-350m, lfm2-700m, lfm2.5-1.2b, lfm2-2.6b or tiny.", show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder to write the checkpoint into.", show_default=False)],
    seed: Annotated[int, typer.Option(help="Random seed for the weights.")] = 0,
    force: Force = False,
    json: Json = False,
) -> None:
    """Write a shape-exact synthetic LFM2 checkpoint with RANDOM weights (offline demos, speed and memory tests)."""
    from lfmq import ui
    from lfmq.convert.synth import synth as run

    with ui.progress_bar("synthesizing", bytes_unit=False) as progress:
        result = run(preset, out, seed=seed, force=force, progress=progress)
    ui.print_json(result) if json else ui.show_synth(result)


@app.command()
def inspect(model: GGUFPath, json: Json = False) -> None:
    """Show a GGUF's architecture, layer map, hparams, tensor types, size, tokenizer and chat template."""
    from lfmq import ui
    from lfmq.inspect import inspect as run

    info = run(model)
    ui.print_json(info) if json else ui.show_inspect(info)


Threads = Annotated[Optional[int], typer.Option("-t", "--threads", help="CPU threads (default: all).")]
TextFile = Annotated[Optional[Path], typer.Option("-f", "--file", help="Text file (default: lfmq's own).")]
Ctx = Annotated[int, typer.Option("--ctx", help="Tokens per chunk.")]
Chunks = Annotated[Optional[int], typer.Option("--chunks", help="Use at most this many chunks.")]


@app.command()
def quantize(
    model: GGUFPath,
    types: Annotated[str, typer.Option("-q", "--types", help="Types, comma-separated (Q4_K_M,Q8_0...), or 'ladder'.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="Output folder, or a .gguf file for one type.")] = None,
    imatrix: Annotated[Optional[Path], typer.Option("--imatrix", help="Importance matrix (lfmq imatrix or llama-imatrix).")] = None,
    output_tensor_type: Annotated[Optional[str], typer.Option(help="Type of output.weight (the tied embedding otherwise).")] = None,
    token_embedding_type: Annotated[Optional[str], typer.Option(help="Type of token_embd.weight (also the LM head when tied).")] = None,
    tensor_type: Annotated[Optional[list[str]], typer.Option(help="REGEX=TYPE for matching tensors; repeatable.")] = None,
    pure: Annotated[bool, typer.Option(help="No k-quant mixes: every tensor the default type.")] = False,
    threads: Threads = None,
    dry_run: Annotated[bool, typer.Option(help="Only report the size each output would have.")] = False,
    allow_requantize: Annotated[bool, typer.Option(help="Accept an already-quantized input (quality suffers).")] = False,
    eval: Annotated[bool, typer.Option("--eval", help="Measure each output's quality against MODEL afterwards.")] = False,
    eval_chunks: Annotated[Optional[int], typer.Option(help="With --eval: at most this many 512-token chunks.")] = None,
    force: Force = False,
    json: Json = False,
) -> None:
    """Quantize a GGUF with llama.cpp's quantizer (Q4_0 ... Q8_0, k-quants, i-quants; -q ladder for the usual five)."""
    from lfmq import ui
    from lfmq.quantize import quantize as run
    from lfmq.quantize.eval import evaluate

    with ui.step_bar("quantizing") as progress:
        results = run(model, types, out, imatrix=imatrix, output_tensor_type=output_tensor_type,
                      token_embedding_type=token_embedding_type, tensor_type=tensor_type, pure=pure, threads=threads,
                      dry_run=dry_run, allow_requantize=allow_requantize, force=force, progress=progress)
    report = None
    if eval and not dry_run:
        with ui.step_bar("evaluating") as progress:
            report = evaluate([r.path for r in results], model, threads=threads, chunks=eval_chunks,
                              progress=lambda i, n: progress("chunks", i, n))
    if json:
        ui.print_json({"outputs": results, "eval": report})
    else:
        ui.show_quantize(results)
        if report:
            ui.show_eval(report)


@app.command()
def imatrix(
    model: GGUFPath,
    file: TextFile = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Output file.")] = Path("imatrix.gguf"),
    chunks: Chunks = None,
    ctx: Ctx = 512,
    threads: Threads = None,
    force: Force = False,
    json: Json = False,
) -> None:
    """Compute an importance matrix over calibration text (for --imatrix in lfmq quantize or llama-quantize)."""
    from lfmq import ui
    from lfmq.quantize.imatrix import compute_imatrix

    text, name = _read_text(file, "lfmq calibration.txt")
    with ui.step_bar("imatrix") as progress:
        result = compute_imatrix(model, out, text=text, dataset=name, chunks=chunks, n_ctx=ctx, threads=threads,
                                 force=force, progress=lambda i, n: progress("chunks", i, n))
    ui.print_json(result) if json else ui.show_imatrix(result)


@app.command(name="eval")
def eval_models(
    models: Annotated[list[Path], typer.Argument(help="Quantized GGUF files to measure.", show_default=False)],
    reference: Annotated[Path, typer.Option("--reference", "-r", help="The unquantized model (F16/BF16/F32).", show_default=False)],
    file: TextFile = None,
    ctx: Ctx = 512,
    chunks: Chunks = None,
    threads: Threads = None,
    json: Json = False,
) -> None:
    """Perplexity, KL divergence and top-1 agreement of quantized models against their reference."""
    from lfmq import ui
    from lfmq.quantize.eval import evaluate

    text, name = _read_text(file, "lfmq eval.txt")
    with ui.step_bar("evaluating") as progress:
        report = evaluate(models, reference, text=text, text_name=name, n_ctx=ctx, chunks=chunks, threads=threads,
                          progress=lambda i, n: progress("chunks", i, n))
    ui.print_json(report) if json else ui.show_eval(report)


devices_app = typer.Typer(help="Device profiles: list, show, detect this machine, build recipes.", no_args_is_help=False)
app.add_typer(devices_app, name="devices")


@devices_app.callback(invoke_without_command=True)
def devices_list(ctx: typer.Context, json: Json = False) -> None:
    """List the device profiles."""
    if ctx.invoked_subcommand:
        return
    from lfmq import ui
    from lfmq.devices.profiles import builtin_profiles

    profiles = list(builtin_profiles().values())
    ui.print_json(profiles) if json else ui.show_profiles(profiles)


@devices_app.command("show")
def devices_show(
    name: Annotated[str, typer.Argument(help="Profile name (see lfmq devices), or host.", show_default=False)],
    model: Annotated[Optional[Path], typer.Option(help="A GGUF: add predictions for it on this device.")] = None,
    json: Json = False,
) -> None:
    """Show a device profile: CPU, memory, build, runtime knobs, published figures (and predictions for a GGUF)."""
    from lfmq import ui
    from lfmq.devices.predict import model_shape, predict
    from lfmq.devices.profiles import get_profile

    profile = get_profile(name)
    prediction = predict(profile, model_shape(model)) if model else None
    if json:
        ui.print_json({"profile": profile, "prediction": prediction})
    else:
        ui.show_profile(profile, prediction)


@devices_app.command("detect")
def devices_detect(json: Json = False) -> None:
    """Say which profile this machine matches and which of its CPU features it lacks."""
    from lfmq import ui
    from lfmq.devices.profiles import detect

    result = detect()
    ui.print_json(result) if json else ui.show_detection(result)


@devices_app.command("recipe")
def devices_recipe(name: Annotated[str, typer.Argument(help="Profile name.", show_default=False)]) -> None:
    """Print the exact steps to build llama.cpp and llama-cpp-python for a device."""
    from lfmq import ui
    from lfmq.devices.profiles import get_profile
    from lfmq.devices.recipes import recipe

    ui.show_recipe(recipe(get_profile(name)))


def _read_text(path: Path | None, default_name: str) -> tuple[str | None, str]:
    """The text of -f FILE (None: the library's default text), with a clear error for an unreadable file."""
    from lfmq.errors import ModelNotFoundError, UsageError

    if path is None:
        return None, default_name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelNotFoundError(f"text file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path} as UTF-8 text ({e})") from None
    if not text.strip():
        raise UsageError(f"{path} is empty: give a file with some text")
    return text, path.name


def main() -> None:
    """Entry point: LfmqError -> one line on stderr and exit 1 (usage errors 2); LFMQ_DEBUG=1 keeps tracebacks."""
    debug = os.environ.get("LFMQ_DEBUG") == "1"
    try:
        app(standalone_mode=False)
    except LfmqError as e:
        if debug:
            raise
        from lfmq import ui

        ui.error(str(e))
        sys.exit(getattr(e, "exit_code", 1))
    except KeyboardInterrupt:
        if debug:
            raise
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except typer.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:
        # typer's own usage errors (unknown option, missing argument) carry an exit code and can show themselves
        if hasattr(e, "show") and getattr(e, "exit_code", None) == 2 and not debug:
            e.show()
            sys.exit(2)
        raise
