"""qemu:PROFILE devices run aarch64 programs under the real qemu-user with the profile's CPU model. The programs are
hand-assembled static ELF files written at test time (tests/aarch64_elf.py), so no cross toolchain is needed; an
i8mm instruction dies with SIGILL under the Pi 5's Cortex-A76 and runs under the phone's `max`."""

from __future__ import annotations

import os
import shutil

import pytest

from aarch64_elf import write_program
from device_helpers import ctrl_c_on, wait_gone
from lfmq.devices.transport import check_fits, match_profile, parse_device
from lfmq.errors import DeviceError, UsageError

pytestmark = pytest.mark.skipif(not shutil.which("qemu-aarch64") and not os.environ.get("CI"),
                                reason="needs qemu-user (apt-get install qemu-user)")


def test_describe_is_the_profile_emulated():
    dev = parse_device("qemu:rpi5")
    info = dev.describe()
    assert (dev.cpu, info.arch, info.emulated, dev.profile) == ("cortex-a76", "aarch64", True, "rpi5")
    assert info.features == ["crypto", "dotprod", "fp16", "neon", "rcpc"] and "emulated" in info.cpu_model
    assert match_profile(info) == "rpi5"
    assert parse_device("qemu:snapdragon-8-elite").cpu == "max"


@pytest.mark.parametrize("uri", ["qemu:ryzen-ai-max-395", "qemu:host", "qemu:nope"])
def test_qemu_needs_an_aarch64_profile(uri):
    with pytest.raises(UsageError):
        parse_device(uri)


def test_runs_a_program_and_streams(tmp_path):
    prog = write_program(tmp_path, "hello")
    dev = parse_device("qemu:rpi5")
    got = []
    assert dev.run([dev.ensure(prog)], on_line=got.append) == (0, ["ready"]) and got == ["ready"]


def test_i8mm_is_sigill_on_the_pi_and_runs_on_the_phone(tmp_path):
    prog = write_program(tmp_path, "i8mm")
    with pytest.raises(DeviceError, match=r"^aarch64-i8mm died with SIGILL \(illegal instruction\) on qemu:rpi5: "):
        parse_device("qemu:rpi5").run([str(prog)])
    assert parse_device("qemu:snapdragon-8-elite").run([str(prog)]) == (0, ["ready"])


def test_interrupt_stops_qemu(tmp_path):
    prog = write_program(tmp_path, "sleep")
    with pytest.raises(DeviceError, match=r"^interrupted: stopped aarch64-sleep on qemu:rpi5$"):
        parse_device("qemu:rpi5").run([str(prog)], on_line=ctrl_c_on("ready"))
    assert wait_gone(str(prog)) == []


@pytest.mark.parametrize("available, predicted, fits", [(2 << 30, 1 << 30, True), (1 << 30, 1 << 30, True),
                                                         (512 << 20, 719 << 20, False)])
def test_check_fits(available, predicted, fits):
    if fits:
        check_fits(available, predicted, "ssh://pi")
        return
    with pytest.raises(DeviceError) as e:
        check_fits(available, predicted, "ssh://pi")
    assert str(e.value) == ("the model does not fit in ssh://pi's memory: it needs about 719 MiB, 512 MiB are "
                            "available; pick a smaller quantization or context, or close programs on the device")


# ---------------------------------------------------------------------------------------------- the real bundles

@pytest.fixture(scope="module")
def arm_bundles():
    """The Pi 5 and Snapdragon bundles (cached in ~/.cache/lfmq/builds: tests/test_build.py builds them first)."""
    from lfmq.devices.build import build

    return {name: build(name) for name in ("rpi5", "snapdragon-8-elite")}


def test_real_runner_under_qemu(arm_bundles, small_f16):
    dev = parse_device("qemu:rpi5")
    runner = dev.ensure_bundle(arm_bundles["rpi5"])["lfmq-run"]
    assert runner == str(arm_bundles["rpi5"].runner)   # nothing is copied on this machine
    tokens = []
    events = dev.run_json([runner, "generate", "-m", dev.ensure(small_f16), "--tokens", "1,6,1500,220", "-n", "3",
                           "-t", "2", "-c", "256", "--ignore-eos"], on_event=lambda e: tokens.append(e.get("id")))
    assert events[-1]["event"] == "done" and tokens[:3] == events[-1]["tokens"]


def test_phone_build_on_the_pi_cpu_names_the_missing_features(arm_bundles, small_f16):
    dev = parse_device("qemu:rpi5")
    runner = dev.ensure_bundle(arm_bundles["snapdragon-8-elite"])["lfmq-run"]
    with pytest.raises(DeviceError) as e:
        dev.run([runner, "generate", "-m", str(small_f16), "--tokens", "1,6", "-n", "2", "-t", "2", "-c", "256"])
    assert str(e.value) == ("lfmq-run died with SIGILL (illegal instruction) on qemu:rpi5: the snapdragon-8-elite "
                            "build needs i8mm, bf16, which qemu's cortex-a76 lacks; build for a profile that fits: "
                            "lfmq build rpi5")
