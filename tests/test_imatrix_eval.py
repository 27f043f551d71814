"""`lfmq imatrix` and `lfmq eval` measure what they claim: checked against transformers' reference model."""

from __future__ import annotations

import json
import struct

import gguf
import numpy as np
import pytest

import lfmq
from conftest import calibration_text, run_cli
from lfmq.errors import LfmqError
from lfmq.inspect import field_value
from lfmq.quantize import quantize
from lfmq.quantize.eval import evaluate
from lfmq.quantize.imatrix import compute_imatrix
from lfmq.quantize.imatrix_file import Imatrix, read_imatrix, write_imatrix
from lfmq.quantize.chunks import ChunkEvaluator, chunks_of

CTX = 128


@pytest.fixture(scope="module")
def small_f32(small_ckpt):
    return lfmq.convert(small_ckpt, small_ckpt.parent / "small-F32.gguf", outtype="f32").path


@pytest.fixture(scope="module")
def small_imatrix(small_f32, tmp_path_factory):
    out = tmp_path_factory.mktemp("im") / "imatrix.gguf"
    return compute_imatrix(small_f32, out, text=calibration_text(), n_ctx=CTX, chunks=6, dataset="README")


def _chunks(gguf_path, text, limit, parse_special):
    with ChunkEvaluator(gguf_path, CTX) as ev:
        return chunks_of(ev.tokenize(text, parse_special), CTX, limit, ev.bos)


def test_chunks_are_cut_as_llama_cpp_cuts_them(small_f32):
    """BOS, then the text from its first token: each chunk's first token is replaced by BOS, nothing is skipped."""
    text = calibration_text()
    with ChunkEvaluator(small_f32, CTX) as ev:
        tokens = ev.tokenize(text, parse_special=False)
        bos = ev.bos
    assert tokens[0] == bos and bos not in tokens[1:50].tolist()
    chunks = _chunks(small_f32, text, 3, False)
    assert [c[0] for c in chunks] == [bos] * 3
    assert chunks[0][1:].tolist() == tokens[1:CTX].tolist()  # the text's first token is kept
    assert chunks[1][1:].tolist() == tokens[CTX + 1 : 2 * CTX].tolist()


def test_special_tokens_parsed_only_for_imatrix(small_f32):
    with ChunkEvaluator(small_f32, CTX) as ev:
        marker = "<|im_start|>user"
        assert 6 in ev.tokenize(marker, parse_special=True).tolist()
        assert 6 not in ev.tokenize(marker, parse_special=False).tolist()


