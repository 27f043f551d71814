"""The text that imatrix and eval run over: a string given from Python, a user's UTF-8 file, or lfmq's own
(calibration.txt, eval.txt). One place says what is wrong with a file that is missing, unreadable or empty."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from lfmq.errors import InputError, ModelNotFoundError, UsageError


def read_text(path: str | Path) -> str:
    """The contents of a UTF-8 text file that holds some text."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelNotFoundError(f"text file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path} as UTF-8 text ({e})") from None
    if not text.strip():
        raise InputError(f"{path} is empty: give a file with some text")
    return text


def choose_text(text: str | None, file: str | Path | None, default: Callable[[], str]) -> str:
    """`text` as given, else the contents of `file`, else lfmq's own text."""
    if text is not None and file is not None:
        raise UsageError("give the text or a file to read it from, not both")
    if file is not None:
        return read_text(file)
    return default() if text is None else text
