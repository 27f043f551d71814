"""Runtime knobs and where they come from: defaults, then a device profile, then explicit arguments.

A profile is a device profile name (looked up in lfmq.devices), a .json/.toml file of knobs (at top level or under
`runtime`), a mapping, or an object with a `runtime` mapping or knob attributes (lfmq.devices' Profile)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

from lfmq.errors import InputError, UsageError
from lfmq.llama.settings import Settings


KNOBS = tuple(f.name for f in fields(Settings))
_FLASH = {"auto": None, "on": True, "off": False, "true": True, "false": False}


def _read_file(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read profile {path}: {e.strerror}") from None
    try:
        if path.suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
        return json.loads(text)
    except ImportError:
        raise InputError(f"{path}: TOML profiles need Python 3.11+; write it as JSON") from None
    except ValueError as e:
        raise InputError(f"profile {path} does not parse: {e}") from None


def _normalize(knobs: Mapping[str, Any], origin: str) -> dict[str, Any]:
    unknown = sorted(set(knobs) - set(KNOBS))
    if unknown:
        raise UsageError(f"{origin}: unknown runtime knob(s) {', '.join(unknown)}; known: {', '.join(KNOBS)}")
    out = dict(knobs)
    if isinstance(out.get("flash_attn"), str):
        value = out["flash_attn"].lower()
        if value not in _FLASH:
            raise UsageError(f"{origin}: flash_attn must be auto, on or off, not {out['flash_attn']!r}")
        out["flash_attn"] = _FLASH[value]
    return out


def _named(name: str) -> Any:
    """A device profile by name, from lfmq.devices when it is there."""
    try:
        from lfmq.devices.profiles import get_profile
    except ImportError:
        raise UsageError(f"profile {name!r} is not a file and this lfmq has no device profiles: pass a .json or "
                         f".toml file of runtime knobs ({', '.join(KNOBS)})") from None
    return get_profile(name)


def profile_knobs(profile: Any) -> dict[str, Any]:
    """The runtime knobs a profile sets (none for None)."""
    if profile is None:
        return {}
    origin = str(profile)
    if isinstance(profile, (str, Path)):
        path = Path(profile)
        profile, origin = (_read_file(path), str(path)) if path.is_file() else (_named(str(profile)), str(profile))
    if not isinstance(profile, Mapping):
        runtime = getattr(profile, "runtime", None)
        if isinstance(runtime, Mapping):
            profile = runtime
        else:
            profile = {k: getattr(profile, k) for k in KNOBS if getattr(profile, k, None) is not None}
    elif isinstance(profile.get("runtime"), Mapping):
        profile = profile["runtime"]
    return _normalize(profile, origin)
