"""The one set of knobs lfmq passes to llama.cpp (`Settings`), the default thread count, and the binding version lfmq
is written against. Nothing here imports llama_cpp, so the CLI, profiles and builds can read them for free."""

from __future__ import annotations

import os
from dataclasses import dataclass

BINDING_VERSION = "0.3.36"  # llama-cpp-python, and so the llama.cpp tree it vendors; pyproject pins the same


def default_threads() -> int:
    """The CPUs this process may run on: the affinity mask where the OS has one (Linux), else all (macOS, Windows)."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is not None:
        try:
            return max(1, len(getaffinity(0)))
        except OSError:
            pass
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    """What an engine passes to llama.cpp when it loads a model and creates its context."""

    n_ctx: int = 4096
    threads: int | None = None        # None: default_threads()
    n_batch: int = 512
    n_ubatch: int = 512
    use_mmap: bool = True
    flash_attn: bool | None = None    # None: llama.cpp decides (auto)
    type_k: str = "f16"
    type_v: str = "f16"
    n_seq_max: int = 1                # sequences one context holds (the server and batched extraction use more)
    lora: tuple[tuple[str, float], ...] = ()  # GGUF LoRA adapters applied at run time: (path, scale)
