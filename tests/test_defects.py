"""Defects that once passed every test (issue 14), each caught here where the suite could not see it: a checkpoint's
own RMS-norm epsilon (and rope base), --imatrix through the CLI, the direction of the KL divergence, what the bench
timer times, which memory figure is the peak, and the efficiency factor of a prediction. scripts/mutate.py puts
each defect back into a scratch copy and checks that these tests fail on it."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np
import pytest

import lfmq
from conftest import SAMPLE, hf_ids, llama_logits, reference_logits, run_cli

# ---------------------------------------------------------------------------------------------------------------------
# 1. the RMS-norm epsilon, in both spellings a config uses

EPS = 1e-2  # far from the default 1e-5, and large enough to move the tiny model's logits well past the parity bound


def _eps_as(key: str):
    def edit(cfg: dict) -> None:
        cfg.pop("norm_eps", None)
        cfg[key] = EPS
    return edit


@pytest.mark.parametrize("key", ["norm_eps", "rms_norm_eps"])
def test_norm_eps_is_written_in_either_spelling(make_ckpt, tmp_path, key):
    from lfmq.meta import read_meta

    out = lfmq.convert(make_ckpt(edit=_eps_as(key)), tmp_path / "m.gguf", outtype="f32").path
    assert read_meta(out).rms_eps == pytest.approx(EPS)


def test_norm_eps_reaches_the_logits(make_ckpt, tmp_path):
    """Both spellings give transformers' logits for that epsilon (transformers reads `norm_eps` only, so the
    reference is the `norm_eps` checkpoint: synth's weights are the same for the same seed); the default epsilon
    does not, so the check can fail."""
    spelled = {key: make_ckpt(edit=_eps_as(key)) for key in ("norm_eps", "rms_norm_eps")}
    ids = hf_ids(spelled["norm_eps"], SAMPLE)
    ref = reference_logits(spelled["norm_eps"], ids)
    scale = np.abs(ref).max()
    for key, folder in spelled.items():
        got = llama_logits(lfmq.convert(folder, tmp_path / f"{key}.gguf", outtype="f32").path, ids)
        assert np.abs(got - ref).max() <= 1e-3 * scale, key
    default = llama_logits(lfmq.convert(make_ckpt(), tmp_path / "default.gguf", outtype="f32").path, ids)
    assert np.abs(default - ref).max() > 1e-1 * scale


def _rope_top_level(cfg: dict) -> None:  # LFM2's first release
    cfg.pop("rope_parameters")
    cfg["rope_theta"] = 250000.0


@pytest.mark.parametrize("edit", [
    _rope_top_level,
    lambda cfg: cfg.update(rope_parameters={"rope_theta": 250000.0, "rope_type": "default"}),
    lambda cfg: cfg.update(rope_parameters={"full_attention": {"rope_theta": 250000.0, "rope_type": "default"}}),
], ids=["top-level", "rope_parameters", "per-layer-type"])
def test_rope_base_is_written_from_each_place(make_ckpt, tmp_path, edit):
    """Found while building scripts/mutate.py's table: every fixture used the default base 1e6, so a converter
    ignoring the top-level `rope_theta` passed every test."""
    from lfmq.meta import read_meta

    out = lfmq.convert(make_ckpt(edit=edit), tmp_path / "m.gguf", outtype="f32").path
    assert read_meta(out).rope_freq_base == 250000.0


# ---------------------------------------------------------------------------------------------------------------------
# 2. `lfmq quantize --imatrix` with a k-quant, which llama.cpp would happily make without the matrix


def _imatrix_for(model: Path, path: Path, only: str = "") -> Path:
    """An importance matrix for every blk.* weight of `model` (or those whose name contains `only`), with values
    far from uniform so that a k-quant made with it differs from one made without."""
    from lfmq.llama.gguf_index import tensor_index
    from lfmq.quantize.imatrix_file import Imatrix, write_imatrix

    tensors = tensor_index(model).tensors
    names = [n for n, t in tensors.items() if n.startswith("blk.") and len(t.shape) == 2 and only in n]
    rng = np.random.default_rng(0)
    sums = {n: rng.uniform(0.01, 100.0, size=(1, tensors[n].shape[0])).astype(np.float32) for n in names}
    counts = {n: np.array([10.0], np.float32) for n in names}
    write_imatrix(Imatrix(sums, counts, datasets=["mutation-test"], chunk_count=3, chunk_size=128), path)
    return path


def _tensor_bytes(path: Path) -> dict[str, bytes]:
    return {t.name: t.data.tobytes() for t in gguf.GGUFReader(path).tensors}


def test_cli_quantize_passes_imatrix(small_f16, tmp_path):
    from lfmq.inspect import field_value
    from lfmq.quantize import quantize

    im = _imatrix_for(small_f16, tmp_path / "im.gguf")
    out = tmp_path / "with.gguf"
    r = run_cli("quantize", str(small_f16), "-q", "Q4_K_M", "--imatrix", str(im), "-o", str(out))
    assert r.returncode == 0, r.stderr
    reader = gguf.GGUFReader(out)
    assert field_value(reader, "quantize.imatrix.file") == str(im)
    assert field_value(reader, "quantize.imatrix.dataset") == "mutation-test"
    assert field_value(reader, "quantize.imatrix.entries_count") == 26  # 4 blocks' matrices, as written above
    assert field_value(reader, "quantize.imatrix.chunks_count") == 3
    # and the matrix weighed in: the same k-quant without it rounds the weights otherwise
    plain = quantize(small_f16, "Q4_K_M", tmp_path / "without.gguf")[0].path
    with_im, without = _tensor_bytes(out), _tensor_bytes(plain)
    assert with_im["blk.0.ffn_up.weight"] != without["blk.0.ffn_up.weight"]


# ---------------------------------------------------------------------------------------------------------------------
# 3. KL divergence of the model's distribution from the reference's: KL(ref || q), not KL(q || ref)

P_REF = np.array([0.9, 0.05, 0.05])
Q_MODEL = np.array([0.5, 0.3, 0.2])
# by hand: sum over tokens of ref * log(ref / q), and the other way round
KL_REF_Q = 0.9 * math.log(0.9 / 0.5) + 0.05 * math.log(0.05 / 0.3) + 0.05 * math.log(0.05 / 0.2)  # 0.3701
KL_Q_REF = 0.5 * math.log(0.5 / 0.9) + 0.3 * math.log(0.3 / 0.05) + 0.2 * math.log(0.2 / 0.05)    # 0.5209


def test_kl_is_of_the_model_from_the_reference():
    from lfmq.quantize.eval import _Accumulator

    assert abs(KL_REF_Q - KL_Q_REF) > 0.1  # asymmetric enough to tell the directions apart
    acc = _Accumulator()
    rows = 4
    acc.add(np.log(np.tile(Q_MODEL, (rows, 1))), np.array([0, 1, 2, 0]), np.log(np.tile(P_REF, (rows, 1))))
    mean, err, p99, top1 = acc.kld_stats()
    assert mean == pytest.approx(KL_REF_Q, rel=1e-9)
    assert p99 == pytest.approx(KL_REF_Q, rel=1e-9) and err == pytest.approx(0.0, abs=1e-12)
    assert top1 == 1.0  # both put most mass on token 0


class _FakeEvaluator:
    """What eval's loop needs of a ChunkEvaluator: every row of logits is one fixed distribution."""

    n_vocab, bos, n_seq = 3, 0, 2

    def __init__(self, probs: np.ndarray) -> None:
        self.logp = np.log(probs)

    def tokenize(self, text: str, parse_special: bool) -> np.ndarray:
        return np.arange(40) % 3

    def decode_packed(self, chunks: list[np.ndarray], first: int) -> None:
        self.n_rows = len(chunks[0]) - first

    def rows(self, k: int) -> np.ndarray:
        return np.tile(self.logp, (self.n_rows, 1))


