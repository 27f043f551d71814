"""`lfmq devices` (list, show, detect, recipe): the device profiles, which one this machine matches, and how to build
llama.cpp for each. Profiles, detection, predictions and recipes live in lfmq/devices/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lfmq.cli.app import app
from lfmq.cli.options import Json

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

