"""An LFM2 GGUF opened for conversation: the engine (lfmq.llama) plus the chat template and the tokens its one
sequence holds, so that a prompt which extends what the context already holds costs only its new tokens."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from lfmq.errors import ContextOverflowError, LfmqWarning, TemplateError, UnsupportedModelError, UsageError
from lfmq.llama.engine import Engine
from lfmq.llama.settings import Settings
from lfmq.runtime.profile import profile_knobs
from lfmq.runtime.template import builtin_template, compile_template, render

SUPPORTED_ARCHS = ("lfm2", "lfm2moe")
TRAINED_CONTEXT = 32768  # LFM2's training context; the GGUF metadata advertises 128000
CHECKPOINT_BYTES = 64 << 20  # turn-boundary snapshots kept per model: about one 4096-token state of the 350M/1.2B
CHECKPOINT_COUNT = 8


def _whole_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class Model:
    """An open GGUF: the llama.cpp model and context, its tokenizer, chat template and the tokens its context holds."""

    def __init__(self, path: str | Path, settings: Settings) -> None:
        from gguf import Keys

        from lfmq.llama.gguf_index import tensor_index
        from lfmq.meta import meta_from_fields

        self.path = Path(path)
        self.warnings: tuple[str, ...] = ()
        index = tensor_index(self.path)  # clear errors for missing, foreign or truncated files
        self.meta = meta_from_fields(index.meta, index.tensors, self.path)
        if self.meta.architecture not in SUPPORTED_ARCHS:
            raise UnsupportedModelError(f"{self.path} holds a {self.meta.architecture!r} model: lfmq runs "
                                        f"{', '.join(SUPPORTED_ARCHS)}")
        self.architecture: str = self.meta.architecture
        self.synthetic = self.meta.synthetic  # random weights: lfmq synth
        self.n_ctx_train = self.meta.context_length or TRAINED_CONTEXT
        gguf_template = index.get(Keys.Tokenizer.CHAT_TEMPLATE)
        self.engine = Engine(self.path, self._check_settings(settings))
        self.settings = self.engine.settings
        # n_ctx: the positions of one sequence (a context of several sequences splits its cells among them)
        self.n_vocab, self.n_ctx, self.n_batch = self.engine.n_vocab, self.engine.n_ctx_seq, self.engine.n_batch
        self.bos_id = self.engine.bos_id
        specials = {"bos_token": self.engine.bos_id, "eos_token": self.engine.eos_id, "pad_token": self.engine.pad_id}
        self.special_tokens = {k: self.piece(i).decode("utf-8", "replace") for k, i in specials.items() if i >= 0}
        self.template, self.template_source = self._pick_template(gguf_template)
        self._tokens: list[int] = []  # what the context holds, position by position
        self._state_ok = True         # False while a decode is in flight or after one failed
        self._snapshot: tuple[tuple[int, ...], Any] | None = None
        self._checkpoints: list[tuple[tuple[int, ...], Any]] = []  # checkpoint()s, oldest first
        self.checkpoint_bytes = CHECKPOINT_BYTES  # memory the checkpoints may take (0: keep none)
        self.checkpoint_count = CHECKPOINT_COUNT
        self.evaluated = 0            # tokens evaluated since load, prompts and generated tokens alike

    # -- setup ---------------------------------------------------------------------------------------------------

    def _check_settings(self, s: Settings) -> Settings:
        if s.n_ctx < 64 or s.n_ctx > self.n_ctx_train:
            raise UsageError(f"n_ctx={s.n_ctx}: choose 64 to {self.n_ctx_train} (the model is trained for {TRAINED_CONTEXT})")
        if s.n_ctx > TRAINED_CONTEXT:
            self._warn(f"n_ctx={s.n_ctx} is beyond the {TRAINED_CONTEXT} tokens LFM2 is trained for: quality may drop")
        return s

    def _warn(self, message: str) -> None:
        self.warnings += (message,)
        warnings.warn(message, LfmqWarning, stacklevel=4)

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
        self.engine.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def ctx(self) -> Any:
        """The llama.cpp context (raises StateError once closed)."""
        return self.engine.ctx

    # -- text <-> tokens -----------------------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = True, add_bos: bool = False) -> list[int]:
        """Token ids of text; with special=True, `<|im_start|>` and friends become their control tokens."""
        return self.engine.tokenize(text, special=special, add_bos=add_bos)

    def piece(self, token: int) -> bytes:
        """The bytes of one token, control tokens included (llama-cpp-python's own detokenizer drops them)."""
        return self.engine.piece(token)

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of token ids, control tokens kept; invalid UTF-8 becomes U+FFFD."""
        return self.engine.detokenize(tokens)

    def is_eog(self, token: int) -> bool:
        return self.engine.is_eog(token)

    def eog_tokens(self) -> tuple[int, ...]:
        """Tokens that end a turn (<|im_end|>, <|endoftext|>)."""
        return self.engine.tokens_where("eog", self.is_eog)

    def control_tokens(self) -> tuple[int, ...]:
        """Control tokens that do not end a turn (chat and tool markers): extraction bans them."""
        return self.engine.tokens_where("control", lambda t: self.engine.is_control(t) and not self.is_eog(t))

    def split_utf8_tokens(self) -> tuple[int, ...]:
        """Tokens whose bytes are not whole UTF-8 characters (byte pieces). Grammar decoding bans them: llama.cpp's
        grammar engine reads a split character leniently, so they could break maxLength or character classes."""
        control = set(self.control_tokens()) | set(self.eog_tokens())
        return self.engine.tokens_where("split", lambda t: t not in control and not _whole_utf8(self.piece(t)))

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
        self.engine.clear()
        self._tokens, self._state_ok = [], True

    @property
    def n_seq(self) -> int:
        """How many sequences the context holds (batched extraction decodes one input per sequence)."""
        return self.engine.settings.n_seq_max

    def hold_sequences(self, n: int) -> None:
        """Make the context hold at least n sequences of n_ctx positions each, re-creating it if need be (the weights
        stay loaded; the context forgets what it held). Raises LlamaError, the old context kept, if llama.cpp cannot."""
        if n <= self.n_seq:
            return
        self._state_ok, self._snapshot = False, None
        try:
            self.engine.resize(n)
        finally:
            self.settings = self.engine.settings
            self.reset()

    def sync(self, tokens: Sequence[int], *, snapshot_at: int = 0) -> tuple[int, int]:
        """Make the context hold `tokens`, with fresh logits for the last; returns (reused, evaluated).

        The longest common prefix with what the context holds is kept. LFM2's conv layers are recurrent state, which
        llama.cpp cannot cut back, so a shorter common prefix costs a full re-evaluation, unless a snapshot taken at
        `snapshot_at` tokens (a shared system prompt, say) or a checkpoint() matches the start of `tokens`: then
        only the tokens past the longest such snapshot are evaluated."""
        tokens = list(tokens)
        if not tokens:
            raise UsageError("nothing to evaluate: the prompt is empty")
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(f"the prompt is {len(tokens)} tokens and the context holds {self.n_ctx}: "
                                       "shorten it or load the model with a larger n_ctx")
        before = self.evaluated
        if 0 < snapshot_at < len(tokens) and (self._snapshot is None or self._snapshot[0] != tuple(tokens[:snapshot_at])) \
                and self._resumes_at(tokens) < snapshot_at:  # else the context or a checkpoint goes further
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
        # a partial removal fails (and changes nothing) when the recurrent state cannot go back
        if self._state_ok and keep > 0 and self.engine.remove(0, keep, -1):
            del self._tokens[keep:]
            return keep
        snap = self._best_snapshot(tokens)
        if snap:
            self.engine.clear()
            self._state_ok = False
            if self.engine.restore(snap[1]):
                self._tokens, self._state_ok = list(snap[0]), True
                return len(snap[0])
        self.reset()
        return 0

    def _resumes_at(self, tokens: list[int]) -> int:
        """How many of tokens sync() would not evaluate again: what the context holds if it is a prefix of them,
        else the longest snapshot that is."""
        held = self._tokens if self._state_ok else []
        if held and len(held) < len(tokens) and tokens[: len(held)] == held:
            return len(held)
        snap = self._best_snapshot(tokens)
        return len(snap[0]) if snap else 0

    def _best_snapshot(self, tokens: list[int]) -> tuple[tuple[int, ...], Any] | None:
        """The longest snapshot (shared prompt or checkpoint) that is a proper prefix of tokens."""
        best = None
        for snap in (self._snapshot, *self._checkpoints):
            if snap and len(snap[0]) < len(tokens) and (best is None or len(snap[0]) > len(best[0])) \
                    and tuple(tokens[: len(snap[0])]) == snap[0]:
                best = snap
        return best

    def checkpoint(self) -> bool:
        """Snapshot what the context holds now (a turn boundary, say), so that a later prompt which diverges after
        it (a regenerated or edited last turn) costs only its tokens past this point instead of a full re-evaluation.
        At most checkpoint_count snapshots taking checkpoint_bytes are kept, the oldest dropped first; returns
        whether this one is kept."""
        if not self._state_ok or not self._tokens or self.checkpoint_bytes <= 0 or self.checkpoint_count <= 0:
            return False
        key = tuple(self._tokens)
        for i, (held, state) in enumerate(self._checkpoints):
            if held == key:  # already kept: it becomes the newest
                self._checkpoints.append(self._checkpoints.pop(i))
                return True
        state = self.engine.snapshot(0)
        if state is None or len(state) > self.checkpoint_bytes:
            return False
        self._checkpoints.append((key, state))
        while (len(self._checkpoints) > self.checkpoint_count
               or sum(len(s) for _, s in self._checkpoints) > self.checkpoint_bytes):
            del self._checkpoints[0]
        return True

    @property
    def checkpoints(self) -> tuple[tuple[int, int], ...]:
        """(tokens, bytes) of each checkpoint kept, oldest first."""
        return tuple((len(held), len(state)) for held, state in self._checkpoints)

    def _save_snapshot(self) -> None:
        state = self.engine.snapshot(0)
        if state is not None:
            self._snapshot = (tuple(self._tokens), state)

    def decode(self, tokens: Sequence[int]) -> None:
        """Append tokens to the context in batches of n_batch; logits are kept for the last one only."""
        if len(self._tokens) + len(tokens) > self.n_ctx:
            raise ContextOverflowError(f"the context of {self.n_ctx} tokens is full: start a new conversation "
                                       "or load the model with a larger n_ctx")
        self._state_ok = False  # until llama.cpp returns: an interrupt in between leaves the state unknown
        self.engine.decode(tokens, len(self._tokens))
        self._tokens.extend(tokens)
        self._state_ok = True
        self.evaluated += len(tokens)

    def logits(self) -> np.ndarray:
        """A copy of the logits after the last evaluated token (numpy float32, n_vocab)."""
        return self.engine.logits(-1)

    def perf(self) -> tuple[int, int]:
        """llama.cpp's own counters since load: (tokens evaluated in batches, tokens evaluated one at a time)."""
        return self.engine.perf()


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
    lora: str | Path | Sequence[str | Path | tuple[str | Path, float]] | None = None,
) -> Model:
    """Open a GGUF for generation. Knobs left None come from the device profile, then from the defaults
    (n_ctx 4096, not the 128000 the metadata advertises; threads = the cores this process may use). `lora` applies
    GGUF LoRA adapters (`lfmq convert ADAPTER --base BASE --lora-out`): a path, or paths and (path, scale) pairs."""
    explicit = dict(n_ctx=n_ctx, threads=threads, n_batch=n_batch, n_ubatch=n_ubatch, use_mmap=use_mmap,
                    flash_attn=flash_attn, type_k=type_k, type_v=type_v, lora=lora_settings(lora) or None)
    knobs = {**profile_knobs(profile), **{k: v for k, v in explicit.items() if v is not None}}
    return Model(path, replace(Settings(), **knobs))


def lora_settings(lora: str | Path | Sequence[str | Path | tuple[str | Path, float]] | None) -> tuple[tuple[str, float], ...]:
    """(path, scale) pairs for Settings.lora from what a caller may pass; a missing file is an error here."""
    from lfmq.errors import ModelNotFoundError

    if lora is None:
        return ()
    items = [lora] if isinstance(lora, (str, Path)) else list(lora)
    pairs = []
    for item in items:
        path, scale = (item, 1.0) if isinstance(item, (str, Path)) else item
        if not Path(path).is_file():
            raise ModelNotFoundError(f"LoRA adapter {path} does not exist: make one with "
                                     "`lfmq convert ADAPTER --base BASE --lora-out`")
        pairs.append((str(path), float(scale)))
    return tuple(pairs)

