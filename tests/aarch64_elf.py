"""Tiny static aarch64 Linux programs written as bytes at test time, so that qemu-user can be tested without a cross
toolchain: an ELF header, one loadable segment, a handful of hand-encoded instructions and Linux syscalls.

    hello   writes "ready\\n", exits 0
    i8mm    executes one SMMLA (an i8mm instruction: SIGILL on a Cortex-A76), then as hello
    sleep   writes "ready\\n", sleeps 60 s (nanosleep), exits 0"""

from __future__ import annotations

import struct
from pathlib import Path

BASE = 0x400000
CODE = 64 + 56            # the code follows the ELF header and the one program header
SYS_WRITE, SYS_EXIT, SYS_NANOSLEEP = 64, 93, 101
SMMLA_V0_V1_V2 = 0x4E82A420  # smmla v0.4s, v1.16b, v2.16b
MSG = b"ready\n"


def movz(reg: int, imm: int) -> int:
    return 0xD2800000 | (imm << 5) | reg


def adr(reg: int, offset: int) -> int:
    return 0x10000000 | ((offset & 3) << 29) | (((offset >> 2) & 0x7FFFF) << 5) | reg


SVC0 = 0xD4000001


def program(kind: str) -> bytes:
    """The bytes of a static aarch64 ELF executable of the given kind."""
    pre = [SMMLA_V0_V1_V2] if kind == "i8mm" else []
    sleep = kind == "sleep"
    # the data (message, then a timespec) sits right after the code; ADR offsets are computed from there
    n = len(pre) + 5 + (4 if sleep else 0) + 3
    data = CODE + 4 * n
    code = list(pre)
    at = CODE + 4 * (len(code) + 1)   # the address of the ADR below
    code += [movz(0, 1), adr(1, data - at), movz(2, len(MSG)), movz(8, SYS_WRITE), SVC0]
    if sleep:
        at = CODE + 4 * len(code)
        code += [adr(0, data + 8 - at), movz(1, 0), movz(8, SYS_NANOSLEEP), SVC0]
    code += [movz(0, 0), movz(8, SYS_EXIT), SVC0]
    assert len(code) == n
    body = b"".join(struct.pack("<I", i) for i in code) + MSG.ljust(8, b"\0") + struct.pack("<qq", 60, 0)
    size = CODE + len(body)
    ehdr = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, 2, 183, 1, BASE + CODE, 64, 0, 0,
                       64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 7, 0, BASE, BASE, size, size, 0x1000)
    return ehdr + phdr + body


def write_program(folder: Path, kind: str) -> Path:
    path = folder / f"aarch64-{kind}"
    path.write_bytes(program(kind))
    path.chmod(0o755)
    return path
