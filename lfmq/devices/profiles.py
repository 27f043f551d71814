"""Device profiles: data files (profiles/*.toml) plus `host`, built at run time from this machine."""

from __future__ import annotations

import os
import platform
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lfmq.errors import InputError, UsageError

HOST = "host"
# cpuinfo flag -> the feature name profiles use (x86 flags are mostly the same words; Arm's differ)
ARM_FLAGS = {"asimd": "neon", "asimddp": "dotprod", "fphp": "fp16", "asimdhp": "fp16", "i8mm": "i8mm",
             "bf16": "bf16", "sve": "sve", "aes": "crypto", "lrcpc": "rcpc"}
X86_FLAGS = {"avx2": "avx2", "fma": "fma", "f16c": "f16c", "avx512f": "avx512f", "avx512bw": "avx512bw",
             "avx512vl": "avx512vl", "avx512_vnni": "avx512_vnni", "avx512_bf16": "avx512_bf16",
             "avx_vnni": "avx_vnni", "amx_int8": "amx"}


@dataclass(frozen=True)
class Published:
    """A figure someone published for a model on this device, with its conditions and source."""

    model: str
    decode_tps: float | None = None
    prefill_tps: float | None = None
    memory_mb: float | None = None
    quant: str | None = None
    engine: str = ""
    conditions: str = ""
    source: str = ""


@dataclass(frozen=True)
class Profile:
    """What lfmq knows about a device: CPU, memory, how to build for it, how to run on it, published figures."""

    name: str
    title: str
    kind: str
    cpu: dict[str, Any]
    memory: dict[str, Any]
    build: dict[str, Any]
    runtime: dict[str, Any]
    recommend: dict[str, Any]
    published: list[Published] = field(default_factory=list)
    # factors measured on the device itself (lfmq devices calibrate REPORT.json): they replace the fitted ones
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return self.cpu["arch"]

    @property
    def features(self) -> set[str]:
        return set(self.cpu.get("features", []))

    @property
    def bandwidth_gbs(self) -> float:
        return float(self.memory["bandwidth_gbs"])


def _from_dict(d: dict[str, Any]) -> Profile:
    pub = [Published(**p) for p in d.get("published", []) if "model" in p]
    return Profile(d["name"], d["title"], d.get("kind", ""), d["cpu"], d["memory"], d.get("build", {}),
                   d.get("runtime", {}), d.get("recommend", {}), pub, d.get("calibration", {}))


def profile_file(path: Path) -> Profile | None:
    """A device profile from a .toml or .json file that describes one (a [cpu] and a [memory] table, as
    `lfmq devices calibrate` writes); None for a file of runtime knobs only; InputError for one that does not
    parse."""
    import json

    try:
        text = path.read_text(encoding="utf-8")
        d = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read profile {path}: {e}") from None
    if not (isinstance(d, dict) and isinstance(d.get("cpu"), dict) and isinstance(d.get("memory"), dict)):
        return None
    try:
        return _from_dict(d)
    except (KeyError, TypeError) as e:
        raise InputError(f"{path} is not a device profile: {e} is missing or wrong (lfmq devices show rpi5 --json "
                         "shows the shape)") from None


def builtin_profiles() -> dict[str, Profile]:
    folder = resources.files("lfmq.devices").joinpath("profiles")
    out = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            p = _from_dict(tomllib.loads(entry.read_text(encoding="utf-8")))
            out[p.name] = p
    return out


