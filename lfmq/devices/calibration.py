"""Calibrating predictions on published figures, and checking them out of sample.

Decode is modelled as a per-token time of `overhead + bytes read / (efficiency x bandwidth)`: one overhead for
every device (the fixed cost of a token: thread synchronisation and small kernels, about a millisecond and a half
in the published data) and one bandwidth efficiency per device. Prefill is `efficiency x peak int8 compute /
(2 x parameters)`, one efficiency per device. A device without figures of its own takes the mean efficiency of
devices of its architecture. `leave_one_out()` drops each published figure in turn, fits on the rest and predicts
the one left out: that table, not the fit itself, says how far a prediction can be trusted."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from lfmq.devices.profiles import Profile, builtin_profiles

# Tensor bytes a decoded token reads (both models are tied: the embedding is read whole as the LM head) and
# parameter counts of the published models, from lfmq's shape-exact synthetic models quantized by llama.cpp (their
# file sizes are within 0.01% of Liquid's). LFM2 and LFM2.5 of one size share their shapes.
REFERENCE_BYTES = {
    ("LFM2.5-350M", "Q4_0"): 216_923_136,
    ("LFM2.5-350M", "Q4_K_M"): 226_925_568,
    ("LFM2.5-350M", "Q8_0"): 376_830_976,
    ("LFM2.5-1.2B", "Q4_0"): 693_365_760,
    ("LFM2-1.2B", "Q4_0"): 693_365_760,
}
REFERENCE_PARAMS = {"LFM2.5-350M": 354_483_968, "LFM2.5-1.2B": 1_170_340_608, "LFM2-1.2B": 1_170_340_608}
ASSUMED_QUANT = "Q4_0"  # figures published without a type: llama.cpp's CPU default for speed, as in the 1.2B figures
OVERHEAD_GRID_MS = [i * 0.01 for i in range(0, 501)]  # 0 to 5 ms per token


def peak_gflops(p: Profile) -> float:
    """Nominal int8 multiply-add throughput: cores x GHz x SIMD units x int8 lanes x 2 (all-core clocks are lower,
    which the efficiency factor absorbs)."""
    return p.cpu["cores"] * p.cpu["frequency_ghz"] * p.cpu.get("fma_units", 2) * (p.cpu["simd_bits"] / 8) * 2


@dataclass(frozen=True)
class Figure:
    """One published speed, with what it takes to model it."""

    profile: str
    model: str
    quant: str
    assumed: bool          # the publisher did not state the type: ASSUMED_QUANT
    kind: str              # decode | prefill
    tps: float
    nbytes: int            # bytes one decoded token reads
    params: int
    source: str

    @property
    def label(self) -> str:
        return f"{self.model} {self.quant}{' (assumed)' if self.assumed else ''}"


def figures(profiles: Iterable[Profile]) -> list[Figure]:
    """Every published decode and prefill figure of these profiles whose model lfmq has reference sizes for."""
    out = []
    for p in profiles:
        for pub in p.published:
            quant = pub.quant or ASSUMED_QUANT
            if (pub.model, quant) not in REFERENCE_BYTES:
                continue
            for kind, tps in (("decode", pub.decode_tps), ("prefill", pub.prefill_tps)):
                if tps:
                    out.append(Figure(p.name, pub.model, quant, pub.quant is None, kind, float(tps),
                                      REFERENCE_BYTES[(pub.model, quant)], REFERENCE_PARAMS[pub.model], pub.source))
    return out


@dataclass(frozen=True)
class Fit:
    overhead_s: float
    decode: dict[str, float]     # profile -> share of its bandwidth
    prefill: dict[str, float]    # profile -> share of its peak compute
    basis: dict[str, str]        # profile -> the figures its factors come from


def _decode_eff(fig: Figure, p: Profile, overhead_s: float) -> float | None:
    memory_s = 1.0 / fig.tps - overhead_s
    return fig.nbytes / (p.bandwidth_gbs * 1e9 * memory_s) if memory_s > 0 else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _fit_at(figs: list[Figure], profiles: dict[str, Profile], overhead_s: float) -> Fit:
    decode: dict[str, float] = {}
    prefill: dict[str, float] = {}
    basis: dict[str, str] = {}
    for name, p in profiles.items():
        mine = [f for f in figs if f.profile == name]
        d = _mean([e for f in mine if f.kind == "decode" and (e := _decode_eff(f, p, overhead_s)) is not None])
        if d is not None:
            decode[name] = d
        pre = _mean([f.tps * 2 * f.params / (peak_gflops(p) * 1e9) for f in mine if f.kind == "prefill"])
        if pre is not None:
            prefill[name] = pre
        basis[name] = "; ".join(dict.fromkeys(f.label for f in mine)) or "no published figure"
    return Fit(overhead_s, decode, prefill, basis)


def _arch_mean(factors: dict[str, float], profiles: dict[str, Profile], p: Profile) -> float | None:
    same = [v for k, v in factors.items() if k in profiles and profiles[k].arch == p.arch]
    return _mean(same) or _mean(list(factors.values()))


def factors(fit: Fit, profiles: dict[str, Profile], p: Profile) -> tuple[float | None, float | None, str]:
    """(decode efficiency, prefill efficiency, basis) of a profile: its own, else its architecture's mean."""
    dec = fit.decode.get(p.name)
    pre = fit.prefill.get(p.name)
    basis = fit.basis.get(p.name, "no published figure")
    if dec is None or pre is None:
        basis += f"; missing factors from other {p.arch} profiles"
    dec = dec if dec is not None else _arch_mean(fit.decode, profiles, p)
    pre = pre if pre is not None else _arch_mean(fit.prefill, profiles, p)
    return dec, pre, basis


