"""Fixed chunks of tokens evaluated from an empty state on the engine, as llama-perplexity and llama-imatrix cut and
run them: only the scored positions' logits are computed and copied out.

With n_seq > 1 several chunks go into one decode, each its own sequence, as llama-perplexity packs n_batch / n_ctx
of them: the context holds n_seq * n_ctx cells. The ubatch holds every chunk whole (llama-perplexity's 512-token
ubatch would cut four 512-token chunks into four rounds of 128 tokens each), so each chunk is computed in one pass as
it is alone and the logits are bit-identical to one chunk per decode; the weights are read once for all of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lfmq.errors import LlamaError, UsageError
from lfmq.llama.engine import Engine
from lfmq.llama.settings import Settings


class ChunkEvaluator:
    """An engine whose context and batch are one chunk; `logits(tokens, first)` runs a chunk from an empty state."""

    def __init__(self, path: str | Path, n_ctx: int, threads: int | None = None, cb_eval: Any = None,
                 settings: Settings | None = None, n_seq: int = 1):
        base = settings or Settings()
        chunk = Settings(**{**base.__dict__, "n_ctx": n_ctx * n_seq, "n_batch": n_ctx * n_seq,
                            "n_ubatch": n_ctx * n_seq,
                            "n_seq_max": n_seq, "threads": threads or base.threads})
        self.engine = Engine(path, chunk, cb_eval=cb_eval)
        self.path, self.n_ctx, self.n_vocab, self.n_seq = Path(path), n_ctx, self.engine.n_vocab, n_seq

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

    def decode_packed(self, chunks: Sequence[np.ndarray], first: int) -> None:
        """Evaluate up to n_seq chunks of n_ctx tokens in one decode from an empty state, chunk k as sequence k,
        with outputs for positions first..end of each; read them with `rows(k)`."""
        if len(chunks) > self.n_seq or any(len(c) != self.n_ctx for c in chunks):
            raise UsageError(f"decode_packed takes at most {self.n_seq} chunks of {self.n_ctx} tokens")
        self.engine.clear()
        self.engine.decode_many([(int(t), pos, seq, pos >= first)
                                 for seq, chunk in enumerate(chunks) for pos, t in enumerate(chunk.tolist())])
        self._first = first

    def rows(self, k: int) -> np.ndarray:
        """float32 logits [n_ctx - first, n_vocab] of chunk k of the last decode_packed, positions first..end."""
        start = k * self.n_ctx  # batch index of the chunk's first token; llama.cpp maps it to its output row
        return np.stack([self.engine.logits(start + pos) for pos in range(self._first, self.n_ctx)])


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
