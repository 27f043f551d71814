"""Train lfmq's tool-calling fixture: a tiny LFM2 (Lfm2ForCausalLM, conv and attention layers, LFM2.5's chat template
and special tokens) on the synthetic conversations of scripts/fixture_data.py, on CPU, in minutes.

    .venv/bin/python scripts/train_fixture.py -o tests/fixtures/lfm2-tools-tiny

writes config.json, model.safetensors (bf16), tokenizer.json, tokenizer_config.json and tasks.jsonl (held-out
cases from their own seed) into the folder. Progress checkpoints go to OUT/.train/ (not committed): run again with
--resume after an interruption. The tokenizer is a byte-level BPE trained on the generated text, laid out as
lfmq.convert.synth_vocab lays out LFM2's (special tokens at ids 0-13, LFM2's split, ByteLevel without a regex), so
`lfmq convert` accepts it and llama.cpp's `lfm2` pre-tokenizer splits text the same way. The loss covers the
assistant turns only."""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fixture_data as data  # noqa: E402

from lfmq.convert.synth import make_config  # noqa: E402
from lfmq.convert.synth_vocab import SPECIAL_TOKENS, _tokenizer_json, tokenizer_config  # noqa: E402
from lfmq.convert.vocab import LFM2_SPLIT  # noqa: E402
from lfmq.runtime.template import builtin_template, render  # noqa: E402

SPECIALS = {"bos_token": "<|startoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|pad|>"}
SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
TRAIN_SEED, TASK_SEED = 0, 1


def model_config(n_vocab: int, attention: tuple[int, ...] = (2, 4), layers: int = 6, hidden: int = 256,
                 ff: int = 384) -> dict[str, Any]:
    """LFM2.5's config.json dialect at fixture size: by default hidden 256 and FFN 256 (block_ff_dim 384, adjusted as
    LFM2's are), so that every weight row suits the k-quants' 256-value blocks."""
    cfg = make_config("tiny")
    cfg.update(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
               block_ff_dim=ff, block_multiple_of=256, vocab_size=n_vocab,
               layer_types=["full_attention" if i in attention else "conv" for i in range(layers)])
    cfg["lfmq_fixture"] = {"note": "TRAINED on synthetic tool-call and extraction conversations: a small trained model, "
                                   "not Liquid's; see README.md", "script": "scripts/train_fixture.py"}
    return cfg


# -- text -------------------------------------------------------------------------------------------------------------

def render_example(ex: data.Example, template: str) -> tuple[str, list[tuple[int, int]]]:
    """The conversation's text and the character spans of its assistant turns (content and <|im_end|>)."""
    msgs, spans = ex["messages"], []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        start = len(render(template, msgs[:i], tools=ex["tools"], add_generation_prompt=True, special_tokens=SPECIALS))
        spans.append((start, start + len(m["content"]) + len("<|im_end|>")))
    text = render(template, msgs, tools=ex["tools"], add_generation_prompt=False, special_tokens=SPECIALS)
    return text, spans


