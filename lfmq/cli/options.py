"""Options and arguments that more than one command takes, declared once as `Annotated` aliases so that a flag has
one spelling, one type and one meaning across the whole CLI (tests/test_cli_flags.py checks it).

The vocabulary: `--json` prints the result as JSON on stdout; `-o/--output` names what a command writes;
`-t/--threads` is a whole number of CPU threads; `-c/--n-ctx` is the context size in tokens; `--force` overwrites."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Force = Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
GGUFPath = Annotated[Path, typer.Argument(help="A GGUF model file.", show_default=False)]
Threads = Annotated[Optional[int], typer.Option("-t", "--threads", min=1, help="CPU threads (default: all).")]

# the context size: llama.cpp's n_ctx; for imatrix and eval it is also the chunk the text is cut into
ChunkCtx = Annotated[int, typer.Option("-c", "--n-ctx", help="Context size in tokens: the text is cut into chunks "
                                                            "of this many tokens.")]
NCtx = Annotated[Optional[int], typer.Option("-c", "--n-ctx", help="Context size in tokens (default 4096, or the "
                                                                     "profile's).")]

TextFile = Annotated[Optional[Path], typer.Option("-f", "--file", help="UTF-8 text file (default: lfmq's own).")]
Chunks = Annotated[Optional[int], typer.Option("--chunks", help="Use at most this many chunks.")]

# the runtime commands: generate, chat, extract
Profile = Annotated[Optional[str], typer.Option("--profile", help="Device profile name, or a .json/.toml file of "
                                                                 "runtime knobs.")]
MaxTokens = Annotated[int, typer.Option("--max-tokens", help="Stop an answer after this many tokens.")]
Temperature = Annotated[Optional[float], typer.Option(help="Sampling temperature (default 0.1; 0 = greedy).")]
TopK = Annotated[Optional[int], typer.Option("--top-k", help="Top-k sampling (default 50).")]
TopP = Annotated[Optional[float], typer.Option("--top-p", help="Top-p sampling (default 1.0: off).")]
RepeatPenalty = Annotated[Optional[float], typer.Option("--repeat-penalty", help="Repeat penalty (default 1.05).")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed: the same seed gives the same answer.")]
IgnoreEos = Annotated[bool, typer.Option("--ignore-eos", help="Keep generating past the end of the turn (benchmarks).")]
Tools = Annotated[Optional[Path], typer.Option("--tools", help="JSON file: a list of OpenAI-style function "
                                                              "definitions.")]
ToolChoice = Annotated[str, typer.Option("--tool-choice", help="auto, required (force a call) or none.")]
System = Annotated[Optional[str], typer.Option("--system", help="System prompt.")]
Lora = Annotated[Optional[list[Path]], typer.Option("--lora", help="GGUF LoRA adapter to apply at run time (repeat "
                                                             "for several); `lfmq convert ADAPTER --base BASE "
                                                             "--lora-out` makes one.")]
DeviceUri = Annotated[Optional[str], typer.Option("--device", help="Where to run: local (default), "
                                                                   "ssh://host, ssh://user@host:port, adb, adb:SERIAL or "
                                                                   "qemu:PROFILE (emulated: not a device speed).")]
HideReasoning = Annotated[bool, typer.Option("--hide-reasoning", help="Do not show a thinking model's <think> text "
                                                                    "(shown dimmed by default).")]
