"""`lfmq eval` packs several chunks into one decode as llama-perplexity does; the numbers stay those of one chunk per
decode: each chunk is computed whole in one ubatch, so its logits are bit-identical."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import calibration_text
from lfmq.errors import UsageError
from lfmq.quantize.chunks import ChunkEvaluator, chunks_of
from lfmq.quantize.eval import evaluate

CTX = 128


def test_packed_rows_equal_one_chunk_rows(small_f16):
    with ChunkEvaluator(small_f16, CTX) as one, ChunkEvaluator(small_f16, CTX, n_seq=3) as packed:
        chunks = chunks_of(one.tokenize(calibration_text(), False), CTX, 3, one.bos)
        alone = [one.logits(c, CTX // 2) for c in chunks]
        packed.decode_packed(chunks, CTX // 2)
        for k, rows in enumerate(alone):
            got = packed.rows(k)
            assert got.shape == rows.shape == (CTX // 2, one.n_vocab)
            np.testing.assert_array_equal(got, rows)
        packed.decode_packed(chunks[:2], CTX // 2)  # a last, partial group
        np.testing.assert_array_equal(packed.rows(1), alone[1])
        with pytest.raises(UsageError, match="at most 3 chunks of 128 tokens"):
            packed.decode_packed(chunks + chunks[:1], CTX // 2)


def test_eval_numbers_unchanged_by_packing(small_f16, small_ladder):
    models = [small_ladder["Q4_K_M"], small_ladder["Q8_0"]]
    text = calibration_text()
    one = evaluate(models, small_f16, text=text, n_ctx=CTX, chunks=5, n_batch=CTX)
    packed = evaluate(models, small_f16, text=text, n_ctx=CTX, chunks=5, n_batch=4 * CTX)  # groups of 4, then 1
    assert (one.chunks, one.tokens_scored) == (packed.chunks, packed.tokens_scored) == (5, 5 * (CTX // 2 - 1))
    for a, b in zip([one.reference, *one.models], [packed.reference, *packed.models]):
        assert (a.ppl, a.ppl_error, a.kld_mean, a.kld_p99, a.top1_agreement) == pytest.approx(
            (b.ppl, b.ppl_error, b.kld_mean, b.kld_p99, b.top1_agreement), rel=1e-12)


def _log_softmax64(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_float32_rows_measure_what_float64_measures(small_f16, small_ladder):
    """eval keeps llama.cpp's float32 logits and accumulates in float64: the same NLL, KLD and top-1 as working
    every element in float64, within float rounding."""
    from lfmq.quantize.eval import _Accumulator

    first = CTX // 2
    with ChunkEvaluator(small_f16, CTX) as ref_ev, ChunkEvaluator(small_ladder["Q4_K_M"], CTX) as q_ev:
        chunk = chunks_of(ref_ev.tokenize(calibration_text(), False), CTX, 1, ref_ev.bos)[0]
        ref_rows, q_rows = ref_ev.logits(chunk, first)[:-1], q_ev.logits(chunk, first)[:-1]
    targets = chunk[first + 1 :]
    fast = _Accumulator()
    fast.add(q_rows, targets, ref_rows)
    p, q = _log_softmax64(ref_rows), _log_softmax64(q_rows)
    nll = -q[np.arange(len(targets)), targets]
    kld = (np.exp(p) * (p - q)).sum(axis=-1)
    np.testing.assert_allclose(fast.nll[0], nll, rtol=1e-6)
    np.testing.assert_allclose(fast.kld[0], kld, rtol=1e-4, atol=1e-7)
    assert (fast.same_top[0] == (p.argmax(-1) == q.argmax(-1))).all()
