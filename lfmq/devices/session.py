"""A run on a device, start to end: the device from its URI, what it says about itself, the profile whose build it
runs, the memory check before anything is pushed, the build (cached), the bundle and the model on the device, then
lfmq-run there. `lfmq bench --device` and `lfmq generate --device` are this plus their own argument lists.

    with DeviceSession.open("ssh://pi", "model.gguf", profile=None, n_ctx=4096) as s:
        s.run_json([s.runner, "bench", "-m", s.model, ...])

The profile is, in order: the one the user names, the one the URI names (qemu:PROFILE), else the most demanding
built-in profile whose build the device's CPU can run. Everything the session started is stopped when it ends."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from lfmq.devices.transport import Device, DeviceInfo, check_fits, match_profile, parse_device, sha256_file
from lfmq.errors import DeviceError, UsageError
from lfmq.progress import Progress


RUNNER_FLAGS = {"n_batch": "-b", "n_ubatch": "-ub", "n_ctx": "-c", "type_k": "-ctk", "type_v": "-ctv"}


def runner_flags(knobs: dict[str, Any]) -> list[str]:
    """lfmq-run's flags for runtime knobs (threads, n_ctx, n_batch, n_ubatch, KV types, mmap, flash attention)."""
    out = ["-t", str(knobs["threads"])]
    for key, flag in RUNNER_FLAGS.items():
        if knobs.get(key) is not None:
            out += [flag, str(knobs[key])]
    if knobs.get("use_mmap") is not None:
        out += ["--mmap", "1" if knobs["use_mmap"] else "0"]
    if "flash_attn" in knobs:
        fa = knobs["flash_attn"]
        out += ["-fa", "-1" if fa is None else "1" if fa else "0"]
    return out


def pick_profile(named: str | None, device: Device, info: DeviceInfo) -> str:
    """The profile whose build runs on the device: as named, as the URI says, or as the CPU's features allow."""
    from lfmq.devices.profiles import HOST, get_profile

    if named and device.profile and named != device.profile:
        raise UsageError(f"--profile {named} and --device {device.uri} name different profiles: drop --profile")
    name = named or device.profile
    if name is None and device.kind == "local":
        return HOST
    if name is None:
        name = match_profile(info)
        if name is None:
            raise DeviceError(f"no lfmq profile fits {device.uri} ({info.arch}, {info.cpu_model}): lfmq builds for "
                              "aarch64 (dotprod) and x86-64 (AVX2) devices; name one with --profile")
    if name != HOST:
        p = get_profile(name)
        if p.arch != info.arch:
            raise DeviceError(f"profile {name} builds for {p.arch} but {device.uri} is {info.arch}: pick a profile "
                              f"for {info.arch} (lfmq devices lists them)")
    return name


