"""llama.cpp's log, routed once into lfmq: the library never prints. One callback, installed on first use, keeps the
recent errors (quoted when an operation fails) and feeds any capture in progress (quantize reads whole lines to
report failures and drive its progress bar). Nothing swaps the callback in and out."""

from __future__ import annotations

import ctypes
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Iterator

ERROR = 3  # ggml_log_level
CONT = 5   # continues the previous message

_errors: deque[str] = deque(maxlen=32)
_captures: list[LlamaLog] = []
_state: dict[str, Any] = {"callback": None, "keep": False}


class LlamaLog:
    """Whole lines of one llama.cpp call, with the level of the message each began."""

    def __init__(self, on_line: Callable[[str], None] | None = None):
        self.lines: list[tuple[int, str]] = []
        self._partial = ""
        self._level = 0
        self._on_line = on_line

    def feed(self, level: int, text: str) -> None:
        if level != CONT and not self._partial:
            self._level = level
        self._partial += text
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            self.lines.append((self._level, line))
            if self._on_line:
                self._on_line(line)

    def errors(self) -> list[str]:
        return [line.strip() for level, line in self.lines if level == ERROR and line.strip(" =\n")]

    def failure(self, default: str) -> str:
        """The most telling line: llama.cpp's own 'failed to ...: reason', else its last error, else `default`."""
        for _, line in reversed(self.lines):
            if "failed to quantize:" in line:
                return line.split("failed to quantize:", 1)[1].strip()
        errors = self.errors()
        return errors[-1] if errors else default


def _on_message(level: int, text: str) -> None:
    if level == CONT:
        if _state["keep"] and _errors:
            _errors[-1] += text
    else:
        _state["keep"] = level >= ERROR
        if _state["keep"]:
            _errors.append(text)
    for log in _captures:
        log.feed(level, text)


def route() -> None:
    """Install lfmq's callback (once per process) and initialise llama.cpp's backends."""
    if _state["callback"] is not None:
        return
    import llama_cpp

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        _on_message(level, text.decode("utf-8", errors="replace"))

    _state["callback"] = callback  # ctypes callbacks must outlive their use
    llama_cpp.llama_backend_init()
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def tail() -> str:
    """The last few lines llama.cpp logged as errors, on one line."""
    return " | ".join(line.strip() for line in list(_errors)[-3:] if line.strip()) or "no reason logged"


@contextmanager
def captured(on_line: Callable[[str], None] | None = None) -> Iterator[LlamaLog]:
    """Collect llama.cpp's whole lines for the duration (the routing itself stays as it is)."""
    route()
    log = LlamaLog(on_line)
    _captures.append(log)
    try:
        yield log
    finally:
        _captures.remove(log)
