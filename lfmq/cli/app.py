"""The Typer app every command registers on, the root options (--version), and `main`: the one error boundary.

The boundary: an LfmqError becomes one line on stderr and its class's exit code (2 for usage errors, 1 otherwise);
Typer's own usage errors exit 2; Ctrl-C exits 130; library warnings become `warning: ...` lines; anything else is a
bug and keeps its traceback. LFMQ_DEBUG=1 re-raises everything and leaves warnings as Python shows them."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Annotated, Any

import typer

from lfmq.errors import LfmqError

app = typer.Typer(
    help="LFM2 / LFM2.5 from Hugging Face checkpoints to fast, verified llama.cpp deployments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Interrupted(Exception):
    """A Ctrl-C that a command has described (what finished, where it is): the boundary warns and exits 130.

    Not a KeyboardInterrupt, which Typer turns into a bare exit code before the boundary sees it."""


def _version(value: bool) -> None:
    if value:
        from lfmq import __version__

        typer.echo(f"lfmq {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """LFM2 / LFM2.5 from Hugging Face checkpoints to fast, verified llama.cpp deployments."""


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    from lfmq import ui

    ui.warn(str(message))


def main() -> None:
    """Entry point: LfmqError -> one line on stderr and its exit code; LFMQ_DEBUG=1 keeps tracebacks."""
    debug = os.environ.get("LFMQ_DEBUG") == "1"
    if not debug:
        warnings.showwarning = _show_warning
    try:
        rc = app(standalone_mode=False)  # Typer returns (not raises) the code of an interrupt or typer.Exit
    except LfmqError as e:
        if debug:
            raise
        from lfmq import ui

        ui.error(str(e))
        sys.exit(e.exit_code)
    except Interrupted as e:
        from lfmq import ui

        ui.warn(str(e))
        sys.exit(130)
    except KeyboardInterrupt:
        if debug:
            raise
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except typer.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:
        # Typer's own usage errors (unknown option, missing argument) carry an exit code and can show themselves
        if hasattr(e, "show") and getattr(e, "exit_code", None) == 2 and not debug:
            e.show()
            sys.exit(2)
        raise
    if rc == 130:
        sys.stderr.write("interrupted\n")
    if rc:
        sys.exit(rc)