def test_eval_loop_measures_each_model_against_the_first():
    from lfmq.quantize.eval import _run

    ref, model = _run([_FakeEvaluator(P_REF), _FakeEvaluator(Q_MODEL)], "text", 16, None, None)
    assert model.kld_stats()[0] == pytest.approx(KL_REF_Q, rel=1e-9)
    assert ref.kld_stats()[0] == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# 4 and 5. the bench case: what the timer times, and which memory figure is the peak

STATUS = """Name:\tpython
VmPeak:\t 3000000 kB
VmSize:\t 2900000 kB
VmHWM:\t 1048576 kB
VmRSS:\t  524288 kB
RssAnon:\t  393216 kB
RssFile:\t  131072 kB
RssShmem:\t       0 kB
"""


class _Clock:
    """Fake time: only a decode moves it, by 1 microsecond per token."""

    def __init__(self) -> None:
        self.ns = 0

    def perf_counter_ns(self) -> int:
        return self.ns

    def perf_counter(self) -> float:
        return self.ns / 1e9


class _FakeModel:
    """The part of lfmq.runtime's Model a bench case uses."""

    n_vocab, n_batch = 100, 64

    def __init__(self, clock: _Clock) -> None:
        from lfmq.llama.settings import Settings

        self.clock, self.engine, self.settings = clock, self, Settings(threads=1)

    def decode(self, tokens: list[int]) -> None:
        self.clock.ns += 1000 * len(tokens)

    def synchronize(self) -> None: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return "chat"

    def tokenize(self, text: str, special: bool) -> list[int]:
        return [1] * 10

    def logits(self) -> np.ndarray:
        return np.zeros(self.n_vocab)

    def describe(self) -> SimpleNamespace:
        return SimpleNamespace(desc="fake", size=1, n_params=1)


