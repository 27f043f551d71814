"""Which CPU features a bundle needs and which a CPU has, so that a SIGILL (a build run on a CPU that lacks its
instructions) becomes one line naming the missing features and the profile whose build fits.

A device's features come from the `Features` (Arm) or `flags` (x86) line of its /proc/cpuinfo. Under qemu-user,
/proc/cpuinfo shows the host's, so the emulated CPU models' features come from QEMU_CPUS instead."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any, Iterable

from lfmq.errors import DeviceError

# qemu-user 7.2's CPU models as the emulated program sees them: getauxval(AT_HWCAP/AT_HWCAP2) under
# `qemu-aarch64 -cpu MODEL`, in /proc/cpuinfo's spelling (tests/test_build.py measures them again)
QEMU_CPUS: dict[str, tuple[str, ...]] = {
    "cortex-a53": ("fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32", "cpuid"),
    "cortex-a57": ("fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32", "cpuid"),
    "cortex-a72": ("fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32", "cpuid"),
    "cortex-a76": ("fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp", "asimdhp", "cpuid",
                   "asimdrdm", "lrcpc", "dcpop", "asimddp"),
    "neoverse-n1": ("fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp", "asimdhp", "cpuid",
                    "asimdrdm", "lrcpc", "dcpop", "asimddp"),
    "a64fx": ("fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp", "asimdhp", "cpuid",
              "asimdrdm", "fcma", "dcpop", "sve"),
    "max": ("fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp", "asimdhp", "cpuid", "asimdrdm",
            "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4", "asimddp", "sha512", "sve", "asimdfhm", "ilrcpc",
            "flagm", "sb", "paca", "pacg", "dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4",
            "flagm2", "frint", "svei8mm", "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16", "rng", "bti", "mte",
            "sme"),
}


def is_sigill(rc: int) -> bool:
    """A process killed by SIGILL: -4 from subprocess, 132 (128 + 4) through a shell."""
    return rc in (-signal.SIGILL, 128 + signal.SIGILL)


def qemu_features(cpu: str) -> list[str]:
    """The features qemu-user's CPU model `cpu` exposes (/proc/cpuinfo spelling)."""
    if cpu not in QEMU_CPUS:
        raise DeviceError(f"unknown qemu CPU model {cpu!r}: lfmq knows {', '.join(QEMU_CPUS)}")
    return list(QEMU_CPUS[cpu])


def cpuinfo_flags(text: str) -> list[str]:
    """The first Features/flags line of a /proc/cpuinfo text."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("features", "flags"):
            return value.split()
    return []


def missing_features(manifest: dict[str, Any], features: Iterable[str]) -> list[str]:
    """The features a bundle requires that a CPU lacks, in the manifest's order."""
    have = set(features)
    return [f for f in manifest.get("requires", []) if f not in have]


def fitting_profiles(features: Iterable[str], arch: str) -> list[str]:
    """Profiles of `arch` whose build this CPU can run, the most demanding build first."""
    from lfmq.devices.profiles import build_spec, builtin_profiles

    have = set(features)
    specs = []
    for p in builtin_profiles().values():
        if p.arch != arch or "target" not in p.build:
            continue
        spec = build_spec(p)
        if set(spec.requires) <= have:
            specs.append(spec)
    return [s.profile for s in sorted(specs, key=lambda s: (-len(s.requires), s.profile))]


def sigill_message(manifest: dict[str, Any], features: Iterable[str], cpu: str) -> str:
    """Why a bundle died with SIGILL on `cpu`, and which profile's build to use instead."""
    features = list(features)
    profile = manifest.get("profile", "?")
    lacking = missing_features(manifest, features)
    if lacking:
        why = f"the {profile} build needs {', '.join(lacking)}, which {cpu} lacks"
    else:
        why = (f"the {profile} build (-march {manifest.get('cpu', '?')}) uses an instruction {cpu} lacks, though "
               "it has every feature the profile lists")
    fits = [p for p in fitting_profiles(features, manifest.get("arch", "aarch64")) if p != profile]
    hint = f"build for a profile that fits: lfmq build {fits[0]}" if fits else "no built-in profile fits this CPU"
    return f"{why}; {hint}"


def sigill_error(program: str, manifest: dict[str, Any], features: Iterable[str], cpu: str) -> DeviceError:
    return DeviceError(f"{program} died with SIGILL (illegal instruction) on {cpu}: "
                       f"{sigill_message(manifest, features, cpu)}")


def explain_sigill(device: Any, manifest: dict[str, Any] | None = None) -> str | None:
    """For lfmq.devices.transport: the reason a bundle died with SIGILL on `device` (the part after the colon), or
    None when the build or the device's features are unknown. The device's CPU: its qemu model (`qemu_cpu` or
    `cpu` attribute) or its /proc/cpuinfo flags; the build: `manifest`, the device's `manifest`/`bundle`, or the
    cached build of its profile."""
    manifest = manifest or getattr(device, "manifest", None) or _bundle_manifest(getattr(device, "bundle", None))
    if manifest is None and getattr(device, "profile", None):
        manifest = cached_manifest(device.profile)
    if not manifest:
        return None
    qemu_cpu = getattr(device, "qemu_cpu", None) or getattr(device, "cpu", None)
    if isinstance(qemu_cpu, str) and qemu_cpu in QEMU_CPUS:
        return sigill_message(manifest, QEMU_CPUS[qemu_cpu], f"qemu's {qemu_cpu}")
    try:
        info = device.describe()
    except Exception:  # noqa: BLE001  (a device that cannot describe itself gets the generic hint)
        return None
    return sigill_message(manifest, info.flags, info.cpu_model or "this CPU")


def cached_manifest(profile: str) -> dict[str, Any] | None:
    """The manifest of the newest cached build of a profile, if any."""
    from lfmq.devices.llama_src import cache_root

    found = sorted((cache_root() / "builds").glob(f"{profile}-{'?' * 12}/manifest.json"), key=lambda p: p.stat().st_mtime)
    return _bundle_manifest(found[-1].parent) if found else None


def _bundle_manifest(bundle: str | Path | None) -> dict[str, Any] | None:
    if not bundle:
        return None
    try:
        return json.loads((Path(bundle) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
