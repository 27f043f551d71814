"""On-device generation through llama-cpp-python: load a GGUF, stream tokens, chat with tools, extract JSON.

Nothing here imports llama_cpp, jinja2 or jsonschema until it is used."""

from __future__ import annotations

from lfmq.runtime.chat import Chat, ChatStats, Reply, chat, stream_chat
from lfmq.runtime.extract import ExtractSummary, Extraction, Schema, extract, extract_files, extract_many, load_schema
from lfmq.runtime.generate import Chunk, Generation, Sampling, Stats, generate, stream_generate
from lfmq.runtime.model import Model, load
from lfmq.runtime.tools import ToolCall, format_calls, parse_calls, parse_reply

__all__ = [
    "Chat", "ChatStats", "Chunk", "ExtractSummary", "Extraction", "Generation", "Model", "Reply", "Sampling", "Schema", "Stats",
    "ToolCall", "chat", "extract", "extract_files", "extract_many", "format_calls", "generate", "load", "load_schema",
    "parse_calls", "parse_reply", "stream_chat", "stream_generate",
]
