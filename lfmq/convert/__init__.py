"""HF checkpoint (local folder or Hub repo id) -> GGUF, torch-free and streaming."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from lfmq.atomic import atomic_path, check_target
from lfmq.convert import arch as archs
from lfmq.convert.safetensors import SafetensorsReader
from lfmq.convert.source import Checkpoint, resolve
from lfmq.convert.tensors import OUTTYPES, plan, resolve_outtype
from lfmq.convert.vocab import load_vocab, write_vocab
from lfmq.convert.writer import Progress, Provenance, write_general, write_gguf
from lfmq.errors import UsageError

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


def default_output(ckpt: Checkpoint, outtype: str) -> Path:
    stem = ckpt.repo_id.split("/")[-1] if ckpt.repo_id else ckpt.folder.name
    return Path.cwd() / f"{stem}-{outtype.upper()}.gguf"


def _model_name(ckpt: Checkpoint) -> str:
    return ckpt.repo_id.split("/")[-1] if ckpt.repo_id else ckpt.folder.name


def convert(
    src: str | Path,
    out: str | Path | None = None,
    *,
    outtype: str = "auto",
    revision: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> ConvertResult:
    """Convert an LFM2 / LFM2.5 checkpoint to GGUF; cheap checks (flags, config, headers, shapes) come before any data."""
    from lfmq import __version__

    if outtype.lower() not in ("auto", *OUTTYPES):
        raise UsageError(f"unknown --outtype {outtype!r}: choose auto, {', '.join(OUTTYPES)}")
    if out is not None:
        check_target(Path(out), force)
    started = time.perf_counter()
    ckpt = resolve(src, revision, check=_check_config)
    arch = archs.for_config(ckpt.config)
    hp = arch.parse_hparams(ckpt.config)
    with SafetensorsReader(ckpt.weight_files()) as reader:
        kind = resolve_outtype(outtype, reader)
        plans = plan(arch, hp, reader, kind)
        vocab = load_vocab(ckpt.folder, hp.n_vocab, ckpt.config)
        target = Path(out) if out is not None else default_output(ckpt, kind)
        n_params = sum(p.n_params for p in plans)
        n_ff = next((p.shape[0] for p in plans if p.src.endswith("feed_forward.w1.weight")), hp.n_ff)
        synthetic = ckpt.config.get(SYNTHETIC_CONFIG_KEY)
        prov = Provenance(
            name=_model_name(ckpt),
            size_label=gguf.size_label(n_params, 0, 0, 0),
            source=ckpt.origin,
            repo_id=ckpt.repo_id,
            revision=ckpt.revision,
            synthetic=_synthetic_note(synthetic),
            version=__version__,
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
        warnings=_warnings(vocab),
    )


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