def cpuinfo(path: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """Model name, logical CPUs and ISA features of this machine, from /proc/cpuinfo."""
    text = path.read_text() if path.exists() else ""
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags |= set(value.split())
        elif key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
    arch = platform.machine()
    table = ARM_FLAGS if arch in ("aarch64", "arm64") else X86_FLAGS
    return {"model": model or arch, "arch": "aarch64" if arch == "arm64" else arch,
            "features": sorted({table[f] for f in flags if f in table}), "cores": len(os.sched_getaffinity(0))}


def _max_ghz() -> float:
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except (OSError, ValueError):
        return 3.0  # virtual machines often hide the clock: a typical server value


def _mem_total_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return 0.0


def host_profile(bandwidth_gbs: float | None = None) -> Profile:
    """This machine as a profile: its CPU and memory, default runtime knobs, no published figures."""
    info = cpuinfo()
    threads = info["cores"]
    return Profile(
        name=HOST, title=f"this machine: {info['model']}", kind="host",
        cpu={**info, "isa": info["arch"], "lacks": [], "frequency_ghz": _max_ghz(), "fma_units": 2,
             "simd_bits": 512 if "avx512f" in info["features"] else 256 if "avx2" in info["features"] else 128},
        memory={"size_gb": _mem_total_gb(), "bandwidth_gbs": bandwidth_gbs or 0.0,
                "bandwidth_source": "measured on this machine (lfmq devices show host)" if bandwidth_gbs else "not measured"},
        build={"cmake_args": "-DGGML_NATIVE=ON", "notes": "native build (scripts/install-llama-cpp-python.sh)",
               **_host_build(info["arch"])},
        # no mmap (no second, file-backed copy beside the repacked weights) and ubatch 128 (a quarter of the compute
        # buffer): on the synthetic 350M Q4_0 at n_ctx 4096, peak 2.42x the file -> 1.64x at the same generation speed.
        # A q8_0 KV cache would save 24 MiB more but cost 4% of tg here (benchmarks/bench_vs_llama_bench.py).
        runtime={"threads": threads, "n_batch": 2048, "n_ubatch": 128, "use_mmap": False, "flash_attn": True,
                 "type_k": "f16", "type_v": "f16", "n_ctx": 4096},
        recommend={"types": ["Q4_0", "Q8_0"], "reason": "the repacked CPU kernels make Q4_0 the fastest decode"},
    )


def _host_build(arch: str) -> dict[str, Any]:
    """`lfmq build host`: gcc with -march=native; on x86 minus AMX, whose matmul in this llama.cpp segfaults on
    quantized weights (see scripts/install-llama-cpp-python.sh)."""
    extra = ["-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"] if arch == "x86_64" else []
    return {"target": f"{arch}-linux-gnu", "toolchain": "gcc", "march": "native", "cflags": extra, "requires": []}


@dataclass(frozen=True)
class BuildSpec:
    """What `lfmq build PROFILE` makes (the profile's [build] table): a target triple, the toolchain that builds it,
    the CPU to tune for in the toolchain's spelling, the qemu CPU model that runs it, and the /proc/cpuinfo features
    the binary needs."""

    profile: str
    arch: str
    target: str                  # aarch64-linux-musl, x86_64-linux-gnu
    toolchain: str               # zig (cross, from PyPI) or gcc (this machine's)
    cpu: str = ""                # zig's CPU spelling (zig reads -march/-mcpu as CPU names)
    march: str = ""              # gcc/clang's -march (gcc builds, Debian's aarch64 gcc, the NDK route)
    march_fallback: str = ""     # for a compiler that does not know march (gcc 12.2 and znver4)
    qemu_cpu: str | None = None  # qemu-user's -cpu for this build
    requires: tuple[str, ...] = ()  # /proc/cpuinfo flags
    cflags: tuple[str, ...] = ()
    android_abi: str | None = None
    android_platform: str | None = None

    @property
    def cross(self) -> bool:
        return self.toolchain != "gcc" or self.march != "native"


TOOLCHAINS = ("zig", "gcc")


def build_spec(p: Profile) -> BuildSpec:
    """The profile's build table, checked: a known toolchain, a CPU for it, and no required feature the profile
    says the device lacks (an SVE build for a chip without SVE would die with SIGILL there)."""
    b = p.build
    where = f"profile {p.name}: [build]"
    if "target" not in b:
        raise InputError(f"{where} has no target: lfmq cannot build for it")
    toolchain = b.get("toolchain", "")
    if toolchain not in TOOLCHAINS:
        raise InputError(f"{where} toolchain {toolchain!r} is not one of {', '.join(TOOLCHAINS)}")
    if toolchain == "zig" and not b.get("cpu"):
        raise InputError(f"{where} needs cpu, zig's CPU spelling (e.g. generic+v8_2a+dotprod+fullfp16)")
    if toolchain == "gcc" and not b.get("march"):
        raise InputError(f"{where} needs march for gcc (e.g. native, znver4)")
    requires = tuple(b.get("requires", []))
    table = ARM_FLAGS if p.arch == "aarch64" else X86_FLAGS
    clash = sorted({table.get(f, f) for f in requires} & set(p.cpu.get("lacks", [])))
    if clash:
        raise InputError(f"{where} requires {', '.join(clash)}, which the device lacks (cpu.lacks)")
    return BuildSpec(p.name, p.arch, b["target"], toolchain, b.get("cpu", ""), b.get("march", ""),
                     b.get("march_fallback", ""), b.get("qemu_cpu"), requires, tuple(b.get("cflags", [])),
                     b.get("android_abi"), b.get("android_platform"))


def get_profile(name: str) -> Profile:
    """A built-in profile by name, `host`, or a device profile file (.toml/.json, e.g. one `lfmq devices calibrate`
    wrote)."""
    if name == HOST:
        return host_profile()
    if name.endswith((".toml", ".json")) and Path(name).is_file():
        p = profile_file(Path(name))
        if p is None:
            raise UsageError(f"{name} holds runtime knobs, not a device profile (no [cpu] and [memory] tables)")
        return p
    profiles = builtin_profiles()
    if name not in profiles:
        raise UsageError(f"unknown device profile {name!r}: choose from {', '.join([*profiles, HOST])}")
    return profiles[name]


@dataclass(frozen=True)
class Detection:
    """Which profile this machine is closest to, and what it lacks of that profile's CPU features."""

    host: dict[str, Any]
    best: str | None
    matches: dict[str, list[str]]   # profile -> features it has that this machine lacks
    system_info: str


def detect() -> Detection:
    """Match this machine against every profile of its architecture by ISA features."""
    host = cpuinfo()
    have = set(host["features"])
    matches = {p.name: sorted(p.features - have) for p in builtin_profiles().values() if p.arch == host["arch"]}
    best = min(matches, key=lambda n: (len(matches[n]), n)) if matches else None
    return Detection(host, best, matches, _system_info())


def _system_info() -> str:
    from lfmq.errors import LibraryMismatchError
    from lfmq.llama.binding import system_info

    try:
        return system_info()
    except LibraryMismatchError as e:
        return str(e)
