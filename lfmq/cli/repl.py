"""The `lfmq chat` loop: read a line, run a /command or stream an answer; Ctrl-C stops an answer, not the session.

CLI layer: it reads the terminal with input() and shows everything through ui; the conversation is runtime's Chat."""

from __future__ import annotations

import signal
import sys
from typing import Any, Callable, Iterator

from lfmq import ui
from lfmq.errors import LfmqError
from lfmq.runtime.chat import Chat

PROMPT = "> "
HELP = ("/reset  /system [TEXT]  /tool RESULT  /stats  /exit  /regen  /edit TEXT   "
        "(Ctrl-C stops an answer, Ctrl-D quits)")


class StopFlag:
    """While active, Ctrl-C sets a flag that the generation loop polls between tokens, instead of raising inside it."""

    def __init__(self) -> None:
        self.is_set = False
        self._previous: Any = None

    def __enter__(self) -> StopFlag:
        self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        self.is_set = True

    def __exit__(self, *exc: Any) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def __call__(self) -> bool:
        return self.is_set


def answer(session: Chat, content: str, role: str = "user") -> None:
    """Stream one answer to the terminal."""
    show(lambda stop: session.stream(content, role=role, interrupt=stop), session)


SHOW_REASONING = True   # lfmq chat --hide-reasoning sets it off


def show(start: Callable[[StopFlag], Iterator[Any]], session: Chat) -> None:
    """Stream an answer started by `start(stop_flag)` to the terminal: prose as it comes, reasoning dimmed, no
    tool-call markers (the calls are listed when the answer ends)."""
    printer = ui.ReplyPrinter(session.tools, SHOW_REASONING)
    with StopFlag() as stop:
        for chunk in start(stop):
            printer(chunk.text)
    printer.finish()
    assert session.last is not None
    ui.show_reply_end(session.last)


def _reset(session: Chat, arg: str) -> bool:
    session.reset()
    ui.notice("conversation cleared")
    return True


def _system(session: Chat, arg: str) -> bool:
    if not arg:
        ui.notice(f"system prompt: {session.system or '(none)'}")
        return True
    session.system = arg
    ui.notice("system prompt set; the next turn re-reads the conversation")
    return True


def _tool(session: Chat, arg: str) -> bool:
    if not arg:
        ui.notice("usage: /tool RESULT (the tool's output, e.g. JSON)")
        return True
    answer(session, arg, role="tool")
    return True


def _regen(session: Chat, arg: str) -> bool:
    show(lambda stop: session.stream_regenerate(interrupt=stop), session)
    return True


def _edit(session: Chat, arg: str) -> bool:
    if not arg:
        ui.notice("usage: /edit TEXT (replaces your last message and answers it anew)")
        return True
    show(lambda stop: session.stream_edit_last(arg, interrupt=stop), session)
    return True


def _stats(session: Chat, arg: str) -> bool:
    stats = session.last.stats if session.last else None
    ui.show_stats(stats)
    if stats is not None:
        ui.notice(context_line(session, stats))
    return True


def context_line(session: Chat, stats: Any) -> str:
    """How the last turn fitted the context: what was dropped, whether the conversation was evaluated again."""
    line = f"context {session.model.n_past} of {session.model.n_ctx} tokens"
    if getattr(stats, "dropped_turns", 0):
        line += f"; {stats.dropped_turns} old turns ({stats.dropped_tokens} tokens) dropped to fit"
    if getattr(stats, "reprefill", False):
        line += f"; the conversation was evaluated again ({stats.prompt_evaluated} tokens)"
    if session.dropped_turns:
        line += f"; {session.dropped_turns} turns dropped in all"
    return line


def _help(session: Chat, arg: str) -> bool:
    ui.notice(HELP)
    return True


COMMANDS: dict[str, Callable[[Chat, str], bool]] = {
    "/reset": _reset, "/system": _system, "/tool": _tool, "/stats": _stats, "/help": _help, "/regen": _regen,
    "/edit": _edit,
    "/exit": lambda s, a: False, "/quit": lambda s, a: False,
}


def command(session: Chat, line: str) -> bool:
    """Run a /command; False means leave the session."""
    name, _, arg = line.strip().partition(" ")
    handler = COMMANDS.get(name)
    if handler is None:
        ui.notice(f"unknown command {name}: {HELP}")
        return True
    return handler(session, arg.strip())


def run(session: Chat, read: Callable[[str], str] = input, show_reasoning: bool = True) -> None:
    """The loop. When stdin is not a terminal, each line read is echoed so that a transcript reads well."""
    global SHOW_REASONING
    SHOW_REASONING = show_reasoning
    echo = not sys.stdin.isatty()
    if not echo:
        import readline  # noqa: F401  (line editing and history for input())
    ui.notice(HELP)
    while True:
        try:
            line = read(PROMPT)
        except EOFError:
            ui.stream_text("\n")
            return
        except KeyboardInterrupt:  # at the prompt: a fresh line, the session goes on
            ui.stream_text("\n")
            continue
        if echo:
            ui.stream_text(line + "\n")
        if not line.strip():
            continue
        try:
            if line.lstrip().startswith("/"):
                if not command(session, line):
                    return
            else:
                answer(session, line)
        except LfmqError as e:  # a message too long for the context, say: the session goes on
            ui.error(str(e))
