"""qemu:PROFILE: this machine running the profile's aarch64 build under qemu-user (Debian's `qemu-user`), with the
profile's CPU model, so a build that uses an instruction the device lacks dies with SIGILL here as it would there.
Emulation is about 35x slower than the device: runs here verify correctness, and their speed is never a device
figure (DeviceInfo.emulated is True)."""

from __future__ import annotations

import shutil
from typing import Sequence

from lfmq.devices.profiles import get_profile
from lfmq.devices.transport import DeviceInfo, LocalDevice
from lfmq.errors import DeviceError, UsageError

# qemu 7.2's CPU model per profile: the Pi 5's own core; no named model has i8mm, so the phone gets `max`
QEMU_CPU = {"rpi5": "cortex-a76", "snapdragon-8-elite": "max"}
QEMU = {"aarch64": "qemu-aarch64"}


class QemuDevice(LocalDevice):
    """The profile's CPU emulated on this machine; files are used where they are."""

    kind = "qemu"
    emulated = True

    def __init__(self, profile: str, cpu: str | None = None) -> None:
        super().__init__()
        p = get_profile(profile)
        if p.arch not in QEMU:
            raise UsageError(f"qemu:{profile}: qemu runs the builds of {', '.join(sorted(QEMU))} profiles, and "
                             f"{profile} is {p.arch}: run it with --device local")
        self.profile = p.name
        self.uri = f"qemu:{p.name}"
        self.cpu = cpu or p.build.get("qemu_cpu") or QEMU_CPU.get(p.name, "max")
        self.qemu = QEMU[p.arch]
        self._profile = p

    def command(self, argv: Sequence[str]) -> list[str]:
        if not shutil.which(self.qemu):
            raise DeviceError(f"{self.qemu} is not installed: apt-get install qemu-user")
        return [self.qemu, "-cpu", self.cpu, *argv]

    def describe(self) -> DeviceInfo:
        host = super().describe()
        p = self._profile
        return DeviceInfo(self.uri, self.kind, p.arch, f"{p.cpu.get('model', p.title)} (emulated: {self.qemu} -cpu "
                          f"{self.cpu} on {host.cpu_model})", host.cores, sorted(p.features), [],
                          host.mem_total_bytes, host.mem_available_bytes, host.work_dir, host.free_bytes, True,
                          {"qemu_cpu": self.cpu, "host_arch": host.arch})
