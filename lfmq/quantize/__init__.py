"""GGUF -> quantized GGUF through llama.cpp's quantizer, importance matrices and measured quality."""

from __future__ import annotations

from lfmq.quantize.quantize import QuantizeError, QuantizeResult, quantize
from lfmq.quantize.types import LADDER

__all__ = ["LADDER", "QuantizeError", "QuantizeResult", "quantize"]
