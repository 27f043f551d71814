"""Evaluate fixed chunks of tokens with llama.cpp's C API: only the scored positions' logits are copied out, and an
optional evaluation callback sees every matrix multiplication (for importance matrices)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lfmq.errors import LlamaError as EvalError
from lfmq.llama import log as llama_log



class ChunkEvaluator:
    """One model and one context sized to the chunk; `logits(tokens, first)` runs a chunk from an empty state."""

    def __init__(self, path: str | Path, n_ctx: int, threads: int | None = None, cb_eval: Any = None):
        import llama_cpp

        self.path = Path(path)
        self._cb = cb_eval  # ctypes callbacks must outlive the context
        mparams = llama_cpp.llama_model_default_params()
        with llama_log.captured() as log:
            self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise EvalError(f"llama.cpp could not load {path}: {log.failure('unknown reason')}")
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = n_ctx
        cparams.n_threads = cparams.n_threads_batch = threads or _default_threads()
        cparams.no_perf = True
        if cb_eval is not None:
            cparams.cb_eval = cb_eval
            cparams.cb_eval_user_data = None
        with llama_log.captured() as log:
            self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise EvalError(f"llama.cpp could not create a context for {path}: {log.failure('unknown reason')}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx = n_ctx
        self.batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)

    def close(self) -> None:
        import llama_cpp

        if getattr(self, "ctx", None):
            with llama_log.captured():  # llama.cpp reports its buffers as it frees them
                llama_cpp.llama_batch_free(self.batch)
                llama_cpp.llama_free(self.ctx)
                llama_cpp.llama_model_free(self.model)
            self.ctx = None

    def __enter__(self) -> ChunkEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def bos(self) -> int | None:
        import llama_cpp

        return llama_cpp.llama_vocab_bos(self.vocab) if llama_cpp.llama_vocab_get_add_bos(self.vocab) else None

    def tokenize(self, text: str, parse_special: bool) -> np.ndarray:
        """The text's tokens as llama.cpp's tools tokenize it: BOS first (when the vocabulary adds one), then the
        text; `<|...|>` markers become control tokens only with `parse_special` (llama-perplexity never parses
        them, llama-imatrix with --parse-special)."""
        import llama_cpp

        raw = text.encode("utf-8")
        cap = len(raw) + 16
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self.vocab, raw, len(raw), buf, cap, True, parse_special)
        if n < 0:
            raise EvalError(f"could not tokenize the text ({-n} tokens needed)")
        return np.ctypeslib.as_array(buf)[:n].astype(np.int32)

    def logits(self, tokens: np.ndarray, first: int) -> np.ndarray:
        """Evaluate `tokens` from an empty state; float32 logits [len(tokens) - first, n_vocab] for positions first..end."""
        import llama_cpp

        self.decode(tokens, first)
        ptr = llama_cpp.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(len(tokens) - first, self.n_vocab)).copy()

    def decode(self, tokens: np.ndarray, first: int) -> None:
        """Evaluate `tokens` from an empty state, computing outputs for positions first..end (not copied out)."""
        import llama_cpp

        n = len(tokens)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        b = self.batch
        for i, tok in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i] = int(tok), i, 1
            b.seq_id[i][0] = 0
            b.logits[i] = i >= first
        b.n_tokens = n
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise EvalError(f"llama_decode failed on {self.path.name} (code {rc})")


def _default_threads() -> int:
    import os

    return max(1, len(os.sched_getaffinity(0)))


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
