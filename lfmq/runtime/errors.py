"""Runtime errors: members of lfmq's one error tree (LfmqError), kept beside the code that raises them."""

from __future__ import annotations

from lfmq.errors import LfmqError


class ContextOverflowError(LfmqError, ValueError):
    """A prompt or message that does not fit the context window."""


class TemplateError(LfmqError, ValueError):
    """A chat template that does not compile or that refuses the messages it is given."""


class SchemaError(LfmqError, ValueError):
    """A JSON schema that cannot be read, is not valid JSON Schema, or cannot become a grammar."""


class ToolCallError(LfmqError, ValueError):
    """Text that is not a well-formed list of Pythonic tool calls."""


class ToolsFileError(LfmqError, ValueError):
    """A tools file that cannot be read or holds no function definitions."""


class RuntimeFailure(LfmqError, RuntimeError):
    """llama.cpp refused an operation (load, decode, grammar); the message carries its log."""


class ExtractionFailed(LfmqError):
    """Some inputs of an extraction batch failed; their lines carry the reason."""


class LfmqWarning(UserWarning):
    """Something the user should know that does not stop the work (e.g. a GGUF without a chat template)."""
