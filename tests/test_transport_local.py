"""The local device, device URIs, and what a device says about itself: /proc texts as a Pi 5, a phone and an x86 box
print them."""

from __future__ import annotations

import pytest

from device_helpers import ctrl_c_on, marker, wait_gone, write_runner
from lfmq.devices.transport import (DeviceInfo, LocalDevice, match_profile, parse_cpuinfo, parse_device, parse_df,
                                    parse_meminfo)
from lfmq.errors import DeviceError, UsageError

PI5 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU part\t: 0xd0b

processor\t: 1
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU part\t: 0xd0b

Revision\t: d04170
Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""
PHONE = "processor\t: 0\nFeatures\t: fp asimd aes asimddp i8mm bf16 fphp asimdhp lrcpc\nCPU part\t: 0x001\n"
X86 = "processor\t: 0\nmodel\t\t: 68\nmodel name\t: AMD Ryzen AI 9 HX 370\nflags\t\t: fpu sse2 avx2 fma f16c avx512f\n"


@pytest.mark.parametrize("text, arch, model, cores, features", [
    (PI5, "aarch64", "Raspberry Pi 5 Model B Rev 1.0 (Cortex-A76)", 2, ["crypto", "dotprod", "fp16", "neon", "rcpc"]),
    (PHONE, "aarch64", "Oryon", 1, ["bf16", "crypto", "dotprod", "fp16", "i8mm", "neon", "rcpc"]),
    (X86, "x86_64", "AMD Ryzen AI 9 HX 370", 1, ["avx2", "avx512f", "f16c", "fma"]),
    ("", "aarch64", "aarch64", 0, []),
])
def test_parse_cpuinfo(text, arch, model, cores, features):
    got = parse_cpuinfo(text, arch)
    assert (got["cpu_model"], got["cores"], got["features"]) == (model, cores, features)


def _info(text: str) -> DeviceInfo:
    cpu = parse_cpuinfo(text, "aarch64")
    return DeviceInfo("x", "ssh", "aarch64", cpu["cpu_model"], 1, cpu["features"], cpu["flags"], 0, 0, "/", 0)


def test_match_profile_by_what_the_build_requires():
    assert match_profile(_info(PI5)) == "rpi5"
    assert match_profile(_info(PHONE)) == "snapdragon-8-elite"
    assert match_profile(_info("Features\t: fp asimd\n")) is None


def test_parse_meminfo_and_df():
    assert parse_meminfo("MemTotal:  8000 kB\nMemFree: 100 kB\nMemAvailable:  6000 kB\n") == (8000 * 1024, 6000 * 1024)
    assert parse_meminfo("MemTotal:  8000 kB\nMemFree: 100 kB\n") == (8000 * 1024, 100 * 1024)   # an old kernel
    df = "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/block/dm-48 115000 1000 2048 1% /data\n"
    assert parse_df(df) == 2048 * 1024
    with pytest.raises(DeviceError, match="could not read the free space"):
        parse_df("df: /nope: No such file or directory")


@pytest.mark.parametrize("uri", ["usb://phone", "adb-R5CX1", "sh://pi", "qemu:"])
def test_unknown_device_is_a_usage_error(uri):
    with pytest.raises(UsageError):
        parse_device(uri)


def test_local_default_run_sigill_and_interrupt(tmp_path):
    dev = parse_device(None)
    assert isinstance(dev, LocalDevice) and dev.uri == "local"
    runner = dev.ensure(write_runner(tmp_path))
    assert runner == str(tmp_path / "lfmq-run") and dev.describe().mem_available_bytes > 0
    assert dev.run([runner, "generate", "1"])[0] == 0
    with pytest.raises(DeviceError, match=r"^lfmq-run died with SIGILL \(illegal instruction\) on local: "):
        dev.run([runner, "sigill"])
    tag = marker()
    with pytest.raises(DeviceError, match=r"^interrupted: stopped lfmq-run on local$"):
        dev.run([runner, "sleep", tag], on_line=ctrl_c_on("ready"))
    assert wait_gone(tag) == []
    with pytest.raises(DeviceError, match="no such file to run with"):
        dev.ensure(tmp_path / "nope")
