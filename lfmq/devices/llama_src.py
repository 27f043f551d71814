"""The llama.cpp source lfmq pins: the tree vendored in the llama-cpp-python sdist of BINDING_VERSION, fetched with
pip and extracted once into ~/.cache/lfmq/src/, so that every device build compiles exactly the llama.cpp the Python
binding runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from lfmq.errors import BuildError
from lfmq.llama.settings import BINDING_VERSION

VENDOR = "vendor/llama.cpp"


def cache_root() -> Path:
    """~/.cache/lfmq (or $XDG_CACHE_HOME/lfmq): source trees, builds, zig's cache."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lfmq"


@dataclass(frozen=True)
class LlamaSource:
    """An extracted llama.cpp tree and what identifies it."""

    path: Path               # the llama.cpp folder (has CMakeLists.txt)
    binding_version: str     # llama-cpp-python version that vendors it
    commit: str              # llama.cpp commit, from the binding's changelog ("" when it does not say)
    ggml_version: str        # from ggml/CMakeLists.txt

    def describe(self) -> dict[str, str]:
        return {"commit": self.commit, "ggml_version": self.ggml_version,
                "source": f"llama-cpp-python {self.binding_version} sdist, {VENDOR}"}


def llama_source(version: str = BINDING_VERSION, root: Path | None = None) -> LlamaSource:
    """The extracted tree, fetched and extracted on first use (then instant)."""
    folder = (root or cache_root() / "src") / f"llama-cpp-python-{version}"
    tree = folder / "llama.cpp"
    if not (tree / "CMakeLists.txt").is_file():
        sdist = _download(version, folder)
        _extract(sdist, folder)
    return LlamaSource(tree, version, _read(folder / "llama.cpp.commit"), _ggml_version(tree))


def _download(version: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    found = sorted(folder.glob(f"llama_cpp_python-{version}.tar.gz"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
            f"llama-cpp-python=={version}", "-d", str(folder)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(folder.glob(f"llama_cpp_python-{version}.tar.gz"))
    if proc.returncode != 0 or not found:
        raise BuildError(f"fetch source: pip download llama-cpp-python=={version} failed: {_last_line(proc.stderr)}")
    return found[0]


def _extract(sdist: Path, folder: Path) -> None:
    """Extract vendor/llama.cpp and the binding's changelog; rename into place so a broken extract never counts."""
    tmp = folder / f"llama.cpp.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with tarfile.open(sdist) as tar:
            top = tar.next().name.split("/")[0]  # type: ignore[union-attr]
            prefix = f"{top}/{VENDOR}/"
            members = []
            for m in tar.getmembers():
                if m.name.startswith(prefix):
                    m.name = m.name[len(prefix):]
                    members.append(m)
            if not members:
                raise BuildError(f"extract source: {sdist.name} holds no {VENDOR}")
            tar.extractall(tmp, members=members, filter="data")
            changelog = tar.extractfile(f"{top}/CHANGELOG.md")
            text = changelog.read().decode("utf-8", "replace") if changelog else ""
    except (tarfile.TarError, OSError, KeyError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BuildError(f"extract source: cannot read {sdist.name}: {e}") from None
    (folder / "llama.cpp.commit").write_text(changelog_commit(text, sdist.name.split("-")[1].removesuffix(".tar.gz")))
    shutil.rmtree(folder / "llama.cpp", ignore_errors=True)
    tmp.rename(folder / "llama.cpp")


def changelog_commit(changelog: str, version: str) -> str:
    """The llama.cpp commit a binding release vendors: its changelog section says "update llama.cpp to ...@HASH"."""
    section = re.split(r"^## \[", changelog, flags=re.M)
    for part in section:
        if part.startswith(f"{version}]"):
            m = re.search(r"llama\.cpp@([0-9a-f]{7,40})", part)
            return m.group(1) if m else ""
    return ""


def _ggml_version(tree: Path) -> str:
    text = _read(tree / "ggml" / "CMakeLists.txt")
    parts = [re.search(rf"set\(GGML_VERSION_{k}\s+(\d+)\)", text) for k in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(m.group(1) for m in parts if m)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
