"""ssh://[user@]host[:port] through the system's OpenSSH client, so that ~/.ssh/config aliases, keys, ports, jump
hosts and agents work exactly as `ssh host` does. `LFMQ_SSH_CONFIG` (or ssh_config=) names another config file.

One master connection is opened per Device (ControlMaster, with its socket in a private temp folder) and every
later command rides on it: a push, a run and the second connection that stops an interrupted run cost no new
handshake. BatchMode means ssh never waits for a password nobody will type: a missing key is a clear error."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path

from lfmq.devices.transport_remote import RemoteDevice, last_line, q
from lfmq.errors import DeviceError, UsageError

CONNECT_TIMEOUT_S = 10
PERSIST_S = 600   # a master orphaned by a crash exits on its own after this long idle
URI = re.compile(r"^ssh://(?:(?P<user>[^@/\s]+)@)?(?P<host>\[[^\]/\s]+\]|[^:@/\s\[\]]+)(?::(?P<port>\d+))?/?$")
UNREACHABLE = ("connection refused", "timed out", "no route to host", "could not resolve hostname",
               "network is unreachable", "connection closed by", "connection reset", "name or service not known")
REFUSED = ("permission denied", "too many authentication failures", "no supported authentication methods",
           "no mutual signature")


def parse_ssh_uri(uri: str) -> tuple[str, str | None, int | None]:
    """(host, user, port) of ssh://[user@]host[:port]; host may be an alias of ~/.ssh/config."""
    m = URI.match(uri)
    if not m:
        raise UsageError(f"not an ssh device: {uri!r}; write ssh://[user@]host[:port]")
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"bad port in {uri!r}")
    return m["host"].strip("[]"), m["user"], port


class SshDevice(RemoteDevice):
    """A Linux machine (a Raspberry Pi 5, a server) reached with the system `ssh`; files go to
    ~/.cache/lfmq-device/<sha256>/<name> there."""

    kind = "ssh"

    def __init__(self, host: str, user: str | None = None, port: int | None = None,
                 ssh_config: str | Path | None = None, connect_timeout: int = CONNECT_TIMEOUT_S,
                 work_dir: str | None = None) -> None:
        super().__init__()
        self._work = work_dir   # None: ~/.cache/lfmq-device on the device
        self.host, self.user, self.port = host, user, port
        self.ssh_config = str(ssh_config or os.environ.get("LFMQ_SSH_CONFIG") or "") or None
        self.connect_timeout = connect_timeout
        shown = f"[{host}]" if ":" in host else host
        self.uri = f"ssh://{user + '@' if user else ''}{shown}{f':{port}' if port else ''}"
        self._dir: str | None = None
        self._finalizer: weakref.finalize | None = None

    def _base(self) -> list[str]:
        args = ["ssh"]
        if self.ssh_config:
            args += ["-F", self.ssh_config]
        for opt in ("BatchMode=yes", f"ConnectTimeout={self.connect_timeout}", "ServerAliveInterval=15",
                    "ServerAliveCountMax=4", "LogLevel=ERROR", f"ControlPath={self._dir}/%C"):
            args += ["-o", opt]
        if self.port:
            args += ["-p", str(self.port)]
        if self.user:
            args += ["-l", self.user]
        return args

    def connect(self) -> None:
        """Open the master connection (once): authentication and reachability are decided here."""
        if self._finalizer is not None and self._finalizer.alive:
            return
        if not shutil.which("ssh"):
            raise DeviceError("the ssh client is not installed: apt-get install openssh-client")
        self._dir = tempfile.mkdtemp(prefix="lfmq-ssh-")
        log = Path(self._dir) / "master.log"
        with open(log, "wb") as err:
            # -f: fork once authenticated; its stderr is a file, never a pipe a later read would wait on forever
            argv = [*self._base(), "-o", "ControlMaster=yes", "-o", f"ControlPersist={PERSIST_S}", "-N", "-f",
                    self.host]
            try:
                rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    timeout=self.connect_timeout + 30).returncode
            except subprocess.TimeoutExpired:
                rc = 255
                err.write(b"connection timed out\n")
        if rc != 0:
            lines = log.read_text(errors="replace").splitlines()
            shutil.rmtree(self._dir, ignore_errors=True)
            raise self.connection_error(255, lines) or DeviceError(f"cannot connect to {self.uri}")
        self._finalizer = weakref.finalize(self, _stop_master, [*self._base(), "-O", "exit", self.host], self._dir)

    def shell_argv(self, command: str) -> list[str]:
        # `sh -c`: the login shell of the account may not be POSIX (fish); the command always is
        return [*self._base(), "-o", "ControlMaster=no", self.host, f"sh -c {q(command)}"]

    def push_argv(self, local: Path, remote: str) -> tuple[list[str], bool]:
        return self.shell_argv(f"cat > {q(remote)}"), True

    def resolve_work_dir(self) -> str:
        home = self.sh('printf "%s\\n" "$HOME"', "finding the home folder").strip()
        return f"{home or '/tmp'}/.cache/lfmq-device"

    def connection_error(self, rc: int, stderr: list[str]) -> DeviceError | None:
        if rc != 255:
            return None
        line = last_line(stderr, [])
        low = " ".join(stderr).lower()
        target = self.uri[len("ssh://"):]
        if "host key verification failed" in low or "remote host identification has changed" in low:
            return DeviceError(f"{self.uri}: host key verification failed ({line}); connect once with "
                               f"`ssh {target}` to check and accept the host's key")
        if any(s in low for s in REFUSED):
            return DeviceError(f"{self.uri} refused authentication: {line}; lfmq runs ssh in batch mode and cannot "
                               f"type a password: install your key there (ssh-copy-id {target}) or load it into "
                               "ssh-agent")
        if any(s in low for s in UNREACHABLE):
            return DeviceError(f"cannot reach {self.uri}: {line}; check that the host is up and that sshd listens "
                               f"there (does `ssh {target}` work?)")
        return DeviceError(f"ssh to {self.uri} failed: {line}")

    def master_pid(self) -> int | None:
        """The pid of the master connection, while it runs."""
        if not self._dir:
            return None
        p = subprocess.run([*self._base(), "-O", "check", self.host], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL)
        m = re.search(r"pid=(\d+)", p.stderr + p.stdout)
        return int(m.group(1)) if p.returncode == 0 and m else None

    def cleanup(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


def _stop_master(argv: list[str], folder: str) -> None:
    try:
        subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pass
    shutil.rmtree(folder, ignore_errors=True)
