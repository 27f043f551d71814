"""Device profiles are complete data, detection reads this machine, predictions reproduce their calibration."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from lfmq.devices.predict import (efficiency, memory_budget, model_shape, peak_gflops,
                                  predict)
from lfmq.devices.profiles import builtin_profiles, cpuinfo, detect, get_profile, host_profile
from lfmq.devices.recipes import recipe
from lfmq.errors import UsageError

NAMES = ["rpi5", "ryzen-ai-9-hx-370", "ryzen-ai-max-395", "snapdragon-8-elite"]


def test_the_four_devices_are_there():
    assert list(builtin_profiles()) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_profile_is_complete(name):
    p = get_profile(name)
    assert {"model", "arch", "isa", "features", "cores", "frequency_ghz", "simd_bits", "fma_units", "source"} <= set(p.cpu)
    assert p.memory["bandwidth_gbs"] > 0 and p.memory["bandwidth_source"]
    assert p.build["cmake_args"]
    assert {"threads", "n_batch", "n_ubatch", "use_mmap", "flash_attn", "type_k", "type_v", "n_ctx"} <= set(p.runtime)
    assert p.recommend["types"] and p.recommend["reason"]
    assert p.published and all(pub.source and pub.conditions for pub in p.published)


def _reference(model: str, quant: str):
    from pathlib import Path

    from lfmq.devices.calibration import REFERENCE_BYTES, REFERENCE_PARAMS
    from lfmq.devices.predict import ModelShape

    n = REFERENCE_BYTES[(model, quant)]
    return ModelShape(Path(f"{model}-{quant}.gguf"), n, n, n, REFERENCE_PARAMS[model], 16, 6, 1024, 512, 65536, 3)


@pytest.mark.parametrize("name", NAMES)
def test_predict_reproduces_published_decode(name):
    """predict() on each published model gives back its figure: within 10% when fitted on all figures."""
    p = get_profile(name)
    for pub in [pub for pub in p.published if pub.decode_tps]:
        got = predict(p, _reference(pub.model, pub.quant or "Q4_0")).decode_tps
        assert got == pytest.approx(pub.decode_tps, rel=0.10), (name, pub.model)


def test_leave_one_out_holds_out_of_sample():
    """Each published figure predicted by a fit that never saw it: decode within 25%, prefill within 50%."""
    from lfmq.devices.calibration import leave_one_out

    rows = leave_one_out()
    assert len(rows) >= 12 and {r.kind for r in rows} == {"decode", "prefill"}
    for r in rows:
        assert r.predicted is not None
        assert abs(r.error) <= (0.25 if r.kind == "decode" else 0.50), r


def test_overhead_is_needed_by_the_data():
    """Without a per-token overhead, bandwidth alone misses the 350M/1.2B pairs by far more."""
    from lfmq.devices import calibration as c

    profiles = builtin_profiles()
    figs = c.figures(profiles.values())
    zero = c._fit_at(figs, profiles, 0.0)
    worst = max(abs(c._predict(f, zero, profiles) / f.tps - 1) for f in figs if f.kind == "decode")
    assert worst > 0.15 and c.builtin_fit().overhead_s > 0.0005


def test_efficiencies_are_physical():
    for p in builtin_profiles().values():
        eff = efficiency(p)
        assert 0 < eff.decode < 1 and 0 < eff.prefill < 1, p.name
        assert peak_gflops(p) > 0


def test_memory_budget_counts_attention_layers_only(small_f16):
    m = model_shape(small_f16)
    assert (m.n_layer, m.n_attn, m.kv_dim) == (4, 2, 128)
    b = memory_budget(m, n_ctx=4096, n_ubatch=512)
    assert b.kv_cache_mb == pytest.approx(2 * 4096 * 128 * 2 * 2 / 2**20)  # 2 attention layers, K and V, f16
    assert memory_budget(m, 4096, 512, use_mmap=True).weights_mb == pytest.approx(2 * b.weights_mb)
    assert b.total_mb > b.weights_mb


def test_prediction_for_a_file(small_f16):
    pred = predict(get_profile("rpi5"), model_shape(small_f16))
    assert pred.decode_tps > 0 and pred.prefill_tps > 0 and pred.memory.total_mb > 0


def test_detect_this_machine():
    d = detect()
    host = cpuinfo()
    assert d.host == host and host["cores"] >= 1
    assert all(get_profile(n).arch == host["arch"] for n in d.matches)
    assert d.best is None or d.best in d.matches
    assert host_profile().runtime["threads"] == host["cores"]


@pytest.mark.parametrize("name,needle", [
    ("snapdragon-8-elite", "android.toolchain.cmake"),
    ("snapdragon-8-elite", "pkg install"),  # Termux
    ("rpi5", "-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16"),
    ("ryzen-ai-max-395", 'CMAKE_ARGS="-DGGML_NATIVE=ON"'),
])
def test_recipes(name, needle):
    text = "\n".join(cmd for _, cmd in recipe(get_profile(name)).steps)
    assert needle in text and "llama-cpp-python==0.3.36" in text


def test_unknown_profile():
    with pytest.raises(UsageError, match="unknown device profile 'nope'"):
        get_profile("nope")


def test_cli_devices(small_f16):
    r = run_cli("devices", "--json")
    assert r.returncode == 0 and [p["name"] for p in json.loads(r.stdout)] == NAMES
    r = run_cli("devices", "show", "rpi5", "--model", str(small_f16))
    assert r.returncode == 0 and "PREDICTED" in r.stdout and "a prediction, not a measurement" in r.stdout
    r = run_cli("devices", "recipe", "rpi5")
    assert r.returncode == 0 and "armv8.2-a+dotprod+fp16" in r.stdout
    r = run_cli("devices", "show", "nope")
    assert r.returncode == 2 and r.stderr.startswith("error: unknown device profile 'nope'")
