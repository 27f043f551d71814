"""ssh:// devices against a real OpenSSH server that this module starts on 127.0.0.1 with keys made at test time (no
mock): lfmq runs the system ssh client with a config file naming the server by an alias, as a user's
~/.ssh/config would. The lfmq-run here is a shell script standing in for the native runner (tests/device_helpers.py);
the real bundle's end-to-end run is at the bottom, once lfmq.devices.build exists."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from device_helpers import ctrl_c_on, marker, running, wait_gone, write_runner
from lfmq.devices.transport import LocalDevice, parse_device, sha256_file
from lfmq.devices.transport_ssh import SshDevice, parse_ssh_uri
from lfmq.errors import DeviceError, UsageError

SSHD = "/usr/sbin/sshd"
ALIAS = "lfmq-test-dev"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


class Server:
    def __init__(self, folder: Path, port: int, config: Path, proc: subprocess.Popen) -> None:
        self.folder, self.port, self.config, self.proc = folder, port, config, proc


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    """sshd -D on a free port of 127.0.0.1, accepting one user key for root; a client config with three aliases:
    the server, the server with a key it does not accept, and a port where nothing listens."""
    if not (os.path.exists(SSHD) and shutil.which("ssh") and os.geteuid() == 0):
        if os.environ.get("CI"):
            pytest.fail("openssh-server/openssh-client missing or not root: scripts/install-system-deps.sh installs them")
        pytest.skip("needs root, /usr/sbin/sshd and ssh (apt-get install openssh-server openssh-client)")
    d = tmp_path_factory.mktemp("sshd")
    host_key, user_key, bad_key = keygen(d / "host_key"), keygen(d / "user_key"), keygen(d / "bad_key")
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    port, closed = free_port(), free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nAuthorizedKeysFile {d}/authorized_keys\n"
        f"StrictModes no\nPidFile {d}/sshd.pid\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n")
    common = f"  HostName 127.0.0.1\n  User root\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n" \
             f"  UserKnownHostsFile {d}/known_hosts\n"
    config = d / "ssh_config"
    config.write_text(f"Host {ALIAS}\n  Port {port}\n  IdentityFile {user_key}\n{common}"
                      f"Host lfmq-test-badkey\n  Port {port}\n  IdentityFile {bad_key}\n{common}"
                      f"Host lfmq-test-closed\n  Port {closed}\n  IdentityFile {user_key}\n{common}")
    os.makedirs("/run/sshd", exist_ok=True)   # sshd's privilege-separation folder (a container may lack it)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=subprocess.DEVNULL,
                            stderr=open(d / "sshd.log", "wb"))
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()}")
            time.sleep(0.1)
    yield Server(d, port, config, proc)
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def device(sshd: Server, tmp_path: Path):
    """The server by its alias, keeping lfmq's files in this test's temp folder; cleaned up after the test."""
    dev = parse_device(f"ssh://{ALIAS}", ssh_config=sshd.config, work_dir=str(tmp_path / "remote"))
    yield dev
    dev.cleanup()


@pytest.mark.parametrize("uri, parsed", [
    ("ssh://pi", ("pi", None, None)),
    ("ssh://me@pi.local:2222", ("pi.local", "me", 2222)),
    ("ssh://root@[::1]:22", ("::1", "root", 22)),
    ("ssh://10.0.0.7/", ("10.0.0.7", None, None)),
])
def test_ssh_uri(uri, parsed):
    assert parse_ssh_uri(uri) == parsed


@pytest.mark.parametrize("uri", ["ssh://", "ssh://a b", "ssh://pi:99999", "ssh://pi:x", "ssh://a@b@c"])
def test_bad_ssh_uri_is_a_usage_error(uri):
    with pytest.raises(UsageError):
        parse_device(uri)


def test_alias_from_lfmq_ssh_config_and_describe(sshd, monkeypatch):
    """The alias resolves through $LFMQ_SSH_CONFIG as ssh resolves it; the default cache is ~/.cache/lfmq-device."""
    monkeypatch.setenv("LFMQ_SSH_CONFIG", str(sshd.config))
    with parse_device(f"ssh://{ALIAS}") as dev:
        info = dev.describe()
    here = LocalDevice().describe()
    assert (info.uri, info.kind, info.arch) == (f"ssh://{ALIAS}", "ssh", platform.machine())
    assert info.work_dir == f"{Path('~').expanduser()}/.cache/lfmq-device"
    assert (info.cpu_model, info.features, info.cores) == (here.cpu_model, here.features, here.cores)
    assert info.mem_total_bytes == here.mem_total_bytes and 0 < info.mem_available_bytes <= info.mem_total_bytes
    assert info.free_bytes > 0 and not info.emulated


def test_ensure_pushes_only_when_missing(sshd, device, tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(os.urandom(3 << 20))
    runner = write_runner(tmp_path)
    seen = []
    remote_model, remote_runner = device.ensure_all([model, runner], progress=lambda *a: seen.append(a))
    assert remote_model == f"{tmp_path}/remote/{sha256_file(model)}/model.gguf"
    assert Path(remote_model).read_bytes() == model.read_bytes()   # the "device" is this machine: look directly
    assert os.access(remote_runner, os.X_OK) and device.pushed == [remote_model, remote_runner]
    assert seen[-1] == ("lfmq-run", runner.stat().st_size, runner.stat().st_size)
    assert not list(Path(remote_model).parent.glob(".*partial"))
    mtime = Path(remote_model).stat().st_mtime_ns
    # a new connection (nothing remembered in memory) finds both by sha256 and pushes nothing
    again = parse_device(f"ssh://{ALIAS}", ssh_config=sshd.config, work_dir=str(tmp_path / "remote"))
    try:
        assert again.ensure_all([model, runner]) == [remote_model, remote_runner]
        assert again.pushed == [] and Path(remote_model).stat().st_mtime_ns == mtime
    finally:
        again.cleanup()
    # changed content is a new sha256: pushed beside the old one
    model.write_bytes(os.urandom(1 << 20))
    assert device.ensure(model) != remote_model and len(device.pushed) == 3


def test_no_space_is_checked_before_pushing(device, tmp_path):
    """A file larger than the free space (sparse: it takes no room here) is refused before a byte is sent."""
    big = tmp_path / "huge.gguf"
    st = os.statvfs(tmp_path)
    with open(big, "wb") as f:
        f.truncate(st.f_bavail * st.f_frsize + (1 << 30))
    with pytest.raises(DeviceError, match=rf"^no space on ssh://{ALIAS}: pushing huge\.gguf needs \d+ MiB, "
                       rf"{tmp_path}/remote has \d+ MiB free") as e:
        device.ensure(big, sha256="0" * 64)
    assert "\n" not in str(e.value) and device.pushed == []
    assert not (tmp_path / "remote" / ("0" * 64)).exists()


def test_interrupted_push_leaves_no_file(device, tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(os.urandom(4 << 20))

    def ctrl_c(name, done, total):   # Ctrl-C as its handler raises it, after the first MiB went out
        if done:
            raise KeyboardInterrupt

    with pytest.raises(DeviceError, match=rf"^interrupted: the push of model\.gguf to ssh://{ALIAS} was stopped$"):
        device.ensure(model, progress=ctrl_c)
    folder = tmp_path / "remote" / sha256_file(model)
    assert not list(folder.iterdir()) and device.pushed == []
    assert device.ensure(model) == f"{folder}/model.gguf"   # and the next push completes


def test_run_streams_lines(device, tmp_path):
    runner = device.ensure(write_runner(tmp_path))
    got = []
    rc, lines = device.run([runner, "slow"], on_line=lambda line: got.append((line, time.monotonic())))
    assert rc == 0 and lines == ["one", "two"] and [g[0] for g in got] == lines
    assert got[1][1] - got[0][1] > 0.4   # the first line arrived while the program still ran
    rc, lines = device.run([runner, "exit", "7"])
    assert (rc, lines, device.last_stderr) == (7, [], ["log to stderr"])
    events = device.run_json([runner, "generate", "3"])
    assert [e["event"] for e in events] == ["token"] * 3 + ["done"] and events[-1]["tg_tps"] == 10.0
    (bench,) = device.run_json([runner, "bench"])
    assert bench["samples_ns"] == [1000, 1100]


def test_runner_error_event_is_one_line(device, tmp_path):
    runner = device.ensure(write_runner(tmp_path))
    with pytest.raises(DeviceError, match=r"^lfmq-run failed on ssh://lfmq-test-dev \(exit 1\): cannot load model$"):
        device.run_json([runner, "fail"])


def test_sigill_is_a_device_error(device, tmp_path):
    runner = device.ensure(write_runner(tmp_path))
    with pytest.raises(DeviceError, match=r"^lfmq-run died with SIGILL \(illegal instruction\) on ssh://lfmq-test-dev"):
        device.run([runner, "sigill"])


def test_unreachable_host(sshd):
    with parse_device("ssh://lfmq-test-closed", ssh_config=sshd.config) as dev:
        with pytest.raises(DeviceError) as e:
            dev.describe()
    msg = str(e.value)
    assert msg.startswith("cannot reach ssh://lfmq-test-closed: ssh: connect to host 127.0.0.1 port ")
    assert "Connection refused" in msg and "\n" not in msg and e.value.exit_code == 1


def test_port_in_the_uri_wins_over_the_config(sshd):
    port = free_port()
    with pytest.raises(DeviceError, match=rf"^cannot reach ssh://{ALIAS}:{port}: .* port {port}: Connection refused"):
        SshDevice(ALIAS, port=port, ssh_config=sshd.config).connect()


def test_authentication_refused(sshd):
    with pytest.raises(DeviceError) as e:
        parse_device("ssh://lfmq-test-badkey", ssh_config=sshd.config).run(["true"])
    msg = str(e.value)
    assert msg.startswith("ssh://lfmq-test-badkey refused authentication: root@127.0.0.1: Permission denied "
                          "(publickey).; lfmq runs ssh in batch mode")
    assert "ssh-copy-id lfmq-test-badkey" in msg and "\n" not in msg


def test_ctrl_c_stops_the_remote_process(device, tmp_path):
    runner = device.ensure(write_runner(tmp_path))
    tag = marker()
    with pytest.raises(DeviceError, match=rf"^interrupted: stopped lfmq-run on ssh://{ALIAS}$"):
        device.run([runner, "sleep", tag], on_line=ctrl_c_on("ready"))
    assert wait_gone(tag) == []
    assert not list((tmp_path / "remote" / "run").glob("*.pid"))
    # the connection is still good after an interrupt
    assert device.run([runner, "exit", "0"])[0] == 0


def test_cleanup_stops_the_master_connection(sshd, tmp_path):
    dev = SshDevice(ALIAS, ssh_config=sshd.config, work_dir=str(tmp_path / "remote"))
    assert dev.run(["echo", "hi"]) == (0, ["hi"])
    pid = dev.master_pid()
    control = dev._dir
    assert pid and running(control)
    dev.cleanup()
    assert dev.master_pid() is None and not os.path.exists(control)
    assert wait_gone(control) == []
    dev.cleanup()   # twice is harmless


# ---------------------------------------------------------------------------------------------- the real bundle

@pytest.fixture(scope="module")
def host_bundle():
    """The host profile's bundle with the real lfmq-run (cached in ~/.cache/lfmq/builds; minutes the first time)."""
    from lfmq.devices.build import build

    return build("host")


