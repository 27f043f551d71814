"""`lfmq convert ADAPTER --base BASE --lora-out`: a PEFT LoRA adapter as a GGUF LoRA adapter that llama.cpp applies at
run time (`--lora`, `lfmq.load(..., lora=...)`).

The file llama.cpp's adapter loader reads: general.type `adapter`, general.architecture the base's, adapter.type `lora`,
adapter.lora.alpha, and per adapted weight `<gguf name>.lora_a` (A, [r, in] in torch order) and `.lora_b` (B,
[out, r]); llama.cpp scales B @ A by alpha / r with r taken from each B."""

from __future__ import annotations

import time
from pathlib import Path

import gguf

from lfmq.atomic import atomic_path, check_target
from lfmq.convert import ConvertResult, _check_config
from lfmq.convert import arch as archs
from lfmq.convert.lora import WEIGHTS, Adapter, base_warnings, check_base, load_adapter, uniform_alpha
from lfmq.convert.safetensors import SafetensorsReader
from lfmq.convert.source import Checkpoint, resolve
from lfmq.convert.tensors import CHECKPOINT_OUTTYPE, OUTTYPES, TensorPlan, _gguf_name, _tensor_type, plan
from lfmq.convert.writer import KEY_LFMQ_LORA, KEY_LFMQ_LORA_BASE, KEY_LFMQ_SOURCE, KEY_LFMQ_VERSION, write_gguf
from lfmq.errors import UsageError
from lfmq.progress import Progress


def convert_adapter(
    adapter_dir: str | Path,
    base: str | Path,
    output: str | Path | None = None,
    *,
    outtype: str = "auto",
    revision: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> ConvertResult:
    """Write a PEFT LoRA adapter as a GGUF LoRA adapter for `base`, after checking every module against the base."""
    from lfmq import __version__

    if output is not None:
        check_target(Path(output), force)
    started = time.perf_counter()
    adapter = load_adapter(adapter_dir)
    ckpt = resolve(base, revision, check=_check_config, config_only=True)
    arch = archs.for_config(ckpt.config)
    hp = arch.parse_hparams(ckpt.config)
    _check_against_base(adapter, arch, hp, ckpt)
    alpha = uniform_alpha(adapter)
    kind = _outtype(outtype, adapter)
    name_map = gguf.TensorNameMap(arch.GGUF_ARCH, hp.n_layer)
    plans = []
    for m in adapter.modules:
        target = _gguf_name(name_map, m.weight)
        for src, suffix, shape in ((m.a, ".lora_a", (m.rank, m.shape[1])), (m.b, ".lora_b", (m.shape[0], m.rank))):
            plans.append(TensorPlan(src, target + suffix, shape, _tensor_type(name_map, target + suffix, shape, kind)))
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[arch.GGUF_ARCH])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(adapter.folder.name)
    writer.add_file_type(int(OUTTYPES[kind][1]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_string(KEY_LFMQ_VERSION, __version__)
    writer.add_string(KEY_LFMQ_SOURCE, adapter.folder.name)
    writer.add_string(KEY_LFMQ_LORA, adapter.folder.name)
    writer.add_string(KEY_LFMQ_LORA_BASE, ckpt.origin)
    target = Path(output) if output is not None else Path.cwd() / f"{adapter.folder.name}-LoRA-{kind.upper()}.gguf"
    with SafetensorsReader([adapter.folder / WEIGHTS]) as reader, atomic_path(target, force) as tmp:
        size = write_gguf(writer, tmp, reader, plans, progress)
    return ConvertResult(
        path=target.resolve(), source=adapter.folder.name, outtype=kind, tensors=len(plans),
        parameters=sum(p.n_params for p in plans), bytes=size, seconds=time.perf_counter() - started,
        synthetic=False, warnings=base_warnings(adapter, ckpt), lora=adapter.folder.name,
    )


def _check_against_base(adapter: Adapter, arch, hp, ckpt: Checkpoint) -> None:
    """Against the base's real tensor shapes when its weights are at hand, else against those its config implies."""
    if any(ckpt.folder.glob("*.safetensors")):
        with SafetensorsReader(ckpt.weight_files()) as reader:
            plans = plan(arch, hp, reader, "f32")  # headers only
        shapes = {p.src: p.shape for p in plans}
        check_base(adapter, arch.ARCHITECTURES[0], shapes, tied="lm_head.weight" not in shapes)
        return
    shapes = arch.expected_shapes(hp, hp.n_ff)
    if hp.tied is False:
        shapes["lm_head.weight"] = (hp.n_vocab, hp.n_embd)
    check_base(adapter, arch.ARCHITECTURES[0], shapes, hp.n_ff_candidates, tied=hp.tied is not False)


def _outtype(outtype: str, adapter: Adapter) -> str:
    outtype = outtype.lower()
    if outtype == "auto":
        return CHECKPOINT_OUTTYPE[adapter.dtype]
    if outtype not in OUTTYPES:
        raise UsageError(f"unknown --outtype {outtype!r}: choose auto, {', '.join(OUTTYPES)}")
    return outtype