def _reference_sums(ckpt, chunks):
    """Sum of squared inputs per column of every Linear in the decoder blocks, via forward hooks in transformers."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.LFM2, model.config.num_hidden_layers)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def fn(module, args):
            x = args[0].detach().double().reshape(-1, args[0].shape[-1]).numpy()
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return fn

    for hf_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in hf_name:
            module.register_forward_pre_hook(hook(names.get_name(hf_name + ".weight", try_suffixes=(".weight",))))
    with torch.no_grad():
        for chunk in chunks:
            model(torch.tensor([chunk.tolist()]))
    return sums, counts


def test_imatrix_equals_reference_activations(small_ckpt, small_f32, small_imatrix):
    im = read_imatrix(small_imatrix.path)
    ref_sums, ref_counts = _reference_sums(small_ckpt, _chunks(small_f32, calibration_text(), 6, True))
    assert set(im.sums) == set(ref_sums)  # every matmul weight of every block, the last block's FFN included
    assert len(im.sums) == 2 * (5 + 7)   # 2 conv blocks (in, out, 3 FFN) + 2 attention blocks (q, k, v, o, 3 FFN)
    for name, ref in ref_sums.items():
        assert im.counts[name][0] == ref_counts[name] == 6 * CTX, name
        np.testing.assert_allclose(im.sums[name][0], ref, rtol=1e-2, err_msg=name)


def test_imatrix_file_matches_llama_imatrix_format(small_imatrix):
    reader = gguf.GGUFReader(small_imatrix.path)
    assert field_value(reader, gguf.Keys.General.TYPE) == "imatrix"
    assert field_value(reader, gguf.Keys.General.ARCHITECTURE) is None
    assert field_value(reader, gguf.Keys.IMatrix.DATASETS) == ["README"]
    assert field_value(reader, gguf.Keys.IMatrix.CHUNK_COUNT) == 6
    assert field_value(reader, gguf.Keys.IMatrix.CHUNK_SIZE) == CTX
    t = {t.name: t for t in reader.tensors}
    assert list(t["blk.0.ffn_down.weight.in_sum2"].shape) == [512, 1]  # [inputs, matrices], as llama-imatrix writes
    assert list(t["blk.0.ffn_down.weight.counts"].shape) == [1, 1]


def test_legacy_dat_and_round_trip(tmp_path):
    sums = {"blk.0.ffn_up.weight": np.arange(1, 5, dtype=np.float32).reshape(1, 4)}
    im = Imatrix(sums=sums, counts={"blk.0.ffn_up.weight": np.array([8], np.float32)}, datasets=["d"], chunk_count=2,
                 chunk_size=4)
    write_imatrix(im, tmp_path / "a.gguf")
    back = read_imatrix(tmp_path / "a.gguf")
    np.testing.assert_array_equal(back.means()["blk.0.ffn_up.weight"], np.arange(1, 5) / 8)
    # llama-imatrix's legacy .dat stores per entry: name, ncall, then mean*ncall values; then chunks and dataset
    name = b"blk.0.ffn_up.weight"
    dat = struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 3, 4)
    dat += (np.arange(1, 5, dtype="<f4") * 3).tobytes() + struct.pack("<ii", 2, 1) + b"d"
    (tmp_path / "b.dat").write_bytes(dat)
    legacy = read_imatrix(tmp_path / "b.dat")
    np.testing.assert_allclose(legacy.means()["blk.0.ffn_up.weight"], np.arange(1, 5))
    assert (legacy.chunk_count, legacy.datasets) == (2, ["d"])


def test_quantize_with_imatrix_records_provenance(small_f32, small_imatrix, tmp_path):
    r = quantize(small_f32, "IQ2_XS", tmp_path / "iq2.gguf", imatrix=small_imatrix.path)[0]
    reader = gguf.GGUFReader(r.path)
    assert field_value(reader, "quantize.imatrix.file") == str(small_imatrix.path)
    assert field_value(reader, "quantize.imatrix.dataset") == "README"
    assert field_value(reader, "quantize.imatrix.entries_count") == 24
    assert field_value(reader, "quantize.imatrix.chunks_count") == 6
    assert {t.tensor_type.name for t in reader.tensors if t.name.endswith("ffn_up.weight")} <= {"IQ2_XS", "IQ2_S", "Q2_K"}


def test_imatrix_for_another_model_is_refused(small_imatrix, tiny_f32, tmp_path):
    with pytest.raises(LfmqError, match="has 256 values for blk.0.ffn_down.weight|computed for another model"):
        quantize(tiny_f32, "Q8_0", tmp_path / "x.gguf", imatrix=small_imatrix.path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("content,message", [
    (None, "error: text file {f} does not exist\n"),
    ("  \n", "error: {f} is empty: give a file with some text\n"),
])
def test_calibration_file_errors(small_f32, tmp_path, content, message):
    f = tmp_path / "calib.txt"
    if content is not None:
        f.write_text(content)
    r = run_cli("imatrix", str(small_f32), "-f", str(f), "-o", str(tmp_path / "im.gguf"))
    assert r.stderr == message.format(f=f) and r.returncode in (1, 2)
    assert not (tmp_path / "im.gguf").exists()


def test_eval_orders_the_ladder(small_f16, small_ladder):
    """On a model with peaked outputs, every distribution measure orders the ladder by precision."""
    rep = evaluate([small_ladder[t] for t in ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0")], small_f16,
                   text=calibration_text(), n_ctx=CTX)
    assert rep.reference.kld_mean == 0 and rep.reference.top1_agreement == 1
    klds = [m.kld_mean for m in rep.models]
    p99s = [m.kld_p99 for m in rep.models]
    top1 = [m.top1_agreement for m in rep.models]
    assert klds == sorted(klds) and p99s == sorted(p99s) and top1 == sorted(top1, reverse=True)
    assert klds[0] < 0.01 < klds[-1]
    assert rep.synthetic and rep.tokens_scored == rep.chunks * (CTX // 2 - 1)


def test_eval_ppl_equals_reference_computation(small_ckpt, small_f32):
    """PPL scored the llama-perplexity way (second half of each chunk) equals transformers' on the same chunks."""
    import torch
    from transformers import AutoModelForCausalLM

    rep = evaluate([], small_f32, text=calibration_text(), n_ctx=CTX, chunks=4)
    model = AutoModelForCausalLM.from_pretrained(small_ckpt, dtype=torch.float32).eval()
    nll = []
    with torch.no_grad():
        for chunk in _chunks(small_f32, calibration_text(), 4, False):
            logp = torch.log_softmax(model(torch.tensor([chunk.tolist()])).logits[0].double(), -1).numpy()
            first = CTX // 2
            nll += [-logp[j, chunk[j + 1]] for j in range(first, CTX - 1)]
    assert rep.reference.ppl == pytest.approx(float(np.exp(np.mean(nll))), rel=2e-3)


def test_cli_eval_json(small_f16, small_ladder):
    r = run_cli("eval", str(small_ladder["Q8_0"]), "-r", str(small_f16), "--n-ctx", "64", "--chunks", "3", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["chunks"] == 3 and rep["n_ctx"] == 64 and rep["synthetic"] is True
    assert set(rep["models"][0]) >= {"ppl", "ppl_error", "delta_ppl", "kld_mean", "kld_p99", "top1_agreement",
                                     "bytes", "bits_per_weight"}
