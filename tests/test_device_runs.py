"""`lfmq bench --device` and `lfmq generate --device` end to end, as a user types them: the profile's build (cached),
the model on the device, lfmq-run there, the results back in the same report objects as a local run. qemu:rpi5 is
the Pi 5's static aarch64 build under qemu-user with the Cortex-A76 CPU model (emulated: its speeds are labelled and
never shown as the device's). The SSH runs are in tests/test_transport_ssh.py, beside their real sshd."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import lfmq
from conftest import run_cli
from lfmq.devices.transport import DeviceInfo, LocalDevice
from lfmq.errors import DeviceError, UsageError

FIXTURE = Path(__file__).parent / "fixtures" / "lfm2-tools-tiny"
ASK = "What is the weather in Paris?"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trained tool-calling fixture at F32 and Q8_0 (its answers mean something: a call with arguments)."""
    from lfmq.quantize import quantize

    d = tmp_path_factory.mktemp("trained")
    f32 = lfmq.convert(FIXTURE, d / "fx-F32.gguf", outtype="f32").path
    (q8,) = quantize(f32, "Q8_0", d / "fx-Q8_0.gguf")
    return {"F32": f32, "Q8_0": q8.path}


def _json(out: Any) -> Any:
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_bench_on_qemu_rpi5_is_a_report_labelled_emulated(trained: dict[str, Path], tmp_path: Path) -> None:
    """The same report as a local bench, with the device, its CPU features and the build's manifest; its speeds are
    marked emulated in every rendering; --compare reads it beside a local report."""
    args = ["-p", "16", "-n", "4", "-r", "1", "-t", "2"]
    dev = run_cli("bench", str(trained["Q8_0"]), "--device", "qemu:rpi5", *args, "--report", str(tmp_path / "dev"))
    assert dev.returncode == 0, dev.stderr
    report = json.loads((tmp_path / "dev" / "report.json").read_text())
    d = report["device"]
    assert (d["kind"], d["name"], d["emulated"]) == ("qemu", "qemu:rpi5", True)
    assert {"dotprod", "fp16"} <= set(d["features"]) and "i8mm" not in d["features"]   # the Cortex-A76 model
    assert d["build"]["profile"] == "rpi5" and "lfmq-run" in d["build"]["files"]
    assert report["profile"]["name"] == "rpi5"
    assert [(t["n_prompt"], t["n_gen"]) for t in report["tests"]] == [(16, 0), (0, 4)]
    assert all(t["avg_ts"] > 0 and t["ttft_ms"] > 0 and t["peak_rss_mb"] > 0 for t in report["tests"])
    assert "NEON = 1" in report["build"]["system_info"] and "DOTPROD = 1" in report["build"]["system_info"]
    md = (tmp_path / "dev" / "report.md").read_text()
    assert "emulated" in md and "not a speed of qemu:rpi5" in md
    assert "emulated" in dev.stderr
    local = run_cli("bench", str(trained["Q8_0"]), *args, "-o", str(tmp_path / "local.json"))
    assert local.returncode == 0, local.stderr
    rows = _json(run_cli("bench", "--compare", str(tmp_path / "local.json"), str(tmp_path / "dev" / "report.json"),
                         "--json"))
    assert len(rows) == 2


def test_generate_on_qemu_rpi5_makes_the_hosts_call(trained: dict[str, Path]) -> None:
    """Greedy on the Pi 5 build under emulation answers what lfmq answers here at temperature 0: the same text,
    markers included, and the same parsed call; streamed prose never shows a marker."""
    for q in ("F32", "Q8_0"):
        model = str(trained[q])
        here = _json(run_cli("generate", model, "-p", ASK, "--temperature", "0", "--max-tokens", "40", "--json"))
        there = _json(run_cli("generate", model, "-p", ASK, "--device", "qemu:rpi5", "--max-tokens", "40", "--json"))
        assert there["tool_calls"] == here["tool_calls"] and there["tool_calls"], (q, there, here)
        assert there["text"] == here["text"] and there["text"].startswith("<|tool_call_start|>")
        assert there["stats"]["generated_tokens"] == here["stats"]["generated_tokens"]
    streamed = run_cli("generate", str(trained["F32"]), "-p", ASK, "--device", "qemu:rpi5", "--max-tokens", "40")
    assert streamed.returncode == 0, streamed.stderr
    assert "<|" not in streamed.stdout and "tool call get_weather" in streamed.stderr


