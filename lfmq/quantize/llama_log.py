"""Capture llama.cpp's log while it works: failures become one clear line, per-tensor lines drive progress."""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from typing import Callable, Iterator

ERROR = 3  # ggml_log_level
CONT = 5   # continues the previous message


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


@contextmanager
def captured(on_line: Callable[[str], None] | None = None) -> Iterator[LlamaLog]:
    """Route llama.cpp's log into a LlamaLog for the duration, then give it back to llama-cpp-python's logger."""
    import llama_cpp
    from llama_cpp import _logger

    log = LlamaLog(on_line)

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        log.feed(level, text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        yield log
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