def decode_tps(p: Profile, eff: float, overhead_s: float, nbytes: int) -> float:
    return 1.0 / (overhead_s + nbytes / (eff * p.bandwidth_gbs * 1e9))


def prefill_tps(p: Profile, eff: float, params: int) -> float:
    return eff * peak_gflops(p) * 1e9 / (2 * params)


def _predict(fig: Figure, fit: Fit, profiles: dict[str, Profile]) -> float | None:
    p = profiles[fig.profile]
    dec, pre, _ = factors(fit, profiles, p)
    if fig.kind == "decode":
        return decode_tps(p, dec, fit.overhead_s, fig.nbytes) if dec else None
    return prefill_tps(p, pre, fig.params) if pre else None


def fit(figs: list[Figure], profiles: dict[str, Profile]) -> Fit:
    """The overhead (a grid search) and per-profile factors that minimise the squared log error of the decode
    figures; prefill factors are each profile's mean."""
    decode_figs = [f for f in figs if f.kind == "decode"]
    best: tuple[float, Fit] | None = None
    for ms in OVERHEAD_GRID_MS:
        candidate = _fit_at(figs, profiles, ms / 1e3)
        preds = [(_predict(f, candidate, profiles), f.tps) for f in decode_figs]
        if any(pr is None for pr, _ in preds):
            continue
        err = sum(math.log(pr / tps) ** 2 for pr, tps in preds)
        if best is None or err < best[0] - 1e-12:
            best = (err, candidate)
    return best[1] if best else _fit_at(figs, profiles, 0.0)


@lru_cache(maxsize=1)
def builtin_fit() -> Fit:
    """The fit over every built-in profile's published figures."""
    profiles = builtin_profiles()
    return fit(figures(profiles.values()), profiles)


@dataclass(frozen=True)
class LooRow:
    """One published figure predicted by a fit that never saw it."""

    profile: str
    figure: str            # model and type
    kind: str
    published: float
    predicted: float | None
    overhead_ms: float     # the overhead the fit without this figure chose
    source: str

    @property
    def error(self) -> float | None:
        return self.predicted / self.published - 1 if self.predicted else None


def leave_one_out(profiles: dict[str, Profile] | None = None) -> list[LooRow]:
    """Each published figure left out in turn, the rest fitted, the one left out predicted."""
    profiles = profiles or builtin_profiles()
    figs = figures(profiles.values())
    rows = []
    for i, held in enumerate(figs):
        f = fit(figs[:i] + figs[i + 1:], profiles)
        rows.append(LooRow(held.profile, held.label, held.kind, held.tps, _predict(held, f, profiles),
                           f.overhead_s * 1e3, held.source))
    return rows