@pytest.fixture
def fake_case(monkeypatch):
    """bench.case.run over a fake model and a fake clock, with a status where the peak is not the current RSS."""
    import lfmq.runtime
    from lfmq.bench import case

    clock, real_status = _Clock(), case.memory_status
    monkeypatch.setattr(case, "time", clock)
    monkeypatch.setattr(lfmq.runtime, "load", lambda path, **knobs: _FakeModel(clock))
    monkeypatch.setattr(case, "memory_status", lambda: real_status(STATUS))
    return case


def test_memory_status_reads_the_peak_apart():
    from lfmq.bench.case import memory_status

    assert memory_status(STATUS) == {"VmHWM": 1024.0, "VmRSS": 512.0, "RssAnon": 384.0, "RssFile": 128.0}
    real = memory_status()
    assert real["VmHWM"] >= real["VmRSS"] > 0


@pytest.mark.parametrize("n_prompt,n_gen,expect_ns", [(48, 0, 48_000), (0, 6, 6_000)], ids=["pp", "tg"])
def test_bench_times_only_the_test_not_the_depth(fake_case, n_prompt, n_gen, expect_ns):
    for depth in (0, 16):
        r = fake_case.run(fake_case.Case("m.gguf", n_prompt, n_gen, depth, reps=3, knobs={}))
        assert r.samples_ns == [expect_ns] * 3, f"depth {depth}"
        assert r.ttft_ms == pytest.approx(0.01)  # the 10 chat tokens, from an empty context


def test_bench_peak_memory_is_vmhwm(fake_case, tmp_path):
    from lfmq.bench.run import _test

    r = fake_case.run(fake_case.Case("m.gguf", 8, 0, 0, reps=1, knobs={}))
    assert (r.vmhwm, r.vmrss, r.rssanon, r.rssfile) == (1024.0, 512.0, 384.0, 128.0)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x")
    t = _test(model, "0" * 64, 8, 0, 0, r)
    assert (t.peak_rss_mb, t.rss_anon_mb, t.rss_file_mb) == (1024.0, 384.0, 128.0)


