"""Fixed chunks of tokens evaluated from an empty state on the engine, as llama-perplexity and llama-imatrix cut and
run them: only the scored positions' logits are computed and copied out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lfmq.errors import LlamaError
from lfmq.llama.engine import Engine
from lfmq.llama.settings import Settings


class ChunkEvaluator:
    """An engine whose context and batch are one chunk; `logits(tokens, first)` runs a chunk from an empty state."""

    def __init__(self, path: str | Path, n_ctx: int, threads: int | None = None, cb_eval: Any = None,
                 settings: Settings | None = None):
        base = settings or Settings()
        chunk = Settings(**{**base.__dict__, "n_ctx": n_ctx, "n_batch": n_ctx, "n_ubatch": n_ctx,
                            "threads": threads or base.threads})
        self.engine = Engine(path, chunk, cb_eval=cb_eval)
        self.path, self.n_ctx, self.n_vocab = Path(path), n_ctx, self.engine.n_vocab

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> ChunkEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def bos(self) -> int | None:
        return self.engine.bos_id if self.engine.add_bos else None

    def tokenize(self, text: str, parse_special: bool) -> np.ndarray:
        """The text's tokens as llama.cpp's tools tokenize it: BOS first (when the vocabulary adds one), then the
        text; `<|...|>` markers become control tokens only with `parse_special` (llama-perplexity never parses
        them, llama-imatrix with --parse-special)."""
        ids = self.engine.tokenize(text, special=parse_special, add_bos=self.engine.add_bos)
        if not ids and text:
            raise LlamaError("llama.cpp could not tokenize the text")
        return np.asarray(ids, dtype=np.int32)

    def logits(self, tokens: np.ndarray, first: int) -> np.ndarray:
        """Evaluate `tokens` from an empty state; float32 logits [len(tokens) - first, n_vocab] for positions first..end."""
        self.decode(tokens, first)
        return self.engine.logits_rows(len(tokens) - first)

    def decode(self, tokens: np.ndarray, first: int) -> None:
        """Evaluate `tokens` from an empty state, computing outputs for positions first..end (not copied out)."""
        self.engine.clear()
        self.engine.decode(tokens.tolist(), 0, outputs=first)


def chunks_of(tokens: np.ndarray, n_ctx: int, limit: int | None, bos: int | None) -> list[np.ndarray]:
    """Consecutive n_ctx-token chunks of the tokenized text (BOS already first), each chunk's first token replaced
    by BOS, as llama-perplexity and llama-imatrix do; at most `limit`."""
    n = len(tokens) // n_ctx
    if limit is not None:
        n = min(n, limit)
    out = []
    for i in range(n):
        chunk = tokens[i * n_ctx : (i + 1) * n_ctx].copy()
        if bos is not None:
            chunk[0] = bos
        out.append(chunk)
    return out
