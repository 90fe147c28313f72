"""The models ``kvllama serve`` serves: ``--model`` flags, a ``--models-dir`` and a ``--models-file``.

A models file gives each model its own load options, keep-alive and LoRA
adapters (the command-line load flags apply to every model, under these)::

    # models.toml (or the same shape as JSON)
    [models.chat]
    path = "/models/qwen2.5-0.5b-instruct-q4_k_m.gguf"
    n_ctx = 16384
    keep_alive = "30m"
    adapters = ["/loras/support.gguf:0.8"]

    [models.default]        # the embedded Gemma 3 270M: no path needed
    n_seq_max = 4

``--models-dir DIR`` serves every ``*.gguf`` in ``DIR`` under its file stem.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvllama.errors import InvalidOptionError


@dataclass(frozen=True)
class ServedModel:
    name: str
    path: str | None  # None: the embedded default model
    # Its own load options over the command line's (keep_alive and adapters included).
    options: dict[str, Any] = field(default_factory=dict)


def read_models_file(path: str, named: dict[str, str | None]) -> list[ServedModel]:
    """``[models.NAME]`` tables (TOML) or ``{"models": {NAME: {...}}}`` (JSON), in file order.

    ``named``: the models that need no path (``default``, ``smollm2``) and their paths.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.endswith(".json") else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise InvalidOptionError("models_file", path, f"TOML or JSON ({exc})") from None
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise InvalidOptionError("models_file", path, "a [models.NAME] table per model")
    out = []
    for name, spec in models.items():
        if not isinstance(spec, dict):
            raise InvalidOptionError(f"models.{name}", spec, "a table of path and load options")
        own = dict(spec)
        model_path = own.pop("path", None)
        if model_path is None and name not in named:
            raise InvalidOptionError(f"models.{name}.path", None, "the GGUF file's path")
        if model_path is not None:
            model_path = str((Path(path).parent / str(model_path)).resolve())
        if isinstance(own.get("mmproj"), str):  # the model's projector, relative to the file too
            own["mmproj"] = str((Path(path).parent / own["mmproj"]).resolve())
        out.append(ServedModel(name, model_path if model_path is not None else named[name], own))
    return out


def scan_models_dir(directory: str) -> list[ServedModel]:
    """Every ``*.gguf`` directly in ``directory``, named by its file stem, sorted by name."""
    files = sorted(Path(directory).glob("*.gguf"))
    if not files:
        raise InvalidOptionError("models_dir", directory, "a directory with .gguf files")
    return [ServedModel(f.stem, str(f.resolve())) for f in files]


def merge(*groups: list[ServedModel]) -> list[ServedModel]:
    """All models, in order; a name given twice is an error (which one would it serve?)."""
    out: list[ServedModel] = []
    for group in groups:
        for model in group:
            if any(m.name == model.name for m in out):
                raise InvalidOptionError("model", model.name, "a name given once")
            out.append(model)
    return out
