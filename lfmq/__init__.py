"""lfmq: Liquid AI LFM2 / LFM2.5 from Hugging Face checkpoints to verified llama.cpp deployments."""

from __future__ import annotations

__version__ = "0.1.0"

from lfmq.convert import ConvertResult, convert
from lfmq.convert.synth import SynthResult, synth
from lfmq.errors import LfmqError
from lfmq.inspect import GGUFInfo, inspect
from lfmq.runtime import (Chat, Extraction, Model, Reply, ToolCall, chat, extract, extract_many, generate, load,
                          parse_reply, stream_generate)

__all__ = ["ConvertResult", "GGUFInfo", "LfmqError", "SynthResult", "__version__", "convert", "inspect", "synth",
           "Chat", "Extraction", "Model", "Reply", "ToolCall", "chat", "extract", "extract_many", "generate", "load",
           "parse_reply", "stream_generate"]
