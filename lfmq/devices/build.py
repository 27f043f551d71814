"""`lfmq build PROFILE`: the llama.cpp lfmq pins, built for a device profile into a bundle: `lfmq-run` (lfmq's own
runner, lfmq/devices/native/), optionally llama.cpp's `llama-bench`, and `manifest.json` (profile, target, CPU flags,
toolchain, llama.cpp version, build seconds, each file's sha256).

Bundles are cached in ~/.cache/lfmq/builds/<profile>-<key>/, the key a hash of everything that changes the binary;
a second call is instant. Failures raise BuildError naming the step and the tool's last error line."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

from lfmq.devices.cpu_features import explain_sigill  # noqa: F401  (the transports look it up here)
from lfmq.devices.llama_src import LlamaSource, cache_root, llama_source
from lfmq.devices.profiles import BuildSpec, build_spec, get_profile
from lfmq.devices.toolchain import (Toolchain, cmake_args, find_toolchain, resolve_march, target_triple,
                                    write_zig_wrappers)
from lfmq.errors import BuildError, OutputExistsError
from lfmq.progress import Progress

RUNNER = "lfmq-run"
LLAMA_BENCH = "llama-bench"
MANIFEST = "manifest.json"
_PROGRESS = re.compile(r"^\[\s*(\d+)\s*/\s*(\d+)\s*\]|^\[\s*(\d+)%\]")


@dataclass(frozen=True)
class BuildResult:
    """A bundle: where it is, its manifest, whether it came from the cache, and how long this call took."""

    bundle: Path
    manifest: dict[str, Any]
    cached: bool
    seconds: float

    @property
    def runner(self) -> Path:
        return self.bundle / RUNNER


def build(profile: str, output: str | Path | None = None, *, force: bool = False, jobs: int | None = None,
          progress: Progress | None = None, llama_bench: bool = False, toolchain: str | None = None) -> BuildResult:
    """Build (or take from the cache) the bundle for a device profile; copy it to `output` when given. progress counts
    the compiler's steps as "compile"."""
    started = time.perf_counter()
    spec = build_spec(get_profile(profile))
    dest = _check_out(output, force)
    tc = find_toolchain(spec, toolchain)
    spec = resolve_march(spec, tc)
    src = llama_source()
    key, key_parts = cache_key(spec, tc, src, llama_bench)
    bundle = cache_root() / "builds" / f"{spec.profile}-{key}"
    work = _work_dir(bundle.parent, spec.profile, key_parts)
    with _lock(work.with_name(work.name + ".lock")):  # one compile per object tree at a time
        cached = (bundle / MANIFEST).is_file()
        if not cached:
            _compile(spec, tc, src, bundle, work, key, key_parts, jobs, progress, llama_bench)
    manifest = json.loads((bundle / MANIFEST).read_text())
    if dest is not None:
        _copy_bundle(bundle, dest)
        bundle = dest
    return BuildResult(bundle, manifest, cached, time.perf_counter() - started)


def runner_sources() -> dict[str, bytes]:
    """The runner's source files as shipped in the package (their hash is part of the cache key)."""
    folder = resources.files("lfmq.devices").joinpath("native")
    return {e.name: e.read_bytes() for e in sorted(folder.iterdir(), key=lambda e: e.name)
            if e.name.endswith((".cpp", ".txt", ".h"))}


def cache_key(spec: BuildSpec, tc: Toolchain, src: LlamaSource, llama_bench: bool = False
              ) -> tuple[str, dict[str, Any]]:
    """A short hash of everything that changes the bundle, and the parts it was made of (kept in the manifest)."""
    runner = hashlib.sha256()
    for name, data in runner_sources().items():
        runner.update(name.encode() + b"\0" + data)
    parts: dict[str, Any] = {
        "profile": spec.profile, "target": target_triple(spec, tc), "cpu": spec.cpu, "march": spec.march,
        "cflags": list(spec.cflags), "cmake_args": _stable_args(cmake_args(spec, tc, Path("/wrappers"))),
        "toolchain": f"{tc.name} {tc.version}", "cmake": tc.cmake_version,
        "llama_cpp": f"{src.binding_version} {src.commit} {src.ggml_version}",
        "runner_sha256": runner.hexdigest(), "llama_bench": llama_bench,
    }
    if spec.march == "native":  # a native build belongs to this CPU only
        parts["host_cpu"] = _host_cpu_id()
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12], parts


def _stable_args(args: list[str]) -> list[str]:
    return [a for a in args if not a.startswith(("-DCMAKE_C_COMPILER=", "-DCMAKE_CXX_COMPILER=", "-DCMAKE_AR=",
                                                  "-DCMAKE_RANLIB=", "-G"))]


