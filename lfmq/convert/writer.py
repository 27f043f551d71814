"""Write the GGUF: metadata and tensor index first, then the tensors one chunk at a time, to a temporary file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from lfmq.convert.safetensors import SafetensorsReader
from lfmq.convert.tensors import TensorPlan, chunks
from lfmq.errors import CheckpointError
from lfmq.progress import Progress

# lfmq's own provenance keys (gguf has no standard key for the converter or for random weights)
KEY_LFMQ_VERSION = "lfmq.version"
KEY_LFMQ_SOURCE = "lfmq.source"
KEY_LFMQ_REVISION = "lfmq.source.revision"
KEY_LFMQ_SYNTHETIC = "lfmq.synthetic"
KEY_LFMQ_LORA = "lfmq.lora"            # a model: the LoRA adapter merged into it; an adapter: the adapter itself
KEY_LFMQ_LORA_BASE = "lfmq.lora.base"  # an adapter: the base model it was checked against
# lfmq quantize --recipe auto: the recipe, its budget, its KLD on the calibration text, and its --tensor-type lines
KEY_LFMQ_RECIPE = "lfmq.recipe"
KEY_LFMQ_RECIPE_BUDGET = "lfmq.recipe.budget"
KEY_LFMQ_RECIPE_KLD = "lfmq.recipe.calibration_kld"
KEY_LFMQ_RECIPE_TYPES = "lfmq.recipe.tensor_types"  # .count, then .0, .1 ... in order


@dataclass(frozen=True)
class Provenance:
    name: str
    size_label: str
    source: str
    repo_id: str | None
    revision: str | None
    synthetic: str | None  # a sentence saying the weights are random, or None
    version: str
    lora: str | None = None  # the adapter merged into the weights


def write_general(writer: gguf.GGUFWriter, prov: Provenance, file_type: gguf.LlamaFileType) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(prov.name)
    writer.add_size_label(prov.size_label)
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if prov.repo_id:
        writer.add_string(gguf.Keys.General.SOURCE_URL, f"https://huggingface.co/{prov.repo_id}")
    writer.add_string(KEY_LFMQ_VERSION, prov.version)
    writer.add_string(KEY_LFMQ_SOURCE, prov.source)
    if prov.revision:
        writer.add_string(KEY_LFMQ_REVISION, prov.revision)
    if prov.synthetic:
        writer.add_bool(KEY_LFMQ_SYNTHETIC, True)
        writer.add_description(prov.synthetic)
    if prov.lora:
        writer.add_string(KEY_LFMQ_LORA, prov.lora)


def write_gguf(
    writer: gguf.GGUFWriter,
    path: Path,
    reader: SafetensorsReader,
    plans: list[TensorPlan],
    progress: Progress | None = None,
) -> int:
    """Stream every planned tensor into `path` after the metadata already added to `writer`; returns bytes written.
    progress counts bytes of "weights"."""
    for p in plans:
        # the writer reverses the torch-order shape into GGUF order itself
        writer.add_tensor_info(p.name, p.shape, np.dtype(np.float32), p.nbytes, raw_dtype=p.qtype)
    total = sum(p.nbytes for p in plans)
    done = 0
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    assert writer.fout is not None
    out = writer.fout[0]
    try:
        writer.write_padding(out, out.tell())
        for p in plans:
            written = 0
            for part in chunks(reader, p):
                data = memoryview(np.ascontiguousarray(part)).cast("B")
                out.write(data)
                written += len(data)
                if progress:
                    progress("weights", done + written, total)
            if written != p.nbytes:
                raise CheckpointError(f"tensor {p.src} produced {written} bytes, expected {p.nbytes}")
            writer.write_padding(out, written)
            done += written
        out.flush()
        size = out.tell()
    finally:
        writer.close()
    return size
