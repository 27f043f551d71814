"""The one error tree: every failure a user can cause is an LfmqError whose message says what is wrong and what to
do next. Each class also derives from the stdlib type a caller would expect, so `except ValueError` still works.

The CLI's boundary prints the message on one line and exits with the class's `exit_code`: 2 for usage errors (the
command line itself is wrong), 1 for everything else."""

from __future__ import annotations


class LfmqError(Exception):
    """Base class: the CLI prints the message on one line and exits 1."""

    exit_code = 1


class UsageError(LfmqError, ValueError):
    """Wrong flags or arguments on the command line (or the same mistake through the Python API): exit code 2."""

    exit_code = 2


class InputError(LfmqError, ValueError):
    """An input whose content cannot be used: an empty or too short text, a profile or report that does not parse,
    models that do not share a vocabulary."""


class ModelNotFoundError(LfmqError, FileNotFoundError):
    """A model folder, repo id or file that cannot be found."""


class UnsupportedModelError(LfmqError, ValueError):
    """A checkpoint lfmq cannot convert faithfully (architecture, option or tokenizer)."""


class CheckpointError(LfmqError, ValueError):
    """A checkpoint whose files are missing, corrupt or disagree with its config."""


class GGUFFileError(LfmqError, ValueError):
    """A file that is not a readable GGUF model."""


class OutputExistsError(LfmqError, FileExistsError):
    """An output path that exists and would be overwritten without --force."""


class LlamaError(LfmqError, RuntimeError):
    """llama.cpp refused an operation (load, context, decode, grammar, quantize); the message carries its log."""


class LibraryMismatchError(LfmqError, RuntimeError):
    """The compiled llama.cpp is not the one lfmq was written against (a struct of another size or version)."""


class StateError(LfmqError, RuntimeError):
    """An object used in a state that does not allow it: a closed model, two generations interleaved on one model."""


class QuantizeError(LlamaError):
    """llama.cpp's quantizer refused or failed."""


class ImatrixError(LfmqError, ValueError):
    """An importance matrix that is unreadable or made for another model."""


class BenchError(LfmqError, RuntimeError):
    """A benchmark case failed."""


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


class RequestError(LfmqError, ValueError):
    """A request to `lfmq serve` that cannot be served as sent (bad JSON or field, a prompt longer than the context):
    HTTP 400 with OpenAI's error shape. param names the field at fault, code is OpenAI's code where it has one."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code


class ExtractionFailed(LfmqError):
    """Some inputs of an extraction batch failed; their lines carry the reason."""


class DeviceError(LfmqError, RuntimeError):
    """A device that cannot be reached, refuses the run, lacks room or lacks the CPU features a build needs."""


class DeviceInterrupted(DeviceError):
    """Ctrl-C during a device run: what ran on the device has been stopped (exit 130, as for any Ctrl-C)."""

    exit_code = 130


class BuildError(LfmqError, RuntimeError):
    """A cross-build of llama.cpp for a device failed; the message names the step and the tool's last line."""


class LfmqWarning(UserWarning):
    """Something the user should know that does not stop the work (e.g. a GGUF without a chat template)."""
