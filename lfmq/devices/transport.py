"""Devices as a URI: where a build runs, how files reach it, and how a run is stopped.

    local                      this machine (the default)
    ssh://[user@]host[:port]   the system ssh, so ~/.ssh/config aliases, keys, ports and agents work as ssh does
    adb[:SERIAL]               an Android device through Debian's adb client, in /data/local/tmp/lfmq
    qemu:PROFILE               this machine, the profile's aarch64 build under qemu-user with the profile's CPU model

Every failure a user can meet is a one-line `DeviceError`. Files are pushed into a content-addressed cache on the
device (`<cache>/<sha256>/<name>`) only when that sha256 is missing, written under a temporary name and renamed, so
an interrupted push never leaves a file that looks complete. Everything a Device starts it stops: an interrupted run
kills the local client and then the process on the device, found through the pid file its wrapper wrote."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import signal
import subprocess
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from lfmq.devices.cpu_features import explain_sigill, fitting_profiles, is_sigill
from lfmq.devices.profiles import ARM_FLAGS, X86_FLAGS
from lfmq.errors import DeviceError, DeviceInterrupted, UsageError
from lfmq.progress import Progress  # noqa: F401  (transport_remote takes it from here)

LineCallback = Callable[[str], None]
STOP_GRACE_S = 3.0                            # SIGTERM, then SIGKILL after this long
SIGILL_HINT = "the build uses instructions this CPU lacks: build for the device's profile"
# Arm cores by the "CPU part" of /proc/cpuinfo, for devices whose cpuinfo has no model name (a Pi says only 0xd0b)
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76",
             "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510",
             "0xd47": "Cortex-A710", "0xd48": "Cortex-X2", "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3",
             "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4", "0x001": "Oryon"}


@dataclass(frozen=True)
class DeviceInfo:
    """What a device says about itself: its CPU (from /proc/cpuinfo), memory (/proc/meminfo) and the free space of
    the folder lfmq pushes into."""

    uri: str
    kind: str                    # local, ssh, adb, qemu
    arch: str                    # uname -m
    cpu_model: str
    cores: int
    features: list[str]          # in the names profiles use (dotprod, i8mm, avx2, ...)
    flags: list[str]             # the raw Features/flags line
    mem_total_bytes: int
    mem_available_bytes: int
    work_dir: str
    free_bytes: int
    emulated: bool = False
    extra: dict[str, str] = field(default_factory=dict)


class Device:
    """Where a build runs. Subclasses: LocalDevice, SshDevice, AdbDevice, QemuDevice (parse_device picks one)."""

    uri: str = "local"
    kind: str = "local"
    emulated: bool = False
    profile: str | None = None   # the profile whose build this device needs, when the URI says (qemu:PROFILE)
    manifest: dict[str, Any] | None = None   # the build being run (set by ensure_bundle): names a SIGILL's cause
    last_stderr: list[str] = []              # the tail of the last run's stderr (llama.cpp logs there)

    def describe(self) -> DeviceInfo:
        raise NotImplementedError

    def ensure(self, file: str | Path, sha256: str | None = None, progress: Progress | None = None) -> str:
        """The path of `file` on the device, pushed only when the device lacks its sha256."""
        return self.ensure_all([file], [sha256] if sha256 else None, progress)[0]

    def ensure_all(self, files: Sequence[str | Path], sha256s: Sequence[str | None] | None = None,
                   progress: Progress | None = None) -> list[str]:
        raise NotImplementedError

    def ensure_bundle(self, bundle: Any, progress: Progress | None = None) -> dict[str, str]:
        """Every file of a build bundle (a BuildResult or its folder) on the device: {file name: path there}. The
        files must match the sha256s of the bundle's manifest, which this Device then keeps to explain a SIGILL."""
        import json

        folder = Path(getattr(bundle, "bundle", bundle))
        manifest = getattr(bundle, "manifest", None)
        if manifest is None:
            try:
                manifest = json.loads((folder / "manifest.json").read_text())
            except (OSError, ValueError):
                raise DeviceError(f"{folder} is not a build bundle (no readable manifest.json): run lfmq build"
                                  ) from None
        files = manifest.get("files", {})
        for name, meta in files.items():
            if not (folder / name).is_file() or sha256_file(folder / name) != meta.get("sha256"):
                raise DeviceError(f"{folder / name} does not match its bundle's manifest: rebuild with "
                                  f"lfmq build {manifest.get('profile', 'PROFILE')} --force")
        paths = self.ensure_all([folder / n for n in files], [m["sha256"] for m in files.values()], progress)
        self.manifest = manifest
        return dict(zip(files, paths))

    def run(self, argv: Sequence[str], on_line: LineCallback | None = None) -> tuple[int, list[str]]:
        """Run argv on the device, streaming its stdout lines to on_line; returns (exit code, lines). A SIGILL, a lost
        connection and an interrupt raise DeviceError (the process on the device is stopped first)."""
        raise NotImplementedError

    def run_json(self, argv: Sequence[str], on_event: Callable[[dict[str, Any]], None] | None = None
                 ) -> list[dict[str, Any]]:
        """Run a program that prints JSON lines (lfmq-run); its {"event": "error"} line or a non-zero exit becomes a
        DeviceError. Lines that are not JSON objects (logs) are skipped."""
        import json

        events: list[dict[str, Any]] = []

        def take(line: str) -> None:
            if line.startswith("{"):
                try:
                    ev = json.loads(line)
                except ValueError:
                    return
                events.append(ev)
                if on_event:
                    on_event(ev)

        rc, lines = self.run(argv, take)
        err = next((e for e in events if e.get("event") == "error"), None)
        if err or rc != 0:
            why = err.get("message") if err else (self.last_stderr[-1] if self.last_stderr else "no message")
            raise DeviceError(f"{Path(argv[0]).name} failed on {self.uri} (exit {rc}): {why}")
        return events

    def cleanup(self) -> None:
        """Stop what this Device started (connections, servers). The pushed cache stays: it is what makes the
        next push free."""

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.uri}>"


