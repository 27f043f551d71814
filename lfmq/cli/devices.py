"""`lfmq devices` (list, show, detect, recipe) and `lfmq build`: the device profiles, which one this machine matches,
how to build llama.cpp for each, and the build itself. Profiles, detection, predictions, recipes and builds live in
lfmq/devices/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lfmq.cli.app import app
from lfmq.cli.options import Force, Json

devices_app = typer.Typer(help="Device profiles: list, show, detect this machine, build recipes.", no_args_is_help=False)
app.add_typer(devices_app, name="devices")

@devices_app.callback(invoke_without_command=True)
def devices_list(ctx: typer.Context, json: Json = False) -> None:
    """List the device profiles."""
    if ctx.invoked_subcommand:
        return
    from lfmq import ui
    from lfmq.devices.profiles import builtin_profiles

    profiles = list(builtin_profiles().values())
    ui.print_json(profiles) if json else ui.show_profiles(profiles)


@devices_app.command("show")
def devices_show(
    name: Annotated[str, typer.Argument(help="Profile name (see lfmq devices), or host.", show_default=False)],
    model: Annotated[Optional[Path], typer.Option(help="A GGUF: add predictions for it on this device.")] = None,
    json: Json = False,
) -> None:
    """Show a device profile: CPU, memory, build, runtime knobs, published figures (and predictions for a GGUF)."""
    from lfmq import ui
    from lfmq.devices.predict import model_shape, predict
    from lfmq.devices.profiles import get_profile

    profile = get_profile(name)
    prediction = predict(profile, model_shape(model)) if model else None
    if json:
        ui.print_json({"profile": profile, "prediction": prediction})
    else:
        ui.show_profile(profile, prediction)


@devices_app.command("detect")
def devices_detect(json: Json = False) -> None:
    """Say which profile this machine matches and which of its CPU features it lacks."""
    from lfmq import ui
    from lfmq.devices.profiles import detect

    result = detect()
    ui.print_json(result) if json else ui.show_detection(result)


@devices_app.command("recipe")
def devices_recipe(name: Annotated[str, typer.Argument(help="Profile name.", show_default=False)]) -> None:
    """Print the exact steps to build llama.cpp and llama-cpp-python for a device."""
    from lfmq import ui
    from lfmq.devices.profiles import get_profile
    from lfmq.devices.recipes import recipe

    ui.show_recipe(recipe(get_profile(name)))


@devices_app.command("calibrate")
def devices_calibrate(
    report: Annotated[Path, typer.Argument(help="A report.json from lfmq bench run on the device.", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="The profile file to write (default: "
                                                   "NAME-calibrated.json).")] = None,
    name: Annotated[Optional[str], typer.Option(help="The new profile's name (default: the report's profile's).")] = None,
    force: Force = False,
    json: Json = False,
) -> None:
    """Write a device profile whose predictions are calibrated on your own bench report from that device."""
    import json as json_mod

    from lfmq import ui
    from lfmq.atomic import atomic_path
    from lfmq.bench.result import load_report
    from lfmq.devices.calibration import calibrate_report, profile_data

    profile = calibrate_report(load_report(report), name)
    out = output or Path(f"{profile.name}-calibrated.json")
    with atomic_path(out, force) as tmp:
        tmp.write_text(json_mod.dumps(profile_data(profile), indent=2) + "\n", encoding="utf-8")
    if json:
        ui.print_json({"profile": str(out), "calibration": profile.calibration})
        return
    c = profile.calibration
    ui.wrote(out)
    for key in ("decode_efficiency", "prefill_efficiency"):
        if key in c:
            ui.notice(f"{key.replace('_', ' ')}: {c[key]:.3f}")
    ui.notice(f"use it: lfmq devices show {out} --model MODEL.gguf, or lfmq bench --profile {out}")


@app.command()
def build(
    profile: Annotated[str, typer.Argument(help="Device profile name (see lfmq devices).", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Copy the bundle to this folder (default: "
                                                                          "it stays in lfmq's cache).")] = None,
    llama_bench: Annotated[bool, typer.Option("--llama-bench", help="Also build llama.cpp's llama-bench.")] = False,
    jobs: Annotated[Optional[int], typer.Option("-j", "--jobs", min=1, help="Parallel compile jobs (default: all "
                                                                            "CPUs).")] = None,
    toolchain: Annotated[Optional[str], typer.Option(help="zig, gcc or ndk instead of the profile's toolchain.")] = None,
    force: Force = False,
    json: Json = False,
) -> None:
    """Build llama.cpp and lfmq's runner for a device profile into a bundle (cached; a second call is instant)."""
    from lfmq import ui
    from lfmq.devices.build import build as run

    with ui.progress_bar("building") as progress:
        result = run(profile, output, force=force, jobs=jobs, llama_bench=llama_bench, toolchain=toolchain,
                     progress=progress)
    ui.print_json(result) if json else ui.show_build(result)
