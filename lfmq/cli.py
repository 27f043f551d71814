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


@app.command()
def bench(
    models: Annotated[Optional[list[Path]], typer.Argument(help="GGUF files to measure.", show_default=False)] = None,
    profile: Annotated[Optional[str], typer.Option(help="Device profile for knobs and predictions (default: host).")] = None,
    n_prompt: Annotated[int, typer.Option("-p", "--n-prompt", help="Prompt tokens (pp test; 0 to skip).")] = 512,
    n_gen: Annotated[int, typer.Option("-n", "--n-gen", help="Generated tokens (tg test; 0 to skip).")] = 128,
    reps: Annotated[int, typer.Option("-r", "--reps", help="Repetitions per test.")] = 5,
    threads: Annotated[Optional[str], typer.Option("-t", "--threads", help="Thread counts, comma-separated (a sweep).")] = None,
    depth: Annotated[int, typer.Option(help="Tokens already in the context before each test.")] = 0,
    json: Annotated[Optional[Path], typer.Option("--json", help="Write the results as JSON to FILE.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Write report.json, report.md and report.html to DIR.")] = None,
    compare: Annotated[Optional[tuple[Path, Path]], typer.Option(help="Compare two report JSON files (B / A).")] = None,
    force: Force = False,
) -> None:
    """Measure prompt processing, generation, time to first token and peak memory, like llama-bench."""
    from lfmq import ui
    from lfmq.bench import run as b
    from lfmq.bench.result import compare as compare_reports
    from lfmq.errors import UsageError

    if compare:
        ui.show_compare(compare_reports(*compare))
        return
    if not models:
        raise UsageError("give one or more GGUF files to measure (or --compare A.json B.json)")
    counts = _int_list(threads, "--threads") if threads else None
    with ui.step_bar("bench") as progress:
        result = b.bench(models, profile=profile, n_prompt=n_prompt, n_gen=n_gen, reps=reps, threads=counts,
                         depth=depth, progress=progress)
    ui.show_bench(result)
    if json:
        result.save(json, force)  # report.json's shape, from one place
        ui.out.print(f"wrote {json}")
    if report:
        from lfmq.bench.report import write_report

        for path in write_report(result, report, force):
            ui.out.print(f"wrote {path}")


def _int_list(text: str, option: str) -> list[int]:
    from lfmq.errors import UsageError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{option} {text!r}: give whole numbers separated by commas (e.g. 1,2,4)") from None
    if not values or min(values) < 1:
        raise UsageError(f"{option} {text!r}: give whole numbers of at least 1")
    return values


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


# -- runtime: generate, chat, extract --------------------------------------------------------------------------

