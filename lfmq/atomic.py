"""Outputs appear whole or not at all: write beside the target under a temporary name, rename at the end."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lfmq.errors import OutputExistsError


def check_target(out: Path, force: bool) -> None:
    """Refuse to overwrite an existing file without --force, or a folder ever."""
    if out.is_dir():
        raise OutputExistsError(f"{out} is a folder: give a file name for the output")
    if out.exists() and not force:
        raise OutputExistsError(f"{out} exists: pass --force to overwrite it")


@contextmanager
def atomic_path(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `out`; on success it replaces `out`, on any error it is removed."""
    out = Path(out)
    check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        yield tmp
        check_target(out, force)  # something may have appeared there while we worked
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
