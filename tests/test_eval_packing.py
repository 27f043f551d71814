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
