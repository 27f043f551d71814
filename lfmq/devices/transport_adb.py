"""adb[:SERIAL]: an Android device through the adb client (Debian's `adb` package). Builds run from
/data/local/tmp/lfmq, the one place `adb shell` may execute files without root; files are cached there as
<sha256>/<name>. The static aarch64 musl build runs as is: no app, no NDK, no LD_LIBRARY_PATH."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from lfmq.devices.transport_remote import RemoteDevice, last_line
from lfmq.errors import DeviceError

WORK_DIR = "/data/local/tmp/lfmq"
STATES = {  # adb's state for a listed device -> what to do about it
    "unauthorized": "unlock the phone and accept the 'Allow USB debugging' prompt",
    "offline": "reconnect the cable (or run `adb reconnect`)",
    "no permissions": "this user may not open the USB device: add a udev rule for it or run adb as a user in plugdev",
    "authorizing": "wait a moment and accept the prompt on the phone",
}


def list_devices(adb_stdout: str) -> list[tuple[str, str]]:
    """(serial, state) pairs from `adb devices`."""
    out = []
    for line in adb_stdout.splitlines():
        if not line.strip() or line.startswith(("List of devices", "*", "adb ")):
            continue
        serial, _, state = line.partition("\t") if "\t" in line else line.partition(" ")
        out.append((serial.strip(), state.strip().split(" (")[0] or "unknown"))
    return out


class AdbDevice(RemoteDevice):
    """An Android phone or board over adb (USB, or wireless after `adb connect`)."""

    kind = "adb"
    extra_commands = {"product": "getprop ro.product.model", "soc": "getprop ro.soc.model",
                      "android": "getprop ro.build.version.release"}

    def __init__(self, serial: str | None = None, work_dir: str | None = None) -> None:
        super().__init__()
        self.requested = serial
        self.serial: str | None = None
        self.uri = f"adb:{serial}" if serial else "adb"
        self._work_dir = work_dir or WORK_DIR
        self._started_server = False

    def connect(self) -> None:
        """Pick the device: the one named, or the only one connected."""
        if self.serial:
            return
        if not shutil.which("adb"):
            raise DeviceError("the adb client is not installed: apt-get install adb")
        try:
            p = subprocess.run(["adb", "devices"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                               timeout=60)
        except subprocess.TimeoutExpired:
            raise DeviceError("`adb devices` did not answer within 60 s: try `adb kill-server` and again") from None
        # adb starts its server on first use: a server lfmq started is one it stops in cleanup()
        self._started_server = "daemon started successfully" in p.stdout + p.stderr
        listed = list_devices(p.stdout)
        self.serial = self._choose(listed)
        self.uri = f"adb:{self.serial}"

    def _choose(self, listed: list[tuple[str, str]]) -> str:
        names = ", ".join(f"{s} ({st})" for s, st in listed) or "none"
        if self.requested:
            state = dict(listed).get(self.requested)
            if state is None:
                raise DeviceError(f"no Android device {self.requested}: adb devices lists {names}")
            if state != "device":
                raise DeviceError(f"Android device {self.requested} is {state}: "
                                  f"{STATES.get(state, 'reconnect it and try again')}")
            return self.requested
        ready = [s for s, st in listed if st == "device"]
        if len(ready) > 1:
            raise DeviceError(f"several Android devices are connected ({', '.join(ready)}): pick one with "
                              f"--device adb:SERIAL")
        if not ready:
            if listed:
                s, st = listed[0]
                raise DeviceError(f"no usable Android device: {s} is {st}: {STATES.get(st, 'reconnect it')}")
            raise DeviceError("no Android device: `adb devices` lists none; connect the phone by USB with USB "
                              "debugging on (Settings > Developer options), or `adb connect HOST:PORT`")
        return ready[0]

    def shell_argv(self, command: str) -> list[str]:
        assert self.serial, "connect() first"
        return ["adb", "-s", self.serial, "shell", command]

    def push_argv(self, local: Path, remote: str) -> tuple[list[str], bool]:
        assert self.serial, "connect() first"
        return ["adb", "-s", self.serial, "push", str(local), remote], False

    def resolve_work_dir(self) -> str:
        return self._work_dir

    def connection_error(self, rc: int, stderr: list[str]) -> DeviceError | None:
        if rc == 0:
            return None
        line = last_line(stderr, [])
        low = " ".join(stderr).lower()
        if "no space left" in low:
            return DeviceError(f"no space on {self.uri}: {line}; free some space in {self.work_dir}")
        if "not found" in low or "offline" in low or "no devices" in low or "closed" in low:
            return DeviceError(f"lost Android device {self.serial or self.requested}: {line}; "
                               "check the cable and `adb devices`")
        if low.startswith(("error:", "adb: error")) or "adb: " in low:
            return DeviceError(f"adb failed on {self.uri}: {line}")
        return None

    def cleanup(self) -> None:
        if self._started_server:
            subprocess.run(["adb", "kill-server"], capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
            self._started_server = False
