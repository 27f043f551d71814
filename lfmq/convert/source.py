"""Where a checkpoint comes from: a local folder, or a Hub repo fetched config-first through huggingface_hub."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lfmq.errors import CheckpointError, ModelNotFoundError

# what conversion reads; nothing else of a repo (other formats, ONNX exports, READMEs' images) is downloaded
NEEDED_FILES = [
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
]
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder on disk plus where it came from (recorded in the GGUF's general.* keys)."""

    folder: Path
    config: dict[str, Any]
    repo_id: str | None = None
    revision: str | None = None  # the resolved commit for a Hub repo

    @property
    def origin(self) -> str:
        """A Hub repo id as given (with its commit), or a local folder's name only: a GGUF uploaded to the Hub must
        not carry the converting machine's directories."""
        return f"{self.repo_id}@{self.revision}" if self.repo_id else self.folder.name

    def weight_files(self) -> list[Path]:
        """The safetensors files, through the shard index when there is one."""
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            try:
                names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise CheckpointError("model.safetensors.index.json is corrupt: re-download it") from None
            missing = [n for n in names if not (self.folder / n).is_file()]
            if missing:
                raise CheckpointError(f"shard {missing[0]} listed in model.safetensors.index.json is missing from {self.folder}")
            return [self.folder / n for n in names]
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise CheckpointError(
                f"no .safetensors weights in {self.folder}: lfmq converts safetensors checkpoints (not .bin or .pt)"
            )
        return files


def read_config(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelNotFoundError(f"{path.parent} has no config.json: point lfmq at a Hugging Face checkpoint folder") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}): re-download it") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} is not a model config (expected a JSON object)")
    return cfg


def resolve(
    src: str | Path,
    revision: str | None = None,
    check: Callable[[dict[str, Any]], object] | None = None,
    config_only: bool = False,
) -> Checkpoint:
    """A local folder as is; otherwise a Hub repo id whose config is fetched and checked before any weights (and,
    with config_only, instead of them: a LoRA adapter needs its base's shapes, not its gigabytes)."""
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{path} is a file; pass the checkpoint folder that holds config.json")
        if revision:
            raise CheckpointError("--revision applies to Hub repo ids, not to a local folder")
        cfg = read_config(path / "config.json")
        if check:
            check(cfg)
        return Checkpoint(path.resolve(), cfg)
    text = str(src)
    if text.startswith((".", "/", "~")) or text.endswith("/") or not REPO_ID.match(text):
        raise ModelNotFoundError(f"{src}: no such folder (and not a Hub repo id like LiquidAI/LFM2.5-350M)")
    return _from_hub(str(src), revision, check, config_only)


def _from_hub(repo_id: str, revision: str | None, check: Callable[[dict[str, Any]], object] | None,
              config_only: bool = False) -> Checkpoint:
    import huggingface_hub as hf

    with _hub_errors(repo_id, revision):
        config_path = Path(hf.hf_hub_download(repo_id, "config.json", revision=revision))
    cfg = read_config(config_path)
    if check:
        check(cfg)  # refuse an unsupported architecture before downloading gigabytes
    if config_only:
        return Checkpoint(config_path.parent, cfg, repo_id=repo_id, revision=config_path.parent.name)
    with _hub_errors(repo_id, revision):
        folder = Path(hf.snapshot_download(repo_id, revision=revision, allow_patterns=NEEDED_FILES))
    return Checkpoint(folder, cfg, repo_id=repo_id, revision=folder.name)


class _hub_errors:
    """Turn huggingface_hub's exceptions into one-line lfmq errors."""

    def __init__(self, repo_id: str, revision: str | None):
        self.what = repo_id + (f" at revision {revision}" if revision else "")

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: type | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None:
            return False
        from huggingface_hub import errors

        if isinstance(exc, errors.GatedRepoError):
            raise ModelNotFoundError(f"{self.what} is gated: accept its license on the Hub and log in (hf auth login)") from None
        if isinstance(exc, errors.RepositoryNotFoundError):
            raise ModelNotFoundError(f"{self.what} was not found on the Hub (check the name, or log in for a private repo)") from None
        if isinstance(exc, errors.RevisionNotFoundError):
            raise ModelNotFoundError(f"revision not found: {self.what}") from None
        if isinstance(exc, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)) or "offline" in str(exc).lower():
            raise ModelNotFoundError(
                f"{self.what} is not in the local Hugging Face cache and the Hub cannot be reached "
                "(HF_HUB_OFFLINE or no network): download it on a connected machine or pass a local folder"
            ) from None
        if isinstance(exc, (errors.HfHubHTTPError, OSError)):
            raise ModelNotFoundError(f"could not fetch {self.what} from the Hub: {str(exc).splitlines()[0]}") from None
        return False