def with_figures(p: Profile, published: list) -> Profile:
    """A profile with its published figures replaced (for calibrating on a user's own measurements)."""
    return replace(p, published=list(published))


def calibrate_report(report: object, name: str | None = None) -> Profile:
    """The profile a bench report ran with, its factors measured on that device: decode efficiency from each tg
    test (with the fitted per-token overhead), prefill efficiency from each pp test, averaged. Emulated runs and
    reports without a bandwidth are refused (InputError): their speeds say nothing about a device."""
    from lfmq.errors import InputError

    rep = report
    device, prof = rep.device, rep.profile            # type: ignore[attr-defined]
    if device.emulated:
        raise InputError(f"the report comes from an emulated run ({device.name or device.kind}): its speeds say "
                         "nothing about the device; calibrate on a report measured on the device itself")
    if not prof.bandwidth_gbs:
        raise InputError(f"the report's profile {prof.name} has no memory bandwidth: bench with --profile host "
                         "(measured) or a device profile")
    metas = {str(m.path): m for m in rep.models}               # type: ignore[attr-defined]
    tg: list[tuple[int, float]] = []        # (bytes read per token, seconds per token) of each tg test
    prefill, used = [], []
    for t in rep.tests:                                        # type: ignore[attr-defined]
        meta = metas.get(str(t.model_filename)) or next(
            (m for m in metas.values() if Path(m.path).name == Path(t.model_filename).name), None)
        if meta is None or not meta.bytes_per_token or t.avg_ts <= 0 or t.n_depth:
            continue
        if t.n_gen and not t.n_prompt:
            tg.append((meta.bytes_per_token, 1.0 / t.avg_ts))
        elif t.n_prompt and not t.n_gen:
            prefill.append(t.avg_ts * 2 * (meta.n_params_active or meta.n_params) / (peak_gflops(prof) * 1e9))
        else:
            continue
        used.append(f"{Path(meta.path).name} {'tg' if t.n_gen else 'pp'}{t.n_gen or t.n_prompt} {t.avg_ts:.1f} tok/s")
    overhead_s = device_overhead(tg)
    decode = [b / (prof.bandwidth_gbs * 1e9 * (sec - overhead_s)) for b, sec in tg if sec > overhead_s]
    if not decode and not prefill:
        raise InputError("the report has no pp or tg test without --depth for a model it describes: bench with "
                         "-p and -n and calibrate on that")
    where = f"{device.name or device.kind}, {rep.created}"      # type: ignore[attr-defined]
    calibration = {"decode_efficiency": _mean(decode), "prefill_efficiency": _mean(prefill),
                   "overhead_ms": overhead_s * 1e3, "basis": f"measured by lfmq bench on {where}: " + "; ".join(used)}
    return replace(prof, name=name or prof.name, calibration={k: v for k, v in calibration.items() if v is not None})


def device_overhead(tg: list[tuple[int, float]]) -> float:
    """The per-token overhead for a device's own tg tests, as (bytes per token, seconds per token): fitted with
    the bandwidth term when models of two sizes were measured; else the overhead fitted on the published figures,
    unless a measured token took no longer than that (a tiny model), which leaves no room for it: then none."""
    shared = builtin_fit().overhead_s
    sizes = {b for b, _ in tg}
    if len(sizes) >= 2:   # least squares of seconds = overhead + k x bytes
        mb, ms = _mean([b for b, _ in tg]), _mean([sec for _, sec in tg])
        k = sum((b - mb) * (sec - ms) for b, sec in tg) / sum((b - mb) ** 2 for b, _ in tg)
        fitted = ms - k * mb
        if k > 0 and 0 <= fitted < min(sec for _, sec in tg):
            return fitted
    return shared if tg and all(sec > shared for _, sec in tg) else 0.0


def profile_data(p: Profile) -> dict:
    """A profile as the JSON that `get_profile(FILE.json)` reads back."""
    from dataclasses import asdict

    return asdict(p)
