"""The CLI's flag vocabulary, checked mechanically over every command: one spelling, one type and one meaning per
flag. Commands are read from the Typer app (its registered commands and groups) and their signatures, and the
parsing is exercised through typer.testing.CliRunner: Typer's public API only."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Callable, Iterator

import pytest
import typer
from typer.testing import CliRunner

from lfmq.cli import app

OptionInfo = type(typer.Option())        # what typer.Option(...) declares, without importing Typer's internals
ArgumentInfo = type(typer.Argument())


def _commands(t: typer.Typer, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Callable[..., Any]]]:
    for info in t.registered_commands:
        yield prefix + (info.name or info.callback.__name__.replace("_", "-"),), info.callback
    for group in t.registered_groups:
        sub = group.typer_instance
        if sub.registered_callback and sub.registered_callback.callback:
            yield prefix + (group.name,), sub.registered_callback.callback
        yield from _commands(sub, prefix + (group.name,))


COMMANDS = dict(_commands(app))


def _options(fn: Callable[..., Any]) -> dict[str, tuple[Any, tuple[str, ...], bool]]:
    """Parameter name -> (its type, the flags it answers to, hidden) for each option of a command."""
    hints = typing.get_type_hints(fn, include_extras=True)
    found = {}
    for name in inspect.signature(fn).parameters:
        hint = hints.get(name)
        if typing.get_origin(hint) is not typing.Annotated:
            continue
        base, *meta = typing.get_args(hint)
        for m in meta:
            if isinstance(m, OptionInfo):
                # typer.Option("-t", "--threads"): with Annotated, the names come first (Typer stores the first
                # one where a default would go)
                decls = tuple(d for d in (m.default, *(m.param_decls or ())) if isinstance(d, str) and d.startswith("-"))
                found[name] = (base, decls or ("--" + name.replace("_", "-"),), bool(m.hidden))
    return found


def _bare(t: Any) -> Any:
    """Optional[X] -> X."""
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(t) if a is not type(None))
    return t


def test_every_command_is_found():
    assert {" ".join(k) for k in COMMANDS} >= {
        "convert", "synth", "inspect", "quantize", "imatrix", "eval", "bench", "generate", "chat", "extract",
        "devices", "devices show", "devices detect", "devices recipe", "build", "serve"}


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_every_command_has_a_one_line_help(path):
    doc = inspect.getdoc(COMMANDS[path]) or ""
    first = doc.split("\n\n")[0]
    assert first and "\n" not in first, f"lfmq {' '.join(path)}: give it a one-line docstring"


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_one_meaning_per_flag(path):
    options = _options(COMMANDS[path])
    flags = {flag: name for name, (_, decls, _) in options.items() for flag in decls}
    assert "--ctx" not in flags, "the context size is --n-ctx / -c everywhere"
    assert "--out" not in flags, "outputs are -o / --output"
    for name, (hint, decls, hidden) in options.items():
        long = [d for d in decls if d.startswith("--")]
        assert long == ["--" + name.replace("_", "-")], f"{decls}: option names equal the parameter names"
        assert not hidden
    if "json" in options:
        assert options["json"][0] is bool and options["json"][1] == ("--json",), "--json is a flag: JSON on stdout"
    if "threads" in options:
        hint = _bare(options["threads"][0])
        assert hint is int or hint == list[int], "--threads is a whole number (repeatable in a sweep)"
        assert set(options["threads"][1]) == {"-t", "--threads"}
    if "n_ctx" in options:
        assert set(options["n_ctx"][1]) == {"-c", "--n-ctx"} and _bare(options["n_ctx"][0]) is int
    for short, owner in (("-c", "n_ctx"), ("-o", "output"), ("-t", "threads")):
        assert flags.get(short, owner) == owner, f"{short} means {owner} in every command"


runner = CliRunner()


@pytest.mark.parametrize("path", [p for p in COMMANDS if "threads" in _options(COMMANDS[p])], ids=" ".join)
@pytest.mark.parametrize("value", ["two", "0"])
def test_threads_are_checked_while_parsing(path, value):
    r = runner.invoke(app, [*path, "x.gguf", "-t", value])
    assert r.exit_code == 2, r.output
    assert "--threads" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("path", [p for p in COMMANDS if "n_ctx" in _options(COMMANDS[p])], ids=" ".join)
def test_n_ctx_is_a_whole_number(path):
    r = runner.invoke(app, [*path, "x.gguf", "-c", "lots"])
    assert r.exit_code == 2 and "--n-ctx" in r.output


@pytest.mark.parametrize("path", [p for p in COMMANDS if "json" in _options(COMMANDS[p])], ids=" ".join)
def test_json_takes_no_value(path):
    """A flag: `--json --help` shows the help (an option with a value would swallow --help)."""
    r = runner.invoke(app, [*path, "--json", "--help"])
    assert r.exit_code == 0 and "--json" in r.output


def _library_functions_behind_output() -> list[Callable[..., Any]]:
    from lfmq.convert import convert
    from lfmq.convert.lora_gguf import convert_adapter
    from lfmq.convert.synth import synth
    from lfmq.devices.build import build
    from lfmq.quantize.imatrix import compute_imatrix
    from lfmq.quantize.quantize import quantize
    from lfmq.runtime.extract import extract_files

    return [convert, convert_adapter, synth, build, compute_imatrix, quantize, extract_files]


@pytest.mark.parametrize("fn", _library_functions_behind_output(), ids=lambda f: f.__name__)
def test_the_library_says_output_where_the_flag_says_output(fn):
    """Option names equal the parameter names of the function a command calls: -o/--output is `output` there too."""
    params = inspect.signature(fn).parameters
    assert "output" in params and "out" not in params
