"""`lfmq quantize --recipe auto --budget ...`: budgets parsed strictly, the mix spelt as llama-quantize patterns that
give back every tensor's type, the knapsack against brute force, and on the trained fixture a mix within Q4_K_M's
size whose KL divergence on held-out text is below Q4_K_M's."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import gguf
import pytest

import lfmq
from conftest import run_cli
from lfmq.errors import UsageError
from lfmq.quantize import mix as mixes
from lfmq.quantize.recipe import Budget, parse_budget

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lfm2-tools-tiny"

GOOD_BUDGETS = [
    ("Q4_K_M", Budget("Q4_K_M", type="Q4_K_M")),
    ("q4_k_m", Budget("q4_k_m", type="Q4_K_M")),
    ("4.5", Budget("4.5", bpw=4.5)),
    ("6", Budget("6", bpw=6.0)),
    ("250000000", Budget("250000000", bytes=250_000_000)),
    ("250MB", Budget("250MB", bytes=250_000_000)),
    ("240MiB", Budget("240MiB", bytes=240 * 1024**2)),
    ("1.5GB", Budget("1.5GB", bytes=1_500_000_000)),
]
BAD_BUDGETS = ["", "Q4_K_X", "F16", "bf16", "1.5", "lots", "12 parsecs", "-3", "4.5.1", "0MB"]


@pytest.mark.parametrize("spec, budget", GOOD_BUDGETS)
def test_budgets(spec, budget):
    assert parse_budget(spec) == budget


@pytest.mark.parametrize("spec", BAD_BUDGETS)
def test_bad_budgets_are_usage_errors(spec):
    with pytest.raises(UsageError, match="--budget"):
        parse_budget(spec)


def _layout() -> mixes.Layout:
    shapes = {"token_embd.weight": (256, 2048)}
    for i in range(4):
        if i % 2:
            shapes |= {f"blk.{i}.attn_q.weight": (256, 256), f"blk.{i}.attn_k.weight": (256, 128)}
        else:
            shapes |= {f"blk.{i}.shortconv.in_proj.weight": (256, 768)}
        shapes |= {f"blk.{i}.ffn_down.weight": (512, 256), f"blk.{i}.ffn_up.weight": (256, 512)}
    shapes["blk.3.odd.weight"] = (96, 64)  # rows that no 256-value k-quant block divides
    return mixes.Layout(shapes, fixed_bytes=1000, n_params=sum(a * b for a, b in shapes.values()))


def test_patterns_give_back_every_tensor_type():
    layout, rng = _layout(), random.Random(0)
    for _ in range(50):
        mix = {n: rng.choice(layout.allowed(n)) for n in layout.shapes}
        lines = mixes.to_patterns(layout, mix)
        assert mixes.apply_patterns(layout, lines) == mix
        assert all(line == line.lower() for line in lines)  # llama-quantize lower-cases what it reads
    assert layout.allowed("blk.3.odd.weight") == ["Q8_0"]
    assert mixes.role_of("blk.12.shortconv.out_proj.weight") == (12, "shortconv.out_proj")
    assert mixes.role_of("token_embd.weight") == (None, "token_embd")


def test_pattern_for_layer_1_is_not_layer_11():
    shapes = {f"blk.{i}.ffn_down.weight": (256, 256) for i in range(12)}
    layout = mixes.Layout(shapes, 0, 0)
    mix = {n: "Q4_K" for n in shapes} | {"blk.1.ffn_down.weight": "Q6_K"}
    assert mixes.apply_patterns(layout, mixes.to_patterns(layout, mix)) == mix


def test_tensor_bytes_as_gguf_counts_them():
    assert mixes.tensor_bytes((256, 4), "Q4_K") == 4 * 144
    assert mixes.tensor_bytes((256, 3), "Q8_0") == -(-3 * 8 * 34 // 32) * 32  # padded to the alignment
    assert mixes.tensor_bytes((64, 10), "F16") == 64 * 10 * 2


@pytest.mark.parametrize("seed", range(6))
def test_knapsack_is_optimal_against_brute_force(seed):
    rng = random.Random(seed)
    groups = [sorted(rng.sample(range(10, 200), 3)) for _ in range(5)]
    losses = [[rng.random() * (300 - c) for c in costs] for costs in groups]
    limit = rng.randint(200, 700)
    picks = mixes.knapsack(groups, losses, limit, grid=10**6)
    feasible = [p for p in itertools.product(range(3), repeat=5) if sum(g[k] for g, k in zip(groups, p)) <= limit]
    if not feasible:
        assert picks is None
        return
    best = min(sum(l[k] for l, k in zip(losses, p)) for p in feasible)
    assert sum(groups[i][k] for i, k in enumerate(picks)) <= limit
    assert sum(losses[i][k] for i, k in enumerate(picks)) == pytest.approx(best)


def test_knapsack_on_a_coarse_grid_stays_within_the_limit():
    rng = random.Random(7)
    groups = [[rng.randint(1000, 5000) for _ in range(4)] for _ in range(30)]
    losses = [[rng.random() for _ in g] for g in groups]
    picks = mixes.knapsack(groups, losses, 90_000, grid=50)
    assert sum(g[k] for g, k in zip(groups, picks)) <= 90_000


@pytest.mark.parametrize("args, message", [
    (["--recipe", "auto", "--budget", "Q9_Z"], "error: --budget 'Q9_Z': give a quantization type"),
    (["--recipe", "auto", "--budget", "1KB"], "error: --budget 1KB: the cheapest mix needs"),
    (["--recipe", "auto", "--budget", "2"], "error: --budget 2: the cheapest mix has"),
    (["--recipe", "auto"], "error: --recipe auto needs --budget"),
    (["--recipe", "fast", "--budget", "Q4_K_M"], "error: --recipe fast: the one recipe is 'auto'"),
    (["--budget", "Q4_K_M"], "error: --budget goes with --recipe auto"),
    (["--recipe", "auto", "--budget", "Q4_K_M", "-q", "Q4_0"], "error: --recipe auto chooses the types itself"),
    (["--recipe", "auto", "--budget", "Q4_K_M", "-o", "out-folder"], "error: -o out-folder: --recipe writes one file"),
    (["-q", "Q4_0", "--chunks", "4"], "error: -f, -c and --chunks set the calibration text of --recipe auto"),
])
def test_cli_usage_errors_are_one_line(fixture_f16, args, message):
    res = run_cli("quantize", str(fixture_f16), *args)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(message)
    assert not list(fixture_f16.parent.glob("*auto*")) and not list(fixture_f16.parent.glob(".lfmq-recipe-*"))


# -- on the trained fixture ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fixture_f16(tmp_path_factory) -> Path:
    return lfmq.convert(FIXTURE, tmp_path_factory.mktemp("recipe") / "fixture-F16.gguf", outtype="f16").path


@pytest.fixture(scope="module")
def recipe(fixture_f16) -> dict:
    """The search in process (the CLI's own path is tested above and below; a child's timeout would not suit a
    search that takes minutes on a loaded machine), as the JSON `--json` prints."""
    from lfmq import ui
    from lfmq.quantize.recipe import recipe_quantize

    out = fixture_f16.parent / "fixture-auto.gguf"
    result = recipe_quantize(fixture_f16, out, "Q4_K_M", n_ctx=256, chunks=4)
    return json.loads(json.dumps(ui.to_jsonable(result)))


def test_recipe_fits_q4_k_m_and_beats_its_kld_on_held_out_text(fixture_f16, recipe):
    from lfmq.quantize import quantize
    from lfmq.quantize.eval import evaluate

    (q4,) = quantize(fixture_f16, "Q4_K_M", fixture_f16.parent)
    out = Path(recipe["path"])
    assert out.stat().st_size <= q4.path.stat().st_size == recipe["limit_bytes"] == recipe["baseline_bytes"]
    assert recipe["kld"] < recipe["baseline_kld"]  # on the calibration text the search saw
    # lfmq's eval.txt: text the search never saw
    rep = evaluate([q4.path, out], fixture_f16, n_ctx=256, chunks=24)
    assert rep.models[1].kld_mean < rep.models[0].kld_mean
    assert [m.file_type for m in rep.models] == ["MOSTLY_Q4_K_M", "auto-Q4_K_M"]  # the mix is named for its budget
    assert sorted(p.name for p in fixture_f16.parent.iterdir() if p.name.startswith(".")) == []  # no scratch left


def test_recipe_mix_is_in_the_file_its_metadata_and_reproducible(fixture_f16, recipe, tmp_path):
    from lfmq.llama.gguf_index import tensor_index
    from lfmq.quantize import quantize

    out, types_file = Path(recipe["path"]), Path(recipe["tensor_type_file"])
    assert types_file == out.with_suffix(".tensor-types.txt")
    lines = types_file.read_text().split()
    assert lines == recipe["tensor_types"]
    reader = gguf.GGUFReader(out)
    fields = {k: f.contents() for k, f in reader.fields.items() if k.startswith("lfmq.recipe")}
    assert fields["lfmq.recipe"] == "auto" and fields["lfmq.recipe.budget"] == "Q4_K_M"
    assert [fields[f"lfmq.recipe.tensor_types.{i}"] for i in range(fields["lfmq.recipe.tensor_types.count"])] == lines
    got = {n: t.type for n, t in tensor_index(out).tensors.items()}
    quantized = {n: t for n, t in got.items() if t not in ("F32", "F16")}
    layout = mixes.Layout({n: (0,) for n in quantized}, 0, 0)
    assert mixes.apply_patterns(layout, lines) == quantized
    assert len(set(quantized.values())) > 1  # a mix, not one type
    # llama-quantize --pure --tensor-type-file FILE F16 OUT TYPE, through the same quantizer
    (again,) = quantize(fixture_f16, recipe["file_type"], tmp_path / "again.gguf", pure=True, tensor_type=lines)
    assert {n: t.type for n, t in tensor_index(again.path).tensors.items()} == got
    assert tensor_index(again.path).tensor_bytes == tensor_index(out).tensor_bytes


def test_recipe_refuses_to_overwrite(fixture_f16, recipe):
    res = run_cli("quantize", str(fixture_f16), "--recipe", "auto", "--budget", "Q4_K_M", "-o", recipe["path"])
    assert res.returncode == 1 and res.stderr.strip().endswith("exists: pass --force to overwrite it")
