"""Shared by the transport tests: a shell script that stands in for lfmq-run (its JSON-lines contract, a slow run to
interrupt, a SIGILL), and a look at the process table to prove that nothing is left running."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

# lfmq-run's contract in miniature: `bench` prints one JSON line, `generate` token events then done, `fail` an error
# event and exit 1; `sleep MARKER` prints ready and waits in a child process (not exec: its child must be stopped
# too), `sigill` dies the way a build with a missing instruction does, `slow` prints two lines 0.6 s apart.
RUNNER = r"""#!/bin/sh
mode=$1; shift
case "$mode" in
bench) echo '{"samples_ns": [1000, 1100], "load_ms": 1.5, "ttft_ms": 2.0, "settings": {"n_prompt": 8}, "runner": "stand-in"}' ;;
generate) n=$1; i=0
    while [ $i -lt "$n" ]; do echo "{\"event\": \"token\", \"id\": $i, \"text\": \"t$i\"}"; i=$((i+1)); done
    echo '{"event": "done", "tokens": [0, 1, 2], "ttft_ms": 1.0, "tg_tps": 10.0, "vmhwm": 1024}' ;;
fail) echo "llama.cpp log line" >&2; echo '{"event": "error", "message": "cannot load model"}'; exit 1 ;;
sleep) echo ready; sleep "$1"; echo woke ;;
sigill) echo ready; kill -ILL $$ ;;
slow) echo one; sleep 0.6; echo two ;;
exit) echo "log to stderr" >&2; exit "$1" ;;
*) echo "unknown mode $mode" >&2; exit 2 ;;
esac
"""


def write_runner(folder: Path, name: str = "lfmq-run") -> Path:
    path = folder / name
    path.write_text(RUNNER)
    path.chmod(0o755)
    return path


def marker() -> str:
    """A sleep length no other process on this machine uses, to find the runner's child in the process table."""
    return f"{3000 + time.time_ns() % 997}.{time.time_ns() % 100_000:05d}"


def running(pattern: str) -> list[str]:
    """Command lines of live processes that contain pattern (zombies have no command line and do not count)."""
    out = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def wait_gone(pattern: str, seconds: float = 3.0) -> list[str]:
    """Processes still running after waiting up to `seconds` for them to go (an empty list: nothing left)."""
    end = time.monotonic() + seconds
    while (left := running(pattern)) and time.monotonic() < end:
        time.sleep(0.1)
    return left


def ctrl_c_on(wanted: str) -> Callable[[str], None]:
    """An on_line callback that, once `wanted` arrives, sends this process SIGINT as a terminal's Ctrl-C would
    (the device's client runs in its own session, so the signal reaches lfmq alone, which must stop the rest)."""

    def on_line(line: str) -> None:
        if line == wanted:
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()

    return on_line
