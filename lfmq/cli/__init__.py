"""The `lfmq` command: a Typer app with one error boundary (app.py), options shared across commands declared once
(options.py), and one module per command group that registers its commands on the app when imported:

    convert.py   convert, synth, inspect          quantize.py  quantize, imatrix, eval
    bench.py     bench                            devices.py   devices (list, show, detect, recipe), build
    run.py       generate, chat, extract          repl.py      the chat loop
    serve.py     serve (the HTTP server)

Each command parses flags, calls one library function and hands the result to lfmq/ui.py; it reads and writes no
files itself. Heavy modules are imported inside the commands, so `lfmq --help` stays instant."""

from __future__ import annotations

from lfmq.cli.app import app, main
from lfmq.cli import convert, quantize, bench, devices, run, serve  # noqa: E402,F401  (registration order = help order)

__all__ = ["app", "main"]
