"""`lfmq quantize F16.gguf --recipe auto --budget Q4_K_M|BPW|BYTES -o OUT.gguf`: an LFM2-aware mixed-precision search.

Each quantizable tensor gets one of Q2_K ... Q8_0. Candidates are quantized by llama.cpp's quantizer (--pure with one
--tensor-type pattern per tensor) and measured by lfmq's own KL divergence from the reference over lfmq's
calibration text (never the evaluation text):
1. each role (token embedding = tied head, shortconv in_proj / out_proj, attention q / k / v / o, FFN gate / up /
   down) alone at each cheaper type, every other tensor at Q8_0: the role's loss curve;
2. each tensor of a role alone at Q2_K: how that role's loss divides over its layers;
3. the least summed loss within the budget, per tensor and per role (exact knapsack on those estimates), measured
   whole beside the budget type's own mix; the best measured mix within the budget is written.
The mix goes into the output's metadata and beside it as a llama-quantize --tensor-type-file, so that
`llama-quantize --pure --tensor-type-file OUT.tensor-types.txt F16.gguf OUT.gguf TYPE` makes the same tensors."""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lfmq.atomic import atomic_path, check_target
from lfmq.convert.writer import KEY_LFMQ_RECIPE, KEY_LFMQ_RECIPE_BUDGET, KEY_LFMQ_RECIPE_KLD, KEY_LFMQ_RECIPE_TYPES
from lfmq.errors import InputError, QuantizeError, UsageError
from lfmq.llama.gguf_index import tensor_index
from lfmq.llama.quantizer import QuantizeParams, ftypes, ggml_types, run_quantizer
from lfmq.progress import Progress
from lfmq.quantize import mix as mixes
from lfmq.quantize.chunks import ChunkEvaluator, chunks_of
from lfmq.quantize.eval import _Accumulator, _Rows
from lfmq.quantize.quantize import DRY_LINE, _check_requantize, _raise_on_failure, _read_source
from lfmq.quantize.texts import choose_text
from lfmq.quantize.types import quant_types

PROBE = "Q2_K"        # the type that shows how a role's loss divides over its layers
BASE = "Q8_0"         # every tensor not under test
MEMORY = 1 << 30      # bytes of reference rows kept for the whole search
UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3, "GB": 1000**3,
         "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}
BUDGET_HELP = "give a quantization type (Q4_K_M), bits per weight (4.5) or a size in bytes (250000000, 250MB, 240MiB)"


@dataclass(frozen=True)
class Budget:
    spec: str
    type: str | None = None          # the size of this type's own mix
    bpw: float | None = None         # tensor bits per weight, as `lfmq quantize` reports them
    bytes: int | None = None         # the whole file


def parse_budget(spec: str) -> Budget:
    """`Q4_K_M`, `4.5` (bits per weight) or `250MB` / `240MiB` / `250000000` (file bytes)."""
    raw = spec.strip()
    name = raw.upper()
    if name in quant_types():
        if name in ("F32", "F16", "BF16"):
            raise UsageError(f"--budget {spec}: the budget is a quantized size; {BUDGET_HELP}")
        return Budget(raw, type=name)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)", raw)
    if m and m.group(2).upper() in UNITS:
        value, unit = float(m.group(1)), m.group(2).upper()
        if not unit and value <= 32:
            if value < 2:
                raise UsageError(f"--budget {spec}: {value} bits per weight is below the cheapest type; {BUDGET_HELP}")
            return Budget(raw, bpw=value)
        if value * UNITS[unit] >= 1:
            return Budget(raw, bytes=int(value * UNITS[unit]))
    raise UsageError(f"--budget {spec!r}: {BUDGET_HELP}")


@dataclass(frozen=True)
class RecipeResult:
    """The mix written, what it was chosen against, and how it was found."""

    path: Path
    tensor_type_file: Path
    tensor_types: list[str]          # the file's lines: REGEX=type, first match wins
    file_type: str                   # the llama_ftype named in the file (the mix's dominant type)
    budget: str
    limit_bytes: int | None          # the file-size limit (a type or bytes budget)
    limit_bpw: float | None          # the bits-per-weight limit (a BPW budget)
    bytes: int
    bits_per_weight: float
    kld: float                       # mean KLD on the calibration text
    baseline: str | None             # the budget type, measured on the same text
    baseline_bytes: int | None
    baseline_kld: float | None
    chosen: str                      # which candidate won: "per tensor", "per role" or the budget type's own mix
    candidates: int                  # mixes quantized and measured
    calibration: str
    chunks: int
    n_ctx: int
    seconds: float


