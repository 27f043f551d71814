"""One progress protocol (lfmq/progress.py): every library function that reports progress takes it, nothing declares
another, and the CLI's one adapter (ui.progress_bar) draws a bar per `what`."""

from __future__ import annotations

import ast
import io
import threading
from pathlib import Path

import pytest
from rich.console import Console

from lfmq import ui

LFMQ = Path(__file__).resolve().parent.parent / "lfmq"


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(), str(p))) for p in sorted(LFMQ.rglob("*.py"))]


def test_every_progress_parameter_is_the_one_protocol() -> None:
    params = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs + node.args.posonlyargs
                params += [(f"{path.relative_to(LFMQ)}:{node.name}", ast.unparse(a.annotation) if a.annotation else None)
                           for a in args if a.arg == "progress"]
    assert len(params) >= 15   # convert, synth, quantize, imatrix, eval, tasks, build, bench, extract, transports
    assert [p for p in params if p[1] != "Progress | None"] == []


def test_progress_is_declared_once() -> None:
    declared = []
    for path, tree in _modules():
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "Progress" for t in node.targets):
                declared.append(str(path.relative_to(LFMQ)))
            if isinstance(node, ast.ClassDef) and node.name == "Progress":
                declared.append(str(path.relative_to(LFMQ)))
    assert declared == ["progress.py"]


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    buf = io.StringIO()
    monkeypatch.setattr(ui, "err", Console(file=buf, force_terminal=True, width=120))
    return buf


def test_one_bar_per_what_on_a_terminal(stderr: io.StringIO) -> None:
    with ui.progress_bar("quantizing") as progress:
        progress("Q4_0", 1, 10)
        progress("Q8_0", 5, 10)
        progress("Q4_0", 10, 10)
    text = stderr.getvalue()
    assert "quantizing Q4_0" in text and "quantizing Q8_0" in text
    assert "10/10" in text and "5/10" in text


def test_bytes_are_counted_as_bytes(stderr: io.StringIO) -> None:
    with ui.progress_bar("converting", bytes_unit=True) as progress:
        progress("weights", 3_000_000, 6_000_000)
    assert "converting weights" in stderr.getvalue() and "3.0/6.0 MB" in stderr.getvalue()


def test_silent_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(ui, "err", Console(file=buf, force_terminal=False))
    with ui.progress_bar("quantizing") as progress:
        progress("Q4_0", 1, 10)
    assert buf.getvalue() == ""


def test_a_bar_starts_no_thread_beside_the_work_it_reports(stderr: io.StringIO) -> None:
    # bench runs its timed cases while the bar is up; a refresh thread would take CPU from them
    before = threading.active_count()
    with ui.progress_bar("bench") as progress:
        progress("cases", 0, 2)
        during = threading.active_count()
        progress("cases", 1, 2)
    assert during == before, (before, during, threading.enumerate())
    assert "bench cases" in stderr.getvalue() and "1/2" in stderr.getvalue()


def test_a_burst_of_updates_is_not_drawn_once_each(stderr: io.StringIO) -> None:
    # convert and transfers report every megabyte; the last state is always drawn
    with ui.progress_bar("quantizing") as progress:
        for i in range(1, 2001):
            progress("Q4_0", i, 2000)
    text = stderr.getvalue()
    assert "2000/2000" in text
    assert text.count("quantizing Q4_0") < 200


def test_a_burst_of_updates_without_a_known_total_is_not_drawn_once_each(stderr: io.StringIO) -> None:
    # total 0 means not known: every update is "done >= total", which must not mean "finished, draw it"
    with ui.progress_bar("pushing") as progress:
        for i in range(1, 2001):
            progress("model.gguf", i, 0)
    assert stderr.getvalue().count("pushing model.gguf") < 200
