"""`lfmq convert`, `lfmq synth` and `lfmq inspect`: a checkpoint into a GGUF, a synthetic checkpoint, what a GGUF
holds. Each command calls one library function and hands its result to ui."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lfmq.cli.app import app
from lfmq.cli.options import Force, GGUFPath, Json


@app.command()
def convert(
    src: Annotated[str, typer.Argument(help="Checkpoint folder or Hub repo id (e.g. LiquidAI/LFM2.5-350M).",
                                       show_default=False)],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output .gguf (default: <name>-<TYPE>.gguf "
                                                                          "here).")] = None,
    outtype: Annotated[str, typer.Option(help="auto (keep the checkpoint's precision), f32, f16, bf16 or q8_0.")] = "auto",
    revision: Annotated[Optional[str], typer.Option(help="Hub branch, tag or commit.")] = None,
    lora: Annotated[Optional[Path], typer.Option("--lora", help="PEFT LoRA adapter folder to merge into the "
                                                              "weights while converting.")] = None,
    base: Annotated[Optional[str], typer.Option("--base", help="With SRC a PEFT LoRA adapter: the base checkpoint "
                                                               "it was trained on.")] = None,
    lora_out: Annotated[bool, typer.Option("--lora-out", help="With --base: write a GGUF LoRA adapter (for --lora "
                                                              "at run time) instead of a merged model.")] = False,
    force: Force = False,
    json: Json = False,
) -> None:
    """Convert an LFM2 / LFM2.5 Hugging Face checkpoint (or a LoRA adapter for one) to GGUF."""
    from lfmq import ui
    from lfmq.convert import convert as run

    with ui.progress_bar("converting", bytes_unit=True) as progress:
        result = run(src, output, outtype=outtype, revision=revision, force=force, progress=progress, lora=lora,
                     base=base, lora_out=lora_out)
    ui.print_json(result) if json else ui.show_convert(result)


@app.command()
def synth(
    preset: Annotated[str, typer.Argument(help="lfm2.5-350m, lfm2-700m, lfm2.5-1.2b, lfm2-2.6b, tiny, lfm2-8b-a1b, "
                                               "lfm2-moe-mid or tiny-moe.",
                                          show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write the checkpoint into.",
                                         show_default=False)],
    seed: Annotated[int, typer.Option(help="Random seed for the weights.")] = 0,
    force: Force = False,
    json: Json = False,
) -> None:
    """Write a shape-exact synthetic LFM2 checkpoint with RANDOM weights (offline demos, speed and memory tests)."""
    from lfmq import ui
    from lfmq.convert.synth import synth as run

    with ui.progress_bar("synthesizing") as progress:
        result = run(preset, output, seed=seed, force=force, progress=progress)
    ui.print_json(result) if json else ui.show_synth(result)


@app.command()
def inspect(model: GGUFPath, json: Json = False) -> None:
    """Show a GGUF's architecture, layer map, hparams, tensor types, size, tokenizer and chat template."""
    from lfmq import ui
    from lfmq.inspect import inspect as run

    info = run(model)
    ui.print_json(info) if json else ui.show_inspect(info)
