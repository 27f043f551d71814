"""HF checkpoint (local folder or Hub repo id) -> GGUF, torch-free and streaming."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gguf

from lfmq.atomic import atomic_path, check_target
from lfmq.convert import arch as archs
from lfmq.convert.safetensors import SafetensorsReader
from lfmq.convert.source import Checkpoint, resolve
from lfmq.convert.lora import WEIGHTS, Adapter, base_warnings, check_base, is_adapter, load_adapter
from lfmq.convert.tensors import OUTTYPES, TensorPlan, plan, resolve_outtype
from lfmq.convert.vocab import load_vocab, write_vocab
from lfmq.convert.writer import Provenance, write_general, write_gguf
from lfmq.errors import UsageError
from lfmq.progress import Progress

SYNTHETIC_CONFIG_KEY = "lfmq_synthetic"  # set in config.json by `lfmq synth`


@dataclass(frozen=True)
class ConvertResult:
    """What `convert` wrote."""

    path: Path
    source: str
    outtype: str
    tensors: int
    parameters: int
    bytes: int
    seconds: float
    synthetic: bool
    warnings: tuple[str, ...] = ()
    lora: str | None = None  # the LoRA adapter merged into the model (--lora), or written as a GGUF adapter (--lora-out)


def default_output(ckpt: Checkpoint, outtype: str) -> Path:
    stem = ckpt.repo_id.split("/")[-1] if ckpt.repo_id else ckpt.folder.name
    return Path.cwd() / f"{stem}-{outtype.upper()}.gguf"


def _model_name(ckpt: Checkpoint) -> str:
    return ckpt.repo_id.split("/")[-1] if ckpt.repo_id else ckpt.folder.name


def convert(
    src: str | Path,
    output: str | Path | None = None,
    *,
    outtype: str = "auto",
    revision: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    lora: str | Path | None = None,
    base: str | Path | None = None,
    lora_out: bool = False,
) -> ConvertResult:
    """Convert an LFM2 / LFM2.5 checkpoint to GGUF; cheap checks (flags, config, headers, shapes) come before any data.

    With `lora`, a PEFT LoRA adapter folder is merged into the weights as they stream. With `base` and `lora_out`,
    `src` is the adapter and the output is a GGUF LoRA adapter for that base (`base` without `lora_out` merges)."""
    from lfmq import __version__

    if outtype.lower() not in ("auto", *OUTTYPES):
        raise UsageError(f"unknown --outtype {outtype!r}: choose auto, {', '.join(OUTTYPES)}")
    src, lora = _lora_roles(src, lora, base, lora_out)
    if lora_out:
        from lfmq.convert.lora_gguf import convert_adapter

        return convert_adapter(lora, src, output, outtype=outtype, revision=revision, force=force, progress=progress)
    if output is not None:
        check_target(Path(output), force)
    started = time.perf_counter()
    adapter = load_adapter(lora) if lora is not None else None  # its own checks come before the base's weights
    ckpt = resolve(src, revision, check=_check_config)
    arch = archs.for_config(ckpt.config)
    hp = arch.parse_hparams(ckpt.config)
    with SafetensorsReader(ckpt.weight_files()) as reader:
        kind = resolve_outtype(outtype, reader)
        plans = plan(arch, hp, reader, kind)
        if adapter is not None:
            plans = _merge(adapter, arch, plans)
        vocab = load_vocab(ckpt.folder, hp.n_vocab, ckpt.config)
        target = Path(output) if output is not None else default_output(ckpt, kind)
        n_params = sum(p.n_params for p in plans)
        n_ff = next((p.shape[0] for p in plans if p.src.endswith("feed_forward.w1.weight")), hp.n_ff)
        synthetic = ckpt.config.get(SYNTHETIC_CONFIG_KEY)
        prov = Provenance(
            name=_model_name(ckpt),
            size_label=_size_label(plans),
            source=ckpt.origin,
            repo_id=ckpt.repo_id,
            revision=ckpt.revision,
            synthetic=_synthetic_note(synthetic),
            version=__version__,
            lora=adapter.folder.name if adapter else None,
        )
        writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[arch.GGUF_ARCH])
        write_general(writer, prov, OUTTYPES[kind][1])
        arch.write_hparams(writer, hp, n_ff)
        write_vocab(writer, vocab)
        with atomic_path(target, force) as tmp:
            size = write_gguf(writer, tmp, reader, plans, progress)
    return ConvertResult(
        path=target.resolve(),
        source=ckpt.origin,
        outtype=kind,
        tensors=len(plans),
        parameters=n_params,
        bytes=size,
        seconds=time.perf_counter() - started,
        synthetic=bool(synthetic),
        warnings=_warnings(vocab) + (base_warnings(adapter, ckpt) if adapter else ()),
        lora=adapter.folder.name if adapter else None,
    )


def _lora_roles(src: str | Path, lora: str | Path | None, base: str | Path | None,
                lora_out: bool) -> tuple[str | Path, str | Path | None]:
    """(base checkpoint, adapter) from the three ways of naming them; one clear usage error otherwise."""
    if base is not None:
        if lora is not None:
            raise UsageError("name the adapter once: either `convert ADAPTER --base BASE` or `convert BASE --lora ADAPTER`")
        return base, src
    if lora_out:
        raise UsageError("--lora-out writes a GGUF adapter for a base model: pass --base BASE, the checkpoint the "
                         "adapter was trained on")
    if lora is None and is_adapter(src) and not (Path(src) / "config.json").exists():
        raise UsageError(f"{src} is a LoRA adapter, not a model: pass --base BASE (add --lora-out for a GGUF adapter, "
                         "leave it out to merge the adapter into the base)")
    return src, lora


def _merge(adapter: Adapter, arch, plans: list[TensorPlan]) -> list[TensorPlan]:
    """The plans with the adapter's low-rank updates attached, after checking every module against the base."""
    shapes = {p.src: p.shape for p in plans}
    check_base(adapter, arch.ARCHITECTURES[0], shapes, tied="lm_head.weight" not in shapes)
    with SafetensorsReader([adapter.folder / WEIGHTS]) as reader:
        deltas = adapter.deltas(reader)
    return [replace(p, delta=deltas[p.src]) if p.src in deltas else p for p in plans]


def _size_label(plans: list[TensorPlan]) -> str:
    """gguf's size label: "769M" for a dense model; "16x191M" (experts x one expert plus the shared weights) for a MoE,
    as llama.cpp's converter counts them."""
    total = sum(p.n_params for p in plans)
    stacked = [p for p in plans if p.parts]
    if not stacked:
        return gguf.size_label(total, 0, 0, 0)
    n_expert = len(stacked[0].parts)
    expert = sum(p.n_params for p in stacked) // n_expert
    return gguf.size_label(total, total - expert * n_expert, expert, n_expert)


def _check_config(cfg: dict[str, Any]) -> None:
    """Everything config.json alone can refuse, before a Hub repo's weights are downloaded."""
    archs.for_config(cfg).parse_hparams(cfg)


def _warnings(vocab) -> tuple[str, ...]:
    if vocab.special.chat_template is None:
        return ("the checkpoint has no chat template, so the GGUF has none; llama-cpp-python would fall back to the "
                "llama-2 format (lfmq's runtime uses its built-in LFM2.5 template instead)",)
    return ()


def _synthetic_note(marker: Any) -> str | None:
    if not marker:
        return None
    preset = marker.get("preset", "?") if isinstance(marker, dict) else "?"
    return f"lfmq synthetic checkpoint ({preset}): RANDOM WEIGHTS, shape-exact for speed and memory tests; it knows no language"