def train_tokenizer(texts: list[str], n_vocab: int) -> dict[str, Any]:
    """A byte-level BPE trained on the corpus, in lfmq's LFM2 tokenizer.json layout."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LFM2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=n_vocab, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # the special tokens are whole tokens, never material for merges
    tok.train_from_iterator((piece for t in texts for piece in SPECIAL_RE.split(t) if piece), trainer)
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    assert all(vocab[t] == i for i, t in enumerate(SPECIAL_TOKENS)), "special tokens must hold ids 0-13"
    merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
    return _tokenizer_json(vocab, merges)


def encode(tok: Any, text: str, spans: list[tuple[int, int]], max_len: int) -> tuple[list[int], list[int]] | None:
    """Token ids and labels (-100 outside the assistant turns); None if longer than max_len."""
    enc = tok.encode(text, add_special_tokens=False)
    if len(enc.ids) > max_len:
        return None
    labels = [t if any(a <= s < b for a, b in spans) else -100 for t, (s, _) in zip(enc.ids, enc.offsets)]
    return enc.ids, labels


# -- training ---------------------------------------------------------------------------------------------------------

def batches(items: list[tuple[list[int], list[int]]], size: int, rng: random.Random) -> list[list[int]]:
    """Indices in batches of similar length (sorted within windows of 16 batches), in random order."""
    order = list(range(len(items)))
    rng.shuffle(order)
    out = []
    for w in range(0, len(order), size * 16):
        window = sorted(order[w:w + size * 16], key=lambda i: len(items[i][0]))
        out += [window[k:k + size] for k in range(0, len(window), size)]
    rng.shuffle(out)
    return out


def collate(items: list[tuple[list[int], list[int]]], idx: list[int]) -> tuple[Any, Any]:
    import torch

    n = max(len(items[i][0]) for i in idx)
    # right padding needs no mask: attention is causal and the short conv looks only backwards
    ids = torch.zeros(len(idx), n, dtype=torch.long)
    labels = torch.full((len(idx), n), -100, dtype=torch.long)
    for row, i in enumerate(idx):
        a, b = items[i]
        ids[row, : len(a)] = torch.tensor(a)
        labels[row, : len(b)] = torch.tensor(b)
    return ids, labels


def loss_of(model: Any, ids: Any, labels: Any) -> tuple[Any, int, int]:
    import torch.nn.functional as F

    logits = model(input_ids=ids).logits[:, :-1]  # [B, T-1, V] predicts the next token
    target = labels[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=-100)
    mask = target != -100
    correct = int(((logits.argmax(-1) == target) & mask).sum())
    return loss, correct, int(mask.sum())


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def evaluate(model: Any, items: list, size: int) -> tuple[float, float]:
    import torch

    model.eval()
    total, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for k in range(0, len(items), size):
            idx = list(range(k, min(k + size, len(items))))
            loss, c, n = loss_of(model, *collate(items, idx))
            total += float(loss) * n
            correct, count = correct + c, count + n
    model.train()
    return total / count, correct / count


def train(args: argparse.Namespace, cfg: dict[str, Any], train_items: list, held_items: list, work: Path) -> Any:
    import torch
    from transformers import Lfm2Config, Lfm2ForCausalLM

    torch.manual_seed(args.seed)
    model = Lfm2ForCausalLM(Lfm2Config(**{k: v for k, v in cfg.items() if not k.startswith("lfmq_")}))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    step, rng, before = 0, random.Random(args.seed), 0.0
    plan: list[list[int]] = []  # the epoch's batches still to run (saved, so a resumed run sees the same batches)
    state = work / "state.pt"
    if args.resume and state.exists():
        saved = torch.load(state, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        step, rng, before = saved["step"], saved["rng"], saved["seconds"]
        plan = saved.get("plan", [])
        print(f"resumed at step {step}", flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params:,} parameters, {len(train_items)} training conversations", flush=True)
    model.train()
    started, seen = time.perf_counter(), 0
    while step < args.steps:
        if not plan:
            plan = batches(train_items, args.batch, rng)
        ids, labels = collate(train_items, plan.pop())
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        loss, _, _ = loss_of(model, ids, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step, seen = step + 1, seen + ids.numel()
        if step % 50 == 0:
            el = time.perf_counter() - started
            print(f"step {step} loss {float(loss):.4f} lr {opt.param_groups[0]['lr']:.2e} {seen / el:.0f} tok/s "
                  f"{el:.0f}s", flush=True)
        if step % args.save_every == 0 or step == args.steps:
            held_loss, held_acc = evaluate(model, held_items, args.batch)
            print(f"step {step} held-out loss {held_loss:.4f} next-token accuracy {held_acc:.4f}", flush=True)
            seconds = before + time.perf_counter() - started  # training time over all runs, evaluations included
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "rng": rng,
                        "seconds": seconds, "plan": plan}, state)
    return model, n_params, before + time.perf_counter() - started


def save_checkpoint(model: Any, cfg: dict[str, Any], tok_json: dict[str, Any], out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from lfmq.convert import arch as archs

    hp = archs.for_config(cfg).parse_hparams(cfg)
    shapes = archs.for_config(cfg).expected_shapes(hp, hp.n_ff)
    sd = model.state_dict()
    tensors = {name: sd[name].to(torch.bfloat16).contiguous() for name in shapes}
    for name, shape in shapes.items():
        assert tuple(tensors[name].shape) == tuple(shape), (name, tensors[name].shape, shape)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "model.safetensors").chmod(0o644)  # safetensors writes 0600
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(builtin_template()), indent=2,
                                                          ensure_ascii=False) + "\n")


def prepare(args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], list, list]:
    """The corpus, its tokenizer (kept in the work folder so an export between runs uses the same one) and the
    encoded conversations."""
    from tokenizers import Tokenizer

    t0 = time.perf_counter()
    template = builtin_template()
    corpus = data.examples(args.seed, args.conversations)
    rendered = [render_example(ex, template) for ex in corpus]
    saved = work / "tokenizer.json"
    if args.resume and saved.exists():
        tok_json = json.loads(saved.read_text())
    else:
        tok_json = train_tokenizer([t for t, _ in rendered], args.vocab)
        saved.write_text(json.dumps(tok_json, ensure_ascii=False))
    tok = Tokenizer.from_str(json.dumps(tok_json))
    items = [x for x in (encode(tok, t, s, args.max_len) for t, s in rendered) if x is not None]
    held = [x for x in (encode(tok, *render_example(ex, template), args.max_len)
                        for ex in data.examples(args.seed + 1000, 128)) if x is not None]
    lengths = sorted(len(a) for a, _ in items)
    print(f"data and tokenizer in {time.perf_counter() - t0:.0f}s: {len(items)} of {len(corpus)} conversations fit "
          f"{args.max_len} tokens, mean {sum(lengths) / len(lengths):.0f}, max {lengths[-1]}", flush=True)
    return tok_json, items, held


def export(args: argparse.Namespace, work: Path) -> None:
    """Write the checkpoint of the last saved training state, and the held-out task file, into args.out."""
    import torch
    from transformers import Lfm2Config, Lfm2ForCausalLM

    tok_json = json.loads((work / "tokenizer.json").read_text())
    cfg = model_config(len(tok_json["model"]["vocab"]), args.attention, args.layers, args.hidden, args.ff)
    model = Lfm2ForCausalLM(Lfm2Config(**{k: v for k, v in cfg.items() if not k.startswith("lfmq_")}))
    saved = torch.load(work / "state.pt", weights_only=False)
    model.load_state_dict(saved["model"])
    save_checkpoint(model, cfg, tok_json, args.out)
    cases = data.task_cases(args.task_seed, args.tasks)
    (args.out / "tasks.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in cases))
    print(f"exported step {saved['step']} to {args.out}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--out", type=Path, default=Path("tests/fixtures/lfm2-tools-tiny"))
    p.add_argument("--seed", type=int, default=TRAIN_SEED)
    p.add_argument("--task-seed", type=int, default=TASK_SEED)
    p.add_argument("--tasks", type=int, default=200, help="held-out task cases written to tasks.jsonl")
    p.add_argument("--conversations", type=int, default=24000)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--max-len", type=int, default=288)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=256, help="hidden size (a multiple of 256 suits every k-quant)")
    p.add_argument("--ff", type=int, default=384, help="block_ff_dim before LFM2's adjustment (2/3, to a multiple of 256)")
    p.add_argument("--attention", default="2,4", help="indices of the attention layers; the others are short-conv")
    p.add_argument("--resume", action="store_true", help="continue from OUT/.train/state.pt")
    p.add_argument("--export", action="store_true", help="only write the checkpoint of the last saved state")
    args = p.parse_args()
    args.attention = tuple(int(i) for i in args.attention.split(","))

    import torch

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    work = args.out / ".train"
    work.mkdir(parents=True, exist_ok=True)
    if args.export:
        export(args, work)
        return
    tok_json, items, held = prepare(args, work)
    cfg = model_config(len(tok_json["model"]["vocab"]), args.attention, args.layers, args.hidden, args.ff)
    _, n_params, seconds = train(args, cfg, items, held, work)
    export(args, work)
    summary = {"parameters": n_params, "steps": args.steps, "batch": args.batch, "lr": args.lr,
               "train_seconds": round(seconds), "seed": args.seed, "task_seed": args.task_seed,
               "conversations": len(items), "vocab": args.vocab, "layers": args.layers, "attention": list(args.attention), "hidden": args.hidden, "ff": args.ff,
               "threads": args.threads, "torch": torch.__version__}
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
