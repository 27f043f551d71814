"""The engine: one llama.cpp model and one context, the only wrapper of them in lfmq.

It loads a GGUF with `Settings`, tokenizes and detokenizes (control tokens kept), decodes batches with the output
positions the caller chooses, hands out logits, clears, snapshots and restores a sequence's state, builds sampler
chains, takes an optional evaluation callback (importance matrices) and reports llama.cpp's counters. Generation,
chat, extraction, eval, imatrix and bench all run on it."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lfmq.errors import ContextOverflowError, LlamaError, StateError, UsageError
from lfmq.llama import log as llama_log
from lfmq.llama.binding import lib
from lfmq.llama.settings import Settings, default_threads


def _ggml_type(name: str) -> int:
    import gguf

    try:
        return int(gguf.GGMLQuantizationType[name.upper()])
    except KeyError:
        raise UsageError(f"unknown cache type {name!r}: use f16, bf16, f32, q8_0, q4_0 ...") from None


@dataclass(frozen=True)
class Sampling:
    """Sampling settings; the defaults are Liquid's recommendation for LFM2.5."""

    temperature: float = 0.1      # 0 = greedy
    top_k: int = 50
    top_p: float = 1.0
    min_p: float = 0.0
    repeat_penalty: float = 1.05
    repeat_last_n: int = 64
    seed: int | None = None       # None: a different run each time


@dataclass(frozen=True)
class ModelDesc:
    """llama.cpp's own description of the loaded model (as llama-bench prints it)."""

    desc: str            # e.g. "lfm2 350M Q4_0"
    size: int            # bytes of the weights
    n_params: int


class Sampler:
    """A llama.cpp sampler chain; free it (or use it as a context manager) when done."""

    def __init__(self, chain: Any, engine: Engine) -> None:
        self._chain, self._engine = chain, engine

    def sample(self, index: int = -1) -> int:
        """Sample the next token from the logits at output `index` (-1: the last) and accept it."""
        return int(lib().llama_sampler_sample(self._chain, self._engine.ctx, index))

    def free(self) -> None:
        if self._chain is not None:
            lib().llama_sampler_free(self._chain)
            self._chain = None

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.free()


