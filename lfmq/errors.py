"""The error tree: every failure a user can cause is an LfmqError with a message that says what to do."""

from __future__ import annotations


class LfmqError(Exception):
    """Base class: the CLI prints the message on one line and exits 1."""


class UsageError(LfmqError, ValueError):
    """Wrong flags or arguments: exit code 2."""

    exit_code = 2


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