# ---------------------------------------------------------------------------------------------------------------------
# 6. predict(): the published figure a profile is calibrated on comes back, and a hand computation


def _shape(model: str, nbytes: int, params: int):
    from lfmq.devices.predict import ModelShape

    # LFM2.5-350M's layout; only bytes and parameters enter the speeds
    return ModelShape(path=Path(f"{model}.gguf"), file_bytes=nbytes, tensor_bytes=nbytes, bytes_per_token=nbytes,
                      params=params, n_layer=16, n_attn=6, n_embd=1024, kv_dim=512, n_vocab=65536, l_cache=3)


def _published_cases() -> list:
    from lfmq.devices.predict import ASSUMED_QUANT, REFERENCE_BYTES
    from lfmq.devices.profiles import builtin_profiles

    return [pytest.param(p, pub, id=f"{p.name}-{pub.model}-{pub.quant or ASSUMED_QUANT}")
            for p in builtin_profiles().values() for pub in p.published
            if (pub.model, pub.quant or ASSUMED_QUANT) in REFERENCE_BYTES]


def test_some_published_figure_can_be_predicted():
    assert len(_published_cases()) >= 3  # otherwise the test below runs on nothing and cannot fail


@pytest.mark.parametrize("profile,pub", _published_cases())
def test_predict_gives_back_the_figure_it_was_calibrated_on(profile, pub):
    from lfmq.devices.predict import ASSUMED_QUANT, REFERENCE_BYTES, REFERENCE_PARAMS, predict

    alone = replace(profile, published=[pub])  # one figure: the calibration fits it exactly
    shape = _shape(pub.model, REFERENCE_BYTES[(pub.model, pub.quant or ASSUMED_QUANT)], REFERENCE_PARAMS[pub.model])
    pred = predict(alone, shape)
    if pub.decode_tps:
        assert pred.decode_tps == pytest.approx(pub.decode_tps, rel=0.01)
    if pub.prefill_tps:
        assert pred.prefill_tps == pytest.approx(pub.prefill_tps, rel=0.01)


def test_predict_by_hand():
    """A decoded token costs the shared per-token overhead plus its bytes at the profile's share of the bandwidth;
    prefill is compute-bound. So a model half the bytes and half the parameters of the one a profile's figure was
    published for spends half the figure's memory time per token and prefills twice as fast, whatever the
    device's nominal bandwidth and compute."""
    from lfmq.devices.predict import predict
    from lfmq.devices.profiles import Profile, Published

    ref_bytes, ref_params = 216_923_136, 354_483_968  # LFM2.5-350M Q4_0
    pub = Published(model="LFM2.5-350M", quant="Q4_0", decode_tps=50.0, prefill_tps=1000.0)
    for bandwidth, cores in [(100.0, 4), (10.0, 8)]:
        p = Profile("test", "test", "", {"arch": "test-arch", "cores": cores, "frequency_ghz": 2.0, "simd_bits": 128,
                                         "fma_units": 2}, {"bandwidth_gbs": bandwidth}, {}, {}, {}, [pub])
        pred = predict(p, _shape("half", ref_bytes // 2, ref_params // 2))
        overhead = pred.efficiency.overhead_ms / 1e3
        assert 0 <= overhead < 1 / 50.0
        memory_s = 1 / 50.0 - overhead  # what the published token spent reading its weights
        assert pred.decode_tps == pytest.approx(1 / (overhead + memory_s / 2), rel=1e-6)
        assert pred.prefill_tps == pytest.approx(1000.0 * 2, rel=1e-6)
        # the factors themselves: the share of the nominal bandwidth and of the peak int8 compute
        assert pred.efficiency.decode == pytest.approx(ref_bytes / (bandwidth * 1e9 * memory_s))
        peak = cores * 2.0 * 2 * (128 / 8) * 2 * 1e9  # cores x GHz x FMA units x int8 lanes x 2
        assert pred.efficiency.prefill == pytest.approx(1000.0 * 2 * ref_params / peak)
