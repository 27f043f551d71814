"""The bench report as data: `BenchReport` (tests, the profile actually used, predictions, per-model metadata, build,
machine and the device the run was on) and its one serialization, `to_dict()` / `BenchReport.from_dict()`, on which
`save`, `load_report` and `compare` are built. report.json is `to_dict()`; the renderers read only this object."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from lfmq.devices.predict import Prediction
from lfmq.devices.profiles import Profile
from lfmq.errors import InputError, UsageError
from lfmq.meta import ModelMeta

FORMAT = 2  # the layout of report.json; 1 (no "format" key) recorded the profile by its name only


@dataclass(frozen=True)
class Test:
    """One row, with llama-bench's JSON field names and lfmq's additions."""

    model_filename: str
    model_type: str
    model_size: int
    model_n_params: int
    model_sha256: str
    n_batch: int
    n_ubatch: int
    n_threads: int
    type_k: str
    type_v: str
    flash_attn: bool | None
    use_mmap: bool
    n_prompt: int
    n_gen: int
    n_depth: int
    test_time: str
    avg_ns: int
    stddev_ns: int
    avg_ts: float
    stddev_ts: float
    samples_ns: list[int]
    samples_ts: list[float]
    load_ms: float
    ttft_ms: float
    peak_rss_mb: float
    rss_anon_mb: float
    rss_file_mb: float
    file_bytes: int

    @property
    def name(self) -> str:
        return test_name(self.n_prompt, self.n_gen, self.n_depth)


def test_name(n_prompt: int, n_gen: int, n_depth: int) -> str:
    """llama-bench's labels: pp512, tg128, with `@ d4096` for a test at depth."""
    kind = f"pp{n_prompt}" if n_prompt else f"tg{n_gen}"
    return kind + (f" @ d{n_depth}" if n_depth else "")


@dataclass(frozen=True)
class BuildInfo:
    """The llama.cpp build the tests ran on."""

    llama_cpp_python: str = "?"
    llama_cpp: str = "?"
    libllama_sha256: str = "?"   # first 16 hex digits
    system_info: str = "?"


@dataclass(frozen=True)
class Machine:
    """The machine lfmq ran on (for a device run: the machine that drove the device)."""

    cpu: str
    arch: str
    cpus: int
    features: list[str]
    os: str
    python: str


@dataclass(frozen=True)
class Device:
    """Where the tests ran: this machine (local), a board over ssh, a phone over adb, or an emulator (qemu)."""

    kind: str = "local"
    name: str = ""
    features: list[str] = field(default_factory=list)     # the device's CPU features (its /proc/cpuinfo)
    build: dict[str, Any] = field(default_factory=dict)   # the device build's manifest
    emulated: bool = False   # speeds measured under emulation say nothing about the device


@dataclass(frozen=True)
class BenchReport:
    """Everything needed to render and compare a run: build, machine, the profile used, results, predictions."""

    lfmq_version: str
    build: BuildInfo
    machine: Machine
    profile: Profile            # the profile actually used: runtime knobs as run, the host's measured bandwidth
    tests: list[Test]
    predictions: list[Prediction] = field(default_factory=list)
    models: list[ModelMeta] = field(default_factory=list)
    created: str = ""
    device: Device = field(default_factory=Device)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON data (report.json)."""
        return {"format": FORMAT, **to_data(self)}

    @classmethod
    def from_dict(cls, data: Any) -> BenchReport:
        """The report back from `to_dict()`'s data; ValueError (InputError) for anything else."""
        if not isinstance(data, dict) or "tests" not in data:
            raise InputError("not a bench report (no tests)")
        if data.get("format") != FORMAT:
            raise InputError(f"a bench report in format {data.get('format', 1)}, this lfmq reads format {FORMAT}: "
                             "run lfmq bench again")
        return from_data(cls, data, "report")

    def save(self, path: str | Path, force: bool = False) -> Path:
        """Write report.json (to a temporary name, renamed at the end); an existing file needs force."""
        from lfmq.atomic import atomic_path

        with atomic_path(Path(path), force) as tmp:
            tmp.write_text(self.to_json(), encoding="utf-8")
        return Path(path)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def meta(self, model_filename: str) -> ModelMeta | None:
        return next((m for m in self.models if str(m.path) == model_filename), None)

    def prediction(self, model_filename: str) -> Prediction | None:
        name = Path(model_filename).name
        return next((p for p in self.predictions if p.model == name), None)