def _host_cpu_id() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    lines = [line for line in text.splitlines() if line.split(":")[0].strip() in ("model name", "flags", "Features")]
    return hashlib.sha256("\n".join(sorted(set(lines))).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- the compile


def _work_dir(builds: Path, profile: str, key_parts: dict[str, Any]) -> Path:
    """The CMake tree, kept between builds and keyed without the runner: editing the runner (lfmq_run.cpp and its
    headers) recompiles one file, not llama.cpp."""
    objects = {k: v for k, v in key_parts.items() if k not in ("runner_sha256", "llama_bench")}
    return builds / f"{profile}-{hashlib.sha256(json.dumps(objects, sort_keys=True).encode()).hexdigest()[:12]}.work"


def _compile(spec: BuildSpec, tc: Toolchain, src: LlamaSource, bundle: Path, work: Path, key: str,
             key_parts: dict[str, Any], jobs: int | None, progress: Progress | None, llama_bench: bool) -> None:
    started = time.perf_counter()
    incremental = (work / "build" / "CMakeCache.txt").is_file()
    env = {**os.environ, "ZIG_GLOBAL_CACHE_DIR": str(cache_root() / "zig"),
           "ZIG_LOCAL_CACHE_DIR": str(work / "zig-local")}
    wrappers = write_zig_wrappers(work / "bin", tc.path, spec.target) if tc.name == "zig" else None
    # the runner's sources copied beside the tree: CMake refuses a kept build tree whose source folder moved (a
    # second checkout, CI's clone)
    native = work / "runner"
    native.mkdir(parents=True, exist_ok=True)
    for name, data in runner_sources().items():
        if not (native / name).is_file() or (native / name).read_bytes() != data:
            (native / name).write_bytes(data)
    cache = work / "build" / "CMakeCache.txt"
    if cache.is_file() and f"CMAKE_HOME_DIRECTORY:INTERNAL={native}\n" not in cache.read_text(errors="replace"):
        cache.unlink()  # configured from elsewhere: configure again, the objects stay
        shutil.rmtree(work / "build" / "CMakeFiles", ignore_errors=True)
    args = cmake_args(spec, tc, wrappers)
    configure = [tc.cmake, "-S", str(native), "-B", str(work / "build"), f"-DLLAMA_SRC={src.path}",
                 f"-DLFMQ_LLAMA_BENCH={'ON' if llama_bench else 'OFF'}", *args]
    if src.commit:
        configure.append(f"-DLLAMA_BUILD_COMMIT={src.commit}")
    _run("configure", configure, env, None)
    targets = [RUNNER, *([LLAMA_BENCH] if llama_bench else [])]
    n = jobs or len(os.sched_getaffinity(0))
    _run("compile", [tc.cmake, "--build", str(work / "build"), "--target", *targets, "-j", str(n)], env, progress)
    seconds = time.perf_counter() - started

    tmp = bundle.with_name(bundle.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {}
    for name in targets:
        found = _find_binary(work / "build", name)
        shutil.copy2(found, tmp / name)
        files[name] = {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
    manifest = _manifest(spec, tc, src, key, key_parts, args, files, seconds, n)
    manifest["incremental"] = incremental  # True: llama.cpp's objects came from an earlier build of this profile
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(bundle, ignore_errors=True)
    tmp.rename(bundle)


def _manifest(spec: BuildSpec, tc: Toolchain, src: LlamaSource, key: str, key_parts: dict[str, Any],
              args: list[str], files: dict[str, Any], seconds: float, jobs: int) -> dict[str, Any]:
    from lfmq import __version__

    return {
        "profile": spec.profile, "target": target_triple(spec, tc), "arch": spec.arch,
        "cpu": spec.cpu or spec.march, "march": spec.march, "cflags": list(spec.cflags),
        "requires": list(spec.requires), "qemu_cpu": spec.qemu_cpu,
        "toolchain": tc.describe(), "cmake_args": _stable_args(args),
        "llama_cpp": src.describe(), "llama_cpp_python": src.binding_version, "lfmq": __version__,
        "runner_sha256": key_parts["runner_sha256"], "key": key,
        "files": files, "seconds": round(seconds, 1), "jobs": jobs,
        "built_on": f"{platform.system()} {platform.machine()}", "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _find_binary(build_dir: Path, name: str) -> Path:
    for candidate in (build_dir / name, build_dir / "bin" / name, *build_dir.rglob(name)):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise BuildError(f"bundle: the build made no {name} in {build_dir}")


def _run(step: str, cmd: list[str], env: dict[str, str], progress: Progress | None) -> None:
    """Run a build tool, feeding its [n/N] or [ n%] lines to progress; on failure raise its last error line."""
    tail: deque[str] = deque(maxlen=200)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace", env=env, start_new_session=True)
    except OSError as e:
        raise BuildError(f"{step}: cannot run {cmd[0]}: {e}") from None
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            line = line.rstrip()
            tail.append(line)
            m = _PROGRESS.match(line)
            if m and progress:
                done, total = (int(m.group(1)), int(m.group(2))) if m.group(1) else (int(m.group(3)), 100)
                progress(step, done, total)
        rc = proc.wait()
    except BaseException:  # Ctrl-C: stop the whole tool tree (cmake, ninja, the compilers), not only cmake
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if rc != 0:
        raise BuildError(f"{step} failed ({Path(cmd[0]).name} exit {rc}): {last_error(list(tail))}")


def last_error(lines: list[str]) -> str:
    """The line that says what went wrong: the last one naming an error, else the last non-empty one."""
    text = [line.strip() for line in lines if line.strip()]
    for line in reversed(text):
        if re.search(r"\berror\b|error:|Error:|CMake Error|FAILED", line):
            return line
    return text[-1] if text else "no output"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """One build per key at a time (two test runs, or two terminals, share the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------- -o DIR


def _check_out(out: str | Path | None, force: bool) -> Path | None:
    if out is None:
        return None
    dest = Path(out)
    if dest.exists() and not dest.is_dir():
        raise OutputExistsError(f"{dest} exists and is not a folder: pass another -o")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise OutputExistsError(f"{dest} exists and is not empty: pass --force to write the bundle into it")
    return dest


def _copy_bundle(bundle: Path, dest: Path) -> None:
    """Copy the bundle's files into dest, each under a temporary name renamed at the end."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(bundle.iterdir()):
        tmp = dest / f".{f.name}.tmp-{os.getpid()}"
        shutil.copy2(f, tmp)
        tmp.replace(dest / f.name)


def load_manifest(bundle: str | Path) -> dict[str, Any]:
    """The manifest of a bundle folder."""
    path = Path(bundle) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BuildError(f"bundle: {path} is not a readable manifest: {e}") from None
