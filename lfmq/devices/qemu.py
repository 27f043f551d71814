"""Run a bundle's program under qemu-user with a chosen CPU model: the aarch64 builds checked on this machine.

qemu enforces the CPU model's features: a build that needs i8mm dies with SIGILL under `-cpu cortex-a76`, as it
would on a Pi 5; qemu_run turns that into a DeviceError naming the missing feature. Emulation is about 35x slower
than the device: runs under qemu check correctness, never speed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from lfmq.devices.cpu_features import QEMU_CPUS, is_sigill, sigill_error
from lfmq.errors import DeviceError

QEMU = {"aarch64": "qemu-aarch64", "x86_64": "qemu-x86_64"}


def qemu_binary(arch: str = "aarch64") -> str:
    """The qemu-user binary for an architecture, or a DeviceError saying how to install it."""
    name = QEMU.get(arch)
    found = shutil.which(name) if name else None
    if not found:
        raise DeviceError(f"{name or 'qemu-' + arch} is not installed: apt-get install qemu-user "
                          "(scripts/install-system-deps.sh does it)")
    return found


def qemu_command(bundle: str | Path, argv: Sequence[str], cpu: str | None = None) -> list[str]:
    """The command line that runs `argv` (argv[0] a program of the bundle, e.g. lfmq-run) under qemu-user with CPU
    model `cpu` (default: the build's own qemu_cpu from its manifest)."""
    from lfmq.devices.build import load_manifest

    manifest = load_manifest(bundle)
    cpu = cpu or manifest.get("qemu_cpu")
    if not cpu:
        raise DeviceError(f"the {manifest.get('profile')} build is not for qemu (its manifest names no qemu CPU)")
    if cpu not in QEMU_CPUS:
        raise DeviceError(f"unknown qemu CPU model {cpu!r}: lfmq knows {', '.join(QEMU_CPUS)}")
    program = Path(bundle) / argv[0]
    if not program.is_file():
        raise DeviceError(f"the bundle {bundle} has no {argv[0]}")
    return [qemu_binary(manifest.get("arch", "aarch64")), "-cpu", cpu, str(program), *argv[1:]]


def qemu_run(bundle: str | Path, argv: Sequence[str], cpu: str | None = None, *, timeout: float | None = None,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a bundle's program under qemu-user and return the finished process (text stdout/stderr). A SIGILL raises
    DeviceError naming the features the build needs that `cpu` lacks and the profile whose build fits; other
    exit codes are the caller's to read (lfmq-run prints its own error as a JSON line)."""
    from lfmq.devices.build import load_manifest

    cmd = qemu_command(bundle, argv, cpu)
    cpu = cmd[2]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DeviceError(f"{argv[0]} under qemu -cpu {cpu} did not finish within {timeout:.0f} s") from None
    if is_sigill(proc.returncode):
        raise sigill_error(argv[0], load_manifest(bundle), QEMU_CPUS[cpu], f"qemu's {cpu}")
    return proc
