"""The models a bench's ``--model`` may name instead of a GGUF path.

Each is built or found on first use, never downloaded at run time: the
random-weight fixtures are written locally, the others come from PyPI packages.
"""

from __future__ import annotations


def bench_model_path(model: str | None) -> str:
    """``tiny``: the random-weight fixture (the engine's own cost per token); ``kquant``: a
    2048-wide 16-block random Gemma 3 in Q4_K_M (bench/kquant_model.py); ``smollm2``:
    SmolLM2-135M-Instruct (models/smollm2.py); None: the default; anything else is a path."""
    if model == "tiny":
        from kvllama.bench.tiny_model import tiny_model_path

        return str(tiny_model_path())
    if model == "kquant":
        from kvllama.bench.kquant_model import kquant_model_path

        return str(kquant_model_path())
    if model == "smollm2":
        from kvllama.models.smollm2 import smollm2_model_path

        return smollm2_model_path()
    from kvllama.models.default import default_model_path

    return model or default_model_path()