class _Probe:
    """The reference's next-token distributions over the calibration chunks, computed once; a candidate's mean KLD
    against them."""

    def __init__(self, reference: Path, text: str, n_ctx: int, chunks: int | None, threads: int | None):
        self.n_ctx, self.threads = n_ctx, threads
        self.n_seq = max(1, min(2048 // n_ctx, chunks or 2048))
        with ChunkEvaluator(reference, n_ctx, threads, n_seq=self.n_seq) as ref:
            tokens = ref.tokenize(text, parse_special=False)
            # the reference's rows are kept (logits and probabilities, float32): at most MEMORY bytes of them
            fit = max(1, MEMORY // (ref.n_vocab * (n_ctx // 2) * 8))
            self.pieces = chunks_of(tokens, n_ctx, min(chunks or fit, fit), ref.bos)
            if not self.pieces:
                raise InputError(f"the calibration text has {len(tokens)} tokens, fewer than one chunk of {n_ctx}: "
                                 "give more text or a smaller --n-ctx")
            self.ref = [rows for group in self._groups() for rows in self._rows(ref, group)]
        for r in self.ref:
            r.probs()  # formed once, used by every candidate

    def _groups(self) -> list[list]:
        return [self.pieces[g : g + self.n_seq] for g in range(0, len(self.pieces), self.n_seq)]

    def _rows(self, ev: ChunkEvaluator, group: list) -> list[_Rows]:
        ev.decode_packed(group, self.n_ctx // 2)
        return [_Rows.of(ev.rows(k)[:-1]) for k in range(len(group))]  # row j predicts token j+1

    def kld(self, path: Path) -> float:
        acc, i = _Accumulator(), 0
        with ChunkEvaluator(path, self.n_ctx, self.threads, n_seq=self.n_seq) as ev:
            for group in self._groups():
                for chunk, rows in zip(group, self._rows(ev, group)):
                    acc.add(rows, chunk[self.n_ctx // 2 + 1 :], self.ref[i])
                    i += 1
        return acc.kld_stats()[0]


def _layout(src_path: Path, threads: int | None) -> tuple[mixes.Layout, int]:
    """The tensors llama.cpp quantizes (from a dry run), and the source's header bytes."""
    src = _read_source(src_path)
    _check_requantize(src, False)
    params = QuantizeParams(threads, False, True, True)
    rc, log = run_quantizer(src.path, None, params, ftypes()[BASE])
    if rc != 0:
        raise QuantizeError(f"llama.cpp cannot quantize {src.path.name}: {log.failure(f'code {rc}')}")
    quantized = {m.group(1) for _, line in log.lines if (m := DRY_LINE.match(line)) and m.group(2)}
    shapes = {n: tuple(s) for n, s in src.tensors.items() if n in quantized}
    fixed = sum(mixes.tensor_bytes(s, src.types[n]) for n, s in src.tensors.items() if n not in quantized)
    return mixes.Layout(shapes, fixed, src.n_params), src.header_bytes


def _quantize_mix(src: Path, dst: Path, lines: list[str], file_type: str, threads: int | None,
                  kv: dict[str, str | int | float] | None = None) -> None:
    params = QuantizeParams(threads, False, True, False)
    types = ggml_types()
    params.tensor_types(None, None, [(p, types[t.upper()]) for p, _, t in (x.rpartition("=") for x in lines)])
    if kv:
        params.metadata(kv)
    rc, log = run_quantizer(src, dst, params, ftypes()[file_type])
    if rc != 0:
        raise QuantizeError(f"quantizing the mix failed: {log.failure(f'llama_model_quantize returned {rc}')}")


def _exact(mix: dict[str, str]) -> list[str]:
    """One pattern per tensor: how candidates are quantized."""
    return [f"^{re.escape(n)}$={t.lower()}" for n, t in mix.items()]


class _Search:
    """Candidates quantized into a scratch folder and measured; the count is what the progress bar shows."""

    def __init__(self, src: Path, layout: mixes.Layout, probe: _Probe, scratch: Path, threads: int | None,
                 total: int, progress: Progress | None):
        self.src, self.layout, self.probe, self.scratch, self.threads = src, layout, probe, scratch, threads
        self.total, self.progress, self.count = total, progress, 0

    def measure(self, mix: dict[str, str]) -> float:
        path = self.scratch / f"candidate-{self.count}.gguf"
        _quantize_mix(self.src, path, _exact(mix), BASE, self.threads)
        try:
            return self.probe.kld(path)
        finally:
            path.unlink(missing_ok=True)
            self.count += 1
            if self.progress:
                self.progress("recipe candidates", self.count, max(self.total, self.count))


def _curves(search: _Search, base_kld: float) -> dict[str, dict[str, float]]:
    """Per tensor and type, the estimated KLD added: its role's measured curve times the tensor's share of it."""
    layout, base = search.layout, mixes.uniform(search.layout, BASE)
    out: dict[str, dict[str, float]] = {}
    for role, names in layout.roles().items():
        curve = {BASE: 0.0}
        for t in mixes.TYPES[:-1]:
            movable = [n for n in names if mixes.fits(layout.shapes[n], t)]
            if movable:
                curve[t] = max(0.0, search.measure({**base, **{n: t for n in movable}}) - base_kld)
        share = {names[0]: 1.0}
        if len(names) > 1 and PROBE in curve:
            probe = {n: max(search.measure({**base, n: PROBE}) - base_kld, 1e-9) for n in names}
            share = {n: v / sum(probe.values()) for n, v in probe.items()}
        for n in names:
            loss, cheapest = {}, 0.0
            for t in reversed(mixes.TYPES):  # dearest first: a cheaper type never loses less than a dearer one
                if t in curve and mixes.fits(layout.shapes[n], t):
                    cheapest = max(cheapest, curve[t] * share.get(n, 1.0 / len(names)))
                    loss[t] = cheapest
            out[n] = loss or {layout.allowed(n)[-1]: 0.0}
    return out


def _best_mix(layout: mixes.Layout, losses: dict[str, dict[str, float]], limit: int,
              groups: list[list[str]]) -> dict[str, str] | None:
    """The least estimated loss within `limit` data bytes, one type per group of tensors."""
    options = [[t for t in mixes.TYPES if all(t in losses[n] for n in g)] for g in groups]
    costs = [[sum(mixes.tensor_bytes(layout.shapes[n], t) for n in g) for t in opts] for g, opts in zip(groups, options)]
    loss = [[sum(losses[n][t] for n in g) for t in opts] for g, opts in zip(groups, options)]
    picks = mixes.knapsack(costs, loss, limit - layout.fixed_bytes)
    if picks is None:
        return None
    return {n: opts[k] for g, opts, k in zip(groups, options, picks) for n in g}


def default_output(model: str | Path, budget: str) -> Path:
    """`<stem>-auto-<budget>.gguf` beside the input."""
    src = Path(model)
    stem = re.sub(r"[-_.](f32|f16|bf16)$", "", src.stem, flags=re.IGNORECASE)
    return src.parent / f"{stem}-auto-{re.sub(r'[^A-Za-z0-9_.]', '', budget)}.gguf"


def recipe_quantize(
    model: str | Path,
    output: str | Path,
    budget: str,
    *,
    file: str | Path | None = None,
    n_ctx: int = 512,
    chunks: int | None = 16,
    threads: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> RecipeResult:
    """Search a per-tensor mix of llama.cpp types with the least KL divergence on calibration text within `budget`,
    and write it to `output` (a .gguf) with its --tensor-type-file beside it."""
    started = time.perf_counter()
    wanted = parse_budget(budget)
    out = Path(output)
    if out.suffix.lower() != ".gguf":
        raise UsageError(f"-o {output}: --recipe writes one file; give its name ending in .gguf")
    types_file = out.with_suffix(".tensor-types.txt")
    src = Path(model)
    for target in (out, types_file):
        if target.resolve() == src.resolve():
            raise UsageError(f"the output {target} is the input: choose another name")
        check_target(target, force)
    text = choose_text(None, file, lambda: resources.files("lfmq.quantize").joinpath("data/calibration.txt")
                       .read_text(encoding="utf-8"))
    calibration = Path(file).name if file is not None else "lfmq calibration.txt"
    layout, header = _layout(src, threads)
    _check_feasible(layout, wanted, header)
    roles = layout.roles()
    total = 1 + len(roles) * (len(mixes.TYPES) - 1) + sum(len(v) for v in roles.values() if len(v) > 1) + 2
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".lfmq-recipe-", dir=out.parent) as scratch:
        probe = _Probe(src, text, n_ctx, chunks, threads)
        search = _Search(src, layout, probe, Path(scratch), threads, total + (wanted.type is not None), progress)
        base_kld = search.measure(mixes.uniform(layout, BASE))
        losses = _curves(search, base_kld)
        baseline = _baseline(search, wanted, Path(scratch))
        limit_file = baseline[1] if baseline else wanted.bytes
        meta_bytes = 64 * (len(layout.shapes) + len(roles) + 8)  # the recipe's keys, generously
        if wanted.bpw is not None:
            limit_data = int(wanted.bpw * layout.n_params / 8)
        else:
            limit_data = limit_file - header - meta_bytes
        # the budget type's own mix is the yardstick, not a candidate: with the recipe's keys it would not fit
        candidates: list[tuple[float, str, dict[str, str]]] = []
        for label, groups in (("per tensor", [[n] for n in layout.shapes]), ("per role", list(roles.values()))):
            found = _best_mix(layout, losses, limit_data, groups)
            if found is not None and found not in [c[2] for c in candidates]:
                candidates.append((search.measure(found), label, found))
        if not candidates:
            raise QuantizeError(f"--budget {budget}: no mix fits beside the recipe's metadata; give a larger budget")
        kld, chosen, best = min(candidates, key=lambda c: c[0])
        return _write(src, out, types_file, layout, best, wanted, kld, chosen, baseline, limit_file, search,
                      calibration, len(probe.pieces), n_ctx, threads, force, started)


def _check_feasible(layout: mixes.Layout, wanted: Budget, header: int) -> None:
    """Before the search: the cheapest mix (every tensor at the cheapest type) must fit a bytes or BPW budget."""
    data = layout.data_bytes(mixes.uniform(layout, mixes.TYPES[0]))
    if wanted.bpw is not None and 8 * data / layout.n_params > wanted.bpw:
        raise UsageError(f"--budget {wanted.spec}: the cheapest mix has {8 * data / layout.n_params:.2f} bits per "
                         "weight; give a larger budget")
    if wanted.bytes is not None and header + data > wanted.bytes:
        raise UsageError(f"--budget {wanted.spec}: the cheapest mix needs {header + data:,} bytes; give a larger "
                         "budget")


def _baseline(search: _Search, wanted: Budget, scratch: Path) -> tuple[str, int, float, dict[str, str]] | None:
    """The budget type quantized as llama-quantize makes it: its name, file size, KLD and per-tensor mix."""
    if wanted.type is None:
        return None
    from lfmq.quantize.quantize import quantize

    (res,) = quantize(search.src, wanted.type, scratch / f"baseline-{wanted.type}.gguf", threads=search.threads)
    types = {n: t.type for n, t in tensor_index(res.path).tensors.items() if n in search.layout.shapes}
    kld = search.probe.kld(res.path)
    search.count += 1
    res.path.unlink()
    return wanted.type, res.bytes, kld, types


def _write(src: Path, out: Path, types_file: Path, layout: mixes.Layout, best: dict[str, str], wanted: Budget,
           kld: float, chosen: str, baseline: tuple | None, limit_file: int | None, search: _Search,
           calibration: str, n_chunks: int, n_ctx: int, threads: int | None, force: bool,
           started: float) -> RecipeResult:
    lines = mixes.to_patterns(layout, best)
    if mixes.apply_patterns(layout, lines) != best:
        raise QuantizeError("internal error: the tensor-type patterns do not reproduce the chosen mix")
    file_type = mixes.FTYPE_OF.get(mixes.dominant(layout, best), BASE)
    kv: dict[str, str | int | float] = {KEY_LFMQ_RECIPE: "auto", KEY_LFMQ_RECIPE_BUDGET: wanted.spec, KEY_LFMQ_RECIPE_KLD: float(kld),
                                        f"{KEY_LFMQ_RECIPE_TYPES}.count": len(lines)}
    kv.update({f"{KEY_LFMQ_RECIPE_TYPES}.{i}": line for i, line in enumerate(lines)})
    with atomic_path(out, force) as tmp:
        _quantize_mix(src, tmp, lines, file_type, threads, kv)
        size = tmp.stat().st_size
        if limit_file is not None and size > limit_file:
            raise QuantizeError(f"the mix came to {size:,} bytes, over the budget of {limit_file:,}: "
                                "give a slightly larger budget")
        with atomic_path(types_file, force) as tmp_types:
            tmp_types.write_text("\n".join(lines) + "\n", encoding="utf-8")
    index = tensor_index(out)
    bpw = 8 * index.tensor_bytes / layout.n_params
    return RecipeResult(
        path=out.resolve(), tensor_type_file=types_file.resolve(), tensor_types=lines, file_type=file_type,
        budget=wanted.spec, limit_bytes=limit_file, limit_bpw=wanted.bpw, bytes=out.stat().st_size,
        bits_per_weight=bpw, kld=kld, baseline=baseline[0] if baseline else None,
        baseline_bytes=baseline[1] if baseline else None, baseline_kld=baseline[2] if baseline else None,
        chosen=chosen, candidates=search.count, calibration=calibration, chunks=n_chunks, n_ctx=n_ctx,
        seconds=time.perf_counter() - started)
