"""What SSH and ADB devices share: every step is a POSIX shell command on the device (sh on Linux, mksh on Android),
so describing, the content-addressed cache, free-space checks, runs under a pid-recording wrapper and their stopping
are written once here. A subclass says how to run a command there, how to push a file, and how its client reports a
connection that failed."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import uuid
from pathlib import Path
from typing import Sequence

from lfmq.devices.cpu_features import is_sigill
from lfmq.devices.transport import (Device, DeviceInfo, LineCallback, Progress, _mib, kill_local, parse_cpuinfo,
                                    parse_df, parse_meminfo, safe_name, sha256_file, sigill_error, stream)
from lfmq.errors import DeviceError

SEP = "@@lfmq@@"
RC = re.compile(r"^(.*)__lfmq_rc=(\d+)$")   # the wrapper's last line: the program's exit status, whatever the client
SHORT_TIMEOUT_S = 120
CHUNK = 1 << 20
# waits for the pid file (a run interrupted as it starts), TERMs the program and its children (a runner that is a
# script), KILLs them if they linger; pkill may be missing (then only the program itself is stopped)
KILL = ('pf={pf}; i=0; while [ ! -f "$pf" ] && [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done; [ -f "$pf" ] || exit 0; '
        'pid=$(cat "$pf"); pkill -TERM -P "$pid" 2>/dev/null; kill -TERM "$pid" 2>/dev/null; i=0; '
        'while kill -0 "$pid" 2>/dev/null && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done; '
        'pkill -KILL -P "$pid" 2>/dev/null; kill -KILL "$pid" 2>/dev/null; rm -f "$pf"; exit 0')


def q(s: str) -> str:
    return shlex.quote(s)


class RemoteDevice(Device):
    """A device reached through a client program (ssh, adb). Subclasses implement connect, shell_argv, push_argv,
    connection_error and resolve_work_dir."""

    extra_commands: dict[str, str] = {}   # describe() runs these too and keeps their output in DeviceInfo.extra

    def __init__(self) -> None:
        self.pushed: list[str] = []        # remote paths pushed by this Device (tests assert on it)
        self.last_stderr: list[str] = []
        self._work: str | None = None

    # -- what a subclass provides

    def connect(self) -> None:
        """Reach the device once (idempotent); raise a one-line DeviceError when it cannot be reached."""

    def shell_argv(self, command: str) -> list[str]:
        raise NotImplementedError

    def push_argv(self, local: Path, remote: str) -> tuple[list[str], bool]:
        """The local command that copies `local` to `remote`, and whether it reads the file from its stdin."""
        raise NotImplementedError

    def connection_error(self, rc: int, stderr: list[str]) -> DeviceError | None:
        raise NotImplementedError

    def resolve_work_dir(self) -> str:
        raise NotImplementedError

    # -- shared

    @property
    def work_dir(self) -> str:
        if self._work is None:
            self._work = self.resolve_work_dir()
        return self._work

    def sh(self, command: str, what: str, timeout: float = SHORT_TIMEOUT_S) -> str:
        """Run a short shell command on the device and return its stdout; a failure is a DeviceError."""
        self.connect()
        try:
            p = subprocess.run(self.shell_argv(f"{command}; echo __lfmq_rc=$?"), capture_output=True, text=True,
                               errors="replace", stdin=subprocess.DEVNULL, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.uri} did not answer within {timeout:.0f} s while {what}") from None
        rc, lines = split_rc(p.stdout.splitlines())
        stderr = p.stderr.splitlines()
        if rc is None:
            raise self.connection_error(p.returncode, stderr) or DeviceError(
                f"{what} failed on {self.uri}: {last_line(stderr, lines)}")
        if rc != 0:
            raise DeviceError(f"{what} failed on {self.uri} (exit {rc}): {last_line(stderr, lines)}")
        return "\n".join(lines)

    def describe(self) -> DeviceInfo:
        w = q(self.work_dir)
        parts = [f"mkdir -p {w}", "uname -m", "cat /proc/cpuinfo", "cat /proc/meminfo", f"df -Pk {w}",
                 *(f"{{ {cmd}; }} 2>/dev/null || true" for cmd in self.extra_commands.values())]
        out = self.sh(f"; echo {SEP}; ".join(parts), "reading what the device is").split(SEP)
        _, arch, cpuinfo, meminfo, df, *extra = (s.strip() for s in out)
        cpu = parse_cpuinfo(cpuinfo, arch)
        total, avail = parse_meminfo(meminfo)
        return DeviceInfo(self.uri, self.kind, arch, cpu["cpu_model"], cpu["cores"], cpu["features"], cpu["flags"],
                          total, avail, self.work_dir, parse_df(df), self.emulated,
                          {k: v for k, v in zip(self.extra_commands, extra) if v})

    def free_bytes(self) -> int:
        w = q(self.work_dir)
        return parse_df(self.sh(f"mkdir -p {w} && df -Pk {w}", "reading the free space"))

    def remote_path(self, sha: str, name: str) -> str:
        return f"{self.work_dir}/{sha}/{safe_name(name)}"

    def ensure_all(self, files: Sequence[str | Path], sha256s: Sequence[str | None] | None = None,
                   progress: Progress | None = None) -> list[str]:
        paths = [Path(f) for f in files]
        for p in paths:
            if not p.is_file():
                raise DeviceError(f"no such file to push: {p}")
        shas = [(s if s else sha256_file(p)) for p, s in zip(paths, sha256s or [None] * len(paths))]
        remotes = [self.remote_path(s, p.name) for p, s in zip(paths, shas)]
        test = " ".join(q(r) for r in remotes)
        have = self.sh(f'i=0; for f in {test}; do [ -f "$f" ] && echo $i; i=$((i+1)); done; true',
                       "looking for files already there").split()
        todo = {r: p for i, (p, r) in enumerate(zip(paths, remotes)) if str(i) not in have}
        if todo:
            need = sum(p.stat().st_size for p in todo.values())
            free = self.free_bytes()
            if need > free:
                raise DeviceError(
                    f"no space on {self.uri}: pushing {', '.join(p.name for p in todo.values())} needs "
                    f"{_mib(need)} MiB, {self.work_dir} has {_mib(free)} MiB free; free some space there "
                    f"(old entries of lfmq's cache in {self.work_dir} can go)")
            for remote, local in todo.items():
                self._push_one(local, remote, progress)
        return remotes

    def _push_one(self, local: Path, remote: str, progress: Progress | None) -> None:
        folder, name = remote.rsplit("/", 1)
        tmp = f"{folder}/.{name}.partial"
        self.sh(f"mkdir -p {q(folder)}", f"creating {folder}")
        argv, feed = self.push_argv(local, tmp)
        size = local.stat().st_size
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if feed else subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            if feed:
                _feed(proc, local, name, size, progress)
            elif progress:
                progress(name, 0, size)
            err = proc.stderr.read().decode(errors="replace").splitlines()  # type: ignore[union-attr]
            rc = proc.wait()
        except BaseException as e:
            kill_local(proc)
            self._quiet(f"rm -f {q(tmp)}")
            if isinstance(e, KeyboardInterrupt):
                raise DeviceError(f"interrupted: the push of {local.name} to {self.uri} was stopped") from None
            raise
        if rc != 0:
            self._quiet(f"rm -f {q(tmp)}")
            raise self.connection_error(rc, err) or DeviceError(
                f"pushing {local.name} to {self.uri} failed: {last_line(err, [])}")
        mode = "chmod 755 {t} && " if os.access(local, os.X_OK) else ""
        self.sh(f"{mode.format(t=q(tmp))}mv -f {q(tmp)} {q(remote)}", f"storing {name}")
        if progress:
            progress(name, size, size)
        self.pushed.append(remote)

    def run(self, argv: Sequence[str], on_line: LineCallback | None = None) -> tuple[int, list[str]]:
        self.connect()
        program = Path(argv[0]).name
        run_dir = f"{self.work_dir}/run"
        pidfile = f"{run_dir}/{os.getpid()}-{uuid.uuid4().hex[:12]}.pid"
        cmd = " ".join(q(a) for a in argv)
        # the program runs in the background of a shell that records its pid, waits for it and prints its status:
        # the status survives clients that lose it (ssh reports a death by signal as 255), and the pid lets a
        # second connection stop the program when this one is interrupted
        wrapped = (f"mkdir -p {q(run_dir)} && {{ {cmd} </dev/null & pid=$!; echo $pid > {q(pidfile)}; wait $pid; "
                   f"rc=$?; rm -f {q(pidfile)}; echo __lfmq_rc=$rc; }}")
        status: list[int] = []

        def take(line: str) -> None:
            m = RC.match(line)
            if m:
                status.append(int(m.group(2)))
                line = m.group(1)
                if not line:
                    return
            if on_line:
                on_line(line)

        out = stream(self.shell_argv(wrapped), take, lambda: self.stop(pidfile), f"{program} on {self.uri}")
        self.last_stderr = out.stderr
        lines = split_rc(out.lines)[1]
        if not status:
            self.stop(pidfile)   # the client died before the program: do not leave it running
            raise self.connection_error(out.rc, out.stderr) or DeviceError(
                f"lost {self.uri} while {program} ran (client exit {out.rc}): {last_line(out.stderr, lines)}")
        if is_sigill(status[0]):
            raise sigill_error(program, self)
        return status[0], lines

    def stop(self, pidfile: str) -> None:
        """Stop the program whose pid the run wrapper wrote to pidfile (no-op once it has ended)."""
        self._quiet(KILL.format(pf=q(pidfile)), timeout=30)

    def _quiet(self, command: str, timeout: float = 30) -> None:
        """Best effort: used while unwinding from another failure, so it never raises."""
        try:
            subprocess.run(self.shell_argv(command), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        except (OSError, subprocess.SubprocessError):
            pass


def split_rc(lines: list[str]) -> tuple[int | None, list[str]]:
    """The wrapper's status line taken out of a command's stdout: (status or None, the other lines)."""
    rc = None
    out = []
    for line in lines:
        m = RC.match(line)
        if m:
            rc = int(m.group(2))
            if m.group(1):
                out.append(m.group(1))
        else:
            out.append(line)
    return rc, out


def last_line(stderr: list[str], stdout: list[str]) -> str:
    for line in reversed([*stdout, *stderr]):
        if line.strip():
            return line.strip()
    return "no message"


def _feed(proc: subprocess.Popen, local: Path, name: str, size: int, progress: Progress | None) -> None:
    done = 0
    with open(local, "rb") as f:
        while chunk := f.read(CHUNK):
            try:
                proc.stdin.write(chunk)  # type: ignore[union-attr]
            except BrokenPipeError:
                break   # the client died: its exit status and stderr say why
            done += len(chunk)
            if progress:
                progress(name, done, size)
    try:
        proc.stdin.close()  # type: ignore[union-attr]
    except BrokenPipeError:
        pass
