"""Architectures by convention: `arch/<model_type>.py` exposes MODEL_TYPE, ARCHITECTURES, GGUF_ARCH, SIBLINGS,
UNTIED_HEAD_REFUSAL, Hparams, parse_hparams, expected_shapes, stacked, active_parameters and write_hparams;
`for_config` finds the module for a config.json."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any

from lfmq.errors import UnsupportedModelError


def supported() -> dict[str, ModuleType]:
    """model_type -> architecture module, for every module in this package."""
    mods = {}
    for info in pkgutil.iter_modules(__path__):
        mod = importlib.import_module(f"{__name__}.{info.name}")
        mods[mod.MODEL_TYPE] = mod
    return mods


def for_config(cfg: dict[str, Any]) -> ModuleType:
    """The architecture module for a config.json, or an error naming what is supported."""
    mods = supported()
    archs = list(cfg.get("architectures") or [])
    for mod in mods.values():
        for arch in archs:
            if arch in mod.SIBLINGS:
                raise UnsupportedModelError(f"{arch}: {mod.SIBLINGS[arch]}")
    model_type = cfg.get("model_type")
    mod = mods.get(model_type)
    names = ", ".join(a for m in mods.values() for a in m.ARCHITECTURES[:1])
    if mod is None or (archs and not set(archs) & set(mod.ARCHITECTURES)):
        what = "/".join(archs) or f"model_type {model_type!r}"
        raise UnsupportedModelError(f"{what} is not an architecture lfmq converts (supported: {names})")
    return mod
