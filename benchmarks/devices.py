"""Device predictions out of sample, and device build times (issue 9).

    .venv/bin/python benchmarks/devices.py [--profiles rpi5,snapdragon-8-elite,host] [--cold]

1. The leave-one-out table: each published figure (Liquid's LFM2 / LFM2.5 figures for the built-in profiles, with
   their sources) is left out in turn, the model (one per-token overhead shared by every device, one bandwidth
   efficiency and one compute efficiency per device; a device without a figure of its own takes its
   architecture's mean) is fitted on the rest, and the figure left out is predicted. Targets: every decode figure
   within 25%, every prefill figure within 50%.
2. Build times: `lfmq build PROFILE` for each profile, timed now (a cached bundle should take well under a second),
   beside the compile time its manifest recorded when it was built (cold, or incremental over an earlier build's
   objects). --cold builds each profile into an empty cache folder first, for a cold time measured in this run
   (minutes per profile).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lfmq.devices.calibration import leave_one_out  # noqa: E402

DECODE_TARGET, PREFILL_TARGET = 0.25, 0.50


def loo_table() -> bool:
    rows = leave_one_out()
    print("Leave-one-out: each published figure predicted by a fit that never saw it")
    print(f"{'profile':<20} {'figure':<28} {'kind':<8} {'published':>10} {'predicted':>10} {'error':>8} "
          f"{'overhead':>9}  source")
    ok = True
    for r in rows:
        target = DECODE_TARGET if r.kind == "decode" else PREFILL_TARGET
        err = r.error
        miss = err is None or abs(err) > target
        ok &= not miss
        pred = f"{r.predicted:10.1f}" if r.predicted else f"{'-':>10}"
        e = f"{100 * err:+7.1f}%" if err is not None else f"{'-':>8}"
        print(f"{r.profile:<20} {r.figure:<28} {r.kind:<8} {r.published:10.1f} {pred} {e}{' MISS' if miss else ''} "
              f"{r.overhead_ms:6.2f} ms  {r.source[:60]}")
    for kind, target in (("decode", DECODE_TARGET), ("prefill", PREFILL_TARGET)):
        errs = [abs(r.error) for r in rows if r.kind == kind and r.error is not None]
        if errs:
            print(f"{kind}: {len(errs)} figures, worst {100 * max(errs):.1f}%, mean {100 * sum(errs) / len(errs):.1f}% "
                  f"(target: every one within {100 * target:.0f}%)")
    return ok


def build_times(profiles: list[str], cold: bool) -> None:
    from lfmq.devices.build import build

    print("\nBuilds (lfmq build PROFILE)")
    print(f"{'profile':<20} {'toolchain':<12} {'this call':>10} {'from cache':>11} {'recorded compile':>17}  kind")
    for name in profiles:
        env_before = os.environ.get("XDG_CACHE_HOME")
        scratch = tempfile.TemporaryDirectory(prefix="lfmq-cold-") if cold else None
        try:
            if scratch:   # an empty cache: sources, objects and zig's cache all start from nothing
                os.environ["XDG_CACHE_HOME"] = scratch.name
            started = time.perf_counter()
            result = build(name)
            took = time.perf_counter() - started
        finally:
            if scratch:
                if env_before is None:
                    os.environ.pop("XDG_CACHE_HOME", None)
                else:
                    os.environ["XDG_CACHE_HOME"] = env_before
                scratch.cleanup()
        m = result.manifest
        kind = "incremental" if m.get("incremental") else "cold"
        tc = f"{m['toolchain']['name']} {m['toolchain']['version']}"
        print(f"{name:<20} {tc:<12} {took:9.2f}s {str(result.cached):>11} {m.get('seconds', 0):16.1f}s  {kind} "
              f"(built {m.get('built_at', '?')}, {m.get('jobs', '?')} jobs)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", default="rpi5,snapdragon-8-elite,host")
    ap.add_argument("--cold", action="store_true", help="build each profile into an empty cache first (minutes)")
    ap.add_argument("--no-builds", action="store_true", help="the prediction table only")
    args = ap.parse_args()
    ok = loo_table()
    if not args.no_builds:
        build_times([p for p in args.profiles.split(",") if p], args.cold)
    print(f"\nprediction targets {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