def test_real_runner_over_ssh(device, host_bundle, small_f16):
    """The host bundle pushed over SSH decodes exactly what the same bundle decodes locally; the memory check runs
    before the model is pushed; a second push of bundle and model sends nothing."""
    from lfmq.devices.predict import memory_budget, model_shape
    from lfmq.devices.transport import check_fits

    paths = device.ensure_bundle(host_bundle)
    assert list(paths) == list(host_bundle.manifest["files"]) and device.manifest == host_bundle.manifest
    budget = memory_budget(model_shape(small_f16), n_ctx=256, n_ubatch=256)
    check_fits(device.describe().mem_available_bytes, int(budget.total_mb * 2**20), device.uri)
    model = device.ensure(small_f16)
    args = ["--tokens", "1,6,1500,220,17", "-n", "6", "-t", "2", "-c", "256", "--ignore-eos"]
    streamed = []
    events = device.run_json([paths["lfmq-run"], "generate", "-m", model, *args], on_event=streamed.append)
    here = LocalDevice().run_json([str(host_bundle.runner), "generate", "-m", str(small_f16), *args])
    assert streamed == events and events[-1]["event"] == "done" and len(events[-1]["tokens"]) == 6
    assert events[-1]["tokens"] == here[-1]["tokens"] == [e["id"] for e in events[:-1]]
    (bench,) = device.run_json([paths["lfmq-run"], "bench", "-m", model, "-p", "16", "-n", "4", "-r", "1", "-t", "2",
                                "-c", "256"])
    assert {"samples_ns", "load_ms", "ttft_ms", "settings", "vmhwm", "system_info", "runner"} <= set(bench)
    pushed = list(device.pushed)
    device.ensure_bundle(host_bundle)
    device.ensure(small_f16)
    assert device.pushed == pushed