class Engine:
    """An open GGUF in llama.cpp: model, context and one batch."""

    def __init__(self, path: str | Path, settings: Settings | None = None, *, cb_eval: Any = None) -> None:
        s = settings or Settings()
        for name in ("n_ctx", "n_batch", "n_ubatch", "n_seq_max"):
            if getattr(s, name) < 1:
                raise UsageError(f"{name} must be at least 1, not {getattr(s, name)}")
        self.path = Path(path)
        self.settings = replace(s, threads=s.threads or default_threads(), n_ubatch=min(s.n_ubatch, s.n_batch))
        self._cb = cb_eval  # ctypes callbacks must outlive the context
        self._model = self._ctx = self._batch = None
        self._adapters: list[Any] = []
        self._pieces: dict[int, bytes] = {}
        self.context_error = ""  # what llama.cpp logged when it last refused to create a context
        self._kinds: dict[str, tuple[int, ...]] = {}
        self._open()

    def _open(self) -> None:
        L, s = lib(), self.settings
        llama_log.route()
        mp = L.llama_model_default_params()
        # this llama.cpp replaced use_mmap with load_mode (a ctypes Structure would take `use_mmap` silently, unused)
        mp.load_mode = L.LLAMA_LOAD_MODE_MMAP if s.use_mmap else L.LLAMA_LOAD_MODE_NONE
        self._model = L.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self._model:
            raise LlamaError(f"llama.cpp could not load {self.path}: {llama_log.tail()}")
        self._adapters = [self._load_lora(path) for path, _ in s.lora]  # freed with the model
        self._vocab = L.llama_model_get_vocab(self._model)
        try:
            self._open_context()
        except LlamaError:
            self.close()
            raise
        self.n_vocab = int(L.llama_vocab_n_tokens(self._vocab))
        self.bos_id = int(L.llama_vocab_bos(self._vocab))
        self.eos_id = int(L.llama_vocab_eos(self._vocab))
        self.pad_id = int(L.llama_vocab_pad(self._vocab))
        self.add_bos = bool(L.llama_vocab_get_add_bos(self._vocab))

    def _open_context(self) -> None:
        """The context (with the LoRA adapters applied) and the batch, from self.settings."""
        L, s = lib(), self.settings
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = s.n_ctx, s.n_batch, s.n_ubatch, s.n_seq_max
        cp.n_threads = cp.n_threads_batch = s.threads
        cp.type_k, cp.type_v = _ggml_type(s.type_k), _ggml_type(s.type_v)
        cp.flash_attn_type = {None: L.LLAMA_FLASH_ATTN_TYPE_AUTO, True: L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                              False: L.LLAMA_FLASH_ATTN_TYPE_DISABLED}[s.flash_attn]
        cp.no_perf = False
        if self._cb is not None:
            cp.cb_eval, cp.cb_eval_user_data = self._cb, None
        self._ctx = L.llama_init_from_model(self._model, cp)
        if not self._ctx:
            self.context_error = llama_log.tail()
            raise LlamaError(f"llama.cpp could not create a context for {self.path} with {s}: {self.context_error}")
        if self._adapters:
            adapters = (L.llama_adapter_lora_p_ctypes * len(self._adapters))(*self._adapters)
            scales = (ctypes.c_float * len(self._adapters))(*[scale for _, scale in s.lora])
            if L.llama_set_adapters_lora(self._ctx, adapters, len(self._adapters), scales) != 0:
                self._free_context()
                raise LlamaError(f"llama.cpp could not apply the LoRA adapters to {self.path}: {llama_log.tail()}")
        self._batch = L.llama_batch_init(s.n_batch, 0, s.n_seq_max)
        self.n_ctx = int(L.llama_n_ctx(self._ctx))
        self.n_ctx_seq = int(L.llama_n_ctx_seq(self._ctx))  # positions one sequence may use: n_ctx / n_seq_max
        self.n_batch = s.n_batch

    def resize(self, n_seq_max: int) -> None:
        """Re-create the context for `n_seq_max` sequences of n_ctx_seq positions each (n_ctx grows to match), the
        weights staying loaded; the context forgets everything it held. When llama.cpp refuses, the context of the
        old settings is re-created and LlamaError says what llama.cpp reported."""
        if n_seq_max < 1:
            raise UsageError(f"n_seq_max must be at least 1, not {n_seq_max}")
        old = self.settings
        self._free_context()
        self.settings = replace(old, n_ctx=self.n_ctx_seq * n_seq_max, n_seq_max=n_seq_max)
        try:
            self._open_context()
        except LlamaError:
            reason = self.context_error
            self.settings = old
            self._open_context()
            raise LlamaError(f"llama.cpp cannot hold {n_seq_max} sequences of {self.path.name}: {reason}") from None

    def _free_context(self) -> None:
        with llama_log.captured():
            if self._batch is not None:
                lib().llama_batch_free(self._batch)
                self._batch = None
            if self._ctx:
                lib().llama_free(self._ctx)
                self._ctx = None

    def _load_lora(self, path: str) -> Any:
        adapter = lib().llama_adapter_lora_init(self._model, str(path).encode())
        if not adapter:
            self.close()
            raise LlamaError(f"llama.cpp could not apply the LoRA adapter {path} to {self.path.name}: {llama_log.tail()}")
        return adapter

    # -- lifetime ------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the batch, the context and the weights; the engine is unusable afterwards."""
        L = lib()
        with llama_log.captured():  # llama.cpp reports its buffers as it frees them
            if self._batch is not None:
                L.llama_batch_free(self._batch)
                self._batch = None
            if self._ctx:
                L.llama_free(self._ctx)
                self._ctx = None
            if self._model:
                L.llama_model_free(self._model)
                self._model = None
            self._adapters = []  # llama_model_free freed them

    @property
    def closed(self) -> bool:
        return not self._ctx

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_ctx", None):
            try:
                self.close()
            except Exception:  # at interpreter exit the binding may already be gone
                pass

    @property
    def ctx(self) -> Any:
        if not self._ctx:
            raise StateError(f"the model {self.path.name} is closed")
        return self._ctx

    @property
    def vocab(self) -> Any:
        if not self._model:
            raise StateError(f"the model {self.path.name} is closed")
        return self._vocab

    # -- text <-> tokens -----------------------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = True, add_bos: bool = False) -> list[int]:
        """Token ids of text; with special=True, `<|im_start|>` and friends become their control tokens."""
        L = lib()
        data = text.encode("utf-8")
        cap = len(data) + 2
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, cap, add_bos, special)
        if n < 0:
            cap = -n
            buf = (L.llama_token * cap)()
            n = L.llama_tokenize(self.vocab, data, len(data), buf, cap, add_bos, special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes of one token, control tokens included (llama-cpp-python's own detokenizer drops them)."""
        cached = self._pieces.get(token)
        if cached is None:
            L = lib()
            buf = ctypes.create_string_buffer(64)
            n = L.llama_token_to_piece(self.vocab, token, buf, 64, 0, True)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = L.llama_token_to_piece(self.vocab, token, buf, -n, 0, True)
            cached = self._pieces[token] = buf.raw[:n]
        return cached

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of token ids, control tokens kept; invalid UTF-8 becomes U+FFFD."""
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        return bool(lib().llama_vocab_is_eog(self.vocab, token))

    def is_control(self, token: int) -> bool:
        return bool(lib().llama_vocab_is_control(self.vocab, token))

    def tokens_where(self, kind: str, test: Any) -> tuple[int, ...]:
        """Every token id for which `test(id)` holds, computed once per engine and `kind`."""
        if kind not in self._kinds:
            self._kinds[kind] = tuple(t for t in range(self.n_vocab) if test(t))
        return self._kinds[kind]

    # -- evaluation ----------------------------------------------------------------------------------------------

    def decode(self, tokens: Sequence[int], start: int, outputs: str | int = "last", seq: int = 0) -> None:
        """Evaluate `tokens` at positions start.. of sequence `seq`, in batches of n_batch. `outputs` chooses the
        positions whose logits llama.cpp computes: "last" (the final token), "all", "none", or an int: every position
        from that index of `tokens` on. Logits of a multi-batch call are those of its last batch."""
        n = len(tokens)
        if start + n > self.n_ctx:
            raise ContextOverflowError(f"the context of {self.n_ctx} tokens is full: start a new conversation "
                                       "or load the model with a larger n_ctx")
        first = {"last": n - 1, "all": 0, "none": n}[outputs] if isinstance(outputs, str) else int(outputs)
        L, b = lib(), self._batch
        for lo in range(0, n, self.n_batch):
            part = tokens[lo : lo + self.n_batch]
            b.n_tokens = len(part)
            for i, token in enumerate(part):
                b.token[i], b.pos[i], b.n_seq_id[i] = int(token), start + lo + i, 1
                b.seq_id[i][0] = seq
                b.logits[i] = lo + i >= first
            rc = L.llama_decode(self.ctx, b)
            if rc != 0:
                raise LlamaError(f"llama.cpp failed to evaluate {len(part)} tokens of {self.path.name} "
                                 f"(code {rc}): {llama_log.tail()}")

    def decode_many(self, items: Sequence[tuple[int, int, int, bool]]) -> None:
        """One batch of (token, position, sequence, wants_logits) entries: several sequences decoded together."""
        if len(items) > self.n_batch:
            raise UsageError(f"{len(items)} entries exceed the batch of {self.n_batch}")
        L, b = lib(), self._batch
        b.n_tokens = len(items)
        for i, (token, pos, seq, out) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i] = int(token), pos, 1
            b.seq_id[i][0] = seq
            b.logits[i] = out
        rc = L.llama_decode(self.ctx, b)
        if rc != 0:
            raise LlamaError(f"llama.cpp failed to evaluate a batch of {len(items)} (code {rc}): {llama_log.tail()}")

    def logits(self, index: int = -1) -> np.ndarray:
        """A copy of the logits at output `index` of the last decode (-1: the last output), float32 [n_vocab]."""
        ptr = lib().llama_get_logits_ith(self.ctx, index)
        if not ptr:
            raise LlamaError(f"llama.cpp holds no logits at output {index}: {llama_log.tail()}")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def logits_rows(self, n: int) -> np.ndarray:
        """A copy of the first n output rows of the last decode, float32 [n, n_vocab]."""
        ptr = lib().llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n, self.n_vocab)).copy()

    def synchronize(self) -> None:
        lib().llama_synchronize(self.ctx)

    # -- sequence state ------------------------------------------------------------------------------------------

    def clear(self) -> None:
        """Forget every sequence the context holds."""
        lib().llama_memory_clear(lib().llama_get_memory(self.ctx), True)

    def remove(self, seq: int, p0: int, p1: int = -1) -> bool:
        """Drop positions p0..p1 of a sequence; False when llama.cpp cannot (recurrent state cannot go back)."""
        return bool(lib().llama_memory_seq_rm(lib().llama_get_memory(self.ctx), seq, p0, p1))

    def forget(self, seq: int) -> None:
        """Drop every position of one sequence (the others stay)."""
        lib().llama_memory_seq_rm(lib().llama_get_memory(self.ctx), seq, -1, -1)

    def snapshot(self, seq: int = 0) -> Any:
        """A copy of one sequence's state (KV cells and recurrent conv state), or None when llama.cpp fails."""
        L = lib()
        size = L.llama_state_seq_get_size(self.ctx, seq)
        buf = (ctypes.c_uint8 * size)()
        return buf if L.llama_state_seq_get_data(self.ctx, buf, size, seq) == size else None

    def restore(self, state: Any, seq: int = 0) -> bool:
        """Load a snapshot into sequence `seq` (which should be empty); False when llama.cpp refuses."""
        return bool(lib().llama_state_seq_set_data(self.ctx, state, len(state), seq))

    # -- sampling ------------------------------------------------------------------------------------------------

    def sampler(self, s: Sampling, history: Sequence[int] = (), grammar: str | None = None,
                ban: Sequence[int] = ()) -> Sampler:
        """A sampler chain: bans, grammar, repeat penalty (primed with the history's tail), top-k/p, min-p, temp."""
        L = lib()
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        sampler = Sampler(chain, self)
        if ban:
            biases = (L.llama_logit_bias * len(ban))(*[L.llama_logit_bias(t, float("-inf")) for t in ban])
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_logit_bias(self.n_vocab, len(ban), biases))
        if grammar is not None:
            g = L.llama_sampler_init_grammar(self.vocab, grammar.encode("utf-8"), b"root")
            if not g:
                sampler.free()
                raise LlamaError(f"llama.cpp rejected the grammar: {llama_log.tail()}")
            L.llama_sampler_chain_add(chain, g)
        if s.repeat_penalty != 1.0 and s.repeat_last_n != 0:
            pen = L.llama_sampler_init_penalties(self.n_vocab, s.repeat_last_n, s.repeat_penalty, 0.0, 0.0)
            for t in history[-s.repeat_last_n:] if s.repeat_last_n > 0 else history:
                L.llama_sampler_accept(pen, t)
            L.llama_sampler_chain_add(chain, pen)
        if s.temperature <= 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
            return sampler
        if s.top_k > 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(s.top_k))
        if s.top_p < 1.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(s.min_p, 1))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(s.temperature))
        seed = L.LLAMA_DEFAULT_SEED if s.seed is None else s.seed & 0xFFFFFFFF
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed))
        return sampler

    # -- counters and facts --------------------------------------------------------------------------------------

    def perf(self) -> tuple[int, int]:
        """llama.cpp's own counters since load: (tokens evaluated in batches, tokens evaluated one at a time)."""
        self.synchronize()  # llama.cpp adds a decode to its counters when it synchronizes
        data = lib().llama_perf_context(self.ctx)
        return int(data.n_p_eval), int(data.n_eval)

    def describe(self) -> ModelDesc:
        L = lib()
        buf = ctypes.create_string_buffer(256)
        L.llama_model_desc(self._model, buf, 256)
        return ModelDesc(buf.value.decode(), int(L.llama_model_size(self._model)), int(L.llama_model_n_params(self._model)))
