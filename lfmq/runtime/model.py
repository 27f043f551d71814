"""Load an LFM2 GGUF through llama-cpp-python's C API: one context, one sequence whose tokens lfmq tracks, so that a
prompt which extends what the context already holds costs only its new tokens."""

from __future__ import annotations

import ctypes
import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from lfmq.errors import UnsupportedModelError, UsageError
from lfmq.llama import log as llama_log
from lfmq.errors import ContextOverflowError, LfmqWarning, LlamaError, TemplateError
from lfmq.runtime.profile import Settings, profile_knobs
from lfmq.runtime.template import builtin_template, compile_template, render

SUPPORTED_ARCHS = ("lfm2", "lfm2moe")
TRAINED_CONTEXT = 32768  # LFM2's training context; the GGUF metadata advertises 128000

def llama() -> Any:
    """The binding, imported on first use so that `lfmq --help` and `lfmq convert` never load the library."""
    import llama_cpp

    return llama_cpp


def log_tail() -> str:
    """The last few lines llama.cpp logged as errors, on one line."""
    return llama_log.tail()


def _ggml_type(name: str) -> int:
    import gguf

    try:
        return int(gguf.GGMLQuantizationType[name.upper()])
    except KeyError:
        raise UsageError(f"unknown cache type {name!r}: use f16, bf16, f32, q8_0, q4_0 ...") from None