def test_real_runner_error_and_interrupt_over_ssh(device, host_bundle, small_f16, tmp_path):
    runner = device.ensure_bundle(host_bundle)["lfmq-run"]
    with pytest.raises(DeviceError, match=rf"^lfmq-run failed on ssh://{ALIAS} \(exit 1\): ") as e:
        device.run_json([runner, "generate", "-m", str(tmp_path / "missing.gguf"), "--tokens", "1", "-n", "1"])
    assert "\n" not in str(e.value)
    model = device.ensure(small_f16)

    def first_token(event):   # Ctrl-C as its handler raises it: in the main thread, mid-stream
        if event.get("event") == "token":
            raise KeyboardInterrupt

    with pytest.raises(DeviceError, match=rf"^interrupted: stopped lfmq-run on ssh://{ALIAS}$"):
        device.run_json([runner, "generate", "-m", model, "--tokens", "1,6,1500", "-n", "3000", "-t", "2", "-c",
                         "4096", "--ignore-eos"], on_event=first_token)
    assert wait_gone(model) == []


def test_bench_and_generate_over_ssh_from_the_cli(sshd, host_bundle, small_f16, tmp_path):
    """What a user types: `lfmq bench/generate MODEL --device ssh://ALIAS` (the alias from an ssh config), into the
    same report a local run writes, with the device and the build recorded; nothing left running."""
    from conftest import run_cli

    env = {"LFMQ_SSH_CONFIG": str(sshd.config), "LFMQ_DEVICE_DIR": str(tmp_path / "remote")}
    out = run_cli("bench", str(small_f16), "--device", f"ssh://{ALIAS}", "--profile", "host", "-p", "16", "-n", "4",
                  "-r", "1", "-t", "2", "--json", env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["device"]["kind"] == "ssh" and report["device"]["name"] == f"ssh://{ALIAS}"
    assert report["device"]["emulated"] is False and report["device"]["build"] == host_bundle.manifest
    assert [(t["n_prompt"], t["n_gen"]) for t in report["tests"]] == [(16, 0), (0, 4)]
    pushed = sorted(p.name for p in (tmp_path / "remote").rglob("*") if p.is_file())
    assert small_f16.name in pushed and "lfmq-run" in pushed
    args = ["-p", "hello", "--raw", "--max-tokens", "6", "--ignore-eos", "--json"]
    there = run_cli("generate", str(small_f16), *args, "--device", f"ssh://{ALIAS}", "--profile", "host", env=env)
    here = run_cli("generate", str(small_f16), *args, "--temperature", "0")
    assert there.returncode == 0 and here.returncode == 0, (there.stderr, here.stderr)
    assert json.loads(there.stdout)["text"] == json.loads(here.stdout)["text"]
    assert wait_gone(str(tmp_path / "remote")) == []
    bad = run_cli("bench", str(small_f16), "--device", "ssh://lfmq-test-badkey", "-p", "8", "-n", "0", "-r", "1", env=env)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