def load_report(path: str | Path) -> BenchReport:
    """A report.json read back; a missing file is a usage error, one that does not parse an input error."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"report {path} does not exist") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a bench report (JSON)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise InputError(f"{path} is not a bench report (JSON)") from None
    try:
        return BenchReport.from_dict(data)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None


@dataclass(frozen=True)
class CompareRow:
    """One test found in both reports: B's speed and peak memory beside A's, and as ratios of A's."""

    model: str
    test: str
    threads: int
    a_ts: float
    b_ts: float
    ts_ratio: float
    a_rss_mb: float
    b_rss_mb: float
    rss_ratio: float


def compare(a: str | Path, b: str | Path) -> list[CompareRow]:
    """Rows matched by model hash, test and threads: B's tok/s and peak memory as ratios of A's."""
    ra, rb = load_report(a), load_report(b)

    def key(t: Test) -> tuple:
        return t.model_sha256, t.n_prompt, t.n_gen, t.n_depth, t.n_threads

    index = {key(t): t for t in ra.tests}
    rows = [CompareRow(Path(t.model_filename).name, t.name, t.n_threads, base.avg_ts, t.avg_ts, t.avg_ts / base.avg_ts,
                       base.peak_rss_mb, t.peak_rss_mb, t.peak_rss_mb / base.peak_rss_mb)
            for t in rb.tests if (base := index.get(key(t))) is not None]
    if not rows:
        raise InputError(f"{a} and {b} share no test (same model file, test and threads)")
    return rows


# ---- the one serialization: dataclasses to JSON data and back, guided by their type hints ----

def to_data(obj: Any) -> Any:
    """Dataclasses (nested) as JSON data: objects, lists, strings for paths."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_data(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_data(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def from_data(tp: Any, data: Any, where: str) -> Any:
    """JSON data back into `tp` (a dataclass, list, dict, optional or plain type), checked against its type hints;
    InputError naming the first part that does not fit (`where` is its path, for the message)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return data
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]  # lfmq's optionals hold one type
        return from_data(inner, data, where)
    if is_dataclass(tp):
        return _from_dataclass(tp, data, where)
    if origin in (list, tuple):
        _expect(isinstance(data, list), where, "a list")
        if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[str, float]: one type per position
            _expect(len(data) == len(args), where, f"a list of {len(args)}")
            return tuple(from_data(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, data)))
        items = [from_data(args[0], v, f"{where}[{i}]") for i, v in enumerate(data)]
        return items if origin is list else tuple(items)
    if origin is dict:
        _expect(isinstance(data, dict), where, "an object")
        return {k: from_data(args[1], v, f"{where}.{k}") for k, v in data.items()}
    if tp is Path:
        _expect(isinstance(data, str), where, "a path")
        return Path(data)
    if tp is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    _expect(isinstance(data, tp) and (tp is bool or not isinstance(data, bool)), where, f"a {tp.__name__}")
    return data


def _from_dataclass(cls: type, data: Any, where: str) -> Any:
    _expect(isinstance(data, dict), where, "an object")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            kwargs[f.name] = from_data(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is MISSING and f.default_factory is MISSING:
            raise InputError(f"{where} has no {f.name!r}")
    return cls(**kwargs)  # keys this lfmq does not know (a newer writer's) are left out


def _expect(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise InputError(f"{where} is not {what}")
