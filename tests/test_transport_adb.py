"""adb devices. NOTE: there is no Android device on this machine. The adb client (Debian's `adb`) is real, but these
tests put a FAKE `adb` first on PATH (tests/fake_adb/adb) that implements `devices`, `-s SERIAL shell CMD` and
`-s SERIAL push` by running the commands locally under a temp root (/data/local/tmp is rewritten into it). What is
tested is lfmq's plumbing: choosing the device, the commands it sends, pushes only when missing, the run wrapper and
the stopping of an interrupted run. Nothing here has run on a phone."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_helpers import ctrl_c_on, marker, wait_gone, write_runner
from lfmq.devices.transport import parse_device, sha256_file
from lfmq.devices.transport_adb import AdbDevice, list_devices
from lfmq.errors import DeviceError

FAKE = Path(__file__).parent / "fake_adb"


@pytest.fixture
def adb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Configure the fake adb: adb("SERIAL", "OTHER:unauthorized") lists those devices. Returns the fake's log."""
    root = tmp_path / "phone"
    (root / "data/local/tmp").mkdir(parents=True)
    log = tmp_path / "adb.log"
    monkeypatch.setenv("PATH", f"{FAKE}:{Path('/usr/bin')}:{Path('/bin')}")
    monkeypatch.setenv("FAKE_ADB_ROOT", str(root))
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))

    def setup(*devices: str) -> Path:
        monkeypatch.setenv("FAKE_ADB_DEVICES", " ".join(devices))
        return log

    setup.root = root   # type: ignore[attr-defined]
    return setup


def pushes(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("push")] if log.exists() else []


def test_list_devices():
    out = "* daemon started successfully\nList of devices attached\nR5CX1\tdevice\nemulator-5554\toffline\n" \
          "0123\tno permissions (user in plugdev group; are your udev rules wrong?)\n\n"
    assert list_devices(out) == [("R5CX1", "device"), ("emulator-5554", "offline"), ("0123", "no permissions")]


def test_no_device(adb):
    adb()
    with pytest.raises(DeviceError, match=r"^no Android device: `adb devices` lists none; connect the phone by USB"):
        parse_device("adb").describe()


def test_several_devices_are_named(adb):
    adb("R5CX1", "9A7B2", "OLD:offline")
    with pytest.raises(DeviceError) as e:
        parse_device("adb").describe()
    assert str(e.value) == ("several Android devices are connected (R5CX1, 9A7B2): pick one with --device "
                            "adb:SERIAL")


@pytest.mark.parametrize("devices, uri, message", [
    (["R5CX1"], "adb:NOPE", r"^no Android device NOPE: adb devices lists R5CX1 \(device\)$"),
    (["R5CX1:unauthorized"], "adb:R5CX1", r"^Android device R5CX1 is unauthorized: unlock the phone and accept"),
    (["R5CX1:offline"], "adb", r"^no usable Android device: R5CX1 is offline: reconnect the cable"),
])
def test_device_not_usable(adb, devices, uri, message):
    adb(*devices)
    with pytest.raises(DeviceError, match=message):
        parse_device(uri).describe()


def test_serial_picks_one_of_several(adb):
    adb("R5CX1", "9A7B2")
    dev = parse_device("adb:9A7B2")
    info = dev.describe()
    assert (dev.uri, info.kind, info.work_dir) == ("adb:9A7B2", "adb", "/data/local/tmp/lfmq")
    assert info.mem_total_bytes > 0 and info.free_bytes > 0


def test_push_only_when_missing_and_run(adb, tmp_path):
    log = adb("R5CX1")
    runner = write_runner(tmp_path)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(range(256)) * 100)
    dev = parse_device("adb")
    remote_runner, remote_model = dev.ensure_all([runner, model])
    assert remote_model == f"/data/local/tmp/lfmq/{sha256_file(model)}/m.gguf"
    on_phone = adb.root / remote_model.lstrip("/")
    assert on_phone.read_bytes() == model.read_bytes()
    assert pushes(log) == [f"push R5CX1 {Path(r).parent}/.{Path(r).name}.partial" for r in (remote_runner, remote_model)]
    again = AdbDevice()
    assert again.ensure_all([runner, model]) == [remote_runner, remote_model] and again.pushed == []
    assert len(pushes(log)) == 2
    lines = []
    assert again.run([remote_runner, "generate", "2"], on_line=lines.append)[0] == 0
    assert [line[:18] for line in lines] == ['{"event": "token",'] * 2 + ['{"event": "done", ']
    assert again.run_json([remote_runner, "bench"])[0]["runner"] == "stand-in"
    with pytest.raises(DeviceError, match=r"^lfmq-run died with SIGILL \(illegal instruction\) on adb:R5CX1"):
        again.run([remote_runner, "sigill"])


def test_interrupt_stops_the_process_on_the_device(adb, tmp_path):
    log = adb("R5CX1")
    dev = parse_device("adb")
    runner = dev.ensure(write_runner(tmp_path))
    tag = marker()
    with pytest.raises(DeviceError, match=r"^interrupted: stopped lfmq-run on adb:R5CX1$"):
        dev.run([runner, "sleep", tag], on_line=ctrl_c_on("ready"))
    assert wait_gone(tag) == []
    assert any("kill -TERM" in line for line in log.read_text().splitlines())   # stopped through `adb shell`
    assert not list((adb.root / "data/local/tmp/lfmq/run").glob("*.pid"))


def test_bench_and_generate_through_the_cli_over_the_fake_adb(adb, small_f16, tmp_path):
    """`lfmq bench/generate MODEL --device adb:SERIAL` end to end over the FAKE adb (plumbing only: the host build
    runs locally under the fake's root; no phone is involved): the bundle and model pushed once, the report records
    an adb device, a second run pushes nothing, and two phones without a serial is one line naming both."""
    import json

    from conftest import run_cli

    log = adb("R5CW30ABCDE")
    args = ["-p", "8", "-n", "2", "-r", "1", "-t", "2", "--profile", "host"]
    out = run_cli("bench", str(small_f16), "--device", "adb:R5CW30ABCDE", *args, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["device"]["kind"], report["device"]["name"]) == ("adb", "adb:R5CW30ABCDE")
    assert report["device"]["build"]["profile"] == "host" and len(report["tests"]) == 2
    first = pushes(log)
    assert any(small_f16.name in p for p in first) and any("lfmq-run" in p for p in first)
    gen = run_cli("generate", str(small_f16), "-p", "hi", "--raw", "--max-tokens", "3", "--ignore-eos", "--json",
                  "--device", "adb", "--profile", "host")
    assert gen.returncode == 0 and json.loads(gen.stdout)["stats"]["generated_tokens"] == 3, gen.stderr
    assert pushes(log) == first
    adb("R5CW30ABCDE", "emulator-5554")
    two = run_cli("bench", str(small_f16), "--device", "adb", *args)
    assert two.returncode == 1 and "R5CW30ABCDE" in two.stderr and "emulator-5554" in two.stderr
    assert len(two.stderr.strip().splitlines()) == 1