@dataclass
class DeviceSession:
    """A device ready to run lfmq-run on one or more models (paths on the device in `models`)."""

    device: Device
    info: DeviceInfo
    profile: str
    build: Any                                   # lfmq.devices.build.BuildResult
    runner: str                                  # lfmq-run's path on the device
    models: dict[Path, str] = field(default_factory=dict)

    @classmethod
    def open(cls, uri: str, models: Sequence[str | Path], *, profile: str | None = None, n_ctx: int | None = None,
             progress: Progress | None = None) -> DeviceSession:
        """Connect, check that each model fits the device's free memory (before any push), build, push."""
        from lfmq.devices.build import build
        from lfmq.devices.predict import predict, shape_of
        from lfmq.devices.profiles import HOST, get_profile, host_profile
        from lfmq.meta import read_meta

        paths = [Path(m) for m in models]
        metas = [read_meta(p) for p in paths]   # a missing or foreign file is an error before any connection
        device = parse_device(uri)
        try:
            info = device.describe()
            name = pick_profile(profile, device, info)
            prof = host_profile() if name == HOST else get_profile(name)
            for meta in metas:
                need = predict(prof, shape_of(meta), n_ctx).memory.total_mb
                check_fits(info.mem_available_bytes, int(need * 2**20), device.uri)
            result = build(name, progress=progress)
            files = device.ensure_bundle(result, progress)
            pushed = device.ensure_all(paths, [sha256_file(p) for p in paths], progress)
            return cls(device, info, name, result, files["lfmq-run"], dict(zip(paths, pushed)))
        except BaseException:
            device.cleanup()
            raise

    def run_json(self, argv: Sequence[str], on_event: Callable[[dict[str, Any]], None] | None = None
                 ) -> list[dict[str, Any]]:
        return self.device.run_json(argv, on_event)

    def record(self) -> dict[str, Any]:
        """The device as a report records it: kind, URI, CPU features, the build's manifest, emulated or not."""
        return {"kind": self.device.kind, "name": self.device.uri, "features": list(self.info.features),
                "build": self.build.manifest, "emulated": self.device.emulated}

    def close(self) -> None:
        self.device.cleanup()

    def __enter__(self) -> DeviceSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def generate_on_device(uri: str, model: str | Path, prompt: str, *, messages: Sequence[dict[str, Any]] | None = None,
                       tools: Sequence[dict[str, Any]] | None = None, max_tokens: int = 1024,
                       ignore_eos: bool = False, profile: str | None = None, n_ctx: int | None = None,
                       threads: int | None = None, on_text: Callable[[str], None] | None = None,
                       progress: Progress | None = None) -> Any:
    """One answer decoded greedily by lfmq-run on the device: the prompt (messages through the model's template, or
    `prompt` as is when messages is None) is rendered and tokenized here, the tokens stream back and their text goes
    to on_text as it comes (as the local runtime's stream: markers included, for a ReplyPrinter), and the reply is
    parsed here. Returns a runtime Reply."""
    from lfmq.runtime.chat import Reply
    from lfmq.runtime.generate import Stats
    from lfmq.runtime.model import load

    import codecs

    with load(model, n_ctx=256, threads=1, use_mmap=True) as m:   # the tokenizer and template, here
        text = m.render(messages, tools=tools) if messages is not None else prompt
        tokens = list(m.tokenize(text, special=True, add_bos=messages is None and m.bos_id >= 0))
        if not tokens:
            raise UsageError("the prompt is empty")
        ctx = n_ctx or min(4096, len(tokens) + max_tokens + 1)
        if len(tokens) >= ctx:
            raise UsageError(f"the prompt is {len(tokens)} tokens, the context {ctx}: raise -c/--n-ctx or shorten it")
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        ids: list[int] = []

        def take(event: dict[str, Any]) -> None:   # the text of each id as this side renders it (markers too)
            if event.get("event") == "token":
                ids.append(int(event["id"]))
                if on_text:
                    on_text(utf8.decode(m.piece(ids[-1])))

        with DeviceSession.open(uri, [model], profile=profile, n_ctx=ctx, progress=progress) as s:
            n = max(1, min(max_tokens, ctx - len(tokens)))
            argv = [s.runner, "generate", "-m", s.models[Path(model)], "--tokens", ",".join(map(str, tokens)),
                    "-n", str(n), *runner_flags({"threads": threads or s.info.cores or 1, "n_ctx": ctx})]
            events = s.run_json(argv + (["--ignore-eos"] if ignore_eos else []), take)
        if on_text:
            on_text(utf8.decode(b"", final=True))
        reply_text = m.detokenize(ids)
    done = next((e for e in reversed(events) if e.get("event") == "done"), {})
    generated = len(ids)
    tps = done.get("tg_tps") or 0.0
    stats = Stats(prompt_tokens=len(tokens), prompt_evaluated=len(tokens), generated_tokens=generated,
                  prompt_seconds=float(done.get("ttft_ms", 0.0)) / 1e3,
                  generate_seconds=(generated - 1) / tps if tps and generated > 1 else 0.0,
                  finish_reason="length" if generated >= n else "stop")
    return Reply.from_text(reply_text, stats, tools)