def _whole_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Model:
    """An open GGUF: the llama.cpp model and context, its tokenizer, chat template and the tokens its context holds."""

    def __init__(self, path: str | Path, settings: Settings) -> None:
        from gguf import Keys

        from lfmq.convert.writer import KEY_LFMQ_SYNTHETIC
        from lfmq.llama.gguf_index import tensor_index

        self.path = Path(path)
        self.warnings: tuple[str, ...] = ()
        meta = tensor_index(self.path).meta  # clear errors for missing, foreign or truncated files
        arch = meta.get(Keys.General.ARCHITECTURE)
        if arch not in SUPPORTED_ARCHS:
            raise UnsupportedModelError(f"{self.path} holds a {arch!r} model: lfmq runs {', '.join(SUPPORTED_ARCHS)}")
        self.architecture: str = arch
        self.synthetic = bool(meta.get(KEY_LFMQ_SYNTHETIC, False))  # random weights: lfmq synth
        self.n_ctx_train = int(meta.get(Keys.LLM.CONTEXT_LENGTH.format(arch=arch), TRAINED_CONTEXT))
        gguf_template = meta.get(Keys.Tokenizer.CHAT_TEMPLATE)
        self.settings = self._check_settings(settings)
        self._ptrs: dict[str, Any] = {}
        self._open()
        self.template, self.template_source = self._pick_template(gguf_template)
        self._tokens: list[int] = []  # what the context holds, position by position
        self._state_ok = True         # False while a decode is in flight or after one failed
        self._snapshot: tuple[tuple[int, ...], Any] | None = None
        self.evaluated = 0            # tokens evaluated since load, prompts and generated tokens alike

    # -- setup ---------------------------------------------------------------------------------------------------

    def _check_settings(self, s: Settings) -> Settings:
        if s.n_ctx < 64 or s.n_ctx > self.n_ctx_train:
            raise UsageError(f"n_ctx={s.n_ctx}: choose 64 to {self.n_ctx_train} (the model is trained for {TRAINED_CONTEXT})")
        if s.n_ctx > TRAINED_CONTEXT:
            self._warn(f"n_ctx={s.n_ctx} is beyond the {TRAINED_CONTEXT} tokens LFM2 is trained for: quality may drop")
        for name in ("n_batch", "n_ubatch"):
            if getattr(s, name) < 1:
                raise UsageError(f"{name} must be at least 1")
        return replace(s, threads=s.threads or _cores())

    def _warn(self, message: str) -> None:
        self.warnings += (message,)
        warnings.warn(message, LfmqWarning, stacklevel=4)

    def _open(self) -> None:
        L, s = llama(), self.settings
        llama_log.route()
        mp = L.llama_model_default_params()
        # llama.cpp 0.5 replaced use_mmap with load_mode (a ctypes Structure would take `use_mmap` silently, unused)
        mp.load_mode = L.LLAMA_LOAD_MODE_MMAP if s.use_mmap else L.LLAMA_LOAD_MODE_NONE
        model = L.llama_model_load_from_file(str(self.path).encode(), mp)
        if not model:
            raise LlamaError(f"llama.cpp could not load {self.path}: {log_tail()}")
        self._ptrs["model"] = model
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = s.n_ctx, s.n_batch, min(s.n_ubatch, s.n_batch)
        cp.n_threads = cp.n_threads_batch = s.threads
        cp.type_k, cp.type_v = _ggml_type(s.type_k), _ggml_type(s.type_v)
        cp.flash_attn_type = {None: L.LLAMA_FLASH_ATTN_TYPE_AUTO, True: L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                              False: L.LLAMA_FLASH_ATTN_TYPE_DISABLED}[s.flash_attn]
        cp.no_perf = False
        ctx = L.llama_init_from_model(model, cp)
        if not ctx:
            self.close()
            raise LlamaError(f"llama.cpp could not create a context for {self.path} with {s}: {log_tail()}")
        self._ptrs["ctx"] = ctx
        self._ptrs["batch"] = L.llama_batch_init(s.n_batch, 0, 1)
        self._vocab = L.llama_model_get_vocab(model)
        self.n_vocab = int(L.llama_vocab_n_tokens(self._vocab))
        self.n_ctx = int(L.llama_n_ctx(ctx))
        self.n_batch = s.n_batch
        self._pieces: dict[int, bytes] = {}
        self._kinds: dict[str, tuple[int, ...]] = {}
        specials = {"bos_token": L.llama_vocab_bos(self.vocab), "eos_token": L.llama_vocab_eos(self.vocab),
                    "pad_token": L.llama_vocab_pad(self.vocab)}
        self.special_tokens = {k: self.piece(i).decode("utf-8", "replace") for k, i in specials.items() if i >= 0}
        self.bos_id = int(specials["bos_token"])

    def _pick_template(self, source: str | None) -> tuple[str, str]:
        if not source:
            self._warn(f"{self.path.name} has no chat template: using lfmq's built-in LFM2.5 template "
                       "(llama-cpp-python alone would fall back to the llama-2 format)")
            return builtin_template(), "builtin"
        try:
            compile_template(source)
        except TemplateError as e:
            self._warn(f"{self.path.name}: {e}; using lfmq's built-in LFM2.5 template instead")
            return builtin_template(), "builtin"
        return source, "gguf"

    def close(self) -> None:
        """Free the context and the weights; the Model is unusable afterwards."""
        L, p = llama(), self._ptrs
        if p.get("batch") is not None:
            L.llama_batch_free(p.pop("batch"))
        if p.get("ctx"):
            L.llama_free(p.pop("ctx"))
        if p.get("model"):
            L.llama_model_free(p.pop("model"))

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_ptrs", None):
            try:
                self.close()
            except Exception:  # at interpreter exit the binding may already be gone
                pass

    @property
    def ctx(self) -> Any:
        ctx = self._ptrs.get("ctx")
        if not ctx:
            raise UsageError(f"the model {self.path.name} is closed")
        return ctx

    @property
    def vocab(self) -> Any:
        if not self._ptrs.get("model"):
            raise UsageError(f"the model {self.path.name} is closed")
        return self._vocab

    # -- text <-> tokens -----------------------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = True, add_bos: bool = False) -> list[int]:
        """Token ids of text; with special=True, `<|im_start|>` and friends become their control tokens."""
        L = llama()
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
            L = llama()
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
        return bool(llama().llama_vocab_is_eog(self.vocab, token))

    def eog_tokens(self) -> tuple[int, ...]:
        """Tokens that end a turn (<|im_end|>, <|endoftext|>)."""
        if "eog" not in self._kinds:
            self._kinds["eog"] = tuple(t for t in range(self.n_vocab) if self.is_eog(t))
        return self._kinds["eog"]

    def control_tokens(self) -> tuple[int, ...]:
        """Control tokens that do not end a turn (chat and tool markers): extraction bans them."""
        if "control" not in self._kinds:
            L = llama()
            self._kinds["control"] = tuple(t for t in range(self.n_vocab)
                                           if L.llama_vocab_is_control(self.vocab, t) and not self.is_eog(t))
        return self._kinds["control"]

    def split_utf8_tokens(self) -> tuple[int, ...]:
        """Tokens whose bytes are not whole UTF-8 characters (byte pieces). Grammar decoding bans them: llama.cpp's
        grammar engine reads a split character leniently, so they could break maxLength or character classes."""
        if "split" not in self._kinds:
            control = set(self.control_tokens()) | set(self.eog_tokens())
            self._kinds["split"] = tuple(t for t in range(self.n_vocab) if t not in control and not _whole_utf8(self.piece(t)))
        return self._kinds["split"]

    def render(self, messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Mapping[str, Any]] | None = None,
               add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """The prompt text for messages (and tools) through this model's chat template."""
        return render(self.template, messages, tools=tools, add_generation_prompt=add_generation_prompt,
                      special_tokens=self.special_tokens, **kwargs)

    # -- the context ---------------------------------------------------------------------------------------------

    @property
    def state(self) -> tuple[int, ...]:
        """The tokens the context holds (empty when unknown)."""
        return tuple(self._tokens) if self._state_ok else ()

    @property
    def n_past(self) -> int:
        """How many tokens the context holds."""
        return len(self._tokens)

    def reset(self) -> None:
        """Forget everything the context holds."""
        llama().llama_memory_clear(llama().llama_get_memory(self.ctx), True)
        self._tokens, self._state_ok = [], True

    def sync(self, tokens: Sequence[int], *, snapshot_at: int = 0) -> tuple[int, int]:
        """Make the context hold `tokens`, with fresh logits for the last; returns (reused, evaluated).

        The longest common prefix with what the context holds is kept. LFM2's conv layers are recurrent state, which
        llama.cpp cannot cut back, so a shorter common prefix costs a full re-evaluation, unless a snapshot taken at
        `snapshot_at` tokens (a shared system prompt, say) matches the start of `tokens`."""
        tokens = list(tokens)
        if not tokens:
            raise UsageError("nothing to evaluate: the prompt is empty")
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(f"the prompt is {len(tokens)} tokens and the context holds {self.n_ctx}: "
                                       "shorten it or load the model with a larger n_ctx")
        before = self.evaluated
        if 0 < snapshot_at < len(tokens) and (self._snapshot is None or self._snapshot[0] != tuple(tokens[:snapshot_at])):
            self.sync(tokens[:snapshot_at])
            self._save_snapshot()
        keep = 0
        if self._state_ok:
            held = self._tokens
            while keep < min(len(held), len(tokens)) and held[keep] == tokens[keep]:
                keep += 1
        keep = min(keep, len(tokens) - 1)  # the last token is always evaluated: its logits pick the next one
        if not self._state_ok or keep < len(self._tokens):
            keep = self._cut(keep, tokens)
        self.decode(tokens[keep:])
        evaluated = self.evaluated - before
        return len(tokens) - evaluated, evaluated

    def _cut(self, keep: int, tokens: list[int]) -> int:
        """Drop what the context holds past `keep` tokens; returns how many it still holds."""
        L = llama()
        mem = L.llama_get_memory(self.ctx)
        # a partial removal fails (and changes nothing) when the recurrent state cannot go back
        if self._state_ok and keep > 0 and L.llama_memory_seq_rm(mem, 0, keep, -1):
            del self._tokens[keep:]
            return keep
        snap = self._snapshot
        if snap and len(snap[0]) < len(tokens) and tuple(tokens[: len(snap[0])]) == snap[0]:
            L.llama_memory_clear(mem, True)
            self._state_ok = False
            if L.llama_state_seq_set_data(self.ctx, snap[1], len(snap[1]), 0):
                self._tokens, self._state_ok = list(snap[0]), True
                return len(snap[0])
        self.reset()
        return 0

    def _save_snapshot(self) -> None:
        L = llama()
        size = L.llama_state_seq_get_size(self.ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        if L.llama_state_seq_get_data(self.ctx, buf, size, 0) == size:
            self._snapshot = (tuple(self._tokens), buf)

    def decode(self, tokens: Sequence[int]) -> None:
        """Append tokens to the context in batches of n_batch; logits are kept for the last one only."""
        L = llama()
        batch = self._ptrs["batch"]
        for start in range(0, len(tokens), self.n_batch):
            part = tokens[start : start + self.n_batch]
            pos = len(self._tokens)
            if pos + len(part) > self.n_ctx:
                raise ContextOverflowError(f"the context of {self.n_ctx} tokens is full: start a new conversation "
                                           "or load the model with a larger n_ctx")
            batch.n_tokens = len(part)
            for i, token in enumerate(part):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos + i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = start + i == len(tokens) - 1
            self._state_ok = False  # until llama.cpp returns: an interrupt in between leaves the state unknown
            rc = L.llama_decode(self.ctx, batch)
            if rc != 0:
                raise LlamaError(f"llama.cpp failed to evaluate {len(part)} tokens (code {rc}): {log_tail()}")
            self._tokens.extend(part)
            self._state_ok = True
            self.evaluated += len(part)

    def logits(self) -> Any:
        """A copy of the logits after the last evaluated token (numpy float32, n_vocab)."""
        import numpy as np

        ptr = llama().llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def perf(self) -> tuple[int, int]:
        """llama.cpp's own counters since load: (tokens evaluated in batches, tokens evaluated one at a time)."""
        llama().llama_synchronize(self.ctx)  # llama.cpp adds a decode to its counters when it synchronizes
        data = llama().llama_perf_context(self.ctx)
        return int(data.n_p_eval), int(data.n_eval)


def load(
    path: str | Path,
    *,
    profile: Any = None,
    n_ctx: int | None = None,
    threads: int | None = None,
    n_batch: int | None = None,
    n_ubatch: int | None = None,
    use_mmap: bool | None = None,
    flash_attn: bool | None = None,
    type_k: str | None = None,
    type_v: str | None = None,
) -> Model:
    """Open a GGUF for generation. Knobs left None come from the device profile, then from the defaults
    (n_ctx 4096, not the 128000 the metadata advertises; threads = the cores this process may use)."""
    explicit = dict(n_ctx=n_ctx, threads=threads, n_batch=n_batch, n_ubatch=n_ubatch, use_mmap=use_mmap,
                    flash_attn=flash_attn, type_k=type_k, type_v=type_v)
    knobs = {**profile_knobs(profile), **{k: v for k, v in explicit.items() if v is not None}}
    return Model(path, replace(Settings(), **knobs))

