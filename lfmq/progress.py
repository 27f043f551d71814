"""The one progress protocol. Every library function that reports progress takes `progress: Progress | None` and
calls `progress(what, done, total)`: `what` names the thing counted (a quant type, "chunks", "task cases", a file
being pushed, "weights"), `done` of `total` (bytes or steps, as the function's docstring says). One caller may
report several `what`s; each is its own bar. The CLI's adapter is `ui.progress_bar`; this module imports nothing,
so the library never needs rich."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, what: str, done: int, total: int) -> None: ...