@pytest.mark.parametrize("args, message", [
    (["--temperature", "0.7"], "on a device, generate decodes greedily with the tools offered in the prompt: drop "
                               "--temperature (or run it here without --device)"),
    (["--tool-choice", "required"], "drop --tool-choice"),
    (["--profile", "snapdragon-8-elite"], "--profile snapdragon-8-elite and --device qemu:rpi5 name different "
                                          "profiles: drop --profile"),
])
def test_what_a_device_run_cannot_do_is_a_usage_error(trained: dict[str, Path], args: list[str], message: str) -> None:
    out = run_cli("generate", str(trained["F32"]), "-p", ASK, "--device", "qemu:rpi5", *args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_bad_device_uri_and_a_missing_model(tmp_path: Path, trained: dict[str, Path]) -> None:
    out = run_cli("bench", str(trained["F32"]), "--device", "telnet://pi", "-p", "8", "-n", "0", "-r", "1")
    assert out.returncode == 2 and "unknown device 'telnet://pi'" in out.stderr
    out = run_cli("generate", str(tmp_path / "nope.gguf"), "-p", "x", "--device", "qemu:rpi5")
    assert out.returncode == 1 and "nope.gguf" in out.stderr and "Traceback" not in out.stderr


class SmallDevice(LocalDevice):
    """A device with 16 MiB free that records what was pushed to it (the session's checks run before any push)."""

    uri, kind = "ssh://tiny-board", "ssh"

    def __init__(self) -> None:
        super().__init__()
        self.pushed: list[str] = []
        self.cleaned = False

    def describe(self) -> DeviceInfo:
        return DeviceInfo(self.uri, self.kind, "aarch64", "Raspberry Pi 5 (Cortex-A76)", 4,
                          ["asimd", "dotprod", "fp16"], ["fp", "asimd", "asimddp", "asimdhp", "fphp"],
                          2**31, 16 * 2**20, "/tmp", 2**34)

    def ensure_all(self, files: Any, sha256s: Any = None, progress: Any = None) -> list[str]:
        self.pushed += [str(f) for f in files]
        return super().ensure_all(files, sha256s, progress)

    def cleanup(self) -> None:
        self.cleaned = True


def test_a_model_that_does_not_fit_is_refused_before_any_push(monkeypatch: pytest.MonkeyPatch,
                                                              trained: dict[str, Path]) -> None:
    """The F32 fixture with a 4096-token context, predicted above 16 MiB: one line, nothing pushed, nothing built."""
    from lfmq.devices import session

    dev = SmallDevice()
    monkeypatch.setattr(session, "parse_device", lambda uri: dev)
    monkeypatch.setattr("lfmq.devices.build.build", lambda *a, **k: pytest.fail("built before the memory check"))
    model = trained["F32"]
    with pytest.raises(DeviceError, match=r"^the model does not fit in ssh://tiny-board's memory: it needs about "
                                          r"\d+ MiB, 16 MiB are available; pick a smaller quantization"):
        session.DeviceSession.open("ssh://tiny-board", [model], n_ctx=4096)
    assert dev.pushed == [] and dev.cleaned


def test_profile_is_picked_from_the_cpu_and_checked_against_it() -> None:
    from lfmq.devices.session import pick_profile

    dev = SmallDevice()
    assert pick_profile(None, dev, dev.describe()) == "rpi5"   # dotprod without i8mm: the Pi 5's build
    with pytest.raises(DeviceError, match="^profile ryzen-ai-max-395 builds for x86_64 but ssh://tiny-board is "
                                          "aarch64: pick a profile for aarch64"):
        pick_profile("ryzen-ai-max-395", dev, dev.describe())
    assert pick_profile(None, LocalDevice(), LocalDevice().describe()) == "host"
    with pytest.raises(UsageError):
        from lfmq.devices.transport import parse_device

        pick_profile("rpi5", parse_device("qemu:snapdragon-8-elite"), dev.describe())


def test_calibrate_from_a_report_predicts_what_was_measured(trained: dict[str, Path], tmp_path: Path) -> None:
    """A profile calibrated on a report predicts that report's own figures back (decode and prefill), for any model
    through its bytes per token; an emulated report and an existing output without --force are refused."""
    model = str(trained["Q8_0"])
    out = run_cli("bench", model, "-p", "32", "-n", "8", "-r", "2", "--report", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    prof = tmp_path / "mine.json"
    cal = _json(run_cli("devices", "calibrate", str(tmp_path / "r" / "report.json"), "-o", str(prof), "--name",
                        "my-box", "--json"))
    assert cal["profile"] == str(prof) and 0 < cal["calibration"]["decode_efficiency"]
    shown = _json(run_cli("devices", "show", str(prof), "--model", model, "--json"))
    assert shown["profile"]["name"] == "my-box" and shown["profile"]["calibration"] == cal["calibration"]
    measured = {("tg" if t["n_gen"] else "pp"): t["avg_ts"] for t in report["tests"]}
    assert shown["prediction"]["decode_tps"] == pytest.approx(measured["tg"], rel=1e-6)
    assert shown["prediction"]["prefill_tps"] == pytest.approx(measured["pp"], rel=1e-6)
    again = run_cli("devices", "calibrate", str(tmp_path / "r" / "report.json"), "-o", str(prof))
    assert again.returncode == 1 and "exists: pass --force" in again.stderr
    report["device"]["emulated"], report["device"]["kind"] = True, "qemu"
    (tmp_path / "emu.json").write_text(json.dumps(report))
    emu = run_cli("devices", "calibrate", str(tmp_path / "emu.json"), "-o", str(tmp_path / "x.json"))
    assert emu.returncode == 1 and "emulated run" in emu.stderr and not (tmp_path / "x.json").exists()


def test_ctrl_c_during_a_device_run_stops_it_there_and_exits_130(trained: dict[str, Path], tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to lfmq, as a terminal sends it) while lfmq-run generates under qemu: one line, exit 130,
    and no emulated runner left behind."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from device_helpers import running, wait_gone

    model = tmp_path / "ctrl-c.gguf"   # a path of its own: the runner's command line is found by it
    shutil.copy(trained["F32"], model)
    env = {k: v for k, v in os.environ.items() if k != "LFMQ_DEBUG"}
    proc = subprocess.Popen([sys.executable, "-m", "lfmq", "generate", str(model), "-p", ASK, "--device", "qemu:rpi5",
                             "--max-tokens", "3000", "--ignore-eos", "-c", "4096"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        end = time.monotonic() + 300
        while not [c for c in running(str(model)) if "lfmq-run" in c] and time.monotonic() < end:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        assert [c for c in running(str(model)) if "lfmq-run" in c], "the runner never started"
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted: stopped lfmq-run on qemu:rpi5", err
    assert "Traceback" not in err
    assert wait_gone(str(model)) == []


def test_device_overhead_from_a_report_s_own_tg_tests() -> None:
    """Two model sizes give the overhead and the bandwidth term back; one size keeps the published fit's overhead,
    unless a token took no longer than it (a tiny model on a fast machine): then the whole time is bandwidth."""
    from lfmq.devices.calibration import builtin_fit, device_overhead

    shared = builtin_fit().overhead_s
    exact = [(b, 0.0008 + b / 50e9) for b in (200_000_000, 700_000_000)]
    assert device_overhead(exact) == pytest.approx(0.0008, rel=1e-9)
    assert device_overhead([(200_000_000, 0.02)]) == shared
    assert device_overhead([(3_000_000, 0.0003)]) == 0.0
    assert device_overhead([]) == 0.0
