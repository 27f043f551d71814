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
