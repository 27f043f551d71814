"""`lfmq generate`, `lfmq chat` and `lfmq extract`: the runtime commands. Each opens the model through
`open_model` (its warnings and a line about it on stderr) and hands the work to lfmq/runtime/; the chat loop itself
is lfmq/cli/repl.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from lfmq.cli.app import Interrupted, app
from lfmq.cli.options import (DeviceUri, Force, GGUFPath, HideReasoning, IgnoreEos, Json, Lora, MaxTokens, NCtx, Profile, RepeatPenalty, Seed,
                              System, Temperature, ToolChoice, Tools, TopK, TopP, Threads)

if TYPE_CHECKING:
    from lfmq.runtime.model import Model


def open_model(path: Path, profile: str | None, n_ctx: int | None, threads: int | None,
               lora: list[Path] | None = None) -> Model:
    """load() for the runtime commands, then one line about the model (and its random-weights label) on stderr."""
    from lfmq import ui
    from lfmq.runtime.model import load

    m = load(path, profile=profile, n_ctx=n_ctx, threads=threads, lora=lora)
    ui.show_model(m)
    return m


@app.command()
def generate(
    model: GGUFPath,
    prompt: Annotated[str, typer.Option("-p", "--prompt", help="The prompt ('-' reads stdin).", show_default=False)],
    system: System = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send the prompt as is, without the chat template.")] = False,
    tools: Tools = None,
    tool_choice: ToolChoice = "auto",
    max_tokens: MaxTokens = 1024,
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    repeat_penalty: RepeatPenalty = None,
    seed: Seed = None,
    ignore_eos: IgnoreEos = False,
    profile: Profile = None,
    n_ctx: NCtx = None,
    threads: Threads = None,
    lora: Lora = None,
    device: DeviceUri = None,
    hide_reasoning: HideReasoning = False,
    json: Json = False,
) -> None:
    """Answer one prompt (for scripts): streams the text, or prints text, tool calls and stats as JSON."""
    from lfmq import ui
    from lfmq.errors import UsageError
    from lfmq.runtime.tools import load_tools

    if raw and (tools or system):
        raise UsageError("--raw sends the prompt without the chat template: drop --tools and --system, or --raw")
    text = sys.stdin.read() if prompt == "-" else prompt
    tool_defs = load_tools(tools) if tools else None
    printer = None if json else ui.ReplyPrinter(tool_defs, not hide_reasoning)   # prose as it comes, no markers
    if device and device.strip() != "local":
        reply = _generate_on_device(device, model, text, system, raw, tool_defs, tool_choice, max_tokens, ignore_eos,
                                    profile, n_ctx, threads, lora, printer,
                                    sampling=dict(temperature=temperature, top_k=top_k, top_p=top_p,
                                                  repeat_penalty=repeat_penalty, seed=seed))
    else:
        reply = _generate_here(model, text, system, raw, tool_defs, tool_choice, profile, n_ctx, threads, lora,
                               printer, dict(max_tokens=max_tokens, ignore_eos=ignore_eos, temperature=temperature,
                                             top_k=top_k, top_p=top_p, repeat_penalty=repeat_penalty, seed=seed))
    if printer:
        printer.finish()
    ui.print_json(reply) if json else ui.show_reply_end(reply)


def _generate_here(model: Path, text: str, system: str | None, raw: bool, tools: Any, tool_choice: str,
                   profile: str | None, n_ctx: int | None, threads: int | None, lora: list[Path] | None,
                   on_text: Any, knobs: dict[str, Any]) -> Any:
    from lfmq.runtime.chat import collect, one_turn, stream_chat
    from lfmq.runtime.generate import stream_generate

    m = open_model(model, profile, n_ctx, threads, lora)
    if raw:
        stream = stream_generate(m, text, **knobs)
    else:
        stream = stream_chat(m, one_turn(text, system), tools=tools, tool_choice=tool_choice, **knobs)
    return collect(m, stream, on_text, tools)


def _generate_on_device(device: str, model: Path, text: str, system: str | None, raw: bool, tools: Any,
                        tool_choice: str, max_tokens: int, ignore_eos: bool, profile: str | None, n_ctx: int | None,
                        threads: int | None, lora: list[Path] | None, on_text: Any, sampling: dict[str, Any]) -> Any:
    """generate --device: lfmq-run decodes greedily there; what it cannot do is a usage error, not a silent change."""
    from lfmq.devices.session import generate_on_device
    from lfmq.errors import UsageError
    from lfmq.runtime.chat import one_turn

    unsupported = [f"--{k.replace('_', '-')}" for k, v in sampling.items() if v is not None and
                   not (k == "temperature" and v == 0)]
    if lora:
        unsupported.append("--lora")
    if tool_choice != "auto":
        unsupported.append("--tool-choice")
    if unsupported:
        raise UsageError(f"on a device, generate decodes greedily with the tools offered in the prompt: drop "
                         f"{', '.join(unsupported)} (or run it here without --device)")
    return generate_on_device(device, model, text, messages=None if raw else one_turn(text, system), tools=tools,
                              max_tokens=max_tokens, ignore_eos=ignore_eos, profile=profile, n_ctx=n_ctx,
                              threads=threads, on_text=on_text)


@app.command()
def chat(
    model: GGUFPath,
    system: System = None,
    tools: Tools = None,
    tool_choice: ToolChoice = "auto",
    max_tokens: MaxTokens = 1024,
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    repeat_penalty: RepeatPenalty = None,
    seed: Seed = None,
    ignore_eos: IgnoreEos = False,
    profile: Profile = None,
    n_ctx: NCtx = None,
    threads: Threads = None,
    lora: Lora = None,
    overflow_share: Annotated[float, typer.Option("--overflow-share", help="Share of the context freed at once when "
                                                  "the conversation no longer fits (0: the oldest turn at a "
                                                  "time).")] = 0.5,
    hide_reasoning: HideReasoning = False,
) -> None:
    """Chat in the terminal with streamed answers; /reset, /system TEXT, /tool RESULT, /regen, /edit TEXT, /stats."""
    from lfmq.cli import repl
    from lfmq.runtime import Chat
    from lfmq.runtime.chat import check_overflow_share
    from lfmq.runtime.tools import load_tools

    check_overflow_share(overflow_share)
    tool_defs = load_tools(tools) if tools else None
    m = open_model(model, profile, n_ctx, threads, lora)
    session = Chat(m, system=system, tools=tool_defs, tool_choice=tool_choice, max_tokens=max_tokens,
                   ignore_eos=ignore_eos, temperature=temperature, top_k=top_k, top_p=top_p,
                   repeat_penalty=repeat_penalty, seed=seed, overflow_share=overflow_share)
    repl.run(session, show_reasoning=not hide_reasoning)


@app.command()
def extract(
    model: GGUFPath,
    schema: Annotated[Path, typer.Option("--schema", help="JSON schema file the outputs must validate against.",
                                         show_default=False)],
    inputs: Annotated[Optional[list[Path]], typer.Argument(help="Text files; '-' or none reads stdin.",
                                                           show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output .jsonl (default: stdout).")] = None,
    lines: Annotated[bool, typer.Option("--lines", help="Each non-blank line of the inputs is its own input.")] = False,
    system: Annotated[Optional[str], typer.Option("--system", help="Instruction; {schema} is replaced by the "
                                                                   "schema.")] = None,
    max_tokens: MaxTokens = 1024,
    temperature: Temperature = None,
    seed: Seed = None,
    profile: Profile = None,
    n_ctx: NCtx = None,
    threads: Threads = None,
    lora: Lora = None,
    parallel: Annotated[int, typer.Option("--parallel", help="Decode N inputs at once, as N sequences of one "
                                          "context (N times the KV cache).")] = 1,
    force: Force = False,
) -> None:
    """Extract JSON that validates against a schema from each input: one JSON line per input, with its source."""
    from lfmq import ui
    from lfmq.runtime.extract import ExtractionInterrupted, extract_files

    try:
        with ui.progress_bar("extracting", bytes_unit=False) as progress:
            summary = extract_files(lambda: open_model(model, profile, n_ctx, threads, lora), inputs, schema, output,
                                    lines=lines, force=force, system=system, max_tokens=max_tokens,
                                    temperature=temperature, seed=seed, progress=progress, parallel=parallel)
    except ExtractionInterrupted as e:
        raise Interrupted(str(e)) from None
    ui.show_extract_summary(summary)
    summary.check()
