"""qemu:PROFILE: this machine running the profile's aarch64 build under qemu-user (Debian's `qemu-user`), with the
profile's CPU model, so a build that uses an instruction the device lacks dies with SIGILL here as it would there.
Emulation is about 35x slower than the device: runs here verify correctness, and their speed is never a device
figure (DeviceInfo.emulated is True)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from lfmq.devices.cpu_features import qemu_features
from lfmq.devices.profiles import ARM_FLAGS, get_profile
from lfmq.devices.qemu import QEMU, qemu_binary, qemu_command
from lfmq.devices.transport import DeviceInfo, LocalDevice
from lfmq.errors import UsageError


class QemuDevice(LocalDevice):
    """The profile's CPU emulated on this machine (the profile's build.qemu_cpu); files are used where they are."""

    kind = "qemu"
    emulated = True

    def __init__(self, profile: str, cpu: str | None = None) -> None:
        super().__init__()
        p = get_profile(profile)
        self.cpu = cpu or p.build.get("qemu_cpu")
        if p.arch not in QEMU or not self.cpu:
            raise UsageError(f"qemu:{profile}: {profile} is not a profile lfmq emulates (its build names no qemu CPU); "
                             "qemu:rpi5 and qemu:snapdragon-8-elite are")
        self.profile = p.name
        self.uri = f"qemu:{p.name}"
        self.arch = p.arch
        self._profile = p

    def command(self, argv: Sequence[str]) -> list[str]:
        program = Path(argv[0])
        manifest = program.parent / "manifest.json"
        if manifest.is_file():   # a bundle's program: the build engineer's command line, and its manifest
            self.manifest = self.manifest or json.loads(manifest.read_text())
            return qemu_command(program.parent, [program.name, *argv[1:]], self.cpu)
        return [qemu_binary(self.arch), "-cpu", self.cpu, *argv]

    def describe(self) -> DeviceInfo:
        host = super().describe()
        p = self._profile
        flags = qemu_features(self.cpu)
        return DeviceInfo(self.uri, self.kind, p.arch, f"{p.cpu.get('model', p.title)} (emulated: qemu -cpu "
                          f"{self.cpu} on {host.cpu_model})", host.cores, sorted({ARM_FLAGS[f] for f in flags
                                                                                   if f in ARM_FLAGS}), flags,
                          host.mem_total_bytes, host.mem_available_bytes, host.work_dir, host.free_bytes, True,
                          {"qemu_cpu": self.cpu, "host_arch": host.arch})