def parse_device(uri: str | None = None, *, ssh_config: str | Path | None = None, work_dir: str | None = None
                 ) -> Device:
    """A Device from its URI: local (default), ssh://[user@]host[:port], adb[:SERIAL], qemu:PROFILE. ssh_config is
    an ssh config file for ssh devices (default: $LFMQ_SSH_CONFIG, else ssh's own); work_dir overrides where a remote
    device keeps lfmq's files (default: $LFMQ_DEVICE_DIR, else ~/.cache/lfmq-device over ssh, /data/local/tmp/lfmq
    over adb)."""
    uri = (uri or "local").strip()
    work_dir = work_dir or os.environ.get("LFMQ_DEVICE_DIR") or None
    if uri == "local":
        return LocalDevice()
    if uri.startswith("ssh://"):
        from lfmq.devices.transport_ssh import SshDevice, parse_ssh_uri

        return SshDevice(*parse_ssh_uri(uri), ssh_config=ssh_config, work_dir=work_dir)
    if uri == "adb" or uri.startswith("adb:"):
        from lfmq.devices.transport_adb import AdbDevice

        return AdbDevice(uri[4:] or None, work_dir=work_dir)
    if uri.startswith("qemu:"):
        from lfmq.devices.transport_qemu import QemuDevice

        return QemuDevice(uri[5:])
    raise UsageError(f"unknown device {uri!r}: use local, ssh://[user@]host[:port], adb[:SERIAL] or qemu:PROFILE")


def check_fits(device_mem_available_bytes: int, predicted_bytes: int, device: str = "the device") -> None:
    """Raise DeviceError when a run predicted to need predicted_bytes cannot fit in the memory the device has free."""
    if predicted_bytes > device_mem_available_bytes:
        raise DeviceError(
            f"the model does not fit in {device}'s memory: it needs about {_mib(predicted_bytes)} MiB, "
            f"{_mib(device_mem_available_bytes)} MiB are available; pick a smaller quantization or context, "
            "or close programs on the device")


def match_profile(info: DeviceInfo) -> str | None:
    """The most demanding built-in profile whose build the device's CPU can run (by its /proc/cpuinfo flags)."""
    fits = fitting_profiles(info.flags, info.arch)
    return fits[0] if fits else None


def sigill_error(program: str, device: Device) -> DeviceError:
    """A SIGILL as one line: which features the build needs that the CPU lacks and which profile fits, when the
    build (device.manifest, or the profile's cached build) is known; else a generic hint."""
    try:
        why = explain_sigill(device, device.manifest) or SIGILL_HINT
    except Exception:  # noqa: BLE001  (an explanation must never hide the error itself)
        why = SIGILL_HINT
    return DeviceError(f"{program} died with SIGILL (illegal instruction) on {device.uri}: {why}")


# ---------------------------------------------------------------------------------------------- shared parsing


def parse_cpuinfo(text: str, arch: str) -> dict[str, Any]:
    """Model, core count, profile-named features and raw flags from the text of /proc/cpuinfo."""
    flags: list[str] = []
    names: dict[str, str] = {}
    cores = 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "processor":
            cores += 1
        elif key in ("flags", "features") and not flags:
            flags = value.split()
        elif key in ("model name", "model", "hardware", "cpu part") and key not in names:
            names[key] = value.strip()
    part = ARM_PARTS.get(names.get("cpu part", "").lower(), "")
    board = names.get("hardware") or names.get("model", "")
    board = "" if board.isdigit() else board   # x86's "model" is a number; Arm boards name themselves there
    model = names.get("model name") or (f"{board} ({part})" if board and part else board or part)
    table = ARM_FLAGS if arch in ("aarch64", "arm64") else X86_FLAGS
    return {"cpu_model": model or arch, "cores": cores, "flags": flags,
            "features": sorted({table[f] for f in flags if f in table})}