ProfileOpt = Annotated[Optional[str], typer.Option("--profile", help="Device profile name, or a .json/.toml file of runtime knobs.")]
NCtx = Annotated[Optional[int], typer.Option("--n-ctx", help="Context window in tokens (default 4096, or the profile's).")]
MaxTokens = Annotated[int, typer.Option("--max-tokens", help="Stop an answer after this many tokens.")]
Temperature = Annotated[Optional[float], typer.Option(help="Sampling temperature (default 0.1; 0 = greedy).")]
TopK = Annotated[Optional[int], typer.Option("--top-k", help="Top-k sampling (default 50).")]
TopP = Annotated[Optional[float], typer.Option("--top-p", help="Top-p sampling (default 1.0: off).")]
RepeatPenalty = Annotated[Optional[float], typer.Option("--repeat-penalty", help="Repeat penalty (default 1.05).")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed: the same seed gives the same answer.")]
IgnoreEos = Annotated[bool, typer.Option("--ignore-eos", help="Keep generating past the end of the turn (benchmarks).")]
ToolsFile = Annotated[Optional[Path], typer.Option("--tools", help="JSON file: a list of OpenAI-style function definitions.")]
ToolChoice = Annotated[str, typer.Option("--tool-choice", help="auto, required (force a call) or none.")]
System = Annotated[Optional[str], typer.Option("--system", help="System prompt.")]


@app.command()
def generate(
    model: GGUFPath,
    prompt: Annotated[str, typer.Option("-p", "--prompt", help="The prompt ('-' reads stdin).", show_default=False)],
    system: System = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send the prompt as is, without the chat template.")] = False,
    tools: ToolsFile = None,
    tool_choice: ToolChoice = "auto",
    max_tokens: MaxTokens = 1024,
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    repeat_penalty: RepeatPenalty = None,
    seed: Seed = None,
    ignore_eos: IgnoreEos = False,
    profile: ProfileOpt = None,
    n_ctx: NCtx = None,
    threads: Threads = None,
    json: Json = False,
) -> None:
    """Answer one prompt (for scripts): streams the text, or prints text, tool calls and stats as JSON."""
    from lfmq import repl, ui
    from lfmq.errors import UsageError
    from lfmq.runtime.chat import collect, stream_chat
    from lfmq.runtime.generate import stream_generate
    from lfmq.runtime.tools import load_tools

    if raw and (tools or system):
        raise UsageError("--raw sends the prompt without the chat template: drop --tools and --system, or --raw")
    text = sys.stdin.read() if prompt == "-" else prompt
    tool_defs = load_tools(tools) if tools else None
    m = repl.open_model(model, profile, n_ctx, threads)
    knobs = dict(max_tokens=max_tokens, ignore_eos=ignore_eos, temperature=temperature, top_k=top_k, top_p=top_p,
                 repeat_penalty=repeat_penalty, seed=seed)
    if raw:
        stream = stream_generate(m, text, **knobs)
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        stream = stream_chat(m, messages, tools=tool_defs, tool_choice=tool_choice, **knobs)
    reply = collect(m, stream, None if json else ui.stream_text)
    ui.print_json(reply) if json else ui.show_reply_end(reply)


@app.command()
def chat(
    model: GGUFPath,
    system: System = None,
    tools: ToolsFile = None,
    tool_choice: ToolChoice = "auto",
    max_tokens: MaxTokens = 1024,
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    repeat_penalty: RepeatPenalty = None,
    seed: Seed = None,
    ignore_eos: IgnoreEos = False,
    profile: ProfileOpt = None,
    n_ctx: NCtx = None,
    threads: Threads = None,
) -> None:
    """Chat in the terminal with streamed answers; /reset, /system TEXT, /tool RESULT, /stats, /exit."""
    from lfmq import repl
    from lfmq.runtime import Chat
    from lfmq.runtime.tools import load_tools

    tool_defs = load_tools(tools) if tools else None
    m = repl.open_model(model, profile, n_ctx, threads)
    session = Chat(m, system=system, tools=tool_defs, tool_choice=tool_choice, max_tokens=max_tokens,
                   ignore_eos=ignore_eos, temperature=temperature, top_k=top_k, top_p=top_p,
                   repeat_penalty=repeat_penalty, seed=seed)
    repl.run(session)


@app.command()
def extract(
    model: GGUFPath,
    schema: Annotated[Path, typer.Option("--schema", help="JSON schema file the outputs must validate against.", show_default=False)],
    inputs: Annotated[Optional[list[str]], typer.Argument(help="Text files; '-' or none reads stdin.", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="Output .jsonl (default: stdout).")] = None,
    lines: Annotated[bool, typer.Option("--lines", help="Each non-blank line of the inputs is its own input.")] = False,
    system: Annotated[Optional[str], typer.Option("--system", help="Instruction; {schema} is replaced by the schema.")] = None,
    max_tokens: MaxTokens = 1024,
    temperature: Temperature = None,
    seed: Seed = None,
    profile: ProfileOpt = None,
    n_ctx: NCtx = None,
    threads: Threads = None,
    force: Force = False,
) -> None:
    """Extract JSON that validates against a schema from each input: one JSON line per input, with its source."""
    from lfmq import repl, ui
    from lfmq.atomic import check_target
    from lfmq.errors import UsageError
    from lfmq.errors import ExtractionFailed
    from lfmq.runtime.extract import load_schema, read_inputs, run_batch

    spec = load_schema(schema)  # cheap checks first: schema, output, inputs, then the model
    if spec.unenforced:
        ui.warn(f"decoding cannot enforce {', '.join(spec.unenforced)}: outputs that break them become item errors")
    if out:
        check_target(out, force)
    if not inputs and sys.stdin.isatty():
        raise UsageError("no input: give text files, or pipe text into stdin")
    items = read_inputs(inputs or ["-"], lines=lines)
    m = repl.open_model(model, profile, n_ctx, threads)
    name, done = str(out or "<stdout>"), [0]
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
    stream = open(out, "w", encoding="utf-8") if out else sys.stdout
    try:
        with ui.progress_bar("extracting", bytes_unit=False) as bar:
            summary = run_batch(m, items, spec, stream, output_name=name, system=system, max_tokens=max_tokens,
                                temperature=temperature, seed=seed,
                                progress=lambda i, n: (done.__setitem__(0, i), bar(i, n)))
    except KeyboardInterrupt:
        ui.warn(f"interrupted after {done[0]} of {len(items)} inputs: their lines are in {name}")
        sys.exit(130)  # not `raise`: typer turns KeyboardInterrupt into a return value that main() drops
    finally:
        if out:
            stream.close()
    ui.show_extract_summary(summary)
    if summary.failed:
        raise ExtractionFailed(f"{summary.failed} of {summary.total} inputs failed: the 'error' field of their lines says why")


def main() -> None:
    """Entry point: LfmqError -> one line on stderr and exit 1 (usage errors 2); LFMQ_DEBUG=1 keeps tracebacks."""
    debug = os.environ.get("LFMQ_DEBUG") == "1"
    try:
        rc = app(standalone_mode=False)  # Typer returns (not raises) the code of an interrupt or typer.Exit
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
    if rc == 130:
        sys.stderr.write("interrupted\n")
    if rc:
        sys.exit(rc)