def parse_meminfo(text: str) -> tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes; MemFree stands in where a kernel has no MemAvailable."""
    kb = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if value.split():
            kb[key.strip()] = int(value.split()[0])
    return kb.get("MemTotal", 0) * 1024, kb.get("MemAvailable", kb.get("MemFree", 0)) * 1024


def parse_df(text: str) -> int:
    """Free bytes from the last line of `df -Pk`."""
    fields = text.strip().splitlines()[-1].split() if text.strip() else []
    try:
        return int(fields[3]) * 1024
    except (IndexError, ValueError):
        raise DeviceError(f"could not read the free space on the device from df: {text.strip()[-200:]!r}") from None


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so that a model is hashed once per process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def _mib(n: int) -> int:
    return round(n / 2**20)


# ---------------------------------------------------------------------------------------------- processes


@dataclass
class Streamed:
    rc: int
    lines: list[str]
    stderr: list[str]


def stream(cmd: Sequence[str], on_line: LineCallback | None, stop: Callable[[], None] | None, what: str,
           env: dict[str, str] | None = None) -> Streamed:
    """Run cmd locally in its own session (a terminal's Ctrl-C reaches only lfmq, which then stops it), stream its
    stdout lines and keep the tail of its stderr. On any exception, KeyboardInterrupt included, the local process
    is killed and `stop` stops what it started elsewhere; an interrupt becomes a DeviceError."""
    proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, errors="replace", bufsize=1, start_new_session=True, env=env)
    tail: deque[str] = deque(maxlen=40)
    reader = threading.Thread(target=lambda: tail.extend(line.rstrip("\n") for line in proc.stderr), daemon=True)
    reader.start()
    lines: list[str] = []
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            line = line.rstrip("\n")
            lines.append(line)
            if on_line:
                on_line(line)
        rc = proc.wait()
    except BaseException as e:
        # the pipes stay open: the stderr reader may be blocked on one, and an ssh client that rode the master
        # connection handed them to the master, which closes them only when the program on the device has ended
        kill_local(proc, close_pipes=False)
        if stop:
            stop()
        if isinstance(e, KeyboardInterrupt):
            raise DeviceInterrupted(f"interrupted: stopped {what}") from None
        raise
    finally:
        reader.join(timeout=5)
    return Streamed(rc, lines, list(tail))


def kill_local(proc: subprocess.Popen, close_pipes: bool = True) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers, and reap it. Close its pipes only when no other thread
    reads them (closing a file another thread is reading from waits for that read)."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    for pipe in (proc.stdout, proc.stderr, proc.stdin) if close_pipes else ():
        if pipe:
            pipe.close()


# ---------------------------------------------------------------------------------------------- this machine


class LocalDevice(Device):
    """This machine: files are used where they are, programs run directly."""

    uri = "local"
    kind = "local"

    def __init__(self) -> None:
        self.last_stderr: list[str] = []

    def describe(self) -> DeviceInfo:
        arch = platform.machine()
        arch = "aarch64" if arch == "arm64" else arch
        cpu = parse_cpuinfo(_read("/proc/cpuinfo"), arch)
        total, avail = parse_meminfo(_read("/proc/meminfo"))
        work = Path.home() / ".cache" / "lfmq"
        work.mkdir(parents=True, exist_ok=True)
        return DeviceInfo(self.uri, self.kind, arch, cpu["cpu_model"], cpu["cores"], cpu["features"], cpu["flags"],
                          total, avail, str(work), _free(work), self.emulated)

    def ensure_all(self, files: Sequence[str | Path], sha256s: Sequence[str | None] | None = None,
                   progress: Progress | None = None) -> list[str]:
        out = []
        for f in files:
            if not Path(f).is_file():
                raise DeviceError(f"no such file to run with: {f}")
            out.append(str(Path(f).resolve()))
        return out

    def command(self, argv: Sequence[str]) -> list[str]:
        """The local command line that runs argv (QemuDevice puts qemu in front)."""
        return list(argv)

    def run(self, argv: Sequence[str], on_line: LineCallback | None = None) -> tuple[int, list[str]]:
        program = Path(argv[0]).name
        out = stream(self.command(argv), on_line, None, f"{program} on {self.uri}")
        self.last_stderr = out.stderr
        if is_sigill(out.rc):
            raise sigill_error(program, self)
        return out.rc, out.lines


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def safe_name(name: str) -> str:
    """A file name that needs no quoting on any device shell."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name) or "file"
